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
use ambishare_shared::model::MANIFEST_FILE;
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

/// What to publish, and how (the typed `PublishJobRequest`).
#[derive(Clone, Debug)]
pub struct PublishJob {
    pub dataset: DatasetName,
    /// Image files and directories. A node resolves them on its own machine,
    /// so over the wire they must be absolute.
    pub inputs: Vec<PathBuf>,
    /// Registry URL (`http://` or `https://`).
    pub registry_url: String,
    /// PEM of the registry's CA (for `https://`).
    pub registry_ca_pem: Option<Vec<u8>>,
    /// Name to register under (default: "ambishare owner <id>").
    pub display_name: Option<DisplayName>,
    /// Model directory (manifest.json and its ONNX files).
    pub model_dir: PathBuf,
    pub device: Device,
    pub codec: ValueCodec,
    /// Format of the public codes: v3 (the default: fakes derived from a
    /// secret, 44-byte keys) or v2 (fresh randomness, for compatibility;
    /// an image published twice under v2 can be recovered).
    pub format: CodeVersion,
    /// Images encoded and published together (1 to [`MAX_BATCH`]).
    pub batch: usize,
    /// Largest image accepted, in pixels.
    pub max_pixels: u64,
    /// For tests: stop once this many new entries are prepared (stored here,
    /// sealed key included) and before they are sent, as a crash there would.
    pub stop_after_prepared: Option<usize>,
}

impl PublishJob {
    /// A job with the default device, codec, batch and size limit.
    pub fn new(
        dataset: DatasetName,
        inputs: Vec<PathBuf>,
        registry_url: impl Into<String>,
        model_dir: impl Into<PathBuf>,
    ) -> Self {
        PublishJob {
            dataset,
            inputs,
            registry_url: registry_url.into(),
            registry_ca_pem: None,
            display_name: None,
            model_dir: model_dir.into(),
            device: Device::Auto,
            codec: ValueCodec::Q8,
            format: CodeVersion::V3,
            batch: DEFAULT_BATCH,
            max_pixels: DEFAULT_MAX_PIXELS,
            stop_after_prepared: None,
        }
    }

    /// Checks the limits (whichever way the job came).
    fn check(&self) -> Result<()> {
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(Error::invalid("batch", format!("must be 1 to {MAX_BATCH}")));
        }
        if self.inputs.is_empty() || self.inputs.len() > MAX_INPUTS {
            return Err(Error::invalid("inputs", format!("give 1 to {MAX_INPUTS} files or directories")));
        }
        if self.max_pixels == 0 {
            return Err(Error::invalid("max pixels", "must be at least 1"));
        }
        if self.registry_ca_pem.as_ref().is_some_and(|p| p.len() as u64 > MAX_REGISTRY_CA_BYTES) {
            return Err(Error::invalid("registry CA", format!("at most {MAX_REGISTRY_CA_BYTES} bytes")));
        }
        if self.format == CodeVersion::V3 && self.codec != ValueCodec::Q8 {
            return Err(Error::invalid("codec", "format v3 publishes q8 values (f16 needs format v2)"));
        }
        Ok(())
    }
}

/// What became of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    /// A new entry, acknowledged by the registry.
    Published,
    /// An entry prepared by an earlier run, sent again and acknowledged.
    Resent,
    /// Published by an earlier run: skipped.
    Skipped,
    /// The same bytes as another file of this run: skipped.
    Duplicate,
    /// Not published, and why; a later run tries again.
    Failed(String),
}

/// One file done (or one entry an earlier run prepared whose file is not among the inputs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEvent {
    /// None for an entry an earlier run prepared whose file is not among the inputs.
    pub path: Option<PathBuf>,
    /// None for a duplicate, and for a file that failed before it had an entry.
    pub entry: Option<EntryId>,
    pub outcome: FileOutcome,
}

/// Progress of a publish run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishEvent {
    /// First: image files found, and entries an earlier run prepared (sent again first).
    Started { files: usize, resend: usize },
    /// One per input file as it is done, and one per entry an earlier run
    /// prepared whose file is not among the inputs (at the end).
    File(FileEvent),
}

