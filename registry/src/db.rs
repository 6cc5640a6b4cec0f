//! The registry's records on top of the byte-level [`Store`]: keys, record
//! layouts, and the multi-tree writes that keep entries and indexes together.
//!
//! Every entry is written with its three index keys in one `apply`, so a crash
//! never leaves an entry without its index or an index without its entry.

use std::sync::Arc;

use ambishare_proto::registry::v1 as rpb;
use ambishare_proto::types::v1 as pb;
use ambishare_shared::{DatasetName, EntryId, ModelId, OwnerId};
use prost::Message;

use crate::error::{Error, Result};
use crate::store::{KeyValue, Store, Tree};

const META_SCHEMA: &[u8] = b"schema";
const META_LAST_SEQ: &[u8] = b"last_seq";
/// Present once the `datasets` tree holds a summary of every stored entry
/// (data directories from before it existed are summarised when opened).
const META_DATASETS: &[u8] = b"datasets/1";
/// Most models listed in one dataset's summary (the counts stay exact).
const MAX_SUMMARY_MODELS: usize = 64;
/// Layout version of the data directory.
const SCHEMA_VERSION: &[u8] = b"ambishare-registry/1";

/// An entry as stored: its publication sequence number and its message.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEntry {
    pub seq: u64,
    pub entry: pb::Entry,
    /// The record's exact bytes (a precondition of deletion).
    pub record: Vec<u8>,
}

/// An entry checked at the edge and ready for the writer.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub id: EntryId,
    pub owner: OwnerId,
    pub dataset: DatasetName,
    pub model: ModelId,
    pub created_unix_ms: i64,
    /// Size of the ambiguated code.
    pub code_bytes: u64,
    /// Prost encoding of the canonical `types.v1.Entry`.
    pub encoded: Vec<u8>,
}

/// What one owner's dataset holds, kept in the same write as each entry and
/// deletion, so the web view's home page reads one record per dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetSummary {
    pub entries: u64,
    /// Sum of the entries' code sizes.
    pub code_bytes: u64,
    /// Greatest creation time of an entry ever published in it (0: none).
    pub last_created_unix_ms: i64,
    /// Models used, with their entry counts (at most [`MAX_SUMMARY_MODELS`]).
    pub models: Vec<(ModelId, u64)>,
}

impl DatasetSummary {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(26 + self.models.len() * 40);
        out.extend_from_slice(&self.entries.to_be_bytes());
        out.extend_from_slice(&self.code_bytes.to_be_bytes());
        out.extend_from_slice(&self.last_created_unix_ms.to_be_bytes());
        // At most MAX_SUMMARY_MODELS, which fits a u16.
        out.extend_from_slice(&(self.models.len() as u16).to_be_bytes());
        for (model, count) in &self.models {
            out.extend_from_slice(model.as_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = || Error::corrupt("datasets", "malformed dataset summary");
        let (head, rest) = bytes.split_first_chunk::<26>().ok_or_else(bad)?;
        let u64_at = |i: usize| head.get(i..i + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        let entries = u64_at(0).ok_or_else(bad)?;
        let code_bytes = u64_at(8).ok_or_else(bad)?;
        let last_created_unix_ms = u64_at(16).ok_or_else(bad)? as i64;
        let n = usize::from(u16::from_be_bytes([head[24], head[25]]));
        if rest.len() != n * 40 || n > MAX_SUMMARY_MODELS {
            return Err(bad());
        }
        let models = rest
            .chunks_exact(40)
            .map(|c| {
                let (id, count) = c.split_at(32);
                let id: [u8; 32] = id.try_into().map_err(|_| bad())?;
                let count: [u8; 8] = count.try_into().map_err(|_| bad())?;
                Ok((ModelId::from_bytes(id), u64::from_be_bytes(count)))
            })
            .collect::<Result<_>>()?;
        Ok(DatasetSummary { entries, code_bytes, last_created_unix_ms, models })
    }

    fn add(&mut self, model: ModelId, code_bytes: u64, created_unix_ms: i64) {
        self.entries += 1;
        self.code_bytes = self.code_bytes.saturating_add(code_bytes);
        self.last_created_unix_ms = self.last_created_unix_ms.max(created_unix_ms);
        if let Some((_, count)) = self.models.iter_mut().find(|(m, _)| *m == model) {
            *count += 1;
        } else if self.models.len() < MAX_SUMMARY_MODELS {
            self.models.push((model, 1));
        }
    }

    fn remove(&mut self, model: &ModelId, code_bytes: u64) {
        self.entries = self.entries.saturating_sub(1);
        self.code_bytes = self.code_bytes.saturating_sub(code_bytes);
        if let Some(i) = self.models.iter().position(|(m, _)| m == model) {
            self.models[i].1 = self.models[i].1.saturating_sub(1);
            if self.models[i].1 == 0 {
                self.models.remove(i);
            }
        }
    }
}

/// One owner's dataset and its summary, as the home page lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetRow {
    pub owner: OwnerId,
    pub dataset: DatasetName,
    pub summary: DatasetSummary,
}

fn summary_key(owner: &OwnerId, dataset: &str) -> Vec<u8> {
    [owner.as_bytes().as_slice(), dataset.as_bytes()].concat()
}

/// What became of one entry handed to [`Db::insert_entry`].
#[derive(Debug)]
pub enum Inserted {
    Stored,
    /// The same bytes were already there.
    AlreadyStored,
    /// Refused for a reason of the caller's (a different entry under the id, a deleted id).
    Refused(Error),
}

/// Which entries a listing covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub owner: Option<OwnerId>,
    pub dataset: Option<DatasetName>,
}

