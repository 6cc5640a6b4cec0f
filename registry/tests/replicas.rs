//! Registry replicas on one S3 store: three registry nodes over a real
//! SeaweedFS (started by the test; skipped loudly without `weed`, a failure
//! under `AMBISHARE_REQUIRE_S3=1` as in CI) serve the same data.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../db/tests/seaweed/mod.rs"]
mod seaweed;

use std::collections::HashSet;
use std::time::Duration;

use ambishare_db::StoreConfig;
use ambishare_registry::Config;
use ambishare_rpc::PublishOutcome;
use ambishare_shared::{Entry, EntryId};
use common::{Node, TestModel, owner_key, test_config};
use futures::TryStreamExt;
use seaweed::{Seaweed, weed_or_skip};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_bucket_serve_the_same_entries_in_the_same_order() {
    let Some(weed) = weed_or_skip() else { return };
    let seaweed = tokio::task::spawn_blocking(move || Seaweed::start(&weed)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreConfig::S3(seaweed.config("replicas"));
        let mut nodes = Vec::new();
        for i in 0..3 {
            let config = Config { store: Some(store.clone()), ..test_config(&dir.path().join(format!("r{i}"))) };
            nodes.push(Node::start(config).await);
        }
        let mut clients = Vec::new();
        for node in &nodes {
            clients.push(node.client().await);
        }
        // Registered and model published through the first; used through the others.
        let key = owner_key();
        let owner = clients[0].register_owner(&key, &"replicated".parse().unwrap()).await.unwrap();
        let model = TestModel::sixty_four();
        model.publish(&clients[0], &key).await;

        // One batch through each replica at once, and one batch through two at once.
        let batches: Vec<Vec<Entry>> = (0..3).map(|i| model.entries(&key, "faces", 30, 40 + i)).collect();
        let shared = model.entries(&key, "faces", 20, 50);
        let mut tasks = Vec::new();
        for (client, batch) in clients.iter().zip(batches.clone()) {
            let client = client.clone();
            tasks.push(tokio::spawn(async move { client.publish(batch).await.unwrap() }));
        }
        for client in &clients[1..] {
            let (client, batch) = (client.clone(), shared.clone());
            tasks.push(tokio::spawn(async move { client.publish(batch).await.unwrap() }));
        }
        let mut stored: Vec<EntryId> = Vec::new();
        for task in tasks {
            for ack in task.await.unwrap() {
                assert!(ack.is_stored(), "{ack:?}");
                if ack.outcome == PublishOutcome::Stored {
                    stored.push(ack.entry_id);
                }
            }
        }
        // Each entry of the batch sent through two replicas was stored once.
        let distinct: HashSet<EntryId> = stored.iter().copied().collect();
        assert_eq!((stored.len(), distinct.len()), (110, 110), "an entry stored twice, or one lost");

        // Every replica streams all of them, in the same (id) order.
        let mut expected: Vec<EntryId> = distinct.into_iter().collect();
        expected.sort();
        for (i, client) in clients.iter().enumerate() {
            let streamed: Vec<Entry> =
                client.stream_entries(Some(owner), None, None).await.unwrap().try_collect().await.unwrap();
            let ids: Vec<EntryId> = streamed.iter().map(|e| e.id).collect();
            assert_eq!(ids, expected, "replica {i} streams another sequence");
            let all: Vec<Entry> = client.stream_entries(None, None, None).await.unwrap().try_collect().await.unwrap();
            assert_eq!(all, streamed, "replica {i}: the whole registry differs from the owner's entries");
        }
        // A deletion through one replica is seen by the others.
        assert!(clients[2].delete_entry(&key, expected[0]).await.unwrap());
        for client in &clients {
            assert_eq!(client.get_entry(expected[0]).await.unwrap_err().code(), tonic::Code::NotFound);
        }
        drop(clients);
        for node in nodes {
            node.stop().await;
        }
    })
    .await
    .unwrap();
}
