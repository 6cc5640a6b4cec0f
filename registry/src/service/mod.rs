//! `RegistryService`: every request is parsed into checked values here, at the
//! edge, before anything reaches the store: the handlers, with the checks
//! ([`checks`]), the publish path ([`publish`]) and model transfers ([`models`]).

mod checks;
mod models;
mod publish;

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
use ambishare_shared::entry::{deletion_bytes, registration_bytes};
use ambishare_shared::{DisplayName, EntryId, Manifest, ModelId, OwnerId};
use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Instrument, Span, debug, info, instrument};

use crate::config::{
    DEFAULT_PAGE_SIZE, Limits, MAX_CLOCK_SKEW_MS, MAX_CONCURRENT_MODEL_DOWNLOADS, MAX_CONCURRENT_MODEL_UPLOADS,
    MAX_PAGE_SIZE,
};
use crate::db::{Cursor, Db, Query};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::writer::Writer;

/// At most this much of a request's text field goes into a log span (the
/// field is unchecked there, and repeated on every line of the request).
const SHOWN_CHARS: usize = 80;

/// `text` cut to [`SHOWN_CHARS`] characters, for a span field.
fn shown(text: &str) -> &str {
    text.char_indices().nth(SHOWN_CHARS).map_or(text, |(i, _)| &text[..i])
}

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

impl Inner {
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

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

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
        self.track("PublishModel", self.receive_model(request.into_inner())).await
    }

    type GetModelStream = ReceiverStream<Result<rpb::GetModelResponse, Status>>;

    #[instrument(name = "GetModel", skip_all, fields(model = ?shown(&request.get_ref().model_id)))]
    async fn get_model(
        &self,
        request: Request<rpb::GetModelRequest>,
    ) -> Result<Response<Self::GetModelStream>, Status> {
        self.track("GetModel", self.send_model(request.into_inner())).await
    }

    type PublishStream = BoxStream<rpb::PublishAck>;

    #[instrument(name = "Publish", skip_all, fields(peer = ?request.remote_addr()))]
    async fn publish(
        &self,
        request: Request<Streaming<rpb::PublishRequest>>,
    ) -> Result<Response<Self::PublishStream>, Status> {
        self.track("Publish", async { Ok(self.publish_acks(request.into_inner())) }).await
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
            // Pages are read one ahead of the one being sent, so the store's
            // latency (an S3 request per entry) overlaps the sending.
            let (pages_tx, mut pages_rx) = mpsc::channel::<Result<Vec<pb::Entry>>>(1);
            let db = self.inner.db.clone();
            tokio::spawn(
                async move {
                    while remaining > 0 {
                        let limit = remaining.min(STREAM_PAGE as u64) as usize;
                        let page = match db.page(&query, after.as_ref(), limit, STREAM_PAGE_BYTES).await {
                            Ok(page) => page,
                            Err(e) => {
                                let _ = pages_tx.send(Err(e)).await;
                                return;
                            }
                        };
                        remaining -= page.items.len() as u64;
                        let items = page.items.into_iter().map(|item| item.entry).collect();
                        // An error: the sender below is gone (the client left).
                        if pages_tx.send(Ok(items)).await.is_err() {
                            return;
                        }
                        match page.next {
                            Some(next) => after = Some(next),
                            None => return,
                        }
                    }
                }
                .instrument(Span::current()),
            );
            // The bounded channel is the back-pressure: the reader waits while
            // the client is slow, and stops when the client goes away.
            let metrics = self.inner.metrics.clone();
            tokio::spawn(
                async move {
                    let mut sent = 0u64;
                    while let Some(page) = pages_rx.recv().await {
                        let items = match page {
                            Ok(items) => items,
                            Err(e) => {
                                let _ = tx.send(Err(e.into())).await;
                                return;
                            }
                        };
                        for entry in items {
                            if tx.send(Ok(entry)).await.is_err() {
                                debug!(sent, "stream abandoned by the client");
                                return;
                            }
                            sent += 1;
                            metrics.entries_streamed(1);
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