/// A position in a listing: the index key of an entry, less the query's prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(Vec<u8>);

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<StoredEntry>,
    /// Where the next page starts; `None` when this was the last.
    pub next: Option<Cursor>,
}

impl Query {
    /// The index tree, key prefix and cursor length of this query.
    ///
    /// Without an owner, a dataset query walks `dataset\0`: by owner, then in
    /// publication order (a dataset belongs to one owner, so this is rare).
    fn index(&self) -> (Tree, Vec<u8>, usize) {
        match (&self.owner, &self.dataset) {
            (None, None) => (Tree::BySeq, Vec::new(), 8),
            (Some(owner), None) => (Tree::ByOwner, owner.as_bytes().to_vec(), 8),
            (Some(owner), Some(dataset)) => (Tree::ByDataset, dataset_prefix(dataset.as_str(), Some(owner)), 8),
            (None, Some(dataset)) => (Tree::ByDataset, dataset_prefix(dataset.as_str(), None), 16 + 8),
        }
    }

    /// The cursor that resumes this query right after `entry`.
    pub fn cursor_after(&self, entry: &StoredEntry) -> Result<Cursor> {
        let seq = entry.seq.to_be_bytes();
        let (_, _, len) = self.index();
        if len == 8 {
            return Ok(Cursor(seq.to_vec()));
        }
        let owner: OwnerId = entry.entry.owner_id.parse().map_err(|_| Error::corrupt("entries", "bad owner id"))?;
        Ok(Cursor([owner.as_bytes().as_slice(), &seq].concat()))
    }

    /// Parses a page token made for this query.
    pub fn parse_token(&self, token: &str) -> Result<Cursor> {
        let (_, _, len) = self.index();
        let bad = || Error::Invalid("invalid page token (use one returned for the same owner and dataset)".into());
        if token.len() != 2 * len {
            return Err(bad());
        }
        hex::decode(token).map(Cursor).map_err(|_| bad())
    }
}

impl Cursor {
    /// The opaque text form handed to clients.
    pub fn token(&self) -> String {
        hex::encode(&self.0)
    }
}

fn dataset_prefix(dataset: &str, owner: Option<&OwnerId>) -> Vec<u8> {
    let mut key = Vec::with_capacity(dataset.len() + 1 + 16 + 8);
    key.extend_from_slice(dataset.as_bytes());
    key.push(0);
    if let Some(owner) = owner {
        key.extend_from_slice(owner.as_bytes());
    }
    key
}

/// The three index keys of an entry.
fn index_keys(seq: u64, owner: &OwnerId, dataset: &str) -> ([u8; 8], Vec<u8>, Vec<u8>) {
    let seq = seq.to_be_bytes();
    let by_owner = [owner.as_bytes().as_slice(), &seq].concat();
    let mut by_dataset = dataset_prefix(dataset, Some(owner));
    by_dataset.extend_from_slice(&seq);
    (seq, by_owner, by_dataset)
}