/// What a publish run did.
#[derive(Clone, Debug, Default)]
pub struct PublishSummary {
    /// New entries the registry acknowledged.
    pub published: usize,
    /// Entries prepared by an earlier run, re-sent and acknowledged.
    pub resent: usize,
    /// Sources already published (by an earlier run), skipped.
    pub skipped: usize,
    /// Files with the same bytes as another file of this run.
    pub duplicates: usize,
    /// Files that could not be published, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Entries acknowledged in this run (new and re-sent).
    pub entries: Vec<EntryId>,
    /// Each input file and its entry in the registry (published now or before),
    /// sorted by path; files that failed, and copies of another file, are absent.
    pub files: Vec<(PathBuf, EntryId)>,
    /// The run stopped early (`stop_after_prepared`, or its caller asked it to).
    pub interrupted: bool,
}

impl PublishSummary {
    /// Counts one file event. The node and its client both build the summary
    /// from the same events with this, so they agree.
    pub(crate) fn record(&mut self, event: &FileEvent) {
        let path = event.path.clone();
        match (&event.outcome, event.entry) {
            (FileOutcome::Published, Some(id)) | (FileOutcome::Resent, Some(id)) => {
                if event.outcome == FileOutcome::Published {
                    self.published += 1;
                } else {
                    self.resent += 1;
                }
                self.entries.push(id);
                if let Some(path) = path {
                    self.files.push((path, id));
                }
            }
            (FileOutcome::Skipped, Some(id)) => {
                self.skipped += 1;
                if let Some(path) = path {
                    self.files.push((path, id));
                }
            }
            (FileOutcome::Duplicate, _) => self.duplicates += 1,
            (FileOutcome::Failed(reason), entry) => {
                let path = path.unwrap_or_else(|| earlier_entry_path(entry));
                self.failed.push((path, reason.clone()));
            }
            // Published, re-sent or skipped without an entry: not built by this crate.
            (_, None) => self.failed.push((path.unwrap_or_default(), "no entry reported".into())),
        }
    }

    /// The counts, on one line.
    fn counts(&self) -> String {
        format!(
            "published {}, re-sent {} from an earlier run, skipped {} already published, {} duplicate file(s), \
             failed {}",
            self.published,
            self.resent,
            self.skipped,
            self.duplicates,
            self.failed.len()
        )
    }
}

/// `text` on one line: control characters and runs of white space become one space.
fn one_line(text: &str) -> String {
    let line = text.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect::<Vec<_>>();
    if line.is_empty() { "no reason given".into() } else { line.join(" ") }
}

/// How a failed entry without a file is listed.
fn earlier_entry_path(entry: Option<EntryId>) -> PathBuf {
    match entry {
        Some(id) => PathBuf::from(format!("(entry {id} from an earlier run)")),
        None => PathBuf::from("(an entry from an earlier run)"),
    }
}

impl fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.counts())?;
        for (path, reason) in &self.failed {
            write!(f, "\n  failed {}: {reason}", path.display())?;
        }
        if self.interrupted {
            write!(f, "\n  (stopped early; run again to finish)")?;
        }
        Ok(())
    }
}

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
            let runner = ModelRunner::load(&model_dir, device)?;
            let manifest = runner.manifest().clone();
            if manifest.channels != 3 {
                return Err(Error::invalid(
                    "model",
                    format!("{} takes {} channels; publish needs RGB (3)", manifest.name, manifest.channels),
                ));
            }
            let manifest_bytes = read_file(&manifest_path, 1 << 20)?;
            let (encoder, decoder) = model_files(&model_dir, &manifest)?;
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

