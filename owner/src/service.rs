//! The key service and the admin service, over mutual TLS on one listener.
//!
//! TLS requires a client certificate issued by the owner's client CA. Every
//! request is then authorized from its peer certificate against the store:
//! the admin is the holder of `tls/admin.pem` (by SHA-256 fingerprint), a
//! party the holder of a certificate recorded for it and not revoked. Nothing
//! is cached, so a revocation applies to the very next request, also on a
//! connection that is already open.
//!
//! An admin's `Publish` runs the publish job in this process, which holds the
//! store, one job at a time; its CPU work runs on blocking threads, so keys go
//! on being served meanwhile.

use std::collections::HashMap;
use std::future::Future;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ambishare_proto::owner::v1 as pb;
use ambishare_proto::owner::v1::key_service_server::{KeyService, KeyServiceServer};
use ambishare_proto::owner::v1::owner_admin_server::{OwnerAdmin, OwnerAdminServer};
use ambishare_proto::types::v1 as types_pb;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::{
    DatasetName, Entry, EntryId, Manifest, MasterSecret, ModelId, OwnerId, PartyName, SupportKey, Tier,
};
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, instrument};

use crate::admin::AdminOps;
use crate::error::{Error, Result};
use crate::home::{Home, Keyring};
use crate::pki::{Fingerprint, PeerCert, fingerprint, pem_to_der};
use crate::publish::{PublishEvent, PublishJob, Publisher};
use crate::store::{KeyMaterial, OwnerStore};
use crate::types::{AuditEvent, AuditQuery, Denial, Grant, now_unix_ms};

/// Most entry ids in one `GetKeys` call.
pub const MAX_IDS_PER_CALL: usize = 10_000;
/// Longest id text copied into an audit record.
const MAX_AUDITED_ID_LEN: usize = 64;
/// Ids of a wholly refused call recorded one by one; the rest are counted.
const MAX_AUDITED_REFUSED_IDS: usize = 32;

/// How `serve` runs.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The owner's home directory (made by `init`).
    pub home: PathBuf,
    /// Flush the audit log to disk before answering each `GetKeys` call, so
    /// no released key is missing from the log after a crash.
    pub audit_sync: bool,
}

impl ServeConfig {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        ServeConfig { home: home.into(), audit_sync: true }
    }
}

/// Serves `KeyService` and `OwnerAdmin` over mutual TLS on `listener` until
/// `shutdown` completes. Refuses to start when a key file has loose
/// permissions or the store is held by another process. On shutdown, a
/// running publish job stops after its current batch, and is waited for.
pub async fn serve(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let home = Home::new(&config.home);
    home.check_key_permissions()?;
    let signing = Arc::new(home.load_signing_key()?);
    let public_key = signing.public_key();
    let owner = public_key.owner_id();
    let keyring = Arc::new(Keyring::load(&home)?);
    let store_dir = home.store_dir();
    let store = Arc::new(blocking(move || OwnerStore::open(&store_dir)).await?);
    let master = {
        let (store, keyring) = (store.clone(), keyring.clone());
        Arc::new(blocking(move || store.master_secret(&keyring)).await?)
    };
    let admin = AdminOps::new(&home, store.clone(), owner)?;
    let admin_fingerprint = fingerprint(&pem_to_der(&home.read_pem("admin.pem")?)?);
    // Certificates refused in the handshake are audited into the store.
    let tls = crate::tls::server_config(
        &home.read_pem("server.pem")?,
        &home.read_key_pem("server.key")?,
        &home.read_pem("client-ca.pem")?,
        Arc::downgrade(&store),
    )?;
    let state = Arc::new(State {
        store: store.clone(),
        keyring: keyring.clone(),
        master,
        owner,
        public_key,
        admin_fingerprint,
        admin,
        audit_sync: config.audit_sync,
        audit_flush: GroupFlush::default(),
        preview_k: Mutex::new(HashMap::new()),
        publisher: Publisher::new(store.clone(), keyring, signing),
        publish_slot: Arc::new(tokio::sync::Mutex::new(())),
        stopping: AtomicBool::new(false),
    });
    let shutdown = {
        let state = state.clone();
        async move {
            shutdown.await;
            // A publish job's stream would hold the graceful shutdown until the job ends.
            state.stopping.store(true, Ordering::Relaxed);
        }
    };
    let addr = listener.local_addr().map_err(|e| Error::io("reading the listener's address", e))?;
    tracing::info!(owner = %owner, %addr, "key service listening (mutual TLS)");
    let (incoming, accepting) = crate::tls::incoming(listener, tls);
    let served = Server::builder()
        .add_service(KeyServiceServer::new(KeyServiceImpl(state.clone())))
        .add_service(OwnerAdminServer::new(OwnerAdminImpl(state.clone())))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    accepting.abort();
    let _ = accepting.await;
    served?;
    // A publish job whose caller went away may still be finishing its batch.
    drop(state.publish_slot.lock().await);
    drop(state);
    store.flush_async().await?;
    tracing::info!("key service stopped");
    Ok(())
}

