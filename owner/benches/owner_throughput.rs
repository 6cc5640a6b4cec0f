//! Throughput of the owner node, printed as a table.
//!
//! - Key releases over mutual TLS on loopback: keys/s and latency (p50, p99) for
//!   batches of 1 and 256 ids, one client calling in sequence, with the audit
//!   log flushed per call (the default) and without; for format v3 entries
//!   (44-byte keys derived from the master secret) beside format v2 entries
//!   (sealed per-entry keys, about 24 KB for a 512x512 image).
//! - Publishing on CPU: images/s of `publish` (decode, tile, encode, top-k,
//!   ambiguate, sign, seal, store, send to an in-process registry), beside the
//!   alternative a user would pick, JPEG encode (image crate) + AES-256-GCM
//!   (ring), of the same images in the same run.
//!
//! ```text
//! cargo bench -p ambishare-owner --bench owner_throughput -- [--model DIR] [--images N] [--size PX] [--calls N]
//! ```
//! (also AMBISHARE_BENCH_MODEL, AMBISHARE_BENCH_IMAGES, AMBISHARE_BENCH_SIZE, AMBISHARE_BENCH_CALLS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ambishare_owner::{AdminClient, GrantRequest, Home, InitOptions, PublishJob, ServeConfig};
use ambishare_rpc::{ClientIdentity, KeyClient, make_csr};
use ambishare_shared::{CodeVersion, Device, EntryId, Tier, ValueCodec};
use image::RgbImage;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Args {
    model: PathBuf,
    images: usize,
    size: u32,
    calls: usize,
}

fn args() -> Args {
    let env = |k: &str| std::env::var(k).ok();
    let mut a = Args {
        model: env("AMBISHARE_BENCH_MODEL")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/photo64")),
        images: env("AMBISHARE_BENCH_IMAGES").and_then(|v| v.parse().ok()).unwrap_or(256),
        size: env("AMBISHARE_BENCH_SIZE").and_then(|v| v.parse().ok()).unwrap_or(64),
        calls: env("AMBISHARE_BENCH_CALLS").and_then(|v| v.parse().ok()).unwrap_or(2000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model" => a.model = PathBuf::from(it.next().expect("--model DIR")),
            "--images" => a.images = it.next().and_then(|v| v.parse().ok()).expect("--images N"),
            "--size" => a.size = it.next().and_then(|v| v.parse().ok()).expect("--size PX"),
            "--calls" => a.calls = it.next().and_then(|v| v.parse().ok()).expect("--calls N"),
            _ => {} // cargo passes --bench
        }
    }
    // cargo runs benches in the package's directory; accept paths from the workspace root too.
    if a.model.is_relative() && !a.model.exists() {
        let from_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&a.model);
        if from_root.exists() {
            a.model = from_root;
        }
    }
    a
}