/// Files named, and image files under directories named, sorted, without repeats.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| unreadable(input, &e))?;
        if meta.is_dir() {
            walk(input, &mut out)?;
        } else {
            out.push(input.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// An input the caller named that cannot be read (the caller's fault).
fn unreadable(path: &Path, e: &std::io::Error) -> Error {
    Error::invalid("input", format!("cannot read {}: {e}", path.display()))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| unreadable(dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| unreadable(dir, &e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| unreadable(&path, &e))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file()
            && path
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.iter().any(|e| x.eq_ignore_ascii_case(e)))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a whole file of at most `limit` bytes.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let ctx = || format!("reading {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| Error::io(ctx(), e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(ctx(), e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::invalid("file", format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(bytes)
}

fn model_files(dir: &Path, manifest: &Manifest) -> Result<(Vec<u8>, Vec<u8>)> {
    let encoder = manifest
        .encoder
        .as_ref()
        .ok_or_else(|| Error::invalid("model", format!("{} has no encoder", manifest.name)))?;
    let limit = 1 << 30;
    Ok((read_file(&dir.join(&encoder.file), limit)?, read_file(&dir.join(&manifest.decoder.file), limit)?))
}

/// An image to encode.
struct Source {
    path: PathBuf,
    sha256: [u8; 32],
    image: image::RgbImage,
    tiles: usize,
}

/// A file read.
enum Fetched {
    New(Source),
    /// An earlier run prepared its entry, and it is still not acknowledged
    /// (its re-send in this run failed).
    Prepared(EntryId),
}

enum Skip {
    /// Published by an earlier run (or re-sent by this one).
    Published(EntryId),
    Duplicate,
    Failed(String),
}

/// Reads input files (on a blocking thread), remembering what it has seen.
struct Reader {
    store: Arc<OwnerStore>,
    dataset: DatasetName,
    max_pixels: u64,
    tile_size: u32,
    seen: HashSet<[u8; 32]>,
}

impl Reader {
    fn read(&mut self, path: &Path) -> Result<Fetched, Skip> {
        let bytes = read_file(path, crate::config::MAX_IMAGE_FILE_BYTES).map_err(|e| Skip::Failed(e.to_string()))?;
        let sha = sha256(&bytes);
        if !self.seen.insert(sha) {
            return Err(Skip::Duplicate);
        }
        match self.store.source_entry(&self.dataset, &sha) {
            Ok(Some((id, EntryState::Published))) => return Err(Skip::Published(id)),
            Ok(Some((id, EntryState::Prepared))) => return Ok(Fetched::Prepared(id)),
            Ok(None) => {}
            Err(e) => return Err(Skip::Failed(format!("store: {e}"))),
        }
        let image = load_image(&bytes, self.max_pixels).map_err(|e| Skip::Failed(e.to_string()))?;
        let (w, h) = image.dimensions();
        let tile = self.tile_size.max(1);
        let tiles = w.div_ceil(tile) as usize * h.div_ceil(tile) as usize;
        Ok(Fetched::New(Source { path: path.to_path_buf(), sha256: sha, image, tiles }))
    }
}

/// Encoding and preparing one batch, run off the async threads.
#[derive(Clone)]
struct PrepareJob {
    runner: Arc<ModelRunner>,
    signing: Arc<SigningKey>,
    keyring: Arc<Keyring>,
    store: Arc<OwnerStore>,
    dataset: DatasetName,
    codec: ValueCodec,
    scheme: Scheme,
}

/// How public codes are made.
#[derive(Clone)]
enum Scheme {
    /// Format v2: fresh randomness, the key sealed per entry.
    Fresh(Arc<FakeModel>),
    /// Format v3: derived from the master secret, a tag per entry.
    Derived(Arc<DerivedScheme>),
}

struct DerivedScheme {
    master: MasterSecret,
    context: DerivationContext,
    tables: FakeTables,
}

struct Prepared {
    done: Vec<(PathBuf, Result<Entry, String>)>,
    /// `limit` was reached: nothing of this batch should be sent.
    stopped: bool,
}

impl PrepareJob {
    /// Encodes the batch and prepares each entry (stored, flushed). With
    /// `limit`, stops after that many have been prepared.
    fn run(self, sources: Vec<Source>, limit: Option<usize>) -> Result<Prepared> {
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

/// A path from the wire: absolute, since the node resolves it on its own machine.
fn wire_path(what: &'static str, s: String) -> Result<PathBuf> {
    if s.is_empty() || s.len() > MAX_PATH_BYTES || s.contains('\0') {
        return Err(Error::invalid(what, format!("must be a path of 1 to {MAX_PATH_BYTES} bytes")));
    }
    let path = PathBuf::from(s);
    if !path.is_absolute() {
        return Err(Error::invalid(
            what,
            format!("{} is not absolute (the node resolves paths on its own machine)", path.display()),
        ));
    }
    Ok(path)
}

/// A path for the wire (UTF-8, or refused).
fn path_text(what: &'static str, path: &Path) -> Result<String> {
    path.to_str().map(str::to_owned).ok_or_else(|| Error::invalid(what, format!("{} is not UTF-8", path.display())))
}

impl TryFrom<pb::PublishJobRequest> for PublishJob {
    type Error = Error;
    fn try_from(p: pb::PublishJobRequest) -> Result<Self> {
        if p.inputs.is_empty() || p.inputs.len() > MAX_INPUTS {
            return Err(Error::invalid("inputs", format!("give 1 to {MAX_INPUTS} files or directories")));
        }
        if p.registry_url.is_empty() || p.registry_url.len() > MAX_PATH_BYTES {
            return Err(Error::invalid("registry url", format!("must be 1 to {MAX_PATH_BYTES} bytes")));
        }
        let device = match pb::Device::try_from(p.device) {
            Ok(pb::Device::Unspecified | pb::Device::Auto) => Device::Auto,
            Ok(pb::Device::Cpu) => Device::Cpu,
            Ok(pb::Device::Cuda) => Device::Cuda,
            Err(_) => return Err(Error::invalid("device", format!("unknown device {}", p.device))),
        };
        let codec = match pb::ValueCodec::try_from(p.codec) {
            Ok(pb::ValueCodec::Unspecified | pb::ValueCodec::Q8) => ValueCodec::Q8,
            Ok(pb::ValueCodec::F16) => ValueCodec::F16,
            Err(_) => return Err(Error::invalid("codec", format!("unknown codec {}", p.codec))),
        };
        let job = PublishJob {
            dataset: p.dataset.parse()?,
            inputs: p.inputs.into_iter().map(|s| wire_path("input", s)).collect::<Result<_>>()?,
            registry_url: p.registry_url,
            registry_ca_pem: (!p.registry_ca_pem.is_empty()).then_some(p.registry_ca_pem),
            display_name: if p.display_name.is_empty() { None } else { Some(p.display_name.try_into()?) },
            model_dir: wire_path("model directory", p.model_dir)?,
            device,
            codec,
            format: match p.format {
                0 | 3 => CodeVersion::V3,
                2 => CodeVersion::V2,
                other => return Err(Error::invalid("format", format!("unknown code format {other} (2 or 3)"))),
            },
            batch: if p.batch == 0 { DEFAULT_BATCH } else { p.batch as usize },
            max_pixels: if p.max_pixels == 0 { DEFAULT_MAX_PIXELS } else { p.max_pixels },
            stop_after_prepared: (p.stop_after_prepared != 0).then_some(p.stop_after_prepared as usize),
        };
        job.check()?;
        Ok(job)
    }
}

impl TryFrom<&PublishJob> for pb::PublishJobRequest {
    type Error = Error;
    fn try_from(job: &PublishJob) -> Result<Self> {
        let count = |what: &'static str, n: usize| {
            u32::try_from(n).map_err(|_| Error::invalid(what, format!("{n} is more than a node accepts")))
        };
        Ok(pb::PublishJobRequest {
            dataset: job.dataset.to_string(),
            inputs: job.inputs.iter().map(|p| path_text("input", p)).collect::<Result<_>>()?,
            registry_url: job.registry_url.clone(),
            registry_ca_pem: job.registry_ca_pem.clone().unwrap_or_default(),
            model_dir: path_text("model directory", &job.model_dir)?,
            device: match job.device {
                Device::Auto => pb::Device::Auto,
                Device::Cpu => pb::Device::Cpu,
                Device::Cuda => pb::Device::Cuda,
            } as i32,
            codec: match job.codec {
                ValueCodec::Q8 => pb::ValueCodec::Q8,
                ValueCodec::F16 => pb::ValueCodec::F16,
            } as i32,
            format: job.format.number() as u32,
            batch: count("batch", job.batch)?,
            display_name: job.display_name.clone().map(String::from).unwrap_or_default(),
            max_pixels: job.max_pixels,
            stop_after_prepared: count("stop after prepared", job.stop_after_prepared.unwrap_or(0))?,
        })
    }
}

impl From<&PublishEvent> for pb::PublishJobEvent {
    fn from(event: &PublishEvent) -> Self {
        let event = match event {
            PublishEvent::Started { files, resend } => pb::publish_job_event::Event::Started(pb::PublishStarted {
                files: *files as u64,
                resend: *resend as u64,
            }),
            PublishEvent::File(f) => {
                let (outcome, reason) = match &f.outcome {
                    FileOutcome::Published => (pb::FileOutcome::Published, String::new()),
                    FileOutcome::Resent => (pb::FileOutcome::Resent, String::new()),
                    FileOutcome::Skipped => (pb::FileOutcome::Skipped, String::new()),
                    FileOutcome::Duplicate => (pb::FileOutcome::Duplicate, String::new()),
                    FileOutcome::Failed(reason) => (pb::FileOutcome::Failed, reason.clone()),
                };
                pb::publish_job_event::Event::File(pb::PublishFileEvent {
                    path: f.path.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
                    entry_id: f.entry.map(|id| id.to_string()).unwrap_or_default(),
                    outcome: outcome as i32,
                    reason,
                })
            }
        };
        pb::PublishJobEvent { event: Some(event) }
    }
}

impl From<&PublishSummary> for pb::PublishJobSummary {
    fn from(s: &PublishSummary) -> Self {
        pb::PublishJobSummary {
            published: s.published as u64,
            resent: s.resent as u64,
            skipped: s.skipped as u64,
            duplicates: s.duplicates as u64,
            failed: s.failed.len() as u64,
            interrupted: s.interrupted,
        }
    }
}

impl TryFrom<pb::PublishFileEvent> for FileEvent {
    type Error = Error;
    fn try_from(p: pb::PublishFileEvent) -> Result<Self> {
        let entry = if p.entry_id.is_empty() {
            None
        } else {
            Some(
                p.entry_id
                    .parse()
                    .map_err(|e| Error::Protocol(format!("file event with entry {:?}: {e}", p.entry_id)))?,
            )
        };
        let outcome = match pb::FileOutcome::try_from(p.outcome) {
            Ok(pb::FileOutcome::Published) => FileOutcome::Published,
            Ok(pb::FileOutcome::Resent) => FileOutcome::Resent,
            Ok(pb::FileOutcome::Skipped) => FileOutcome::Skipped,
            Ok(pb::FileOutcome::Duplicate) => FileOutcome::Duplicate,
            Ok(pb::FileOutcome::Failed) if p.reason.is_empty() => FileOutcome::Failed("no reason given".into()),
            Ok(pb::FileOutcome::Failed) => FileOutcome::Failed(p.reason),
            _ => return Err(Error::Protocol(format!("file event with unknown outcome {}", p.outcome))),
        };
        if entry.is_none() && matches!(outcome, FileOutcome::Published | FileOutcome::Resent | FileOutcome::Skipped) {
            return Err(Error::Protocol("a published file event without its entry".into()));
        }
        Ok(FileEvent { path: (!p.path.is_empty()).then(|| PathBuf::from(p.path)), entry, outcome })
    }
}

impl PublishSummary {
    /// True when the node's counts are those of the events it sent.
    pub(crate) fn matches(&self, counts: &pb::PublishJobSummary) -> bool {
        let mine = pb::PublishJobSummary::from(self);
        (mine.published, mine.resent, mine.skipped, mine.duplicates, mine.failed)
            == (counts.published, counts.resent, counts.skipped, counts.duplicates, counts.failed)
    }
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
