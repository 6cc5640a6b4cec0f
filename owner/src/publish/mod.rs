//! `publish`: images → tiles → dense codes (the model) → top-k → ambiguated
//! codes → signed entries, published to the registry, with each full support
//! key sealed in the owner's store.
//!
//! [`Publisher::run`] does the work on an open store; the key service runs it
//! for an admin's `Publish` call (the serving process holds the store), and
//! [`publish()`] runs it on the store opened directly (`--offline`). Progress
//! is reported through a callback, one [`PublishEvent`] per file.
//!
//! Resumable without duplicates. A source file is known by (dataset, SHA-256
//! of its bytes). Before anything is sent, its entry, its sealed key and its
//! source are stored in one transaction as *prepared* and flushed; once the
//! registry acknowledges the entry (stored, or already stored) it is marked
//! *published*. A later run skips published sources and re-sends prepared
//! entries with the same stored bytes, which the registry treats as an
//! idempotent re-publish.

mod events;
mod inputs;
mod job;
mod prepare;

pub use events::*;
pub use inputs::*;
pub use job::*;
use prepare::*;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ambishare_proto::owner::v1 as pb;
use ambishare_proto::types::v1 as types_pb;
use ambishare_rpc::{ClientTlsOptions, PublishOutcome, RegistryClient};
use ambishare_shared::crypto::{SigningKey, secure_rng};
use ambishare_shared::entry::NewEntry;
use ambishare_shared::ids::sha256;
use ambishare_shared::model::{MANIFEST_FILE, MAX_MANIFEST_BYTES};
use ambishare_shared::tiling::{image_to_tiles, load_image};
use ambishare_shared::{
    Bands, CodeShape, CodeVersion, DatasetName, DerivationContext, Device, DisplayName, Entry, EntryId, FakeModel,
    FakeTables, Manifest, MasterSecret, ModelRunner, SparseCode, ValueCodec, ambiguate, ambiguate_derived,
};
use prost::Message;

use crate::admin::ADMIN_AUDIT_NAME;
use crate::config::{DEFAULT_BATCH, DEFAULT_MAX_PIXELS};
use crate::error::{Error, Result};
use crate::home::{Home, Keyring};
use crate::store::{EntryState, KeyMaterial, OwnerStore};
use crate::types::AuditEvent;

/// File extensions picked up when a directory is given.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];
/// Most images encoded and published together.
pub const MAX_BATCH: usize = 4096;
/// Most input paths (files or directories) in one job.
pub const MAX_INPUTS: usize = 100_000;
/// Largest registry CA accepted, in bytes.
pub const MAX_REGISTRY_CA_BYTES: u64 = 1 << 20;
/// Longest path or URL accepted from the wire, in bytes.
const MAX_PATH_BYTES: usize = 4096;
/// Tiles encoded together at most (bounds memory whatever the batch size).
const MAX_TILES_PER_BATCH: usize = 4096;

/// Publishes with the store opened directly (`--offline`: the key service must
/// not be running, as it holds the store). `on_event` sees the progress.
pub async fn publish(
    home: &Home,
    job: PublishJob,
    mut on_event: impl FnMut(&PublishEvent) + Send,
) -> Result<PublishSummary> {
    home.check_key_permissions()?;
    let signing = Arc::new(home.load_signing_key()?);
    let keyring = Arc::new(Keyring::load(home)?);
    let store_dir = home.store_dir();
    let store = Arc::new(blocking(move || OwnerStore::open(&store_dir)).await?);
    let publisher = Publisher::new(store, keyring, signing);
    publisher
        .run(job, &mut |event| {
            on_event(event);
            ControlFlow::Continue(())
        })
        .await
}

/// Publishes into an open store: what `serve` runs for an admin and
/// [`publish()`] runs offline.
#[derive(Clone)]
pub struct Publisher {
    store: Arc<OwnerStore>,
    keyring: Arc<Keyring>,
    signing: Arc<SigningKey>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher").field("owner", &self.signing.public_key().owner_id()).finish_non_exhaustive()
    }
}

/// The callback of a run: `Break` asks it to stop after the current batch
/// (what is prepared stays prepared, and is re-sent by the next run).
pub type OnEvent<'a> = dyn FnMut(&PublishEvent) -> ControlFlow<()> + Send + 'a;

impl Publisher {
    pub fn new(store: Arc<OwnerStore>, keyring: Arc<Keyring>, signing: Arc<SigningKey>) -> Self {
        Publisher { store, keyring, signing }
    }

