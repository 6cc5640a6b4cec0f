//! Configuration of the registry node: one serde struct (the TOML file's
//! format) with named defaults, and the command line that overrides it.
//!
//! Precedence: flags > environment (`AMBISHARE_REGISTRY_*`) > `--config` file > defaults.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use ambishare_db::StoreConfig;

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
pub const DEFAULT_DATA_DIR: &str = "registry-data";
/// 16 MiB: room for a PublishRequest of many codes, or one very large image.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
pub const DEFAULT_MAX_ENTRIES_PER_MESSAGE: usize = 256;
/// 8 MiB: with the 64x64 model (about 2.6 KB a tile in q8) this admits about 3200 tiles,
/// a 3600x3600 image.
pub const DEFAULT_MAX_CODE_BYTES: usize = 8 << 20;
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 64 << 20;
pub const DEFAULT_GROUP_COMMIT_ENTRIES: usize = 256;
pub const DEFAULT_PUBLISH_QUEUE: usize = 64;
pub const DEFAULT_CACHE_MIB: u64 = 256;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Largest page of ListEntries (fixed by the protocol).
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Page size of ListEntries when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// How far the time of a signed request may be from the registry's clock.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
/// Concurrent model uploads (each buffers up to `max_model_bytes`).
pub const MAX_CONCURRENT_MODEL_UPLOADS: usize = 2;
/// Concurrent model downloads (each holds one file in memory).
pub const MAX_CONCURRENT_MODEL_DOWNLOADS: usize = 8;
pub const DEFAULT_THUMBNAIL_WORKERS: usize = 1;
pub const DEFAULT_THUMBNAIL_QUEUE: usize = 256;
/// 1024 tiles: a 2048x2048 image under the 64x64 model, about 2 s on one core.
pub const DEFAULT_THUMBNAIL_MAX_TILES: u32 = 1024;

/// Which storage backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Engine {
    /// sled in the data directory (durable).
    #[default]
    Sled,
    /// Process memory (lost on exit; for tests and benchmarks).
    Memory,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Sled => "sled",
            Engine::Memory => "memory",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Engine {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sled" => Ok(Engine::Sled),
            "memory" => Ok(Engine::Memory),
            other => Err(Error::Config(format!("unknown storage engine {other:?}; expected \"sled\" or \"memory\""))),
        }
    }
}

