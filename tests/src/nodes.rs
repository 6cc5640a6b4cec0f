//! The nodes as real processes, for the reliability tools (`ambishare-crash`,
//! `ambishare-load`): the built `ambishare-registry` and `ambishare-owner`
//! binaries on free loopback ports, stopped with SIGTERM or killed with
//! SIGKILL, their logs in files; and the owner-side calls those tools make
//! (enrolling a party, listing and fetching what a registry holds).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ambishare_owner::{AdminClient, GrantRequest, Home};
use ambishare_rpc::{ClientIdentity, RegistryClient};
use ambishare_shared::{DatasetName, Entry, OwnerId, PartyName, Tier};
use futures::StreamExt;
use rustix::process::{Pid, Signal, kill_process};

use crate::{Error, Result};

/// How often a process or a port is polled.
const POLL: Duration = Duration::from_millis(20);
/// Bytes of a log shown when a process fails.
const LOG_TAIL: u64 = 2000;

/// The node binaries.
#[derive(Clone, Debug)]
pub struct Bins {
    pub registry: PathBuf,
    pub owner: PathBuf,
}

impl Bins {
    /// The binaries in `dir`, or beside the running executable (`target/<profile>/`).
    pub fn locate(dir: Option<&Path>) -> Result<Bins> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()?
                .parent()
                .map(Path::to_path_buf)
                .ok_or_else(|| Error::Other("the running executable has no directory".into()))?,
        };
        let bins = Bins { registry: dir.join("ambishare-registry"), owner: dir.join("ambishare-owner") };
        for bin in [&bins.registry, &bins.owner] {
            if !bin.is_file() {
                return Err(Error::Other(format!(
                    "no {} (build the nodes: cargo build -p ambishare-registry -p ambishare-owner, with the \
                     same profile, or give --bin-dir)",
                    bin.display()
                )));
            }
        }
        Ok(bins)
    }
}

/// A loopback address with a port free right now (the OS picks it).
pub fn free_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// The last bytes of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL)));
    let mut text = String::new();
    let _ = file.take(LOG_TAIL).read_to_string(&mut text);
    text.trim().to_owned()
}

/// Runs a command to its end within `timeout`, its output appended to `log`.
/// `Ok(None)` when it ran out of time (it is killed).
pub async fn run_to_end(mut command: Command, log: &Path, timeout: Duration) -> Result<Option<ExitStatus>> {
    let mut child = spawn_logged(&mut command, log)?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn spawn_logged(command: &mut Command, log: &Path) -> Result<Child> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let err = out.try_clone()?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::io(format!("starting {:?}", command.get_program()), e))
}

/// How a process ended when asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself within the time given.
    Exited(ExitStatus),
    /// It did not, and was killed (a hang).
    Hung,
}

