//! The command line of `ambishare-owner`: argument types (clap) and the
//! dispatch to the library. `main.rs` only parses and calls [`run`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use ambishare_shared::{CodeVersion, DatasetName, Device, DisplayName, PartyName, Tier, ValueCodec};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::admin::AdminOps;
use crate::client::AdminClient;
use crate::config::{self, FileConfig};
use crate::error::{Error, Result};
use crate::home::{self, Home, InitOptions};
use crate::publish::{self, FileOutcome, PublishEvent, PublishJob, PublishSummary};
use crate::rotate;
use crate::service::{self, ServeConfig};
use crate::types::{AuditEvent, AuditQuery, AuditResult, Grant, GrantOutcome, GrantRequest, now_unix_ms};

/// The data owner's node of ambishare: publishes ambiguated codes of images to
/// a public registry and releases their secret support keys to authorized
/// parties over mutual TLS.
///
/// Settings come from flags, then AMBISHARE_OWNER_* environment variables,
/// then the TOML file (--config, or <home>/owner.toml), then defaults.
/// Logging follows RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(name = "ambishare-owner", version, about, long_about)]
pub struct Cli {
    /// The owner's home directory: identity, certificates, store and owner.toml [default: ~/.ambishare-owner]
    #[arg(long, env = "AMBISHARE_OWNER_HOME", global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// TOML config file [default: <home>/owner.toml when present]
    #[arg(long, env = "AMBISHARE_OWNER_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the owner's identity: signing key, sealing key, the key service's CA and
    /// certificate, the client CA for parties, and the admin certificate. Prints the owner id.
    Init(InitArgs),
    /// Encode images with the model, ambiguate, sign and publish them to the registry.
    /// Format v3 (default): fakes derived from the owner's master secret, so an image
    /// published again gives the same public code; each entry's key derives from its
    /// stored tag. The running node does the work
    /// (it holds the store, and goes on serving keys); --offline does it here while
    /// `serve` is stopped. Resumable: run it again after a crash or an interruption
    /// and it publishes what is missing, duplicating nothing.
    Publish(PublishArgs),
    /// Serve the key service (parties) and the admin service (owner) over mutual TLS.
    Serve(ServeArgs),
    /// Grant a party a dataset at a tier, signing its certificate request (CSR).
    Grant(GrantArgs),
    /// Revoke a party's grant on a dataset, or all its grants and certificates.
    Revoke(RevokeArgs),
    /// List grants.
    Grants(GrantsArgs),
    /// Show the audit log: key releases, denials, refused calls, grants and revocations.
    Audit(AuditArgs),
    /// Re-seal the master secret and every stored v2 support key under a new sealing
    /// key, then remove the old key. Resumable. The key service must be stopped.
    RotateSealingKey,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Extra name (DNS name or IP address) for the key service's certificate; repeatable.
    /// localhost and 127.0.0.1 are always included.
    #[arg(long = "san", value_name = "NAME")]
    pub sans: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CodecArg {
    /// 1 byte a value
    Q8,
    /// IEEE half precision, 2 bytes a value
    F16,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    /// Fakes and sign flips derived from the owner's master secret: the same
    /// image gives the same public code; keys of 44 bytes (q8 only)
    V3,
    /// Fresh randomness per publication, per-entry sealed keys (compatibility
    /// only: an image published twice under v2 can be recovered)
    V2,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TierArg {
    /// Every real nonzero: full-quality decodes.
    Full,
    /// Only the largest real nonzeros: low-quality previews.
    Preview,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Registry URL (http:// or https://) [toml: registry]
    #[arg(long, env = "AMBISHARE_OWNER_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,
    /// PEM of the CA of an https:// registry [toml: registry_ca]
    #[arg(long, env = "AMBISHARE_OWNER_REGISTRY_CA", value_name = "PEM")]
    pub registry_ca: Option<PathBuf>,
    /// Dataset the images are published in (lowercase letters, digits, '.', '_', '-')
    #[arg(long, env = "AMBISHARE_OWNER_DATASET")]
    pub dataset: DatasetName,
    /// Model directory (manifest.json and its ONNX files) [toml: model] [default: models/photo64]
    #[arg(long, env = "AMBISHARE_OWNER_MODEL", value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Where the encoder runs [toml: device] [default: auto]
    #[arg(long, env = "AMBISHARE_OWNER_DEVICE", value_enum)]
    pub device: Option<DeviceArg>,
    /// How code values are published [toml: codec] [default: q8]
    #[arg(long, env = "AMBISHARE_OWNER_CODEC", value_enum)]
    pub codec: Option<CodecArg>,
    /// Format of the public codes [toml: format] [default: v3]
    #[arg(long, env = "AMBISHARE_OWNER_FORMAT", value_enum)]
    pub format: Option<FormatArg>,
    /// Images encoded together [toml: batch] [default: 16]
    #[arg(long, env = "AMBISHARE_OWNER_BATCH", value_name = "N")]
    pub batch: Option<usize>,
    /// Name to register under at the registry: 1 to 128 characters, no control characters
    /// [toml: display_name] [default: "ambishare owner <id>"]
    #[arg(long, env = "AMBISHARE_OWNER_NAME")]
    pub name: Option<DisplayName>,
    /// Largest image accepted, in pixels [toml: max_pixels] [default: 67108864]
    #[arg(long, env = "AMBISHARE_OWNER_MAX_PIXELS", value_name = "N")]
    pub max_pixels: Option<u64>,
    /// Write `<entry id>\t<file>` lines for every published input file (now or before)
    #[arg(long, value_name = "FILE")]
    pub ids_out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Image files (PNG, JPEG, WebP) and directories (searched recursively for .png, .jpg, .jpeg, .webp).
    /// Sent to the node as absolute paths: it reads them, and the model, on this machine.
    #[arg(required = true, value_name = "FILES|DIRS")]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub target: AdminTarget,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [toml: listen] [default: 127.0.0.1:7443]
    #[arg(long, env = "AMBISHARE_OWNER_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Flush the audit log before answering each key request [toml: audit_sync] [default: true]
    #[arg(long, env = "AMBISHARE_OWNER_AUDIT_SYNC", value_name = "BOOL")]
    pub audit_sync: Option<bool>,
}

/// Where `publish` and the admin commands act: the running owner node, or the store directly.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// URL of the running owner node [toml: owner_url] [default: https://127.0.0.1:7443]
    #[arg(long, env = "AMBISHARE_OWNER_URL", value_name = "URL")]
    pub owner: Option<String>,
    /// Name checked in the key service's certificate [toml: owner_domain] [default: localhost]
    #[arg(long, env = "AMBISHARE_OWNER_DOMAIN")]
    pub domain: Option<String>,
    /// Act on the store directly instead (only while `serve` is not running)
    #[arg(long, conflicts_with_all = ["owner", "domain"])]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The party's certificate signing request (PEM). Without it, the dataset is added
    /// to a party that already holds a certificate.
    #[arg(long, value_name = "FILE")]
    pub csr: Option<PathBuf>,
    /// Party name; also the common name of its certificate
    #[arg(long)]
    pub party: PartyName,
    /// Dataset the party may fetch keys of
    #[arg(long)]
    pub dataset: DatasetName,
    /// How much of each image's support the party learns
    #[arg(long, value_enum, default_value = "full")]
    pub tier: TierArg,
    /// Grant lifetime, e.g. 30d, 12h [default: never expires]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub expires: Option<Duration>,
    /// Validity of the party's certificate, in days
    #[arg(long, value_name = "DAYS", default_value_t = crate::pki::DEFAULT_PARTY_CERT_DAYS)]
    pub cert_days: u32,
    /// Where to write the party's certificate; the owner's server CA goes next to it
    /// as <name>-server-ca.pem [default: <party>.pem]
    #[arg(long, value_name = "CERT.pem")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub target: AdminTarget,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Party whose access ends (on its next request)
    #[arg(long)]
    pub party: PartyName,
    /// Only this dataset [default: every grant and certificate of the party]
    #[arg(long)]
    pub dataset: Option<DatasetName>,
    #[command(flatten)]
    pub target: AdminTarget,
}

#[derive(Debug, Args)]
pub struct GrantsArgs {
    /// Only this party
    #[arg(long)]
    pub party: Option<PartyName>,
    #[command(flatten)]
    pub target: AdminTarget,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this party's events
    #[arg(long)]
    pub party: Option<String>,
    /// Most events shown (1 to 10000)
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Only events after this sequence number
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    pub after: u64,
    #[command(flatten)]
    pub target: AdminTarget,
}

/// Parses nothing: runs a parsed command line, printing errors; the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (default: info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

async fn dispatch(cli: Cli) -> Result<()> {
    let home = Home::new(match cli.home {
        Some(h) => h,
        None => config::default_home()?,
    });
    if let Command::Init(args) = &cli.command {
        let owner = home::init(&home, &InitOptions { sans: args.sans.clone() })?;
        println!("{owner}");
        eprintln!("owner identity created in {}", home.root().display());
        return Ok(());
    }
    let file = FileConfig::load(cli.config.as_deref(), &home)?;
    match cli.command {
        Command::Init(_) => Ok(()),
        Command::Publish(args) => run_publish(&home, &file, args).await,
        Command::Serve(args) => run_serve(&home, &file, args).await,
        Command::Grant(args) => run_grant(&home, &file, args).await,
        Command::Revoke(args) => {
            let revoked = match Admin::open(&home, &file, &args.target).await? {
                Admin::Remote(mut c) => c.revoke(&args.party, args.dataset.as_ref()).await?,
                Admin::Local(ops) => ops.revoke(&args.party, args.dataset.as_ref())?,
            };
            println!("revoked {revoked} grant(s) of {}", args.party);
            Ok(())
        }
        Command::Grants(args) => {
            let grants = match Admin::open(&home, &file, &args.target).await? {
                Admin::Remote(mut c) => c.list_grants(args.party.as_ref()).await?,
                Admin::Local(ops) => ops.list_grants(args.party.as_ref())?,
            };
            print_grants(&grants);
            Ok(())
        }
        Command::Audit(args) => {
            let query = AuditQuery { after_seq: args.after, limit: args.limit, party: args.party.clone() };
            let events = match Admin::open(&home, &file, &args.target).await? {
                Admin::Remote(mut c) => c.audit_log(&query).await?,
                Admin::Local(ops) => ops.audit_log(&query)?,
            };
            print_audit(&events);
            Ok(())
        }
        Command::RotateSealingKey => {
            let summary = rotate::rotate_sealing_key(&home)?;
            println!(
                "sealing key {} is current; {} v2 support key(s) re-sealed, master secret {}{}; {} old key file(s) removed",
                summary.new_key,
                summary.resealed,
                if summary.master_resealed { "re-sealed" } else { "unchanged" },
                if summary.resumed { " (resumed)" } else { "" },
                summary.removed.len()
            );
            Ok(())
        }
    }
}

/// Admin operations on the running node (over mTLS with the admin certificate) or on the store.
enum Admin {
    Remote(AdminClient),
    Local(Box<AdminOps>),
}

impl Admin {
    async fn open(home: &Home, file: &FileConfig, target: &AdminTarget) -> Result<Admin> {
        if target.offline {
            return Ok(Admin::Local(Box::new(AdminOps::open_offline(home)?)));
        }
        Ok(Admin::Remote(connect_admin(home, file, target).await?))
    }
}

/// The admin client of the running node, or an error saying what to do.
async fn connect_admin(home: &Home, file: &FileConfig, target: &AdminTarget) -> Result<AdminClient> {
    home.check_key_permissions()?;
    let url = pick(target.owner.clone(), file.owner_url.clone(), config::DEFAULT_OWNER_URL.to_owned());
    let domain = pick(target.domain.clone(), file.owner_domain.clone(), config::DEFAULT_DOMAIN.to_owned());
    let identity = home.admin_identity(&domain)?;
    AdminClient::connect(&url, identity).await.map_err(|e| match e {
        Error::Transport(t) => Error::FailedPrecondition(format!(
            "cannot reach the owner node at {url} ({t}); start it with `ambishare-owner serve`, \
             or pass --offline to work on the store directly while it is stopped"
        )),
        e => e,
    })
}

/// Flag or environment, else the TOML file, else the default.
fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

async fn run_publish(home: &Home, file: &FileConfig, args: PublishArgs) -> Result<()> {
    let registry_url = args.registry.or(file.registry.clone()).ok_or_else(|| {
        Error::Config("no registry: give --registry, set AMBISHARE_OWNER_REGISTRY, or `registry` in owner.toml".into())
    })?;
    let device = match (args.device, &file.device) {
        (Some(DeviceArg::Auto), _) => Device::Auto,
        (Some(DeviceArg::Cpu), _) => Device::Cpu,
        (Some(DeviceArg::Cuda), _) => Device::Cuda,
        (None, Some(s)) => s.parse()?,
        (None, None) => Device::Auto,
    };
    let codec = match (args.codec, &file.codec) {
        (Some(CodecArg::Q8), _) => ValueCodec::Q8,
        (Some(CodecArg::F16), _) => ValueCodec::F16,
        (None, Some(s)) => s.parse()?,
        (None, None) => ValueCodec::Q8,
    };
    let format = match (args.format, file.format.as_deref()) {
        (Some(FormatArg::V3), _) | (None, Some("v3") | None) => CodeVersion::V3,
        (Some(FormatArg::V2), _) | (None, Some("v2")) => CodeVersion::V2,
        (None, Some(other)) => {
            return Err(Error::Config(format!("format `{other}` in the config file: expected v2 or v3")));
        }
    };
    let registry_ca_pem = match args.registry_ca.or(file.registry_ca.clone()) {
        Some(path) => Some(publish::read_file(&path, publish::MAX_REGISTRY_CA_BYTES)?),
        None => None,
    };
    // The node may run in another directory: it gets absolute paths.
    let names = PathNames::new(&args.inputs)?;
    let model_dir = pick(args.model, file.model.clone(), PathBuf::from(config::DEFAULT_MODEL_DIR));
    let job = PublishJob {
        dataset: args.dataset,
        inputs: names.absolute(),
        registry_url,
        registry_ca_pem,
        display_name: args.name.or(file.display_name.clone()),
        model_dir: absolute(&model_dir)?,
        device,
        codec,
        format,
        batch: pick(args.batch, file.batch, config::DEFAULT_BATCH),
        max_pixels: pick(args.max_pixels, file.max_pixels, config::DEFAULT_MAX_PIXELS),
        stop_after_prepared: None,
    };
    let progress = Progress::new(!args.quiet, &names);
    let outcome = if args.target.offline {
        publish::publish(home, job, |event| progress.show(event)).await
    } else {
        match connect_admin(home, file, &args.target).await {
            Ok(mut admin) => admin.publish(&job, |event| progress.show(event)).await,
            Err(e) => Err(e),
        }
    };
    progress.finish();
    let mut summary = outcome?;
    names.restore(&mut summary);
    println!("{summary}");
    if let Some(path) = &args.ids_out {
        let lines: String = summary.files.iter().map(|(file, id)| format!("{id}\t{}\n", file.display())).collect();
        std::fs::write(path, lines).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Incomplete(format!("{} file(s) were not published (listed above)", summary.failed.len())))
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(format!("resolving {}", path.display()), e))
}

/// The input paths as given, and as sent (absolute); reports are shown as given.
struct PathNames {
    /// (absolute, as given)
    inputs: Vec<(PathBuf, PathBuf)>,
}

impl PathNames {
    fn new(given: &[PathBuf]) -> Result<Self> {
        Ok(PathNames { inputs: given.iter().map(|p| Ok((absolute(p)?, p.clone()))).collect::<Result<_>>()? })
    }