    /// Publishes every image under `job.inputs`, reporting each file through
    /// `on_event`. The CPU work (reading, decoding, encoding, sealing, the
    /// store) runs on blocking threads.
    pub async fn run(&self, job: PublishJob, on_event: &mut OnEvent<'_>) -> Result<PublishSummary> {
        job.check()?;
        let inputs = job.inputs.clone();
        let files = blocking(move || collect_inputs(&inputs)).await?;
        // First, what an earlier run prepared but did not see acknowledged.
        let (store, dataset) = (self.store.clone(), job.dataset.clone());
        let pending: Vec<EntryId> = blocking(move || {
            Ok(store
                .entries(Some(&dataset))?
                .into_iter()
                .filter(|e| e.state == EntryState::Prepared)
                .map(|e| e.id)
                .collect())
        })
        .await?;
        if on_event(&PublishEvent::Started { files: files.len(), resend: pending.len() }).is_break() {
            return Ok(PublishSummary { interrupted: true, ..PublishSummary::default() });
        }

        let model = self.load_model(&job).await?;
        let registry = self.registry(&job, &model).await?;
        let mut run = Run {
            registry,
            store: self.store.clone(),
            summary: PublishSummary::default(),
            job: PrepareJob {
                runner: model.runner.clone(),
                signing: self.signing.clone(),
                keyring: self.keyring.clone(),
                store: self.store.clone(),
                dataset: job.dataset.clone(),
                codec: job.codec,
                scheme: self.scheme(&job, &model).await?,
            },
            stop_after_prepared: job.stop_after_prepared,
            prepared_new: 0,
            on_event,
            stop: false,
            interrupted: false,
            resent: HashMap::new(),
        };
        run.resend(&pending, job.batch).await?;
        let reader = Reader {
            store: self.store.clone(),
            dataset: job.dataset.clone(),
            max_pixels: job.max_pixels,
            tile_size: model.manifest.tile_size,
            seen: HashSet::new(),
        };
        run.files(files, reader, job.batch).await?;
        run.finish();
        let summary = run.summary;

        let detail = format!(
            "published to dataset {}: {}{}",
            job.dataset,
            summary.counts(),
            if summary.interrupted { " (stopped early)" } else { "" }
        );
        let store = self.store.clone();
        blocking(move || {
            store.append_audit(&mut [AuditEvent::new("Publish", ADMIN_AUDIT_NAME).detail(detail)])?;
            store.flush()
        })
        .await?;
        tracing::debug!(summary = %summary, "publish done");
        Ok(summary)
    }

    /// Loads the model and records its manifest.
    /// How this job makes public codes, from the model's manifest.
    async fn scheme(&self, job: &PublishJob, model: &Model) -> Result<Scheme> {
        let manifest = &model.manifest;
        Ok(match job.format {
            CodeVersion::V2 => Scheme::Fresh(Arc::new(FakeModel::for_manifest(manifest)?)),
            CodeVersion::V3 => {
                let (store, keyring) = (self.store.clone(), self.keyring.clone());
                let master = blocking(move || store.master_secret(&keyring)).await?;
                let tables = FakeTables::for_manifest(manifest)?;
                if !tables.is_fitted() {
                    tracing::warn!(
                        model = %manifest.name,
                        "the manifest has no level tables: fakes follow a generic law (ambishare-eval fit-fakes adds them)"
                    );
                }
                Scheme::Derived(Arc::new(DerivedScheme {
                    master,
                    context: DerivationContext {
                        model: *model.runner.id(),
                        k_fake: manifest.k_fake,
                        bands: Bands::for_manifest(manifest)?,
                    },
                    tables,
                }))
            }
        })
    }

    async fn load_model(&self, job: &PublishJob) -> Result<Model> {
        let model_dir = job.model_dir.clone();
        let device = job.device;
        let store = self.store.clone();
        blocking(move || {
            let manifest_path = model_dir.join(MANIFEST_FILE);
            if !manifest_path.is_file() {
                return Err(Error::invalid(
                    "model",
                    format!("{} has no {MANIFEST_FILE} (is it a model directory?)", model_dir.display()),
                ));
            }
            // Each file is read once: the bytes the runner checks against the
            // manifest's hashes are the bytes uploaded to the registry.
            let manifest_bytes = read_file(&manifest_path, MAX_MANIFEST_BYTES as u64)?;
            let manifest = Manifest::parse(&manifest_bytes)?;
            if manifest.channels != 3 {
                return Err(Error::invalid(
                    "model",
                    format!("{} takes {} channels; publish needs RGB (3)", manifest.name, manifest.channels),
                ));
            }
            let (encoder, decoder) = model_files(&model_dir, &manifest)?;
            let runner = ModelRunner::from_parts(&manifest_bytes, Some(&encoder), &decoder, device)?;
            store.put_model(runner.id(), &manifest_bytes)?;
            Ok(Model { runner: Arc::new(runner), manifest, manifest_bytes, encoder, decoder })
        })
        .await
    }