/// A child process: a node, or a command that runs for a while.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `command`, stdout and stderr appended to `log`.
    pub fn spawn(name: impl Into<String>, mut command: Command, log: &Path) -> Result<Self> {
        let child = spawn_logged(&mut command, log)?;
        Ok(Proc { name: name.into(), child: Some(child), log: log.to_path_buf() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if it has ended (reaped), without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?),
            None => Err(Error::Other(format!("{} was already reaped", self.name))),
        }
    }

    /// Waits up to `timeout` for it to end by itself.
    pub async fn wait(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // Fails only when it has already exited: reaped below either way.
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for it to exit; kills it if it does not.
    pub async fn stop(&mut self, timeout: Duration) -> Result<Stopped> {
        if let Some(status) = self.try_status()? {
            self.child = None;
            return Ok(Stopped::Exited(status));
        }
        let pid = self
            .pid()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| Error::Other(format!("{} has no valid pid", self.name)))?;
        kill_process(pid, Signal::TERM).map_err(|e| Error::io(format!("signalling {}", self.name), e.into()))?;
        match self.wait(timeout).await? {
            Some(status) => {
                self.child = None;
                Ok(Stopped::Exited(status))
            }
            None => {
                self.kill()?;
                Ok(Stopped::Hung)
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Never leave a node behind.
        let _ = self.kill();
    }
}

/// Waits until something accepts connections on `addr`, or `proc` exits, or `timeout`.
pub async fn wait_listening(proc: &mut Proc, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = proc.try_status()? {
            return Err(Error::Other(format!(
                "{} exited ({status}) before listening on {addr}: {}",
                proc.name,
                log_tail(&proc.log)
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Other(format!(
                "{} does not listen on {addr} after {timeout:?}: {}",
                proc.name,
                log_tail(&proc.log)
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A registry process: plaintext on loopback, its data in `data_dir`.
pub struct RegistryNode {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl RegistryNode {
    pub async fn start(bins: &Bins, data_dir: &Path, log: &Path, timeout: Duration) -> Result<Self> {
        let addr = free_addr()?;
        let mut command = Command::new(&bins.registry);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--danger-plaintext")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
        let mut proc = Proc::spawn("registry", command, log)?;
        wait_listening(&mut proc, addr, timeout).await?;
        Ok(RegistryNode { proc, addr, data_dir: data_dir.to_path_buf() })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// An owner's key service process (`serve`), over the home made by [`init_owner`].
pub struct OwnerNode {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub home: Home,
}

/// `ambishare-owner init` in `home` (a new identity).
pub async fn init_owner(bins: &Bins, home: &Path, log: &Path, timeout: Duration) -> Result<Home> {
    let mut command = Command::new(&bins.owner);
    command.arg("--home").arg(home).arg("init");
    match run_to_end(command, log, timeout).await? {
        Some(status) if status.success() => Ok(Home::new(home)),
        Some(status) => Err(Error::Other(format!("owner init failed ({status}): {}", log_tail(log)))),
        None => Err(Error::Other(format!("owner init did not finish within {timeout:?}"))),
    }
}

impl OwnerNode {
    pub async fn start(bins: &Bins, home: &Home, log: &Path, timeout: Duration) -> Result<Self> {
        let addr = free_addr()?;
        let mut command = Command::new(&bins.owner);
        command
            .arg("--home")
            .arg(home.root())
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
        let mut proc = Proc::spawn("owner", command, log)?;
        wait_listening(&mut proc, addr, timeout).await?;
        Ok(OwnerNode { proc, addr, home: home.clone() })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub async fn admin(&self) -> Result<AdminClient> {
        let identity = self.home.admin_identity("localhost").map_err(owner_err)?;
        AdminClient::connect(&self.url(), identity).await.map_err(owner_err)
    }
}

/// What `publish` is given.
#[derive(Clone, Debug)]
pub struct PublishArgs {
    pub dataset: DatasetName,
    pub model: PathBuf,
    pub inputs: Vec<PathBuf>,
    pub batch: usize,
    /// Where `--ids-out` writes.
    pub ids_out: PathBuf,
}

/// The `ambishare-owner publish` command for the node at `owner` and the registry at `registry_url`.
pub fn publish_command(bins: &Bins, home: &Home, owner: SocketAddr, registry_url: &str, args: &PublishArgs) -> Command {
    let mut command = Command::new(&bins.owner);
    command
        .arg("--home")
        .arg(home.root())
        .arg("publish")
        .arg("--owner")
        .arg(format!("https://{owner}"))
        .arg("--registry")
        .arg(registry_url)
        .arg("--dataset")
        .arg(args.dataset.as_str())
        .arg("--model")
        .arg(&args.model)
        .arg("--device")
        .arg("cpu")
        .arg("--batch")
        .arg(args.batch.to_string())
        .arg("--quiet")
        .arg("--ids-out")
        .arg(&args.ids_out)
        .args(&args.inputs)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
    command
}

/// Reads an `--ids-out` file: `<entry id>\t<file>` lines.
pub fn read_ids_out(path: &Path) -> Result<Vec<(ambishare_shared::EntryId, PathBuf)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let (id, file) =
                line.split_once('\t').ok_or_else(|| Error::Other(format!("bad line in ids-out: {line:?}")))?;
            Ok((id.parse()?, PathBuf::from(file)))
        })
        .collect()
}

/// Has the owner grant `party` the dataset (full tier) for a key made here;
/// returns the party's mTLS identity.
pub async fn enroll_party(
    admin: &mut AdminClient,
    party: &str,
    dataset: &DatasetName,
    tier: Tier,
) -> Result<ClientIdentity> {
    let party: PartyName = party.parse()?;
    let (csr_pem, key_pem) = ambishare_rpc::make_csr(party.as_str()).map_err(owner_err)?;
    let request = GrantRequest {
        party,
        dataset: dataset.clone(),
        tier,
        expires_unix_ms: None,
        csr_pem: Some(csr_pem),
        certificate_days: Some(1),
    };
    let outcome = admin.grant(&request).await.map_err(owner_err)?;
    let cert_pem = outcome.certificate_pem.ok_or_else(|| Error::Other("the grant issued no certificate".into()))?;
    Ok(ClientIdentity { cert_pem, key_pem, ca_pem: outcome.server_ca_pem, domain: "localhost".into() })
}

/// Every entry the registry streams for `owner` (and `dataset`), parsed.
pub async fn stream_all(
    registry: &RegistryClient,
    owner: OwnerId,
    dataset: Option<&DatasetName>,
) -> Result<Vec<Entry>> {
    let mut stream = registry.stream_entries(Some(owner), dataset, None).await.map_err(registry_err)?;
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        out.push(item.map_err(registry_err)?);
    }
    Ok(out)
}

/// Every entry id a `ListEntries` query returns, over all its pages.
pub async fn list_all(
    registry: &RegistryClient,
    owner: Option<OwnerId>,
    dataset: Option<&DatasetName>,
) -> Result<Vec<ambishare_shared::EntryId>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = registry.list_entries(owner, dataset, 1000, &token).await.map_err(registry_err)?;
        out.extend(page.entries.iter().map(|e| e.id));
        match page.next_page_token {
            Some(next) => token = next,
            None => return Ok(out),
        }
    }
}

/// A failure of the owner node, or of a call to it (`ambishare_owner::Error`, `ambishare_rpc::Error`).
pub fn owner_err(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("owner: {e}"))
}

/// A failure of a call to the registry (`ambishare_rpc::Error`).
pub fn registry_err(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("registry: {e}"))
}
