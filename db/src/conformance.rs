//! The behaviours every backend must show, as one suite of async checks.
//!
//! Run [`run_all`] on an empty store of each backend (this crate's tests do,
//! for sled, memory and a real SeaweedFS). The checks panic on a wrong
//! answer and return the store's error when an operation fails.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::{self, BoxStream};

use crate::blob::{CHUNKS, MANIFESTS};
use crate::{BlobId, Creation, Error, Namespace, Result, Store};

/// Runs every check, in turn, on `store`, which must be empty.
pub async fn run_all(store: &Store) -> Result<()> {
    get_put_delete(store).await?;
    put_if_absent_creates_once(store).await?;
    concurrent_creators_have_one_winner(store).await?;
    listing_is_in_byte_order_and_paged(store).await?;
    namespaces_are_isolated(store).await?;
    blobs_round_trip_across_chunks(store).await?;
    empty_blob_round_trips(store).await?;
    concurrent_writers_of_one_blob_agree(store).await?;
    missing_blob_is_not_found(store).await?;
    corrupt_or_missing_chunks_fail_the_read(store).await?;
    failing_source_fails_the_write(store).await?;
    store.kv().flush().await
}

fn ns(name: &'static str) -> Namespace {
    Namespace::from_static(name)
}

/// Deterministic bytes that differ per seed (xorshift64*), so tests' blobs
/// share no chunk.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `data` as a stream of pieces of `piece` bytes (not aligned with chunks).
fn pieces(data: &[u8], piece: usize) -> BoxStream<'static, std::io::Result<Bytes>> {
    let parts: Vec<std::io::Result<Bytes>> = data.chunks(piece).map(|p| Ok(Bytes::copy_from_slice(p))).collect();
    stream::iter(parts).boxed()
}

async fn read_all(store: &Store, id: &BlobId) -> Result<Vec<u8>> {
    let mut blob = store.blobs().get_blob(id).await?;
    let mut out = Vec::new();
    while let Some(chunk) = blob.chunks.next().await {
        out.extend_from_slice(&chunk?);
    }
    assert_eq!(out.len() as u64, blob.info.len, "blob length");
    Ok(out)
}

pub async fn get_put_delete(store: &Store) -> Result<()> {
    let kv = store.kv();
    let n = ns("basic");
    assert_eq!(kv.get(&n, b"k").await?, None);
    kv.put(&n, b"k", Bytes::from_static(b"v1")).await?;
    assert_eq!(kv.get(&n, b"k").await?.as_deref(), Some(&b"v1"[..]));
    kv.put(&n, b"k", Bytes::from_static(b"v2")).await?;
    assert_eq!(kv.get(&n, b"k").await?.as_deref(), Some(&b"v2"[..]), "put overwrites");
    kv.delete(&n, b"k").await?;
    assert_eq!(kv.get(&n, b"k").await?, None);
    kv.delete(&n, b"k").await?; // deleting what is absent is no error
    // The empty key and the empty value are values like any other.
    kv.put(&n, b"", Bytes::new()).await?;
    assert_eq!(kv.get(&n, b"").await?.as_deref(), Some(&b""[..]));
    kv.delete(&n, b"").await?;
    assert_eq!(kv.get(&n, b"").await?, None);
    Ok(())
}

pub async fn put_if_absent_creates_once(store: &Store) -> Result<()> {
    let kv = store.kv();
    let n = ns("create");
    assert_eq!(kv.put_if_absent(&n, b"id", Bytes::from_static(b"first")).await?, Creation::Created);
    assert_eq!(kv.put_if_absent(&n, b"id", Bytes::from_static(b"second")).await?, Creation::AlreadyExists);
    assert_eq!(kv.get(&n, b"id").await?.as_deref(), Some(&b"first"[..]), "the first value stays");
    kv.delete(&n, b"id").await?;
    assert!(kv.put_if_absent(&n, b"id", Bytes::from_static(b"third")).await?.is_created());
    Ok(())
}