/// Group commit: a caller that wrote something asks for it to be durable;
/// one flush at a time covers every write made before it started, so under
/// load many calls share one flush. (Concurrent `flush_async` calls also
/// starve sled 0.34's I/O threads: each blocks one waiting for a buffer that
/// only another of them can write.)
#[derive(Default)]
struct GroupFlush {
    /// Writes counted so far.
    written: std::sync::atomic::AtomicU64,
    /// How many of them the last completed flush covered.
    flushed: tokio::sync::Mutex<u64>,
}

impl GroupFlush {
    /// Counts a finished write; returns its mark for [`GroupFlush::durable`].
    fn written(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Returns once the write marked `mark` is on disk.
    async fn durable(&self, store: &Arc<OwnerStore>, mark: u64) -> Result<()> {
        let mut flushed = self.flushed.lock().await;
        if *flushed >= mark {
            return Ok(());
        }
        // Every write counted before this point is in the store: the flush covers it.
        let target = self.written.load(Ordering::Acquire);
        let store = store.clone();
        blocking(move || store.flush()).await?;
        *flushed = target;
        Ok(())
    }
}

struct State {
    store: Arc<OwnerStore>,
    keyring: Arc<Keyring>,
    /// Every v3 entry's key derives from it.
    master: Arc<MasterSecret>,
    owner: OwnerId,
    public_key: PublicKey,
    admin_fingerprint: Fingerprint,
    admin: AdminOps,
    audit_sync: bool,
    /// Group commit of the audit log (when `audit_sync`).
    audit_flush: GroupFlush,
    /// k of preview keys per model (None: the model is unknown here).
    preview_k: Mutex<HashMap<ModelId, Option<u16>>>,
    publisher: Publisher,
    /// Held by the running publish job (one at a time).
    publish_slot: Arc<tokio::sync::Mutex<()>>,
    /// The node is shutting down: a running publish job stops after its batch.
    stopping: AtomicBool,
}

/// The leaf certificate the peer presented (TLS has verified it against the client CA).
fn peer_cert<T>(request: &Request<T>) -> Result<PeerCert> {
    let certs = request.peer_certs().ok_or_else(|| Error::Unauthenticated("no client certificate".into()))?;
    let leaf = certs.first().ok_or_else(|| Error::Unauthenticated("no client certificate".into()))?;
    PeerCert::parse(leaf.as_ref())
}

/// An id as given, safe to store in the audit log.
fn audited_id(raw: &str) -> String {
    raw.chars().filter(|c| !c.is_control()).take(MAX_AUDITED_ID_LEN).collect()
}

/// Runs blocking work (sled, crypto) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("worker task failed: {e}")))?
}

