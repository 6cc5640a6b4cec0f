//! The web view's figures, over real sled in a temporary directory and the
//! shipped model's real decoder:
//! - a dataset page of 100 entries (HTML and JSON) once its thumbnails are cached;
//! - thumbnails rendered per second (public decode, resize, JPEG, store), by
//!   1 and 2 rendering threads, for 64x64 (1 tile) and 256x256 (16 tile) images.
//!
//! `cargo bench -p ambishare-registry --bench web_view [-- --requests N]`

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Node, TestModel, http_get, owner_key, test_config};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// Publishes `n` entries of `side`x`side` into `dataset`; the page path.
async fn publish(
    node: &Node,
    key: &ambishare_shared::crypto::SigningKey,
    model: &TestModel,
    dataset: &str,
    n: usize,
    side: u32,
) -> String {
    let client = node.client().await;
    let mut rng = ChaCha20Rng::seed_from_u64(side as u64);
    let entries: Vec<_> = (0..n).map(|_| model.entry(key, dataset, side, side, &mut rng)).collect();
    client.publish(entries).await.unwrap();
    format!("/api/v1/owners/{}/datasets/{dataset}/entries?limit=100", key.public_key().owner_id())
}

/// Asks for every thumbnail of the page (one request queues them all) and
/// waits until all are rendered; the time that took.
async fn render_all(web: SocketAddr, path: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (_, _, body, _) = http_get(web, path).await;
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.iter().all(|e| e["thumbnail"]["state"] != "unavailable"), "{page}");
        if entries.iter().all(|e| e["thumbnail"]["state"] == "ready") {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn page_latency(web: SocketAddr, path: &str, requests: usize) -> (Duration, Duration, Duration, usize) {
    let mut times = Vec::with_capacity(requests);
    let mut bytes = 0;
    for _ in 0..requests {
        let start = Instant::now();
        let (status, _, body, _) = http_get(web, path).await;
        times.push(start.elapsed());
        assert_eq!(status, 200);
        bytes = body.len();
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / requests as u32;
    (mean, percentile(&times, 0.5), percentile(&times, 0.99), bytes)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let requests: usize = arg("--requests").and_then(|n| n.parse().ok()).unwrap_or(200);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        println!(
            "| {:<52} | {:>9} | {:>9} | {:>9} | {:>9} |",
            "dataset page, 100 entries, thumbnails cached", "mean ms", "p50 ms", "p99 ms", "bytes"
        );
        println!("|{:-<54}|{:-<11}|{:-<11}|{:-<11}|{:-<11}|", "", "", "", "", "");
        let mut render_rows = Vec::new();
        for workers in [1usize, 2] {
            let dir = tempfile::tempdir().unwrap();
            let config =
                ambishare_registry::Config { thumbnail_workers: workers, cache_mib: 256, ..test_config(dir.path()) };
            let node = Node::start_with_web(config).await;
            let web = node.web.unwrap();
            let key = owner_key();
            let client = node.client().await;
            client.register_owner(&key, &"bench".parse().unwrap()).await.unwrap();
            let model = TestModel::photo64();
            model.publish(&client, &key).await;
            for (side, n) in [(64u32, 100usize), (256, 40)] {
                let path = publish(&node, &key, &model, &format!("side{side}"), n, side).await;
                let took = render_all(web, &path).await;
                render_rows.push((workers, side, n, took));
            }
            if workers == 1 {
                let owner = key.public_key().owner_id();
                let html = format!("/owners/{owner}/datasets/side64?limit=100");
                let json = format!("/api/v1/owners/{owner}/datasets/side64/entries?limit=100");
                for (what, path) in [("HTML", html), ("JSON", json)] {
                    let (mean, p50, p99, bytes) = page_latency(web, &path, requests).await;
                    println!(
                        "| {:<52} | {:>9.2} | {:>9.2} | {:>9.2} | {:>9} |",
                        format!("{what}, {requests} requests one after another"),
                        ms(mean),
                        ms(p50),
                        ms(p99),
                        bytes
                    );
                }
            }
            node.stop().await;
        }
        println!();
        println!(
            "| {:<52} | {:>9} | {:>9} | {:>12} |",
            "thumbnails rendered (public decode, resize, JPEG)", "images", "seconds", "thumbnails/s"
        );
        println!("|{:-<54}|{:-<11}|{:-<11}|{:-<14}|", "", "", "", "");
        for (workers, side, n, took) in render_rows {
            println!(
                "| {:<52} | {:>9} | {:>9.2} | {:>12.1} |",
                format!("{side}x{side} ({} tiles), {workers} thread(s)", (side / 64).pow(2)),
                n,
                took.as_secs_f64(),
                n as f64 / took.as_secs_f64()
            );
        }
    });
}
