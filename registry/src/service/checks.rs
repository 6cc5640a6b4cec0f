//! What the registry checks of a request's records before any reaches the
//! store: owners' keys and models' manifests looked up first, then each
//! entry's fields, signature and shape, each model header's files and signature.

use std::collections::HashMap;
use std::sync::Arc;

use ambishare_proto::registry::v1 as rpb;
use ambishare_proto::types::v1 as pb;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::entry::{ModelFileRef, model_bytes};
use ambishare_shared::model::MAX_MANIFEST_BYTES;
use ambishare_shared::{Entry, Manifest, ModelId, OwnerId, TileGrid};
use prost::Message;

use super::publish::{Checked, Slot, refused};
use super::{CACHE_LIMIT, Inner, parse, parse_sha256, role_name};
use crate::db::Prepared;
use crate::error::{Error, Result};

/// The registered keys and stored manifests one publish message needs.
#[derive(Default)]
pub(super) struct Lookups {
    pub(super) keys: HashMap<OwnerId, PublicKey>,
    pub(super) manifests: HashMap<ModelId, Arc<Manifest>>,
}

/// A model file being received.
pub(super) struct Incoming {
    pub(super) role: &'static str,
    pub(super) sha256: [u8; 32],
    pub(super) sha256_hex: String,
    pub(super) size: u64,
    pub(super) data: Vec<u8>,
}

