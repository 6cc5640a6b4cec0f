//! The blob half: content-addressed files, stored as chunks and a manifest.
//!
//! A blob is cut into chunks of [`CHUNK_SIZE`] bytes (the last one shorter),
//! each stored create-if-absent under its own SHA-256, then a manifest (the
//! blob's length and its chunks' hashes) under the blob's SHA-256. The
//! manifest is written last, so a blob is visible only once all its chunks
//! are: a reader never meets half a blob, and writers of the same bytes,
//! even at once, write the same chunks and one manifest. Chunks without a
//! manifest (a writer that stopped midway) are garbage, never wrong data.
//! Reads check every chunk against the manifest and the whole against the
//! blob's id.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, FuturesUnordered, StreamExt};
use ring::digest::{Context, SHA256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{Error, Result};
use crate::kv::{KvStore, Namespace};

/// The size of every chunk but a blob's last: large enough that per-object
/// costs vanish on S3, small enough that a writer holds few in memory.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Chunk SHA-256 → the chunk's bytes.
pub(crate) const CHUNKS: Namespace = Namespace::internal("_blob_chunks");
/// Blob SHA-256 → its manifest.
pub(crate) const MANIFESTS: Namespace = Namespace::internal("_blob_manifests");

/// Chunks a writer uploads at once (bounds its memory to about this many chunks).
const UPLOADS_IN_FLIGHT: usize = 4;
/// Chunks a reader fetches ahead of the one it hands out.
const READ_AHEAD: usize = 2;

/// A blob's SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobId([u8; 32]);

impl BlobId {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        BlobId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id of `data` (its SHA-256).
    pub fn of(data: &[u8]) -> Self {
        BlobId(sha256(data))
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    digest_bytes(ring::digest::digest(&SHA256, data))
}

fn digest_bytes(digest: ring::digest::Digest) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl fmt::Display for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({self})")
    }
}

impl FromStr for BlobId {
    type Err = Error;
    /// 64 hex digits.
    fn from_str(s: &str) -> Result<Self> {
        let mut out = [0; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| Error::InvalidInput(format!("blob id {s:?} is not a SHA-256 in hex: {e}")))?;
        Ok(BlobId(out))
    }
}

/// A stored blob's id and length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    pub len: u64,
}

/// Pieces of a blob being written, of any sizes (a gRPC stream's messages).
pub type ChunkStream<'a> = BoxStream<'a, io::Result<Bytes>>;

/// A blob being read: its chunks in order. It ends with an error, instead
/// of the last chunk, when the stored bytes fail their check; a reader must
/// take the blob as good only once the stream ended without error.
pub type BlobStream = BoxStream<'static, Result<Bytes>>;

/// A blob found by [`BlobStore::get_blob`].
pub struct Blob {
    pub info: BlobInfo,
    pub chunks: BlobStream,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Content-addressed, immutable blobs, written and read as streams.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the bytes of `pieces` and returns their id and length.
    /// Storing bytes already stored is no error (and returns the same id).
    async fn put_blob(&self, pieces: ChunkStream<'_>) -> Result<BlobInfo>;

    /// The blob `id`, or [`Error::NotFound`].
    async fn get_blob(&self, id: &BlobId) -> Result<Blob>;

    /// The blob's length, or None when it is not stored.
    async fn blob_len(&self, id: &BlobId) -> Result<Option<u64>>;

    async fn has_blob(&self, id: &BlobId) -> Result<bool> {
        Ok(self.blob_len(id).await?.is_some())
    }

    /// Stores what `reader` yields until its end.
    async fn put_blob_from_reader(&self, reader: &mut (dyn AsyncRead + Send + Unpin)) -> Result<BlobInfo> {
        self.put_blob(reader_pieces(reader)).await
    }

    /// Stores one in-memory value.
    async fn put_blob_bytes(&self, data: Bytes) -> Result<BlobInfo> {
        self.put_blob(stream::iter([Ok(data)]).boxed()).await
    }

    /// Reads a whole blob into memory, refusing one longer than `max_len`.
    async fn get_blob_bytes(&self, id: &BlobId, max_len: u64) -> Result<Vec<u8>> {
        let Blob { info, mut chunks } = self.get_blob(id).await?;
        if info.len > max_len {
            return Err(Error::Precondition(format!("blob {id} has {} bytes, more than {max_len}", info.len)));
        }
        let mut out = Vec::with_capacity(usize::try_from(info.len).unwrap_or(0));
        while let Some(chunk) = chunks.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }
}

fn reader_pieces<'a>(reader: &'a mut (dyn AsyncRead + Send + Unpin)) -> ChunkStream<'a> {
    stream::try_unfold(reader, |reader| async move {
        let mut buf = BytesMut::with_capacity(64 << 10);
        let n = reader.read_buf(&mut buf).await?;
        Ok((n > 0).then(|| (buf.freeze(), reader)))
    })
    .boxed()
}