impl State {
    /// The party a peer certificate belongs to, or the refusal (with why, for the audit log).
    fn party_of(&self, peer: &Result<PeerCert>) -> Result<PartyName, (Error, String, Denial)> {
        let peer = match peer {
            Ok(p) => p,
            Err(e) => {
                return Err((Error::Unauthenticated(e.to_string()), "unauthenticated".into(), Denial::NotGranted));
            }
        };
        let record = match self.store.cert(&peer.fingerprint) {
            Ok(r) => r,
            Err(e) => return Err((e, peer.describe(), Denial::NotGranted)),
        };
        let Some(cert) = record else {
            let why = if peer.fingerprint == self.admin_fingerprint {
                "the admin certificate is not a party's"
            } else {
                "certificate not enrolled"
            };
            return Err((Error::PermissionDenied(why.into()), peer.describe(), Denial::NotGranted));
        };
        if cert.revoked_unix_ms.is_some() {
            return Err((
                Error::Denied { denial: Denial::Revoked, reason: "certificate revoked" },
                cert.party.to_string(),
                Denial::Revoked,
            ));
        }
        // The handshake checked the validity period when the connection opened;
        // a connection can outlive the certificate.
        if cert.not_after_unix_ms <= now_unix_ms() {
            return Err((
                Error::Denied { denial: Denial::Expired, reason: "certificate expired" },
                cert.party.to_string(),
                Denial::Expired,
            ));
        }
        if peer.common_name.as_deref() != Some(cert.party.as_str()) {
            return Err((
                Error::PermissionDenied("certificate name does not match its record".into()),
                peer.describe(),
                Denial::NotGranted,
            ));
        }
        Ok(cert.party)
    }

    /// Answers a `GetKeys` call and appends its audit events (one batch).
    fn get_keys(&self, peer: Result<PeerCert>, ids: Vec<String>, span: &Span) -> Result<pb::GetKeysResponse> {
        let _entered = span.enter();
        let party = match self.party_of(&peer) {
            Ok(p) => p,
            Err((error, who, denial)) => {
                span.record("party", who.as_str());
                let reason = error.to_string();
                // A refused peer chooses how many ids it sends: the first few are
                // recorded one by one, the rest counted in one more record.
                let mut events: Vec<AuditEvent> = if ids.is_empty() {
                    vec![AuditEvent::new("GetKeys", who.as_str()).denied("", denial).detail(reason.clone())]
                } else {
                    ids.iter()
                        .take(MAX_AUDITED_REFUSED_IDS)
                        .map(|id| {
                            AuditEvent::new("GetKeys", who.as_str()).denied(audited_id(id), denial).detail(&reason)
                        })
                        .collect()
                };
                if ids.len() > MAX_AUDITED_REFUSED_IDS {
                    let more = ids.len() - MAX_AUDITED_REFUSED_IDS;
                    events.push(
                        AuditEvent::new("GetKeys", who.as_str())
                            .denied("", denial)
                            .detail(format!("{reason}; and {more} more ids in the same call")),
                    );
                }
                self.store.append_audit(&mut events)?;
                return Err(error);
            }
        };
        span.record("party", party.as_str());
        let now = now_unix_ms();
        let grants: HashMap<DatasetName, Grant> =
            self.store.grants(Some(&party))?.into_iter().map(|g| (g.dataset.clone(), g)).collect();
        let mut results = Vec::with_capacity(ids.len());
        let mut events = Vec::with_capacity(ids.len());
        let (mut released, mut denied) = (0usize, 0usize);
        for raw in ids {
            let event = AuditEvent::new("GetKeys", party.as_str());
            let (result, event) = match self.release(&grants, now, &raw)? {
                Ok((key, tier)) => {
                    released += 1;
                    let result = pb::KeyResult {
                        entry_id: raw.clone(),
                        result: Some(pb::key_result::Result::Key(key)),
                        tier: types_pb::Tier::from(tier) as i32,
                    };
                    (result, event.released(audited_id(&raw), tier))
                }
                Err(denial) => {
                    denied += 1;
                    let result = pb::KeyResult {
                        entry_id: raw.clone(),
                        result: Some(pb::key_result::Result::Denial(pb::Denial::from(denial) as i32)),
                        tier: types_pb::Tier::Unspecified as i32,
                    };
                    (result, event.denied(audited_id(&raw), denial))
                }
            };
            results.push(result);
            events.push(event);
        }
        self.store.append_audit(&mut events)?;
        tracing::info!(released, denied, "keys answered");
        Ok(pb::GetKeysResponse { results })
    }

