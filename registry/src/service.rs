//! `RegistryService`: every request is parsed into checked values here, at the
//! edge, before anything reaches the store.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ambishare_proto::registry::v1 as rpb;
use ambishare_proto::registry::v1::registry_service_server::RegistryService;
use ambishare_proto::types::v1 as pb;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::entry::{ModelFileRef, deletion_bytes, model_bytes, registration_bytes};
use ambishare_shared::model::MAX_MANIFEST_BYTES;
use ambishare_shared::{DisplayName, Entry, EntryId, Manifest, ModelId, OwnerId, TileGrid};
use futures::{Stream, StreamExt, stream};
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument, Span, debug, info, instrument};

use crate::config::{
    DEFAULT_PAGE_SIZE, Limits, MAX_CLOCK_SKEW_MS, MAX_CONCURRENT_MODEL_DOWNLOADS, MAX_CONCURRENT_MODEL_UPLOADS,
    MAX_PAGE_SIZE,
};
use crate::db::{Cursor, Db, Inserted, Prepared, Query};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::writer::{Verdict, Writer};

/// At most this much of a request's text field goes into a log span (the
/// field is unchecked there, and repeated on every line of the request).
const SHOWN_CHARS: usize = 80;

/// `text` cut to [`SHOWN_CHARS`] characters, for a span field.
fn shown(text: &str) -> &str {
    text.char_indices().nth(SHOWN_CHARS).map_or(text, |(i, _)| &text[..i])
}

/// An upload waits at most this long for its next message; an idle uploader
/// must not hold one of the few upload slots forever.
const UPLOAD_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The next message of a model upload, within [`UPLOAD_IDLE`].
async fn next_upload_message(
    inbound: &mut Streaming<rpb::PublishModelRequest>,
) -> Result<Option<rpb::PublishModelRequest>> {
    match tokio::time::timeout(UPLOAD_IDLE, inbound.message()).await {
        Ok(message) => Ok(message?),
        Err(_) => Err(Error::Invalid(format!(
            "model upload idle for {} s; send the next message sooner",
            UPLOAD_IDLE.as_secs()
        ))),
    }
}

/// Chunk size of model downloads.
pub const MODEL_CHUNK_BYTES: usize = 256 << 10;
/// Entries read from the store per page of a stream.
const STREAM_PAGE: usize = 256;
/// Record bytes read per page of a listing or a stream (at least one entry a
/// page): with codes of up to `max_code_bytes`, a page of entries could
/// otherwise hold gigabytes.
const PAGE_BYTES: usize = 8 << 20;
/// Entries a stream buffers ahead of the client.
const STREAM_BUFFER: usize = 16;
/// Record bytes read per page of a stream: with the buffer, what a slow
/// client can make a stream hold.
const STREAM_PAGE_BYTES: usize = 2 << 20;
/// Publish messages checked concurrently on one stream.
const PUBLISH_PIPELINE: usize = 4;
/// Publish messages of one stream waiting for the writer's verdict.
const PUBLISH_IN_FLIGHT: usize = 16;
/// Owner keys and manifests kept in memory (they never change once stored).
const CACHE_LIMIT: usize = 10_000;

pub(crate) struct Inner {
    pub db: Db,
    pub writer: Writer,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    owners: RwLock<HashMap<OwnerId, PublicKey>>,
    models: RwLock<HashMap<ModelId, Arc<Manifest>>>,
    uploads: Semaphore,
    downloads: Arc<Semaphore>,
}

/// The gRPC handlers of the registry (see [`crate::Registry::service`]).
#[derive(Clone)]
pub struct RegistryApi {
    pub(crate) inner: Arc<Inner>,
}

impl RegistryApi {
    pub(crate) fn new(db: Db, writer: Writer, limits: Limits, metrics: Arc<Metrics>) -> Self {
        RegistryApi {
            inner: Arc::new(Inner {
                db,
                writer,
                limits,
                metrics,
                owners: RwLock::default(),
                models: RwLock::default(),
                uploads: Semaphore::new(MAX_CONCURRENT_MODEL_UPLOADS),
                downloads: Arc::new(Semaphore::new(MAX_CONCURRENT_MODEL_DOWNLOADS)),
            }),
        }
    }

