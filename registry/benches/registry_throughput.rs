//! Throughput of registry nodes on loopback, with codes of the 64x64 model's
//! shape (1 tile, L = 16, m = 256, k = 64, k_fake = 64, q8: about 2.6 KB a
//! code), in three set-ups, one table: sled in a temporary directory; S3 on a
//! real SeaweedFS (started by the bench from `.seaweedfs/`, see
//! `deploy/seaweedfs.sh`) through one registry; and the same through three
//! registries on one bucket (publishes spread over them, every one streaming).
//!
//! `cargo bench -p ambishare-registry --bench registry_throughput [-- --entries N] [--store STORE] [--replicas R]`
//! (`--store`, as `ambishare-registry serve --store` takes it: that store
//! alone, through R registries, instead of the three set-ups.)

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../db/tests/seaweed/mod.rs"]
mod seaweed;

use std::time::{Duration, Instant};

use ambishare_db::StoreConfig;
use ambishare_registry::Config;
use ambishare_rpc::{PublishOutcome, RegistryClient};
use ambishare_shared::Entry;
use common::{Node, TestModel, owner_key, test_config};
use futures::{StreamExt, TryStreamExt};

/// The value after `--name` on the command line.
fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// The store alone: what the writer does per entry (the dataset marker,
/// two index keys, then the entry, create-if-absent), one flush per 256.
async fn store_only(store: &ambishare_db::StoreConfig, entries: &[Entry]) -> Row {
    use ambishare_db::{Bytes, Namespace};
    static ENTRIES: Namespace = Namespace::from_static("bench_entries");
    static INDEX: Namespace = Namespace::from_static("bench_index");
    let kv = store.open().await.unwrap().kv().clone();
    let encoded: Vec<Bytes> = entries
        .iter()
        .map(|e| prost::Message::encode_to_vec(&ambishare_proto::types::v1::Entry::from(e)).into())
        .collect();
    let start = Instant::now();
    let writes = entries.iter().zip(encoded).enumerate().map(|(i, (entry, body))| {
        let kv = kv.clone();
        async move {
            let id = entry.id.as_bytes();
            let by_owner = [entry.owner.as_bytes().as_slice(), id].concat();
            let by_dataset = [entry.dataset.as_str().as_bytes(), &[0], entry.owner.as_bytes(), id].concat();
            kv.put(&INDEX, &by_owner, Bytes::new()).await.unwrap();
            kv.put(&INDEX, &by_dataset, Bytes::new()).await.unwrap();
            assert!(kv.put_if_absent(&ENTRIES, id, body).await.unwrap().is_created());
            if i % 256 == 255 {
                kv.flush().await.unwrap();
            }
        }
    });
    futures::stream::iter(writes).buffered(32).collect::<Vec<()>>().await;
    kv.flush().await.unwrap();
    Row {
        setup: String::new(),
        what: "store alone: 3 writes an entry, flush per 256".into(),
        items: entries.len(),
        bytes: code_bytes(entries),
        elapsed: start.elapsed(),
    }
}

struct Row {
    setup: String,
    what: String,
    items: usize,
    bytes: usize,
    elapsed: Duration,
}

impl Row {
    fn per_sec(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        let secs = self.elapsed.as_secs_f64();
        println!(
            "| {:<16} | {:<46} | {:>7} | {:>8.2} | {:>10.0} | {:>7.1} |",
            self.setup,
            self.what,
            self.items,
            secs,
            self.per_sec(),
            self.bytes as f64 / secs / 1e6
        );
    }
}

fn code_bytes(entries: &[Entry]) -> usize {
    entries.iter().map(|e| e.code_bytes.len()).sum()
}