    /// Connects to the registry, registers the owner (idempotent) and uploads
    /// the model unless the registry holds it already.
    async fn registry(&self, job: &PublishJob, model: &Model) -> Result<RegistryClient> {
        let tls = job.registry_ca_pem.as_ref().map(|pem| ClientTlsOptions { ca_pem: pem.clone(), domain: None });
        let registry = RegistryClient::connect(&job.registry_url, tls).await?;
        let owner = self.signing.public_key().owner_id().to_string();
        let name = match &job.display_name {
            Some(name) => name.clone(),
            None => DisplayName::try_from(format!("ambishare owner {}", &owner[..8]))?,
        };
        registry.register_owner(&self.signing, &name).await?;
        let id = *model.runner.id();
        if registry.has_model(id).await? {
            tracing::debug!(model = %id, "model already at the registry");
            return Ok(registry);
        }
        let (id, created) =
            registry.publish_model(&self.signing, &model.manifest_bytes, Some(&model.encoder), &model.decoder).await?;
        // Not `info`: offline, a progress bar is on the terminal.
        tracing::debug!(model = %id, created, "model uploaded to the registry");
        Ok(registry)
    }
}

/// A loaded model and its files, as uploaded to the registry.
struct Model {
    runner: Arc<ModelRunner>,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    encoder: Vec<u8>,
    decoder: Vec<u8>,
}

/// State of one publish run.
struct Run<'a, 'b> {
    registry: RegistryClient,
    store: Arc<OwnerStore>,
    summary: PublishSummary,
    job: PrepareJob,
    stop_after_prepared: Option<usize>,
    prepared_new: usize,
    on_event: &'a mut OnEvent<'b>,
    /// The caller asked to stop.
    stop: bool,
    /// The run stopped before the end.
    interrupted: bool,
    /// Entries an earlier run prepared, sent again by this one, and the
    /// registry's verdict (Err: why not acknowledged); reported with their file.
    resent: HashMap<EntryId, Result<(), String>>,
}

impl Run<'_, '_> {
    /// Counts and reports one file.
    fn emit(&mut self, path: Option<PathBuf>, entry: Option<EntryId>, outcome: FileOutcome) {
        // A reason is one line of the summary: decoders' messages may hold line breaks.
        let outcome = match outcome {
            FileOutcome::Failed(reason) => FileOutcome::Failed(one_line(&reason)),
            other => other,
        };
        if let (FileOutcome::Failed(reason), Some(path)) = (&outcome, &path) {
            tracing::debug!("not published {}: {reason}", path.display());
        }
        let event = FileEvent { path, entry, outcome };
        self.summary.record(&event);
        if (self.on_event)(&PublishEvent::File(event)).is_break() {
            self.stop = true;
        }
    }

    /// True when the run must end here (the caller asked it to).
    fn stopping(&mut self) -> bool {
        if self.stop {
            self.interrupted = true;
        }
        self.stop
    }

