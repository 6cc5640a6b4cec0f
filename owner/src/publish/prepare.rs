//! Encoding and preparing a batch: the model, top-k, ambiguation (derived or
//! fresh), signing, and the prepared record in the store.

use super::*;

/// Encoding and preparing one batch, run off the async threads.
#[derive(Clone)]
pub(super) struct PrepareJob {
    pub(super) runner: Arc<ModelRunner>,
    pub(super) signing: Arc<SigningKey>,
    pub(super) keyring: Arc<Keyring>,
    pub(super) store: Arc<OwnerStore>,
    pub(super) dataset: DatasetName,
    pub(super) codec: ValueCodec,
    pub(super) scheme: Scheme,
}

/// How public codes are made.
#[derive(Clone)]
pub(super) enum Scheme {
    /// Format v2: fresh randomness, the key sealed per entry.
    Fresh(Arc<FakeModel>),
    /// Format v3: derived from the master secret, a tag per entry.
    Derived(Arc<DerivedScheme>),
}

pub(super) struct DerivedScheme {
    pub(super) master: MasterSecret,
    pub(super) context: DerivationContext,
    pub(super) tables: FakeTables,
}

pub(super) struct Prepared {
    pub(super) done: Vec<(PathBuf, Result<Entry, String>)>,
    /// `limit` was reached: nothing of this batch should be sent.
    pub(super) stopped: bool,
}

impl PrepareJob {
    /// Encodes the batch and prepares each entry (stored, flushed). With
    /// `limit`, stops after that many have been prepared.
    pub(super) fn run(self, sources: Vec<Source>, limit: Option<usize>) -> Result<Prepared> {
        let m = self.runner.manifest();
        let mut done = Vec::with_capacity(sources.len());
        // Tiles of every image, concatenated.
        let mut tiled = Vec::with_capacity(sources.len());
        let mut all_tiles = Vec::new();
        let mut count = 0usize;
        for source in sources {
            match image_to_tiles(&source.image, m.tile_size)
                .map_err(Error::from)
                .and_then(|(tiles, grid)| Ok((tiles, CodeShape::new(grid.count() as u32, m.maps, m.dim)?)))
            {
                Ok((tiles, shape)) => {
                    all_tiles.extend_from_slice(&tiles);
                    count += shape.tiles as usize;
                    tiled.push((source, shape));
                }
                Err(e) => done.push((source.path, Err(e.to_string()))),
            }
        }
        if tiled.is_empty() {
            return Ok(Prepared { done, stopped: false });
        }
        let dense = match self.runner.encode_tiles(&all_tiles, count) {
            Ok(d) => d,
            Err(e) => {
                let reason = format!("encoding failed: {e}");
                done.extend(tiled.into_iter().map(|(s, _)| (s.path, Err(reason.clone()))));
                return Ok(Prepared { done, stopped: false });
            }
        };
        drop(all_tiles);
        let mut rng = secure_rng()?;
        let mut offset = 0;
        let mut prepared = 0usize;
        for (source, shape) in tiled {
            if limit.is_some_and(|l| prepared >= l) {
                return Ok(Prepared { done, stopped: true });
            }
            let len = shape.dense_len();
            let slice = dense
                .get(offset..offset + len)
                .ok_or_else(|| Error::Internal("the encoder returned fewer codes than tiles".into()))?;
            offset += len;
            match self.prepare_one(&source, shape, slice, &mut rng) {
                Ok(entry) => {
                    prepared += 1;
                    done.push((source.path, Ok(entry)));
                }
                // Our own faults (the store, sealing) stop the run; the image's end here.
                Err(e) if !e.is_caller_fault() && !matches!(e, Error::Shared(_)) => return Err(e),
                Err(e) => done.push((source.path, Err(e.to_string()))),
            }
        }
        let stopped = limit.is_some_and(|l| prepared >= l);
        Ok(Prepared { done, stopped })
    }

    fn prepare_one(
        &self,
        source: &Source,
        shape: CodeShape,
        dense: &[f32],
        rng: &mut rand_chacha::ChaCha20Rng,
    ) -> Result<Entry> {
        let m = self.runner.manifest();
        let code = SparseCode::top_k(dense, shape, m.k)?;
        let (public, key) = match &self.scheme {
            Scheme::Fresh(fakes) => {
                let (public, key) = ambiguate(&code, m.k_fake, self.codec, fakes, rng)?;
                (public, Err(key))
            }
            Scheme::Derived(d) => {
                let derived = ambiguate_derived(&code, &d.master, &d.context, &d.tables)?;
                tracing::debug!(nudged = derived.nudged, "reals moved off the fakes' bytes");
                let material = KeyMaterial::Derived { tag: derived.tag, bands: d.context.bands.clone() };
                (derived.public, Ok(material))
            }
        };
        let (width, height) = source.image.dimensions();
        let entry = Entry::create(
            NewEntry {
                owner: self.signing.public_key().owner_id(),
                dataset: self.dataset.clone(),
                model: *self.runner.id(),
                width,
                height,
                label: String::new(),
                code: public,
            },
            &self.signing,
        )?;
        let entry_pb = types_pb::Entry::from(&entry).encode_to_vec();
        let material = match key {
            Ok(material) => material,
            Err(key) => KeyMaterial::Sealed(self.keyring.current().seal(&key.encode(), entry.id.as_bytes())?),
        };
        self.store.prepare(&self.dataset, &source.sha256, &entry.id, &entry_pb, &material)?;
        Ok(entry)
    }
}

// ---- the wire form, for `OwnerAdmin.Publish`
