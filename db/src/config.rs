//! Which backend to open, from a config file or a command line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::Store;
use crate::error::{Error, Result};
use crate::kv::KvStore;
use crate::memory::MemoryStore;
use crate::s3::S3Store;
use crate::sled::{SledOptions, SledStore};

/// The storage backend and its settings.
///
/// In a TOML config: `engine = "sled"` with `path`; `engine = "memory"`;
/// `engine = "s3"` with the fields of [`S3Config`].
///
/// On a command line ([`FromStr`]):
/// - `sled:DIR`: sled in DIR (created if missing);
/// - `memory`: process memory, lost on exit;
/// - `s3://BUCKET[/PREFIX][?endpoint=URL&region=REGION&credentials_file=PATH]`,
///   e.g. `s3://ambishare?endpoint=http://127.0.0.1:8333&region=us-east-1`.
///   Values are taken literally (no percent-decoding) and cannot hold `&`.
///   Credentials never go in the URL: they come from `credentials_file`, or
///   else from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "lowercase")]
pub enum StoreConfig {
    /// sled in a local directory: the embedded default.
    Sled {
        /// The database directory (created if missing).
        path: PathBuf,
        /// sled's page cache, in bytes.
        #[serde(default = "default_cache_capacity")]
        cache_capacity: u64,
    },
    /// Process memory (lost on exit; for tests and benchmarks).
    Memory,
    /// An S3 bucket (SeaweedFS, Ceph RGW, AWS...).
    S3(S3Config),
}

fn default_cache_capacity() -> u64 {
    SledOptions::default().cache_capacity
}

/// Settings of the S3 backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The bucket, which must exist.
    pub bucket: String,
    /// The S3 endpoint, `http://HOST:PORT` or `https://...`; None: AWS itself.
    /// `http://` sends the data (not the secret: requests are signed) in the
    /// clear; use it on loopback or a trusted network only.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The signing region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Where in the bucket this store lives (`a/b`; empty: the bucket's root),
    /// so that several stores can share a bucket.
    #[serde(default)]
    pub prefix: String,
    /// A TOML file with `access_key_id` and `secret_access_key`, readable by
    /// its owner only. None: the `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` environment variables.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// How often the client retries a transient failure (with backoff, for at
    /// most 3 minutes) before reporting it. None: 10.
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// Credentials given in code (never read from or written to a config file).
    #[serde(skip)]
    pub credentials: Option<S3Credentials>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

impl S3Config {
    /// A config of `bucket` at `endpoint`, other fields at their defaults.
    pub fn new(bucket: impl Into<String>, endpoint: Option<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            endpoint,
            region: default_region(),
            prefix: String::new(),
            credentials_file: None,
            max_retries: None,
            credentials: None,
        }
    }

    pub(crate) fn is_plain_http(&self) -> bool {
        self.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<()> {
        let b = self.bucket.as_bytes();
        let bucket_ok = (3..=63).contains(&b.len())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric);
        if !bucket_ok {
            return Err(Error::Config(format!(
                "S3 bucket {:?}: expected 3 to 63 of a-z, 0-9, '.' and '-', starting and ending with a letter or digit",
                self.bucket
            )));
        }
        if let Some(endpoint) = &self.endpoint {
            let rest = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://"));
            if rest.is_none_or(str::is_empty) {
                return Err(Error::Config(format!(
                    "S3 endpoint {endpoint:?}: expected http://HOST:PORT or https://HOST[:PORT]"
                )));
            }
        }
        if self.region.is_empty() {
            return Err(Error::Config("S3 region is empty".into()));
        }
        object_store::path::Path::parse(&self.prefix)
            .map_err(|e| Error::Config(format!("S3 prefix {:?}: {e}", self.prefix)))?;
        Ok(())
    }

    /// The credentials: given in code, else from the file, else from the environment.
    pub(crate) fn resolve_credentials(&self) -> Result<S3Credentials> {
        if let Some(credentials) = &self.credentials {
            return Ok(credentials.clone());
        }
        if let Some(file) = &self.credentials_file {
            return S3Credentials::from_file(file);
        }
        match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(access_key_id), Ok(secret)) if !access_key_id.is_empty() && !secret.is_empty() => {
                Ok(S3Credentials { access_key_id, secret_access_key: Secret(secret) })
            }
            _ => Err(Error::Config(
                "no S3 credentials: set credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            )),
        }
    }
}

