//! The registry's records on the storage crate ([`ambishare_db`]): namespaces,
//! key layouts, and the order of writes that keeps entries and their indexes
//! consistent without transactions (S3 has none), so any number of registry
//! processes can share one store.
//!
//! # Layout (schema `ambishare-registry/2`)
//!
//! | namespace    | key                                               | value |
//! |--------------|---------------------------------------------------|-------|
//! | `entries`    | entry id (16)                                     | prost `types.v1.Entry` |
//! | `by_owner`   | owner (16) ++ entry id                            | empty |
//! | `by_dataset` | dataset ++ 0x00 ++ owner (16) ++ entry id ++ facts (48) | empty |
//! | `datasets`   | owner (16) ++ dataset                             | empty |
//! | `owners`     | owner (16)                                        | prost `registry.v1.Owner` |
//! | `models`     | model id (32)                                     | prost `registry.v1.ModelHeader` (files are blobs) |
//! | `deleted`    | entry id (16)                                     | owner (16) ++ deletion time (i64 BE ms) |
//! | `thumbnails` | entry id (16)                                     | JPEG |
//! | `meta`       | `schema`                                          | the schema version |
//!
//! The facts at the end of a `by_dataset` key (code bytes u64, creation time
//! i64, model id) make a dataset's summary one listing of keys.
//!
//! # Order
//!
//! There is no sequence number: entry ids are UUIDv7, which sort by creation
//! time, and every listing is in id order, the same through every replica,
//! with no shared counter to contend on.
//!
//! # Writes
//!
//! Publishing writes the dataset marker and the index keys first and the
//! entry last, create-if-absent: that write is the commit point. A crash
//! before it leaves index keys without their entry, which readers skip (and
//! a retry completes). Deleting writes the tombstone first, then removes the
//! entry, its index keys and its thumbnail; a crash between leaves work that
//! the owner's retry of the deletion finishes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ambishare_db::{BlobId, Bytes, Creation, Namespace, Store};
use ambishare_proto::registry::v1 as rpb;
use ambishare_proto::types::v1 as pb;
use ambishare_shared::{DatasetName, EntryId, ModelId, OwnerId};
use futures::{StreamExt, TryStreamExt, stream};
use prost::Message;

use crate::error::{Error, Result};

static ENTRIES: Namespace = Namespace::from_static("entries");
static BY_OWNER: Namespace = Namespace::from_static("by_owner");
static BY_DATASET: Namespace = Namespace::from_static("by_dataset");
static DATASETS: Namespace = Namespace::from_static("datasets");
static OWNERS: Namespace = Namespace::from_static("owners");
static MODELS: Namespace = Namespace::from_static("models");
static DELETED: Namespace = Namespace::from_static("deleted");
static THUMBNAILS: Namespace = Namespace::from_static("thumbnails");
static META: Namespace = Namespace::from_static("meta");

const META_SCHEMA: &[u8] = b"schema";
/// Layout version of the store.
const SCHEMA_VERSION: &[u8] = b"ambishare-registry/2";
/// Most models listed in one dataset's summary (the counts stay exact).
const MAX_SUMMARY_MODELS: usize = 64;
/// Bytes of the facts at the end of a `by_dataset` key.
const FACTS_LEN: usize = 8 + 8 + 32;
/// Keys read per listing request where a whole prefix is walked.
const WALK_PAGE: usize = 1000;
/// Entries read concurrently while a page is assembled (S3 answers each in
/// about a millisecond; reading them one by one would bound a stream at that).
const READ_AHEAD: usize = 32;
/// Dataset markers known to exist, remembered to spare a write per publish.
const KNOWN_DATASETS: usize = 10_000;

fn corrupt(namespace: &'static str, reason: impl Into<String>) -> Error {
    Error::corrupt(namespace, reason)
}

/// An entry as stored: its message and its exact bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEntry {
    pub entry: pb::Entry,
    pub record: Bytes,
}

impl StoredEntry {
    fn decode(record: Bytes) -> Result<Self> {
        let entry = pb::Entry::decode(record.as_ref()).map_err(|e| corrupt("entries", e.to_string()))?;
        Ok(StoredEntry { entry, record })
    }

    fn owner(&self) -> Result<OwnerId> {
        self.entry.owner_id.parse().map_err(|_| corrupt("entries", "bad owner id"))
    }

    fn facts(&self) -> Result<Facts> {
        Ok(Facts {
            code_bytes: self.entry.code.len() as u64,
            created_unix_ms: self.entry.created_unix_ms,
            model: self.entry.model_id.parse().map_err(|_| corrupt("entries", "bad model id"))?,
        })
    }

    fn index_keys(&self, id: &EntryId) -> Result<IndexKeys> {
        Ok(IndexKeys::of(id, &self.owner()?, &self.entry.dataset, &self.facts()?))
    }
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
    pub encoded: Bytes,
}

/// What a `by_dataset` key says of its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Facts {
    code_bytes: u64,
    created_unix_ms: i64,
    model: ModelId,
}

impl Facts {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.code_bytes.to_be_bytes());
        out.extend_from_slice(&self.created_unix_ms.to_be_bytes());
        out.extend_from_slice(self.model.as_bytes());
    }

    fn decode(bytes: &[u8]) -> Option<Facts> {
        let (code_bytes, rest) = bytes.split_first_chunk::<8>()?;
        let (created, model) = rest.split_first_chunk::<8>()?;
        let model: [u8; 32] = model.try_into().ok()?;
        Some(Facts {
            code_bytes: u64::from_be_bytes(*code_bytes),
            created_unix_ms: i64::from_be_bytes(*created),
            model: ModelId::from_bytes(model),
        })
    }
}

/// The two index keys of an entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IndexKeys {
    by_owner: Vec<u8>,
    by_dataset: Vec<u8>,
}

