//! Thumbnails of what the public sees: each entry's public decode (every
//! nonzero, real and fake, through the entry's own model), rendered on CPU by
//! a few threads fed from a bounded queue, and kept in the store so every
//! replica serves the same ones. A page never waits for a rendering: it asks,
//! shows a placeholder, and the browser asks again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambishare_proto::registry::v1 as rpb;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::model::{Device, Manifest, ModelRunner};
use ambishare_shared::pipeline::decode_image;
use ambishare_shared::{Entry, EntryId, ModelId};
use image::codecs::jpeg::JpegEncoder;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use ambishare_db::Bytes;

use crate::db::Db;
use crate::error::{Error, Result};

/// Longest side of a thumbnail, in pixels.
pub const THUMBNAIL_SIDE: u32 = 256;
const JPEG_QUALITY: u8 = 85;
/// Loaded decoders kept per worker.
const MODELS_PER_WORKER: usize = 4;
/// Failures remembered (so a broken entry is not rendered again on every page view).
const FAILURES_KEPT: usize = 4096;

/// Where an entry's thumbnail stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThumbnailState {
    Ready,
    Pending,
    /// It will not be rendered (why, in words fit for the public).
    Unavailable(String),
}

/// Renders thumbnails in the background; cheap to clone.
#[derive(Clone)]
pub struct Thumbnailer {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    /// The runtime the workers' store reads run on (they are plain threads:
    /// decoding is CPU work that must not hold the async threads).
    runtime: tokio::runtime::Handle,
    queue: mpsc::Sender<EntryId>,
    /// Queued or being rendered.
    pending: Mutex<HashSet<EntryId>>,
    failed: Mutex<Failures>,
    max_tiles: u32,
    rendered: AtomicU64,
}

#[derive(Default)]
struct Failures {
    reasons: HashMap<EntryId, String>,
    order: VecDeque<EntryId>,
}

impl Failures {
    fn insert(&mut self, id: EntryId, reason: String) {
        if self.reasons.insert(id, reason).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > FAILURES_KEPT {
            if let Some(old) = self.order.pop_front() {
                self.reasons.remove(&old);
            }
        }
    }
}

impl Thumbnailer {
    /// Starts `workers` rendering threads (from within a tokio runtime);
    /// they stop once every clone is dropped.
    pub fn start(db: Db, workers: usize, queue: usize, max_tiles: u32) -> Result<Self> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Internal("the thumbnailer starts within a tokio runtime".into()))?;
        let (tx, rx) = mpsc::channel(queue.max(1));
        let inner = Arc::new(Inner {
            db,
            runtime,
            queue: tx,
            pending: Mutex::new(HashSet::new()),
            failed: Mutex::new(Failures::default()),
            max_tiles,
            rendered: AtomicU64::new(0),
        });
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers.max(1) {
            // Workers hold the shared state weakly, so dropping the last
            // Thumbnailer closes the queue and ends them.
            let weak = Arc::downgrade(&inner);
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("thumbnail-{i}"))
                .spawn(move || worker(weak, rx))
                .map_err(|e| Error::io("starting a thumbnail thread", e))?;
        }
        Ok(Thumbnailer { inner })
    }

    /// The state of `id`'s thumbnail, queueing it when it is neither stored
    /// nor failed.
    pub async fn state(&self, id: &EntryId) -> Result<ThumbnailState> {
        if self.inner.db.thumbnail(id).await?.is_some() {
            return Ok(ThumbnailState::Ready);
        }
        if let Some(reason) = self.inner.failed.lock().ok().and_then(|f| f.reasons.get(id).cloned()) {
            return Ok(ThumbnailState::Unavailable(reason));
        }
        let Ok(mut pending) = self.inner.pending.lock() else {
            return Ok(ThumbnailState::Pending);
        };
        if pending.insert(*id) && self.inner.queue.try_send(*id).is_err() {
            // Queue full: not remembered, so a later request asks again.
            pending.remove(id);
        }
        Ok(ThumbnailState::Pending)
    }

    /// The stored thumbnail, if rendered.
    pub async fn get(&self, id: &EntryId) -> Result<Option<Bytes>> {
        self.inner.db.thumbnail(id).await
    }

    /// Thumbnails rendered by this process so far.
    pub fn rendered(&self) -> u64 {
        self.inner.rendered.load(Ordering::Relaxed)
    }
}

fn worker(inner: std::sync::Weak<Inner>, rx: Arc<Mutex<mpsc::Receiver<EntryId>>>) {
    let mut models = ModelRunners::default();
    loop {
        // One worker waits on the queue at a time; the others wait on the lock.
        let next = match rx.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            Err(_) => None,
        };
        let Some(id) = next else { return };
        let Some(inner) = inner.upgrade() else { return };
        let outcome = render(&inner, &mut models, &id);
        match outcome {
            Ok(()) => {
                inner.rendered.fetch_add(1, Ordering::Relaxed);
            }
            Err(Unrenderable(reason)) => {
                debug!(entry = %id, %reason, "no thumbnail");
                if let Ok(mut failed) = inner.failed.lock() {
                    failed.insert(id, reason);
                }
            }
        }
        if let Ok(mut pending) = inner.pending.lock() {
            pending.remove(&id);
        }
    }
}

