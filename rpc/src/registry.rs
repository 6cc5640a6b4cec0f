//! A typed client of the registry, for the owner's node, the party's node
//! and the tests: it signs what it sends, and checks what it receives (ids,
//! hashes, entries) before returning it.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambishare_proto::registry::v1 as rpb;
use ambishare_proto::registry::v1::registry_service_client::RegistryServiceClient;
use ambishare_proto::types::v1 as pb;
use ambishare_shared::crypto::{PublicKey, SigningKey};
use ambishare_shared::entry::{ModelFileRef, deletion_bytes, model_bytes, registration_bytes};
use ambishare_shared::ids::sha256;
use ambishare_shared::{DatasetName, DisplayName, Entry, EntryId, EntrySummary, Manifest, ModelId, OwnerId};
use futures::{Stream, StreamExt, stream};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::error::{Error, Result};

/// Largest message the client sends or accepts: the registry's default
/// `max_message_bytes` (the registry's tests check the two agree).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Size of the chunks a model is uploaded in (the registry sends its downloads
/// in chunks of this size too; either side accepts any size under the message limit).
pub const MODEL_CHUNK_BYTES: usize = 256 << 10;
/// Most entries in one publish message.
pub const PUBLISH_BATCH: usize = 64;
/// Bytes of entries in one publish message, at most (a single larger entry goes alone).
const PUBLISH_BATCH_BYTES: usize = 4 << 20;
/// Largest model a client downloads.
pub const MAX_MODEL_BYTES: u64 = 256 << 20;

/// How to trust an `https://` registry.
#[derive(Clone, Debug, Default)]
pub struct ClientTlsOptions {
    /// PEM of the CA that signed the registry's certificate.
    pub ca_pem: Vec<u8>,
    /// Name the certificate must carry; the URL's host when `None`.
    pub domain: Option<String>,
}

/// What the registry said about one published entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishAck {
    pub entry_id: EntryId,
    pub outcome: PublishOutcome,
    /// `Ok` unless rejected.
    pub code: tonic::Code,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Stored and durable.
    Stored,
    /// The same bytes were already stored.
    AlreadyStored,
    /// Refused (see `code` and `message`); nothing was stored.
    Rejected,
}

impl PublishAck {
    /// True when the registry holds the entry (stored now or before).
    pub fn is_stored(&self) -> bool {
        matches!(self.outcome, PublishOutcome::Stored | PublishOutcome::AlreadyStored)
    }
}

/// A model's manifest and files, every hash checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedModel {
    pub manifest_bytes: Vec<u8>,
    /// Absent when the owner published only the decoder.
    pub encoder: Option<Vec<u8>>,
    pub decoder: Vec<u8>,
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryPage {
    pub entries: Vec<EntrySummary>,
    /// Token of the next page; `None` after the last.
    pub next_page_token: Option<String>,
}