impl IndexKeys {
    fn of(id: &EntryId, owner: &OwnerId, dataset: &str, facts: &Facts) -> Self {
        let by_owner = [owner.as_bytes().as_slice(), id.as_bytes()].concat();
        let mut by_dataset = dataset_prefix(dataset, Some(owner));
        by_dataset.extend_from_slice(id.as_bytes());
        facts.encode(&mut by_dataset);
        IndexKeys { by_owner, by_dataset }
    }
}

/// The owner and entry id of a `by_owner` key.
fn split_by_owner(key: &[u8]) -> Option<(&[u8], &[u8])> {
    (key.len() == 32).then(|| key.split_at(16))
}

/// The dataset, owner and entry id of a `by_dataset` key.
fn split_by_dataset(key: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let zero = key.iter().position(|&b| b == 0)?;
    let (dataset, rest) = (&key[..zero], &key[zero + 1..]);
    (rest.len() == 32 + FACTS_LEN).then(|| (dataset, &rest[..16], &rest[16..32]))
}

fn dataset_prefix(dataset: &str, owner: Option<&OwnerId>) -> Vec<u8> {
    let mut key = Vec::with_capacity(dataset.len() + 1 + 32 + FACTS_LEN);
    key.extend_from_slice(dataset.as_bytes());
    key.push(0);
    if let Some(owner) = owner {
        key.extend_from_slice(owner.as_bytes());
    }
    key
}

fn dataset_key(owner: &OwnerId, dataset: &str) -> Vec<u8> {
    [owner.as_bytes().as_slice(), dataset.as_bytes()].concat()
}

/// What one owner's dataset holds, from its index keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatasetSummary {
    pub entries: u64,
    /// Sum of the entries' code sizes.
    pub code_bytes: u64,
    /// Greatest creation time of an entry in it (0: none).
    pub last_created_unix_ms: i64,
    /// Models used, with their entry counts (at most [`MAX_SUMMARY_MODELS`]).
    pub models: Vec<(ModelId, u64)>,
}