/// An S3 access key and its secret. Debug prints the key id only.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
}

/// A secret string that is never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: String) -> Self {
        Secret(secret)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl S3Credentials {
    /// Reads a credentials file, refusing one that others may read.
    pub fn from_file(path: &Path) -> Result<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(Error::Config(format!(
                    "the S3 credentials file {} is readable by group or others; chmod 600 it",
                    path.display()
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        // Only toml's message: its full Display quotes the file's line, which may hold the secret.
        toml::from_str(&text).map_err(|e: toml::de::Error| {
            Error::Config(format!("the S3 credentials file {}: {}", path.display(), e.message()))
        })
    }
}

/// Where the store is, fit for logs: never its credentials.
impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Sled { path, .. } => write!(f, "sled:{}", path.display()),
            StoreConfig::Memory => f.write_str("memory"),
            StoreConfig::S3(s3) => {
                write!(f, "s3://{}/{} at {}", s3.bucket, s3.prefix, s3.endpoint.as_deref().unwrap_or("AWS"))
            }
        }
    }
}

impl StoreConfig {
    /// Opens the backend this config names.
    pub async fn open(&self) -> Result<Store> {
        let kv: Arc<dyn KvStore> = match self {
            StoreConfig::Sled { path, cache_capacity } => {
                Arc::new(SledStore::open(path.clone(), SledOptions { cache_capacity: *cache_capacity }).await?)
            }
            StoreConfig::Memory => Arc::new(MemoryStore::new()),
            StoreConfig::S3(s3) => {
                s3.validate()?;
                let store = S3Store::open(s3)?;
                store.probe().await?;
                Arc::new(store)
            }
        };
        Ok(Store::new(kv))
    }
}

impl FromStr for StoreConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if s == "memory" {
            return Ok(StoreConfig::Memory);
        }
        if let Some(dir) = s.strip_prefix("sled:") {
            if dir.is_empty() {
                return Err(Error::Config("sled: needs a directory, as in sled:/var/lib/ambishare".into()));
            }
            return Ok(StoreConfig::Sled { path: dir.into(), cache_capacity: default_cache_capacity() });
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            return parse_s3_url(rest).map(StoreConfig::S3);
        }
        Err(Error::Config(format!(
            "unknown store {s:?}; expected \"sled:DIR\", \"memory\" or \"s3://BUCKET?endpoint=URL&region=REGION\""
        )))
    }
}

