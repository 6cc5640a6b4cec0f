//! The command line of `ambishare-client`: argument types (clap) and the
//! dispatch to the library. `main.rs` only parses and calls [`run`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ambishare_rpc::ClientIdentity;
use ambishare_shared::model::{Device, init_runtime};
use ambishare_shared::{DatasetName, EntryId, OwnerId, PartyName};
use clap::{Args, Parser, Subcommand};

use crate::browse::{self, BrowseOptions};
use crate::config::{self, FileConfig};
use crate::error::{Error, Result};
use crate::gallery::{self, GalleryOptions};
use crate::pull::{self, PullOptions};

/// A party's node of ambishare: pulls ambiguated codes from a public registry,
/// fetches this party's support keys from the owner over mutual TLS, and
/// decodes the images locally. Without keys, `browse` shows what the public sees.
///
/// Settings come from flags, then AMBISHARE_CLIENT_* environment variables,
/// then the TOML file (--config, or <home>/client.toml), then defaults.
/// Logging follows RUST_LOG (default: info).
#[derive(Debug, Parser)]
#[command(name = "ambishare-client", version, about, long_about)]
pub struct Cli {
    /// The party's home: party.key, party.pem, party-server-ca.pem, client.toml and the model cache [default: ~/.ambishare-client]
    #[arg(long, env = "AMBISHARE_CLIENT_HOME", global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// TOML config file [default: <home>/client.toml when present]
    #[arg(long, env = "AMBISHARE_CLIENT_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make this party's private key (kept here, mode 0600) and a certificate signing
    /// request (<home>/party.csr) to give the owner, who answers with `ambishare-owner grant`.
    Enroll(EnrollArgs),
    /// Pull a dataset: verify each entry's owner signature, fetch this party's keys over
    /// mutual TLS, decode locally and write PNGs (each beside the public view of the same code
    /// and a JSON sidecar, for `gallery`). Entries without a key are reported by reason.
    #[command(after_help = PULL_EXIT_CODES)]
    Pull(PullArgs),
    /// What the public sees: list entries and, with --out, render the public decode of their
    /// ambiguated codes (every nonzero, real and fake).
    Browse(BrowseArgs),
    /// Show one entry's metadata and whether its owner signature verifies.
    Show(ShowArgs),
    /// Serve, to a browser on this machine, a gallery of what `pull` wrote into --out: each
    /// decoded image beside what the public sees, by dataset, newest first, with its metadata.
    ///
    /// It only reads --out: it talks to no node and needs no key, and nothing leaves this
    /// machine. It listens on loopback (127.0.0.1, ::1) and answers only to loopback host
    /// names unless --allow-remote is given: the images are this party's private decodes,
    /// and the gallery has no login. Stop it with Ctrl-C.
    Gallery(GalleryArgs),
}

/// What `pull`'s exit code means (the numbers are [`pull::PullOutcome::exit_code`]'s).
const PULL_EXIT_CODES: &str = "\
Exit status:
  0  every entry asked for was decoded, or was already in --out
  1  the pull stopped: bad settings, a node unreachable or refusing this party, a write failed
  2  the command line is wrong
  3  it ran to its end, but some entries could not be decoded for lack of a key (not granted,
     revoked, expired...); without --dataset that includes datasets this party was never granted
  4  it ran to its end, but some entries had a bad owner signature or failed to decode
     (4 wins over 3 when both happened)";

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// This party's name, as the owner will know it (lowercase letters, digits, '.', '_', '-')
    #[arg(long)]
    pub party: PartyName,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Registry URL (http:// or https://)
    #[arg(long, env = "AMBISHARE_CLIENT_REGISTRY", value_name = "URL")]
    pub registry: Option<String>,
    /// PEM of the CA that signed the registry's certificate (https registries)
    #[arg(long, env = "AMBISHARE_CLIENT_REGISTRY_CA", value_name = "PEM")]
    pub registry_ca: Option<PathBuf>,
    /// Where decoding runs
    #[arg(long, env = "AMBISHARE_CLIENT_DEVICE", value_name = "auto|cpu|cuda")]
    pub device: Option<Device>,
    /// Cache of decoders fetched from the registry [default: <home>/models]
    #[arg(long, env = "AMBISHARE_CLIENT_MODEL_CACHE", value_name = "DIR")]
    pub model_cache: Option<PathBuf>,
    /// Hide the progress bar
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The owner's key service (https://HOST:PORT)
    #[arg(long, env = "AMBISHARE_CLIENT_OWNER", value_name = "URL")]
    pub owner: Option<String>,
    /// Name checked in the key service's certificate [default: localhost]
    #[arg(long, env = "AMBISHARE_CLIENT_OWNER_DOMAIN", value_name = "NAME")]
    pub owner_domain: Option<String>,
    /// This party's certificate, issued by the owner [default: <home>/party.pem]
    #[arg(long, env = "AMBISHARE_CLIENT_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// This party's private key, mode 0600 [default: <home>/party.key]
    #[arg(long, env = "AMBISHARE_CLIENT_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// The owner's server CA [default: <home>/party-server-ca.pem]
    #[arg(long, env = "AMBISHARE_CLIENT_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Only this dataset [default: every dataset of the owner]
    #[arg(long)]
    pub dataset: Option<DatasetName>,
    /// Where the PNGs go: <entry-id>.png (this party's decode), <entry-id>.public.png (what the
    /// public sees) and <entry-id>.json (its metadata, written last); entries already complete
    /// there are skipped
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Decode again the entries already complete in --out
    #[arg(long)]
    pub redo: bool,
    /// Do not write <entry-id>.public.png, the public decode of each entry (it costs a second
    /// decode an entry)
    #[arg(long)]
    pub no_public_view: bool,
    /// Entries per key request
    #[arg(long, env = "AMBISHARE_CLIENT_BATCH")]
    pub batch: Option<usize>,
}