    fn absolute(&self) -> Vec<PathBuf> {
        self.inputs.iter().map(|(absolute, _)| absolute.clone()).collect()
    }

    /// A path the publish run reported, written from the input it came from.
    fn shown(&self, path: &Path) -> PathBuf {
        for (absolute, given) in &self.inputs {
            if let Ok(rest) = path.strip_prefix(absolute) {
                return if rest.as_os_str().is_empty() { given.clone() } else { given.join(rest) };
            }
        }
        path.to_path_buf()
    }

    fn restore(&self, summary: &mut PublishSummary) {
        let paths = summary.files.iter_mut().map(|(p, _)| p).chain(summary.failed.iter_mut().map(|(p, _)| p));
        for path in paths {
            *path = self.shown(path);
        }
        summary.files.sort();
    }
}

/// The progress bar of `publish`, driven by its events.
struct Progress<'a> {
    bar: ProgressBar,
    names: &'a PathNames,
}

impl<'a> Progress<'a> {
    fn new(visible: bool, names: &'a PathNames) -> Self {
        let bar = if visible { ProgressBar::new(0) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images ({per_sec}, eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress { bar, names }
    }

    fn show(&self, event: &PublishEvent) {
        match event {
            PublishEvent::Started { files, resend } => {
                self.bar.set_length(*files as u64);
                if *resend > 0 {
                    self.bar.set_message(format!("(re-sending {resend} entries of an earlier run first)"));
                }
            }
            PublishEvent::File(file) => {
                if let FileOutcome::Failed(reason) = &file.outcome {
                    let what = match (&file.path, file.entry) {
                        (Some(path), _) => self.names.shown(path).display().to_string(),
                        (None, Some(id)) => format!("entry {id} of an earlier run"),
                        (None, None) => "an entry of an earlier run".into(),
                    };
                    self.bar.suspend(|| tracing::warn!("skipped {what}: {reason}"));
                }
                if file.path.is_some() {
                    self.bar.set_message("");
                    self.bar.inc(1);
                }
            }
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

async fn run_serve(home: &Home, file: &FileConfig, args: ServeArgs) -> Result<()> {
    let listen = pick(args.listen, file.listen.clone(), config::DEFAULT_LISTEN.to_owned());
    let listener =
        tokio::net::TcpListener::bind(&listen).await.map_err(|e| Error::io(format!("listening on {listen}"), e))?;
    let config =
        ServeConfig { home: home.root().to_path_buf(), audit_sync: pick(args.audit_sync, file.audit_sync, true) };
    service::serve(config, listener, shutdown_signal()).await
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

async fn run_grant(home: &Home, file: &FileConfig, args: GrantArgs) -> Result<()> {
    let csr_pem = match &args.csr {
        Some(path) => Some(read_small_text(path, crate::pki::MAX_CSR_PEM as u64)?),
        None => None,
    };
    let expires_unix_ms =
        args.expires.map(|d| now_unix_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    let request = GrantRequest {
        party: args.party.clone(),
        dataset: args.dataset.clone(),
        tier: match args.tier {
            TierArg::Full => Tier::Full,
            TierArg::Preview => Tier::Preview,
        },
        expires_unix_ms,
        csr_pem,
        certificate_days: Some(args.cert_days),
    };
    let outcome = match Admin::open(home, file, &args.target).await? {
        Admin::Remote(mut c) => c.grant(&request).await?,
        Admin::Local(ops) => ops.grant(request)?,
    };
    report_grant(&outcome, args.out.as_deref())
}

fn read_small_text(path: &Path, limit: u64) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if meta.len() > limit {
        return Err(Error::invalid("csr", format!("{} is larger than {limit} bytes", path.display())));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

fn report_grant(outcome: &GrantOutcome, out: Option<&Path>) -> Result<()> {
    let g = &outcome.grant;
    println!("granted {} on {} at tier {}{}", g.party, g.dataset, g.tier, expiry_text(g.expires_unix_ms));
    println!("owner id: {}", outcome.owner_id);
    if let Some(cert) = &outcome.certificate_pem {
        let out = out.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(format!("{}.pem", g.party)));
        let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| g.party.to_string());
        let ca = out.with_file_name(format!("{stem}-server-ca.pem"));
        std::fs::write(&out, cert).map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
        std::fs::write(&ca, &outcome.server_ca_pem).map_err(|e| Error::io(format!("writing {}", ca.display()), e))?;
        println!("party certificate: {}", out.display());
        println!("owner's server CA: {} (the party trusts the key service with it)", ca.display());
    }
    Ok(())
}

fn time_text(unix_ms: i64) -> String {
    ambishare_shared::timestamp::rfc3339_from_unix_ms(unix_ms)
}

fn expiry_text(expires: Option<i64>) -> String {
    expires.map(|t| format!(", expires {}", time_text(t))).unwrap_or_default()
}

fn print_grants(grants: &[Grant]) {
    if grants.is_empty() {
        println!("no grants");
        return;
    }
    let now = now_unix_ms();
    println!("{:<24} {:<24} {:<8} {:<10} {:<21} EXPIRES", "PARTY", "DATASET", "TIER", "STATUS", "GRANTED");
    for g in grants {
        let status = match g.check(now) {
            Ok(_) => "active".to_string(),
            Err(d) => d.to_string(),
        };
        println!(
            "{:<24} {:<24} {:<8} {:<10} {:<21} {}",
            g.party.as_str(),
            g.dataset.as_str(),
            g.tier.as_str(),
            status,
            time_text(g.granted_unix_ms),
            g.expires_unix_ms.map(time_text).unwrap_or_else(|| "never".into())
        );
    }
}

fn print_audit(events: &[AuditEvent]) {
    for e in events {
        let result = match (e.result, e.denial) {
            (Some(AuditResult::Released), _) => "released".to_string(),
            (Some(AuditResult::Denied), Some(d)) => format!("denied ({d})"),
            (Some(AuditResult::Denied), None) => "denied".to_string(),
            (None, _) => "-".to_string(),
        };
        let tier = e.tier.map_or("-", Tier::as_str);
        let entry = if e.entry_id.is_empty() { "-" } else { e.entry_id.as_str() };
        let detail = if e.detail.is_empty() { String::new() } else { format!("  {}", e.detail) };
        println!(
            "{:>8} {} {:<20} {:<10} {:<36} {:<7} {}{}",
            e.seq,
            time_text(e.unix_ms),
            e.party,
            e.action,
            entry,
            tier,
            result,
            detail
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_refuses_a_display_name_the_registry_would_refuse() {
        let publish = |name: &str| {
            Cli::try_parse_from(["ambishare-owner", "publish", "--dataset", "d", "--name", name, "/photos"])
        };
        let parsed = publish("Ada Lovelace").unwrap();
        let Command::Publish(args) = parsed.command else { panic!("not publish") };
        assert_eq!(args.name.as_ref().map(DisplayName::as_str), Some("Ada Lovelace"));
        let too_long = "x".repeat(DisplayName::MAX_LEN + 1);
        for bad in ["", "two\nlines", "esc\u{1b}[2J", &too_long] {
            let err = publish(bad).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
            assert!(err.to_string().contains("invalid display name"), "{err}");
        }
    }

    #[test]
    fn times_beyond_year_9999_are_shown_without_panicking() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_text(i64::MAX), "after year 9999");
        assert_eq!(expiry_text(Some(253_402_300_800_000)), ", expires after year 9999");
    }
}