    /// The key of one entry at the tier the party's grant allows, or why not.
    fn release(
        &self,
        grants: &HashMap<DatasetName, Grant>,
        now: i64,
        raw: &str,
    ) -> Result<Result<(Vec<u8>, Tier), Denial>> {
        let Ok(id) = raw.parse::<EntryId>() else { return Ok(Err(Denial::InvalidId)) };
        let Some(entry) = self.store.entry(&id)? else { return Ok(Err(Denial::UnknownEntry)) };
        let Some(grant) = grants.get(&entry.dataset) else { return Ok(Err(Denial::NotGranted)) };
        let tier = match grant.check(now) {
            Ok(t) => t,
            Err(d) => return Ok(Err(d)),
        };
        let material =
            self.store.key_material(&id)?.ok_or_else(|| Error::corrupt("keys", format!("no key material for {id}")))?;
        let sealed = match material {
            KeyMaterial::Derived { tag, bands } => {
                // Format v3: derived on the spot; a preview is the smallest tier's secret.
                let full = self.master.entry_key(&tag, &bands);
                let key = match tier {
                    Tier::Full => full,
                    Tier::Preview => {
                        full.preview(bands.bounds()[0]).map_err(|e| Error::corrupt("tags", e.to_string()))?
                    }
                };
                return Ok(Ok((key.encode(), tier)));
            }
            KeyMaterial::Sealed(sealed) => sealed,
        };
        let full = self.keyring.open(&sealed, id.as_bytes())?;
        match tier {
            Tier::Full => Ok(Ok((full, Tier::Full))),
            Tier::Preview => {
                // Stored data that does not parse is our fault, never the caller's.
                let full = SupportKey::decode(&full).map_err(|e| Error::corrupt("keys", e.to_string()))?;
                let signed =
                    self.store.signed_entry(&id)?.ok_or_else(|| Error::corrupt("signed", format!("{id} missing")))?;
                let entry = types_pb::Entry::decode(signed.as_slice())
                    .map_err(|e| Error::corrupt("signed", e.to_string()))
                    .and_then(|p| Entry::try_from(p).map_err(|e| Error::corrupt("signed", e.to_string())))?;
                let k = self.preview_k(&entry.model, full.kept())?;
                let preview = full.preview(&entry.code, k).map_err(|e| Error::corrupt("keys", e.to_string()))?;
                Ok(Ok((preview.encode(), Tier::Preview)))
            }
        }
    }

    /// Nonzeros a preview keeps: the model's first `preview_k`, else k/2.
    fn preview_k(&self, model: &ModelId, k: u16) -> Result<u16> {
        let mut cache = self.preview_k.lock().map_err(|_| Error::Internal("preview cache lock poisoned".into()))?;
        let configured = match cache.get(model) {
            Some(v) => *v,
            None => {
                let v = match self.store.model_manifest(model)? {
                    Some(bytes) => Manifest::parse(&bytes)
                        .map_err(|e| Error::corrupt("models", e.to_string()))?
                        .preview_k
                        .first()
                        .copied(),
                    None => None,
                };
                cache.insert(*model, v);
                v
            }
        };
        Ok(configured.filter(|&p| p >= 1 && p <= k).unwrap_or((k / 2).max(1)))
    }