impl Inner {
    /// The registered key of an owner.
    pub(super) async fn owner_key(&self, id: &OwnerId) -> Result<Option<PublicKey>> {
        if let Some(key) = self.owners.read().ok().and_then(|m| m.get(id).copied()) {
            return Ok(Some(key));
        }
        let Some(owner) = self.db.owner(id).await? else { return Ok(None) };
        let key = PublicKey::from_bytes(&owner.public_key).map_err(|_| Error::corrupt("owners", "bad public key"))?;
        if key.owner_id() != *id {
            return Err(Error::corrupt("owners", "public key does not hash to its owner id"));
        }
        if let Ok(mut cache) = self.owners.write() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(*id, key);
        }
        Ok(Some(key))
    }

    /// The parsed manifest of a stored model.
    pub(super) async fn manifest(&self, id: &ModelId) -> Result<Option<Arc<Manifest>>> {
        if let Some(m) = self.models.read().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(Some(m));
        }
        let Some(header) = self.db.model(id).await? else { return Ok(None) };
        let manifest =
            Arc::new(Manifest::parse(&header.manifest).map_err(|e| Error::corrupt("models", e.to_string()))?);
        if let Ok(mut cache) = self.models.write() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(*id, manifest.clone());
        }
        Ok(Some(manifest))
    }

    /// Everything the registry checks of an entry before it may be stored.
    /// The keys and manifests the entries of one message name, read before
    /// the checks (which then run on a blocking thread without the store).
    pub(super) async fn lookups(&self, entries: &[pb::Entry]) -> Result<Lookups> {
        let mut lookups = Lookups::default();
        for p in entries {
            if let Ok(owner) = p.owner_id.parse::<OwnerId>()
                && !lookups.keys.contains_key(&owner)
                && let Some(key) = self.owner_key(&owner).await?
            {
                lookups.keys.insert(owner, key);
            }
            if let Ok(model) = p.model_id.parse::<ModelId>()
                && !lookups.manifests.contains_key(&model)
                && let Some(manifest) = self.manifest(&model).await?
            {
                lookups.manifests.insert(model, manifest);
            }
        }
        Ok(lookups)
    }

    pub(super) fn check_entry(&self, p: pb::Entry, lookups: &Lookups) -> Result<Prepared> {
        if p.code.len() > self.limits.max_code_bytes {
            return Err(Error::TooLarge(format!(
                "code of {} bytes; at most {} are allowed",
                p.code.len(),
                self.limits.max_code_bytes
            )));
        }
        if p.signature.is_empty() {
            return Err(Error::NotSigned("entry"));
        }
        // Fields and the code, with the shared bounded reader.
        let entry = Entry::try_from(p)?;
        let key = *lookups
            .keys
            .get(&entry.owner)
            .ok_or_else(|| Error::UnknownSigner(format!("owner {} is not registered", entry.owner)))?;
        entry.verify(&key).map_err(|_| {
            Error::BadSignature(format!(
                "the signature of entry {} does not verify with the registered key of owner {}",
                entry.id, entry.owner
            ))
        })?;
        let manifest = lookups.manifests.get(&entry.model).ok_or_else(|| {
            Error::FailedPrecondition(format!("unknown model {}: publish the model first", entry.model))
        })?;
        check_shape(&entry, manifest)?;
        let encoded = pb::Entry::from(&entry).encode_to_vec();
        Ok(Prepared {
            id: entry.id,
            owner: entry.owner,
            dataset: entry.dataset,
            model: entry.model,
            created_unix_ms: entry.created_unix_ms,
            code_bytes: entry.code_bytes.len() as u64,
            encoded: encoded.into(),
        })
    }

    pub(super) fn check_entries(&self, entries: Vec<pb::Entry>, lookups: &Lookups) -> Checked {
        let mut checked = Checked { slots: Vec::with_capacity(entries.len()), prepared: Vec::new() };
        for p in entries {
            let entry_id = p.entry_id.clone();
            match self.check_entry(p, lookups) {
                Ok(prepared) => {
                    checked.slots.push(Slot::Queued(prepared.id));
                    checked.prepared.push(prepared);
                }
                Err(e) => checked.slots.push(Slot::Refused(refused(&self.metrics, entry_id, e))),
            }
        }
        checked
    }

    /// Checks a model header: the manifest, the file list against it, the size
    /// and the owner's signature. Returns the model id and the files to receive.
    pub(super) async fn check_model_header(&self, header: &rpb::ModelHeader) -> Result<(ModelId, Vec<Incoming>)> {
        let owner: OwnerId = parse(&header.owner_id)?;
        if header.manifest.len() > MAX_MANIFEST_BYTES {
            return Err(Error::TooLarge(format!("manifest above {MAX_MANIFEST_BYTES} bytes")));
        }
        let manifest = Manifest::parse(&header.manifest).map_err(|e| Error::Invalid(e.to_string()))?;
        if header.files.is_empty() || header.files.len() > 2 {
            return Err(Error::Invalid("a model has one decoder file and at most one encoder file".into()));
        }
        let mut files: Vec<Incoming> = Vec::with_capacity(header.files.len());
        let mut total = 0u64;
        for f in &header.files {
            let role = role_name(f.role)?;
            if files.iter().any(|x| x.role == role) {
                return Err(Error::Invalid(format!("two {role} files")));
            }
            let spec = match role {
                "encoder" => manifest
                    .encoder
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("an encoder file was sent but the manifest lists none".into()))?,
                _ => &manifest.decoder,
            };
            if f.sha256 != spec.sha256 {
                return Err(Error::Invalid(format!(
                    "the {role} file's sha256 {} differs from the manifest's {}",
                    f.sha256, spec.sha256
                )));
            }
            let sha256 = parse_sha256(&f.sha256)?;
            if files.iter().any(|x| x.sha256 == sha256) {
                return Err(Error::Invalid("the encoder and decoder are the same file".into()));
            }
            total = total.checked_add(f.size).filter(|t| *t <= self.limits.max_model_bytes).ok_or_else(|| {
                Error::TooLarge(format!("model files above {} bytes in total", self.limits.max_model_bytes))
            })?;
            files.push(Incoming { role, sha256, sha256_hex: f.sha256.clone(), size: f.size, data: Vec::new() });
        }
        if !files.iter().any(|f| f.role == "decoder") {
            return Err(Error::Invalid("the decoder file is missing".into()));
        }
        if header.signature.is_empty() {
            return Err(Error::NotSigned("model"));
        }
        let key = self
            .owner_key(&owner)
            .await?
            .ok_or_else(|| Error::UnknownSigner(format!("owner {owner} is not registered")))?;
        let refs: Vec<ModelFileRef> =
            files.iter().map(|f| ModelFileRef { role: f.role, sha256: f.sha256, size: f.size }).collect();
        key.verify(&model_bytes(&owner, &header.manifest, &refs), &header.signature).map_err(|_| {
            Error::BadSignature(format!(
                "the model's signature does not verify with the registered key of owner {owner}"
            ))
        })?;
        Ok((ModelId::of_manifest(&header.manifest), files))
    }
}

/// The code's shape must be the one its model produces for an image of its size.
fn check_shape(entry: &Entry, manifest: &Manifest) -> Result<()> {
    let shape = entry.code.shape();
    let tiles = TileGrid::for_image(entry.width, entry.height, manifest.tile_size)?.count();
    let nnz = usize::from(manifest.k) + usize::from(manifest.k_fake);
    let mismatch = |what: &str, got: usize, want: usize| {
        Err(Error::Invalid(format!(
            "the code has {got} {what}, but model {} ({}) makes {want} for a {}x{} image",
            entry.model, manifest.name, entry.width, entry.height
        )))
    };
    if shape.maps != manifest.maps {
        return mismatch("maps per tile", shape.maps.into(), manifest.maps.into());
    }
    if shape.dim != manifest.dim {
        return mismatch("dims per map", shape.dim.into(), manifest.dim.into());
    }
    if usize::from(entry.code.nnz()) != nnz {
        return mismatch("nonzeros per map", entry.code.nnz().into(), nnz);
    }
    if shape.tiles as usize != tiles {
        return mismatch("tiles", shape.tiles as usize, tiles);
    }
    Ok(())
}