impl TryFrom<String> for Engine {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Engine> for String {
    fn from(e: Engine) -> String {
        e.as_str().to_owned()
    }
}

/// Configuration of `ambishare-registry serve`, as read from a TOML file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC endpoint listens on.
    pub listen: SocketAddr,
    /// Directory of the database (created if missing).
    pub data_dir: PathBuf,
    /// Storage backend: "sled" (durable) or "memory" (lost on exit; for tests).
    pub engine: Engine,
    /// PEM certificate chain of the gRPC endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate; refused if group or others may read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Serve gRPC without TLS. Only for local tests: entries and keys travel in clear.
    pub danger_plaintext: bool,
    /// Address of the Prometheus endpoint (`GET /metrics`); unset: no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the read-only web view (HTML pages and `/api/v1/`, plain HTTP); unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// Threads rendering the web view's thumbnails (one ONNX Runtime thread each).
    pub thumbnail_workers: usize,
    /// Thumbnails waiting to be rendered; requests beyond it are asked again later.
    pub thumbnail_queue: usize,
    /// Largest entry, in tiles, the web view renders a thumbnail of.
    pub thumbnail_max_tiles: u32,
    /// Largest gRPC message received or sent, in bytes.
    pub max_message_bytes: usize,
    /// Most entries in one PublishRequest message.
    pub max_entries_per_message: usize,
    /// Largest code of one entry, in bytes.
    pub max_code_bytes: usize,
    /// Largest total size of one model's files, in bytes.
    pub max_model_bytes: u64,
    /// Most entries the writer commits with one flush (group commit).
    pub group_commit_entries: usize,
    /// Publish messages waiting for the writer before publishers are slowed down.
    pub publish_queue: usize,
    /// Page cache of the sled backend, in MiB.
    pub cache_mib: u64,
    /// Seconds shutdown waits for open requests and streams before cutting them off.
    pub shutdown_grace_secs: u64,
    /// The store, when not sled in `data_dir` or memory (`engine`): a TOML
    /// table such as `[store]` `engine = "s3"`, `bucket = "..."`, `endpoint = "..."`.
    /// Several registries on one S3 store serve the same data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 7443))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            engine: Engine::default(),
            tls_cert: None,
            tls_key: None,
            danger_plaintext: false,
            metrics_listen: None,
            http_listen: None,
            thumbnail_workers: DEFAULT_THUMBNAIL_WORKERS,
            thumbnail_queue: DEFAULT_THUMBNAIL_QUEUE,
            thumbnail_max_tiles: DEFAULT_THUMBNAIL_MAX_TILES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_entries_per_message: DEFAULT_MAX_ENTRIES_PER_MESSAGE,
            max_code_bytes: DEFAULT_MAX_CODE_BYTES,
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            group_commit_entries: DEFAULT_GROUP_COMMIT_ENTRIES,
            publish_queue: DEFAULT_PUBLISH_QUEUE,
            cache_mib: DEFAULT_CACHE_MIB,
            shutdown_grace_secs: DEFAULT_SHUTDOWN_GRACE_SECS,
            store: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; missing keys take their defaults, unknown keys are refused.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::Config(e.to_string()))
    }

    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> Result<()> {
        match (&self.tls_cert, &self.tls_key, self.danger_plaintext) {
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(Error::Config("--tls-cert and --tls-key go together".into()));
            }
            (Some(_), Some(_), true) => {
                return Err(Error::Config("--danger-plaintext contradicts --tls-cert/--tls-key; choose one".into()));
            }
            (None, None, false) => {
                return Err(Error::Config(
                    "refusing to serve without TLS: give --tls-cert and --tls-key, \
                     or --danger-plaintext for local tests"
                        .into(),
                ));
            }
            _ => {}
        }
        let positive = [
            ("max_message_bytes", self.max_message_bytes as u64),
            ("max_entries_per_message", self.max_entries_per_message as u64),
            ("max_code_bytes", self.max_code_bytes as u64),
            ("max_model_bytes", self.max_model_bytes),
            ("group_commit_entries", self.group_commit_entries as u64),
            ("publish_queue", self.publish_queue as u64),
            ("thumbnail_workers", self.thumbnail_workers as u64),
            ("thumbnail_queue", self.thumbnail_queue as u64),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("{name} must be at least 1")));
        }
        if self.max_code_bytes > self.max_message_bytes {
            return Err(Error::Config("max_code_bytes cannot exceed max_message_bytes".into()));
        }
        Ok(())
    }

    /// The store to open: `store` when set, else `engine` in `data_dir`.
    pub fn store_config(&self) -> StoreConfig {
        match (&self.store, self.engine) {
            (Some(store), _) => store.clone(),
            (None, Engine::Sled) => StoreConfig::Sled {
                path: self.data_dir.clone(),
                cache_capacity: self.cache_mib.saturating_mul(1 << 20),
            },
            (None, Engine::Memory) => StoreConfig::Memory,
        }
    }

    /// The limits the service enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_entries_per_message: self.max_entries_per_message,
            max_code_bytes: self.max_code_bytes,
            max_model_bytes: self.max_model_bytes,
            group_commit_entries: self.group_commit_entries,
            publish_queue: self.publish_queue,
        }
    }
}

/// Limits and queue sizes of the service (the part of [`Config`] a `Registry` needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_entries_per_message: usize,
    pub max_code_bytes: usize,
    pub max_model_bytes: u64,
    pub group_commit_entries: usize,
    pub publish_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Config::default().limits()
    }
}

/// The public registry of ambishare: ambiguated codes, owners' keys and models.
#[derive(Debug, Parser)]
#[command(name = "ambishare-registry", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the registry's gRPC API (with health and reflection) until SIGTERM or Ctrl-C.
    #[command(after_help = "Each setting comes from its flag, else its AMBISHARE_REGISTRY_* variable, \
                            else the --config file, else its default. TLS (--tls-cert and --tls-key) is \
                            required unless --danger-plaintext is given.")]
    Serve(ServeArgs),
    /// Print what a data directory holds, then exit (the server must not be running).
    Stats(StatsArgs),
    /// Copy a registry's data into another store (for example from sled to the
    /// S3 store of replicas), checking every owner key, model file and entry
    /// signature as a publish would. Idempotent: run it again to resume.
    #[command(after_help = "Stop a registry on a sled source first (sled allows one process). Records that fail \
                            a check are listed and not copied; the command then exits with an error after \
                            copying the rest. Thumbnails are not copied (rendered again on demand).")]
    Migrate(MigrateArgs),
    /// Make a CA and a server certificate for `serve --tls-cert/--tls-key`, when
    /// the deployment has no CA of its own: writes ca.pem (what clients trust,
    /// their --registry-ca), ca.key, tls.pem and tls.key (keys 0600).
    TlsCert(TlsCertArgs),
}

/// Flags of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The store to copy from, as `serve --store` takes it (`sled:DIR`, `s3://...`).
    #[arg(long, value_name = "STORE")]
    pub from: StoreConfig,
    /// The store to copy into (created or added to; what it holds is kept).
    #[arg(long, value_name = "STORE")]
    pub to: StoreConfig,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Flags of `tls-cert`.
