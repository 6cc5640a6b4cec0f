//! The default backend: one embedded sled database, one sled tree per namespace.
//!
//! sled's calls block on disk, so each runs on tokio's blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::kv::{Creation, KvStore, Namespace, Pair, list_bounds};

/// sled's log segment size, fixed when a database is created.
///
/// sled 0.34.7 can deadlock when a writer rolls over to a new segment while
/// a truncation of the file tail waits behind I/O jobs blocked on the lock
/// the writer holds (reproduced in the registry with the default 512 KiB
/// segments, 2 of 5 runs of 60 000 entry transactions with concurrent
/// readers). The largest segments sled allows make rollovers 16 times rarer;
/// no hang was seen in 800 000 such transactions with them.
///
/// The two other sled 0.34 deadlocks met in this project are avoided by not
/// calling what caused them: `generate_id` under concurrent writers, and
/// `apply_batch`, which takes sled's process-wide write lock and deadlocked
/// against many concurrent readers (sled issue #1412). Every write here is
/// one single-key `insert`, `remove` or `compare_and_swap`.
const SEGMENT_SIZE: usize = 8 << 20;

/// How long `open` waits for the file lock of a database being closed.
///
/// sled releases its lock only once its epoch-deferred cleanup has run, a few
/// milliseconds after the last handle is dropped, so a reopen in the same
/// process (a restart in tests) briefly sees it held.
const LOCK_WAIT: Duration = Duration::from_secs(2);

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

pub struct SledStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// Trees opened so far, by namespace (opening takes a sled-wide lock).
    trees: Mutex<HashMap<Namespace, sled::Tree>>,
}

fn backend(op: &'static str) -> impl FnOnce(sled::Error) -> Error {
    move |e| match e {
        sled::Error::Corruption { .. } => Error::corrupt("the sled database", e.to_string()),
        sled::Error::Io(io) => Error::io(format!("sled {op}"), io),
        other => Error::Backend { op, source: Box::new(other) },
    }
}

impl Inner {
    fn tree(&self, namespace: &Namespace) -> Result<sled::Tree> {
        let mut trees = self.trees.lock().map_err(|_| Error::Backend {
            op: "open tree",
            source: "the sled tree cache's lock was poisoned by a panic".into(),
        })?;
        if let Some(tree) = trees.get(namespace) {
            return Ok(tree.clone());
        }
        let tree = self.db.open_tree(namespace.as_str()).map_err(backend("open tree"))?;
        trees.insert(namespace.clone(), tree.clone());
        Ok(tree)
    }

    fn scan(&self, namespace: &Namespace, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>> {
        let Some(bounds) = list_bounds(prefix, after) else { return Ok(Vec::new()) };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.tree(namespace)?.range(bounds).take(limit) {
            let (k, v) = item.map_err(backend("list"))?;
            out.push((k.to_vec(), Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }
}

/// Whether something holds the lock sled takes on its `db` file.
///
/// sled reports a held lock only as the text of an `Other` I/O error; this
/// probe takes the same lock (`flock`, as sled does) to tell it by type.
/// Closing the probe's file releases only the probe's lock.
fn is_held(dir: &Path) -> Result<bool> {
    let path = dir.join("db");
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        // No database yet: nothing to hold.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
    }
}

impl SledStore {
    /// Opens (creating) the database in `dir`; refuses, after a short wait,
    /// one that another process holds.
    pub async fn open(dir: PathBuf, options: SledOptions) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(&dir, options))
            .await
            .map_err(|e| Error::join("open", e))?
    }

    fn open_blocking(dir: &Path, options: SledOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let deadline = Instant::now() + LOCK_WAIT;
        while is_held(dir)? {
            if Instant::now() >= deadline {
                return Err(Error::Precondition(format!(
                    "the sled database {} is in use by another process",
                    dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity)
            .segment_size(SEGMENT_SIZE)
            .open()
            .map_err(backend("open"))?;
        Ok(SledStore { inner: Arc::new(Inner { db, trees: Mutex::default() }) })
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| Error::join(op, e))?
    }

    /// Bytes the database takes on disk.
    pub async fn size_on_disk(&self) -> Result<u64> {
        self.blocking("size", |inner| inner.db.size_on_disk().map_err(backend("size"))).await
    }
}

#[async_trait]
impl KvStore for SledStore {
    async fn get(&self, namespace: &Namespace, key: &[u8]) -> Result<Option<Bytes>> {
        let (namespace, key) = (namespace.clone(), key.to_vec());
        self.blocking("get", move |inner| {
            Ok(inner.tree(&namespace)?.get(key).map_err(backend("get"))?.map(|v| Bytes::copy_from_slice(&v)))
        })
        .await
    }

    async fn put_if_absent(&self, namespace: &Namespace, key: &[u8], value: Bytes) -> Result<Creation> {
        let (namespace, key) = (namespace.clone(), key.to_vec());
        self.blocking("put_if_absent", move |inner| {
            let swapped = inner
                .tree(&namespace)?
                .compare_and_swap(key, None as Option<&[u8]>, Some(value.as_ref()))
                .map_err(backend("put_if_absent"))?;
            Ok(match swapped {
                Ok(()) => Creation::Created,
                Err(_) => Creation::AlreadyExists,
            })
        })
        .await
    }

    async fn put(&self, namespace: &Namespace, key: &[u8], value: Bytes) -> Result<()> {
        let (namespace, key) = (namespace.clone(), key.to_vec());
        self.blocking("put", move |inner| {
            inner.tree(&namespace)?.insert(key, value.as_ref()).map_err(backend("put"))?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, namespace: &Namespace, key: &[u8]) -> Result<()> {
        let (namespace, key) = (namespace.clone(), key.to_vec());
        self.blocking("delete", move |inner| {
            inner.tree(&namespace)?.remove(key).map_err(backend("delete"))?;
            Ok(())
        })
        .await
    }

    async fn list(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>> {
        let (namespace, prefix, after) = (namespace.clone(), prefix.to_vec(), after.map(<[u8]>::to_vec));
        self.blocking("list", move |inner| inner.scan(&namespace, &prefix, after.as_deref(), limit)).await
    }

    async fn flush(&self) -> Result<()> {
        self.blocking("flush", |inner| inner.db.flush().map(|_| ()).map_err(backend("flush"))).await
    }
}
