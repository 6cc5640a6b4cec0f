//! Fixtures of the registry's integration tests: real nodes on 127.0.0.1:0
//! over sled in a temporary directory, a model of dummy files, and entries.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ambishare_registry::{Config, Registry, Stats};
use ambishare_rpc::RegistryClient;
use ambishare_shared::crypto::SigningKey;
use ambishare_shared::entry::NewEntry;
use ambishare_shared::ids::sha256;
use ambishare_shared::{CodeShape, Entry, FakeModel, ModelId, SparseCode, TileGrid, ValueCodec, ambiguate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Every test runs under this limit.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn timed<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body).await.expect("test timed out");
}

/// A plaintext configuration over `dir` for tests.
pub fn test_config(dir: &Path) -> Config {
    Config {
        data_dir: dir.to_path_buf(),
        danger_plaintext: true,
        cache_mib: 16,
        shutdown_grace_secs: 2,
        ..Config::default()
    }
}

/// A registry serving on 127.0.0.1:0 until stopped.
pub struct Node {
    pub addr: SocketAddr,
    /// The web view's address, when started with one.
    pub web: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ambishare_registry::Result<()>>>,
}

impl Node {
    pub async fn start(config: Config) -> Node {
        Self::start_with(config, false).await
    }

    /// A node that also serves its web view.
    pub async fn start_with_web(config: Config) -> Node {
        Self::start_with(config, true).await
    }

    async fn start_with(config: Config, web: bool) -> Node {
        let registry = open_registry(&config).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listeners = ambishare_registry::Listeners::grpc(listener);
        let mut web_addr = None;
        if web {
            let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
            web_addr = Some(http.local_addr().unwrap());
            listeners = listeners.with_http(http);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            ambishare_registry::serve_registry(registry, &config, listeners, async {
                let _ = stopped.await;
            })
            .await
        });
        Node { addr, web: web_addr, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> RegistryClient {
        RegistryClient::connect(&self.url(), None).await.unwrap()
    }

    /// Stops the node and waits until it has flushed and closed its store.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Opens the registry of `config`. sled releases its lock file a moment after
/// a database is dropped (its I/O threads finish first): a node of the same
/// directory that just stopped may still hold it, so this retries a while.
pub async fn open_registry(config: &Config) -> Registry {
    let mut last = None;
    for _ in 0..100 {
        match Registry::open(config).await {
            Ok(registry) => return registry,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot open the registry's store {:?}: {last:?}", config.store_config());
}

/// Counts of what a stopped node's directory holds.
pub async fn stats_of(dir: &Path) -> Stats {
    let registry = open_registry(&test_config(dir)).await;
    let stats = registry.stats().await.unwrap();
    // Closing joins the writer, so the store is released soon after.
    registry.close().await.unwrap();
    stats
}

/// A model whose files are dummy bytes (the registry never runs a model),
/// with the shape of codes it accepts.
pub struct TestModel {
    pub manifest_bytes: Vec<u8>,
    pub encoder: Vec<u8>,
    pub decoder: Vec<u8>,
    pub id: ModelId,
    pub tile: u32,
    pub maps: u16,
    pub dim: u16,
    pub k: u16,
    pub k_fake: u16,
}

impl TestModel {
    /// The shipped model `models/photo64` (its real files: the web view runs its decoder).
    pub fn photo64() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/photo64");
        let manifest_bytes = std::fs::read(dir.join("manifest.json")).unwrap();
        let manifest = ambishare_shared::model::Manifest::parse(&manifest_bytes).unwrap();
        let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
        TestModel {
            id: ModelId::of_manifest(&manifest_bytes),
            encoder: read(&manifest.encoder.as_ref().unwrap().file),
            decoder: read(&manifest.decoder.file),
            manifest_bytes,
            tile: manifest.tile_size,
            maps: manifest.maps,
            dim: manifest.dim,
            k: manifest.k,
            k_fake: manifest.k_fake,
        }
    }

    /// Tiles of 8 pixels, 2 maps of 16 dims, k = 4, k_fake = 4 (the tiny model's shape).
    pub fn tiny() -> Self {
        Self::new("tiny", 8, 2, 16, 4, 4, 3000)
    }

    /// The 64x64 model's shape: L = 16, m = 256, k = 64, k_fake = 64.
    pub fn sixty_four() -> Self {
        Self::new("s64", 64, 16, 256, 64, 64, 200_000)
    }

    pub fn new(name: &str, tile: u32, maps: u16, dim: u16, k: u16, k_fake: u16, file_bytes: usize) -> Self {
        let encoder: Vec<u8> = (0..file_bytes).map(|i| (i * 7 % 251) as u8).collect();
        let decoder: Vec<u8> = (0..file_bytes + 13).map(|i| (i * 11 % 253) as u8).collect();
        let manifest = format!(
            r#"{{
  "format": "ambishare-model/1",
  "name": "{name}",
  "tile_size": {tile},
  "channels": 3,
  "maps": {maps},
  "dim": {dim},
  "k": {k},
  "k_fake": {k_fake},
  "preview_k": [],
  "encoder": {{ "file": "encoder.onnx", "sha256": "{}", "input": "image", "output": "code" }},
  "decoder": {{ "file": "decoder.onnx", "sha256": "{}", "input": "code", "output": "image" }}
}}"#,
            hex::encode(sha256(&encoder)),
            hex::encode(sha256(&decoder))
        );
        let manifest_bytes = manifest.into_bytes();
        let id = ModelId::of_manifest(&manifest_bytes);
        TestModel { manifest_bytes, encoder, decoder, id, tile, maps, dim, k, k_fake }
    }

    /// Publishes the model with `key` (whose owner must be registered).
    pub async fn publish(&self, client: &RegistryClient, key: &SigningKey) {
        let (id, _) =
            client.publish_model(key, &self.manifest_bytes, Some(&self.encoder), &self.decoder).await.unwrap();
        assert_eq!(id, self.id);
    }

    /// A signed entry of a `width`x`height` image in `dataset`, from a random code.
    pub fn entry(&self, key: &SigningKey, dataset: &str, width: u32, height: u32, rng: &mut ChaCha20Rng) -> Entry {
        let tiles = TileGrid::for_image(width, height, self.tile).unwrap().count() as u32;
        let shape = CodeShape::new(tiles, self.maps, self.dim).unwrap();
        let dense: Vec<f32> = (0..shape.dense_len()).map(|_| rng.random_range(-1.0f32..1.0) + 1e-3).collect();
        let code = SparseCode::top_k(&dense, shape, self.k).unwrap();
        let (public, _key) = ambiguate(&code, self.k_fake, ValueCodec::Q8, &FakeModel::paper(), rng).unwrap();
        Entry::create(
            NewEntry {
                owner: key.public_key().owner_id(),
                dataset: dataset.parse().unwrap(),
                model: self.id,
                width,
                height,
                label: String::new(),
                code: public,
            },
            key,
        )
        .unwrap()
    }

    /// `n` single-tile entries in `dataset`.
    pub fn entries(&self, key: &SigningKey, dataset: &str, n: usize, seed: u64) -> Vec<Entry> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..n).map(|_| self.entry(key, dataset, self.tile, self.tile, &mut rng)).collect()
    }
}