pub async fn concurrent_creators_have_one_winner(store: &Store) -> Result<()> {
    const CREATORS: u8 = 16;
    let n = ns("race");
    let tasks: Vec<_> = (0..CREATORS)
        .map(|i| {
            let (kv, n) = (store.kv().clone(), n.clone());
            tokio::spawn(async move { kv.put_if_absent(&n, b"contested", Bytes::from(vec![i])).await })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.map_err(|e| Error::join("race", e))??;
        if outcome.is_created() {
            winners.push(i as u8);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one creator wins, got {winners:?}");
    assert_eq!(store.kv().get(&n, b"contested").await?.as_deref(), Some(&winners[..]), "the winner's value");
    Ok(())
}

pub async fn listing_is_in_byte_order_and_paged(store: &Store) -> Result<()> {
    let kv = store.kv();
    let n = ns("listing");
    let mut keys: Vec<Vec<u8>> = [
        &b""[..],
        b"\x00",
        b"\x00\x00",
        b"\x00\xff",
        b"a",
        b"ab",
        b"ab\x00",
        b"ab\xff",
        b"abc",
        b"abd",
        b"ac",
        b"b",
        b"\x7f",
        b"\x80",
        b"\xff",
        b"\xff\x00",
        b"\xff\xff",
        b"\xff\xff\x01",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect();
    // Sixteen-byte ids, as UUIDv7s are, under one prefix.
    keys.extend((0..12u8).map(|i| [&b"id/"[..], &[i.wrapping_mul(37); 16]].concat()));
    // Written out of order: the order comes from the keys, not the writes.
    for (i, key) in keys.iter().enumerate().rev() {
        let value = Bytes::from(format!("v{i}"));
        assert!(kv.put_if_absent(&n, key, value).await?.is_created());
    }
    let mut sorted = keys.clone();
    sorted.sort();
    let list = |prefix: &'static [u8], after: Option<&'static [u8]>, limit| {
        let (kv, n) = (kv.clone(), n.clone());
        async move { kv.list_keys(&n, prefix, after, limit).await }
    };
    let under = |prefix: &[u8]| sorted.iter().filter(|k| k.starts_with(prefix)).cloned().collect::<Vec<_>>();
    assert_eq!(list(b"", None, 1000).await?, sorted, "every key, in byte order");
    // Each listing against a model: the sorted keys, filtered.
    let model = |prefix: &[u8], after: Option<&[u8]>, limit: usize| -> Vec<Vec<u8>> {
        let past = |k: &Vec<u8>| after.is_none_or(|a| k.as_slice() > a);
        sorted.iter().filter(|k| k.starts_with(prefix) && past(k)).take(limit).cloned().collect()
    };
    type Case = (&'static [u8], Option<&'static [u8]>, usize);
    let cases: [Case; 17] = [
        (b"ab", None, 100),
        (b"ab", None, 2),
        (b"ab", Some(b"abc"), 100),
        (b"ab", Some(b"ab\x00"), 1),
        // `after` below the prefix starts at the prefix; past it there is nothing.
        (b"ab", Some(b"a"), 1),
        (b"ab", Some(b"b"), 100),
        (b"ab", Some(b"ab\xff"), 100),
        (b"ab", None, 0),
        (b"zz", None, 100),
        // Bytes 0x00 and 0xff at the edges of prefixes and offsets.
        (b"\x00", None, 100),
        (b"\x00", Some(b"\x00"), 100),
        (b"", Some(b""), 2),
        (b"\xff", None, 100),
        (b"\xff\xff", None, 100),
        (b"\xff\xff", Some(b"\xff\xff"), 100),
        (b"", Some(b"\xff\xff\x01"), 100),
        (b"id/", Some(b"id/\x25"), 4),
    ];
    for (prefix, after, limit) in cases {
        assert_eq!(list(prefix, after, limit).await?, model(prefix, after, limit), "{prefix:?} after {after:?}");
    }
    assert_eq!(list(b"ab", Some(b"abc"), 100).await?, vec![b"abd".to_vec(), b"ab\xff".to_vec()]);
    assert_eq!(list(b"\xff\xff", None, 100).await?, vec![b"\xff\xff".to_vec(), b"\xff\xff\x01".to_vec()]);
    // Paging: pages of 3, each after the last key of the one before, for the
    // whole namespace and for one prefix.
    for prefix in [&b""[..], b"id/", b"a"] {
        let mut paged: Vec<Vec<u8>> = Vec::new();
        let mut pages = 0;
        loop {
            let page = kv.list_keys(&n, prefix, paged.last().map(Vec::as_slice), 3).await?;
            pages += 1;
            let last_page = page.len() < 3;
            paged.extend(page);
            if last_page {
                break;
            }
        }
        assert_eq!(paged, under(prefix), "paged listing of {prefix:?}");
        assert!(pages > 1, "more than one page");
    }
    // Values come with their keys.
    let pairs = kv.list(&n, b"ab", Some(b"ab"), 2).await?;
    let expect = |key: &[u8]| {
        let i = keys.iter().position(|k| k == key).unwrap_or(usize::MAX);
        (key.to_vec(), Bytes::from(format!("v{i}")))
    };
    assert_eq!(pairs, vec![expect(b"ab\x00"), expect(b"abc")]);
    assert_eq!(kv.list(&n, b"", None, 1000).await?.len(), keys.len());
    Ok(())
}

pub async fn namespaces_are_isolated(store: &Store) -> Result<()> {
    let kv = store.kv();
    // "iso" is a string prefix of "iso_b": a backend that lists by string
    // prefix (S3) must not mix them.
    let (a, b) = (ns("iso"), ns("iso_b"));
    kv.put(&a, b"same", Bytes::from_static(b"in a")).await?;
    kv.put(&b, b"same", Bytes::from_static(b"in b")).await?;
    kv.put(&b, b"only_b", Bytes::from_static(b"x")).await?;
    assert_eq!(kv.get(&a, b"same").await?.as_deref(), Some(&b"in a"[..]));
    assert_eq!(kv.get(&b, b"same").await?.as_deref(), Some(&b"in b"[..]));
    assert_eq!(kv.get(&a, b"only_b").await?, None);
    assert_eq!(kv.list_keys(&a, b"", None, 10).await?, vec![b"same".to_vec()]);
    assert_eq!(kv.list_keys(&b, b"", None, 10).await?, vec![b"only_b".to_vec(), b"same".to_vec()]);
    assert!(kv.put_if_absent(&a, b"only_b", Bytes::new()).await?.is_created());
    kv.delete(&a, b"same").await?;
    assert_eq!(kv.get(&b, b"same").await?.as_deref(), Some(&b"in b"[..]), "a delete stays in its namespace");
    assert_eq!(kv.list_keys(&ns("unused"), b"", None, 10).await?, Vec::<Vec<u8>>::new());
    Ok(())
}

/// A blob of more than two chunks that does not end on a chunk boundary.
fn multi_chunk_len() -> usize {
    2 * crate::CHUNK_SIZE + crate::CHUNK_SIZE / 2 + 123
}

pub async fn blobs_round_trip_across_chunks(store: &Store) -> Result<()> {
    let blobs = store.blobs();
    let data = pseudo_random(1, multi_chunk_len());
    let id = BlobId::of(&data);
    assert!(!blobs.has_blob(&id).await?);
    // Pieces of an odd size, so chunks are cut across them.
    let info = blobs.put_blob(pieces(&data, 100_003)).await?;
    assert_eq!((info.id, info.len), (id, data.len() as u64));
    assert!(blobs.has_blob(&id).await?);
    assert_eq!(blobs.blob_len(&id).await?, Some(data.len() as u64));
    let blob = blobs.get_blob(&id).await?;
    let chunks: Vec<Result<Bytes>> = blob.chunks.collect().await;
    assert_eq!(chunks.len(), 3, "read back in chunks");
    let read: Vec<u8> = chunks.into_iter().collect::<Result<Vec<Bytes>>>()?.concat();
    assert!(read == data, "the bytes read back are the bytes written");
    // The same bytes in other pieces (or from a reader) are the same blob.
    assert_eq!(blobs.put_blob_bytes(Bytes::from(data.clone())).await?, info);
    let mut reader: &[u8] = &data;
    assert_eq!(blobs.put_blob_from_reader(&mut reader).await?, info);
    assert!(blobs.get_blob_bytes(&id, data.len() as u64).await? == data);
    assert!(matches!(blobs.get_blob_bytes(&id, 10).await, Err(Error::Precondition(_))));
    // A blob of exactly one chunk.
    let one = pseudo_random(2, crate::CHUNK_SIZE);
    let info = blobs.put_blob(pieces(&one, crate::CHUNK_SIZE)).await?;
    assert!(read_all(store, &info.id).await? == one);
    Ok(())
}

pub async fn empty_blob_round_trips(store: &Store) -> Result<()> {
    let blobs = store.blobs();
    let info = blobs.put_blob(stream::empty().boxed()).await?;
    assert_eq!((info.id, info.len), (BlobId::of(b""), 0));
    assert!(blobs.has_blob(&info.id).await?);
    assert_eq!(read_all(store, &info.id).await?, Vec::<u8>::new());
    // Empty pieces add nothing.
    let with_empties = stream::iter([Ok(Bytes::new()), Ok(Bytes::new())]).boxed();
    assert_eq!(blobs.put_blob(with_empties).await?, info);
    Ok(())
}

pub async fn concurrent_writers_of_one_blob_agree(store: &Store) -> Result<()> {
    let data = Bytes::from(pseudo_random(3, multi_chunk_len()));
    let writers: Vec<_> = (0..4usize)
        .map(|i| {
            let (blobs, data) = (store.blobs().clone(), data.clone());
            tokio::spawn(async move { blobs.put_blob(pieces(&data, 65_536 + i * 4099)).await })
        })
        .collect();
    let mut infos = Vec::new();
    for writer in writers {
        infos.push(writer.await.map_err(|e| Error::join("writer", e))??);
    }
    assert!(infos.iter().all(|i| i.id == BlobId::of(&data) && i.len == data.len() as u64), "{infos:?}");
    assert!(read_all(store, &infos[0].id).await? == data);
    Ok(())
}

pub async fn missing_blob_is_not_found(store: &Store) -> Result<()> {
    let blobs = store.blobs();
    let id = BlobId::of(b"never stored");
    assert!(matches!(blobs.get_blob(&id).await, Err(Error::NotFound(_))));
    assert!(!blobs.has_blob(&id).await?);
    assert_eq!(blobs.blob_len(&id).await?, None);
    assert!(matches!(blobs.get_blob_bytes(&id, 1).await, Err(Error::NotFound(_))));
    Ok(())
}

/// Reads a blob to its end; the error it ended with, and the bytes before it.
async fn read_until_error(store: &Store, id: &BlobId) -> Result<(usize, Option<Error>)> {
    let mut blob = store.blobs().get_blob(id).await?;
    let mut read = 0;
    while let Some(chunk) = blob.chunks.next().await {
        match chunk {
            Ok(chunk) => read += chunk.len(),
            Err(e) => {
                assert!(blob.chunks.next().await.is_none(), "the stream ends at its first error");
                return Ok((read, Some(e)));
            }
        }
    }
    Ok((read, None))
}

pub async fn corrupt_or_missing_chunks_fail_the_read(store: &Store) -> Result<()> {
    let (kv, blobs) = (store.kv(), store.blobs());
    let data = pseudo_random(4, multi_chunk_len());
    let info = blobs.put_blob(pieces(&data, 1 << 20)).await?;
    let manifest = kv.get(&MANIFESTS, info.id.as_bytes()).await?.unwrap_or_default();
    let chunk_hash = |i: usize| manifest[13 + 32 * i..13 + 32 * (i + 1)].to_vec();
    let second = chunk_hash(1);
    let original = kv.get(&CHUNKS, &second).await?.unwrap_or_default();

    // A flipped byte in the second chunk: the first chunk is read, then an error.
    let mut flipped = original.to_vec();
    flipped[1000] ^= 0x01;
    kv.put(&CHUNKS, &second, flipped.into()).await?;
    let (read, error) = read_until_error(store, &info.id).await?;
    assert_eq!(read, crate::CHUNK_SIZE, "the chunk before the bad one is handed out");
    assert!(matches!(error, Some(Error::Corrupt { .. })), "{error:?}");
    assert!(!error.as_ref().is_some_and(Error::is_retryable));

    // A truncated last chunk, and a missing one.
    let last = chunk_hash(2);
    let last_bytes = kv.get(&CHUNKS, &last).await?.unwrap_or_default();
    kv.put(&CHUNKS, &second, original).await?;
    kv.put(&CHUNKS, &last, last_bytes.slice(..last_bytes.len() - 1)).await?;
    let (read, error) = read_until_error(store, &info.id).await?;
    assert!(read < data.len() && matches!(error, Some(Error::Corrupt { .. })), "{read} {error:?}");
    kv.delete(&CHUNKS, &last).await?;
    let (read, error) = read_until_error(store, &info.id).await?;
    assert!(read < data.len() && matches!(error, Some(Error::Corrupt { .. })), "{read} {error:?}");
    kv.put(&CHUNKS, &last, last_bytes).await?;
    assert!(read_all(store, &info.id).await? == data, "repaired");

    // A manifest that does not decode.
    kv.put(&MANIFESTS, info.id.as_bytes(), manifest.slice(..20)).await?;
    assert!(matches!(blobs.get_blob(&info.id).await, Err(Error::Corrupt { .. })));
    // A well-formed manifest whose chunks are another blob's.
    let other = blobs.put_blob(pieces(&pseudo_random(5, 10), 10)).await?;
    let other_manifest = kv.get(&MANIFESTS, other.id.as_bytes()).await?.unwrap_or_default();
    let victim = BlobId::of(b"victim");
    kv.put(&MANIFESTS, victim.as_bytes(), other_manifest).await?;
    let (_, error) = read_until_error(store, &victim).await?;
    assert!(matches!(error, Some(Error::Corrupt { .. })), "{error:?}");
    Ok(())
}

pub async fn failing_source_fails_the_write(store: &Store) -> Result<()> {
    let data = pseudo_random(6, 3000);
    let failing =
        stream::iter([Ok(Bytes::copy_from_slice(&data[..1000])), Err(std::io::Error::other("the client went away"))])
            .boxed();
    let err = store.blobs().put_blob(failing).await;
    assert!(matches!(err, Err(Error::Source(_))), "{err:?}");
    // Nothing became visible under the id of the part that was read.
    assert!(!store.blobs().has_blob(&BlobId::of(&data[..1000])).await?);
    Ok(())
}