fn decode_record(record: Vec<u8>) -> Result<StoredEntry> {
    let Some((seq, body)) = record.split_first_chunk::<8>() else {
        return Err(Error::corrupt("entries", "record shorter than its sequence number"));
    };
    let entry = pb::Entry::decode(body).map_err(|e| Error::corrupt("entries", e.to_string()))?;
    Ok(StoredEntry { seq: u64::from_be_bytes(*seq), entry, record })
}

fn be_u64(tree: &'static str, bytes: &[u8]) -> Result<u64> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| Error::corrupt(tree, "expected 8 bytes"))?;
    Ok(u64::from_be_bytes(arr))
}

/// Typed access to the registry's trees.
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
}

impl Db {
    /// Checks (or, in an empty store, writes) the schema version.
    pub fn open(store: Arc<dyn Store>) -> Result<Self> {
        match store.get(Tree::Meta, META_SCHEMA)? {
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(Error::Config(format!(
                    "the data directory holds schema {:?}; this registry understands {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(SCHEMA_VERSION)
                )));
            }
            None => {
                if !store.is_empty(Tree::Entries)? || !store.is_empty(Tree::Owners)? {
                    return Err(Error::Config("the data directory holds records but no schema version".into()));
                }
                store.apply(&[], &[(Tree::Meta, META_SCHEMA, Some(SCHEMA_VERSION))])?;
                store.flush()?;
            }
        }
        let db = Db { store };
        if db.store.get(Tree::Meta, META_DATASETS)?.is_none() {
            db.summarise_datasets()?;
        }
        Ok(db)
    }

    /// Writes the `datasets` tree from the stored entries (once, for data
    /// directories made before it existed; before the writer starts).
    fn summarise_datasets(&self) -> Result<()> {
        let mut summaries = std::collections::BTreeMap::<Vec<u8>, DatasetSummary>::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let pairs = self.store.scan(Tree::Entries, &[], after.as_deref(), 256)?;
            let Some((last, _)) = pairs.last() else { break };
            after = Some(last.clone());
            for (_, record) in pairs {
                let stored = decode_record(record)?;
                let e = &stored.entry;
                let owner: OwnerId = e.owner_id.parse().map_err(|_| Error::corrupt("entries", "bad owner id"))?;
                let model: ModelId = e.model_id.parse().map_err(|_| Error::corrupt("entries", "bad model id"))?;
                summaries.entry(summary_key(&owner, &e.dataset)).or_default().add(
                    model,
                    e.code.len() as u64,
                    e.created_unix_ms,
                );
            }
        }
        if !summaries.is_empty() {
            tracing::info!(datasets = summaries.len(), "summarised the stored datasets for the web view");
        }
        let encoded: Vec<(Vec<u8>, Vec<u8>)> = summaries.into_iter().map(|(k, v)| (k, v.encode())).collect();
        let mut writes: Vec<KeyValue<'_>> =
            encoded.iter().map(|(k, v)| (Tree::Datasets, k.as_slice(), Some(v.as_slice()))).collect();
        writes.push((Tree::Meta, META_DATASETS, Some(b"1")));
        self.store.apply(&[(Tree::Meta, META_DATASETS, None)], &writes)?;
        self.store.flush()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The sequence number of the next entry: one past the greatest ever assigned.
    pub fn next_seq(&self) -> Result<u64> {
        let recorded = match self.store.get(Tree::Meta, META_LAST_SEQ)? {
            Some(v) => be_u64("meta", &v)?,
            None => 0,
        };
        let indexed = match self.store.last(Tree::BySeq, &[])? {
            Some((k, _)) => be_u64("by_seq", &k)?,
            None => 0,
        };
        recorded.max(indexed).checked_add(1).ok_or_else(|| Error::corrupt("meta", "sequence numbers exhausted"))
    }

    // Owners.

    pub fn owner(&self, id: &OwnerId) -> Result<Option<rpb::Owner>> {
        self.store
            .get(Tree::Owners, id.as_bytes())?
            .map(|v| rpb::Owner::decode(v.as_slice()).map_err(|e| Error::corrupt("owners", e.to_string())))
            .transpose()
    }

    /// Stores an owner unless its id is taken; returns the record now stored.
    pub fn put_owner(&self, id: &OwnerId, owner: &rpb::Owner) -> Result<rpb::Owner> {
        let value = owner.encode_to_vec();
        let key = id.as_bytes();
        if self.store.apply(&[(Tree::Owners, key, None)], &[(Tree::Owners, key, Some(&value))])? {
            self.store.flush()?;
            return Ok(owner.clone());
        }
        self.owner(id)?.ok_or_else(|| Error::Internal("owner vanished after registration".into()))
    }

    // Models.

    pub fn model(&self, id: &ModelId) -> Result<Option<rpb::ModelHeader>> {
        self.store
            .get(Tree::Models, id.as_bytes())?
            .map(|v| rpb::ModelHeader::decode(v.as_slice()).map_err(|e| Error::corrupt("models", e.to_string())))
            .transpose()
    }

    /// Stores a model's header and files in one write unless the model exists.
    /// Returns whether it was created.
    pub fn put_model(&self, id: &ModelId, header: &rpb::ModelHeader, files: &[([u8; 32], Vec<u8>)]) -> Result<bool> {
        let value = header.encode_to_vec();
        let key = id.as_bytes();
        let mut writes: Vec<KeyValue<'_>> =
            files.iter().map(|(sha, data)| (Tree::Blobs, sha.as_slice(), Some(data.as_slice()))).collect();
        writes.push((Tree::Models, key, Some(&value)));
        let created = self.store.apply(&[(Tree::Models, key, None)], &writes)?;
        if created {
            self.store.flush()?;
        }
        Ok(created)
    }

    pub fn blob(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.store.get(Tree::Blobs, sha256)
    }

    // Entries.

    pub fn entry(&self, id: &EntryId) -> Result<Option<StoredEntry>> {
        self.store.get(Tree::Entries, id.as_bytes())?.map(decode_record).transpose()
    }

    pub fn is_deleted(&self, id: &EntryId) -> Result<bool> {
        Ok(self.store.get(Tree::Deleted, id.as_bytes())?.is_some())
    }

    /// Writes an entry and its index keys under sequence number `seq`, unless
    /// its id is taken or was deleted. Not flushed: the writer flushes a group.
    pub fn insert_entry(&self, seq: u64, e: &Prepared) -> Result<Inserted> {
        let id = e.id.as_bytes().as_slice();
        let record = [seq.to_be_bytes().as_slice(), &e.encoded].concat();
        let (by_seq, by_owner, by_dataset) = index_keys(seq, &e.owner, e.dataset.as_str());
        let summary_key = summary_key(&e.owner, e.dataset.as_str());
        // A concurrent delete can change the answer (or the dataset's summary)
        // between the attempt and the reads that explain its failure; the loop settles it.
        for _ in 0..8 {
            let old_summary = self.store.get(Tree::Datasets, &summary_key)?;
            let mut summary = old_summary.as_deref().map(DatasetSummary::decode).transpose()?.unwrap_or_default();
            summary.add(e.model, e.code_bytes, e.created_unix_ms);
            let summary = summary.encode();
            let writes: [KeyValue<'_>; 5] = [
                (Tree::Entries, id, Some(&record)),
                (Tree::BySeq, &by_seq, Some(id)),
                (Tree::ByOwner, &by_owner, Some(id)),
                (Tree::ByDataset, &by_dataset, Some(id)),
                (Tree::Datasets, &summary_key, Some(&summary)),
            ];
            let preconditions: [KeyValue<'_>; 3] = [
                (Tree::Entries, id, None),
                (Tree::Deleted, id, None),
                (Tree::Datasets, &summary_key, old_summary.as_deref()),
            ];
            if self.store.apply(&preconditions, &writes)? {
                return Ok(Inserted::Stored);
            }
            if self.is_deleted(&e.id)? {
                return Ok(Inserted::Refused(Error::FailedPrecondition(format!(
                    "entry {} was deleted; its id cannot be published again",
                    e.id
                ))));
            }
            if let Some(existing) = self.store.get(Tree::Entries, id)? {
                return Ok(match existing.get(8..) {
                    Some(body) if body == e.encoded.as_slice() => Inserted::AlreadyStored,
                    _ => Inserted::Refused(Error::AlreadyExists(format!(
                        "entry {} is already stored with different content",
                        e.id
                    ))),
                });
            }
        }
        Err(Error::Internal(format!("entry {} kept changing during its insertion", e.id)))
    }

    /// Removes an entry and its index keys and records its id as deleted, in
    /// one write, provided the entry is still `stored`. Flushed. False when
    /// something changed meanwhile (read the entry again and retry).
    pub fn delete_entry(&self, id: &EntryId, stored: &StoredEntry, owner: &OwnerId, now_ms: i64) -> Result<bool> {
        let key = id.as_bytes().as_slice();
        let (by_seq, by_owner, by_dataset) = index_keys(stored.seq, owner, &stored.entry.dataset);
        let tombstone = [owner.as_bytes().as_slice(), &now_ms.to_be_bytes()].concat();
        // The greatest sequence number ever assigned survives its entry, so
        // it is never handed out again (publishes leave `Meta` alone: the
        // greatest index key tells the rest).
        let recorded = self.store.get(Tree::Meta, META_LAST_SEQ)?;
        let recorded_seq = recorded.as_deref().map(|v| be_u64("meta", v)).transpose()?.unwrap_or(0);
        let last_seq = recorded_seq.max(stored.seq).to_be_bytes();
        let summary_key = summary_key(owner, &stored.entry.dataset);
        let old_summary = self.store.get(Tree::Datasets, &summary_key)?;
        let mut summary = old_summary.as_deref().map(DatasetSummary::decode).transpose()?.unwrap_or_default();
        let model: ModelId = stored.entry.model_id.parse().map_err(|_| Error::corrupt("entries", "bad model id"))?;
        summary.remove(&model, stored.entry.code.len() as u64);
        // An emptied dataset leaves the home page.
        let summary = (summary.entries > 0).then(|| summary.encode());
        let writes: [KeyValue<'_>; 8] = [
            (Tree::Entries, key, None),
            (Tree::BySeq, &by_seq, None),
            (Tree::ByOwner, &by_owner, None),
            (Tree::ByDataset, &by_dataset, None),
            (Tree::Deleted, key, Some(&tombstone)),
            (Tree::Meta, META_LAST_SEQ, Some(&last_seq)),
            (Tree::Datasets, &summary_key, summary.as_deref()),
            (Tree::Thumbnails, key, None),
        ];
        let preconditions: [KeyValue<'_>; 3] = [
            (Tree::Entries, key, Some(&stored.record)),
            (Tree::Meta, META_LAST_SEQ, recorded.as_deref()),
            (Tree::Datasets, &summary_key, old_summary.as_deref()),
        ];
        let deleted = self.store.apply(&preconditions, &writes)?;
        if deleted {
            self.store.flush()?;
        }
        Ok(deleted)
    }

    /// Up to `limit` entries of `query` after `after`, in index order, and
    /// no more record bytes than `max_bytes` (but always at least one entry):
    /// what one request holds in memory is bounded whatever the codes' sizes.
    pub fn page(&self, query: &Query, after: Option<&Cursor>, limit: usize, max_bytes: usize) -> Result<Page> {
        let (tree, prefix, cursor_len) = query.index();
        let after_key = after.map(|c| [prefix.as_slice(), &c.0].concat());
        let mut pairs = self.store.scan(tree, &prefix, after_key.as_deref(), limit.saturating_add(1))?;
        let mut more = pairs.len() > limit;
        pairs.truncate(limit);
        let mut items = Vec::with_capacity(pairs.len());
        let (mut bytes, mut last_key) = (0usize, None);
        let count = pairs.len();
        for (i, (key, id)) in pairs.into_iter().enumerate() {
            if key.len() != prefix.len() + cursor_len {
                return Err(Error::corrupt(tree.name(), "index key of the wrong length"));
            }
            // An entry deleted since the index was read is skipped.
            if let Some(record) = self.store.get(Tree::Entries, &id)? {
                bytes += record.len();
                items.push(decode_record(record)?);
            }
            last_key = Some(key);
            if bytes >= max_bytes && i + 1 < count {
                more = true;
                break;
            }
        }
        let next = match last_key {
            Some(k) if more => Some(Cursor(k.get(prefix.len()..).unwrap_or_default().to_vec())),
            _ => None,
        };
        Ok(Page { items, next })
    }

    /// Up to `limit` datasets in (owner, name) order after `after` (an owner
    /// and a dataset name), with their summaries; `owner` restricts to one owner.
    pub fn datasets(
        &self,
        owner: Option<&OwnerId>,
        after: Option<(&OwnerId, &DatasetName)>,
        limit: usize,
    ) -> Result<Vec<DatasetRow>> {
        let prefix = owner.map(|o| o.as_bytes().to_vec()).unwrap_or_default();
        let after = after.map(|(o, d)| summary_key(o, d.as_str()));
        let pairs = self.store.scan(Tree::Datasets, &prefix, after.as_deref(), limit)?;
        pairs
            .into_iter()
            .map(|(key, value)| {
                let bad = || Error::corrupt("datasets", "malformed key");
                let (owner, dataset) = key.split_first_chunk::<16>().ok_or_else(bad)?;
                let dataset = std::str::from_utf8(dataset).map_err(|_| bad())?.parse().map_err(|_| bad())?;
                Ok(DatasetRow { owner: OwnerId::from_bytes(*owner), dataset, summary: DatasetSummary::decode(&value)? })
            })
            .collect()
    }

    pub fn dataset_summary(&self, owner: &OwnerId, dataset: &DatasetName) -> Result<Option<DatasetSummary>> {
        self.store
            .get(Tree::Datasets, &summary_key(owner, dataset.as_str()))?
            .as_deref()
            .map(DatasetSummary::decode)
            .transpose()
    }

    /// Registered owners in id order after `after`.
    pub fn owners(&self, after: Option<&OwnerId>, limit: usize) -> Result<Vec<rpb::Owner>> {
        let after = after.map(|o| o.as_bytes().to_vec());
        self.store
            .scan(Tree::Owners, &[], after.as_deref(), limit)?
            .into_iter()
            .map(|(_, v)| rpb::Owner::decode(v.as_slice()).map_err(|e| Error::corrupt("owners", e.to_string())))
            .collect()
    }

    pub fn thumbnail(&self, id: &EntryId) -> Result<Option<Vec<u8>>> {
        self.store.get(Tree::Thumbnails, id.as_bytes())
    }

    /// Stores a thumbnail while its entry is still there (a deleted entry's
    /// thumbnail is never written back).
    pub fn put_thumbnail(&self, id: &EntryId, stored: &StoredEntry, thumbnail: &[u8]) -> Result<bool> {
        let key = id.as_bytes().as_slice();
        self.store.apply(&[(Tree::Entries, key, Some(&stored.record))], &[(Tree::Thumbnails, key, Some(thumbnail))])
    }

    /// Counts of what the store holds.
    pub fn stats(&self) -> Result<Stats> {
        Ok(Stats {
            entries: self.store.len(Tree::Entries)?,
            owners: self.store.len(Tree::Owners)?,
            models: self.store.len(Tree::Models)?,
            blobs: self.store.len(Tree::Blobs)?,
            deleted: self.store.len(Tree::Deleted)?,
            next_seq: self.next_seq()?,
            size_on_disk: self.store.size_on_disk()?,
        })
    }
}