/// One set-up: `replicas` registries over `store`, `n` entries published
/// through one, then `n` more in 4 concurrent streams spread over all.
async fn run_setup(setup: &str, store: StoreConfig, replicas: usize, n: usize) -> Vec<Row> {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    let mut clients: Vec<RegistryClient> = Vec::new();
    for i in 0..replicas {
        let config = Config { store: Some(store.clone()), ..test_config(&dir.path().join(format!("r{i}"))) };
        let node = Node::start(config).await;
        clients.push(node.client().await);
        nodes.push(node);
    }
    let client = clients[0].clone();
    let key = owner_key();
    client.register_owner(&key, &"bench".parse().unwrap()).await.unwrap();
    let model = TestModel::sixty_four();
    model.publish(&client, &key).await;

    let made = Instant::now();
    let first = model.entries(&key, "bench", n, 1);
    let parallel: Vec<Vec<Entry>> = (0..4).map(|i| model.entries(&key, "bench", n / 4, 10 + i)).collect();
    eprintln!("{setup}: {store}; made {} entries in {:.1} s", n + 4 * (n / 4), made.elapsed().as_secs_f64());
    let row = |what: &str, items: usize, bytes: usize, elapsed: Duration| Row {
        setup: setup.to_owned(),
        what: what.to_owned(),
        items,
        bytes,
        elapsed,
    };
    let mut rows = Vec::new();

    let start = Instant::now();
    let acks = client.publish(first.clone()).await.unwrap();
    rows.push(row("Publish, 1 stream, 64 a message", n, code_bytes(&first), start.elapsed()));
    assert!(acks.iter().all(|a| a.outcome == PublishOutcome::Stored));

    let start = Instant::now();
    let acks = client.publish(first.clone()).await.unwrap();
    assert!(acks.iter().all(|a| a.outcome == PublishOutcome::AlreadyStored));
    rows.push(row("Publish again (idempotent), 1 stream", n, code_bytes(&first), start.elapsed()));

    let bytes: usize = parallel.iter().map(|p| code_bytes(p)).sum();
    let items: usize = parallel.iter().map(Vec::len).sum();
    let start = Instant::now();
    let tasks: Vec<_> = parallel
        .into_iter()
        .enumerate()
        .map(|(i, entries)| {
            let client = clients[i % replicas].clone();
            tokio::spawn(async move { client.publish(entries).await.unwrap() })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().iter().all(|a| a.outcome == PublishOutcome::Stored));
    }
    let spread = if replicas > 1 {
        format!("Publish, 4 streams over {replicas} registries")
    } else {
        "Publish, 4 concurrent streams".into()
    };
    rows.push(row(&spread, items, bytes, start.elapsed()));

    // Every registry streams the whole registry at once (parsed by the client).
    let total = n + items;
    let start = Instant::now();
    let streams: Vec<_> = clients
        .iter()
        .map(|client| {
            let client = client.clone();
            tokio::spawn(async move {
                let streamed: Vec<Entry> =
                    client.stream_entries(None, None, None).await.unwrap().try_collect().await.unwrap();
                streamed
            })
        })
        .collect();
    let mut streamed_items = 0;
    let mut streamed_bytes = 0;
    let mut streamed = Vec::new();
    for task in streams {
        streamed = task.await.unwrap();
        assert_eq!(streamed.len(), total);
        streamed_items += streamed.len();
        streamed_bytes += code_bytes(&streamed);
    }
    let what = if replicas > 1 {
        format!("StreamEntries, {replicas} registries at once")
    } else {
        "StreamEntries (parsed by the client)".into()
    };
    rows.push(row(&what, streamed_items, streamed_bytes, start.elapsed()));

    let start = Instant::now();
    let mut raw = client
        .raw()
        .stream_entries(ambishare_proto::registry::v1::StreamEntriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (mut count, mut bytes) = (0, 0);
    while let Some(e) = raw.message().await.unwrap() {
        count += 1;
        bytes += e.code.len();
    }
    rows.push(row("StreamEntries (raw protobuf), 1 registry", count, bytes, start.elapsed()));

    let start = Instant::now();
    let mut token = String::new();
    let mut listed = 0;
    loop {
        let page = client.list_entries(None, None, 1000, &token).await.unwrap();
        listed += page.entries.len();
        match page.next_page_token {
            Some(t) => token = t,
            None => break,
        }
    }
    rows.push(row("ListEntries, pages of 1000", listed, 0, start.elapsed()));

    let sample: Vec<_> = streamed.iter().step_by((total / 1000).max(1)).map(|e| e.id).collect();
    let start = Instant::now();
    for id in &sample {
        client.get_entry(*id).await.unwrap();
    }
    rows.push(row(
        "GetEntry, one at a time",
        sample.len(),
        sample.len() * code_bytes(&first) / n.max(1),
        start.elapsed(),
    ));

    drop((client, clients));
    for node in nodes {
        node.stop().await;
    }
    if replicas == 1 {
        let alone = match &store {
            StoreConfig::Sled { cache_capacity, .. } => {
                StoreConfig::Sled { path: dir.path().join("alone"), cache_capacity: *cache_capacity }
            }
            StoreConfig::S3(s3) => {
                let mut s3 = s3.clone();
                s3.prefix = format!("{}-alone", s3.prefix);
                StoreConfig::S3(s3)
            }
            other => other.clone(),
        };
        let mut alone_row = store_only(&alone, &first).await;
        alone_row.setup = setup.to_owned();
        rows.push(alone_row);
    }
    if matches!(store, StoreConfig::Sled { .. }) {
        eprintln!("{setup}: data directory {:.1} MB for {total} entries", walk_size(dir.path()) as f64 / 1e6);
    }
    rows
}

fn main() {
    let n: usize = arg("--entries").and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let store: Option<StoreConfig> = arg("--store").map(|s| s.parse().unwrap());
    let replicas: usize = arg("--replicas").and_then(|n| n.parse().ok()).unwrap_or(1).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut rows = Vec::new();
        if let Some(store) = store {
            rows.extend(run_setup(&format!("{replicas} registry(s)"), store, replicas, n).await);
        } else {
            let sled = StoreConfig::Sled { path: dir.path().join("sled"), cache_capacity: 256 << 20 };
            rows.extend(run_setup("sled", sled, 1, n).await);
            match seaweed::find_weed() {
                Some(weed) => {
                    let seaweed = tokio::task::spawn_blocking(move || seaweed::Seaweed::start(&weed)).await.unwrap();
                    rows.extend(run_setup("s3, 1 registry", StoreConfig::S3(seaweed.config("one")), 1, n).await);
                    rows.extend(run_setup("s3, 3 registries", StoreConfig::S3(seaweed.config("three")), 3, n).await);
                }
                None => eprintln!("no weed binary (bash deploy/seaweedfs.sh): the S3 set-ups are left out"),
            }
        }
        println!(
            "| {:<16} | {:<46} | {:>7} | {:>8} | {:>10} | {:>7} |",
            "set-up", "operation", "items", "seconds", "items/s", "MB/s"
        );
        println!("|{:-<18}|{:-<48}|{:-<9}|{:-<10}|{:-<12}|{:-<9}|", "", "", "", "", "", "");
        for row in &rows {
            row.print();
        }
        let streaming = |setup: &str| {
            rows.iter().find(|r| r.setup == setup && r.what.starts_with("StreamEntries")).map(Row::per_sec)
        };
        if let (Some(sled), Some(s3)) = (streaming("sled"), streaming("s3, 1 registry")) {
            println!("\ns3 streaming through 1 registry / sled: {:.2} (goal: at least 0.5)", s3 / sled);
        }
        if let (Some(one), Some(three)) = (streaming("s3, 1 registry"), streaming("s3, 3 registries")) {
            println!("s3 streaming, 3 registries / 1: {:.2}", three / one);
        }
    });
}

fn walk_size(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