/// A fresh owner key.
pub fn owner_key() -> SigningKey {
    SigningKey::generate().unwrap().0
}

/// A node over a fresh directory with one registered owner and the tiny model published.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub node: Node,
    pub client: RegistryClient,
    pub key: SigningKey,
    pub model: TestModel,
}

impl Fixture {
    pub async fn new() -> Fixture {
        Self::with_config(|c| c).await
    }

    pub async fn with_config(adjust: impl FnOnce(Config) -> Config) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(adjust(test_config(dir.path()))).await;
        let client = node.client().await;
        let key = owner_key();
        client.register_owner(&key, &"test owner".parse().unwrap()).await.unwrap();
        let model = TestModel::tiny();
        model.publish(&client, &key).await;
        Fixture { dir, node, client, key, model }
    }
}

/// Milliseconds since the Unix epoch, as requests carry them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Publishes raw messages over one stream; the acknowledgements, or the status that ended it.
pub async fn raw_publish(
    client: &RegistryClient,
    messages: Vec<Vec<ambishare_proto::types::v1::Entry>>,
) -> Result<Vec<ambishare_proto::registry::v1::PublishAck>, tonic::Status> {
    use ambishare_proto::registry::v1::PublishRequest;
    let requests = futures::stream::iter(messages.into_iter().map(|entries| PublishRequest { entries }));
    let mut acks = client.raw().publish(requests).await?.into_inner();
    let mut out = Vec::new();
    while let Some(ack) = acks.message().await? {
        out.push(ack);
    }
    Ok(out)
}

/// A GET over plain HTTP: status, content type and body (errors are answers too).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Option<String>, Vec<u8>, ureq::http::HeaderMap) {
    let url = format!("http://{addr}{path}");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut response = agent.get(&url).call().unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.body_mut().with_config().limit(64 << 20).read_to_vec().unwrap();
        (status, content_type, body, headers)
    })
    .await
    .unwrap()
}