    /// Refuses anyone but the admin certificate, recording the refusal.
    fn require_admin(&self, peer: &Result<PeerCert>, action: &str) -> Result<()> {
        let (who, error) = match peer {
            Ok(p) if p.fingerprint == self.admin_fingerprint => return Ok(()),
            Ok(p) => {
                let who = match self.store.cert(&p.fingerprint) {
                    Ok(Some(cert)) => cert.party.to_string(),
                    _ => p.describe(),
                };
                (who, Error::PermissionDenied("only the owner's admin certificate may call OwnerAdmin".into()))
            }
            Err(e) => ("unauthenticated".to_string(), Error::Unauthenticated(e.to_string())),
        };
        let mut event = AuditEvent::new(action, who);
        event.result = Some(crate::types::AuditResult::Denied);
        event.detail = "refused: not the admin certificate".into();
        self.store.append_audit(&mut [event])?;
        self.store.flush()?;
        Err(error)
    }
}

struct KeyServiceImpl(Arc<State>);

#[tonic::async_trait]
impl KeyService for KeyServiceImpl {
    #[instrument(skip_all, fields(party, count))]
    async fn get_keys(&self, request: Request<pb::GetKeysRequest>) -> Result<Response<pb::GetKeysResponse>, Status> {
        let peer = peer_cert(&request);
        let ids = request.into_inner().entry_ids;
        let span = Span::current();
        span.record("count", ids.len());
        if ids.len() > MAX_IDS_PER_CALL {
            return Err(Error::invalid("entry ids", format!("at most {MAX_IDS_PER_CALL} per call")).into());
        }
        let state = self.0.clone();
        let answer = blocking(move || {
            let answer = state.get_keys(peer, ids, &span);
            // Marked after the audit records were written, whatever the answer.
            Ok((answer, state.audit_flush.written()))
        })
        .await;
        let (answer, mark) = answer?;
        if self.0.audit_sync {
            self.0.audit_flush.durable(&self.0.store, mark).await?;
        }
        Ok(Response::new(answer?))
    }

    #[instrument(skip_all, fields(party))]
    async fn who_am_i(&self, request: Request<pb::WhoAmIRequest>) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let peer = peer_cert(&request);
        let state = self.0.clone();
        let span = Span::current();
        let response = blocking(move || {
            let _entered = span.enter();
            let party = match state.party_of(&peer) {
                Ok(p) => p,
                Err((error, who, denial)) => {
                    let mut event = AuditEvent::new("WhoAmI", who).denied("", denial).detail(error.to_string());
                    state.store.append_audit(std::slice::from_mut(&mut event))?;
                    state.store.flush()?;
                    return Err(error);
                }
            };
            span.record("party", party.as_str());
            let grants = state.store.grants(Some(&party))?;
            Ok(pb::WhoAmIResponse {
                party: party.to_string(),
                owner_id: state.owner.to_string(),
                owner_public_key: state.public_key.as_bytes().to_vec(),
                grants: grants.iter().map(pb::GrantInfo::from).collect(),
            })
        })
        .await?;
        Ok(Response::new(response))
    }
}

struct OwnerAdminImpl(Arc<State>);

impl OwnerAdminImpl {
    /// Checks the admin certificate, then runs `f` on the admin operations off the async threads.
    async fn admin<T: Send + 'static, R>(
        &self,
        request: Request<R>,
        action: &'static str,
        f: impl FnOnce(&AdminOps, R) -> Result<T> + Send + 'static,
    ) -> Result<T>
    where
        R: Send + 'static,
    {
        let peer = peer_cert(&request);
        let message = request.into_inner();
        let state = self.0.clone();
        blocking(move || {
            state.require_admin(&peer, action)?;
            f(&state.admin, message)
        })
        .await
    }
}

fn optional<T: std::str::FromStr<Err = ambishare_shared::Error>>(s: &str) -> Result<Option<T>> {
    if s.is_empty() { Ok(None) } else { Ok(Some(s.parse()?)) }
}

