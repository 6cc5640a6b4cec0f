//! Configuration of the owner node: the optional TOML file and the named
//! defaults. Precedence: command-line flags > environment (`AMBISHARE_OWNER_*`)
//! > the TOML file (`--config`, else `<home>/owner.toml` when present) > defaults.

use std::path::{Path, PathBuf};

use ambishare_shared::DisplayName;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::home::Home;

/// Address `serve` listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Where `publish` and the admin commands find the running owner node.
pub const DEFAULT_OWNER_URL: &str = "https://127.0.0.1:7443";
/// Name checked in the key service's certificate.
pub const DEFAULT_DOMAIN: &str = "localhost";
/// Model directory for `publish`.
pub const DEFAULT_MODEL_DIR: &str = "models/photo64";
/// Images encoded together.
pub const DEFAULT_BATCH: usize = 16;
/// Largest image accepted, in pixels (about 8192 x 8192).
pub const DEFAULT_MAX_PIXELS: u64 = 1 << 26;
/// Largest image file read, in bytes.
pub const MAX_IMAGE_FILE_BYTES: u64 = 256 << 20;

/// `owner.toml`. Every field is optional; flags and environment variables win.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// URL of the registry `publish` sends to (`http://` or `https://`).
    pub registry: Option<String>,
    /// PEM of the CA that signed the registry's certificate (for an `https://` registry).
    pub registry_ca: Option<PathBuf>,
    /// Name under which the owner registers at the registry (checked on load
    /// with the registry's rules: 1 to 128 characters, no control characters).
    pub display_name: Option<DisplayName>,
    /// Directory of the model (`manifest.json` and its ONNX files).
    pub model: Option<PathBuf>,
    /// Where the encoder runs: `auto`, `cpu` or `cuda`.
    pub device: Option<String>,
    /// How code values are published: `q8` or `f16`.
    pub codec: Option<String>,
    /// `v3` (default) or `v2`.
    pub format: Option<String>,
    /// Images encoded together.
    pub batch: Option<usize>,
    /// Largest image accepted, in pixels.
    pub max_pixels: Option<u64>,
    /// Address `serve` listens on.
    pub listen: Option<String>,
    /// Flush the audit log before answering each key request (default true).
    pub audit_sync: Option<bool>,
    /// URL of the running owner node, for `publish` and the admin commands.
    pub owner_url: Option<String>,
    /// Name checked in the key service's certificate, for `publish` and the admin commands.
    pub owner_domain: Option<String>,
}

impl FileConfig {
    /// Reads `explicit` (which must exist), else `<home>/owner.toml` when present.
    pub fn load(explicit: Option<&Path>, home: &Home) -> Result<Self> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (home.config_file(), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(FileConfig::default()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// The home directory when neither `--home` nor `AMBISHARE_OWNER_HOME` names one.
pub fn default_home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".ambishare-owner"))
        .ok_or_else(|| Error::Config("no home directory: give --home or set AMBISHARE_OWNER_HOME".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_toml_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        assert_eq!(FileConfig::load(None, &home).unwrap(), FileConfig::default());
        std::fs::write(home.config_file(), "registry = \"http://r:1\"\nbatch = 4\n").unwrap();
        let c = FileConfig::load(None, &home).unwrap();
        assert_eq!((c.registry.as_deref(), c.batch), (Some("http://r:1"), Some(4)));
        std::fs::write(home.config_file(), "registy = \"x\"\n").unwrap();
        assert!(matches!(FileConfig::load(None, &home), Err(Error::Config(_))));
        assert!(FileConfig::load(Some(&dir.path().join("missing.toml")), &home).is_err());
    }

    #[test]
    fn refuses_a_display_name_the_registry_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        std::fs::write(home.config_file(), "display_name = \"Ada Lovelace\"\n").unwrap();
        let c = FileConfig::load(None, &home).unwrap();
        assert_eq!(c.display_name.as_ref().map(DisplayName::as_str), Some("Ada Lovelace"));
        let too_long = "x".repeat(DisplayName::MAX_LEN + 1);
        for bad in ["", "two\\nlines", "bell\\u0007", too_long.as_str()] {
            std::fs::write(home.config_file(), format!("display_name = \"{bad}\"\n")).unwrap();
            match FileConfig::load(None, &home) {
                Err(Error::Config(msg)) => assert!(msg.contains("invalid display name"), "{bad:?}: {msg}"),
                other => panic!("{bad:?} accepted: {other:?}"),
            }
        }
    }
}
