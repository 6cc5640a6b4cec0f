//! Byte-level storage behind a small trait, so a second backend is one new file.
//!
//! The registry sees only named trees of ordered byte keys, atomic multi-tree
//! writes guarded by preconditions, and ordered prefix scans. sled is the
//! default backend; an in-memory one serves tests and benchmarks.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod memory;
mod sled;

pub use self::memory::MemoryStore;
pub use self::sled::SledStore;

/// The named key spaces of the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tree {
    /// entry id (16) → seq (u64 BE) ++ prost-encoded `types.v1.Entry`.
    Entries,
    /// seq (u64 BE) → entry id: every entry in publication order.
    BySeq,
    /// owner id (16) ++ seq → entry id.
    ByOwner,
    /// dataset ++ 0x00 ++ owner id (16) ++ seq → entry id.
    ByDataset,
    /// owner id (16) → prost-encoded `registry.v1.Owner`.
    Owners,
    /// model id (32) → prost-encoded `registry.v1.ModelHeader`.
    Models,
    /// SHA-256 (32) → the file's bytes.
    Blobs,
    /// entry id (16) → owner id (16) ++ deletion time (i64 BE ms): ids that can never be reused.
    Deleted,
    /// Small named values: the schema version, the last sequence number.
    Meta,
    /// owner id (16) ++ dataset → [`DatasetSummary`](crate::db::DatasetSummary):
    /// counts kept in the same write as each entry, for the web view's home page.
    Datasets,
    /// entry id (16) → the web view's thumbnail of the entry's public decode (JPEG),
    /// in the store so replicas share them.
    Thumbnails,
}

impl Tree {
    pub const ALL: [Tree; 11] = [
        Tree::Entries,
        Tree::BySeq,
        Tree::ByOwner,
        Tree::ByDataset,
        Tree::Owners,
        Tree::Models,
        Tree::Blobs,
        Tree::Deleted,
        Tree::Meta,
        Tree::Datasets,
        Tree::Thumbnails,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tree::Entries => "entries",
            Tree::BySeq => "by_seq",
            Tree::ByOwner => "by_owner",
            Tree::ByDataset => "by_dataset",
            Tree::Owners => "owners",
            Tree::Models => "models",
            Tree::Blobs => "blobs",
            Tree::Deleted => "deleted",
            Tree::Meta => "meta",
            Tree::Datasets => "datasets",
            Tree::Thumbnails => "thumbnails",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `(tree, key, value)`: a value expected to be there (preconditions) or to
/// put there (writes); `None` means absent, or removed.
pub type KeyValue<'a> = (Tree, &'a [u8], Option<&'a [u8]>);

/// A key and its value, as scans return them.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Byte-level operations of a storage backend. Every method may block on disk:
/// call them from blocking threads, not from async tasks.
pub trait Store: Send + Sync {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Atomically checks every precondition and, when all hold, applies every
    /// write. Returns false (and writes nothing) when a precondition failed.
    fn apply(&self, preconditions: &[KeyValue<'_>], writes: &[KeyValue<'_>]) -> Result<bool>;

    /// Up to `limit` pairs whose key starts with `prefix` and, when `after` is
    /// given, is greater than it, in key order.
    fn scan(&self, tree: Tree, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>>;

    /// The greatest pair whose key starts with `prefix`.
    fn last(&self, tree: Tree, prefix: &[u8]) -> Result<Option<Pair>>;

    /// Makes every applied write durable.
    fn flush(&self) -> Result<()>;

    fn size_on_disk(&self) -> Result<u64>;

    /// Number of keys in a tree (may walk the tree).
    fn len(&self, tree: Tree) -> Result<u64>;

    /// True when the tree holds no key.
    fn is_empty(&self, tree: Tree) -> Result<bool> {
        Ok(self.last(tree, &[])?.is_none())
    }
}

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

/// Tuning of the sled backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SledOptions {
    /// Page cache capacity in bytes.
    pub cache_capacity: u64,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions { cache_capacity: 256 << 20 }
    }
}

/// Opens the store of `engine` in `dir` (created if missing; unused by `memory`).
pub fn open(engine: Engine, dir: &Path, options: SledOptions) -> Result<Arc<dyn Store>> {
    Ok(match engine {
        Engine::Sled => Arc::new(SledStore::open(dir, options)?),
        Engine::Memory => Arc::new(MemoryStore::new()),
    })
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Where a scan starts: after `after` when it lies at or past `prefix`, else at `prefix`.
pub(crate) fn scan_start<'a>(prefix: &'a [u8], after: Option<&'a [u8]>) -> std::ops::Bound<&'a [u8]> {
    use std::ops::Bound;
    match after {
        Some(a) if a >= prefix => Bound::Excluded(a),
        _ => Bound::Included(prefix),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod test;
