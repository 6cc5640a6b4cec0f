//! Throughput of a registry node on loopback, over real sled in a temporary
//! directory, with codes of the 64x64 model's shape (1 tile, L = 16, m = 256,
//! k = 64, k_fake = 64, q8: about 2.6 KB a code).
//!
//! `cargo bench -p ambishare-registry --bench registry_throughput [-- --entries N] [--store STORE]`
//! (STORE as in `ambishare-registry serve --store`; default sled in a temporary directory).

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use ambishare_registry::Config;
use ambishare_rpc::PublishOutcome;
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
        what: "store alone: 3 writes an entry, flush per 256".into(),
        items: entries.len(),
        bytes: code_bytes(entries),
        elapsed: start.elapsed(),
    }
}

struct Row {
    what: String,
    items: usize,
    bytes: usize,
    elapsed: Duration,
}

impl Row {
    fn print(&self) {
        let secs = self.elapsed.as_secs_f64();
        println!(
            "| {:<44} | {:>7} | {:>8.2} | {:>10.0} | {:>7.1} |",
            self.what,
            self.items,
            secs,
            self.items as f64 / secs,
            self.bytes as f64 / secs / 1e6
        );
    }
}

fn code_bytes(entries: &[Entry]) -> usize {
    entries.iter().map(|e| e.code_bytes.len()).sum()
}

fn main() {
    let n: usize = arg("--entries").and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let store: Option<ambishare_db::StoreConfig> = arg("--store").map(|s| s.parse().unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let store = store.unwrap_or(ambishare_db::StoreConfig::Sled {
            path: dir.path().join("registry"),
            cache_capacity: 256 << 20,
        });
        let node = Node::start(Config { store: Some(store.clone()), ..test_config(dir.path()) }).await;
        let client = node.client().await;
        let key = owner_key();
        client.register_owner(&key, &"bench".parse().unwrap()).await.unwrap();
        let model = TestModel::sixty_four();
        model.publish(&client, &key).await;

        let made = Instant::now();
        let first = model.entries(&key, "bench", n, 1);
        let parallel: Vec<Vec<Entry>> = (0..4).map(|i| model.entries(&key, "bench", n / 4, 10 + i)).collect();
        let per_code = code_bytes(&first) / n.max(1);
        eprintln!("store {store}");
        eprintln!("made {} entries of {per_code} code bytes in {:.1} s", n + 4 * (n / 4), made.elapsed().as_secs_f64());

        println!("| {:<44} | {:>7} | {:>8} | {:>10} | {:>7} |", "operation", "items", "seconds", "items/s", "MB/s");
        println!("|{:-<46}|{:-<9}|{:-<10}|{:-<12}|{:-<9}|", "", "", "", "", "");

        let start = Instant::now();
        let acks = client.publish(first.clone()).await.unwrap();
        let row = Row {
            what: "Publish, 1 stream, 64 a message".into(),
            items: n,
            bytes: code_bytes(&first),
            elapsed: start.elapsed(),
        };
        assert!(acks.iter().all(|a| a.outcome == PublishOutcome::Stored));
        row.print();

        let start = Instant::now();
        let acks = client.publish(first.clone()).await.unwrap();
        assert!(acks.iter().all(|a| a.outcome == PublishOutcome::AlreadyStored));
        Row {
            what: "Publish again (idempotent), 1 stream".into(),
            items: n,
            bytes: code_bytes(&first),
            elapsed: start.elapsed(),
        }
        .print();

        let bytes: usize = parallel.iter().map(|p| code_bytes(p)).sum();
        let items: usize = parallel.iter().map(Vec::len).sum();
        let start = Instant::now();
        let tasks: Vec<_> = parallel
            .into_iter()
            .map(|entries| {
                let client = client.clone();
                tokio::spawn(async move { client.publish(entries).await.unwrap() })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().iter().all(|a| a.outcome == PublishOutcome::Stored));
        }
        Row { what: "Publish, 4 concurrent streams".into(), items, bytes, elapsed: start.elapsed() }.print();

        let total = n + items;
        let start = Instant::now();
        let streamed: Vec<Entry> = client.stream_entries(None, None, None).await.unwrap().try_collect().await.unwrap();
        let row = Row {
            what: "StreamEntries (parsed by the client)".into(),
            items: streamed.len(),
            bytes: code_bytes(&streamed),
            elapsed: start.elapsed(),
        };
        assert_eq!(streamed.len(), total);
        row.print();

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
        Row { what: "StreamEntries (raw protobuf)".into(), items: count, bytes, elapsed: start.elapsed() }.print();

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
        Row { what: "ListEntries, pages of 1000".into(), items: listed, bytes: 0, elapsed: start.elapsed() }.print();

        let sample: Vec<_> = streamed.iter().step_by((total / 1000).max(1)).map(|e| e.id).collect();
        let start = Instant::now();
        for id in &sample {
            client.get_entry(*id).await.unwrap();
        }
        Row {
            what: "GetEntry, one at a time".into(),
            items: sample.len(),
            bytes: sample.len() * per_code,
            elapsed: start.elapsed(),
        }
        .print();

        drop(client);
        node.stop().await;
        let alone = match &store {
            ambishare_db::StoreConfig::Sled { path, cache_capacity } => {
                ambishare_db::StoreConfig::Sled { path: path.with_file_name("alone"), cache_capacity: *cache_capacity }
            }
            other => other.clone(),
        };
        store_only(&alone, &first).await.print();
        let size: u64 = walk_size(dir.path());
        eprintln!("data directory: {:.1} MB for {total} entries", size as f64 / 1e6);
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
