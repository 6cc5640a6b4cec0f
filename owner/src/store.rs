//! The owner's store, over sled. One tree per kind of record:
//!
//! | tree      | key                          | value                                    |
//! |-----------|------------------------------|------------------------------------------|
//! | `sources` | dataset `\0` sha256(file)    | entry id (16 bytes)                      |
//! | `entries` | entry id                     | [`EntryRecord`]: state, dataset, source  |
//! | `signed`  | entry id                     | the signed entry (protobuf), as first sent |
//! | `keys`    | entry id                     | sealed full support key (format v2 entries) |
//! | `tags`    | entry id                     | entry tag and bands (format v3 entries: the key derives from the master secret) |
//! | `grants`  | party `\0` dataset           | `GrantInfo` (protobuf)                   |
//! | `certs`   | certificate fingerprint      | [`CertRecord`]                           |
//! | `audit`   | seq (u64 big-endian)         | `AuditEvent` (protobuf)                  |
//! | `models`  | model id                     | manifest bytes                           |
//! | `meta`    | name                         | bytes (`master-secret`: the sealed master secret) |
//!
//! A source, its entry and its key material are written in one transaction, so
//! a crash leaves all three or none.

use std::path::Path;

use ambishare_proto::owner::v1 as pb;
use ambishare_shared::{Bands, DatasetName, EntryId, EntryTag, MasterSecret, ModelId, PartyName};
use prost::Message;
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::error::{Error, Result};
use crate::home::Keyring;
use crate::pki::Fingerprint;
use crate::types::{AuditEvent, Grant};

/// Where an entry is in publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Stored here with its sealed key; not yet acknowledged by the registry.
    Prepared,
    /// The registry acknowledged it (stored or already stored).
    Published,
}

impl EntryState {
    fn tag(self) -> u32 {
        match self {
            EntryState::Prepared => 1,
            EntryState::Published => 2,
        }
    }

    fn from_tag(tag: u32) -> Result<Self> {
        match tag {
            1 => Ok(EntryState::Prepared),
            2 => Ok(EntryState::Published),
            _ => Err(Error::corrupt("entries", format!("unknown state {tag}"))),
        }
    }
}

#[derive(Clone, PartialEq, Message)]
struct EntryRecord {
    #[prost(uint32, tag = "1")]
    state: u32,
    #[prost(string, tag = "2")]
    dataset: String,
    #[prost(bytes = "vec", tag = "3")]
    source_sha256: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct CertRecord {
    #[prost(string, tag = "1")]
    party: String,
    #[prost(int64, tag = "2")]
    issued_unix_ms: i64,
    #[prost(int64, tag = "3")]
    not_after_unix_ms: i64,
    #[prost(int64, tag = "4")]
    revoked_unix_ms: i64,
}

/// What the owner keeps to release an entry's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMaterial {
    /// Format v2: the full support key, sealed.
    Sealed(Vec<u8>),
    /// Format v3: the entry's tag and its model's bands; the key derives from the master secret.
    Derived { tag: EntryTag, bands: Bands },
}

/// Name of the sealed master secret in `meta`, and its additional authenticated data.
const MASTER_SECRET: &str = "master-secret";
const MASTER_AAD: &[u8] = b"ambishare master secret";

fn encode_tag_record(tag: &EntryTag, bands: &Bands) -> Vec<u8> {
    let mut out = Vec::with_capacity(33 + 2 * bands.bounds().len());
    out.extend_from_slice(tag.as_bytes());
    out.push(bands.bounds().len() as u8);
    for b in bands.bounds() {
        out.extend_from_slice(&b.to_le_bytes());
    }
    out
}