#[derive(Debug, Args)]
pub struct TlsCertArgs {
    /// Directory to write the four files to (created; existing files are not overwritten).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Host name or IP address clients use to reach the registry (repeat for more).
    #[arg(long = "name", value_name = "NAME", required = true)]
    pub names: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 825, value_name = "DAYS")]
    pub days: u32,
}

/// Flags of `serve`. Every flag may also come from its environment variable
/// or the `--config` file (flags win over the environment, which wins over the file).
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys in snake_case, e.g. `data_dir`).
    #[arg(long, env = "AMBISHARE_REGISTRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address the gRPC endpoint listens on [default: 0.0.0.0:7443].
    #[arg(long, env = "AMBISHARE_REGISTRY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory of the database, created if missing [default: registry-data].
    #[arg(long, env = "AMBISHARE_REGISTRY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage backend in --data-dir: `sled` (durable) or `memory` (lost on exit) [default: sled].
    #[arg(long, env = "AMBISHARE_REGISTRY_ENGINE", value_name = "ENGINE")]
    pub engine: Option<Engine>,
    /// The store, instead of --engine and --data-dir: `sled:DIR`, `memory`, or
    /// `s3://BUCKET[/PREFIX]?endpoint=URL&region=REGION[&credentials_file=FILE]`
    /// (credentials from that file or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY,
    /// never logged). Any number of registries on one S3 store serve the same data.
    #[arg(long, env = "AMBISHARE_REGISTRY_STORE", value_name = "STORE")]
    pub store: Option<StoreConfig>,
    /// PEM certificate chain of the gRPC endpoint (TLS).
    #[arg(long, env = "AMBISHARE_REGISTRY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate; refused if group or others may read it (chmod 600).
    #[arg(long, env = "AMBISHARE_REGISTRY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve gRPC without TLS. Only for local tests. `--danger-plaintext=false` turns it off.
    #[arg(
        long,
        env = "AMBISHARE_REGISTRY_DANGER_PLAINTEXT",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub danger_plaintext: Option<bool>,
    /// Address of the Prometheus endpoint (GET /metrics); none by default.
    #[arg(long, env = "AMBISHARE_REGISTRY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Address of the read-only web view: HTML pages of owners, datasets (thumbnails of
    /// the public decode), entries and models, and the same data as JSON under /api/v1/.
    /// Plain HTTP: put a TLS proxy in front of it off loopback. None by default.
    #[arg(long, env = "AMBISHARE_REGISTRY_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Threads rendering thumbnails for the web view [default: 1].
    #[arg(long, env = "AMBISHARE_REGISTRY_THUMBNAIL_WORKERS", value_name = "N")]
    pub thumbnail_workers: Option<usize>,
    /// Thumbnails queued for rendering [default: 256].
    #[arg(long, env = "AMBISHARE_REGISTRY_THUMBNAIL_QUEUE", value_name = "N")]
    pub thumbnail_queue: Option<usize>,
    /// Largest entry, in tiles, given a thumbnail [default: 1024].
    #[arg(long, env = "AMBISHARE_REGISTRY_THUMBNAIL_MAX_TILES", value_name = "TILES")]
    pub thumbnail_max_tiles: Option<u32>,
    /// Largest gRPC message received or sent, in bytes [default: 16777216].
    #[arg(long, env = "AMBISHARE_REGISTRY_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Most entries in one PublishRequest message [default: 256].
    #[arg(long, env = "AMBISHARE_REGISTRY_MAX_ENTRIES_PER_MESSAGE", value_name = "N")]
    pub max_entries_per_message: Option<usize>,
    /// Largest code of one entry, in bytes [default: 8388608].
    #[arg(long, env = "AMBISHARE_REGISTRY_MAX_CODE_BYTES", value_name = "BYTES")]
    pub max_code_bytes: Option<usize>,
    /// Largest total size of one model's files, in bytes [default: 67108864].
    #[arg(long, env = "AMBISHARE_REGISTRY_MAX_MODEL_BYTES", value_name = "BYTES")]
    pub max_model_bytes: Option<u64>,
    /// Most entries committed with one flush (group commit) [default: 256].
    #[arg(long, env = "AMBISHARE_REGISTRY_GROUP_COMMIT_ENTRIES", value_name = "N")]
    pub group_commit_entries: Option<usize>,
    /// Publish messages queued for the writer before publishers wait [default: 64].
    #[arg(long, env = "AMBISHARE_REGISTRY_PUBLISH_QUEUE", value_name = "N")]
    pub publish_queue: Option<usize>,
    /// Page cache of the sled backend, in MiB [default: 256].
    #[arg(long, env = "AMBISHARE_REGISTRY_CACHE_MIB", value_name = "MIB")]
    pub cache_mib: Option<u64>,
    /// Seconds shutdown waits for open requests and streams [default: 10].
    #[arg(long, env = "AMBISHARE_REGISTRY_SHUTDOWN_GRACE_SECS", value_name = "SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Flags of `stats`.
