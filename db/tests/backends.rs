//! The conformance suite against the embedded backends.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use ambishare_db::{Error, Namespace, StoreConfig, conformance};
use bytes::Bytes;

/// Bounds every test: a hang (a sled deadlock) fails instead of stalling CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_suite() {
    let store = "memory".parse::<StoreConfig>().unwrap().open().await.unwrap();
    tokio::time::timeout(TEST_TIMEOUT, conformance::run_all(&store)).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sled_store_passes_the_suite_and_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config: StoreConfig = format!("sled:{}", dir.path().display()).parse().unwrap();
    let kept = Namespace::new("kept").unwrap();
    let blob = {
        let store = config.open().await.unwrap();
        tokio::time::timeout(TEST_TIMEOUT, conformance::run_all(&store)).await.unwrap().unwrap();
        store.kv().put(&kept, b"k", Bytes::from_static(b"yes")).await.unwrap();
        let blob = store.blobs().put_blob_bytes(Bytes::from(conformance::pseudo_random(9, 3 << 20))).await.unwrap();
        store.kv().flush().await.unwrap();
        blob
    };
    // `open` waits out the lock of the database just dropped.
    let store = config.open().await.unwrap();
    assert_eq!(store.kv().get(&kept, b"k").await.unwrap().as_deref(), Some(&b"yes"[..]));
    assert_eq!(store.blobs().get_blob_bytes(&blob.id, u64::MAX).await.unwrap().len(), 3 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_refuses_a_database_held_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::Sled { path: dir.path().to_owned(), cache_capacity: 1 << 20 };
    let _held = config.open().await.unwrap();
    // sled's lock (flock) belongs to an open file, so a second open in this
    // process is refused as one from another process would be.
    match config.open().await {
        Err(e @ Error::Precondition(_)) => assert!(!e.is_retryable() && e.to_string().contains("in use")),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