/// What a manifest holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Manifest {
    len: u64,
    chunk_size: u32,
    chunks: Vec<[u8; 32]>,
}

const MANIFEST_VERSION: u8 = 1;
const MANIFEST_HEADER: usize = 1 + 8 + 4;

impl Manifest {
    /// version (1) ++ length (u64 BE) ++ chunk size (u32 BE) ++ each chunk's SHA-256.
    fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(MANIFEST_HEADER + 32 * self.chunks.len());
        out.push(MANIFEST_VERSION);
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out.into()
    }

    fn decode(id: &BlobId, bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::corrupt(format!("the manifest of blob {id}"), why);
        let (header, hashes) = bytes.split_at_checked(MANIFEST_HEADER).ok_or_else(|| bad("too short"))?;
        if header[0] != MANIFEST_VERSION {
            return Err(bad("unknown version"));
        }
        let len = u64::from_be_bytes(header[1..9].try_into().map_err(|_| bad("too short"))?);
        let chunk_size = u32::from_be_bytes(header[9..13].try_into().map_err(|_| bad("too short"))?);
        if chunk_size == 0 {
            return Err(bad("chunk size 0"));
        }
        if hashes.len() % 32 != 0 || (hashes.len() / 32) as u64 != len.div_ceil(u64::from(chunk_size)) {
            return Err(bad("chunk count does not match the length"));
        }
        let chunks =
            hashes.chunks_exact(32).map(|h| h.try_into().map_err(|_| bad("bad hash"))).collect::<Result<_>>()?;
        Ok(Manifest { len, chunk_size, chunks })
    }

    /// The length chunk `index` must have.
    fn chunk_len(&self, index: usize) -> u64 {
        let start = index as u64 * u64::from(self.chunk_size);
        (self.len - start).min(u64::from(self.chunk_size))
    }
}

/// Blobs over any [`KvStore`], in its reserved namespaces.
pub struct ChunkedBlobs {
    kv: Arc<dyn KvStore>,
    chunk_size: usize,
}

impl ChunkedBlobs {
    pub fn new(kv: Arc<dyn KvStore>) -> Self {
        ChunkedBlobs { kv, chunk_size: CHUNK_SIZE }
    }

    async fn manifest(&self, id: &BlobId) -> Result<Option<Manifest>> {
        let Some(bytes) = self.kv.get(&MANIFESTS, id.as_bytes()).await? else { return Ok(None) };
        Manifest::decode(id, &bytes).map(Some)
    }

    /// Starts the upload of one chunk.
    fn upload(&self, chunk: Bytes) -> ([u8; 32], tokio::task::JoinHandle<Result<()>>) {
        let sha = sha256(&chunk);
        let kv = self.kv.clone();
        // A task, so uploads progress while the writer waits for more input.
        // Both outcomes of the create are fine: equal hashes, equal bytes.
        let task = tokio::spawn(async move { kv.put_if_absent(&CHUNKS, &sha, chunk).await.map(|_| ()) });
        (sha, task)
    }
}

#[async_trait]
impl BlobStore for ChunkedBlobs {
    async fn put_blob(&self, mut pieces: ChunkStream<'_>) -> Result<BlobInfo> {
        let chunk_size = u32::try_from(self.chunk_size)
            .map_err(|_| Error::Config(format!("chunk size {} too large", self.chunk_size)))?;
        let mut whole = Context::new(&SHA256);
        let mut len: u64 = 0;
        let mut chunks = Vec::new();
        let mut uploads = FuturesUnordered::new();
        let mut pending = BytesMut::with_capacity(self.chunk_size);
        let mut finished = false;
        while !finished {
            let mut piece = match pieces.next().await {
                Some(piece) => piece.map_err(Error::Source)?,
                None => {
                    finished = true;
                    Bytes::new()
                }
            };
            // Cut whole chunks out of what is pending and this piece; the
            // last, partial chunk goes out once the input has ended.
            while !piece.is_empty() || (finished && !pending.is_empty()) {
                let room = self.chunk_size - pending.len();
                pending.extend_from_slice(&piece.split_to(room.min(piece.len())));
                if pending.len() < self.chunk_size && !finished {
                    break;
                }
                let chunk = pending.split().freeze();
                whole.update(&chunk);
                len += chunk.len() as u64;
                if uploads.len() >= UPLOADS_IN_FLIGHT
                    && let Some(done) = uploads.next().await
                {
                    settle(done)?;
                }
                let (sha, task) = self.upload(chunk);
                chunks.push(sha);
                uploads.push(task);
            }
        }
        while let Some(done) = uploads.next().await {
            settle(done)?;
        }
        let id = BlobId(digest_bytes(whole.finish()));
        let manifest = Manifest { len, chunk_size, chunks };
        // Last, and create-if-absent: a second writer of the same bytes finds it there.
        let _ = self.kv.put_if_absent(&MANIFESTS, id.as_bytes(), manifest.encode()).await?;
        Ok(BlobInfo { id, len })
    }

