//! The registry node of ambishare: the public database of ambiguated codes.
//!
//! Owners register an Ed25519 key, publish their models and then signed
//! entries; anyone reads. Entries are checked at the edge ([`service`]),
//! written by a group-committing writer ([`writer`]) into a [`Store`] of
//! `ambishare-db` (sled by default; S3 to scale out) together with their
//! indexes ([`db`]), and acknowledged only once flushed. Nothing is held
//! in one process that another would need: any number of registries on one
//! S3 store serve the same data. [`serve`] runs the gRPC endpoint with health, reflection
//! and an optional Prometheus endpoint. Its typed client is in `ambishare-rpc`
//! (the other nodes link that, never this crate).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ambishare_proto::registry::v1::registry_service_server::RegistryServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::{info, info_span, warn};

pub mod config;
mod db;
pub mod error;
pub mod metrics;
pub mod migrate;
mod service;
pub mod tls_cert;
pub mod web;
mod writer;

pub use ambishare_db::{Store, StoreConfig};
pub use config::Engine;
pub use config::{Cli, Command, Config, Limits};
pub use db::{DatasetSummary, Stats, StoreCheck, StoredEntry};
pub use error::{Error, Result};
pub use service::RegistryApi;

use crate::db::Db;
use crate::metrics::Metrics;
use crate::writer::Writer;

/// An open registry: its store, its writer and its handlers.
pub struct Registry {
    api: RegistryApi,
}

impl Registry {
    /// Opens the store the configuration names and starts the writer.
    pub async fn open(config: &Config) -> Result<Self> {
        let store = config.store_config().open().await?;
        Self::with_store(store, config.limits()).await
    }

    /// A registry over an already opened store.
    pub async fn with_store(store: Store, limits: Limits) -> Result<Self> {
        let db = Db::open(store).await?;
        let metrics = Arc::new(Metrics::new());
        let writer = Writer::start(db.clone(), limits.group_commit_entries, limits.publish_queue, metrics.clone());
        Ok(Registry { api: RegistryApi::new(db, writer, limits, metrics) })
    }

    /// The gRPC service, with the configured message size limits.
    pub fn service(&self) -> RegistryServiceServer<RegistryApi> {
        let max = self.api.inner.limits.max_message_bytes;
        RegistryServiceServer::new(self.api.clone()).max_decoding_message_size(max).max_encoding_message_size(max)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.api.inner.metrics.clone()
    }

    pub fn store(&self) -> Store {
        self.api.inner.db.store().clone()
    }

    /// The web view's state over this registry's store, with `workers`
    /// thumbnail threads (see [`web`]).
    pub fn web_state(&self, workers: usize, queue: usize, max_tiles: u32) -> Result<web::WebState> {
        let db = self.api.inner.db.clone();
        let thumbnails = web::Thumbnailer::start(db.clone(), workers, queue, max_tiles)?;
        Ok(web::WebState::new(db, thumbnails))
    }

    /// Counts of what the registry holds (walks the whole store).
    pub async fn stats(&self) -> Result<Stats> {
        self.api.inner.db.stats().await
    }

    /// Stops taking entries and waits until every queued one is written and flushed.
    pub async fn close(&self) -> Result<()> {
        self.api.inner.writer.close().await
    }
}

fn load_tls(config: &Config) -> Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let cert_pem = std::fs::read(cert).map_err(|e| Error::io(format!("reading {}", cert.display()), e))?;
    let key_pem = ambishare_shared::crypto::read_secret_file(key).map_err(|e| Error::Config(e.to_string()))?;
    Ok(Some(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem))))
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone: stop as well.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The sockets a registry serves on: gRPC, and optionally the Prometheus
/// endpoint and the web view. Tests bind port 0 and pass them in.
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// gRPC only.
    pub fn grpc(grpc: TcpListener) -> Self {
        Listeners { grpc, metrics: None, http: None }
    }

    pub fn with_metrics(mut self, listener: TcpListener) -> Self {
        self.metrics = Some(listener);
        self
    }

    pub fn with_http(mut self, listener: TcpListener) -> Self {
        self.http = Some(listener);
        self
    }

    /// Binds the gRPC address and whichever of `metrics_listen` and
    /// `http_listen` the configuration names.
    pub async fn bind(config: &Config) -> Result<Self> {
        Self::grpc(bind(config.listen).await?).with_configured(config).await
    }

    /// Adds the metrics and web view listeners the configuration names.
    async fn with_configured(mut self, config: &Config) -> Result<Self> {
        if let Some(addr) = config.metrics_listen {
            self.metrics = Some(bind(addr).await?);
        }
        if let Some(addr) = config.http_listen {
            self.http = Some(bind(addr).await?);
        }
        Ok(self)
    }
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| Error::io(format!("binding {addr}"), e))
}

/// Serves the registry on `listener` (and the metrics endpoint and web view
/// the config names) until `shutdown` completes; then finishes open requests
/// (within the grace period), flushes queued publishes and returns.
pub async fn serve(config: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let listeners = Listeners::grpc(listener).with_configured(&config).await?;
    serve_on(config, listeners, shutdown).await
}

