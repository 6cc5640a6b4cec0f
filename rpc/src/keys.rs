//! The typed mTLS client of an owner's key service ([`KeyClient`]: a party
//! fetches its entry keys), and the TLS identity every client of an owner
//! node presents ([`ClientIdentity`], also the owner CLI's admin identity).

use std::time::Duration;

use ambishare_proto::owner::v1 as pb;
use ambishare_proto::owner::v1::key_service_client::KeyServiceClient;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::{EntryId, EntryKey, OwnerId, PartyName, Tier};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};
use crate::grant::{Denial, Grant};

/// Largest response a client of an owner node accepts (a batch of large keys).
pub const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Most entry ids in one `GetKeys` call: the key service refuses more.
pub const MAX_IDS_PER_CALL: usize = 10_000;
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
    /// The TLS settings of a connection to the owner's node: trust its server
    /// CA only, present this certificate, check `domain`.
    pub fn tls_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .domain_name(self.domain.clone())
    }

    /// A channel to the owner's node at `url` over mutual TLS.
    pub async fn connect(&self, url: &str) -> Result<Channel> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Error::Config(format!("owner url {url:?}: {e}")))?
            .tls_config(self.tls_config())?
            .connect_timeout(CONNECT_TIMEOUT);
        Ok(endpoint.connect().await?)
    }
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadResponse(reason.into())
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
pub type KeyAnswer = (EntryId, Result<EntryKey, Denial>);

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
        let inner = KeyServiceClient::new(identity.connect(url).await?).max_decoding_message_size(MAX_RESPONSE_BYTES);
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
                return Err(bad(format!("asked for {} keys, got {} answers", chunk.len(), response.results.len())));
            }
            for (id, result) in chunk.iter().zip(response.results) {
                out.push((*id, parse_result(id, result)?));
            }
        }
        Ok(out)
    }

    pub async fn who_am_i(&mut self) -> Result<WhoAmI> {
        let r = self.inner.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
        let owner_public_key = PublicKey::from_bytes(&r.owner_public_key).map_err(|e| bad(e.to_string()))?;
        let owner_id: OwnerId = r.owner_id.parse().map_err(|e: ambishare_shared::Error| bad(e.to_string()))?;
        if owner_public_key.owner_id() != owner_id {
            return Err(bad("the owner's public key does not match its id"));
        }
        Ok(WhoAmI {
            party: r.party.parse().map_err(|e: ambishare_shared::Error| bad(e.to_string()))?,
            owner_id,
            owner_public_key,
            grants: r
                .grants
                .into_iter()
                .map(Grant::try_from)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(e.to_string()))?,
        })
    }
}

fn parse_result(id: &EntryId, result: pb::KeyResult) -> Result<Result<EntryKey, Denial>> {
    if result.entry_id != id.to_string() {
        return Err(bad(format!("asked for {id}, got an answer for {:?}", result.entry_id)));
    }
    match result.result {
        Some(pb::key_result::Result::Key(bytes)) => {
            let key = EntryKey::decode(&bytes).map_err(|e| bad(format!("key of {id}: {e}")))?;
            let tier = Tier::try_from(result.tier).map_err(|e| bad(format!("key of {id}: {e}")))?;
            if key.tier() != tier {
                return Err(bad(format!("key of {id} is {} but announced as {tier}", key.tier())));
            }
            Ok(Ok(key))
        }
        Some(pb::key_result::Result::Denial(d)) => {
            Ok(Err(Denial::try_from(d).map_err(|e| bad(format!("denial of {id}: {e}")))?))
        }
        None => Err(bad(format!("no answer for {id}"))),
    }
}