    async fn get_blob(&self, id: &BlobId) -> Result<Blob> {
        let manifest = self.manifest(id).await?.ok_or_else(|| Error::NotFound(format!("blob {id}")))?;
        let info = BlobInfo { id: *id, len: manifest.len };
        let what = format!("blob {id}");
        if manifest.chunks.is_empty() {
            if *id != BlobId::of(b"") {
                return Err(Error::corrupt(what, "an empty manifest under the id of non-empty bytes"));
            }
            return Ok(Blob { info, chunks: stream::empty().boxed() });
        }
        let manifest = Arc::new(manifest);
        let count = manifest.chunks.len();
        let fetches = stream::iter(0..count)
            .map({
                let (kv, manifest, what) = (self.kv.clone(), manifest.clone(), what.clone());
                move |index| {
                    let (kv, manifest, what) = (kv.clone(), manifest.clone(), what.clone());
                    async move { fetch_chunk(kv.as_ref(), &manifest, index, &what).await }
                }
            })
            .buffered(READ_AHEAD);
        let state = ReadState { whole: Context::new(&SHA256), seen: 0, failed: false };
        let id = *id;
        let chunks = fetches
            .scan(state, move |state, chunk| {
                let item = if state.failed {
                    None
                } else {
                    let checked = chunk.and_then(|chunk| {
                        state.whole.update(&chunk);
                        state.seen += 1;
                        // The whole is checked before its last chunk is handed
                        // out, so a reader never gets all of a bad blob.
                        if state.seen == count && digest_bytes(state.whole.clone().finish()) != *id.as_bytes() {
                            return Err(Error::corrupt(format!("blob {id}"), "the bytes do not hash to the blob's id"));
                        }
                        Ok(chunk)
                    });
                    state.failed = checked.is_err();
                    Some(checked)
                };
                futures::future::ready(item)
            })
            .boxed();
        Ok(Blob { info, chunks })
    }

    async fn blob_len(&self, id: &BlobId) -> Result<Option<u64>> {
        Ok(self.manifest(id).await?.map(|m| m.len))
    }
}

struct ReadState {
    whole: Context,
    seen: usize,
    /// Set once an error was handed out: the stream ends there.
    failed: bool,
}

fn settle(done: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    done.map_err(|e| Error::join("upload chunk", e))?
}

async fn fetch_chunk(kv: &dyn KvStore, manifest: &Manifest, index: usize, what: &str) -> Result<Bytes> {
    let sha = &manifest.chunks[index];
    let chunk = kv
        .get(&CHUNKS, sha)
        .await?
        .ok_or_else(|| Error::corrupt(what, format!("chunk {index} of {} is missing", manifest.chunks.len())))?;
    if chunk.len() as u64 != manifest.chunk_len(index) || sha256(&chunk) != *sha {
        return Err(Error::corrupt(what, format!("chunk {index} does not match its hash")));
    }
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_bad_ones_are_refused() {
        let id = BlobId::of(b"x");
        let m = Manifest { len: 5, chunk_size: 2, chunks: vec![[1; 32], [2; 32], [3; 32]] };
        assert_eq!(Manifest::decode(&id, &m.encode()).ok(), Some(m.clone()));
        assert_eq!(m.chunk_len(2), 1);
        let encoded = m.encode();
        for bad in [&encoded[..encoded.len() - 1], &encoded[..5], &encoded[..MANIFEST_HEADER + 64]] {
            assert!(matches!(Manifest::decode(&id, bad), Err(Error::Corrupt { .. })));
        }
        let mut other_version = encoded.to_vec();
        other_version[0] = 9;
        assert!(Manifest::decode(&id, &other_version).is_err());
    }

    #[test]
    fn blob_ids_print_and_parse_as_hex() {
        let id = BlobId::of(b"");
        let text = id.to_string();
        assert_eq!(text, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(text.parse::<BlobId>().ok(), Some(id));
        assert!("zz".parse::<BlobId>().is_err());
    }
}