fn parse_s3_url(rest: &str) -> Result<S3Config> {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    let mut config = S3Config::new(bucket, None);
    config.prefix = prefix.trim_end_matches('/').to_owned();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("S3 URL parameter {pair:?}: expected NAME=VALUE")))?;
        match name {
            "endpoint" => config.endpoint = Some(value.to_owned()),
            "region" => config.region = value.to_owned(),
            "credentials_file" => config.credentials_file = Some(value.into()),
            other => {
                return Err(Error::Config(format!(
                    "unknown S3 URL parameter {other:?}; expected endpoint, region or credentials_file \
                     (credentials never go in the URL)"
                )));
            }
        }
    }
    config.validate()?;
    Ok(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn command_line_forms_parse() {
        assert_eq!("memory".parse::<StoreConfig>().unwrap(), StoreConfig::Memory);
        assert_eq!(
            "sled:/tmp/x".parse::<StoreConfig>().unwrap(),
            StoreConfig::Sled { path: "/tmp/x".into(), cache_capacity: 256 << 20 }
        );
        let StoreConfig::S3(s3) =
            "s3://bucket-1/a/b?endpoint=http://127.0.0.1:8333&region=eu-west-3&credentials_file=/etc/s3.toml"
                .parse::<StoreConfig>()
                .unwrap()
        else {
            panic!("not s3")
        };
        assert_eq!(s3.bucket, "bucket-1");
        assert_eq!(s3.prefix, "a/b");
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(s3.region, "eu-west-3");
        assert_eq!(s3.credentials_file.as_deref(), Some(Path::new("/etc/s3.toml")));
        assert!(s3.is_plain_http());
        let StoreConfig::S3(plain) = "s3://bucket".parse::<StoreConfig>().unwrap() else { panic!("not s3") };
        assert_eq!((plain.region.as_str(), plain.endpoint, plain.prefix.as_str()), ("us-east-1", None, ""));
    }

    #[test]
    fn bad_command_lines_are_refused_clearly() {
        let err = |s: &str| s.parse::<StoreConfig>().unwrap_err().to_string();
        assert!(err("rocksdb:/x").contains("unknown store \"rocksdb:/x\""));
        assert!(err("sled:").contains("needs a directory"));
        assert!(err("s3://B").contains("S3 bucket \"B\""));
        assert!(err("s3://bucket?endpoint=ftp://x").contains("S3 endpoint"));
        assert!(err("s3://bucket?secret=x").contains("unknown S3 URL parameter \"secret\""));
        assert!(err("s3://bucket?region").contains("expected NAME=VALUE"));
        assert!(err("s3://bucket/a//b").contains("S3 prefix"));
    }

    #[test]
    fn toml_configs_name_their_engine() {
        let sled: StoreConfig = toml::from_str("engine = \"sled\"\npath = \"/d\"").unwrap();
        assert_eq!(sled, StoreConfig::Sled { path: "/d".into(), cache_capacity: 256 << 20 });
        let memory: StoreConfig = toml::from_str("engine = \"memory\"").unwrap();
        assert_eq!(memory, StoreConfig::Memory);
        let s3: StoreConfig =
            toml::from_str("engine = \"s3\"\nbucket = \"b12\"\nendpoint = \"http://h:1\"\ncredentials_file = \"/c\"")
                .unwrap();
        let StoreConfig::S3(s3) = s3 else { panic!("not s3") };
        assert_eq!((s3.bucket.as_str(), s3.region.as_str()), ("b12", "us-east-1"));
        let unknown = toml::from_str::<StoreConfig>("engine = \"tikv\"").unwrap_err().to_string();
        assert!(unknown.contains("tikv"), "{unknown}");
        assert!(toml::from_str::<StoreConfig>("engine = \"s3\"\nbucket = \"b12\"\nsecret = \"x\"").is_err());
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let mut s3 = S3Config::new("bucket", None);
        s3.credentials =
            Some(S3Credentials { access_key_id: "AKID".into(), secret_access_key: Secret::new("hunter2".into()) });
        let printed = format!("{:?}", StoreConfig::S3(s3.clone()));
        assert!(printed.contains("AKID") && !printed.contains("hunter2"), "{printed}");
        let shown = StoreConfig::S3(s3).to_string();
        assert_eq!(shown, "s3://bucket/ at AWS");
    }

    #[test]
    fn credentials_files_readable_by_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s3.toml");
        std::fs::write(&file, "access_key_id = \"AKID\"\nsecret_access_key = \"hunter2\"\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = S3Credentials::from_file(&file).unwrap_err().to_string();
        assert!(err.contains("readable by group or others"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let credentials = S3Credentials::from_file(&file).unwrap();
        assert_eq!(credentials.secret_access_key.expose(), "hunter2");
        std::fs::write(&file, "access_key_id = \"AKID\"\nsecret_access_key = hunter2\n").unwrap();
        let err = S3Credentials::from_file(&file).unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