fn decode_tag_record(bytes: &[u8]) -> Result<KeyMaterial> {
    let bad = |why: &str| Error::corrupt("tags", why.to_string());
    let (tag, rest) = bytes.split_at_checked(32).ok_or_else(|| bad("record too short"))?;
    let (&count, rest) = rest.split_first().ok_or_else(|| bad("record too short"))?;
    if rest.len() != 2 * count as usize {
        return Err(bad("bands of the wrong length"));
    }
    let bounds = rest.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    Ok(KeyMaterial::Derived {
        tag: EntryTag::from_bytes(tag).map_err(|e| bad(&e.to_string()))?,
        bands: Bands::new(bounds).map_err(|e| bad(&e.to_string()))?,
    })
}

/// An entry this owner created (its signed bytes are in [`OwnerStore::signed_entry`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    pub id: EntryId,
    pub dataset: DatasetName,
    pub source_sha256: [u8; 32],
    pub state: EntryState,
}

/// A certificate issued to a party.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartyCert {
    pub fingerprint: Fingerprint,
    pub party: PartyName,
    pub issued_unix_ms: i64,
    pub not_after_unix_ms: i64,
    pub revoked_unix_ms: Option<i64>,
}

/// The owner's sled database and its trees.
pub struct OwnerStore {
    db: sled::Db,
    sources: sled::Tree,
    entries: sled::Tree,
    signed: sled::Tree,
    keys: sled::Tree,
    tags: sled::Tree,
    grants: sled::Tree,
    certs: sled::Tree,
    audit: sled::Tree,
    models: sled::Tree,
    meta: sled::Tree,
    /// The last audit sequence number handed out. Appends take it in turn:
    /// sled 0.34's `generate_id` deadlocked under concurrent writers (seen with
    /// 64 parties calling GetKeys at once).
    audit_seq: std::sync::Mutex<u64>,
}

impl std::fmt::Debug for OwnerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerStore")
    }
}

/// How long `open` waits for a lock that is being released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn is_lock_conflict(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock")
}

fn tx_err(e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => Error::Store(e),
    }
}

fn grant_key(party: &str, dataset: &str) -> Vec<u8> {
    [party.as_bytes(), b"\0", dataset.as_bytes()].concat()
}

fn source_key(dataset: &DatasetName, sha: &[u8; 32]) -> Vec<u8> {
    [dataset.as_str().as_bytes(), b"\0", sha.as_slice()].concat()
}

fn entry_id_of(bytes: &[u8], tree: &'static str) -> Result<EntryId> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| Error::corrupt(tree, "entry id is not 16 bytes"))?;
    EntryId::from_bytes(arr).map_err(|e| Error::corrupt(tree, e.to_string()))
}

