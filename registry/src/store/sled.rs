//! The default backend: one sled database, one sled tree per [`Tree`].

use std::path::Path;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional, TransactionalTree};

use super::{KeyValue, Pair, SledOptions, Store, Tree, prefix_end, scan_start};
use crate::error::{Error, Result};

pub struct SledStore {
    db: sled::Db,
    /// Indexed by `Tree::index`.
    trees: Vec<sled::Tree>,
}

fn store_err(e: sled::Error) -> Error {
    Error::Store(e.to_string())
}

/// sled's log segment size, fixed when a database is created.
///
/// sled 0.34.7 can deadlock when a writer rolls over to a new segment while
/// a truncation of the file tail waits behind I/O jobs blocked on the lock
/// the writer holds (reproduced here with the default 512 KiB segments, 2 of
/// 5 runs of 60 000 entry transactions with concurrent readers). The largest
/// segments sled allows make rollovers 16 times rarer; no hang was seen in
/// 800 000 such transactions with them.
const SEGMENT_SIZE: usize = 8 << 20;

/// Returned from a transaction whose precondition failed.
struct PreconditionFailed;

impl SledStore {
    pub fn open(dir: &Path, options: SledOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_capacity)
            .segment_size(SEGMENT_SIZE)
            // Every write path flushes before it acknowledges; no background flusher.
            .flush_every_ms(None)
            .open()
            .map_err(|e| Error::Store(format!("opening {}: {e}", dir.display())))?;
        let trees =
            Tree::ALL.iter().map(|t| db.open_tree(t.name())).collect::<sled::Result<Vec<_>>>().map_err(store_err)?;
        Ok(SledStore { db, trees })
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        &self.trees[tree.index()]
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree(tree).get(key).map_err(store_err)?.map(|v| v.to_vec()))
    }

    fn apply(&self, preconditions: &[KeyValue<'_>], writes: &[KeyValue<'_>]) -> Result<bool> {
        // The transaction covers only the trees involved, in `Tree` order.
        let mut involved: Vec<Tree> = preconditions.iter().chain(writes).map(|(t, _, _)| *t).collect();
        involved.sort_unstable();
        involved.dedup();
        if involved.is_empty() {
            return Ok(true);
        }
        let slot = |tree: Tree| involved.iter().position(|t| *t == tree).unwrap_or(0);
        let trees: Vec<&sled::Tree> = involved.iter().map(|t| self.tree(*t)).collect();
        let result = trees.as_slice().transaction(|txs: &Vec<TransactionalTree>| {
            for (tree, key, expected) in preconditions {
                let actual = txs[slot(*tree)].get(key)?;
                if actual.as_deref() != *expected {
                    return Err(ConflictableTransactionError::Abort(PreconditionFailed));
                }
            }
            for (tree, key, value) in writes {
                let tx = &txs[slot(*tree)];
                match value {
                    Some(v) => tx.insert(*key, *v)?,
                    None => tx.remove(*key)?,
                };
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(true),
            Err(TransactionError::Abort(PreconditionFailed)) => Ok(false),
            Err(TransactionError::Storage(e)) => Err(store_err(e)),
        }
    }

    fn scan(&self, tree: Tree, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Pair>> {
        let start = scan_start(prefix, after);
        let end = match prefix_end(prefix) {
            Some(end) => std::ops::Bound::Excluded(end),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.tree(tree).range::<&[u8], _>((start, end.as_ref().map(Vec::as_slice))).take(limit) {
            let (k, v) = item.map_err(store_err)?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, tree: Tree, prefix: &[u8]) -> Result<Option<Pair>> {
        let found = if prefix.is_empty() {
            self.tree(tree).last().map_err(store_err)?
        } else {
            self.tree(tree).scan_prefix(prefix).next_back().transpose().map_err(store_err)?
        };
        Ok(found.map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(store_err)
    }

    fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk().map_err(store_err)
    }

    fn len(&self, tree: Tree) -> Result<u64> {
        Ok(self.tree(tree).len() as u64)
    }
}
