//! The conformance suite against a real SeaweedFS, started by the test.
//!
//! `weed` comes from `AMBISHARE_WEED` or `.seaweedfs/bin/weed` at the
//! workspace root (`bash deploy/seaweedfs.sh` installs it there). Without it
//! the test is skipped, loudly, unless `AMBISHARE_REQUIRE_S3=1` (CI) makes
//! that a failure.

#![allow(clippy::unwrap_used)]

mod seaweed;

use std::time::{Duration, Instant};

use ambishare_db::{Error, Namespace, S3Credentials, Secret, StoreConfig, conformance};
use bytes::Bytes;
use futures::StreamExt;
use seaweed::{Seaweed, free_ports, weed_or_skip};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_on_seaweedfs_passes_the_suite() {
    let Some(weed) = weed_or_skip() else { return };
    let started = Instant::now();
    let seaweed = tokio::task::spawn_blocking(move || Seaweed::start(&weed)).await.unwrap();
    let ready = started.elapsed();
    tokio::time::timeout(Duration::from_secs(90), async {
        // The first write can take seconds while volumes are allocated.
        let warm_up = StoreConfig::S3(seaweed.config("warm-up")).open().await.unwrap();
        let ns = Namespace::new("warm_up").unwrap();
        warm_up.kv().put(&ns, b"k", Bytes::from_static(b"v")).await.unwrap();
        let warm = started.elapsed();

        let store = StoreConfig::S3(seaweed.config("suite/run-1")).open().await.unwrap();
        conformance::run_all(&store).await.unwrap();
        let suite = started.elapsed();

        // More keys than one S3 listing page (1000): object_store follows
        // the continuation, still in key order, from an offset.
        let many = StoreConfig::S3(seaweed.config("suite/many")).open().await.unwrap();
        let ns = Namespace::new("many").unwrap();
        let keys: Vec<Vec<u8>> = (0..1100u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes().to_vec()).collect();
        let writes = keys.iter().map(|k| many.kv().put_if_absent(&ns, k, Bytes::new()));
        let created: Vec<_> = futures::stream::iter(writes).buffer_unordered(32).collect().await;
        assert!(created.into_iter().all(|c| c.unwrap().is_created()));
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(many.kv().list_keys(&ns, b"", None, 5000).await.unwrap(), sorted);
        assert_eq!(many.kv().list_keys(&ns, b"", Some(&sorted[1049]), 10).await.unwrap(), sorted[1050..1060].to_vec());
        let listed_many = started.elapsed();

        // Two stores under different prefixes of one bucket see nothing of each other.
        let other = StoreConfig::S3(seaweed.config("suite/run-2")).open().await.unwrap();
        assert_eq!(other.kv().list_keys(&Namespace::new("listing").unwrap(), b"", None, 10).await.unwrap().len(), 0);
        eprintln!(
            "seaweedfs: S3 ready after {ready:.1?}, first write done at {warm:.1?}, suite done at {suite:.1?}, \
             1100 keys written and listed at {listed_many:.1?}"
        );
    })
    .await
    .unwrap();
    drop(seaweed);
    eprintln!("seaweedfs: whole test incl. stop {:.1?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults_are_typed_at_open() {
    let Some(weed) = weed_or_skip() else { return };
    let seaweed = tokio::task::spawn_blocking(move || Seaweed::start(&weed)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        // A wrong secret: refused, and retrying will not help.
        let mut wrong = seaweed.config("x");
        wrong.credentials = Some(S3Credentials {
            access_key_id: seaweed.credentials.access_key_id.clone(),
            secret_access_key: Secret::new("not-the-secret".into()),
        });
        match StoreConfig::S3(wrong).open().await {
            Err(e @ Error::PermissionDenied { .. }) => assert!(!e.is_retryable()),
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
        // A bucket that does not exist.
        let mut missing = seaweed.config("x");
        missing.bucket = "no-such-bucket".into();
        match StoreConfig::S3(missing).open().await {
            Err(Error::Config(why)) => assert!(why.contains("no-such-bucket"), "{why}"),
            other => panic!("expected a config error, got {other:?}"),
        }
        // Nothing listening: a transient fault (reported at once with no retries).
        let mut closed = seaweed.config("x");
        closed.endpoint = Some(format!("http://127.0.0.1:{}", free_ports::<1>()[0]));
        closed.max_retries = Some(0);
        match StoreConfig::S3(closed).open().await {
            Err(e @ Error::Unavailable { .. }) => assert!(e.is_retryable()),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    })
    .await
    .unwrap();
}
