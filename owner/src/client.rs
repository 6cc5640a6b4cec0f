//! The owner CLI's client of its own running node ([`AdminClient`]: grants,
//! revocations, the audit log, publish jobs), over mutual TLS with the admin
//! certificate ([`crate::Home::admin_identity`]).
//!
//! The clients other nodes use (the registry's, the key service's) are in
//! `ambishare-rpc`. This one stays here because its publish job speaks in the
//! owner's own types ([`PublishJob`], [`PublishEvent`], [`PublishSummary`]).

use ambishare_proto::owner::v1 as pb;
use ambishare_proto::owner::v1::owner_admin_client::OwnerAdminClient;
use ambishare_rpc::ClientIdentity;
use ambishare_rpc::keys::MAX_RESPONSE_BYTES;
use ambishare_shared::{DatasetName, PartyName};
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result};
use crate::publish::{FileEvent, PublishEvent, PublishJob, PublishSummary};
use crate::types::{AuditEvent, AuditQuery, Grant, GrantOutcome, GrantRequest};

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A channel to the node. Not `ClientIdentity::connect`: the CLI tells a
/// node that is not running ([`Error::Transport`]) from other failures.
async fn channel(url: &str, identity: &ClientIdentity) -> Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::invalid("owner url", e.to_string()))?
        .tls_config(identity.tls_config())?
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(endpoint.connect().await?)
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
        Ok(r.grants.into_iter().map(Grant::try_from).collect::<Result<_, _>>()?)
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

#[cfg(test)]
mod tests {
    #[test]
    fn clients_batch_no_more_ids_than_the_key_service_takes() {
        assert_eq!(ambishare_rpc::keys::MAX_IDS_PER_CALL, crate::MAX_IDS_PER_CALL);
    }
}
