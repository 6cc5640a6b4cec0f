//! Typed mTLS clients of an owner node: [`KeyClient`] for a party's node
//! (fetches support keys), [`AdminClient`] for the owner's CLI.

use std::time::Duration;

use ambishare_proto::owner::v1 as pb;
use ambishare_proto::owner::v1::key_service_client::KeyServiceClient;
use ambishare_proto::owner::v1::owner_admin_client::OwnerAdminClient;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::{DatasetName, EntryId, OwnerId, PartyName, SupportKey, Tier};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};
use crate::home::Home;
use crate::publish::{FileEvent, PublishEvent, PublishJob, PublishSummary};
use crate::service::MAX_IDS_PER_CALL;
use crate::types::{AuditEvent, AuditQuery, Denial, Grant, GrantOutcome, GrantRequest};

/// Largest response a client accepts (a batch of large keys).
const MAX_RESPONSE_BYTES: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client's TLS identity: its certificate and key, the CA it trusts for the
/// owner's key service, and the name to check in the service's certificate.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
    /// The owner's server CA.
    pub ca_pem: String,
    /// Expected name in the key service's certificate (`localhost`, or a `--san` given at `init`).
    pub domain: String,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity").field("domain", &self.domain).finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// The owner's admin identity from its home directory (key permissions checked).
    pub fn admin(home: &Home, domain: &str) -> Result<Self> {
        Ok(ClientIdentity {
            cert_pem: home.read_pem("admin.pem")?,
            key_pem: home.read_key_pem("admin.key")?,
            ca_pem: home.read_pem("server-ca.pem")?,
            domain: domain.to_owned(),
        })
    }
}

async fn channel(url: &str, identity: &ClientIdentity) -> Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
        .domain_name(identity.domain.clone());
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::invalid("owner url", e.to_string()))?
        .tls_config(tls)?
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(endpoint.connect().await?)
}

/// A party's view of itself, as the owner sees it.
#[derive(Clone, Debug)]
pub struct WhoAmI {
    pub party: PartyName,
    pub owner_id: OwnerId,
    /// The owner's signing key: entries are verified against it.
    pub owner_public_key: PublicKey,
    pub grants: Vec<Grant>,
}

/// One id's answer: the key, or why it was denied.
pub type KeyAnswer = (EntryId, Result<SupportKey, Denial>);

/// Fetches support keys from an owner's key service over mutual TLS.
#[derive(Clone, Debug)]
pub struct KeyClient {
    inner: KeyServiceClient<Channel>,
    batch: usize,
}

impl KeyClient {
    /// Ids per call by default.
    pub const DEFAULT_BATCH: usize = 1000;

    /// Connects (TLS 1.3: a refused certificate may only show at the first request).
    pub async fn connect(url: &str, identity: ClientIdentity) -> Result<Self> {
        let inner = KeyServiceClient::new(channel(url, &identity).await?).max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(KeyClient { inner, batch: Self::DEFAULT_BATCH })
    }

    /// Ids sent per call (1 to 10,000).
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.clamp(1, MAX_IDS_PER_CALL);
        self
    }

    /// The key (or denial) of every id, in the order given, fetched in batches.
    pub async fn get_keys(&mut self, ids: &[EntryId]) -> Result<Vec<KeyAnswer>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.batch) {
            let request = pb::GetKeysRequest { entry_ids: chunk.iter().map(EntryId::to_string).collect() };
            let response = self.inner.get_keys(request).await?.into_inner();
            if response.results.len() != chunk.len() {
                return Err(Error::Protocol(format!(
                    "asked for {} keys, got {} answers",
                    chunk.len(),
                    response.results.len()
                )));
            }
            for (id, result) in chunk.iter().zip(response.results) {
                out.push((*id, parse_result(id, result)?));
            }
        }
        Ok(out)
    }

    pub async fn who_am_i(&mut self) -> Result<WhoAmI> {
        let r = self.inner.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
        let owner_public_key = PublicKey::from_bytes(&r.owner_public_key)?;
        let owner_id: OwnerId = r.owner_id.parse()?;
        if owner_public_key.owner_id() != owner_id {
            return Err(Error::Protocol("the owner's public key does not match its id".into()));
        }
        Ok(WhoAmI {
            party: r.party.parse()?,
            owner_id,
            owner_public_key,
            grants: r.grants.into_iter().map(Grant::try_from).collect::<Result<_>>()?,
        })
    }
}