#[derive(Debug, Default, Args)]
pub struct StatsArgs {
    /// TOML file of `serve` (only `data_dir`, `engine`, `cache_mib` and `store` are used).
    #[arg(long, env = "AMBISHARE_REGISTRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the database [default: registry-data].
    #[arg(long, env = "AMBISHARE_REGISTRY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage backend [default: sled].
    #[arg(long, env = "AMBISHARE_REGISTRY_ENGINE", value_name = "ENGINE")]
    pub engine: Option<Engine>,
    /// The store, instead of --engine and --data-dir (as in `serve --store`).
    #[arg(long, env = "AMBISHARE_REGISTRY_STORE", value_name = "STORE")]
    pub store: Option<StoreConfig>,
}

fn base(file: Option<&Path>) -> Result<Config> {
    match file {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    }
}

impl ServeArgs {
    /// The file's (or default) configuration with every given flag or variable applied.
    pub fn resolve(&self) -> Result<Config> {
        let mut c = base(self.config.as_deref())?;
        macro_rules! overlay {
            ($($field:ident),* $(,)?) => {
                $(if let Some(v) = &self.$field { c.$field = v.clone(); })*
            };
        }
        overlay!(
            listen,
            data_dir,
            engine,
            danger_plaintext,
            max_message_bytes,
            max_entries_per_message,
            max_code_bytes,
            max_model_bytes,
            group_commit_entries,
            publish_queue,
            cache_mib,
            shutdown_grace_secs,
            thumbnail_workers,
            thumbnail_queue,
            thumbnail_max_tiles,
        );
        if self.tls_cert.is_some() {
            c.tls_cert = self.tls_cert.clone();
        }
        if self.tls_key.is_some() {
            c.tls_key = self.tls_key.clone();
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        if self.http_listen.is_some() {
            c.http_listen = self.http_listen;
        }
        if self.store.is_some() {
            c.store = self.store.clone();
        }
        Ok(c)
    }
}

impl StatsArgs {
    pub fn resolve(&self) -> Result<Config> {
        let mut c = base(self.config.as_deref())?;
        if let Some(dir) = &self.data_dir {
            c.data_dir = dir.clone();
        }
        if let Some(engine) = self.engine {
            c.engine = engine;
        }
        if self.store.is_some() {
            c.store = self.store.clone();
        }
        Ok(c)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from([&["ambishare-registry", "serve"], args].concat()).unwrap();
        match cli.command {
            Command::Serve(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registry.toml");
        std::fs::write(&file, "data_dir = \"/from/file\"\nlisten = \"127.0.0.1:9000\"\ndanger_plaintext = true\n")
            .unwrap();
        let config = serve_args(&["--config", file.to_str().unwrap(), "--listen", "127.0.0.1:9001"]).resolve().unwrap();
        assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/from/file"));
        assert!(config.danger_plaintext);
        assert_eq!(config.max_entries_per_message, DEFAULT_MAX_ENTRIES_PER_MESSAGE);
        config.validate().unwrap();
        let off = serve_args(&["--config", file.to_str().unwrap(), "--danger-plaintext=false"]).resolve().unwrap();
        assert!(!off.danger_plaintext);
    }

    #[test]
    fn refuses_unknown_keys_and_engines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("registry.toml");
        std::fs::write(&file, "data_dri = \"x\"\n").unwrap();
        assert!(Config::load(&file).is_err());
        std::fs::write(&file, "engine = \"rocksdb\"\n").unwrap();
        let err = Config::load(&file).unwrap_err().to_string();
        assert!(err.contains("unknown storage engine"), "{err}");
        let err = Cli::try_parse_from(["ambishare-registry", "serve", "--engine", "lmdb"]).unwrap_err().to_string();
        assert!(err.contains("unknown storage engine"), "{err}");
    }

    #[test]
    fn refuses_to_serve_without_tls_or_the_danger_flag() {
        let err = serve_args(&[]).resolve().unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("refusing to serve without TLS"), "{err}");
        assert!(serve_args(&["--tls-cert", "c.pem"]).resolve().unwrap().validate().is_err());
        assert!(
            serve_args(&["--tls-cert", "c", "--tls-key", "k", "--danger-plaintext"])
                .resolve()
                .unwrap()
                .validate()
                .is_err()
        );
        serve_args(&["--tls-cert", "c", "--tls-key", "k"]).resolve().unwrap().validate().unwrap();
        serve_args(&["--danger-plaintext"]).resolve().unwrap().validate().unwrap();
    }

    #[test]
    fn config_round_trips_through_toml() {
        let config = Config { metrics_listen: Some("127.0.0.1:9100".parse().unwrap()), ..Config::default() };
        let back: Config = toml::from_str(&config.to_toml().unwrap()).unwrap();
        assert_eq!(back, config);
    }
}