    /// Sends again what an earlier run prepared, in batches.
    async fn resend(&mut self, pending: &[EntryId], batch: usize) -> Result<()> {
        for chunk in pending.chunks(batch) {
            if self.stopping() {
                return Ok(());
            }
            let (store, ids) = (self.store.clone(), chunk.to_vec());
            let entries = blocking(move || {
                ids.iter()
                    .map(|id| {
                        let bytes =
                            store.signed_entry(id)?.ok_or_else(|| Error::corrupt("signed", format!("{id} missing")))?;
                        let p = types_pb::Entry::decode(bytes.as_slice())
                            .map_err(|e| Error::corrupt("signed", e.to_string()))?;
                        Ok((None, Entry::try_from(p)?))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
            self.send(entries).await?;
        }
        Ok(())
    }

    /// Reads, encodes, prepares and sends the input files, in batches.
    async fn files(&mut self, files: Vec<PathBuf>, mut reader: Reader, batch_size: usize) -> Result<()> {
        let mut batch: Vec<Source> = Vec::new();
        let mut batch_tiles = 0usize;
        for path in files {
            if self.stopping() {
                return Ok(());
            }
            let (back, path, read) = blocking(move || {
                let read = reader.read(&path);
                Ok((reader, path, read))
            })
            .await?;
            reader = back;
            match read {
                Ok(Fetched::New(source)) => {
                    batch_tiles += source.tiles;
                    batch.push(source);
                }
                Ok(Fetched::Prepared(id)) => {
                    let reason = match self.resent.remove(&id) {
                        Some(Err(reason)) => reason,
                        _ => "prepared by an earlier run and not acknowledged yet; sent again on the next run".into(),
                    };
                    self.emit(Some(path), Some(id), FileOutcome::Failed(reason));
                }
                Err(Skip::Published(id)) => {
                    let outcome = match self.resent.remove(&id) {
                        Some(Ok(())) => FileOutcome::Resent,
                        _ => FileOutcome::Skipped,
                    };
                    self.emit(Some(path), Some(id), outcome);
                }
                Err(Skip::Duplicate) => self.emit(Some(path), None, FileOutcome::Duplicate),
                Err(Skip::Failed(reason)) => self.emit(Some(path), None, FileOutcome::Failed(reason)),
            }
            if batch.len() >= batch_size || batch_tiles >= MAX_TILES_PER_BATCH {
                batch_tiles = 0;
                if self.batch(std::mem::take(&mut batch)).await? {
                    return Ok(());
                }
            }
        }
        if !batch.is_empty() && !self.stopping() {
            self.batch(batch).await?;
        }
        Ok(())
    }

    /// Reports the entries sent again whose file was not among the inputs, and sorts.
    fn finish(&mut self) {
        let mut rest: Vec<(EntryId, Result<(), String>)> = self.resent.drain().collect();
        rest.sort_by_key(|(id, _)| *id);
        for (id, verdict) in rest {
            let outcome = match verdict {
                Ok(()) => FileOutcome::Resent,
                Err(reason) => FileOutcome::Failed(reason),
            };
            self.emit(None, Some(id), outcome);
        }
        self.summary.files.sort();
        self.summary.interrupted = self.interrupted;
    }

    /// Encodes, prepares and sends one batch. True when the run must stop
    /// here (`stop_after_prepared` was reached).
    async fn batch(&mut self, sources: Vec<Source>) -> Result<bool> {
        let limit = self.stop_after_prepared.map(|n| n.saturating_sub(self.prepared_new));
        let job = self.job.clone();
        let prepared = blocking(move || job.run(sources, limit)).await?;
        let mut entries = Vec::new();
        for (path, outcome) in prepared.done {
            match outcome {
                Ok(entry) => entries.push((Some(path), entry)),
                Err(reason) => self.emit(Some(path), None, FileOutcome::Failed(reason)),
            }
        }
        self.prepared_new += entries.len();
        if prepared.stopped {
            self.interrupted = true;
            return Ok(true);
        }
        self.send(entries).await?;
        Ok(false)
    }

    /// Sends entries (with their file, or None for an earlier run's), marks
    /// the acknowledged ones published, then reports them.
    async fn send(&mut self, entries: Vec<(Option<PathBuf>, Entry)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let (paths, entries): (Vec<Option<PathBuf>>, Vec<Entry>) = entries.into_iter().unzip();
        let ids: Vec<EntryId> = entries.iter().map(|e| e.id).collect();
        let acks = self.registry.publish(entries).await?;
        let acks: HashMap<EntryId, &ambishare_rpc::PublishAck> = acks.iter().map(|a| (a.entry_id, a)).collect();
        let mut done = Vec::new();
        let mut verdicts = Vec::with_capacity(ids.len());
        for (path, id) in paths.into_iter().zip(ids) {
            let verdict = match acks.get(&id) {
                Some(ack) if ack.is_stored() => {
                    done.push(id);
                    Ok(())
                }
                Some(ack) => {
                    debug_assert_eq!(ack.outcome, PublishOutcome::Rejected);
                    Err(format!(
                        "registry refused entry {id}: {} ({:?}); kept, retried on the next run",
                        ack.message, ack.code
                    ))
                }
                None => Err(format!("registry sent no acknowledgement for entry {id}; retried on the next run")),
            };
            verdicts.push((path, id, verdict));
        }
        let store = self.store.clone();
        blocking(move || store.mark_published(&done)).await?;
        for (path, id, verdict) in verdicts {
            match path {
                Some(path) => {
                    let outcome = match verdict {
                        Ok(()) => FileOutcome::Published,
                        Err(reason) => FileOutcome::Failed(reason),
                    };
                    self.emit(Some(path), Some(id), outcome);
                }
                None => {
                    self.resent.insert(id, verdict);
                }
            }
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("worker task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::PublishJobRequest {
        pb::PublishJobRequest {
            dataset: "d".into(),
            inputs: vec!["/photos".into()],
            registry_url: "http://r:1".into(),
            model_dir: "/models/m".into(),
            ..Default::default()
        }
    }

    #[test]
    fn job_round_trips_with_defaults_for_zeros() {
        let job = PublishJob::try_from(request()).unwrap();
        assert_eq!((job.batch, job.max_pixels, job.device, job.codec), (16, 1 << 26, Device::Auto, ValueCodec::Q8));
        assert_eq!(
            (job.registry_ca_pem.as_ref(), job.display_name.as_ref(), job.stop_after_prepared),
            (None, None, None)
        );
        let again = PublishJob::try_from(pb::PublishJobRequest::try_from(&job).unwrap()).unwrap();
        assert_eq!((again.inputs, again.model_dir, again.batch), (job.inputs, job.model_dir, job.batch));
    }

    #[test]
    fn rejects_relative_and_empty_paths() {
        for bad in ["photos", "", "./x", "/a\0b"] {
            let p = pb::PublishJobRequest { inputs: vec![bad.into()], ..request() };
            assert!(matches!(PublishJob::try_from(p), Err(Error::Invalid { .. })), "{bad:?} accepted");
        }
        let p = pb::PublishJobRequest { model_dir: "models/m".into(), ..request() };
        assert!(PublishJob::try_from(p).is_err());
        let p = pb::PublishJobRequest { inputs: vec![], ..request() };
        assert!(PublishJob::try_from(p).is_err());
    }

    #[test]
    fn rejects_out_of_range_values() {
        for p in [
            pb::PublishJobRequest { batch: MAX_BATCH as u32 + 1, ..request() },
            pb::PublishJobRequest { device: 9, ..request() },
            pb::PublishJobRequest { codec: -1, ..request() },
            pb::PublishJobRequest { dataset: "Not A Name".into(), ..request() },
            pb::PublishJobRequest { display_name: "x".repeat(129), ..request() },
            pb::PublishJobRequest { display_name: "two\nlines".into(), ..request() },
            pb::PublishJobRequest { registry_url: String::new(), ..request() },
            pb::PublishJobRequest { registry_ca_pem: vec![b'-'; (MAX_REGISTRY_CA_BYTES + 1) as usize], ..request() },
        ] {
            assert!(PublishJob::try_from(p).unwrap_err().is_caller_fault());
        }
    }

    #[test]
    fn rejects_inconsistent_file_events() {
        let published = pb::PublishFileEvent {
            path: "/a.png".into(),
            outcome: pb::FileOutcome::Published as i32,
            ..Default::default()
        };
        assert!(matches!(FileEvent::try_from(published.clone()), Err(Error::Protocol(_))));
        let bad_id = pb::PublishFileEvent { entry_id: "nope".into(), ..published.clone() };
        assert!(matches!(FileEvent::try_from(bad_id), Err(Error::Protocol(_))));
        let unknown = pb::PublishFileEvent { outcome: 42, ..published };
        assert!(matches!(FileEvent::try_from(unknown), Err(Error::Protocol(_))));
    }

    #[test]
    fn summary_is_built_from_events_the_same_on_both_sides() {
        let (a, b) = (EntryId::new(), EntryId::new());
        let events = [
            FileEvent { path: Some("/x/1.png".into()), entry: Some(a), outcome: FileOutcome::Published },
            FileEvent { path: Some("/x/0.png".into()), entry: Some(b), outcome: FileOutcome::Resent },
            FileEvent { path: Some("/x/2.png".into()), entry: None, outcome: FileOutcome::Duplicate },
            FileEvent { path: None, entry: Some(EntryId::new()), outcome: FileOutcome::Failed("refused".into()) },
        ];
        let (mut node, mut client) = (PublishSummary::default(), PublishSummary::default());
        for e in &events {
            node.record(e);
            let wire = pb::PublishJobEvent::from(&PublishEvent::File(e.clone()));
            let Some(pb::publish_job_event::Event::File(f)) = wire.event else { panic!("not a file event") };
            client.record(&FileEvent::try_from(f).unwrap());
        }
        assert!(client.matches(&pb::PublishJobSummary::from(&node)));
        assert_eq!((node.published, node.resent, node.duplicates, node.failed.len()), (1, 1, 1, 1));
        assert_eq!(client.files, node.files);
        assert_eq!(client.entries, vec![a, b]);
        assert!(client.failed[0].0.to_string_lossy().contains("from an earlier run"));
    }
}