impl DatasetSummary {
    fn add(&mut self, facts: &Facts) {
        self.entries += 1;
        self.code_bytes = self.code_bytes.saturating_add(facts.code_bytes);
        self.last_created_unix_ms = self.last_created_unix_ms.max(facts.created_unix_ms);
        if let Some((_, count)) = self.models.iter_mut().find(|(m, _)| *m == facts.model) {
            *count += 1;
        } else if self.models.len() < MAX_SUMMARY_MODELS {
            self.models.push((facts.model, 1));
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

/// A position in a listing: the part of an index key after the query's
/// prefix that orders it (the entry id, after the owner's id where a
/// listing spans owners).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(Vec<u8>);

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<StoredEntry>,
    /// Where the next page starts; `None` when this was the last.
    pub next: Option<Cursor>,
}

/// Where a query's keys are and how they read.
struct Index {
    namespace: &'static Namespace,
    prefix: Vec<u8>,
    /// Bytes of the cursor after the prefix (its last 16 are the entry id).
    cursor_len: usize,
    /// Bytes after the cursor (the facts of a `by_dataset` key).
    tail_len: usize,
}

impl Index {
    /// The listing key after which the page following `cursor` starts.
    fn after_key(&self, cursor: &Cursor) -> Vec<u8> {
        let mut key = [self.prefix.as_slice(), &cursor.0].concat();
        // After every key that starts with prefix ++ cursor.
        key.extend(std::iter::repeat_n(0xff, self.tail_len));
        key
    }

    /// The cursor and entry id of a listed key.
    fn parse(&self, key: &[u8]) -> Result<(Cursor, EntryId)> {
        let bad = || corrupt("index", format!("a key of {} bytes in {}", key.len(), self.namespace));
        if key.len() != self.prefix.len() + self.cursor_len + self.tail_len || !key.starts_with(&self.prefix) {
            return Err(bad());
        }
        let cursor = &key[self.prefix.len()..self.prefix.len() + self.cursor_len];
        let id: [u8; 16] = cursor[self.cursor_len - 16..].try_into().map_err(|_| bad())?;
        let id = EntryId::from_bytes(id).map_err(|_| bad())?;
        Ok((Cursor(cursor.to_vec()), id))
    }
}

impl Query {
    /// The keys this query walks. Without an owner, a dataset query walks
    /// `dataset\0`: by owner, then in id order (a dataset belongs to one owner,
    /// so this is rare).
    fn index(&self) -> Index {
        match (&self.owner, &self.dataset) {
            (None, None) => Index { namespace: &ENTRIES, prefix: Vec::new(), cursor_len: 16, tail_len: 0 },
            (Some(owner), None) => {
                Index { namespace: &BY_OWNER, prefix: owner.as_bytes().to_vec(), cursor_len: 16, tail_len: 0 }
            }
            (Some(owner), Some(dataset)) => Index {
                namespace: &BY_DATASET,
                prefix: dataset_prefix(dataset.as_str(), Some(owner)),
                cursor_len: 16,
                tail_len: FACTS_LEN,
            },
            (None, Some(dataset)) => Index {
                namespace: &BY_DATASET,
                prefix: dataset_prefix(dataset.as_str(), None),
                cursor_len: 32,
                tail_len: FACTS_LEN,
            },
        }
    }

    /// Whether `entry` belongs in this listing: an index key left by a lost
    /// race or a crash may name an entry of another owner or dataset.
    fn admits(&self, entry: &pb::Entry) -> bool {
        self.owner.is_none_or(|o| entry.owner_id == o.to_string())
            && self.dataset.as_ref().is_none_or(|d| entry.dataset == d.as_str())
    }

    /// The cursor that resumes this query right after `entry`.
    pub fn cursor_after(&self, id: &EntryId, entry: &StoredEntry) -> Result<Cursor> {
        if self.index().cursor_len == 16 {
            return Ok(Cursor(id.as_bytes().to_vec()));
        }
        Ok(Cursor([entry.owner()?.as_bytes().as_slice(), id.as_bytes()].concat()))
    }

    /// Parses a page token made for this query.
    pub fn parse_token(&self, token: &str) -> Result<Cursor> {
        let len = self.index().cursor_len;
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

/// Typed access to the registry's records. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    store: Store,
    /// Dataset markers this process knows are stored.
    known_datasets: Arc<Mutex<HashSet<Vec<u8>>>>,
}

impl Db {
    /// Checks (or, in an empty store, writes) the schema version.
    pub async fn open(store: Store) -> Result<Self> {
        let kv = store.kv();
        match kv.get(&META, META_SCHEMA).await? {
            Some(v) if v.as_ref() == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(Error::Config(format!(
                    "the store holds schema {:?}; this registry reads {:?} (a store of an older registry: \
                     publish its datasets again into a new one)",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(SCHEMA_VERSION)
                )));
            }
            None => {
                for namespace in [&ENTRIES, &OWNERS] {
                    if !kv.list_keys(namespace, &[], None, 1).await?.is_empty() {
                        return Err(Error::Config("the store holds records but no schema version".into()));
                    }
                }
                // Replicas opening a new store race here; every one writes the same value.
                let _ = kv.put_if_absent(&META, META_SCHEMA, Bytes::from_static(SCHEMA_VERSION)).await?;
                kv.flush().await?;
            }
        }
        Ok(Db { store, known_datasets: Arc::default() })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<()> {
        Ok(self.store.kv().flush().await?)
    }

    // Owners.

    pub async fn owner(&self, id: &OwnerId) -> Result<Option<rpb::Owner>> {
        self.store
            .kv()
            .get(&OWNERS, id.as_bytes())
            .await?
            .map(|v| rpb::Owner::decode(v.as_ref()).map_err(|e| corrupt("owners", e.to_string())))
            .transpose()
    }

    /// Stores an owner unless its id is taken; returns the record now stored.
    pub async fn put_owner(&self, id: &OwnerId, owner: &rpb::Owner) -> Result<rpb::Owner> {
        let kv = self.store.kv();
        match kv.put_if_absent(&OWNERS, id.as_bytes(), owner.encode_to_vec().into()).await? {
            Creation::Created => {
                kv.flush().await?;
                Ok(owner.clone())
            }
            Creation::AlreadyExists => {
                self.owner(id).await?.ok_or_else(|| Error::Internal("owner vanished after registration".into()))
            }
        }
    }

    /// Registered owners in id order after `after`.
    pub async fn owners(&self, after: Option<&OwnerId>, limit: usize) -> Result<Vec<rpb::Owner>> {
        let after = after.map(|o| o.as_bytes().to_vec());
        self.store
            .kv()
            .list(&OWNERS, &[], after.as_deref(), limit)
            .await?
            .into_iter()
            .map(|(_, v)| rpb::Owner::decode(v.as_ref()).map_err(|e| corrupt("owners", e.to_string())))
            .collect()
    }

    // Models.

    pub async fn model(&self, id: &ModelId) -> Result<Option<rpb::ModelHeader>> {
        self.store
            .kv()
            .get(&MODELS, id.as_bytes())
            .await?
            .map(|v| rpb::ModelHeader::decode(v.as_ref()).map_err(|e| corrupt("models", e.to_string())))
            .transpose()
    }

    /// Stores a model's files, then its header unless the model exists (the
    /// header is written last: a model is never visible without its files).
    /// Returns whether it was created.
    pub async fn put_model(
        &self,
        id: &ModelId,
        header: &rpb::ModelHeader,
        files: Vec<([u8; 32], Bytes)>,
    ) -> Result<bool> {
        for (sha, data) in files {
            let info = self.store.blobs().put_blob_bytes(data).await?;
            if info.id.as_bytes() != &sha {
                return Err(Error::Internal(format!(
                    "a model file was stored as {} instead of {}",
                    info.id,
                    hex::encode(sha)
                )));
            }
        }
        let kv = self.store.kv();
        let created = kv.put_if_absent(&MODELS, id.as_bytes(), header.encode_to_vec().into()).await?.is_created();
        kv.flush().await?;
        Ok(created)
    }

    /// A model file, as a stream of chunks checked against its hash; None when absent.
    pub async fn blob(&self, sha256: &[u8; 32]) -> Result<Option<ambishare_db::Blob>> {
        match self.store.blobs().get_blob(&BlobId::from_bytes(*sha256)).await {
            Ok(blob) => Ok(Some(blob)),
            Err(ambishare_db::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A whole model file in memory (at most `max_len` bytes); None when absent.
    pub async fn blob_bytes(&self, sha256: &[u8; 32], max_len: u64) -> Result<Option<Vec<u8>>> {
        match self.store.blobs().get_blob_bytes(&BlobId::from_bytes(*sha256), max_len).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(ambishare_db::Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stored models (id and header) in id order after `after`.
    pub async fn models(&self, after: Option<&ModelId>, limit: usize) -> Result<Vec<(ModelId, rpb::ModelHeader)>> {
        let after = after.map(|m| m.as_bytes().to_vec());
        self.store
            .kv()
            .list(&MODELS, &[], after.as_deref(), limit)
            .await?
            .into_iter()
            .map(|(key, v)| {
                let id: [u8; 32] =
                    key.as_slice().try_into().map_err(|_| corrupt("models", "a key is not a model id"))?;
                let header = rpb::ModelHeader::decode(v.as_ref()).map_err(|e| corrupt("models", e.to_string()))?;
                Ok((ModelId::from_bytes(id), header))
            })
            .collect()
    }

    // Entries.

    pub async fn entry(&self, id: &EntryId) -> Result<Option<StoredEntry>> {
        self.store.kv().get(&ENTRIES, id.as_bytes()).await?.map(StoredEntry::decode).transpose()
    }

    pub async fn is_deleted(&self, id: &EntryId) -> Result<bool> {
        Ok(self.store.kv().get(&DELETED, id.as_bytes()).await?.is_some())
    }

    fn deleted_refusal(id: &EntryId) -> Inserted {
        Inserted::Refused(Error::FailedPrecondition(format!(
            "entry {id} was deleted; its id cannot be published again"
        )))
    }

    /// Writes an entry, after its dataset marker and index keys, unless its id
    /// is taken or was deleted. Not flushed: the writer flushes a group.
    pub async fn insert_entry(&self, e: &Prepared) -> Result<Inserted> {
        let kv = self.store.kv();
        let id = e.id.as_bytes();
        if let Some(existing) = kv.get(&ENTRIES, id).await? {
            return Ok(Self::same_or_taken(e, &existing));
        }
        if self.is_deleted(&e.id).await? {
            return Ok(Self::deleted_refusal(&e.id));
        }
        self.note_dataset(&e.owner, &e.dataset).await?;
        let facts = Facts { code_bytes: e.code_bytes, created_unix_ms: e.created_unix_ms, model: e.model };
        let keys = IndexKeys::of(&e.id, &e.owner, e.dataset.as_str(), &facts);
        futures::try_join!(
            kv.put(&BY_OWNER, &keys.by_owner, Bytes::new()),
            kv.put(&BY_DATASET, &keys.by_dataset, Bytes::new()),
        )?;
        match kv.put_if_absent(&ENTRIES, id, e.encoded.clone()).await? {
            Creation::Created => {
                // A deletion racing this publish: the tombstone wins.
                if self.is_deleted(&e.id).await? {
                    kv.delete(&ENTRIES, id).await?;
                    self.remove_index_keys(&keys, None).await?;
                    return Ok(Self::deleted_refusal(&e.id));
                }
                Ok(Inserted::Stored)
            }
            Creation::AlreadyExists => match kv.get(&ENTRIES, id).await? {
                Some(existing) => {
                    let verdict = Self::same_or_taken(e, &existing);
                    if matches!(verdict, Inserted::Refused(_)) {
                        // Lost a race to other content under this id: take back
                        // our index keys, unless they are also the winner's.
                        let winner = StoredEntry::decode(existing)?.index_keys(&e.id)?;
                        self.remove_index_keys(&keys, Some(&winner)).await?;
                    }
                    Ok(verdict)
                }
                None => Ok(Self::deleted_refusal(&e.id)),
            },
        }
    }

    fn same_or_taken(e: &Prepared, existing: &[u8]) -> Inserted {
        if existing == e.encoded.as_ref() {
            Inserted::AlreadyStored
        } else {
            Inserted::Refused(Error::AlreadyExists(format!("entry {} is already stored with different content", e.id)))
        }
    }

    /// Removes `keys`, except those `keep` also has.
    async fn remove_index_keys(&self, keys: &IndexKeys, keep: Option<&IndexKeys>) -> Result<()> {
        let kv = self.store.kv();
        if keep.is_none_or(|k| k.by_owner != keys.by_owner) {
            kv.delete(&BY_OWNER, &keys.by_owner).await?;
        }
        if keep.is_none_or(|k| k.by_dataset != keys.by_dataset) {
            kv.delete(&BY_DATASET, &keys.by_dataset).await?;
        }
        Ok(())
    }

    /// Writes the marker of an owner's dataset unless this process saw it.
    async fn note_dataset(&self, owner: &OwnerId, dataset: &DatasetName) -> Result<()> {
        let key = dataset_key(owner, dataset.as_str());
        if self.known_datasets.lock().is_ok_and(|known| known.contains(&key)) {
            return Ok(());
        }
        let _ = self.store.kv().put_if_absent(&DATASETS, &key, Bytes::new()).await?;
        if let Ok(mut known) = self.known_datasets.lock() {
            if known.len() >= KNOWN_DATASETS {
                known.clear();
            }
            known.insert(key);
        }
        Ok(())
    }

    /// Records `id` as deleted, then removes the entry `stored`, its index
    /// keys and its thumbnail. Flushed. False when this id's tombstone was
    /// already there (a deletion replayed, or finishing one that was cut short).
    pub async fn delete_entry(&self, id: &EntryId, stored: &StoredEntry, owner: &OwnerId, now_ms: i64) -> Result<bool> {
        let kv = self.store.kv();
        let key = id.as_bytes();
        let keys = stored.index_keys(id)?;
        let tombstone = [owner.as_bytes().as_slice(), &now_ms.to_be_bytes()].concat();
        let created = kv.put_if_absent(&DELETED, key, tombstone.into()).await?.is_created();
        kv.delete(&ENTRIES, key).await?;
        self.remove_index_keys(&keys, None).await?;
        kv.delete(&THUMBNAILS, key).await?;
        kv.flush().await?;
        Ok(created)
    }

    /// Tombstones of deleted entries (id, then who deleted it and when) in id order after `after`.
    pub async fn tombstones(&self, after: Option<&EntryId>, limit: usize) -> Result<Vec<(EntryId, Bytes)>> {
        let after = after.map(|id| id.as_bytes().to_vec());
        let page = self.store.kv().list(&DELETED, &[], after.as_deref(), limit).await?;
        page.into_iter()
            .map(|(key, record)| {
                let id = <[u8; 16]>::try_from(key.as_slice())
                    .ok()
                    .and_then(|k| EntryId::from_bytes(k).ok())
                    .ok_or_else(|| corrupt("deleted", "a key is not an entry id"))?;
                if record.len() != 16 + 8 {
                    return Err(corrupt("deleted", format!("a tombstone of {} bytes", record.len())));
                }
                Ok((id, record))
            })
            .collect()
    }

    /// Writes a tombstone read from another registry's store (`migrate`),
    /// unless this id has one. Not flushed.
    pub async fn put_tombstone(&self, id: &EntryId, record: Bytes) -> Result<bool> {
        Ok(self.store.kv().put_if_absent(&DELETED, id.as_bytes(), record).await?.is_created())
    }

    /// Up to `limit` entries of `query` after `after`, in id order, and no
    /// more record bytes than `max_bytes` (but always at least one entry):
    /// what one request holds in memory is bounded whatever the codes' sizes.
    pub async fn page(&self, query: &Query, after: Option<&Cursor>, limit: usize, max_bytes: usize) -> Result<Page> {
        let index = query.index();
        let after_key = after.map(|c| index.after_key(c));
        let mut keys = self
            .store
            .kv()
            .list_keys(index.namespace, &index.prefix, after_key.as_deref(), limit.saturating_add(1))
            .await?;
        let mut more = keys.len() > limit;
        keys.truncate(limit);
        let listed = keys.iter().map(|k| index.parse(k)).collect::<Result<Vec<_>>>()?;
        let count = listed.len();
        let mut reads = stream::iter(
            listed.into_iter().map(|(cursor, id)| async move { self.entry(&id).await.map(|found| (cursor, found)) }),
        )
        .buffered(READ_AHEAD);
        let (mut items, mut bytes, mut last, mut read) = (Vec::with_capacity(count), 0usize, None, 0usize);
        while let Some((cursor, found)) = reads.try_next().await? {
            read += 1;
            // An index key without its entry (deleted since, or a publish cut
            // short) or naming another owner's entry is skipped.
            if let Some(stored) = found.filter(|s| query.admits(&s.entry)) {
                bytes += stored.record.len();
                items.push(stored);
            }
            last = Some(cursor);
            if bytes >= max_bytes && read < count {
                more = true;
                break;
            }
        }
        Ok(Page { items, next: if more { last } else { None } })
    }

    /// The summary of one owner's dataset, from its index keys; None when it
    /// holds no entry.
    pub async fn dataset_summary(&self, owner: &OwnerId, dataset: &DatasetName) -> Result<Option<DatasetSummary>> {
        let prefix = dataset_prefix(dataset.as_str(), Some(owner));
        let mut summary = DatasetSummary::default();
        self.walk_keys(&BY_DATASET, &prefix, |key| {
            let facts = key
                .get(prefix.len() + 16..)
                .and_then(Facts::decode)
                .ok_or_else(|| corrupt("by_dataset", "a key without its facts"))?;
            summary.add(&facts);
            Ok(())
        })
        .await?;
        Ok((summary.entries > 0).then_some(summary))
    }

    /// Up to `limit` datasets holding entries, in (owner, name) order after
    /// `after` (an owner and a dataset name), with their summaries; `owner`
    /// restricts to one owner.
    pub async fn datasets(
        &self,
        owner: Option<&OwnerId>,
        after: Option<(&OwnerId, &DatasetName)>,
        limit: usize,
    ) -> Result<Vec<DatasetRow>> {
        let prefix = owner.map(|o| o.as_bytes().to_vec()).unwrap_or_default();
        let mut after = after.map(|(o, d)| dataset_key(o, d.as_str()));
        let mut rows = Vec::new();
        // Emptied datasets keep their marker; they are skipped, so a page may take more than one listing.
        while rows.len() < limit {
            let keys = self.store.kv().list_keys(&DATASETS, &prefix, after.as_deref(), limit).await?;
            let names = keys
                .iter()
                .map(|key| {
                    let bad = || corrupt("datasets", "malformed key");
                    let (owner, dataset) = key.split_first_chunk::<16>().ok_or_else(bad)?;
                    let dataset: DatasetName =
                        std::str::from_utf8(dataset).map_err(|_| bad())?.parse().map_err(|_| bad())?;
                    Ok((OwnerId::from_bytes(*owner), dataset))
                })
                .collect::<Result<Vec<_>>>()?;
            let summaries: Vec<_> = stream::iter(names.into_iter().map(|(owner, dataset)| async move {
                let summary = self.dataset_summary(&owner, &dataset).await?;
                Ok::<_, Error>(summary.map(|summary| DatasetRow { owner, dataset, summary }))
            }))
            .buffered(8)
            .try_collect()
            .await?;
            rows.extend(summaries.into_iter().flatten().take(limit - rows.len()));
            if keys.len() < limit {
                break;
            }
            after = keys.into_iter().last();
        }
        Ok(rows)
    }

    pub async fn thumbnail(&self, id: &EntryId) -> Result<Option<Bytes>> {
        Ok(self.store.kv().get(&THUMBNAILS, id.as_bytes()).await?)
    }

    /// Stores a thumbnail while its entry is still there (a deleted entry's
    /// thumbnail is taken back). False when the entry is gone.
    pub async fn put_thumbnail(&self, id: &EntryId, thumbnail: Bytes) -> Result<bool> {
        let kv = self.store.kv();
        kv.put(&THUMBNAILS, id.as_bytes(), thumbnail).await?;
        if kv.get(&ENTRIES, id.as_bytes()).await?.is_none() {
            kv.delete(&THUMBNAILS, id.as_bytes()).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Counts of what the store holds (walks every namespace).
    pub async fn stats(&self) -> Result<Stats> {
        let (entries, owners, models, deleted, thumbnails, datasets) = futures::try_join!(
            self.count(&ENTRIES),
            self.count(&OWNERS),
            self.count(&MODELS),
            self.count(&DELETED),
            self.count(&THUMBNAILS),
            self.count(&DATASETS),
        )?;
        Ok(Stats { entries, owners, models, deleted, thumbnails, datasets })
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        let mut count = 0u64;
        self.walk_keys(namespace, &[], |_| {
            count += 1;
            Ok(())
        })
        .await?;
        Ok(count)
    }

    /// Calls `visit` with every key of `namespace` starting with `prefix`, in
    /// order, a listing page at a time.
    async fn walk_keys(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let keys = self.store.kv().list_keys(namespace, prefix, after.as_deref(), WALK_PAGE).await?;
            for key in &keys {
                visit(key)?;
            }
            if keys.len() < WALK_PAGE {
                return Ok(());
            }
            after = keys.into_iter().last();
        }
    }
}

/// Problems listed by [`Db::check`] at most (the count is always exact).
const MAX_LISTED_PROBLEMS: usize = 20;

/// What [`Db::check`] read and found.
#[derive(Debug, Default)]
pub struct StoreCheck {
    /// Every stored entry that decodes, by id.
    pub entries: std::collections::BTreeMap<EntryId, StoredEntry>,
    /// Index keys whose entry is not stored: left by a publish cut short
    /// (readers skip them; a retry of the publish completes it), not a fault.
    pub orphan_index_keys: u64,
    /// Faults, at most [`MAX_LISTED_PROBLEMS`] described.
    pub problems: Vec<String>,
    pub problem_count: usize,
}

impl StoreCheck {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(text);
        }
    }
}

impl Db {
    /// Reads the whole store and checks what the write order guarantees:
    /// every entry decodes, is stored under its own id and has both index
    /// keys; every index key parses and names the entry's owner and dataset
    /// when that entry is stored. Meant for a stopped registry or a quiet store.
    pub async fn check(&self) -> Result<StoreCheck> {
        let kv = self.store.kv();
        let mut check = StoreCheck::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = kv.list(&ENTRIES, &[], after.as_deref(), WALK_PAGE).await?;
            let done = page.len() < WALK_PAGE;
            after = page.last().map(|(k, _)| k.clone());
            for (key, record) in page {
                let id = match key.as_slice().try_into().ok().map(EntryId::from_bytes) {
                    Some(Ok(id)) => id,
                    _ => {
                        check.problem(format!("entries: a key of {} bytes is not an entry id", key.len()));
                        continue;
                    }
                };
                let stored = match StoredEntry::decode(record) {
                    Ok(s) => s,
                    Err(e) => {
                        check.problem(format!("entry {id}: {e}"));
                        continue;
                    }
                };
                if stored.entry.entry_id != id.to_string() {
                    check.problem(format!("entry {id}: stored under another id than its own"));
                }
                match stored.index_keys(&id) {
                    Ok(keys) => {
                        for (namespace, key) in [(&BY_OWNER, &keys.by_owner), (&BY_DATASET, &keys.by_dataset)] {
                            if kv.get(namespace, key).await?.is_none() {
                                check.problem(format!("entry {id} lacks its {namespace} key"));
                            }
                        }
                    }
                    Err(e) => check.problem(format!("entry {id}: {e}")),
                }
                check.entries.insert(id, stored);
            }
            if done {
                break;
            }
        }
        let mut index_keys: Vec<(&'static Namespace, Vec<u8>)> = Vec::new();
        for namespace in [&BY_OWNER, &BY_DATASET] {
            self.walk_keys(namespace, &[], |key| {
                index_keys.push((namespace, key.to_vec()));
                Ok(())
            })
            .await?;
        }
        for (namespace, key) in index_keys {
            let parsed = if *namespace == BY_OWNER {
                split_by_owner(&key).map(|(owner, id)| (owner, id, None))
            } else {
                split_by_dataset(&key).map(|(dataset, owner, id)| (owner, id, Some(dataset)))
            };
            let Some((owner, id, dataset)) = parsed else {
                check.problem(format!("{namespace}: a malformed key of {} bytes", key.len()));
                continue;
            };
            let Some(Ok(id)) = <[u8; 16]>::try_from(id).ok().map(EntryId::from_bytes) else {
                check.problem(format!("{namespace}: a key without an entry id"));
                continue;
            };
            let Some(stored) = check.entries.get(&id) else {
                check.orphan_index_keys += 1;
                continue;
            };
            let owner_matches = stored.owner().is_ok_and(|o| o.as_bytes() == owner);
            let dataset_matches = dataset.is_none_or(|d| d == stored.entry.dataset.as_bytes());
            if !owner_matches || !dataset_matches {
                check.problem(format!("{namespace}: a key of entry {id} names another owner or dataset"));
            }
        }
        Ok(check)
    }
}

/// What a registry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub owners: u64,
    pub models: u64,
    pub deleted: u64,
    pub thumbnails: u64,
    /// Datasets ever published in (emptied ones included).
    pub datasets: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "entries       {}", self.entries)?;
        writeln!(f, "owners        {}", self.owners)?;
        writeln!(f, "models        {}", self.models)?;
        writeln!(f, "datasets      {}", self.datasets)?;
        writeln!(f, "deleted ids   {}", self.deleted)?;
        write!(f, "thumbnails    {}", self.thumbnails)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
            encoded: entry.encode_to_vec().into(),
        }
    }

    async fn db() -> Db {
        Db::open(Store::new(Arc::new(ambishare_db::MemoryStore::new()))).await.unwrap()
    }

    async fn keys(db: &Db, namespace: &Namespace) -> usize {
        db.store().kv().list_keys(namespace, &[], None, 1000).await.unwrap().len()
    }

    fn ids(page: &Page) -> Vec<String> {
        page.items.iter().map(|s| s.entry.entry_id.clone()).collect()
    }

    #[tokio::test]
    async fn insert_writes_entry_and_indexes_and_is_idempotent() {
        let db = db().await;
        let owner = OwnerId::from_bytes([1; 16]);
        let e = prepared(owner, "faces", b"body");
        assert!(matches!(db.insert_entry(&e).await.unwrap(), Inserted::Stored));
        assert!(matches!(db.insert_entry(&e).await.unwrap(), Inserted::AlreadyStored));
        let other = Prepared { encoded: prepared(owner, "faces", b"other").encoded, ..e.clone() };
        assert!(matches!(db.insert_entry(&other).await.unwrap(), Inserted::Refused(Error::AlreadyExists(_))));
        for namespace in [&ENTRIES, &BY_OWNER, &BY_DATASET, &DATASETS] {
            assert_eq!(keys(&db, namespace).await, 1, "{namespace}");
        }
    }

    #[tokio::test]
    async fn concurrent_inserts_of_one_entry_store_it_once() {
        let db = db().await;
        let e = prepared(OwnerId::from_bytes([1; 16]), "faces", b"body");
        let verdicts = futures::future::join_all((0..8).map(|_| db.insert_entry(&e))).await;
        let stored = verdicts.iter().filter(|v| matches!(v, Ok(Inserted::Stored))).count();
        let already = verdicts.iter().filter(|v| matches!(v, Ok(Inserted::AlreadyStored))).count();
        assert_eq!((stored, already), (1, 7));
        assert_eq!(keys(&db, &BY_DATASET).await, 1);
    }

    #[tokio::test]
    async fn a_losing_racer_takes_back_only_its_own_index_keys() {
        let db = db().await;
        let (a, b) = (OwnerId::from_bytes([1; 16]), OwnerId::from_bytes([2; 16]));
        let winner = prepared(a, "faces", b"body");
        db.insert_entry(&winner).await.unwrap();
        // Another owner's entry claiming the same id, in another dataset: refused, and
        // the listing of that dataset does not show the winner through a stray key.
        let loser = Prepared { id: winner.id, ..prepared(b, "cats", b"other") };
        let loser = Prepared {
            encoded: {
                let mut e = pb::Entry::decode(loser.encoded.as_ref()).unwrap();
                e.entry_id = winner.id.to_string();
                e.encode_to_vec().into()
            },
            ..loser
        };
        assert!(matches!(db.insert_entry(&loser).await.unwrap(), Inserted::Refused(Error::AlreadyExists(_))));
        assert_eq!(keys(&db, &BY_DATASET).await, 1);
        let cats = Query { owner: Some(b), dataset: Some("cats".parse().unwrap()) };
        assert!(db.page(&cats, None, 10, usize::MAX).await.unwrap().items.is_empty());
    }

    #[tokio::test]
    async fn delete_removes_every_key_and_blocks_reuse() {
        let db = db().await;
        let owner = OwnerId::from_bytes([1; 16]);
        let e = prepared(owner, "faces", b"body");
        db.insert_entry(&e).await.unwrap();
        let stored = db.entry(&e.id).await.unwrap().unwrap();
        assert!(db.put_thumbnail(&e.id, Bytes::from_static(b"jpeg")).await.unwrap());
        assert!(db.delete_entry(&e.id, &stored, &owner, 1).await.unwrap());
        assert!(!db.delete_entry(&e.id, &stored, &owner, 1).await.unwrap(), "second delete created a tombstone");
        for namespace in [&ENTRIES, &BY_OWNER, &BY_DATASET, &THUMBNAILS] {
            assert_eq!(keys(&db, namespace).await, 0, "{namespace}");
        }
        assert!(db.is_deleted(&e.id).await.unwrap());
        assert!(matches!(db.insert_entry(&e).await.unwrap(), Inserted::Refused(Error::FailedPrecondition(_))));
        assert!(!db.put_thumbnail(&e.id, Bytes::from_static(b"jpeg")).await.unwrap(), "thumbnail of a deleted entry");
        assert_eq!(keys(&db, &THUMBNAILS).await, 0);
    }

    #[tokio::test]
    async fn pages_follow_id_order_and_tokens_round_trip() {
        let db = db().await;
        let (a, b) = (OwnerId::from_bytes([0xaa; 16]), OwnerId::from_bytes([0xbb; 16]));
        let mut published = Vec::new();
        for i in 0..10u8 {
            let (owner, ds) = if i % 2 == 0 { (a, "faces") } else { (b, "cats") };
            let e = prepared(owner, ds, &[i]);
            db.insert_entry(&e).await.unwrap();
            published.push(e.id.to_string());
        }
        // UUIDv7 ids of one process sort in creation order.
        let all = db.page(&Query::default(), None, 100, usize::MAX).await.unwrap();
        assert_eq!(ids(&all), published);
        let query = Query { owner: Some(a), dataset: None };
        let first = db.page(&query, None, 3, usize::MAX).await.unwrap();
        let of_a: Vec<String> = published.iter().step_by(2).cloned().collect();
        assert_eq!(ids(&first), of_a[..3]);
        let token = first.next.unwrap().token();
        let cursor = query.parse_token(&token).unwrap();
        let second = db.page(&query, Some(&cursor), 3, usize::MAX).await.unwrap();
        assert_eq!(ids(&second), of_a[3..]);
        assert!(second.next.is_none());
        for dataset_query in [
            Query { owner: None, dataset: Some("cats".parse().unwrap()) },
            Query { owner: Some(b), dataset: Some("cats".parse().unwrap()) },
        ] {
            let page = db.page(&dataset_query, None, 100, usize::MAX).await.unwrap();
            assert_eq!(page.items.len(), 5);
            let id: EntryId = page.items[1].entry.entry_id.parse().unwrap();
            let cursor = dataset_query.cursor_after(&id, &page.items[1]).unwrap();
            let rest = db.page(&dataset_query, Some(&cursor), 100, usize::MAX).await.unwrap();
            assert_eq!(ids(&rest), ids(&page)[2..]);
        }
        let by_dataset = Query { owner: None, dataset: Some("cats".parse().unwrap()) };
        assert!(by_dataset.parse_token(&token).is_err(), "16-byte token accepted for a 32-byte cursor");
        assert!(query.parse_token("zz").is_err());
        assert!(query.parse_token(&"z".repeat(32)).is_err());
    }

    #[tokio::test]
    async fn pages_stop_at_their_byte_budget_and_resume_where_they_stopped() {
        let db = db().await;
        let owner = OwnerId::from_bytes([0xaa; 16]);
        for i in 0..6u8 {
            db.insert_entry(&prepared(owner, "faces", &[i])).await.unwrap();
        }
        let query = Query { owner: Some(owner), dataset: None };
        let one = db.page(&query, None, 1, usize::MAX).await.unwrap().items[0].record.len();
        // A budget of two records and a bit: pages of three (the third crosses it).
        let (mut seen, mut after, mut pages) = (0, None, 0);
        loop {
            let page = db.page(&query, after.as_ref(), 100, 2 * one + 1).await.unwrap();
            pages += 1;
            assert!(!page.items.is_empty());
            seen += page.items.len();
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!((seen, pages), (6, 2));
        // A budget smaller than one record still makes progress, one entry a page.
        let page = db.page(&query, None, 100, 1).await.unwrap();
        assert_eq!((page.items.len(), page.next.is_some()), (1, true));
    }

    #[tokio::test]
    async fn index_keys_without_their_entry_are_skipped() {
        let db = db().await;
        let owner = OwnerId::from_bytes([0xaa; 16]);
        let e = prepared(owner, "faces", b"x");
        db.insert_entry(&e).await.unwrap();
        // A publish cut short after its index keys.
        let ghost = prepared(owner, "faces", b"y");
        let facts = Facts { code_bytes: 1, created_unix_ms: 1, model: ghost.model };
        let keys = IndexKeys::of(&ghost.id, &owner, "faces", &facts);
        db.store().kv().put(&BY_OWNER, &keys.by_owner, Bytes::new()).await.unwrap();
        let page = db.page(&Query { owner: Some(owner), dataset: None }, None, 10, usize::MAX).await.unwrap();
        assert_eq!(ids(&page), vec![e.id.to_string()]);
        // Its retry completes it.
        assert!(matches!(db.insert_entry(&ghost).await.unwrap(), Inserted::Stored));
        assert_eq!(
            db.page(&Query { owner: Some(owner), dataset: None }, None, 10, usize::MAX).await.unwrap().items.len(),
            2
        );
    }

    #[tokio::test]
    async fn refuses_corrupt_records() {
        let db = db().await;
        let id = EntryId::new();
        db.store().kv().put(&ENTRIES, id.as_bytes(), Bytes::from_static(b"\xff\xff")).await.unwrap();
        assert!(matches!(db.entry(&id).await, Err(Error::Corrupt { .. })));
        // An index key of the wrong length.
        let owner = OwnerId::from_bytes([3; 16]);
        let bad = [owner.as_bytes().as_slice(), b"short"].concat();
        db.store().kv().put(&BY_OWNER, &bad, Bytes::new()).await.unwrap();
        let page = db.page(&Query { owner: Some(owner), dataset: None }, None, 10, usize::MAX).await;
        assert!(matches!(page, Err(Error::Corrupt { .. })));
    }

    #[tokio::test]
    async fn dataset_summaries_follow_inserts_and_deletes() {
        let db = db().await;
        let (a, b) = (OwnerId::from_bytes([0xaa; 16]), OwnerId::from_bytes([0xbb; 16]));
        let first = prepared(a, "faces", b"abc");
        db.insert_entry(&first).await.unwrap();
        db.insert_entry(&prepared(a, "faces", b"defgh")).await.unwrap();
        let cats = prepared(b, "cats", b"x");
        db.insert_entry(&cats).await.unwrap();
        // The same entry again changes nothing.
        assert!(matches!(db.insert_entry(&first).await.unwrap(), Inserted::AlreadyStored));
        let rows = db.datasets(None, None, 10).await.unwrap();
        let names: Vec<_> = rows.iter().map(|r| (r.owner, r.dataset.as_str().to_owned())).collect();
        assert_eq!(names, vec![(a, "faces".to_owned()), (b, "cats".to_owned())]);
        let faces = &rows[0].summary;
        assert_eq!((faces.entries, faces.code_bytes, faces.last_created_unix_ms), (2, 8, 1_005));
        assert_eq!(faces.models, vec![(ModelId::from_bytes([7; 32]), 2)]);
        assert_eq!(db.datasets(Some(&b), None, 10).await.unwrap().len(), 1);
        assert_eq!(db.datasets(None, Some((&a, &"faces".parse().unwrap())), 10).await.unwrap()[0].owner, b);

        let stored = db.entry(&first.id).await.unwrap().unwrap();
        assert!(db.delete_entry(&first.id, &stored, &a, 9).await.unwrap());
        let faces = db.datasets(Some(&a), None, 10).await.unwrap().remove(0).summary;
        assert_eq!((faces.entries, faces.code_bytes), (1, 5));
        // An emptied dataset disappears.
        let stored = db.entry(&cats.id).await.unwrap().unwrap();
        assert!(db.delete_entry(&cats.id, &stored, &b, 10).await.unwrap());
        assert_eq!(db.datasets(None, None, 10).await.unwrap().len(), 1);
        assert!(db.dataset_summary(&b, &"cats".parse().unwrap()).await.unwrap().is_none());
        // A page of one skips the emptied one and still finds the next.
        assert_eq!(db.datasets(None, None, 1).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn models_are_visible_only_with_their_files() {
        let db = db().await;
        let file = Bytes::from(vec![5u8; 3 << 20]);
        let sha: [u8; 32] = *BlobId::of(&file).as_bytes();
        let header = rpb::ModelHeader { owner_id: "o".into(), ..Default::default() };
        let id = ModelId::from_bytes([9; 32]);
        assert!(db.put_model(&id, &header, vec![(sha, file.clone())]).await.unwrap());
        assert!(!db.put_model(&id, &header, vec![(sha, file.clone())]).await.unwrap(), "created twice");
        assert_eq!(db.model(&id).await.unwrap(), Some(header));
        assert_eq!(db.blob_bytes(&sha, 4 << 20).await.unwrap().as_deref(), Some(file.as_ref()));
        assert!(db.blob_bytes(&[0; 32], 4 << 20).await.unwrap().is_none());
        // A file that is not what its hash says is refused before the header is written.
        let other = ModelId::from_bytes([8; 32]);
        assert!(db.put_model(&other, &rpb::ModelHeader::default(), vec![([1; 32], file)]).await.is_err());
        assert!(db.model(&other).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn refuses_a_foreign_schema_and_unversioned_records() {
        let store = Store::new(Arc::new(ambishare_db::MemoryStore::new()));
        store.kv().put(&META, META_SCHEMA, Bytes::from_static(b"ambishare-registry/1")).await.unwrap();
        assert!(matches!(Db::open(store).await, Err(Error::Config(_))));
        let store = Store::new(Arc::new(ambishare_db::MemoryStore::new()));
        store.kv().put(&ENTRIES, &[1; 16], Bytes::from_static(b"x")).await.unwrap();
        assert!(matches!(Db::open(store.clone()).await, Err(Error::Config(_))));
        // Opening a new store twice (two replicas) is fine.
        let store = Store::new(Arc::new(ambishare_db::MemoryStore::new()));
        Db::open(store.clone()).await.unwrap();
        Db::open(store).await.unwrap();
    }
}