fn parse_result(id: &EntryId, result: pb::KeyResult) -> Result<Result<SupportKey, Denial>> {
    if result.entry_id != id.to_string() {
        return Err(Error::Protocol(format!("asked for {id}, got an answer for {:?}", result.entry_id)));
    }
    match result.result {
        Some(pb::key_result::Result::Key(bytes)) => {
            let key = SupportKey::decode(&bytes).map_err(|e| Error::Protocol(format!("key of {id}: {e}")))?;
            let tier = Tier::try_from(result.tier).map_err(|e| Error::Protocol(format!("key of {id}: {e}")))?;
            if key.tier() != tier {
                return Err(Error::Protocol(format!("key of {id} is {} but announced as {tier}", key.tier())));
            }
            Ok(Ok(key))
        }
        Some(pb::key_result::Result::Denial(d)) => {
            Ok(Err(Denial::try_from(d).map_err(|e| Error::Protocol(format!("denial of {id}: {e}")))?))
        }
        None => Err(Error::Protocol(format!("no answer for {id}"))),
    }
}

/// The owner's admin client (used by the CLI against a running `serve`).
#[derive(Clone, Debug)]
pub struct AdminClient {
    inner: OwnerAdminClient<Channel>,
}

impl AdminClient {
    pub async fn connect(url: &str, identity: ClientIdentity) -> Result<Self> {
        let inner = OwnerAdminClient::new(channel(url, &identity).await?).max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(AdminClient { inner })
    }

    pub async fn grant(&mut self, request: &GrantRequest) -> Result<GrantOutcome> {
        let r = self.inner.grant(pb::GrantRequest::from(request)).await?.into_inner();
        let grant = r.grant.ok_or_else(|| Error::Protocol("grant response without the grant".into()))?;
        Ok(GrantOutcome {
            grant: Grant::try_from(grant)?,
            certificate_pem: (!r.certificate_pem.is_empty()).then_some(r.certificate_pem),
            server_ca_pem: r.server_ca_pem,
            owner_id: r.owner_id.parse()?,
        })
    }

    pub async fn revoke(&mut self, party: &PartyName, dataset: Option<&DatasetName>) -> Result<u32> {
        let request = pb::RevokeRequest {
            party: party.to_string(),
            dataset: dataset.map(ToString::to_string).unwrap_or_default(),
        };
        Ok(self.inner.revoke(request).await?.into_inner().revoked)
    }

    pub async fn list_grants(&mut self, party: Option<&PartyName>) -> Result<Vec<Grant>> {
        let request = pb::ListGrantsRequest { party: party.map(ToString::to_string).unwrap_or_default() };
        let r = self.inner.list_grants(request).await?.into_inner();
        r.grants.into_iter().map(Grant::try_from).collect()
    }

    pub async fn audit_log(&mut self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let request = pb::AuditLogRequest {
            after_seq: query.after_seq,
            limit: query.limit,
            party: query.party.clone().unwrap_or_default(),
        };
        let r = self.inner.audit_log(request).await?.into_inner();
        r.events.into_iter().map(AuditEvent::try_from).collect()
    }

    /// Has the node publish `job` (its paths absolute, on the node's machine),
    /// calling `on_event` as the node reports progress. Dropping the future
    /// stops the job after its current batch; running it again resumes it.
    pub async fn publish(
        &mut self,
        job: &PublishJob,
        mut on_event: impl FnMut(&PublishEvent),
    ) -> Result<PublishSummary> {
        let request = pb::PublishJobRequest::try_from(job)?;
        let mut stream = self.inner.publish(request).await?.into_inner();
        let mut summary = PublishSummary::default();
        while let Some(message) = stream.message().await? {
            match message.event {
                Some(pb::publish_job_event::Event::Started(s)) => {
                    let files = usize::try_from(s.files).unwrap_or(usize::MAX);
                    let resend = usize::try_from(s.resend).unwrap_or(usize::MAX);
                    on_event(&PublishEvent::Started { files, resend });
                }
                Some(pb::publish_job_event::Event::File(f)) => {
                    let event = FileEvent::try_from(f)?;
                    summary.record(&event);
                    on_event(&PublishEvent::File(event));
                }
                Some(pb::publish_job_event::Event::Summary(counts)) => {
                    if !summary.matches(&counts) {
                        return Err(Error::Protocol(format!(
                            "the node's summary ({counts:?}) does not match the files it reported ({})",
                            summary
                        )));
                    }
                    summary.files.sort();
                    summary.interrupted = counts.interrupted;
                    return Ok(summary);
                }
                None => return Err(Error::Protocol("a publish event without content".into())),
            }
        }
        Err(Error::Protocol("the publish stream ended without a summary".into()))
    }
}
