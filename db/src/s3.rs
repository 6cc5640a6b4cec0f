//! The S3 backend, through `object_store`: one object per key.
//!
//! A key of namespace `ns` is the object `PREFIX/kv/ns/k` ++ the key in
//! lowercase hex. Hex keeps S3's key order (bytes of UTF-8) equal to the
//! byte order of the keys, so a listing from an offset is a page in key
//! order; the `k` lets the empty key have a name.

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};

use crate::config::S3Config;
use crate::error::{BoxError, Error, Result};
use crate::kv::{Creation, KvStore, Namespace, Pair};

/// Values a listing with values fetches at once.
const GETS_IN_FLIGHT: usize = 8;

pub struct S3Store {
    store: AmazonS3,
    /// `PREFIX/kv`: the parent of every namespace's directory.
    root: Path,
    bucket: String,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store({}, {})", self.store, self.root)
    }
}

impl S3Store {
    /// Builds the client; no request is made until the first operation.
    pub fn open(config: &S3Config) -> Result<Self> {
        let credentials = config.resolve_credentials()?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(credentials.secret_access_key.expose())
            .with_client_options(ClientOptions::new().with_allow_http(config.is_plain_http()))
            .with_http_connector(StatusAwareConnector);
        if let Some(max_retries) = config.max_retries {
            builder = builder.with_retry(RetryConfig { max_retries, ..RetryConfig::default() });
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| Error::Config(format!("S3 client: {e}")))?;
        let root = Path::parse(&config.prefix)
            .map_err(|e| Error::Config(format!("S3 prefix {:?}: {e}", config.prefix)))?
            .join("kv");
        Ok(S3Store { store, root, bucket: config.bucket.clone() })
    }

    /// One listing request, so a wrong bucket, endpoint or key fails at open
    /// rather than at the first request of a client.
    pub async fn probe(&self) -> Result<()> {
        match self.store.list_with_delimiter(Some(&self.root)).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err("probe")(e) {
                // What is neither transient nor a refusal is most likely a
                // missing bucket (a 404 that object_store reports untyped).
                Error::Backend { source, .. } => Err(Error::Config(format!(
                    "listing the S3 bucket {:?} failed (does it exist?): {source}",
                    self.bucket
                ))),
                other => Err(other),
            },
        }
    }

    fn dir(&self, namespace: &Namespace) -> Path {
        self.root.clone().join(namespace.as_str())
    }

    fn path(&self, namespace: &Namespace, key: &[u8]) -> Path {
        self.dir(namespace).join(object_name(key))
    }
}

fn object_name(key: &[u8]) -> String {
    format!("k{}", hex::encode(key))
}

fn key_of(path: &Path) -> Result<Vec<u8>> {
    let foreign = || Error::corrupt("the S3 key space", format!("object {path} is not one of ours"));
    let name = path.filename().ok_or_else(foreign)?;
    let hex_key = name.strip_prefix('k').ok_or_else(foreign)?;
    hex::decode(hex_key).map_err(|_| foreign())
}

/// The exclusive offset a listing of the keys under `prefix` starts from:
/// the greatest object name below every name of a key starting with `prefix`.
fn start_offset(prefix: &[u8]) -> Option<String> {
    let (&last, init) = prefix.split_last()?;
    Some(match last.checked_sub(1) {
        // Keys under `init ++ last` start with `k hex(init) hex(last)`; every
        // name under `init ++ (last - 1)` sorts below `k hex(init) hex(last - 1) g`
        // ('g' is above every hex digit) and every wanted one above it.
        Some(below) => format!("{}{:02x}g", object_name(init), below),
        // Keys under `init ++ 00` are the first names longer than `k hex(init)`.
        None => object_name(init),
    })
}

/// Maps an `object_store` error, telling transient faults from lasting ones by type.
fn map_err(op: &'static str) -> impl FnOnce(object_store::Error) -> Error {
    move |e| match e {
        object_store::Error::NotFound { path, .. } => Error::NotFound(format!("S3 object {path}")),
        object_store::Error::PermissionDenied { source, .. } | object_store::Error::Unauthenticated { source, .. } => {
            Error::PermissionDenied { op, source }
        }
        object_store::Error::Precondition { path, .. }
        | object_store::Error::AlreadyExists { path, .. }
        | object_store::Error::NotModified { path, .. } => {
            Error::Precondition(format!("{op} of S3 object {path}: a precondition failed"))
        }
        object_store::Error::InvalidPath { .. }
        | object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented { .. }
        | object_store::Error::UnknownConfigurationKey { .. } => Error::Config(format!("S3 {op}: {e}")),
        other => {
            let class = classify(&other);
            let source: BoxError = Box::new(other);
            match class {
                Class::Transient => Error::Unavailable { op, source },
                Class::Refused => Error::PermissionDenied { op, source },
                Class::Other => Error::Backend { op, source },
            }
        }
    }
}

enum Class {
    /// A transport failure or a busy server: worth retrying later.
    Transient,
    /// 401 or 403: the credentials or their rights.
    Refused,
    Other,
}

