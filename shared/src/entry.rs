//! Entries: one published image, parsed once from protobuf and signed by its owner.

use ambishare_proto::types::v1 as pb;

use crate::ambiguate::AmbiguatedCode;
use crate::crypto::{Canonical, PublicKey, SigningKey};
use crate::error::{Error, Result};
use crate::ids::{DatasetName, EntryId, ModelId, OwnerId};

/// Longest public label, in bytes.
pub const MAX_LABEL_LEN: usize = 256;
/// Largest image side an entry may declare.
pub const MAX_IMAGE_SIDE: u32 = 1 << 14;

/// A checked entry: every field valid, the code parsed. The signature is
/// checked separately ([`Entry::verify`]) because it needs the owner's key.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: EntryId,
    pub owner: OwnerId,
    pub dataset: DatasetName,
    pub model: ModelId,
    pub width: u32,
    pub height: u32,
    pub created_unix_ms: i64,
    pub label: String,
    pub code: AmbiguatedCode,
    /// The code's bytes as signed (the format is canonical: equal to `code.encode()`).
    pub code_bytes: Vec<u8>,
    pub signature: Vec<u8>,
}

/// What an entry says, without the code: for listings.
#[derive(Clone, Debug, PartialEq)]
pub struct EntrySummary {
    pub id: EntryId,
    pub owner: OwnerId,
    pub dataset: DatasetName,
    pub model: ModelId,
    pub width: u32,
    pub height: u32,
    pub created_unix_ms: i64,
    pub label: String,
    pub code_bytes: u64,
}

fn check_label(label: &str) -> Result<()> {
    if label.len() > MAX_LABEL_LEN || label.chars().any(char::is_control) {
        return Err(Error::invalid("label", format!("at most {MAX_LABEL_LEN} bytes, no control characters")));
    }
    Ok(())
}

fn check_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(Error::invalid("image size", format!("sides must be 1 to {MAX_IMAGE_SIDE} pixels")));
    }
    Ok(())
}

/// Fields an owner fills in to create an entry.
pub struct NewEntry {
    pub owner: OwnerId,
    pub dataset: DatasetName,
    pub model: ModelId,
    pub width: u32,
    pub height: u32,
    pub label: String,
    pub code: AmbiguatedCode,
}

impl Entry {
    /// Creates and signs an entry with a fresh id.
    pub fn create(new: NewEntry, key: &SigningKey) -> Result<Self> {
        Self::create_with_id(EntryId::new(), new, key)
    }

    /// Creates and signs an entry with a given id (resumed publishing reuses ids).
    pub fn create_with_id(id: EntryId, new: NewEntry, key: &SigningKey) -> Result<Self> {
        check_label(&new.label)?;
        check_size(new.width, new.height)?;
        if key.public_key().owner_id() != new.owner {
            return Err(Error::invalid("entry", "owner id is not the signing key's"));
        }
        let code_bytes = new.code.encode();
        let mut entry = Entry {
            id,
            owner: new.owner,
            dataset: new.dataset,
            model: new.model,
            width: new.width,
            height: new.height,
            created_unix_ms: id.unix_ms() as i64,
            label: new.label,
            code: new.code,
            code_bytes,
            signature: Vec::new(),
        };
        entry.signature = key.sign(&entry.canonical_bytes()).to_vec();
        Ok(entry)
    }

    /// The bytes the owner signs: every field but the signature, length-prefixed.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        Canonical::new("ambishare/entry/v1")
            .bytes(self.id.as_bytes())
            .bytes(self.owner.as_bytes())
            .str(self.dataset.as_str())
            .bytes(self.model.as_bytes())
            .u64(self.width as u64)
            .u64(self.height as u64)
            .i64(self.created_unix_ms)
            .str(&self.label)
            .bytes(&self.code_bytes)
            .finish()
    }

    /// Checks the signature against the owner's key, and that the key is this owner's.
    pub fn verify(&self, owner_key: &PublicKey) -> Result<()> {
        if owner_key.owner_id() != self.owner {
            return Err(Error::BadSignature);
        }
        owner_key.verify(&self.canonical_bytes(), &self.signature)
    }

    pub fn summary(&self) -> EntrySummary {
        EntrySummary {
            id: self.id,
            owner: self.owner,
            dataset: self.dataset.clone(),
            model: self.model,
            width: self.width,
            height: self.height,
            created_unix_ms: self.created_unix_ms,
            label: self.label.clone(),
            code_bytes: self.code_bytes.len() as u64,
        }
    }
}

impl TryFrom<pb::Entry> for Entry {
    type Error = Error;

    fn try_from(p: pb::Entry) -> Result<Self> {
        check_label(&p.label)?;
        check_size(p.width, p.height)?;
        if p.signature.len() != 64 {
            return Err(Error::invalid("signature", "expected 64 bytes"));
        }
        let code = AmbiguatedCode::decode(&p.code)?;
        Ok(Entry {
            id: p.entry_id.parse()?,
            owner: p.owner_id.parse()?,
            dataset: p.dataset.parse()?,
            model: p.model_id.parse()?,
            width: p.width,
            height: p.height,
            created_unix_ms: p.created_unix_ms,
            label: p.label,
            code,
            code_bytes: p.code,
            signature: p.signature,
        })
    }
}