#[derive(Debug, Args)]
pub struct BrowseArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Only this owner's entries
    #[arg(long, value_name = "OWNER_ID")]
    pub owner_id: Option<OwnerId>,
    /// Only this dataset
    #[arg(long)]
    pub dataset: Option<DatasetName>,
    /// Render the public decode of each entry here (one <entry-id>.png each)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Show at most this many entries (0: all)
    #[arg(long, default_value_t = 0)]
    pub limit: u64,
}

#[derive(Debug, Args)]
pub struct GalleryArgs {
    /// The folder `pull --out` wrote (<entry-id>.png, .public.png and .json)
    #[arg(long, env = "AMBISHARE_CLIENT_GALLERY_OUT", value_name = "DIR")]
    pub out: PathBuf,
    /// Address to listen on (HOST:PORT); a loopback address unless --allow-remote
    #[arg(long, env = "AMBISHARE_CLIENT_GALLERY_LISTEN", value_name = "ADDR", default_value = gallery::DEFAULT_LISTEN)]
    pub listen: String,
    /// Also listen on a non-loopback address and answer to any host name. Anyone who can reach
    /// the address then sees this party's decoded private images: there is no login. (A flag
    /// only, with no environment variable, so it is never on by accident.)
    #[arg(long)]
    pub allow_remote: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The entry's id
    pub entry: EntryId,
}

/// Exit code of a command that stopped on an error (2 is clap's, for a bad command line).
pub const EXIT_ERROR: u8 = 1;

/// Runs a parsed command line, printing errors; the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    ExitCode::from(execute(cli))
}

/// [`run`], with the exit code as a number: 0, [`EXIT_ERROR`], or what
/// `pull` reports ([`pull::PullOutcome::exit_code`]).
pub fn execute(cli: Cli) -> u8 {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return EXIT_ERROR;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_ERROR
        }
    }
}

/// Logs to stderr, filtered by RUST_LOG (default: info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

fn pick<T>(flag: Option<T>, file: Option<T>, default: T) -> T {
    flag.or(file).unwrap_or(default)
}