#[tonic::async_trait]
impl OwnerAdmin for OwnerAdminImpl {
    #[instrument(skip_all)]
    async fn grant(&self, request: Request<pb::GrantRequest>) -> Result<Response<pb::GrantResponse>, Status> {
        let outcome = self
            .admin(request, "Grant", |ops, message| ops.grant(crate::types::GrantRequest::try_from(message)?))
            .await?;
        Ok(Response::new(pb::GrantResponse {
            grant: Some(pb::GrantInfo::from(&outcome.grant)),
            certificate_pem: outcome.certificate_pem.unwrap_or_default(),
            server_ca_pem: outcome.server_ca_pem,
            owner_id: outcome.owner_id.to_string(),
        }))
    }

    #[instrument(skip_all)]
    async fn revoke(&self, request: Request<pb::RevokeRequest>) -> Result<Response<pb::RevokeResponse>, Status> {
        let revoked = self
            .admin(request, "Revoke", |ops, message| {
                let party: PartyName = message.party.parse()?;
                let dataset: Option<DatasetName> = optional(&message.dataset)?;
                ops.revoke(&party, dataset.as_ref())
            })
            .await?;
        Ok(Response::new(pb::RevokeResponse { revoked }))
    }

    #[instrument(skip_all)]
    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let grants = self
            .admin(request, "ListGrants", |ops, message| {
                let party: Option<PartyName> = optional(&message.party)?;
                ops.list_grants(party.as_ref())
            })
            .await?;
        Ok(Response::new(pb::ListGrantsResponse { grants: grants.iter().map(pb::GrantInfo::from).collect() }))
    }

    #[instrument(skip_all)]
    async fn audit_log(&self, request: Request<pb::AuditLogRequest>) -> Result<Response<pb::AuditLogResponse>, Status> {
        let events = self
            .admin(request, "AuditLog", |ops, message| {
                let query = AuditQuery {
                    after_seq: message.after_seq,
                    limit: message.limit,
                    party: (!message.party.is_empty()).then_some(message.party),
                };
                ops.audit_log(&query)
            })
            .await?;
        Ok(Response::new(pb::AuditLogResponse { events: events.iter().map(pb::AuditEvent::from).collect() }))
    }

    type PublishStream = UnboundedReceiverStream<Result<pb::PublishJobEvent, Status>>;

    #[instrument(skip_all, fields(dataset))]
    async fn publish(&self, request: Request<pb::PublishJobRequest>) -> Result<Response<Self::PublishStream>, Status> {
        let peer = peer_cert(&request);
        let state = self.0.clone();
        blocking(move || state.require_admin(&peer, "Publish")).await?;
        let job = PublishJob::try_from(request.into_inner())?;
        Span::current().record("dataset", job.dataset.as_str());
        let slot = self.0.publish_slot.clone().try_lock_owned().map_err(|_| {
            Error::FailedPrecondition("a publish job is already running on this node; wait for it to finish".into())
        })?;
        tracing::info!(inputs = job.inputs.len(), "publish job started");
        let (tx, rx) = mpsc::unbounded_channel();
        let state = self.0.clone();
        tokio::spawn(
            async move {
                let publisher = state.publisher.clone();
                let events = tx.clone();
                // Stop after the current batch once the caller is gone or the node stops.
                let mut on_event = move |event: &PublishEvent| {
                    let sent = events.send(Ok(pb::PublishJobEvent::from(event))).is_ok();
                    if sent && !state.stopping.load(Ordering::Relaxed) {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                };
                let result = publisher.run(job, &mut on_event).await;
                drop(on_event);
                drop(publisher);
                let last = match result {
                    Ok(summary) => {
                        tracing::info!(summary = %summary, "publish job done");
                        Ok(pb::PublishJobEvent {
                            event: Some(pb::publish_job_event::Event::Summary(pb::PublishJobSummary::from(&summary))),
                        })
                    }
                    Err(e) => Err(Status::from(e)),
                };
                // The caller may be gone: the job's outcome is in the log and the audit log.
                let _ = tx.send(last);
                drop(slot);
            }
            .instrument(Span::current()),
        );
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}