/// What a registry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub owners: u64,
    pub models: u64,
    pub blobs: u64,
    pub deleted: u64,
    pub next_seq: u64,
    pub size_on_disk: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "entries       {}", self.entries)?;
        writeln!(f, "owners        {}", self.owners)?;
        writeln!(f, "models        {}", self.models)?;
        writeln!(f, "model files   {}", self.blobs)?;
        writeln!(f, "deleted ids   {}", self.deleted)?;
        writeln!(f, "next sequence {}", self.next_seq)?;
        write!(f, "size on disk  {} bytes", self.size_on_disk)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn prepared(owner: OwnerId, dataset: &str, code: &[u8]) -> Prepared {
        let id = EntryId::new();
        let entry = pb::Entry {
            entry_id: id.to_string(),
            owner_id: owner.to_string(),
            dataset: dataset.into(),
            model_id: ModelId::from_bytes([7; 32]).to_string(),
            created_unix_ms: 1_000 + i64::from(code.len() as u8),
            code: code.to_vec(),
            ..Default::default()
        };
        Prepared {
            id,
            owner,
            dataset: dataset.parse().unwrap(),
            model: ModelId::from_bytes([7; 32]),
            created_unix_ms: 1_000 + i64::from(code.len() as u8),
            code_bytes: code.len() as u64,
            encoded: entry.encode_to_vec(),
        }
    }

    fn db() -> Db {
        Db::open(Arc::new(MemoryStore::new())).unwrap()
    }

    #[test]
    fn insert_writes_entry_and_indexes_together_and_is_idempotent() {
        let db = db();
        let owner = OwnerId::from_bytes([1; 16]);
        let e = prepared(owner, "faces", b"body");
        assert!(matches!(db.insert_entry(1, &e).unwrap(), Inserted::Stored));
        assert!(matches!(db.insert_entry(2, &e).unwrap(), Inserted::AlreadyStored));
        let other = Prepared { encoded: prepared(owner, "faces", b"other").encoded, ..e.clone() };
        assert!(matches!(db.insert_entry(2, &other).unwrap(), Inserted::Refused(Error::AlreadyExists(_))));
        for tree in [Tree::Entries, Tree::BySeq, Tree::ByOwner, Tree::ByDataset] {
            assert_eq!(db.store().len(tree).unwrap(), 1, "{tree}");
        }
        assert_eq!(db.next_seq().unwrap(), 2);
    }

    #[test]
    fn delete_removes_every_key_and_blocks_reuse() {
        let db = db();
        let owner = OwnerId::from_bytes([1; 16]);
        let e = prepared(owner, "faces", b"body");
        db.insert_entry(7, &e).unwrap();
        let stored = db.entry(&e.id).unwrap().unwrap();
        assert_eq!(stored.seq, 7);
        assert!(db.delete_entry(&e.id, &stored, &owner, 1).unwrap());
        assert!(!db.delete_entry(&e.id, &stored, &owner, 1).unwrap(), "second delete applied");
        for tree in [Tree::Entries, Tree::BySeq, Tree::ByOwner, Tree::ByDataset] {
            assert!(db.store().is_empty(tree).unwrap(), "{tree}");
        }
        assert!(matches!(db.insert_entry(8, &e).unwrap(), Inserted::Refused(Error::FailedPrecondition(_))));
        // The deleted sequence number is never handed out again.
        assert_eq!(db.next_seq().unwrap(), 8);
    }

    #[test]
    fn pages_follow_the_index_and_tokens_round_trip() {
        let db = db();
        let (a, b) = (OwnerId::from_bytes([0xaa; 16]), OwnerId::from_bytes([0xbb; 16]));
        for i in 0..10u8 {
            let (owner, ds) = if i % 2 == 0 { (a, "faces") } else { (b, "cats") };
            db.insert_entry(u64::from(i) + 1, &prepared(owner, ds, &[i])).unwrap();
        }
        let query = Query { owner: Some(a), dataset: None };
        let first = db.page(&query, None, 3, usize::MAX).unwrap();
        assert_eq!(first.items.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 3, 5]);
        let token = first.next.unwrap().token();
        let cursor = query.parse_token(&token).unwrap();
        let second = db.page(&query, Some(&cursor), 3, usize::MAX).unwrap();
        assert_eq!(second.items.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![7, 9]);
        assert!(second.next.is_none());
        let by_dataset = Query { owner: None, dataset: Some("cats".parse().unwrap()) };
        let page = db.page(&by_dataset, None, 100, usize::MAX).unwrap();
        assert_eq!(page.items.len(), 5);
        let cursor = by_dataset.cursor_after(&page.items[1]).unwrap();
        assert_eq!(db.page(&by_dataset, Some(&cursor), 100, usize::MAX).unwrap().items.len(), 3);
        assert!(by_dataset.parse_token(&token).is_err(), "8-byte token accepted for a 24-byte cursor");
        assert!(query.parse_token("zz").is_err());
        assert!(query.parse_token("zzzzzzzzzzzzzzzz").is_err());
    }

    #[test]
    fn pages_stop_at_their_byte_budget_and_resume_where_they_stopped() {
        let db = db();
        let owner = OwnerId::from_bytes([0xaa; 16]);
        for i in 0..6u8 {
            db.insert_entry(u64::from(i) + 1, &prepared(owner, "faces", &[i])).unwrap();
        }
        let query = Query { owner: Some(owner), dataset: None };
        let one = db.page(&query, None, 1, usize::MAX).unwrap().items[0].record.len();
        // A budget of two records and a bit: pages of three (the third crosses it).
        let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = db.page(&query, after.as_ref(), 100, 2 * one + 1).unwrap();
            pages += 1;
            assert!(!page.items.is_empty());
            seen.extend(page.items.iter().map(|s| s.seq));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, (1..=6).collect::<Vec<_>>());
        assert_eq!(pages, 2);
        // A budget smaller than one record still makes progress, one entry a page.
        let page = db.page(&query, None, 100, 1).unwrap();
        assert_eq!((page.items.len(), page.next.is_some()), (1, true));
    }

    #[test]
    fn refuses_corrupt_records() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let db = Db::open(store.clone()).unwrap();
        let id = EntryId::new();
        store.apply(&[], &[(Tree::Entries, id.as_bytes(), Some(b"short"))]).unwrap();
        assert!(matches!(db.entry(&id), Err(Error::Corrupt { .. })));
        store.apply(&[], &[(Tree::Entries, id.as_bytes(), Some(b"\0\0\0\0\0\0\0\x01\xff\xff"))]).unwrap();
        assert!(matches!(db.entry(&id), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn dataset_summaries_follow_inserts_and_deletes_and_are_rebuilt_for_old_stores() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let db = Db::open(store.clone()).unwrap();
        let (a, b) = (OwnerId::from_bytes([0xaa; 16]), OwnerId::from_bytes([0xbb; 16]));
        let first = prepared(a, "faces", b"abc");
        db.insert_entry(1, &first).unwrap();
        db.insert_entry(2, &prepared(a, "faces", b"defgh")).unwrap();
        db.insert_entry(3, &prepared(b, "cats", b"x")).unwrap();
        // The same entry again changes nothing.
        assert!(matches!(db.insert_entry(4, &first).unwrap(), Inserted::AlreadyStored));
        let rows = db.datasets(None, None, 10).unwrap();
        let names: Vec<_> = rows.iter().map(|r| (r.owner, r.dataset.as_str().to_owned())).collect();
        assert_eq!(names, vec![(a, "faces".to_owned()), (b, "cats".to_owned())]);
        let faces = &rows[0].summary;
        assert_eq!((faces.entries, faces.code_bytes, faces.last_created_unix_ms), (2, 8, 1_005));
        assert_eq!(faces.models, vec![(ModelId::from_bytes([7; 32]), 2)]);
        assert_eq!(db.datasets(Some(&b), None, 10).unwrap().len(), 1);
        assert_eq!(db.datasets(None, Some((&a, &"faces".parse().unwrap())), 10).unwrap()[0].owner, b);

        let stored = db.entry(&first.id).unwrap().unwrap();
        db.put_thumbnail(&first.id, &stored, b"jpeg").unwrap();
        assert!(db.delete_entry(&first.id, &stored, &a, 9).unwrap());
        assert!(db.thumbnail(&first.id).unwrap().is_none(), "a deleted entry's thumbnail stays");
        assert!(!db.put_thumbnail(&first.id, &stored, b"jpeg").unwrap(), "thumbnail written for a deleted entry");
        let faces = db.datasets(Some(&a), None, 10).unwrap().remove(0).summary;
        assert_eq!((faces.entries, faces.code_bytes), (1, 5));

        // A store from before the summaries: they are rebuilt when it is opened.
        let expected = db.datasets(None, None, 10).unwrap();
        let keys: Vec<Vec<u8>> = store.scan(Tree::Datasets, &[], None, 100).unwrap().into_iter().map(|p| p.0).collect();
        let mut removals: Vec<KeyValue<'_>> = keys.iter().map(|k| (Tree::Datasets, k.as_slice(), None)).collect();
        removals.push((Tree::Meta, META_DATASETS, None));
        store.apply(&[], &removals).unwrap();
        assert!(Db::open(store.clone()).unwrap().datasets(None, None, 10).unwrap() == expected);
        // An emptied dataset disappears.
        let db = Db::open(store).unwrap();
        let cats = db.page(&Query { owner: Some(b), dataset: None }, None, 10, usize::MAX).unwrap().items.remove(0);
        let cats_id: EntryId = cats.entry.entry_id.parse().unwrap();
        assert!(db.delete_entry(&cats_id, &cats, &b, 10).unwrap());
        assert_eq!(db.datasets(None, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn refuses_malformed_dataset_summaries() {
        assert!(DatasetSummary::decode(b"short").is_err());
        let mut bytes =
            DatasetSummary { entries: 1, models: vec![(ModelId::from_bytes([1; 32]), 1)], ..Default::default() }
                .encode();
        assert!(DatasetSummary::decode(&bytes).is_ok());
        bytes.pop();
        assert!(DatasetSummary::decode(&bytes).is_err());
    }

    #[test]
    fn refuses_a_foreign_schema() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store.apply(&[], &[(Tree::Meta, META_SCHEMA, Some(b"other/9"))]).unwrap();
        assert!(matches!(Db::open(store), Err(Error::Config(_))));
    }
}
