//! What the stores of a stopped registry and a stopped owner hold, and whether
//! they agree: every entry with both its index keys, and every index key
//! naming its entry's owner and dataset (registry, by its own check); every entry with its signed bytes, its sealed key and
//! one source (owner); every entry the owner saw acknowledged present, intact
//! and byte-equal in the registry, and nothing in the registry the owner does
//! not hold the key of (both). Used by `ambishare-crash` after each crash.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ambishare_db::{Store, StoreConfig};
use ambishare_owner::Home;
use ambishare_owner::store::{EntryState, OwnerStore};
use ambishare_proto::types::v1 as pb;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::{Entry, EntryId, OwnerId};

use crate::{Error, Result};

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
    /// The prost bytes of the entry.
    pub body: Vec<u8>,
    pub entry: pb::Entry,
}

/// What a registry's store holds, and what is wrong with it.
#[derive(Debug, Default)]
pub struct RegistrySnapshot {
    pub entries: BTreeMap<EntryId, RegistryRecord>,
    /// Index keys left without their entry by a publish cut short (allowed).
    pub orphan_index_keys: u64,
    pub problems: Problems,
}

/// Opens a registry's sled store (the registry must be stopped).
pub async fn open_registry_store(dir: &Path) -> Result<Store> {
    StoreConfig::Sled { path: dir.to_path_buf(), cache_capacity: 32 << 20 }
        .open()
        .await
        .map_err(|e| Error::Other(format!("opening the registry store {}: {e}", dir.display())))
}

/// Reads every entry and index key of a registry store and checks them
/// (the registry's own check: entries with both index keys, keys that match).
pub async fn check_registry_store(store: Store) -> Result<RegistrySnapshot> {
    let check = ambishare_registry::check_store(store)
        .await
        .map_err(|e| Error::Other(format!("checking the registry store: {e}")))?;
    // Problems beyond those listed are counted only.
    let problems = Problems { listed: check.problems, count: check.problem_count };
    let entries = check
        .entries
        .into_iter()
        .map(|(id, stored)| (id, RegistryRecord { body: stored.record.to_vec(), entry: stored.entry }))
        .collect();
    Ok(RegistrySnapshot { entries, orphan_index_keys: check.orphan_index_keys, problems })
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
    use std::sync::Arc;

    use ambishare_db::{Bytes, MemoryStore, Namespace};
    use prost::Message;

    use super::*;

    static ENTRIES: Namespace = Namespace::from_static("entries");

    fn owner() -> OwnerId {
        let (key, _) = ambishare_shared::crypto::SigningKey::generate().unwrap();
        key.public_key().owner_id()
    }

    #[tokio::test]
    async fn reports_an_entry_without_its_index_keys() {
        let store = Store::new(Arc::new(MemoryStore::new()));
        // A store that holds the schema: a registry opened it once.
        check_registry_store(store.clone()).await.unwrap();
        let id = EntryId::new();
        let entry = pb::Entry {
            entry_id: id.to_string(),
            owner_id: owner().to_string(),
            dataset: "d".into(),
            model_id: ambishare_shared::ModelId::from_bytes([1; 32]).to_string(),
            ..Default::default()
        };
        store.kv().put(&ENTRIES, id.as_bytes(), Bytes::from(entry.encode_to_vec())).await.unwrap();
        let snap = check_registry_store(store).await.unwrap();
        assert_eq!(snap.entries.len(), 1);
        assert!(snap.problems.listed.iter().any(|p| p.contains("lacks its by_owner key")), "{:?}", snap.problems);
        assert_eq!(snap.problems.count, 2, "{:?}", snap.problems);
    }
}