impl OwnerStore {
    /// Opens (creating) the store; refuses when another process holds it.
    ///
    /// sled releases its file lock only once its epoch-deferred cleanup has run,
    /// a few milliseconds after the last handle is dropped, so a lock conflict
    /// is retried briefly before it is reported.
    pub fn open(path: &Path) -> Result<Self> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(ref io)) if is_lock_conflict(io) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::FailedPrecondition(format!(
                            "the store {} is in use by another process (is `ambishare-owner serve` running? \
                             then talk to it instead of using --offline)",
                            path.display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(Error::Store(e)),
            }
        };
        let tree = |name: &str| db.open_tree(name);
        let audit = tree("audit")?;
        let last_seq = match audit.last()? {
            Some((key, _)) => {
                let bytes: [u8; 8] =
                    key.as_ref().try_into().map_err(|_| Error::corrupt("audit", "key of the wrong length"))?;
                u64::from_be_bytes(bytes)
            }
            None => 0,
        };
        Ok(OwnerStore {
            sources: tree("sources")?,
            entries: tree("entries")?,
            signed: tree("signed")?,
            keys: tree("keys")?,
            tags: tree("tags")?,
            grants: tree("grants")?,
            certs: tree("certs")?,
            audit,
            models: tree("models")?,
            meta: tree("meta")?,
            audit_seq: std::sync::Mutex::new(last_seq),
            db,
        })
    }

    /// Writes everything to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub async fn flush_async(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    // ---- publishing

    /// The entry made from a source file of a dataset, with its state.
    pub fn source_entry(&self, dataset: &DatasetName, sha: &[u8; 32]) -> Result<Option<(EntryId, EntryState)>> {
        let Some(id) = self.sources.get(source_key(dataset, sha))? else { return Ok(None) };
        let id = entry_id_of(&id, "sources")?;
        let entry = self.entry(&id)?.ok_or_else(|| Error::corrupt("sources", format!("entry {id} missing")))?;
        Ok(Some((id, entry.state)))
    }

    /// Stores a new entry, its source and its key material in one
    /// transaction, as prepared, and flushes. Refuses a source that already
    /// has an entry.
    pub fn prepare(
        &self,
        dataset: &DatasetName,
        source_sha256: &[u8; 32],
        id: &EntryId,
        entry_pb: &[u8],
        key: &KeyMaterial,
    ) -> Result<()> {
        let record = EntryRecord {
            state: EntryState::Prepared.tag(),
            dataset: dataset.to_string(),
            source_sha256: source_sha256.to_vec(),
        }
        .encode_to_vec();
        let skey = source_key(dataset, source_sha256);
        let (sealed, tag) = match key {
            KeyMaterial::Sealed(sealed) => (Some(sealed.as_slice()), None),
            KeyMaterial::Derived { tag, bands } => (None, Some(encode_tag_record(tag, bands))),
        };
        (&self.sources, &self.entries, &self.signed, &self.keys, &self.tags)
            .transaction(|(sources, entries, signed, keys, tags)| {
                if sources.get(&skey)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(Error::FailedPrecondition(
                        "this source already has an entry".into(),
                    )));
                }
                sources.insert(skey.as_slice(), id.as_bytes().as_slice())?;
                entries.insert(id.as_bytes().as_slice(), record.as_slice())?;
                signed.insert(id.as_bytes().as_slice(), entry_pb)?;
                if let Some(sealed) = sealed {
                    keys.insert(id.as_bytes().as_slice(), sealed)?;
                }
                if let Some(tag) = &tag {
                    tags.insert(id.as_bytes().as_slice(), tag.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_err)?;
        self.flush()
    }

    /// Marks entries published (in one batch) and flushes.
    pub fn mark_published(&self, ids: &[EntryId]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for id in ids {
            let Some(mut record) = self.entry_record(id)? else {
                return Err(Error::corrupt("entries", format!("entry {id} missing")));
            };
            record.state = EntryState::Published.tag();
            batch.insert(id.as_bytes().as_slice(), record.encode_to_vec());
        }
        self.entries.apply_batch(batch)?;
        self.flush()
    }

    fn entry_record(&self, id: &EntryId) -> Result<Option<EntryRecord>> {
        let Some(bytes) = self.entries.get(id.as_bytes())? else { return Ok(None) };
        EntryRecord::decode(bytes.as_ref()).map(Some).map_err(|e| Error::corrupt("entries", e.to_string()))
    }

    fn stored_entry(id: EntryId, record: EntryRecord) -> Result<StoredEntry> {
        Ok(StoredEntry {
            id,
            dataset: record
                .dataset
                .parse()
                .map_err(|e: ambishare_shared::Error| Error::corrupt("entries", e.to_string()))?,
            source_sha256: record
                .source_sha256
                .as_slice()
                .try_into()
                .map_err(|_| Error::corrupt("entries", "source hash is not 32 bytes"))?,
            state: EntryState::from_tag(record.state)?,
        })
    }

    pub fn entry(&self, id: &EntryId) -> Result<Option<StoredEntry>> {
        self.entry_record(id)?.map(|r| Self::stored_entry(*id, r)).transpose()
    }

    /// Every entry (optionally of one dataset), in id order (creation order).
    pub fn entries(&self, dataset: Option<&DatasetName>) -> Result<Vec<StoredEntry>> {
        let mut out = Vec::new();
        for item in self.entries.iter() {
            let (key, value) = item?;
            let record = EntryRecord::decode(value.as_ref()).map_err(|e| Error::corrupt("entries", e.to_string()))?;
            if dataset.is_some_and(|d| d.as_str() != record.dataset) {
                continue;
            }
            out.push(Self::stored_entry(entry_id_of(&key, "entries")?, record)?);
        }
        Ok(out)
    }

    /// The signed entry (protobuf) exactly as first sent to the registry.
    pub fn signed_entry(&self, id: &EntryId) -> Result<Option<Vec<u8>>> {
        Ok(self.signed.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    pub fn sealed_key(&self, id: &EntryId) -> Result<Option<Vec<u8>>> {
        Ok(self.keys.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    /// What releases the key of an entry: its tag (v3) or its sealed key (v2).
    pub fn key_material(&self, id: &EntryId) -> Result<Option<KeyMaterial>> {
        if let Some(record) = self.tags.get(id.as_bytes())? {
            return decode_tag_record(&record).map(Some);
        }
        Ok(self.sealed_key(id)?.map(KeyMaterial::Sealed))
    }

    /// Entries with key material (sealed keys and tags).
    pub fn key_material_count(&self) -> usize {
        self.keys.len() + self.tags.len()
    }

    /// The owner's master secret, made and sealed on first use (one
    /// compare-and-swap, so two first users agree on one secret).
    pub fn master_secret(&self, keyring: &Keyring) -> Result<MasterSecret> {
        if let Some(sealed) = self.meta.get(MASTER_SECRET)? {
            return MasterSecret::from_bytes(&keyring.open(&sealed, MASTER_AAD)?)
                .map_err(|e| Error::corrupt("meta", e.to_string()));
        }
        let fresh = MasterSecret::generate()?;
        let sealed = keyring.current().seal(fresh.expose(), MASTER_AAD)?;
        match self.meta.compare_and_swap(MASTER_SECRET, None as Option<&[u8]>, Some(sealed))? {
            Ok(()) => {
                self.flush()?;
                tracing::info!("master secret created and sealed");
                Ok(fresh)
            }
            Err(_) => self.master_secret(keyring),
        }
    }

    /// Re-seals the master secret with `target` when another key sealed it
    /// (`keyring` opens it). Returns whether it did.
    pub fn reseal_master_secret(
        &self,
        keyring: &Keyring,
        target: &ambishare_shared::crypto::SealingKey,
    ) -> Result<bool> {
        let Some(sealed) = self.meta.get(MASTER_SECRET)? else { return Ok(false) };
        if ambishare_shared::crypto::SealingKey::sealed_by(&sealed) == Some(target.id()) {
            return Ok(false);
        }
        let plain = keyring.open(&sealed, MASTER_AAD)?;
        let fresh = target.seal(&plain, MASTER_AAD)?;
        let swapped = self.meta.compare_and_swap(MASTER_SECRET, Some(sealed), Some(fresh))?.is_ok();
        self.flush()?;
        Ok(swapped)
    }

    /// Which key seals the master secret (None before it exists).
    pub fn master_sealed_by(&self) -> Result<Option<ambishare_shared::crypto::SealingKeyId>> {
        Ok(self.meta.get(MASTER_SECRET)?.and_then(|s| ambishare_shared::crypto::SealingKey::sealed_by(&s)))
    }

    /// Every sealed key with its entry id.
    pub fn sealed_keys(&self) -> impl Iterator<Item = Result<(EntryId, Vec<u8>)>> + '_ {
        self.keys.iter().map(|item| {
            let (key, value) = item?;
            Ok((entry_id_of(&key, "keys")?, value.to_vec()))
        })
    }

    /// Replaces one sealed key if it still is `old` (compare-and-swap: one
    /// atomic step per key). Returns whether it was replaced.
    pub fn replace_sealed_key(&self, id: &EntryId, old: &[u8], new: &[u8]) -> Result<bool> {
        Ok(self.keys.compare_and_swap(id.as_bytes(), Some(old), Some(new))?.is_ok())
    }

    // ---- models and metadata

    pub fn put_model(&self, id: &ModelId, manifest: &[u8]) -> Result<()> {
        self.models.insert(id.as_bytes(), manifest)?;
        Ok(())
    }

    pub fn model_manifest(&self, id: &ModelId) -> Result<Option<Vec<u8>>> {
        Ok(self.models.get(id.as_bytes())?.map(|v| v.to_vec()))
    }

    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(name)?.map(|v| v.to_vec()))
    }

    pub fn put_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(name, value)?;
        self.flush()
    }

    // ---- grants and certificates

    pub fn grant(&self, party: &PartyName, dataset: &DatasetName) -> Result<Option<Grant>> {
        let Some(bytes) = self.grants.get(grant_key(party.as_str(), dataset.as_str()))? else { return Ok(None) };
        decode_grant(&bytes).map(Some)
    }

    /// Grants of one party, or of every party, ordered by party then dataset.
    pub fn grants(&self, party: Option<&PartyName>) -> Result<Vec<Grant>> {
        let iter = match party {
            Some(p) => self.grants.scan_prefix(grant_key(p.as_str(), "")),
            None => self.grants.iter(),
        };
        iter.map(|item| decode_grant(&item?.1)).collect()
    }

    /// Records a certificate and a grant together.
    pub fn put_grant(&self, grant: &Grant, cert: Option<&PartyCert>) -> Result<()> {
        let gkey = grant_key(grant.party.as_str(), grant.dataset.as_str());
        let gval = pb::GrantInfo::from(grant).encode_to_vec();
        let cert = cert.map(|c| (c.fingerprint, cert_record(c).encode_to_vec()));
        (&self.grants, &self.certs)
            .transaction(|(grants, certs)| {
                if let Some((fp, value)) = &cert {
                    certs.insert(fp.as_slice(), value.as_slice())?;
                }
                grants.insert(gkey.as_slice(), gval.as_slice())?;
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_err)?;
        self.flush()
    }

    pub fn cert(&self, fingerprint: &Fingerprint) -> Result<Option<PartyCert>> {
        let Some(bytes) = self.certs.get(fingerprint)? else { return Ok(None) };
        decode_cert(fingerprint.as_slice(), &bytes).map(Some)
    }

    /// Certificates issued to a party.
    pub fn certs_of(&self, party: &PartyName) -> Result<Vec<PartyCert>> {
        let mut out = Vec::new();
        for item in self.certs.iter() {
            let (key, value) = item?;
            let cert = decode_cert(&key, &value)?;
            if &cert.party == party {
                out.push(cert);
            }
        }
        Ok(out)
    }

    /// Revokes a party's active grants (on one dataset, or all) and, when
    /// `dataset` is None, its certificates, in one transaction. Returns the
    /// number of grants and of certificates revoked.
    pub fn revoke(&self, party: &PartyName, dataset: Option<&DatasetName>, now_ms: i64) -> Result<(u32, u32)> {
        let mut grants: Vec<Grant> = match dataset {
            Some(d) => self.grant(party, d)?.into_iter().collect(),
            None => self.grants(Some(party))?,
        };
        grants.retain(|g| g.revoked_unix_ms.is_none());
        let mut certs = if dataset.is_none() { self.certs_of(party)? } else { Vec::new() };
        certs.retain(|c| c.revoked_unix_ms.is_none());
        let grant_rows: Vec<(Vec<u8>, Vec<u8>)> = grants
            .iter()
            .map(|g| {
                let revoked = Grant { revoked_unix_ms: Some(now_ms), ..g.clone() };
                (grant_key(g.party.as_str(), g.dataset.as_str()), pb::GrantInfo::from(&revoked).encode_to_vec())
            })
            .collect();
        let cert_rows: Vec<(Fingerprint, Vec<u8>)> = certs
            .iter()
            .map(|c| {
                let revoked = PartyCert { revoked_unix_ms: Some(now_ms), ..c.clone() };
                (c.fingerprint, cert_record(&revoked).encode_to_vec())
            })
            .collect();
        (&self.grants, &self.certs)
            .transaction(|(g, c)| {
                for (k, v) in &grant_rows {
                    g.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &cert_rows {
                    c.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<Error>>(())
            })
            .map_err(tx_err)?;
        self.flush()?;
        Ok((grant_rows.len() as u32, cert_rows.len() as u32))
    }

    // ---- audit

    /// Appends events in one batch, giving each the next sequence number.
    /// Not flushed: flush where durability matters (the key service group-commits).
    pub fn append_audit(&self, events: &mut [AuditEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Held until the records are in, so they land in sequence order. Plain
        // inserts, not a batch: sled's batches take its process-wide write
        // lock, which deadlocked against the many readers of a loaded key
        // service (sled 0.34, issue #1412); inserts only read-lock it.
        let mut seq = self.audit_seq.lock().map_err(|_| Error::Internal("audit sequence lock poisoned".into()))?;
        for event in events.iter_mut() {
            // Sequence numbers start at 1, so `after_seq = 0` means "from the start".
            *seq += 1;
            event.seq = *seq;
            self.audit.insert(event.seq.to_be_bytes(), pb::AuditEvent::from(&*event).encode_to_vec())?;
        }
        Ok(())
    }

    /// Events after `after_seq`, oldest first, at most `limit`, optionally of one party.
    pub fn audit(&self, after_seq: u64, limit: usize, party: Option<&str>) -> Result<Vec<AuditEvent>> {
        let mut out = Vec::new();
        let Some(start) = after_seq.checked_add(1) else { return Ok(out) };
        for item in self.audit.range(start.to_be_bytes()..) {
            if out.len() >= limit {
                break;
            }
            let (_, value) = item?;
            let event = pb::AuditEvent::decode(value.as_ref()).map_err(|e| Error::corrupt("audit", e.to_string()))?;
            if party.is_some_and(|p| p != event.party) {
                continue;
            }
            out.push(AuditEvent::try_from(event).map_err(|e| Error::corrupt("audit", e.to_string()))?);
        }
        Ok(out)
    }
}

fn decode_grant(bytes: &[u8]) -> Result<Grant> {
    let info = pb::GrantInfo::decode(bytes).map_err(|e| Error::corrupt("grants", e.to_string()))?;
    Grant::try_from(info).map_err(|e| Error::corrupt("grants", e.to_string()))
}

fn cert_record(c: &PartyCert) -> CertRecord {
    CertRecord {
        party: c.party.to_string(),
        issued_unix_ms: c.issued_unix_ms,
        not_after_unix_ms: c.not_after_unix_ms,
        revoked_unix_ms: c.revoked_unix_ms.unwrap_or(0),
    }
}

fn decode_cert(key: &[u8], bytes: &[u8]) -> Result<PartyCert> {
    let r = CertRecord::decode(bytes).map_err(|e| Error::corrupt("certs", e.to_string()))?;
    Ok(PartyCert {
        fingerprint: key.try_into().map_err(|_| Error::corrupt("certs", "fingerprint is not 32 bytes"))?,
        party: r.party.parse().map_err(|e: ambishare_shared::Error| Error::corrupt("certs", e.to_string()))?,
        issued_unix_ms: r.issued_unix_ms,
        not_after_unix_ms: r.not_after_unix_ms,
        revoked_unix_ms: (r.revoked_unix_ms > 0).then_some(r.revoked_unix_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambishare_shared::Tier;

    fn grant(party: &str, dataset: &str) -> Grant {
        Grant {
            party: party.parse().unwrap(),
            dataset: dataset.parse().unwrap(),
            tier: Tier::Full,
            granted_unix_ms: 10,
            expires_unix_ms: None,
            revoked_unix_ms: None,
        }
    }

    #[test]
    fn prepare_is_atomic_and_refuses_a_second_entry_for_a_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnerStore::open(dir.path()).unwrap();
        let dataset: DatasetName = "d".parse().unwrap();
        let (id, sha) = (EntryId::new(), [7u8; 32]);
        store.prepare(&dataset, &sha, &id, b"entry", &KeyMaterial::Sealed(b"sealed".to_vec())).unwrap();
        assert_eq!(store.source_entry(&dataset, &sha).unwrap(), Some((id, EntryState::Prepared)));
        let other = EntryId::new();
        assert!(store.prepare(&dataset, &sha, &other, b"entry2", &KeyMaterial::Sealed(b"sealed2".to_vec())).is_err());
        assert!(store.entry(&other).unwrap().is_none() && store.sealed_key(&other).unwrap().is_none());
        assert!(store.signed_entry(&other).unwrap().is_none());
        store.mark_published(&[id]).unwrap();
        assert_eq!(store.source_entry(&dataset, &sha).unwrap(), Some((id, EntryState::Published)));
        assert_eq!(store.entries(Some(&dataset)).unwrap()[0].id, id);
        assert_eq!(store.signed_entry(&id).unwrap().unwrap(), b"entry");
        assert!(store.replace_sealed_key(&id, b"sealed", b"new").unwrap());
        assert!(!store.replace_sealed_key(&id, b"sealed", b"newer").unwrap());
        assert_eq!(store.sealed_key(&id).unwrap().unwrap(), b"new");
    }

    #[test]
    fn revoking_all_revokes_grants_and_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnerStore::open(dir.path()).unwrap();
        let cert = PartyCert {
            fingerprint: [1; 32],
            party: "p".parse().unwrap(),
            issued_unix_ms: 1,
            not_after_unix_ms: 2,
            revoked_unix_ms: None,
        };
        store.put_grant(&grant("p", "a"), Some(&cert)).unwrap();
        store.put_grant(&grant("p", "b"), None).unwrap();
        store.put_grant(&grant("pp", "a"), None).unwrap();
        assert_eq!(store.grants(Some(&"p".parse().unwrap())).unwrap().len(), 2);
        let party: PartyName = "p".parse().unwrap();
        assert_eq!(store.revoke(&party, Some(&"a".parse().unwrap()), 5).unwrap(), (1, 0));
        assert_eq!(store.revoke(&party, None, 6).unwrap(), (1, 1));
        assert_eq!(store.cert(&[1; 32]).unwrap().unwrap().revoked_unix_ms, Some(6));
        assert!(store.grant(&"pp".parse().unwrap(), &"a".parse().unwrap()).unwrap().unwrap().revoked_unix_ms.is_none());
    }

    #[test]
    fn audit_sequence_is_monotonic_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnerStore::open(dir.path()).unwrap();
        let mut events = vec![AuditEvent::new("GetKeys", "a"), AuditEvent::new("GetKeys", "b")];
        store.append_audit(&mut events).unwrap();
        assert!(events[0].seq < events[1].seq);
        let all = store.audit(0, 10, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(store.audit(all[0].seq, 10, None).unwrap().len(), 1);
        assert_eq!(store.audit(0, 10, Some("b")).unwrap()[0].party, "b");
        assert_eq!(store.audit(0, 1, None).unwrap().len(), 1);
    }

    #[test]
    fn second_open_is_refused_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let _held = OwnerStore::open(dir.path()).unwrap();
        assert!(matches!(OwnerStore::open(dir.path()), Err(Error::FailedPrecondition(_))));
    }
}