fn required(flag: Option<String>, file: Option<String>, what: &str) -> Result<String> {
    flag.or(file).ok_or_else(|| Error::Config(format!("{what} is not set: give --{what} or put it in client.toml")))
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Registry settings shared by pull, browse and show.
struct Registry {
    url: String,
    ca: Option<PathBuf>,
    device: Device,
    model_cache: PathBuf,
    progress: bool,
}

impl Registry {
    fn resolve(args: RegistryArgs, file: &FileConfig, home: &Path) -> Result<Self> {
        let device = match (args.device, &file.device) {
            (Some(d), _) => d,
            (None, Some(text)) => text.parse()?,
            (None, None) => Device::Auto,
        };
        Ok(Registry {
            url: required(args.registry, file.registry.clone(), "registry")?,
            ca: args.registry_ca.or(file.registry_ca.clone()),
            device,
            model_cache: pick(args.model_cache, file.model_cache.clone(), home.join(config::MODEL_CACHE)),
            progress: !args.quiet,
        })
    }
}

/// Runs one command; its exit code when it ran to its end (only `pull` can end
/// short of complete without an error).
async fn dispatch(cli: Cli) -> Result<u8> {
    // The gallery reads only its folder: no home, config file or node.
    let command = match cli.command {
        Command::Gallery(args) => return run_gallery(args).await.map(|()| 0),
        other => other,
    };
    let home = match cli.home {
        Some(h) => h,
        None => config::default_home()?,
    };
    let file = FileConfig::load(cli.config.as_deref(), &home)?;
    match command {
        Command::Enroll(args) => {
            let done = crate::enroll(&home, &args.party)?;
            println!("private key: {} (stays here)", done.key_path.display());
            println!("certificate request: {}", done.csr_path.display());
            println!(
                "give the request to the owner: ambishare-owner grant --csr party.csr --party {} --dataset NAME --out party.pem",
                args.party
            );
            println!("then put party.pem and party-server-ca.pem in {}", home.display());
        }
        Command::Pull(args) => {
            let registry = Registry::resolve(args.registry, &file, &home)?;
            init_runtime(None)?;
            let cert = pick(args.cert, file.cert.clone(), home.join(config::PARTY_CERT));
            let key = pick(args.key, file.key.clone(), home.join(config::PARTY_KEY));
            let ca = pick(args.ca, file.ca.clone(), home.join(config::OWNER_CA));
            // The private key file must not be readable by others.
            let key_pem = ambishare_shared::crypto::read_secret_file(&key)?;
            let identity = ClientIdentity {
                cert_pem: read_text(&cert)?,
                key_pem: String::from_utf8(key_pem)
                    .map_err(|_| Error::Config(format!("{} is not a PEM file", key.display())))?,
                ca_pem: read_text(&ca)?,
                domain: pick(args.owner_domain, file.owner_domain.clone(), config::DEFAULT_OWNER_DOMAIN.to_owned()),
            };
            let opts = PullOptions {
                registry_url: registry.url,
                registry_ca: registry.ca,
                owner_url: required(args.owner, file.owner.clone(), "owner")?,
                identity,
                dataset: args.dataset,
                out: args.out,
                redo: args.redo,
                model_cache: registry.model_cache,
                device: registry.device,
                batch: pick(args.batch, file.batch, config::DEFAULT_BATCH),
                progress: registry.progress,
                public_view: !args.no_public_view,
            };
            let summary = pull::pull(&opts).await?;
            print!("{}", summary.report());
            println!("images in {}", opts.out.display());
            if let Some(why) = summary.shortfall() {
                eprintln!("error: incomplete: {why}");
            }
            return Ok(summary.outcome().exit_code());
        }
        Command::Browse(args) => {
            let registry = Registry::resolve(args.registry, &file, &home)?;
            if args.out.is_some() {
                init_runtime(None)?;
            }
            let opts = BrowseOptions {
                registry_url: registry.url,
                registry_ca: registry.ca,
                owner: args.owner_id,
                dataset: args.dataset,
                out: args.out,
                model_cache: registry.model_cache,
                device: registry.device,
                limit: args.limit,
                progress: registry.progress,
            };
            print!("{}", browse::browse(&opts).await?);
        }
        Command::Show(args) => {
            let registry = Registry::resolve(args.registry, &file, &home)?;
            print!("{}", browse::show(&registry.url, registry.ca.as_deref(), args.entry).await?);
        }
        // Served above, before the home is looked for.
        Command::Gallery(args) => run_gallery(args).await?,
    }
    Ok(0)
}

/// Resolves --listen, refuses a non-loopback address without --allow-remote
/// (before binding it), binds and serves until Ctrl-C or SIGTERM.
async fn run_gallery(args: GalleryArgs) -> Result<()> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&args.listen)
        .await
        .map_err(|e| Error::io(format!("resolving --listen {}", args.listen), e))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Config(format!("--listen {} names no address", args.listen)));
    }
    for addr in &addrs {
        gallery::check_listen_addr(*addr, args.allow_remote)?;
    }
    let listener = tokio::net::TcpListener::bind(addrs.as_slice())
        .await
        .map_err(|e| Error::io(format!("listening on {}", args.listen), e))?;
    let addr = listener.local_addr().map_err(|e| Error::io("reading the gallery's address", e))?;
    let opts = GalleryOptions { allow_remote: args.allow_remote, ..GalleryOptions::new(args.out) };
    println!("gallery: http://{addr}/");
    gallery::serve_gallery(opts, listener, shutdown_signal()).await
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::pull::PullOutcome;

    #[test]
    fn pull_help_says_what_each_exit_code_means() {
        let mut cli = Cli::command();
        let pull = cli.find_subcommand_mut("pull").map(|c| c.render_long_help().to_string()).unwrap_or_default();
        assert!(pull.contains("Exit status:"), "{pull}");
        for (code, what) in [
            (0, "was decoded"),
            (EXIT_ERROR, "the pull stopped"),
            (2, "command line is wrong"),
            (PullOutcome::NoKey.exit_code(), "lack of a key"),
            (PullOutcome::Failed.exit_code(), "bad owner signature"),
        ] {
            let line = format!("{code}  ");
            let said = pull.lines().any(|l| l.trim_start().starts_with(&line) && l.contains(what));
            assert!(said, "exit code {code} ({what}) not in:\n{pull}");
        }
        assert_eq!(PullOutcome::Complete.exit_code(), 0);
    }
}
