//! Real nodes in-process on 127.0.0.1:0: a registry (sled in a temporary
//! directory), an owner (its own `init`, mTLS key service) and parties that
//! enroll and get their certificates from the owner's admin service.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambishare_client::pull::{PullOptions, PullSummary};
use ambishare_owner::{AdminClient, GrantRequest, Home, InitOptions, PublishJob, PublishSummary, ServeConfig};
use ambishare_rpc::ClientIdentity;
use ambishare_shared::{CodeVersion, DatasetName, Device, PartyName, Tier, ValueCodec};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// Whole-test time limit.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `f` within [`TEST_TIMEOUT`].
pub async fn within<F: Future>(f: F) -> Result<F::Output> {
    tokio::time::timeout(TEST_TIMEOUT, f).await.map_err(|_| Error::Other("test timed out".into()))
}

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A server task and the switch that stops it.
struct Running<T> {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<T>>,
}

impl<T> Running<T> {
    fn spawn<F>(serve: impl FnOnce(oneshot::Receiver<()>) -> F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Running { stop: Some(stop), task: Some(tokio::spawn(serve(stopped))) }
    }

    async fn stop(&mut self) -> Option<T> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.ok(),
            None => None,
        }
    }
}

/// A registry served in-process (plaintext on loopback), its data in `dir`,
/// with its web view.
pub struct TestRegistry {
    pub url: String,
    /// The web view's address.
    pub web_addr: std::net::SocketAddr,
    pub data_dir: PathBuf,
    running: Running<ambishare_registry::Result<()>>,
}

impl TestRegistry {
    pub async fn start(data_dir: &Path) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let web = TcpListener::bind("127.0.0.1:0").await?;
        let web_addr = web.local_addr()?;
        let config = ambishare_registry::Config {
            data_dir: data_dir.to_path_buf(),
            danger_plaintext: true,
            ..Default::default()
        };
        let listeners = ambishare_registry::Listeners::grpc(listener).with_http(web);
        let running = Running::spawn(|stopped| {
            ambishare_registry::serve_on(config, listeners, async {
                let _ = stopped.await;
            })
        });
        Ok(TestRegistry { url, web_addr, data_dir: data_dir.to_path_buf(), running })
    }

    /// Stops serving and flushes; the data directory stays.
    pub async fn stop(mut self) -> Result<()> {
        match self.running.stop().await {
            Some(Err(e)) => Err(Error::Other(format!("registry: {e}"))),
            _ => Ok(()),
        }
    }
}

/// An owner made by `init` in `dir`, serving its key service in-process.
pub struct TestOwner {
    pub home: Home,
    pub url: String,
    running: Running<ambishare_owner::Result<()>>,
}

impl TestOwner {
    pub async fn start(dir: &Path) -> Result<Self> {
        let home = Home::new(dir);
        ambishare_owner::init(&home, &InitOptions::default()).map_err(owner_err)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://{}", listener.local_addr()?);
        let config = ServeConfig::new(home.root());
        let running = Running::spawn(|stopped| {
            ambishare_owner::serve(config, listener, async {
                let _ = stopped.await;
            })
        });
        Ok(TestOwner { home, url, running })
    }

    /// Publishes `inputs` (files or directories) to `registry` with the model in
    /// `model`, through the running node (its admin service).
    pub async fn publish(
        &self,
        registry: &TestRegistry,
        dataset: &str,
        model: &Path,
        inputs: Vec<PathBuf>,
    ) -> Result<PublishSummary> {
        self.publish_format(registry, dataset, model, inputs, CodeVersion::V3).await
    }

    /// Publishes in a chosen code format (v2 only to test compatibility).
    pub async fn publish_format(
        &self,
        registry: &TestRegistry,
        dataset: &str,
        model: &Path,
        inputs: Vec<PathBuf>,
        format: CodeVersion,
    ) -> Result<PublishSummary> {
        // The node reads the files itself: it takes absolute paths.
        let inputs = inputs.iter().map(std::path::absolute).collect::<std::io::Result<Vec<_>>>()?;
        let job = PublishJob {
            display_name: Some("e2e owner".parse()?),
            device: Device::Cpu,
            codec: ValueCodec::Q8,
            format,
            batch: 4,
            max_pixels: 1 << 24,
            ..PublishJob::new(dataset.parse()?, inputs, registry.url.clone(), std::path::absolute(model)?)
        };
        self.admin().await?.publish(&job, |_| {}).await.map_err(owner_err)
    }

    pub async fn admin(&self) -> Result<AdminClient> {
        let identity = self.home.admin_identity("localhost").map_err(owner_err)?;
        AdminClient::connect(&self.url, identity).await.map_err(owner_err)
    }

    pub async fn stop(mut self) {
        let _ = self.running.stop().await;
    }
}

fn owner_err(e: ambishare_owner::Error) -> Error {
    Error::Other(format!("owner: {e}"))
}

/// A party's node: its home (private key from `enroll`, certificate from the owner).
pub struct TestParty {
    pub name: PartyName,
    pub home: PathBuf,
}

impl TestParty {
    /// Enrolls (key and CSR made here) and has the owner grant `dataset` at `tier`.
    pub async fn enroll(owner: &TestOwner, dir: &Path, name: &str, dataset: &str, tier: Tier) -> Result<Self> {
        let name: PartyName = name.parse()?;
        let enrolled = ambishare_client::enroll(dir, &name).map_err(client_err)?;
        let csr_pem = std::fs::read_to_string(&enrolled.csr_path)?;
        let request = GrantRequest {
            party: name.clone(),
            dataset: dataset.parse::<DatasetName>()?,
            tier,
            expires_unix_ms: None,
            csr_pem: Some(csr_pem),
            certificate_days: Some(30),
        };
        let outcome = owner.admin().await?.grant(&request).await.map_err(owner_err)?;
        let cert = outcome.certificate_pem.ok_or_else(|| Error::Other("grant issued no certificate".into()))?;
        std::fs::write(dir.join(ambishare_client::config::PARTY_CERT), cert)?;
        std::fs::write(dir.join(ambishare_client::config::OWNER_CA), outcome.server_ca_pem)?;
        Ok(TestParty { name, home: dir.to_path_buf() })
    }

    pub fn identity(&self) -> Result<ClientIdentity> {
        let read = |name: &str| std::fs::read_to_string(self.home.join(name));
        Ok(ClientIdentity {
            cert_pem: read(ambishare_client::config::PARTY_CERT)?,
            key_pem: read(ambishare_client::config::PARTY_KEY)?,
            ca_pem: read(ambishare_client::config::OWNER_CA)?,
            domain: "localhost".into(),
        })
    }

    /// Pulls `dataset` into `out`.
    pub async fn pull(
        &self,
        registry: &TestRegistry,
        owner: &TestOwner,
        dataset: &str,
        out: &Path,
    ) -> Result<PullSummary> {
        let options = PullOptions {
            registry_url: registry.url.clone(),
            registry_ca: None,
            owner_url: owner.url.clone(),
            identity: self.identity()?,
            dataset: Some(dataset.parse()?),
            out: out.to_path_buf(),
            redo: false,
            model_cache: self.home.join("models"),
            device: Device::Cpu,
            batch: 64,
            progress: false,
            public_view: true,
        };
        ambishare_client::pull::pull(&options).await.map_err(client_err)
    }
}

fn client_err(e: ambishare_client::Error) -> Error {
    Error::Client(e)
}
