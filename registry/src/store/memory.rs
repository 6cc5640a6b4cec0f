//! A backend in process memory: ordered maps behind one mutex. Nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use super::{KeyValue, Pair, Store, Tree, prefix_end, scan_start};
use crate::error::{Error, Result};

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MemoryStore {
    /// Indexed by `Tree::index`.
    trees: Mutex<[Map; Tree::ALL.len()]>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, [Map; Tree::ALL.len()]>> {
        // A panic while the lock was held may have left a write half done.
        self.trees.lock().map_err(|_| Error::Store("memory store poisoned by an earlier panic".into()))
    }
}

impl Store for MemoryStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?[tree.index()].get(key).cloned())
    }

    fn apply(&self, preconditions: &[KeyValue<'_>], writes: &[KeyValue<'_>]) -> Result<bool> {
        let mut trees = self.lock()?;
        for (tree, key, expected) in preconditions {
            if trees[tree.index()].get(*key).map(Vec::as_slice) != *expected {
                return Ok(false);
            }
        }
        for (tree, key, value) in writes {
            let map = &mut trees[tree.index()];
            match value {
                Some(v) => map.insert(key.to_vec(), v.to_vec()),
                None => map.remove(*key),
            };
        }
        Ok(true)
    }

    fn scan(&self, tree: Tree, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>> {
        let trees = self.lock()?;
        let start = scan_start(prefix, after);
        let end = prefix_end(prefix);
        // BTreeMap::range panics on an empty range: stop before it.
        let past_end = match (&start, &end) {
            (Bound::Included(s) | Bound::Excluded(s), Some(e)) => *s >= e.as_slice(),
            _ => false,
        };
        if past_end || limit == 0 {
            return Ok(Vec::new());
        }
        let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let range = trees[tree.index()].range::<[u8], _>((start, end));
        Ok(range.take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn last(&self, tree: Tree, prefix: &[u8]) -> Result<Option<Pair>> {
        let trees = self.lock()?;
        let end = prefix_end(prefix);
        let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = trees[tree.index()].range::<[u8], _>((Bound::Included(prefix), end));
        Ok(range.next_back().map(|(k, v)| (k.clone(), v.clone())))
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64> {
        let trees = self.lock()?;
        Ok(trees.iter().flat_map(|m| m.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum())
    }

    fn len(&self, tree: Tree) -> Result<u64> {
        Ok(self.lock()?[tree.index()].len() as u64)
    }
}