    /// Runs CPU work (decoding codes, checking signatures) on a blocking thread, inside the current span.
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        let span = Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&inner))).await?
    }

    /// Answers a request, counting it by method and status.
    async fn track<T>(
        &self,
        method: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let result = work.await.map_err(Status::from);
        let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.inner.metrics.request(method, code, start.elapsed());
        result.map(Response::new)
    }
}

fn parse<T: FromStr<Err = ambishare_shared::Error>>(s: &str) -> Result<T> {
    s.parse().map_err(|e: ambishare_shared::Error| Error::Invalid(e.to_string()))
}

fn parse_optional<T: FromStr<Err = ambishare_shared::Error>>(s: &str) -> Result<Option<T>> {
    if s.is_empty() { Ok(None) } else { parse(s).map(Some) }
}

fn parse_sha256(hex_digits: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex_digits.len() != 64 || !hex_digits.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::Invalid("sha256 must be 64 lowercase hex digits".into()));
    }
    hex::decode_to_slice(hex_digits, &mut out).map_err(|e| Error::Invalid(format!("sha256: {e}")))?;
    Ok(out)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Refuses a signed request whose time is too far from ours (bounds replays).
fn check_request_time(requested_unix_ms: i64) -> Result<()> {
    let skew = now_ms().saturating_sub(requested_unix_ms).saturating_abs();
    if skew > MAX_CLOCK_SKEW_MS {
        return Err(Error::Invalid(format!(
            "requested_unix_ms is {} s away from the registry's clock; at most {} s are allowed",
            skew / 1000,
            MAX_CLOCK_SKEW_MS / 1000
        )));
    }
    Ok(())
}

fn query_of(owner_id: &str, dataset: &str) -> Result<Query> {
    Ok(Query { owner: parse_optional(owner_id)?, dataset: parse_optional(dataset)? })
}

fn summary_of(e: &pb::Entry) -> pb::EntrySummary {
    pb::EntrySummary {
        entry_id: e.entry_id.clone(),
        owner_id: e.owner_id.clone(),
        dataset: e.dataset.clone(),
        model_id: e.model_id.clone(),
        width: e.width,
        height: e.height,
        created_unix_ms: e.created_unix_ms,
        label: e.label.clone(),
        code_bytes: e.code.len() as u64,
    }
}

fn role_name(role: i32) -> Result<&'static str> {
    match rpb::ModelFileRole::try_from(role) {
        Ok(rpb::ModelFileRole::Encoder) => Ok("encoder"),
        Ok(rpb::ModelFileRole::Decoder) => Ok("decoder"),
        _ => Err(Error::Invalid(format!("unknown model file role {role}"))),
    }
}

/// The registered keys and stored manifests one publish message needs.
#[derive(Default)]
struct Lookups {
    keys: HashMap<OwnerId, PublicKey>,
    manifests: HashMap<ModelId, Arc<Manifest>>,
}

/// One publish message after its entries were checked.
struct Checked {
    slots: Vec<Slot>,
    prepared: Vec<Prepared>,
}

enum Slot {
    /// Refused at the edge; its acknowledgement is ready.
    Refused(rpb::PublishAck),
    /// Handed to the writer.
    Queued(EntryId),
}

/// One publish message waiting for the writer.
struct Pending {
    slots: Vec<Slot>,
    reply: Option<oneshot::Receiver<Vec<Verdict>>>,
    metrics: Arc<Metrics>,
}

impl Pending {
    async fn acks(self) -> Result<Vec<rpb::PublishAck>> {
        let verdicts = match self.reply {
            Some(rx) => rx.await.map_err(|_| Error::Internal("the writer stopped without answering".into()))?,
            None => Vec::new(),
        };
        let mut verdicts = verdicts.into_iter();
        let acks = self
            .slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Refused(ack) => ack,
                Slot::Queued(id) => match verdicts.next() {
                    Some(Ok(Inserted::Stored)) => ack(&self.metrics, id.to_string(), rpb::PublishOutcome::Stored),
                    Some(Ok(Inserted::AlreadyStored)) => {
                        ack(&self.metrics, id.to_string(), rpb::PublishOutcome::AlreadyStored)
                    }
                    Some(Ok(Inserted::Refused(e)) | Err(e)) => refused(&self.metrics, id.to_string(), e),
                    None => refused(&self.metrics, id.to_string(), Error::Internal("no verdict for an entry".into())),
                },
            })
            .collect();
        Ok(acks)
    }
}

