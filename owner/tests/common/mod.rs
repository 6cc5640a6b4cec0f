//! Helpers of the owner's integration tests: a real registry and a real owner
//! node started in-process on 127.0.0.1:0, the tiny test model, small PNGs.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambishare_owner::admin::AdminOps;
use ambishare_owner::store::OwnerStore;
use ambishare_owner::{AdminClient, GrantRequest, Home, InitOptions, PublishJob, PublishSummary, ServeConfig};
use ambishare_proto::owner::v1::key_service_client::KeyServiceClient;
use ambishare_rpc::{ClientIdentity, make_csr};
use ambishare_shared::tiling::{image_to_tiles, load_image};
use ambishare_shared::{CodeShape, DatasetName, Device, EntryId, ModelRunner, SparseCode, Tier, ValueCodec};
use image::RgbImage;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Every test runs within this.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f).await.expect("test timed out")
}

pub fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/tiny_model")
}

pub fn init_runtime() {
    ambishare_shared::model::init_runtime(None).expect("ONNX Runtime (run deploy/setup.sh)");
}

/// A registry served in-process, plaintext, sled in a temporary directory.
pub struct TestRegistry {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ambishare_registry::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let config = ambishare_registry::Config {
            data_dir: dir.path().join("registry"),
            danger_plaintext: true,
            ..Default::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ambishare_registry::serve(config, listener, async {
            let _ = stopped.await;
        }));
        TestRegistry { url, stop: Some(stop), task: Some(task), _dir: dir }
    }

    pub async fn client(&self) -> ambishare_rpc::RegistryClient {
        ambishare_rpc::RegistryClient::connect(&self.url, None).await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// An owner home made by `init`, in a temporary directory.
pub struct TestOwner {
    pub home: Home,
    _dir: tempfile::TempDir,
}

impl TestOwner {
    pub fn init() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("owner"));
        ambishare_owner::init(&home, &InitOptions::default()).unwrap();
        TestOwner { home, _dir: dir }
    }

    /// A job with the tiny model on CPU, in batches of 2 (inputs must be absolute for a node).
    pub fn job(&self, registry: &TestRegistry, dataset: &str, inputs: Vec<PathBuf>) -> PublishJob {
        PublishJob {
            registry_url: registry.url.clone(),
            display_name: Some("test owner".parse().unwrap()),
            device: Device::Cpu,
            codec: ValueCodec::Q8,
            batch: 2,
            max_pixels: 1 << 20,
            ..PublishJob::new(dataset.parse().unwrap(), inputs, registry.url.clone(), tiny_model())
        }
    }

    /// Publishes offline (the store must not be held by `serve`).
    pub async fn publish(&self, registry: &TestRegistry, dataset: &str, inputs: Vec<PathBuf>) -> PublishSummary {
        ambishare_owner::publish(&self.home, self.job(registry, dataset, inputs), |_| {}).await.unwrap()
    }

    /// The entry made from each file (the store must not be held by `serve`).
    pub fn entry_of(&self, dataset: &str, file: &Path) -> EntryId {
        let store = OwnerStore::open(&self.home.store_dir()).unwrap();
        let dataset: DatasetName = dataset.parse().unwrap();
        let sha = ambishare_shared::ids::sha256(&std::fs::read(file).unwrap());
        store.source_entry(&dataset, &sha).unwrap().expect("no entry for file").0
    }

    pub fn offline_admin(&self) -> AdminOps {
        AdminOps::open_offline(&self.home).unwrap()
    }

    pub async fn serve(&self) -> RunningOwner {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ambishare_owner::serve(ServeConfig::new(self.home.root()), listener, async {
            let _ = stopped.await;
        }));
        RunningOwner { url, stop: Some(stop), task: Some(task) }
    }

    pub fn admin_identity(&self) -> ClientIdentity {
        self.home.admin_identity("localhost").unwrap()
    }

    pub fn server_ca(&self) -> String {
        self.home.read_pem("server-ca.pem").unwrap()
    }
}

/// A running owner node.
pub struct RunningOwner {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ambishare_owner::Result<()>>>,
}

impl RunningOwner {
    pub async fn admin(&self, owner: &TestOwner) -> AdminClient {
        AdminClient::connect(&self.url, owner.admin_identity()).await.unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Enrolls a party: it makes a key and CSR, the admin grants and signs.
pub async fn enroll(
    admin: &mut AdminClient,
    party: &str,
    dataset: &str,
    tier: Tier,
    expires_unix_ms: Option<i64>,
) -> ClientIdentity {
    let (csr, key_pem) = make_csr(party).unwrap();
    let outcome = admin
        .grant(&GrantRequest {
            party: party.parse().unwrap(),
            dataset: dataset.parse().unwrap(),
            tier,
            expires_unix_ms,
            csr_pem: Some(csr),
            certificate_days: Some(30),
        })
        .await
        .unwrap();
    ClientIdentity {
        cert_pem: outcome.certificate_pem.unwrap(),
        key_pem,
        ca_pem: outcome.server_ca_pem,
        domain: "localhost".into(),
    }
}

/// The generated key-service client over TLS, with or without a client certificate.
pub async fn raw_key_client(
    url: &str,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<KeyServiceClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(url.to_owned()).unwrap().tls_config(tls)?.connect().await?;
    Ok(KeyServiceClient::new(channel))
}

/// Small RGB images of different sizes (partial border tiles included).
pub fn write_pngs(dir: &Path, count: usize, seed: u32) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..count)
        .map(|i| {
            let (w, h) = (12 + (i as u32 % 3) * 5, 10 + (i as u32 % 4) * 3);
            let s = seed.wrapping_mul(31).wrapping_add(i as u32 * 7);
            let img = RgbImage::from_fn(w, h, |x, y| {
                let v = x.wrapping_mul(37 + s) ^ y.wrapping_mul(91 + 3 * s) ^ s.wrapping_mul(13);
                image::Rgb([(v % 251) as u8, ((v / 7 + x * 11) % 253) as u8, ((v / 13 + y * 17 + s) % 255) as u8])
            });
            let path = dir.join(format!("img-{seed}-{i:02}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

/// The true (un-ambiguated) code of an image, computed again with the model.
pub fn true_code(file: &Path) -> SparseCode {
    let runner = ModelRunner::load(&tiny_model(), Device::Cpu).unwrap();
    let m = runner.manifest().clone();
    let img = load_image(&std::fs::read(file).unwrap(), 1 << 20).unwrap();
    let (tiles, grid) = image_to_tiles(&img, m.tile_size).unwrap();
    let dense = runner.encode_tiles(&tiles, grid.count()).unwrap();
    SparseCode::top_k(&dense, CodeShape::new(grid.count() as u32, m.maps, m.dim).unwrap(), m.k).unwrap()
}

/// Key bytes in an answer (zero when every id was denied).
pub fn key_bytes(r: &ambishare_proto::owner::v1::GetKeysResponse) -> usize {
    use ambishare_proto::owner::v1::key_result::Result as Answer;
    r.results
        .iter()
        .map(|k| match &k.result {
            Some(Answer::Key(b)) => b.len(),
            _ => 0,
        })
        .sum()
}
