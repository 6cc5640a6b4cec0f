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

/// A registry process (`ambishare-registry serve --store s3://...`), killed on drop.
struct Replica {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl Replica {
    fn spawn(store_url: &str, dir: &std::path::Path, name: &str) -> Replica {
        let [port] = seaweed::free_ports::<1>();
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ambishare-registry"))
            .args(["serve", "--store", store_url, "--danger-plaintext", "--shutdown-grace-secs", "2"])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Replica { child, url: format!("http://127.0.0.1:{port}"), log }
    }

    /// A client, once the process answers.
    async fn client(&mut self) -> ambishare_rpc::RegistryClient {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("replica exited ({status}):\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
            }
            if let Ok(client) = ambishare_rpc::RegistryClient::connect(&self.url, None).await
                && client.has_model(ambishare_shared::ModelId::from_bytes([0; 32])).await.is_ok()
            {
                return client;
            }
            assert!(std::time::Instant::now() < deadline, "replica {} not serving in 30 s", self.url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_publish_loses_nothing_acknowledged_and_another_completes_the_publish() {
    let Some(weed) = weed_or_skip() else { return };
    let seaweed = tokio::task::spawn_blocking(move || Seaweed::start(&weed)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(180), async {
        let dir = tempfile::tempdir().unwrap();
        let store = seaweed.store_url("killed");
        let mut replicas: Vec<Replica> = (0..3).map(|i| Replica::spawn(&store, dir.path(), &format!("r{i}"))).collect();
        let mut clients = Vec::new();
        for replica in &mut replicas {
            clients.push(replica.client().await);
        }
        let key = owner_key();
        let owner = clients[0].register_owner(&key, &"killed".parse().unwrap()).await.unwrap();
        let model = TestModel::sixty_four();
        model.publish(&clients[0], &key).await;

        // Replica 0 takes a long publish, 50 entries a call; 1 and 2 take their own at the same time.
        let doomed = model.entries(&key, "faces", 600, 60);
        let others: Vec<Vec<Entry>> = (0..2).map(|i| model.entries(&key, "faces", 100, 70 + i)).collect();
        let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<EntryId>();
        let publisher = {
            let (client, batch) = (clients[0].clone(), doomed.clone());
            tokio::spawn(async move {
                for chunk in batch.chunks(50) {
                    let Ok(acks) = client.publish(chunk.to_vec()).await else { return };
                    for ack in acks {
                        assert!(ack.is_stored(), "{ack:?}");
                        let _ = acked_tx.send(ack.entry_id);
                    }
                }
            })
        };
        let mut side = Vec::new();
        for (client, batch) in clients[1..].iter().zip(others.clone()) {
            let client = client.clone();
            side.push(tokio::spawn(async move { client.publish(batch).await.unwrap() }));
        }
        // SIGKILL once two calls are acknowledged: the third is in flight.
        let mut acked: HashSet<EntryId> = HashSet::new();
        while acked.len() < 100 {
            acked.insert(acked_rx.recv().await.expect("replica 0 stopped publishing before it was killed"));
        }
        let killed = replicas.remove(0);
        drop(killed);
        publisher.await.unwrap();
        while let Ok(id) = acked_rx.try_recv() {
            acked.insert(id);
        }
        assert!(acked.len() < doomed.len(), "the kill came after the whole publish");
        for task in side {
            assert!(task.await.unwrap().iter().all(|a| a.is_stored()), "a replica failed while another was killed");
        }

        // Nothing acknowledged by the killed replica is lost.
        for id in &acked {
            clients[1].get_entry(*id).await.unwrap_or_else(|e| panic!("acknowledged entry {id} lost: {e}"));
        }
        // The publish is completed through another replica: what was acknowledged is already there.
        let acks = clients[1].publish(doomed.clone()).await.unwrap();
        for ack in &acks {
            assert!(ack.is_stored(), "{ack:?}");
            if acked.contains(&ack.entry_id) {
                assert_eq!(
                    ack.outcome,
                    PublishOutcome::AlreadyStored,
                    "acknowledged entry {} stored again",
                    ack.entry_id
                );
            }
        }
        // The survivors stream the same 800 entries in id order.
        let mut expected: Vec<EntryId> = doomed.iter().chain(others.iter().flatten()).map(|e| e.id).collect();
        expected.sort();
        let mut streams = Vec::new();
        for client in &clients[1..] {
            let streamed: Vec<Entry> =
                client.stream_entries(Some(owner), None, None).await.unwrap().try_collect().await.unwrap();
            assert_eq!(streamed.iter().map(|e| e.id).collect::<Vec<_>>(), expected);
            streams.push(streamed);
        }
        assert_eq!(streams[0], streams[1]);
        drop(clients);
        for replica in replicas {
            assert!(replica.stop().success());
        }
        // The kill left nothing behind that the completed publish did not finish.
        let check = ambishare_registry::check_store(StoreConfig::S3(seaweed.config("killed")).open().await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            (check.problem_count, check.orphan_index_keys, check.entries.len()),
            (0, 0, 800),
            "{:?}",
            check.problems
        );
    })
    .await
    .unwrap();
}