/// A cheap-to-clone client of one registry; calls may run concurrently.
#[derive(Clone, Debug)]
pub struct RegistryClient {
    inner: RegistryServiceClient<Channel>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The messages of a model upload: the signed header, then the files in chunks.
///
/// A named stream rather than combinators over closures: held across an
/// await, the closures' types would keep `publish_model`'s future from being
/// `Send` (rust-lang/rust#110338), and an owner node publishes from a spawned task.
fn model_upload(key: &SigningKey, manifest_bytes: &[u8], encoder: Option<&[u8]>, decoder: &[u8]) -> ModelUpload {
    let owner = key.public_key().owner_id();
    let mut files: Vec<(&'static str, Arc<[u8]>)> = Vec::with_capacity(2);
    if let Some(encoder) = encoder {
        files.push(("encoder", Arc::from(encoder)));
    }
    files.push(("decoder", Arc::from(decoder)));
    let refs: Vec<ModelFileRef> =
        files.iter().map(|(role, data)| ModelFileRef { role, sha256: sha256(data), size: data.len() as u64 }).collect();
    let header = rpb::ModelHeader {
        owner_id: owner.to_string(),
        manifest: manifest_bytes.to_vec(),
        files: refs
            .iter()
            .map(|f| rpb::ModelFile { role: role_of(f.role) as i32, sha256: hex::encode(f.sha256), size: f.size })
            .collect(),
        signature: key.sign(&model_bytes(&owner, manifest_bytes, &refs)).to_vec(),
    };
    ModelUpload {
        header: Some(header),
        files: refs.iter().zip(files).map(|(r, (_, data))| (hex::encode(r.sha256), data)).collect(),
        offset: 0,
    }
}

/// The header, then each file cut lazily into chunks as the stream is sent.
struct ModelUpload {
    header: Option<rpb::ModelHeader>,
    /// Files still to send (sha256 in hex, bytes); the first from `offset`.
    files: std::collections::VecDeque<(String, Arc<[u8]>)>,
    offset: usize,
}

impl Stream for ModelUpload {
    type Item = rpb::PublishModelRequest;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use rpb::publish_model_request::Part;
        if let Some(header) = self.header.take() {
            return std::task::Poll::Ready(Some(rpb::PublishModelRequest { part: Some(Part::Header(header)) }));
        }
        loop {
            let offset = self.offset;
            let Some((sha, data)) = self.files.front() else { return std::task::Poll::Ready(None) };
            if offset >= data.len() {
                self.files.pop_front();
                self.offset = 0;
                continue;
            }
            let end = (offset + MODEL_CHUNK_BYTES).min(data.len());
            let chunk = rpb::FileChunk { sha256: sha.clone(), offset: offset as u64, data: data[offset..end].to_vec() };
            self.offset = end;
            return std::task::Poll::Ready(Some(rpb::PublishModelRequest { part: Some(Part::Chunk(chunk)) }));
        }
    }
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadResponse(reason.into())
}

fn role_of(name: &str) -> rpb::ModelFileRole {
    if name == "encoder" { rpb::ModelFileRole::Encoder } else { rpb::ModelFileRole::Decoder }
}

impl RegistryClient {
    /// Connects to `url`: `http://` in plaintext, `https://` with `tls`.
    pub async fn connect(url: &str, tls: Option<ClientTlsOptions>) -> Result<Self> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| Error::Config(format!("registry url {url:?}: {e}")))?
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let endpoint = match (url.split_once("://").map(|(scheme, _)| scheme), tls) {
            (Some("https"), Some(tls)) => {
                let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(tls.ca_pem));
                if let Some(domain) = tls.domain {
                    config = config.domain_name(domain);
                }
                endpoint.tls_config(config)?
            }
            (Some("https"), None) => {
                return Err(Error::Config(format!(
                    "{url} is https: give the CA of its certificate (ClientTlsOptions)"
                )));
            }
            (Some("http"), None) => endpoint,
            (Some("http"), Some(_)) => {
                return Err(Error::Config(format!("{url} is plaintext http but TLS options were given; use https://")));
            }
            _ => return Err(Error::Config(format!("registry url {url:?} must start with http:// or https://"))),
        };
        Ok(Self::from_channel(endpoint.connect().await?))
    }

    /// A client over an existing channel.
    pub fn from_channel(channel: Channel) -> Self {
        RegistryClient {
            inner: RegistryServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        }
    }

    /// The generated client, for calls this one does not wrap.
    pub fn raw(&self) -> RegistryServiceClient<Channel> {
        self.inner.clone()
    }

    /// Registers the key's owner (idempotent) and returns its id.
    pub async fn register_owner(&self, key: &SigningKey, display_name: &DisplayName) -> Result<OwnerId> {
        let public = key.public_key();
        let requested_unix_ms = now_ms();
        let signature = key.sign(&registration_bytes(&public, display_name.as_str(), requested_unix_ms)).to_vec();
        let request = rpb::RegisterOwnerRequest {
            public_key: public.as_bytes().to_vec(),
            display_name: display_name.to_string(),
            requested_unix_ms,
            signature,
        };
        let response = self.inner.clone().register_owner(request).await?.into_inner();
        let id: OwnerId = response.owner_id.parse().map_err(|_| bad("owner id"))?;
        if id != public.owner_id() {
            return Err(bad(format!("registered as {id}, not as the key's owner {}", public.owner_id())));
        }
        Ok(id)
    }

    /// An owner's public key, checked to hash to `owner`.
    pub async fn get_owner(&self, owner: OwnerId) -> Result<PublicKey> {
        let request = rpb::GetOwnerRequest { owner_id: owner.to_string() };
        let response = self.inner.clone().get_owner(request).await?.into_inner();
        let key = PublicKey::from_bytes(&response.public_key).map_err(|_| bad("public key is not 32 bytes"))?;
        if key.owner_id() != owner {
            return Err(bad(format!("the key offered for owner {owner} hashes to {}", key.owner_id())));
        }
        Ok(key)
    }

    /// Uploads a model signed by `key`; returns its id and whether it was new.
    pub async fn publish_model(
        &self,
        key: &SigningKey,
        manifest_bytes: &[u8],
        encoder: Option<&[u8]>,
        decoder: &[u8],
    ) -> Result<(ModelId, bool)> {
        let requests = model_upload(key, manifest_bytes, encoder, decoder);
        let response = self.inner.clone().publish_model(requests).await?.into_inner();
        let id: ModelId = response.model_id.parse().map_err(|_| bad("model id"))?;
        if id != ModelId::of_manifest(manifest_bytes) {
            return Err(bad(format!("model stored as {id}, not as its manifest's hash")));
        }
        Ok((id, response.created))
    }

    /// Whether the registry holds `model` (it reads the header of a download and drops the rest).
    pub async fn has_model(&self, model: ModelId) -> Result<bool> {
        let request = rpb::GetModelRequest { model_id: model.to_string(), roles: Vec::new() };
        match self.inner.clone().get_model(request).await {
            Ok(response) => {
                let mut parts = response.into_inner();
                match parts.message().await {
                    Ok(_) => Ok(true),
                    Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
                    Err(status) => Err(status.into()),
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(false),
            Err(status) => Err(status.into()),
        }
    }

    /// Downloads a model's manifest and files, checking the id and every hash.
    pub async fn fetch_model(&self, model: ModelId) -> Result<FetchedModel> {
        use rpb::get_model_response::Part;
        let request = rpb::GetModelRequest { model_id: model.to_string(), roles: Vec::new() };
        let mut parts = self.inner.clone().get_model(request).await?.into_inner();
        let Some(rpb::GetModelResponse { part: Some(Part::Header(header)) }) = parts.message().await? else {
            return Err(bad("a model download must start with its header"));
        };
        if ModelId::of_manifest(&header.manifest) != model {
            return Err(bad(format!("the manifest sent for model {model} has another hash")));
        }
        let manifest = Manifest::parse(&header.manifest).map_err(|e| bad(e.to_string()))?;
        // (role, sha256 hex, declared size, bytes)
        let mut files: Vec<(&'static str, String, u64, Vec<u8>)> = Vec::new();
        let mut total = 0u64;
        for f in &header.files {
            let (role, spec) = match rpb::ModelFileRole::try_from(f.role) {
                Ok(rpb::ModelFileRole::Encoder) => ("encoder", manifest.encoder.as_ref()),
                Ok(rpb::ModelFileRole::Decoder) => ("decoder", Some(&manifest.decoder)),
                _ => return Err(bad(format!("unknown file role {}", f.role))),
            };
            if spec.is_none_or(|s| s.sha256 != f.sha256) || files.iter().any(|x| x.0 == role || x.1 == f.sha256) {
                return Err(bad(format!("the {role} file does not match the manifest")));
            }
            total = total.saturating_add(f.size);
            if total > MAX_MODEL_BYTES {
                return Err(bad(format!("model files above {MAX_MODEL_BYTES} bytes")));
            }
            files.push((role, f.sha256.clone(), f.size, Vec::new()));
        }
        while let Some(message) = parts.message().await? {
            let Some(Part::Chunk(chunk)) = message.part else {
                return Err(bad("a second header in a model download"));
            };
            let file =
                files.iter_mut().find(|f| f.1 == chunk.sha256).ok_or_else(|| bad("chunk of an unlisted file"))?;
            if chunk.offset != file.3.len() as u64 || file.3.len() as u64 + chunk.data.len() as u64 > file.2 {
                return Err(bad(format!("chunk of the {} file out of place", file.0)));
            }
            file.3.extend_from_slice(&chunk.data);
        }
        let mut fetched = FetchedModel { manifest_bytes: header.manifest, encoder: None, decoder: Vec::new() };
        let mut have_decoder = false;
        for (role, sha, _, data) in files {
            if hex::encode(sha256(&data)) != sha {
                return Err(bad(format!("the {role} file does not hash to the manifest's {sha}")));
            }
            if role == "encoder" {
                fetched.encoder = Some(data);
            } else {
                fetched.decoder = data;
                have_decoder = true;
            }
        }
        if !have_decoder {
            return Err(bad("the registry sent no decoder"));
        }
        Ok(fetched)
    }

    /// Publishes entries over one stream, in messages of at most
    /// [`PUBLISH_BATCH`] entries; one acknowledgement per entry, in order.
    pub async fn publish(&self, entries: Vec<Entry>) -> Result<Vec<PublishAck>> {
        let ids: Vec<EntryId> = entries.iter().map(|e| e.id).collect();
        let mut messages = Vec::with_capacity(entries.len().div_ceil(PUBLISH_BATCH));
        let mut batch: Vec<pb::Entry> = Vec::new();
        let mut batch_bytes = 0;
        for entry in &entries {
            let p = pb::Entry::from(entry);
            let len = p.encoded_len();
            if !batch.is_empty() && (batch.len() == PUBLISH_BATCH || batch_bytes + len > PUBLISH_BATCH_BYTES) {
                messages.push(rpb::PublishRequest { entries: std::mem::take(&mut batch) });
                batch_bytes = 0;
            }
            batch_bytes += len;
            batch.push(p);
        }
        if !batch.is_empty() {
            messages.push(rpb::PublishRequest { entries: batch });
        }
        drop(entries);
        let mut responses = self.inner.clone().publish(stream::iter(messages)).await?.into_inner();
        let mut acks = Vec::with_capacity(ids.len());
        while let Some(ack) = responses.message().await? {
            let expected = ids.get(acks.len()).ok_or_else(|| bad("more acknowledgements than entries"))?;
            if ack.entry_id != expected.to_string() {
                return Err(bad(format!("acknowledgement for {:?} where {expected} was expected", ack.entry_id)));
            }
            let outcome = match rpb::PublishOutcome::try_from(ack.outcome) {
                Ok(rpb::PublishOutcome::Stored) => PublishOutcome::Stored,
                Ok(rpb::PublishOutcome::AlreadyStored) => PublishOutcome::AlreadyStored,
                Ok(rpb::PublishOutcome::Rejected) => PublishOutcome::Rejected,
                _ => return Err(bad(format!("unknown publish outcome {}", ack.outcome))),
            };
            acks.push(PublishAck {
                entry_id: *expected,
                outcome,
                code: tonic::Code::from(ack.code),
                message: ack.message,
            });
        }
        if acks.len() != ids.len() {
            return Err(bad(format!("{} acknowledgements for {} entries", acks.len(), ids.len())));
        }
        Ok(acks)
    }

    /// One entry, parsed and checked (its signature is the caller's to verify).
    pub async fn get_entry(&self, id: EntryId) -> Result<Entry> {
        let response = self.inner.clone().get_entry(rpb::GetEntryRequest { entry_id: id.to_string() }).await?;
        let entry = Entry::try_from(response.into_inner()).map_err(|e| bad(e.to_string()))?;
        if entry.id != id {
            return Err(bad(format!("asked for entry {id}, got {}", entry.id)));
        }
        Ok(entry)
    }

    /// One page of summaries (`page_size` 0: the registry's default; `page_token` empty: the first page).
    pub async fn list_entries(
        &self,
        owner: Option<OwnerId>,
        dataset: Option<&DatasetName>,
        page_size: u32,
        page_token: &str,
    ) -> Result<EntryPage> {
        let request = rpb::ListEntriesRequest {
            owner_id: owner.map(|o| o.to_string()).unwrap_or_default(),
            dataset: dataset.map(|d| d.to_string()).unwrap_or_default(),
            page_size,
            page_token: page_token.to_owned(),
        };
        let response = self.inner.clone().list_entries(request).await?.into_inner();
        let entries = response
            .entries
            .into_iter()
            .map(EntrySummary::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let next_page_token = Some(response.next_page_token).filter(|t| !t.is_empty());
        Ok(EntryPage { entries, next_page_token })
    }

    /// Every matching entry in publication order, after `after` (a page token
    /// or the id of the last entry already seen). An entry that fails to parse
    /// is an `Err` item and the stream goes on; a transport failure ends it.
    pub async fn stream_entries(
        &self,
        owner: Option<OwnerId>,
        dataset: Option<&DatasetName>,
        after: Option<&str>,
    ) -> Result<impl Stream<Item = Result<Entry>> + Send + 'static> {
        let request = rpb::StreamEntriesRequest {
            owner_id: owner.map(|o| o.to_string()).unwrap_or_default(),
            dataset: dataset.map(|d| d.to_string()).unwrap_or_default(),
            after: after.unwrap_or_default().to_owned(),
            limit: 0,
        };
        let entries = self.inner.clone().stream_entries(request).await?.into_inner();
        Ok(entries.map(|item| match item {
            Ok(p) => {
                let id = p.entry_id.clone();
                Entry::try_from(p).map_err(|e| bad(format!("entry {id:?}: {e}")))
            }
            Err(status) => Err(Error::from(status)),
        }))
    }

    /// Deletes an entry of `key`'s owner; false when it was already deleted.
    pub async fn delete_entry(&self, key: &SigningKey, id: EntryId) -> Result<bool> {
        let owner = key.public_key().owner_id();
        let requested_unix_ms = now_ms();
        let request = rpb::DeleteEntryRequest {
            entry_id: id.to_string(),
            owner_id: owner.to_string(),
            requested_unix_ms,
            signature: key.sign(&deletion_bytes(&id, &owner, requested_unix_ms)).to_vec(),
        };
        Ok(self.inner.clone().delete_entry(request).await?.into_inner().deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpb::publish_model_request::Part;

    #[test]
    fn model_upload_sends_the_header_then_each_file_in_chunks() {
        let (key, _) = SigningKey::generate().unwrap();
        let encoder = vec![7u8; MODEL_CHUNK_BYTES * 2 + 10];
        let decoder = vec![9u8; 5];
        let parts: Vec<Part> = futures::executor::block_on_stream(model_upload(&key, b"{}", Some(&encoder), &decoder))
            .map(|m| m.part.unwrap())
            .collect();
        let Part::Header(header) = &parts[0] else { panic!("header first") };
        assert_eq!(header.files.len(), 2);
        let chunks: Vec<(String, u64, usize)> = parts[1..]
            .iter()
            .map(|p| match p {
                Part::Chunk(c) => (c.sha256.clone(), c.offset, c.data.len()),
                Part::Header(_) => panic!("a second header"),
            })
            .collect();
        let (e, d) = (hex::encode(sha256(&encoder)), hex::encode(sha256(&decoder)));
        let c = MODEL_CHUNK_BYTES;
        assert_eq!(
            chunks,
            vec![(e.clone(), 0, c), (e.clone(), c as u64, c), (e, 2 * c as u64, 10), (d, 0, 5)],
            "offsets and sizes"
        );
        assert_eq!(header.files[0].sha256, chunks[0].0);
    }
}
