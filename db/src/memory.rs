//! A backend in process memory: ordered maps behind one mutex. Nothing
//! survives the process; for tests and benchmarks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::kv::{Creation, KvStore, Namespace, Pair, list_bounds};

type Map = BTreeMap<Vec<u8>, Bytes>;

#[derive(Default)]
pub struct MemoryStore {
    namespaces: Mutex<HashMap<Namespace, Map>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, HashMap<Namespace, Map>>> {
        // Every write is one map operation, so a panic elsewhere cannot have
        // left one half done; the poison is only reported.
        self.namespaces.lock().map_err(|_| Error::Backend {
            op: "memory",
            source: "the memory store's lock was poisoned by a panic".into(),
        })
    }

    fn scan(&self, namespace: &Namespace, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>> {
        let namespaces = self.lock()?;
        let (Some(map), Some(bounds)) = (namespaces.get(namespace), list_bounds(prefix, after)) else {
            return Ok(Vec::new());
        };
        Ok(map.range(bounds).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    async fn get(&self, namespace: &Namespace, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.lock()?.get(namespace).and_then(|m| m.get(key)).cloned())
    }

    async fn put_if_absent(&self, namespace: &Namespace, key: &[u8], value: Bytes) -> Result<Creation> {
        let mut namespaces = self.lock()?;
        let map = namespaces.entry(namespace.clone()).or_default();
        if map.contains_key(key) {
            return Ok(Creation::AlreadyExists);
        }
        map.insert(key.to_vec(), value);
        Ok(Creation::Created)
    }

    async fn put(&self, namespace: &Namespace, key: &[u8], value: Bytes) -> Result<()> {
        self.lock()?.entry(namespace.clone()).or_default().insert(key.to_vec(), value);
        Ok(())
    }

    async fn delete(&self, namespace: &Namespace, key: &[u8]) -> Result<()> {
        if let Some(map) = self.lock()?.get_mut(namespace) {
            map.remove(key);
        }
        Ok(())
    }

    async fn list(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Pair>> {
        self.scan(namespace, prefix, after, limit)
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}