/// Photo-like test images: smooth gradients with some texture.
fn write_images(dir: &Path, count: usize, size: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..count)
        .map(|i| {
            let s = i as u32;
            let img = RgbImage::from_fn(size, size, |x, y| {
                let t = ((x * 7 + y * 3 + s * 11) % 32) as u8;
                image::Rgb([
                    ((x * 255 / size) as u8).wrapping_add(t),
                    ((y * 255 / size) as u8).wrapping_add(s as u8),
                    (((x + y) * 127 / size) as u8) ^ t,
                ])
            });
            let path = dir.join(format!("img-{i:05}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

fn baseline_jpeg_aes(files: &[PathBuf]) -> (Duration, usize) {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
    let start = Instant::now();
    let mut bytes = 0;
    for (i, f) in files.iter().enumerate() {
        let data = std::fs::read(f).unwrap();
        let img = ambishare_shared::tiling::load_image(&data, 1 << 26).unwrap();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(&img).unwrap();
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&(i as u64).to_le_bytes());
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut jpeg).unwrap();
        bytes += jpeg.len();
    }
    (start.elapsed(), bytes)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Row {
    what: String,
    rate: String,
    p50: String,
    p99: String,
}

async fn key_release(url: &str, identity: ClientIdentity, ids: &[EntryId], batch: usize, calls: usize) -> Row {
    let mut client = KeyClient::connect(url, identity).await.unwrap().with_batch_size(batch);
    let mut latencies = Vec::with_capacity(calls);
    for i in 0..calls.min(50) {
        let start = (i * batch) % ids.len();
        let chunk: Vec<EntryId> = (0..batch).map(|j| ids[(start + j) % ids.len()]).collect();
        client.get_keys(&chunk).await.unwrap();
    }
    let begin = Instant::now();
    for i in 0..calls {
        let start = (i * batch) % ids.len();
        let chunk: Vec<EntryId> = (0..batch).map(|j| ids[(start + j) % ids.len()]).collect();
        let t = Instant::now();
        let answers = client.get_keys(&chunk).await.unwrap();
        latencies.push(t.elapsed());
        assert!(answers.iter().all(|(_, r)| r.is_ok()));
    }
    let total = begin.elapsed();
    latencies.sort();
    Row {
        what: String::new(),
        rate: format!("{:.0} keys/s", (calls * batch) as f64 / total.as_secs_f64()),
        p50: format!("{:.2} ms", percentile(&latencies, 0.50).as_secs_f64() * 1e3),
        p99: format!("{:.2} ms", percentile(&latencies, 0.99).as_secs_f64() * 1e3),
    }
}

/// The same calls with the generated client: the keys' bytes are not decoded,
/// so this is the server's side alone.
async fn key_release_raw(url: &str, identity: &ClientIdentity, ids: &[EntryId], batch: usize, calls: usize) -> Row {
    use ambishare_proto::owner::v1 as pb;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
        .domain_name(identity.domain.clone());
    let channel = Endpoint::from_shared(url.to_owned()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let mut client = pb::key_service_client::KeyServiceClient::new(channel);
    let request = |i: usize| {
        let start = (i * batch) % ids.len();
        pb::GetKeysRequest { entry_ids: (0..batch).map(|j| ids[(start + j) % ids.len()].to_string()).collect() }
    };
    for i in 0..calls.min(50) {
        client.get_keys(request(i)).await.unwrap();
    }
    let mut latencies = Vec::with_capacity(calls);
    let begin = Instant::now();
    for i in 0..calls {
        let r = request(i);
        let t = Instant::now();
        let answers = client.get_keys(r).await.unwrap().into_inner();
        latencies.push(t.elapsed());
        assert_eq!(answers.results.len(), batch);
    }
    let total = begin.elapsed();
    latencies.sort();
    Row {
        what: String::new(),
        rate: format!("{:.0} keys/s", (calls * batch) as f64 / total.as_secs_f64()),
        p50: format!("{:.2} ms", percentile(&latencies, 0.50).as_secs_f64() * 1e3),
        p99: format!("{:.2} ms", percentile(&latencies, 0.99).as_secs_f64() * 1e3),
    }
}

async fn serve(home: &Home, audit_sync: bool) -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServeConfig { home: home.root().to_path_buf(), audit_sync };
    let task = tokio::spawn(async move {
        ambishare_owner::serve(config, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (url, stop, task)
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(args));
}

async fn run(args: Args) {
    ambishare_shared::model::init_runtime(None).expect("ONNX Runtime (run deploy/setup.sh)");
    let dir = tempfile::tempdir().unwrap();
    let files = write_images(&dir.path().join("images"), args.images, args.size);
    let manifest =
        ambishare_shared::Manifest::parse(&std::fs::read(args.model.join("manifest.json")).unwrap()).unwrap();

    // Registry, in-process, plaintext on loopback.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry_url = format!("http://{}", listener.local_addr().unwrap());
    let (registry_stop, registry_stopped) = oneshot::channel::<()>();
    let registry_config = ambishare_registry::Config {
        data_dir: dir.path().join("registry"),
        danger_plaintext: true,
        ..Default::default()
    };
    let registry = tokio::spawn(ambishare_registry::serve(registry_config, listener, async {
        let _ = registry_stopped.await;
    }));

    let home = Home::new(dir.path().join("owner"));
    ambishare_owner::init(&home, &InitOptions::default()).unwrap();
    let options = |dataset: &str, inputs: Vec<PathBuf>| PublishJob {
        device: Device::Cpu,
        codec: ValueCodec::Q8,
        format: if dataset.ends_with("-v2") { CodeVersion::V2 } else { CodeVersion::V3 },
        batch: 16,
        max_pixels: 1 << 26,
        ..PublishJob::new(dataset.parse().unwrap(), inputs, registry_url.clone(), args.model.clone())
    };
    // Warm-up (model load, registration, model upload) on other images.
    let warm = write_images(&dir.path().join("warm"), 4, args.size + 1);
    ambishare_owner::publish(&home, options("warmup", warm), |_| {}).await.unwrap();

    let start = Instant::now();
    let summary = ambishare_owner::publish(&home, options("bench", files.clone()), |_| {}).await.unwrap();
    let publish_time = start.elapsed();
    assert_eq!(summary.published, files.len(), "{summary}");
    let (baseline_time, baseline_bytes) = tokio::task::spawn_blocking({
        let files = files.clone();
        move || baseline_jpeg_aes(&files)
    })
    .await
    .unwrap();

    // The same images in format v2, for the keys' comparison.
    let v2 = ambishare_owner::publish(&home, options("bench-v2", files.clone()), |_| {}).await.unwrap();
    assert_eq!(v2.published, files.len(), "{v2}");
    let formats = [("v3", "bench", summary.entries.clone()), ("v2", "bench-v2", v2.entries.clone())];
    let mut rows = Vec::new();
    for audit_sync in [true, false] {
        let (url, stop, task) = serve(&home, audit_sync).await;
        let mut admin = AdminClient::connect(&url, home.admin_identity("localhost").unwrap()).await.unwrap();
        let party = if audit_sync { "bench-sync" } else { "bench-nosync" };
        let (csr, key_pem) = make_csr(party).unwrap();
        let mut first = None;
        for (_, dataset, _) in &formats {
            let granted = admin
                .grant(&GrantRequest {
                    party: party.parse().unwrap(),
                    dataset: dataset.parse().unwrap(),
                    tier: Tier::Full,
                    expires_unix_ms: None,
                    csr_pem: first.is_none().then(|| csr.clone()),
                    certificate_days: None,
                })
                .await
                .unwrap();
            first.get_or_insert(granted);
        }
        let outcome = first.unwrap();
        let identity = ClientIdentity {
            cert_pem: outcome.certificate_pem.unwrap(),
            key_pem,
            ca_pem: outcome.server_ca_pem,
            domain: "localhost".into(),
        };
        // Unflushed audit: v3 only, to show what durability costs.
        for (format, _, ids) in formats.iter().take(if audit_sync { 2 } else { 1 }) {
            let key_bytes = {
                let mut client = KeyClient::connect(&url, identity.clone()).await.unwrap();
                client.get_keys(&ids[..1]).await.unwrap()[0].1.as_ref().unwrap().encode().len()
            };
            for batch in [1usize, 256] {
                let calls = if batch == 1 { args.calls } else { (args.calls / 8).max(20) };
                let mut row = key_release(&url, identity.clone(), ids, batch, calls).await;
                row.what = format!(
                    "GetKeys {format} ({key_bytes} B keys), batch {batch:>3}, audit {} ({calls} calls)",
                    if audit_sync { "durable" } else { "not flushed" }
                );
                rows.push(row);
            }
            let calls = (args.calls / 8).max(20);
            let mut row = key_release_raw(&url, &identity, ids, 256, calls).await;
            row.what = format!(
                "GetKeys {format}, batch 256, audit {}, keys not decoded ({calls} calls)",
                if audit_sync { "durable" } else { "not flushed" }
            );
            rows.push(row);
        }
        stop.send(()).unwrap();
        task.await.unwrap();
    }
    let images = files.len() as f64;
    rows.push(Row {
        what: format!("publish (encode+ambiguate+sign+seal+send), {} images {}x{}", files.len(), args.size, args.size),
        rate: format!("{:.1} images/s", images / publish_time.as_secs_f64()),
        p50: format!("{:.2} ms/img", publish_time.as_secs_f64() * 1e3 / images),
        p99: "-".into(),
    });
    rows.push(Row {
        what: format!("baseline: PNG decode + JPEG q90 + AES-256-GCM, same images ({baseline_bytes} bytes out)"),
        rate: format!("{:.1} images/s", images / baseline_time.as_secs_f64()),
        p50: format!("{:.2} ms/img", baseline_time.as_secs_f64() * 1e3 / images),
        p99: "-".into(),
    });

    println!();
    println!(
        "model {} (tile {}, L={}, m={}, k={}, k_fake={}), {} CPU threads",
        manifest.name,
        manifest.tile_size,
        manifest.maps,
        manifest.dim,
        manifest.k,
        manifest.k_fake,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("{:<78} {:>16} {:>12} {:>10}", "what", "throughput", "p50", "p99");
    for r in rows {
        println!("{:<78} {:>16} {:>12} {:>10}", r.what, r.rate, r.p50, r.p99);
    }
    registry_stop.send(()).unwrap();
    registry.await.unwrap().unwrap();
}