impl From<&Entry> for pb::Entry {
    fn from(e: &Entry) -> Self {
        pb::Entry {
            entry_id: e.id.to_string(),
            owner_id: e.owner.to_string(),
            dataset: e.dataset.to_string(),
            model_id: e.model.to_string(),
            width: e.width,
            height: e.height,
            created_unix_ms: e.created_unix_ms,
            label: e.label.clone(),
            code: e.code_bytes.clone(),
            signature: e.signature.clone(),
        }
    }
}

impl TryFrom<pb::EntrySummary> for EntrySummary {
    type Error = Error;

    fn try_from(p: pb::EntrySummary) -> Result<Self> {
        check_label(&p.label)?;
        check_size(p.width, p.height)?;
        Ok(EntrySummary {
            id: p.entry_id.parse()?,
            owner: p.owner_id.parse()?,
            dataset: p.dataset.parse()?,
            model: p.model_id.parse()?,
            width: p.width,
            height: p.height,
            created_unix_ms: p.created_unix_ms,
            label: p.label,
            code_bytes: p.code_bytes,
        })
    }
}

impl From<&EntrySummary> for pb::EntrySummary {
    fn from(e: &EntrySummary) -> Self {
        pb::EntrySummary {
            entry_id: e.id.to_string(),
            owner_id: e.owner.to_string(),
            dataset: e.dataset.to_string(),
            model_id: e.model.to_string(),
            width: e.width,
            height: e.height,
            created_unix_ms: e.created_unix_ms,
            label: e.label.clone(),
            code_bytes: e.code_bytes,
        }
    }
}

/// Canonical bytes an owner signs to register its key (proof of possession).
pub fn registration_bytes(public_key: &PublicKey, display_name: &str, requested_unix_ms: i64) -> Vec<u8> {
    Canonical::new("ambishare/register-owner/v1")
        .bytes(public_key.as_bytes())
        .str(display_name)
        .i64(requested_unix_ms)
        .finish()
}

/// Canonical bytes an owner signs to delete an entry.
pub fn deletion_bytes(entry: &EntryId, owner: &OwnerId, requested_unix_ms: i64) -> Vec<u8> {
    Canonical::new("ambishare/delete-entry/v1")
        .bytes(entry.as_bytes())
        .bytes(owner.as_bytes())
        .i64(requested_unix_ms)
        .finish()
}

/// One file of a model, as an owner signs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelFileRef {
    /// "encoder" or "decoder".
    pub role: &'static str,
    pub sha256: [u8; 32],
    pub size: u64,
}

/// Canonical bytes an owner signs to publish a model.
pub fn model_bytes(owner: &OwnerId, manifest: &[u8], files: &[ModelFileRef]) -> Vec<u8> {
    let mut c = Canonical::new("ambishare/model/v1");
    c.bytes(owner.as_bytes()).bytes(manifest).u64(files.len() as u64);
    for f in files {
        c.str(f.role).bytes(&f.sha256).u64(f.size);
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ambiguate::{FakeModel, ValueCodec, ambiguate};
    use crate::code::{CodeShape, SparseCode};
    use rand::SeedableRng;

    fn sample_entry(key: &SigningKey) -> Entry {
        let shape = CodeShape::new(1, 2, 16).unwrap();
        let dense: Vec<f32> = (0..32).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0 + 0.01).collect();
        let code = SparseCode::top_k(&dense, shape, 4).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (public, _) = ambiguate(&code, 4, ValueCodec::Q8, &FakeModel::paper(), &mut rng).unwrap();
        Entry::create(
            NewEntry {
                owner: key.public_key().owner_id(),
                dataset: "faces".parse().unwrap(),
                model: ModelId::of_manifest(b"{}"),
                width: 10,
                height: 12,
                label: String::new(),
                code: public,
            },
            key,
        )
        .unwrap()
    }

    #[test]
    fn signed_entries_round_trip_through_protobuf() {
        let (key, _) = SigningKey::generate().unwrap();
        let entry = sample_entry(&key);
        let back = Entry::try_from(pb::Entry::from(&entry)).unwrap();
        assert_eq!(back, entry);
        back.verify(&key.public_key()).unwrap();
        assert_eq!(back.code.encode(), back.code_bytes);
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let (key, _) = SigningKey::generate().unwrap();
        let entry = sample_entry(&key);
        let mut p = pb::Entry::from(&entry);
        p.width += 1;
        assert!(Entry::try_from(p).unwrap().verify(&key.public_key()).is_err());
        let mut p = pb::Entry::from(&entry);
        p.dataset = "other".into();
        assert!(Entry::try_from(p).unwrap().verify(&key.public_key()).is_err());
        let (other, _) = SigningKey::generate().unwrap();
        assert!(entry.verify(&other.public_key()).is_err());
    }

    #[test]
    fn rejects_bad_fields() {
        let (key, _) = SigningKey::generate().unwrap();
        let entry = sample_entry(&key);
        let mut p = pb::Entry::from(&entry);
        p.code.pop();
        assert!(Entry::try_from(p).is_err());
        let mut p = pb::Entry::from(&entry);
        p.signature.truncate(10);
        assert!(Entry::try_from(p).is_err());
        let mut p = pb::Entry::from(&entry);
        p.width = 0;
        assert!(Entry::try_from(p).is_err());
        let mut p = pb::Entry::from(&entry);
        p.label = "a\nb".into();
        assert!(Entry::try_from(p).is_err());
        let mut p = pb::Entry::from(&entry);
        p.entry_id = "x".into();
        assert!(Entry::try_from(p).is_err());
    }
}