/// Why an entry gets no thumbnail, in words fit for the public (details are logged).
struct Unrenderable(String);

impl From<Error> for Unrenderable {
    fn from(e: Error) -> Self {
        warn!(error = %e, "thumbnail rendering failed");
        Unrenderable("the registry could not render it".into())
    }
}

fn render(inner: &Inner, models: &mut ModelRunners, id: &EntryId) -> std::result::Result<(), Unrenderable> {
    let rt = &inner.runtime;
    let Some(stored) = rt.block_on(inner.db.entry(id))? else {
        return Err(Unrenderable("no such entry".into()));
    };
    let entry = Entry::try_from(stored.entry).map_err(Error::from)?;
    let tiles = entry.code.shape().tiles;
    if tiles > inner.max_tiles {
        return Err(Unrenderable(format!("too large for a thumbnail ({tiles} tiles)")));
    }
    // Only signed entries are stored, but the decoder an entry names runs here: check again.
    let owner = rt.block_on(inner.db.owner(&entry.owner))?.ok_or_else(|| Unrenderable("owner unknown".into()))?;
    let key = PublicKey::from_bytes(&owner.public_key).map_err(|_| Error::corrupt("owners", "bad public key"))?;
    if key.owner_id() != entry.owner || entry.verify(&key).is_err() {
        return Err(Unrenderable("its signature does not verify".into()));
    }
    let runner = models.get(inner, &entry.model)?;
    let public = entry.code.to_sparse().map_err(Error::from)?;
    let image = decode_image(&runner, &public, entry.width, entry.height).map_err(Error::from)?;
    let (width, height) = fit(entry.width, entry.height);
    let thumbnail = image::imageops::thumbnail(&image, width, height);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut Cursor::new(&mut jpeg), JPEG_QUALITY)
        .encode_image(&thumbnail)
        .map_err(|e| Error::Internal(format!("encoding a thumbnail: {e}")))?;
    rt.block_on(inner.db.put_thumbnail(id, jpeg.into()))?;
    Ok(())
}

/// The thumbnail size of a `width`×`height` image: its longest side at most
/// [`THUMBNAIL_SIDE`], never enlarged, never zero.
pub fn fit(width: u32, height: u32) -> (u32, u32) {
    let longest = width.max(height).max(1);
    if longest <= THUMBNAIL_SIDE {
        return (width.max(1), height.max(1));
    }
    let scale = |side: u32| ((u64::from(side) * u64::from(THUMBNAIL_SIDE)) / u64::from(longest)).max(1) as u32;
    (scale(width), scale(height))
}

/// Decoders by model, loaded from the store's files (one ONNX Runtime
/// thread each, so rendering leaves the other cores to requests).
#[derive(Default)]
struct ModelRunners {
    loaded: VecDeque<(ModelId, Arc<ModelRunner>)>,
}

impl ModelRunners {
    fn get(&mut self, inner: &Inner, id: &ModelId) -> std::result::Result<Arc<ModelRunner>, Unrenderable> {
        if let Some((_, runner)) = self.loaded.iter().find(|(m, _)| m == id) {
            return Ok(runner.clone());
        }
        let header = inner
            .runtime
            .block_on(inner.db.model(id))?
            .ok_or_else(|| Unrenderable("its model is not in the registry".into()))?;
        let runner = Arc::new(load_decoder(inner, &header)?);
        if self.loaded.len() >= MODELS_PER_WORKER {
            self.loaded.pop_front();
        }
        self.loaded.push_back((*id, runner.clone()));
        Ok(runner)
    }
}

/// Largest decoder file loaded for thumbnails.
const MAX_DECODER_BYTES: u64 = 256 << 20;

fn load_decoder(inner: &Inner, header: &rpb::ModelHeader) -> Result<ModelRunner> {
    let manifest = Manifest::parse(&header.manifest).map_err(|e| Error::corrupt("models", e.to_string()))?;
    let sha: [u8; 32] = hex::decode(&manifest.decoder.sha256)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::corrupt("models", "decoder hash is not 32 bytes of hex"))?;
    let decoder = inner
        .runtime
        .block_on(inner.db.blob_bytes(&sha, MAX_DECODER_BYTES))?
        .ok_or_else(|| Error::corrupt("blobs", "a model's decoder file is missing"))?;
    // The runner checks the file against the manifest's hash before loading it.
    Ok(ModelRunner::from_parts_with_threads(&header.manifest, None, &decoder, Device::Cpu, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnails_fit_the_box_keep_the_aspect_and_never_grow() {
        assert_eq!(fit(64, 64), (64, 64));
        assert_eq!(fit(512, 256), (256, 128));
        assert_eq!(fit(300, 4000), (19, 256));
        assert_eq!(fit(10_000, 1), (256, 1));
        assert_eq!(fit(0, 0), (1, 1));
    }
}