fn ack(metrics: &Metrics, entry_id: String, outcome: rpb::PublishOutcome) -> rpb::PublishAck {
    metrics.ack(if outcome == rpb::PublishOutcome::Stored { "stored" } else { "already_stored" });
    rpb::PublishAck { entry_id, outcome: outcome as i32, code: 0, message: String::new() }
}

fn refused(metrics: &Metrics, entry_id: String, e: Error) -> rpb::PublishAck {
    metrics.ack("rejected");
    // The same mapping (and logging) as a failed request.
    let status = Status::from(e);
    rpb::PublishAck {
        entry_id,
        outcome: rpb::PublishOutcome::Rejected as i32,
        code: status.code() as i32,
        message: status.message().to_owned(),
    }
}

/// A model file being received.
struct Incoming {
    role: &'static str,
    sha256: [u8; 32],
    sha256_hex: String,
    size: u64,
    data: Vec<u8>,
}

impl Inner {
    /// The registered key of an owner.
    async fn owner_key(&self, id: &OwnerId) -> Result<Option<PublicKey>> {
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
    async fn manifest(&self, id: &ModelId) -> Result<Option<Arc<Manifest>>> {
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
    async fn lookups(&self, entries: &[pb::Entry]) -> Result<Lookups> {
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

    fn check_entry(&self, p: pb::Entry, lookups: &Lookups) -> Result<Prepared> {
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

    fn check_entries(&self, entries: Vec<pb::Entry>, lookups: &Lookups) -> Checked {
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
    async fn check_model_header(&self, header: &rpb::ModelHeader) -> Result<(ModelId, Vec<Incoming>)> {
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

    /// Where a listing resumes: a page token, or the id of the last entry seen.
    async fn resolve_cursor(&self, query: &Query, token: &str) -> Result<Option<Cursor>> {
        if token.is_empty() {
            return Ok(None);
        }
        if token.contains('-') {
            let id: EntryId = parse(token)?;
            let stored = self
                .db
                .entry(&id)
                .await?
                .ok_or_else(|| Error::NotFound(format!("entry {id} (the cursor) is not stored")))?;
            return query.cursor_after(&id, &stored).map(Some);
        }
        query.parse_token(token).map(Some)
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

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl RegistryApi {
    async fn check_message(&self, message: rpb::PublishRequest) -> Result<Checked> {
        let n = message.entries.len();
        let max = self.inner.limits.max_entries_per_message;
        if n > max {
            return Err(Error::TooLarge(format!("{n} entries in one message; at most {max} are allowed")));
        }
        if n == 0 {
            return Ok(Checked { slots: Vec::new(), prepared: Vec::new() });
        }
        let lookups = self.inner.lookups(&message.entries).await?;
        self.blocking(move |inner| Ok(inner.check_entries(message.entries, &lookups))).await
    }

    async fn submit(&self, checked: Checked) -> Result<Pending> {
        let reply =
            if checked.prepared.is_empty() { None } else { Some(self.inner.writer.submit(checked.prepared).await?) };
        Ok(Pending { slots: checked.slots, reply, metrics: self.inner.metrics.clone() })
    }

    // Imports from another registry's store (`migrate`): each record passes
    // the checks a request carrying it would.

    /// Stores an owner record after checking that its key hashes to its id
    /// and its name is valid. True when it was new here.
    pub(crate) async fn import_owner(&self, owner: &rpb::Owner) -> Result<bool> {
        let id: OwnerId = parse(&owner.owner_id)?;
        let key = PublicKey::from_bytes(&owner.public_key)?;
        if key.owner_id() != id {
            return Err(Error::BadSignature(format!("owner {id}: the public key does not hash to the owner id")));
        }
        if !owner.display_name.is_empty() {
            owner.display_name.parse::<DisplayName>()?;
        }
        let stored = self.inner.db.put_owner(&id, owner).await?;
        if stored.public_key != owner.public_key {
            return Err(Error::AlreadyExists(format!("owner id {id} is taken by another key")));
        }
        Ok(stored == *owner)
    }

    /// Stores a model after checking its header (manifest, files, the owner's
    /// signature) and each file, read from `source`, against its size and hash.
    /// True when it was new here.
    pub(crate) async fn import_model(&self, header: &rpb::ModelHeader, source: &Db) -> Result<bool> {
        let (model_id, files) = self.inner.check_model_header(header).await?;
        let mut blobs = Vec::with_capacity(files.len());
        for f in files {
            let data = source.blob_bytes(&f.sha256, f.size).await?.ok_or_else(|| {
                Error::corrupt("blobs", format!("the {} file {} of model {model_id} is missing", f.role, f.sha256_hex))
            })?;
            if data.len() as u64 != f.size || ambishare_shared::ids::sha256(&data) != f.sha256 {
                return Err(Error::corrupt(
                    "blobs",
                    format!("the {} file of model {model_id} does not match its size and hash", f.role),
                ));
            }
            blobs.push((f.sha256, data.into()));
        }
        self.inner.db.put_model(&model_id, header, blobs).await
    }

    /// Checks entries as a publish message's and hands them to the writer;
    /// their acknowledgements, in order.
    pub(crate) async fn import_entries(&self, entries: Vec<pb::Entry>) -> Result<Vec<rpb::PublishAck>> {
        let checked = self.check_message(rpb::PublishRequest { entries }).await?;
        self.submit(checked).await?.acks().await
    }
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    #[instrument(name = "RegisterOwner", skip_all, fields(owner))]
    async fn register_owner(
        &self,
        request: Request<rpb::RegisterOwnerRequest>,
    ) -> Result<Response<rpb::RegisterOwnerResponse>, Status> {
        self.track("RegisterOwner", async {
            let r = request.into_inner();
            let key = PublicKey::from_bytes(&r.public_key)?;
            let owner_id = key.owner_id();
            Span::current().record("owner", tracing::field::display(owner_id));
            // Empty on the wire: no name (the pages then show the owner id).
            let display_name: Option<DisplayName> =
                if r.display_name.is_empty() { None } else { Some(r.display_name.parse()?) };
            if r.signature.is_empty() {
                return Err(Error::NotSigned("registration"));
            }
            check_request_time(r.requested_unix_ms)?;
            key.verify(&registration_bytes(&key, &r.display_name, r.requested_unix_ms), &r.signature).map_err(
                |_| Error::BadSignature("the proof of possession does not verify with the public key".into()),
            )?;
            let record = rpb::Owner {
                owner_id: owner_id.to_string(),
                public_key: r.public_key,
                display_name: display_name.map(String::from).unwrap_or_default(),
                registered_unix_ms: now_ms(),
            };
            let stored = self.inner.db.put_owner(&owner_id, &record).await?;
            if stored.public_key != key.as_bytes() {
                return Err(Error::AlreadyExists(format!("owner id {owner_id} is taken by another key")));
            }
            info!(owner = %owner_id, "owner registered");
            Ok(rpb::RegisterOwnerResponse { owner_id: owner_id.to_string() })
        })
        .await
    }

    #[instrument(name = "GetOwner", skip_all, fields(owner = ?shown(&request.get_ref().owner_id)))]
    async fn get_owner(&self, request: Request<rpb::GetOwnerRequest>) -> Result<Response<rpb::Owner>, Status> {
        self.track("GetOwner", async {
            let id: OwnerId = parse(&request.get_ref().owner_id)?;
            self.inner.db.owner(&id).await?.ok_or_else(|| Error::NotFound(format!("owner {id} is not registered")))
        })
        .await
    }

    #[instrument(name = "PublishModel", skip_all, fields(model))]
    async fn publish_model(
        &self,
        request: Request<Streaming<rpb::PublishModelRequest>>,
    ) -> Result<Response<rpb::PublishModelResponse>, Status> {
        use rpb::publish_model_request::Part;
        self.track("PublishModel", async {
            let mut inbound = request.into_inner();
            let header = match next_upload_message(&mut inbound).await? {
                Some(rpb::PublishModelRequest { part: Some(Part::Header(header)) }) => header,
                _ => return Err(Error::Invalid("the first message of an upload must be the model header".into())),
            };
            let (model_id, mut files) = self.inner.check_model_header(&header).await?;
            Span::current().record("model", tracing::field::display(model_id));
            // Only a signed header of a registered owner takes one of the few upload slots.
            let _permit = self.inner.uploads.acquire().await.map_err(|_| Error::ShuttingDown)?;
            while let Some(message) = next_upload_message(&mut inbound).await? {
                let Some(Part::Chunk(chunk)) = message.part else {
                    return Err(Error::Invalid("only file chunks may follow the model header".into()));
                };
                let file = files.iter_mut().find(|f| f.sha256_hex == chunk.sha256).ok_or_else(|| {
                    Error::Invalid(format!("chunk of file {:?}, which the header does not list", chunk.sha256))
                })?;
                if chunk.offset != file.data.len() as u64 {
                    return Err(Error::Invalid(format!(
                        "chunk of the {} file at offset {}; expected {}",
                        file.role,
                        chunk.offset,
                        file.data.len()
                    )));
                }
                if file.data.len() as u64 + chunk.data.len() as u64 > file.size {
                    return Err(Error::Invalid(format!(
                        "the {} file is longer than its declared {} bytes",
                        file.role, file.size
                    )));
                }
                file.data.extend_from_slice(&chunk.data);
            }
            let mut blobs = Vec::with_capacity(files.len());
            for f in files {
                if f.data.len() as u64 != f.size {
                    return Err(Error::Invalid(format!(
                        "the {} file is incomplete: {} of {} bytes",
                        f.role,
                        f.data.len(),
                        f.size
                    )));
                }
                if ambishare_shared::ids::sha256(&f.data) != f.sha256 {
                    return Err(Error::Invalid(format!("the {} file does not hash to {}", f.role, f.sha256_hex)));
                }
                blobs.push((f.sha256, f.data.into()));
            }
            let created = self.inner.db.put_model(&model_id, &header, blobs).await?;
            info!(model = %model_id, created, "model published");
            Ok(rpb::PublishModelResponse { model_id: model_id.to_string(), created })
        })
        .await
    }

    type GetModelStream = ReceiverStream<Result<rpb::GetModelResponse, Status>>;

    #[instrument(name = "GetModel", skip_all, fields(model = ?shown(&request.get_ref().model_id)))]
    async fn get_model(
        &self,
        request: Request<rpb::GetModelRequest>,
    ) -> Result<Response<Self::GetModelStream>, Status> {
        use rpb::get_model_response::Part;
        self.track("GetModel", async {
            let r = request.into_inner();
            let id: ModelId = parse(&r.model_id)?;
            let roles = r.roles.iter().map(|&role| role_name(role)).collect::<Result<Vec<_>>>()?;
            let header = self.inner.db.model(&id).await?.ok_or_else(|| Error::NotFound(format!("no model {id}")))?;
            let mut files = Vec::new();
            for file in &header.files {
                let role = role_name(file.role).map_err(|_| Error::corrupt("models", "bad file role"))?;
                if roles.is_empty() || roles.contains(&role) {
                    let sha = parse_sha256(&file.sha256).map_err(|_| Error::corrupt("models", "bad sha256"))?;
                    files.push((role, sha, file.sha256.clone()));
                }
            }
            if let Some(missing) = roles.iter().find(|role| !files.iter().any(|(r, _, _)| r == *role)) {
                return Err(Error::NotFound(format!("model {id} has no {missing} file in this registry")));
            }
            let (tx, rx) = mpsc::channel(4);
            let db = self.inner.db.clone();
            let downloads = self.inner.downloads.clone();
            tokio::spawn(
                async move {
                    if tx.send(Ok(rpb::GetModelResponse { part: Some(Part::Header(header)) })).await.is_err() {
                        return;
                    }
                    // Each download holds a chunk of a file at a time; bound how many run.
                    let Ok(_permit) = downloads.acquire_owned().await else { return };
                    for (role, sha, sha_hex) in files {
                        let blob = db.blob(&sha).await.and_then(|b| {
                            b.ok_or_else(|| {
                                Error::corrupt("blobs", format!("the {role} file of a stored model is missing"))
                            })
                        });
                        let mut blob = match blob {
                            Ok(blob) => blob,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        };
                        // Stored chunks are checked against their hashes as they are read;
                        // a failed check ends the download with an error.
                        let mut offset = 0u64;
                        while let Some(stored) = blob.chunks.next().await {
                            let stored = match stored {
                                Ok(bytes) => bytes,
                                Err(e) => {
                                    let _ = tx.send(Err(Error::from(e).into())).await;
                                    return;
                                }
                            };
                            for data in stored.chunks(MODEL_CHUNK_BYTES) {
                                let chunk = rpb::FileChunk { sha256: sha_hex.clone(), offset, data: data.to_vec() };
                                offset += data.len() as u64;
                                let message = rpb::GetModelResponse { part: Some(Part::Chunk(chunk)) };
                                if tx.send(Ok(message)).await.is_err() {
                                    debug!("model download abandoned by the client");
                                    return;
                                }
                            }
                        }
                    }
                }
                .instrument(Span::current()),
            );
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    type PublishStream = BoxStream<rpb::PublishAck>;

    #[instrument(name = "Publish", skip_all, fields(peer = ?request.remote_addr()))]
    async fn publish(
        &self,
        request: Request<Streaming<rpb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        self.track("Publish", async {
            let span = Span::current();
            let (check, submit) = (self.clone(), self.clone());
            // Messages are checked a few at a time, handed to the writer in
            // order, and acknowledged in order once durable; a failed stream
            // ends with its status.
            let acks = request
                .into_inner()
                .map(move |message| {
                    let api = check.clone();
                    async move {
                        let message = message
                            .inspect_err(|s| info!(code = ?s.code(), error = %s.message(), "publish stream failed"))?;
                        api.check_message(message).await.map_err(Status::from)
                    }
                    .instrument(span.clone())
                })
                .buffered(PUBLISH_PIPELINE)
                .then(move |checked| {
                    let api = submit.clone();
                    async move { api.submit(checked?).await.map_err(Status::from) }
                })
                .map(|pending| async move { pending?.acks().await.map_err(Status::from) })
                .buffered(PUBLISH_IN_FLIGHT)
                .flat_map(|acks| match acks {
                    Ok(acks) => stream::iter(acks.into_iter().map(Ok)).left_stream(),
                    Err(status) => stream::iter([Err(status)]).right_stream(),
                });
            Ok(Box::pin(acks) as Self::PublishStream)
        })
        .await
    }

    #[instrument(name = "GetEntry", skip_all, fields(entry = ?shown(&request.get_ref().entry_id)))]
    async fn get_entry(&self, request: Request<rpb::GetEntryRequest>) -> Result<Response<pb::Entry>, Status> {
        self.track("GetEntry", async {
            let id: EntryId = parse(&request.get_ref().entry_id)?;
            let db = &self.inner.db;
            match db.entry(&id).await? {
                Some(stored) => Ok(stored.entry),
                None if db.is_deleted(&id).await? => Err(Error::NotFound(format!("entry {id} was deleted"))),
                None => Err(Error::NotFound(format!("no entry {id}"))),
            }
        })
        .await
    }

    #[instrument(name = "ListEntries", skip_all, fields(owner = ?shown(&request.get_ref().owner_id), dataset = ?shown(&request.get_ref().dataset)))]
    async fn list_entries(
        &self,
        request: Request<rpb::ListEntriesRequest>,
    ) -> Result<Response<rpb::ListEntriesResponse>, Status> {
        self.track("ListEntries", async {
            let r = request.into_inner();
            let query = query_of(&r.owner_id, &r.dataset)?;
            let page_size = match r.page_size {
                0 => DEFAULT_PAGE_SIZE,
                n if n > MAX_PAGE_SIZE => {
                    return Err(Error::Invalid(format!("page_size {n} is above the maximum of {MAX_PAGE_SIZE}")));
                }
                n => n,
            };
            let after = self.inner.resolve_cursor(&query, &r.page_token).await?;
            let page = self.inner.db.page(&query, after.as_ref(), page_size as usize, PAGE_BYTES).await?;
            Ok(rpb::ListEntriesResponse {
                entries: page.items.iter().map(|s| summary_of(&s.entry)).collect(),
                next_page_token: page.next.map(|c| c.token()).unwrap_or_default(),
            })
        })
        .await
    }

    type StreamEntriesStream = ReceiverStream<Result<pb::Entry, Status>>;

    #[instrument(name = "StreamEntries", skip_all, fields(owner = ?shown(&request.get_ref().owner_id), dataset = ?shown(&request.get_ref().dataset)))]
    async fn stream_entries(
        &self,
        request: Request<rpb::StreamEntriesRequest>,
    ) -> Result<Response<Self::StreamEntriesStream>, Status> {
        self.track("StreamEntries", async {
            let r = request.into_inner();
            let query = query_of(&r.owner_id, &r.dataset)?;
            let mut after = self.inner.resolve_cursor(&query, &r.after).await?;
            let mut remaining = if r.limit == 0 { u64::MAX } else { r.limit };
            let (tx, rx) = mpsc::channel(STREAM_BUFFER);
            let api = self.clone();
            // The bounded channel is the back-pressure: the reader waits while
            // the client is slow, and stops when the client goes away.
            tokio::spawn(
                async move {
                    let mut sent = 0u64;
                    while remaining > 0 && !tx.is_closed() {
                        let limit = remaining.min(STREAM_PAGE as u64) as usize;
                        let page = match api.inner.db.page(&query, after.as_ref(), limit, STREAM_PAGE_BYTES).await {
                            Ok(page) => page,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        };
                        for item in page.items {
                            if tx.send(Ok(item.entry)).await.is_err() {
                                debug!(sent, "stream abandoned by the client");
                                return;
                            }
                            sent += 1;
                            remaining -= 1;
                            api.inner.metrics.entries_streamed(1);
                        }
                        match page.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                    debug!(sent, "stream complete");
                }
                .instrument(Span::current()),
            );
            Ok(ReceiverStream::new(rx))
        })
        .await
    }

    #[instrument(name = "DeleteEntry", skip_all, fields(entry = ?shown(&request.get_ref().entry_id)))]
    async fn delete_entry(
        &self,
        request: Request<rpb::DeleteEntryRequest>,
    ) -> Result<Response<rpb::DeleteEntryResponse>, Status> {
        self.track("DeleteEntry", async {
            let r = request.into_inner();
            let id: EntryId = parse(&r.entry_id)?;
            let owner: OwnerId = parse(&r.owner_id)?;
            if r.signature.is_empty() {
                return Err(Error::NotSigned("deletion"));
            }
            check_request_time(r.requested_unix_ms)?;
            let inner = &self.inner;
            let key = inner
                .owner_key(&owner)
                .await?
                .ok_or_else(|| Error::UnknownSigner(format!("owner {owner} is not registered")))?;
            key.verify(&deletion_bytes(&id, &owner, r.requested_unix_ms), &r.signature).map_err(|_| {
                Error::BadSignature(format!(
                    "the deletion's signature does not verify with the registered key of owner {owner}"
                ))
            })?;
            let deleted = match inner.db.entry(&id).await? {
                Some(stored) if stored.entry.owner_id != owner.to_string() => {
                    return Err(Error::Forbidden(format!("entry {id} belongs to another owner")));
                }
                // True also when this finishes a deletion that was cut short.
                Some(stored) => {
                    inner.db.delete_entry(&id, &stored, &owner, now_ms()).await?;
                    true
                }
                // A replayed deletion changes nothing.
                None if inner.db.is_deleted(&id).await? => false,
                None => return Err(Error::NotFound(format!("no entry {id}"))),
            };
            info!(entry = %id, deleted, "entry deleted");
            Ok(rpb::DeleteEntryResponse { deleted })
        })
        .await
    }
}
