//! Configuration of the client node: the optional TOML file and the named
//! defaults. Precedence: command-line flags > environment (`AMBISHARE_CLIENT_*`)
//! > the TOML file (`--config`, else `<home>/client.toml` when present) > defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The party's private key in the home directory (mode 0600).
pub const PARTY_KEY: &str = "party.key";
/// The certificate signing request `enroll` writes, for the owner.
pub const PARTY_CSR: &str = "party.csr";
/// The certificate the owner issued (from `ambishare-owner grant`).
pub const PARTY_CERT: &str = "party.pem";
/// The owner's server CA (`ambishare-owner grant --out <home>/party.pem` writes it beside the certificate).
pub const OWNER_CA: &str = "party-server-ca.pem";
/// Decoders fetched from registries, by model id.
pub const MODEL_CACHE: &str = "models";
/// Name checked in the key service's certificate.
pub const DEFAULT_OWNER_DOMAIN: &str = "localhost";
/// Entries per key request.
pub const DEFAULT_BATCH: usize = 256;

/// `client.toml`. Every field is optional; flags and environment variables win.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// URL of the registry (`http://` or `https://`).
    pub registry: Option<String>,
    /// PEM of the CA that signed the registry's certificate (for `https://`).
    pub registry_ca: Option<PathBuf>,
    /// URL of the owner's key service (`https://`).
    pub owner: Option<String>,
    /// Name checked in the key service's certificate.
    pub owner_domain: Option<String>,
    /// The party's certificate (default `<home>/party.pem`).
    pub cert: Option<PathBuf>,
    /// The party's private key (default `<home>/party.key`).
    pub key: Option<PathBuf>,
    /// The owner's server CA (default `<home>/party-server-ca.pem`).
    pub ca: Option<PathBuf>,
    /// Where decoding runs: `auto`, `cpu` or `cuda`.
    pub device: Option<String>,
    /// Where fetched decoders are cached (default `<home>/models`).
    pub model_cache: Option<PathBuf>,
    /// Entries per key request.
    pub batch: Option<usize>,
}

impl FileConfig {
    /// Reads `explicit` (which must exist), else `<home>/client.toml` when present.
    pub fn load(explicit: Option<&Path>, home: &Path) -> Result<Self> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (home.join("client.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(FileConfig::default()),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// The home directory when neither `--home` nor `AMBISHARE_CLIENT_HOME` names one.
pub fn default_home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".ambishare-client"))
        .ok_or_else(|| Error::Config("no home directory: give --home or set AMBISHARE_CLIENT_HOME".into()))
}
