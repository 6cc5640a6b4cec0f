//! What the stores of a stopped registry and a stopped owner hold, and whether
//! they agree: every entry with all three index rows and no index row without
//! its entry (registry); every entry with its signed bytes, its sealed key and
//! one source (owner); every entry the owner saw acknowledged present, intact
//! and byte-equal in the registry, and nothing in the registry the owner does
//! not hold the key of (both). Used by `ambishare-crash` after each crash.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use ambishare_owner::Home;
use ambishare_owner::store::{EntryState, OwnerStore};
use ambishare_proto::types::v1 as pb;
use ambishare_registry::store::{Engine, SledOptions, Store, Tree};
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::{Entry, EntryId, OwnerId};
use prost::Message;

use crate::{Error, Result};

/// Pairs read per scan.
const SCAN_PAGE: usize = 1024;
/// Problems listed per check at most (the count is always exact).
const MAX_LISTED: usize = 20;

/// Problems found, at most [`MAX_LISTED`] described, all counted.
#[derive(Clone, Debug, Default)]
pub struct Problems {
    pub listed: Vec<String>,
    pub count: usize,
}

impl Problems {
    pub fn push(&mut self, problem: impl Into<String>) {
        self.count += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(problem.into());
        }
    }

    pub fn extend(&mut self, other: Problems) {
        self.count += other.count;
        for p in other.listed {
            if self.listed.len() < MAX_LISTED {
                self.listed.push(p);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// One entry as the registry stores it.
#[derive(Clone, Debug)]
pub struct RegistryRecord {
    pub seq: u64,
    /// The prost bytes of the entry (the record less its sequence number).
    pub body: Vec<u8>,
    pub entry: pb::Entry,
}

/// What a registry's store holds, and what is wrong with it.
#[derive(Debug, Default)]
pub struct RegistrySnapshot {
    pub entries: BTreeMap<EntryId, RegistryRecord>,
    /// Rows of `by_seq`, `by_owner`, `by_dataset`.
    pub index_rows: [u64; 3],
    pub problems: Problems,
}

/// Opens a registry's sled store (the registry must be stopped).
pub fn open_registry_store(dir: &Path) -> Result<Arc<dyn Store>> {
    ambishare_registry::store::open(Engine::Sled, dir, SledOptions { cache_capacity: 32 << 20 })
        .map_err(|e| Error::Other(format!("opening the registry store {}: {e}", dir.display())))
}

fn scan_all(store: &dyn Store, tree: Tree) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    loop {
        let after = out.last().map(|(k, _)| k.clone());
        let page = store
            .scan(tree, &[], after.as_deref(), SCAN_PAGE)
            .map_err(|e| Error::Other(format!("scanning {tree}: {e}")))?;
        let done = page.len() < SCAN_PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

fn id_of(bytes: &[u8]) -> Option<EntryId> {
    EntryId::from_bytes(bytes.try_into().ok()?).ok()
}

/// The key of an entry in each index: `by_seq`, `by_owner`, `by_dataset`.
fn index_keys(seq: u64, owner: &OwnerId, dataset: &str) -> [(Tree, Vec<u8>); 3] {
    let seq = seq.to_be_bytes();
    [
        (Tree::BySeq, seq.to_vec()),
        (Tree::ByOwner, [owner.as_bytes().as_slice(), &seq].concat()),
        (Tree::ByDataset, [dataset.as_bytes(), &[0], owner.as_bytes().as_slice(), &seq].concat()),
    ]
}

/// Reads every entry and index row of a registry store and checks that they
/// match one to one.
pub fn check_registry_store(store: &dyn Store) -> Result<RegistrySnapshot> {
    let mut snap = RegistrySnapshot::default();
    let problems = &mut snap.problems;
    // (seq, owner, dataset) of each entry, to check the index rows against.
    let mut facts: HashMap<EntryId, (u64, OwnerId, String)> = HashMap::new();
    for (key, record) in scan_all(store, Tree::Entries)? {
        let Some(id) = id_of(&key) else {
            problems.push(format!("entries: a key of {} bytes is not an entry id", key.len()));
            continue;
        };
        let Some((seq, body)) = record.split_first_chunk::<8>() else {
            problems.push(format!("entry {id}: record shorter than its sequence number"));
            continue;
        };
        let seq = u64::from_be_bytes(*seq);
        let entry = match pb::Entry::decode(body) {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("entry {id}: record does not decode: {e}"));
                continue;
            }
        };
        if entry.entry_id != id.to_string() {
            problems.push(format!("entry {id}: stored under another id than its own ({:?})", entry.entry_id));
        }
        let owner: OwnerId = match entry.owner_id.parse() {
            Ok(o) => o,
            Err(e) => {
                problems.push(format!("entry {id}: bad owner id: {e}"));
                continue;
            }
        };
        for (tree, index_key) in index_keys(seq, &owner, &entry.dataset) {
            match store.get(tree, &index_key) {
                Ok(Some(v)) if v == id.as_bytes() => {}
                Ok(Some(v)) => problems.push(format!(
                    "entry {id}: its {tree} row points to {}",
                    id_of(&v).map_or("garbage".into(), |o| o.to_string())
                )),
                Ok(None) => problems.push(format!("entry {id} (seq {seq}) lacks its {tree} row")),
                Err(e) => return Err(Error::Other(format!("reading {tree}: {e}"))),
            }
        }
        facts.insert(id, (seq, owner, entry.dataset.clone()));
        snap.entries.insert(id, RegistryRecord { seq, body: body.to_vec(), entry });
    }

    // Every index row must be the row of an entry (same seq, owner and dataset).
    for (slot, tree) in [Tree::BySeq, Tree::ByOwner, Tree::ByDataset].into_iter().enumerate() {
        let rows = scan_all(store, tree)?;
        snap.index_rows[slot] = rows.len() as u64;
        for (key, value) in rows {
            let Some(id) = id_of(&value) else {
                problems.push(format!("{tree}: a row holds {} bytes, not an entry id", value.len()));
                continue;
            };
            let Some((seq, owner, dataset)) = facts.get(&id) else {
                problems.push(format!("{tree}: a row points to entry {id}, which is not stored"));
                continue;
            };
            let expected = &index_keys(*seq, owner, dataset)[slot].1;
            if &key != expected {
                problems.push(format!("{tree}: a row for entry {id} has a key that does not match the entry"));
            }
        }
    }
    let n = snap.entries.len() as u64;
    if snap.index_rows.iter().any(|&rows| rows != n) {
        problems.push(format!(
            "{n} entries but {} by_seq, {} by_owner, {} by_dataset rows",
            snap.index_rows[0], snap.index_rows[1], snap.index_rows[2]
        ));
    }
    Ok(snap)
}

/// One entry as the owner stores it.
#[derive(Clone, Debug)]
pub struct OwnerRecord {
    pub state: EntryState,
    pub source: [u8; 32],
    /// The signed entry as first sent.
    pub signed: Option<Vec<u8>>,
    pub has_sealed_key: bool,
}

/// What an owner's store holds, and what is wrong with it.
#[derive(Debug)]
pub struct OwnerSnapshot {
    pub owner: OwnerId,
    pub public_key: PublicKey,
    pub entries: BTreeMap<EntryId, OwnerRecord>,
    pub problems: Problems,
}

impl OwnerSnapshot {
    /// Entries the registry acknowledged, as the owner recorded.
    pub fn published(&self) -> impl Iterator<Item = &EntryId> {
        self.entries.iter().filter(|(_, r)| r.state == EntryState::Published).map(|(id, _)| id)
    }
}

/// Reads an owner's store (its `serve` must be stopped) and checks each entry
/// has its signed bytes, its sealed key and a source of its own.
pub fn read_owner_store(home: &Home) -> Result<OwnerSnapshot> {
    let owner_err = |e: ambishare_owner::Error| Error::Other(format!("owner store: {e}"));
    let public_key = home.load_signing_key().map_err(owner_err)?.public_key();
    let store = OwnerStore::open(&home.store_dir()).map_err(owner_err)?;
    let mut problems = Problems::default();
    let mut entries = BTreeMap::new();
    let mut sources: HashMap<(String, [u8; 32]), EntryId> = HashMap::new();
    for e in store.entries(None).map_err(owner_err)? {
        let signed = store.signed_entry(&e.id).map_err(owner_err)?;
        let has_sealed_key = store.key_material(&e.id).map_err(owner_err)?.is_some();
        if signed.is_none() {
            problems.push(format!("owner entry {} has no signed bytes", e.id));
        }
        if !has_sealed_key {
            problems.push(format!("owner entry {} has no key material", e.id));
        }
        if let Some(other) = sources.insert((e.dataset.to_string(), e.source_sha256), e.id) {
            problems.push(format!("owner entries {other} and {} come from the same source", e.id));
        }
        match store.source_entry(&e.dataset, &e.source_sha256).map_err(owner_err)? {
            Some((id, _)) if id == e.id => {}
            Some((id, _)) => problems.push(format!("the source of owner entry {} points to {id}", e.id)),
            None => problems.push(format!("owner entry {} has no source record", e.id)),
        }
        entries.insert(e.id, OwnerRecord { state: e.state, source: e.source_sha256, signed, has_sealed_key });
    }
    drop(store);
    Ok(OwnerSnapshot { owner: public_key.owner_id(), public_key, entries, problems })
}

/// Checks a stored registry entry: it parses, and its signature verifies with `key`.
pub fn intact(record: &RegistryRecord, key: &PublicKey) -> std::result::Result<Entry, String> {
    let entry = Entry::try_from(record.entry.clone()).map_err(|e| format!("does not parse: {e}"))?;
    entry.verify(key).map_err(|_| "its signature does not verify with the owner's key".to_string())?;
    Ok(entry)
}

/// Cross-checks an owner and a registry (both stores read while stopped):
/// - every entry the owner marked published, and every id in `acknowledged`
///   (from `publish --ids-out`), is in the registry, intact, byte-equal to
///   what the owner signed;
/// - every registry entry is the owner's, and the owner holds its signed
///   bytes (equal) and its sealed key.
pub fn cross_check(owner: &OwnerSnapshot, registry: &RegistrySnapshot, acknowledged: &[EntryId]) -> Problems {
    let mut problems = Problems::default();
    let published: Vec<EntryId> = owner.published().copied().collect();
    for (id, what) in published
        .iter()
        .map(|id| (id, "marked published"))
        .chain(acknowledged.iter().map(|id| (id, "listed by --ids-out")))
    {
        match registry.entries.get(id) {
            None => problems.push(format!("LOST: entry {id} {what} by the owner is not in the registry")),
            Some(record) => {
                if let Err(why) = intact(record, &owner.public_key) {
                    problems.push(format!("entry {id} {what}: the registry's copy {why}"));
                }
            }
        }
    }
    for (id, record) in &registry.entries {
        if record.entry.owner_id != owner.owner.to_string() {
            problems.push(format!("registry entry {id} belongs to another owner ({})", record.entry.owner_id));
            continue;
        }
        match owner.entries.get(id) {
            None => problems.push(format!("registry entry {id} is unknown to the owner (no sealed key)")),
            Some(mine) => {
                if !mine.has_sealed_key {
                    problems.push(format!("registry entry {id} has no sealed key at the owner"));
                }
                if mine.signed.as_deref() != Some(record.body.as_slice()) {
                    problems.push(format!("registry entry {id} differs from the bytes the owner signed"));
                }
                if let Err(why) = intact(record, &owner.public_key) {
                    problems.push(format!("registry entry {id} {why}"));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ambishare_registry::store::MemoryStore;

    fn entry_record(id: &EntryId, owner: &OwnerId, seq: u64) -> Vec<u8> {
        let entry = pb::Entry {
            entry_id: id.to_string(),
            owner_id: owner.to_string(),
            dataset: "d".into(),
            ..Default::default()
        };
        [seq.to_be_bytes().as_slice(), &entry.encode_to_vec()].concat()
    }

    fn put(store: &MemoryStore, id: &EntryId, owner: &OwnerId, seq: u64, with_index: [bool; 3]) {
        let record = entry_record(id, owner, seq);
        store.apply(&[], &[(Tree::Entries, id.as_bytes(), Some(&record))]).unwrap();
        for ((tree, key), with) in index_keys(seq, owner, "d").into_iter().zip(with_index) {
            if with {
                store.apply(&[], &[(tree, &key, Some(id.as_bytes()))]).unwrap();
            }
        }
    }

    fn owner() -> OwnerId {
        let (key, _) = ambishare_shared::crypto::SigningKey::generate().unwrap();
        key.public_key().owner_id()
    }

    #[test]
    fn accepts_entries_with_all_their_index_rows() {
        let store = MemoryStore::new();
        let owner = owner();
        for seq in 1..=3 {
            put(&store, &EntryId::new(), &owner, seq, [true; 3]);
        }
        let snap = check_registry_store(&store).unwrap();
        assert!(snap.problems.is_empty(), "{:?}", snap.problems);
        assert_eq!((snap.entries.len(), snap.index_rows), (3, [3, 3, 3]));
    }

    #[test]
    fn reports_an_entry_without_its_dataset_row() {
        let store = MemoryStore::new();
        let owner = owner();
        put(&store, &EntryId::new(), &owner, 1, [true, true, false]);
        let snap = check_registry_store(&store).unwrap();
        assert!(snap.problems.listed.iter().any(|p| p.contains("lacks its by_dataset row")), "{:?}", snap.problems);
    }

    #[test]
    fn reports_an_index_row_without_its_entry() {
        let store = MemoryStore::new();
        let owner = owner();
        put(&store, &EntryId::new(), &owner, 1, [true; 3]);
        let ghost = EntryId::new();
        store.apply(&[], &[(Tree::ByOwner, &index_keys(2, &owner, "d")[1].1, Some(ghost.as_bytes()))]).unwrap();
        let snap = check_registry_store(&store).unwrap();
        assert!(snap.problems.listed.iter().any(|p| p.contains("which is not stored")), "{:?}", snap.problems);
        assert!(snap.problems.listed.iter().any(|p| p.contains("2 by_owner")), "{:?}", snap.problems);
    }

    #[test]
    fn reports_a_row_pointing_at_the_wrong_sequence() {
        let store = MemoryStore::new();
        let owner = owner();
        let id = EntryId::new();
        put(&store, &id, &owner, 1, [true, true, true]);
        store.apply(&[], &[(Tree::BySeq, &7u64.to_be_bytes(), Some(id.as_bytes()))]).unwrap();
        let snap = check_registry_store(&store).unwrap();
        assert!(snap.problems.listed.iter().any(|p| p.contains("does not match the entry")), "{:?}", snap.problems);
    }
}
