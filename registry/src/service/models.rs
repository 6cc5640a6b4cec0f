//! Model uploads and downloads: files received in chunks and checked against
//! the signed header, stored as content-addressed blobs, streamed back in chunks.

use ambishare_proto::registry::v1 as rpb;
use ambishare_shared::ModelId;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use tracing::{Instrument, Span, debug, info};

use super::{RegistryApi, parse, parse_sha256, role_name};
use crate::db::Db;
use crate::error::{Error, Result};

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
const MODEL_CHUNK_BYTES: usize = 256 << 10;

impl RegistryApi {
    /// Receives a model upload (the signed header, then its files' chunks) and stores it.
    pub(super) async fn receive_model(
        &self,
        mut inbound: Streaming<rpb::PublishModelRequest>,
    ) -> Result<rpb::PublishModelResponse> {
        use rpb::publish_model_request::Part;
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
    }

    /// The header of a stored model, then the requested files in chunks,
    /// each chunk checked against its hash as it is read from the store.
    pub(super) async fn send_model(
        &self,
        r: rpb::GetModelRequest,
    ) -> Result<ReceiverStream<Result<rpb::GetModelResponse, Status>>> {
        use rpb::get_model_response::Part;
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
}