/// [`serve`] on listeners of the caller's.
pub async fn serve_on(config: Config, listeners: Listeners, shutdown: impl Future<Output = ()>) -> Result<()> {
    config.validate()?;
    // Fail on an unusable certificate or key before touching the data directory.
    load_tls(&config)?;
    let registry = Registry::open(&config).await?;
    serve_registry(registry, &config, listeners, shutdown).await
}

/// Serves an open registry (its store and limits are the registry's; the
/// rest of `config` applies) until `shutdown`, then closes it.
pub async fn serve_registry(
    registry: Registry,
    config: &Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let Listeners { grpc: listener, metrics: metrics_listener, http: http_listener } = listeners;
    let tls = match config.validate().and_then(|()| load_tls(config)) {
        Ok(tls) => tls,
        Err(e) => {
            registry.close().await?;
            return Err(e);
        }
    };
    let secure = tls.is_some();
    let grace = Duration::from_secs(config.shutdown_grace_secs);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<RegistryServiceServer<RegistryApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ambishare_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection service: {e}")))?;
    let mut builder = Server::builder().trace_fn(|request| info_span!("grpc", path = %request.uri().path()));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(|e| Error::Config(format!("TLS certificate or key: {e}")))?;
    }
    let router = builder.add_service(health).add_service(reflection).add_service(registry.service());

    let (stop_tx, stop_rx) = watch::channel(false);
    let addr = listener.local_addr().map_err(|e| Error::io("reading the listen address", e))?;
    // Small replies must not wait for Nagle's algorithm (40 ms per request otherwise).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).with_keepalive(Some(Duration::from_secs(60)));
    let mut server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone())));
    let metrics_task = match metrics_listener {
        Some(l) => {
            let metrics_addr = l.local_addr().map_err(|e| Error::io("reading the metrics address", e))?;
            info!(%metrics_addr, "metrics endpoint serving /metrics");
            Some(tokio::spawn(metrics::serve_metrics(l, registry.metrics(), stopped(stop_rx.clone()))))
        }
        None => None,
    };
    let web_task = match http_listener {
        Some(l) => {
            let state =
                registry.web_state(config.thumbnail_workers, config.thumbnail_queue, config.thumbnail_max_tiles)?;
            Some(tokio::spawn(web::serve_web(l, state, stopped(stop_rx.clone()))))
        }
        None => None,
    };
    info!(%addr, tls = secure, store = %config.store_config(), "registry serving");

    let failed = tokio::select! {
        () = shutdown => None,
        result = &mut server => Some(result),
    };
    info!("shutting down: finishing open requests");
    health_reporter.set_not_serving::<RegistryServiceServer<RegistryApi>>().await;
    let _ = stop_tx.send(true);
    let served = match failed {
        Some(result) => result,
        None => match tokio::time::timeout(grace, &mut server).await {
            Ok(result) => result,
            Err(_) => {
                warn!(grace_secs = grace.as_secs(), "requests still open after the grace period; cutting them off");
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    for (name, task) in [("metrics endpoint", metrics_task), ("web view", web_task)] {
        let Some(task) = task else { continue };
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(Err(e))) => warn!(error = %e, "{name} failed"),
            Ok(Err(e)) => warn!(error = %e, "{name} task failed"),
            Err(_) => warn!("{name} still open after the grace period"),
            Ok(Ok(Ok(()))) => {}
        }
    }
    // Queued publishes are written and flushed before we return.
    registry.close().await?;
    served??;
    info!("registry stopped");
    Ok(())
}

/// Checks a registry's store (see [`StoreCheck`]); the registry should be stopped.
pub async fn check_store(store: Store) -> Result<StoreCheck> {
    Db::open(store).await?.check().await
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received"),
        () = terminate => info!("SIGTERM received"),
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            if args.print_config {
                print!("{}", config.to_toml()?);
                return Ok(());
            }
            config.validate()?;
            let listeners = Listeners::bind(&config).await?;
            serve_on(config, listeners, shutdown_signal()).await
        }
        Command::Migrate(args) => {
            let progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let report = migrate::migrate(&args.from, &args.to, Limits::default(), progress).await?;
            println!("{report}");
            if report.refusal_count > 0 {
                return Err(Error::Invalid(format!(
                    "{} records were not copied (listed above); the rest were",
                    report.refusal_count
                )));
            }
            Ok(())
        }
        Command::TlsCert(args) => {
            let written = tls_cert::make(&args.out, &args.names, args.days)?;
            println!("server certificate: {} (serve --tls-cert)", written.server_cert.display());
            println!("server key:         {} (serve --tls-key)", written.server_key.display());
            println!(
                "CA certificate:     {} (give it to owners and parties: --registry-ca)",
                written.ca_cert.display()
            );
            Ok(())
        }
        Command::Stats(args) => {
            let store = args.resolve()?.store_config();
            if let StoreConfig::Sled { path, .. } = &store
                && !path.is_dir()
            {
                return Err(Error::Config(format!("no data directory at {}", path.display())));
            }
            let stats = Db::open(store.open().await?).await?.stats().await?;
            println!("{stats}");
            Ok(())
        }
    }
}