/// Finds, by type, what in the error's chain says what kind of fault it is.
fn classify(error: &(dyn std::error::Error + 'static)) -> Class {
    let chain = || std::iter::successors(Some(error), |e| e.source());
    // An `Answered` sits below the `HttpError` that carries it: look for it first.
    if let Some(answered) = chain().find_map(|e| e.downcast_ref::<Answered>()) {
        return if answered.is_refusal() { Class::Refused } else { Class::Transient };
    }
    match chain().find_map(|e| e.downcast_ref::<HttpError>()).map(HttpError::kind) {
        Some(HttpErrorKind::Connect | HttpErrorKind::Request | HttpErrorKind::Timeout | HttpErrorKind::Interrupted) => {
            Class::Transient
        }
        _ => Class::Other,
    }
}

/// An S3 answer whose status decides how to treat the failure: 5xx or 429
/// (transient), 401 or 403 (refused).
///
/// `object_store` keeps the status of most failed requests (all failed
/// listings, any status it has no variant for) in a private type, readable
/// only by parsing its message. The connector below turns those answers into
/// an [`HttpError`] holding an `Answered`, which `classify` finds by type.
/// Busy answers become `Request` errors, which `object_store` still retries
/// with backoff first, as it retries 5xx; refusals become `Unknown` errors,
/// which it does not retry.
#[derive(Debug, thiserror::Error)]
#[error("the S3 server answered {status}")]
struct Answered {
    status: u16,
}

impl Answered {
    fn is_refusal(&self) -> bool {
        matches!(self.status, 401 | 403)
    }
}

#[derive(Debug)]
struct StatusAwareConnector;

impl HttpConnector for StatusAwareConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        // reqwest is built without a TLS provider of its own (an aws-lc-rs
        // beside the workspace's ring would leave rustls no process default),
        // so it needs one installed; an error means one already is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(HttpClient::new(StatusAware(ReqwestConnector {}.connect(options)?)))
    }
}

#[derive(Debug)]
struct StatusAware(HttpClient);

#[async_trait]
impl HttpService for StatusAware {
    async fn call(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let response = self.0.execute(request).await?;
        let status = response.status();
        let answered = Answered { status: status.as_u16() };
        if answered.is_refusal() {
            return Err(HttpError::new(HttpErrorKind::Unknown, answered));
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(HttpError::new(HttpErrorKind::Request, answered));
        }
        Ok(response)
    }
}

#[async_trait]
impl KvStore for S3Store {
    async fn get(&self, namespace: &Namespace, key: &[u8]) -> Result<Option<Bytes>> {
        let path = self.path(namespace, key);
        match self.store.get(&path).await {
            Ok(found) => Ok(Some(found.bytes().await.map_err(map_err("get"))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(map_err("get")(e)),
        }
    }

    async fn put_if_absent(&self, namespace: &Namespace, key: &[u8], value: Bytes) -> Result<Creation> {
        let path = self.path(namespace, key);
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&path, PutPayload::from_bytes(value), options).await {
            Ok(_) => Ok(Creation::Created),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(Creation::AlreadyExists)
            }
            Err(e) => Err(map_err("put_if_absent")(e)),
        }
    }

    async fn put(&self, namespace: &Namespace, key: &[u8], value: Bytes) -> Result<()> {
        let path = self.path(namespace, key);
        self.store.put(&path, PutPayload::from_bytes(value)).await.map_err(map_err("put"))?;
        Ok(())
    }

    async fn delete(&self, namespace: &Namespace, key: &[u8]) -> Result<()> {
        let path = self.path(namespace, key);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_err("delete")(e)),
        }
    }

    async fn list_keys(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let dir = self.dir(namespace);
        let offset = match after {
            Some(after) if after >= prefix => Some(object_name(after)),
            _ => start_offset(prefix),
        };
        let mut listing = match offset {
            Some(offset) => self.store.list_with_offset(Some(&dir), &dir.clone().join(offset)),
            None => self.store.list(Some(&dir)),
        };
        let mut keys: Vec<Vec<u8>> = Vec::new();
        while let Some(meta) = listing.try_next().await.map_err(map_err("list"))? {
            let key = key_of(&meta.location)?;
            if keys.last().is_some_and(|last| *last >= key) || after.is_some_and(|a| key.as_slice() <= a) {
                // object_store promises no order; S3 lists in key order and
                // paging relies on it, so a store that does not is refused.
                return Err(Error::Backend { op: "list", source: "the S3 listing is not in key order".into() });
            }
            if key.as_slice() < prefix {
                continue;
            }
            if !key.starts_with(prefix) {
                break;
            }
            keys.push(key);
            if keys.len() == limit {
                break;
            }
        }
        Ok(keys)
    }

    async fn list(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>> {
        let keys = self.list_keys(namespace, prefix, after, limit).await?;
        let gets: Vec<_> = keys.iter().map(|key| self.get(namespace, key)).collect();
        let values: Vec<Option<Bytes>> = futures::stream::iter(gets).buffered(GETS_IN_FLIGHT).try_collect().await?;
        // A key deleted between the listing and its get is left out.
        Ok(keys.into_iter().zip(values).filter_map(|(k, v)| Some((k, v?))).collect())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_sort_like_their_keys() {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![0, 0xff],
            vec![1],
            vec![0x0f],
            vec![0x10],
            vec![0xff],
            vec![0xff, 0],
        ];
        keys.sort();
        let mut names: Vec<String> = keys.iter().map(|k| object_name(k)).collect();
        names.sort();
        let back: Vec<Vec<u8>> = names.iter().map(|n| hex::decode(&n[1..]).unwrap_or_default()).collect();
        assert_eq!(back, keys);
    }

    #[test]
    fn start_offsets_sit_just_below_the_prefix() {
        let all: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0x5f, 0xff],
            vec![0x60],
            vec![0x60, 0],
            vec![0x61],
            vec![0x61, 0x00],
            vec![0x62],
        ];
        for prefix in [&[0x61u8][..], &[0x60], &[0x60, 0x00], &[0x00], &[0x61, 0x00]] {
            let Some(offset) = start_offset(prefix) else { panic!("no offset for {prefix:?}") };
            for key in &all {
                let listed = object_name(key) > offset;
                assert_eq!(listed, key.as_slice() >= prefix, "prefix {prefix:?}, key {key:?}, offset {offset}");
            }
        }
        assert_eq!(start_offset(b""), None);
    }
}
