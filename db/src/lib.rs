//! Storage of ambishare: the same small async API over sled (embedded, the
//! default), process memory (tests) and S3 (SeaweedFS, Ceph RGW, AWS), so a
//! node scales past one machine by changing its store config.
//!
//! # Design
//!
//! - **Immutable keys, create-if-absent.** The one write that must be
//!   atomic, "create this key unless it exists", is [`KvStore::put_if_absent`]:
//!   exactly one of many concurrent creators wins, on every backend (on S3 it
//!   is a conditional PUT, `If-None-Match: *`). Records are written once and
//!   then only read; [`KvStore::put`] overwrites, for a node's own local
//!   records. There are no multi-key transactions and no compare-and-swap on
//!   values: S3 engines offer neither reliably (Ceph RGW ignores `If-Match`).
//!   A caller that writes several keys writes the dependent ones first and
//!   the one that makes them visible last, as the blob store does.
//! - **No sequence numbers.** A dense counter needs a mutable head that every
//!   writer updates: a hot spot and a compare-and-swap on S3. Order comes
//!   from sortable keys instead (UUIDv7 ids, timestamps in big-endian), and
//!   [`KvStore::list`] pages through keys in byte order, from a prefix and
//!   after the last key seen.
//! - **Chunked blobs.** Files (models, tens of MB) go through [`BlobStore`]
//!   as streams, cut into 1 MiB chunks stored by their SHA-256, then a
//!   manifest under the whole file's SHA-256, written last: nobody holds a
//!   whole file in memory, a reader never sees half a blob, and every read
//!   is checked against the hashes (see [`blob`]).
//! - **Typed errors.** One [`Error`]; [`Error::is_retryable`] tells transient
//!   faults (timeouts, connections, 5xx, throttling) from lasting ones.
//!
//! Open a backend from a [`StoreConfig`] (a TOML table or a command-line
//! form such as `sled:DIR` or `s3://bucket?endpoint=...`): [`open`].

pub mod blob;
mod config;
mod error;
mod kv;
mod memory;
mod s3;
mod sled;

#[cfg(feature = "conformance")]
pub mod conformance;

use std::sync::Arc;

pub use crate::blob::{Blob, BlobId, BlobInfo, BlobStore, BlobStream, CHUNK_SIZE, ChunkStream, ChunkedBlobs};
pub use crate::config::{S3Config, S3Credentials, Secret, StoreConfig};
pub use crate::error::{BoxError, Error, Result};
pub use crate::kv::{Creation, KvStore, MAX_NAMESPACE_LEN, Namespace, Pair};
pub use crate::memory::MemoryStore;
pub use crate::s3::S3Store;
pub use crate::sled::{SledOptions, SledStore};
/// The value type of every read and write (re-exported so callers need not depend on `bytes`).
pub use bytes::Bytes;

/// An open store: its key-value half and its blobs (kept in reserved
/// namespaces of the same backend). Cheap to clone.
#[derive(Clone)]
pub struct Store {
    kv: Arc<dyn KvStore>,
    blobs: Arc<dyn BlobStore>,
}

impl Store {
    /// A store over `kv`, with [`ChunkedBlobs`] on top of it.
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        let blobs = Arc::new(ChunkedBlobs::new(kv.clone()));
        Store { kv, blobs }
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// Opens the backend `config` names.
pub async fn open(config: &StoreConfig) -> Result<Store> {
    config.open().await
}
