//! `ambishare-load`: many concurrent pulling clients against one registry and
//! one owner, as real processes on loopback.
//!
//! Starts a registry and an owner (the built binaries), publishes `--entries`
//! generated images with the tiny model, enrolls `--parties` parties granted
//! the dataset, then runs `--clients` clients at once. Each connects to both
//! nodes (its own connections; parties share certificates), waits until
//! every client is connected, then pulls: WhoAmI over mTLS (the owner's
//! key), StreamEntries of the dataset to its end, every signature verified,
//! GetKeys in batches over mTLS, every answer a full key (and with
//! `--decode`, disambiguated and decoded). Reports errors (there must be
//! none), p50/p95/p99 latencies and throughput; exits non-zero on any error.
//! Bounded: `--clients`, `--entries-per-client`, `--duration`, `--timeout`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambishare_proto::registry::v1 as rpb;
use ambishare_rpc::{ClientIdentity, KeyClient, RegistryClient};
use ambishare_shared::model::ModelRunner;
use ambishare_shared::{DatasetName, Device, Entry, EntryId, Tier};
use ambishare_tests::harness::repo_root;
use ambishare_tests::nodes::{
    Bins, OwnerNode, Proc, PublishArgs, RegistryNode, Stopped, enroll_party, init_owner, log_tail, owner_err,
    publish_command, read_ids_out, registry_err,
};
use ambishare_tests::synth::write_images;
use ambishare_tests::{Error, Result};
use clap::Parser;
use futures::StreamExt;
use tokio::sync::Barrier;

/// Run many concurrent pulling clients against one registry and one owner on
/// loopback, and report errors and latencies. Exits non-zero on any error.
#[derive(Debug, Parser)]
#[command(name = "ambishare-load", version, about, long_about)]
struct Args {
    /// Concurrent clients, each with its own connections to both nodes.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Entries published (generated images) before the clients start.
    #[arg(long, default_value_t = 200)]
    entries: usize,
    /// Parties enrolled and granted; client i uses the certificate of party i mod this.
    #[arg(long, default_value_t = 10)]
    parties: usize,
    /// Entries each client pulls (StreamEntries limit; 0: the whole dataset).
    #[arg(long, default_value_t = 0)]
    entries_per_client: u64,
    /// Entry ids per GetKeys call.
    #[arg(long, default_value_t = 50)]
    key_batch: usize,
    /// Clients pull again and again for this many seconds (0: each pulls once).
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    duration: u64,
    /// Hard limit of the pulling phase in seconds: a client not done by then is an error.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
    /// Clients start over this many milliseconds (0: all at once).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    ramp_ms: u64,
    /// Also disambiguate and decode every entry (CPU heavy: off by default).
    #[arg(long)]
    decode: bool,
    /// Model directory [default: shared/testdata/tiny_model, 8x8 tiles, fast]
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Side of the generated images, in pixels.
    #[arg(long, default_value_t = 16)]
    size: u32,
    /// Seed of the generated images.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory of ambishare-registry and ambishare-owner [default: beside this executable].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the nodes keep their data and logs [default: a temporary directory, removed].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

const DATASET: &str = "load";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(600);
/// Error messages kept per client (all are counted).
const ERRORS_KEPT: usize = 3;
/// File descriptors each client needs (two connections), plus a margin for the process.
const FDS_PER_CLIENT: u64 = 2;
const FDS_MARGIN: u64 = 256;

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ambishare-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ambishare-load: {e}");
            ExitCode::from(2)
        }
    }
}

/// Raises the soft limit on open files to the hard one (inherited by the
/// nodes started after); fails when that is below what `clients` need.
fn raise_open_files(clients: usize) -> Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let need = clients as u64 * FDS_PER_CLIENT + FDS_MARGIN;
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        let raised = rustix::process::Rlimit { current: Some(hard), maximum: Some(hard) };
        setrlimit(Resource::Nofile, raised).map_err(|e| Error::io("raising the open-file limit", e.into()))?;
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if now < need {
        return Err(Error::Other(format!(
            "{clients} clients need about {need} open files; the limit is {now} (raise it: ulimit -n {need})"
        )));
    }
    Ok(now)
}

/// Latencies of one kind of call.
#[derive(Debug, Default)]
struct Latencies(Vec<Duration>);

impl Latencies {
    fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// count, p50, p95, p99, max (nearest rank).
    fn line(&mut self, name: &str) -> String {
        self.0.sort_unstable();
        let n = self.0.len();
        let q = |p: f64| -> String {
            if n == 0 {
                return "-".into();
            }
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            ms(self.0[rank - 1])
        };
        let max = self.0.last().map_or("-".into(), |d| ms(*d));
        format!("{name:<34} {n:>7} {:>10} {:>10} {:>10} {:>10}", q(0.50), q(0.95), q(0.99), max)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// What one client did.
#[derive(Debug, Default)]
struct ClientStats {
    connect: Latencies,
    who_am_i: Latencies,
    stream: Latencies,
    get_keys: Latencies,
    pull: Latencies,
    pulls: u64,
    entries: u64,
    keys: u64,
    decoded: u64,
    errors: u64,
    messages: Vec<String>,
}

impl ClientStats {
    fn error(&mut self, what: impl Into<String>) {
        self.errors += 1;
        if self.messages.len() < ERRORS_KEPT {
            self.messages.push(what.into());
        }
    }

    fn merge(&mut self, other: ClientStats) {
        self.connect.extend(other.connect);
        self.who_am_i.extend(other.who_am_i);
        self.stream.extend(other.stream);
        self.get_keys.extend(other.get_keys);
        self.pull.extend(other.pull);
        self.pulls += other.pulls;
        self.entries += other.entries;
        self.keys += other.keys;
        self.decoded += other.decoded;
        self.errors += other.errors;
        self.messages.extend(other.messages);
    }
}

/// What every client shares.
struct Plan {
    registry_url: String,
    owner_url: String,
    dataset: DatasetName,
    expected: u64,
    entries_per_client: u64,
    key_batch: usize,
    /// Pull again and again for this long after the start (None: once).
    duration: Option<Duration>,
    runner: Option<Arc<ModelRunner>>,
    start: Arc<Barrier>,
}

async fn run(args: Args) -> Result<bool> {
    if args.clients == 0 || args.entries == 0 || args.parties == 0 || args.key_batch == 0 {
        return Err(Error::Other("--clients, --entries, --parties and --key-batch must be at least 1".into()));
    }
    let open_files = raise_open_files(args.clients)?;
    let bins = Bins::locate(args.bin_dir.as_deref())?;
    let model =
        std::path::absolute(args.model.clone().unwrap_or_else(|| repo_root().join("shared/testdata/tiny_model")))?;
    let model = std::fs::canonicalize(&model).unwrap_or(model);
    let temp = match &args.work_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("ambishare-load.").tempdir()?),
    };
    let work = match (&args.work_dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => return Err(Error::Other("no work directory".into())),
    };
    std::fs::create_dir_all(&work)?;
    let work = std::path::absolute(&work)?;
    println!(
        "ambishare-load: {} clients ({} parties), {} entries, key batch {}, entries per client {}, {}, open files {open_files}",
        args.clients,
        args.parties,
        args.entries,
        args.key_batch,
        if args.entries_per_client == 0 { "all".to_string() } else { args.entries_per_client.to_string() },
        if args.duration == 0 { "one pull each".to_string() } else { format!("pulling for {} s", args.duration) },
    );
    println!("work directory {}", work.display());

    // The nodes, the entries and the parties.
    let setup_started = Instant::now();
    let inputs = work.join("images");
    if inputs.exists() {
        std::fs::remove_dir_all(&inputs)?;
    }
    write_images(&inputs, args.entries, args.size, 0, args.seed)?;
    let home = init_owner(&bins, &work.join("owner"), &work.join("owner-init.log"), START_TIMEOUT).await?;
    let mut registry =
        RegistryNode::start(&bins, &work.join("registry"), &work.join("registry.log"), START_TIMEOUT).await?;
    let mut owner = OwnerNode::start(&bins, &home, &work.join("owner.log"), START_TIMEOUT).await?;
    let dataset: DatasetName = DATASET.parse()?;
    let publish = PublishArgs {
        dataset: dataset.clone(),
        model: model.clone(),
        inputs: vec![inputs.clone()],
        batch: 64,
        ids_out: work.join("ids.tsv"),
    };
    let mut publisher = Proc::spawn(
        "publish",
        publish_command(&bins, &home, owner.addr, &registry.url(), &publish),
        &work.join("publish.log"),
    )?;
    match publisher.wait(PUBLISH_TIMEOUT).await? {
        Some(s) if s.success() => {}
        Some(s) => return Err(Error::Other(format!("publishing failed ({s}): {}", log_tail(&publisher.log)))),
        None => return Err(Error::Other(format!("publishing did not end within {PUBLISH_TIMEOUT:?}"))),
    }
    let published: Vec<EntryId> = read_ids_out(&publish.ids_out)?.into_iter().map(|(id, _)| id).collect();
    if published.len() != args.entries {
        return Err(Error::Other(format!("published {} entries of {}", published.len(), args.entries)));
    }
    let mut admin = owner.admin().await?;
    let mut identities = Vec::with_capacity(args.parties);
    for p in 0..args.parties {
        identities.push(enroll_party(&mut admin, &format!("load-{p}"), &dataset, Tier::Full).await?);
    }
    drop(admin);
    println!(
        "set-up: {} entries published, {} parties granted, in {:.1} s",
        published.len(),
        args.parties,
        setup_started.elapsed().as_secs_f64()
    );

    let runner = if args.decode {
        ambishare_shared::model::init_runtime(None)?;
        Some(Arc::new(ModelRunner::load(&model, Device::Cpu)?))
    } else {
        None
    };
    let expected = match args.entries_per_client {
        0 => args.entries as u64,
        n => n.min(args.entries as u64),
    };

    // The clients.
    let plan = Arc::new(Plan {
        registry_url: registry.url(),
        owner_url: owner.url(),
        dataset,
        expected,
        entries_per_client: args.entries_per_client,
        key_batch: args.key_batch,
        duration: (args.duration > 0).then(|| Duration::from_secs(args.duration)),
        runner,
        start: Arc::new(Barrier::new(args.clients + 1)),
    });
    let deadline = Duration::from_secs(args.timeout);
    let mut tasks = Vec::with_capacity(args.clients);
    let connect_started = Instant::now();
    for i in 0..args.clients {
        let plan = plan.clone();
        let identity = identities[i % identities.len()].clone();
        let delay = if args.ramp_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(args.ramp_ms * i as u64 / args.clients as u64)
        };
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            client(plan, identity).await
        }));
    }
    // Every client connected (or failed to): they pull together from here.
    let waited = tokio::time::timeout(deadline, plan.start.wait()).await;
    let connected_in = connect_started.elapsed();
    let pull_started = Instant::now();
    if waited.is_err() {
        println!("not every client connected within {deadline:?}");
    }

    let mut total = ClientStats::default();
    let mut timed_out = 0u64;
    let hard_deadline = pull_started + deadline;
    for task in tasks {
        let left = hard_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, task).await {
            Ok(Ok(stats)) => total.merge(stats),
            Ok(Err(e)) => total.error(format!("client task failed: {e}")),
            Err(_) => {
                timed_out += 1;
                total.errors += 1;
            }
        }
    }
    let pulled_in = pull_started.elapsed();
    if timed_out > 0 {
        total.messages.push(format!("{timed_out} client(s) not done within --timeout {} s", args.timeout));
    }

    // The nodes must still be up, and stop cleanly.
    let mut node_problems = Vec::new();
    for (proc, name) in [(&mut owner.proc, "owner"), (&mut registry.proc, "registry")] {
        if let Some(status) = proc.try_status()? {
            node_problems.push(format!("the {name} died during the run ({status}): {}", log_tail(&proc.log)));
            continue;
        }
        match proc.stop(STOP_TIMEOUT).await? {
            Stopped::Exited(s) if s.success() => {}
            Stopped::Exited(s) => node_problems.push(format!("the {name} exited with {s}: {}", log_tail(&proc.log))),
            Stopped::Hung => node_problems.push(format!("the {name} did not stop within {STOP_TIMEOUT:?} (HANG)")),
        }
    }
    let warnings = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count())
            .unwrap_or(0)
    };
    let (registry_warnings, owner_warnings) = (warnings(&work.join("registry.log")), warnings(&work.join("owner.log")));

    report(&args, &mut total, connected_in, pulled_in, registry_warnings, owner_warnings, &node_problems);
    let ok = total.errors == 0 && node_problems.is_empty();
    if let Some(temp) = temp
        && !ok
    {
        println!("data and logs kept in {}", temp.keep().display());
    }
    Ok(ok)
}

fn report(
    args: &Args,
    total: &mut ClientStats,
    connected_in: Duration,
    pulled_in: Duration,
    registry_warnings: usize,
    owner_warnings: usize,
    node_problems: &[String],
) {
    let secs = pulled_in.as_secs_f64().max(1e-9);
    println!();
    println!("{:<34} {:>7} {:>10} {:>10} {:>10} {:>10}", "latency", "count", "p50", "p95", "p99", "max");
    println!("{}", total.connect.line("connect (registry + owner mTLS)"));
    println!("{}", total.who_am_i.line("WhoAmI (mTLS)"));
    println!("{}", total.stream.line("StreamEntries (whole stream)"));
    println!("{}", total.get_keys.line(&format!("GetKeys (batch of {})", args.key_batch)));
    println!("{}", total.pull.line("pull (WhoAmI + stream + keys)"));
    println!();
    println!("connecting {} clients took {:.1} s; pulling {:.1} s", args.clients, connected_in.as_secs_f64(), secs);
    println!(
        "throughput: {} pulls ({:.1}/s), {} entries streamed and verified ({:.0}/s), {} keys ({:.0}/s){}",
        total.pulls,
        total.pulls as f64 / secs,
        total.entries,
        total.entries as f64 / secs,
        total.keys,
        total.keys as f64 / secs,
        if args.decode { format!(", {} decoded", total.decoded) } else { String::new() }
    );
    println!("server log lines at WARN or ERROR: registry {registry_warnings}, owner {owner_warnings}");
    println!("errors: {}", total.errors);
    for m in total.messages.iter().take(10) {
        println!("  {m}");
    }
    if total.messages.len() > 10 {
        println!("  ... ({} messages kept)", total.messages.len());
    }
    for p in node_problems {
        println!("  {p}");
    }
    let ok = total.errors == 0 && node_problems.is_empty();
    println!("verdict: {}", if ok { "PASS" } else { "FAIL" });
}

/// One client: connects, waits for the others, pulls (once, or until the plan's end).
async fn client(plan: Arc<Plan>, identity: ClientIdentity) -> ClientStats {
    let mut stats = ClientStats::default();
    let t0 = Instant::now();
    let connected = async {
        let keys = KeyClient::connect(&plan.owner_url, identity).await.map_err(owner_err)?;
        let registry = RegistryClient::connect(&plan.registry_url, None).await.map_err(registry_err)?;
        Ok::<_, Error>((keys, registry))
    }
    .await;
    stats.connect.0.push(t0.elapsed());
    plan.start.wait().await;
    let until = plan.duration.map(|d| Instant::now() + d);
    let (mut keys, registry) = match connected {
        Ok(c) => c,
        Err(e) => {
            stats.error(format!("connect: {e}"));
            return stats;
        }
    };
    keys = keys.with_batch_size(plan.key_batch);
    loop {
        let t0 = Instant::now();
        match pull(&plan, &mut keys, &registry, &mut stats).await {
            Ok(()) => {
                stats.pulls += 1;
                stats.pull.0.push(t0.elapsed());
            }
            Err(e) => stats.error(e.to_string()),
        }
        if until.is_none_or(|end| Instant::now() >= end) {
            return stats;
        }
    }
}

async fn pull(plan: &Plan, keys: &mut KeyClient, registry: &RegistryClient, stats: &mut ClientStats) -> Result<()> {
    let t0 = Instant::now();
    let me = keys.who_am_i().await.map_err(owner_err)?;
    stats.who_am_i.0.push(t0.elapsed());

    // The whole stream first (its latency), then the checks.
    let t0 = Instant::now();
    let request = rpb::StreamEntriesRequest {
        owner_id: me.owner_id.to_string(),
        dataset: plan.dataset.to_string(),
        after: String::new(),
        limit: plan.entries_per_client,
    };
    let mut stream = registry
        .raw()
        .max_decoding_message_size(ambishare_rpc::registry::MAX_MESSAGE_BYTES)
        .stream_entries(request)
        .await
        .map_err(|s| Error::Other(format!("StreamEntries: {s}")))?
        .into_inner();
    let mut raw = Vec::with_capacity(plan.expected as usize);
    while let Some(item) = stream.next().await {
        raw.push(item.map_err(|s| Error::Other(format!("StreamEntries: {s}")))?);
    }
    stats.stream.0.push(t0.elapsed());
    if raw.len() as u64 != plan.expected {
        return Err(Error::Other(format!("streamed {} entries, expected {}", raw.len(), plan.expected)));
    }
    let mut entries = Vec::with_capacity(raw.len());
    for p in raw {
        let entry = Entry::try_from(p)?;
        if entry.verify(&me.owner_public_key).is_err() {
            return Err(Error::Other(format!("entry {}: the owner's signature does not verify", entry.id)));
        }
        entries.push(entry);
    }
    stats.entries += entries.len() as u64;

    // Keys in batches, each call timed.
    let mut answers = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(plan.key_batch) {
        let ids: Vec<EntryId> = chunk.iter().map(|e| e.id).collect();
        let t0 = Instant::now();
        let got = keys.get_keys(&ids).await.map_err(owner_err)?;
        stats.get_keys.0.push(t0.elapsed());
        answers.extend(got);
    }
    let mut work = Vec::with_capacity(entries.len());
    for (entry, (id, answer)) in entries.into_iter().zip(answers) {
        match answer {
            Ok(key) if key.tier() == Tier::Full && id == entry.id => work.push((entry, key)),
            Ok(key) => return Err(Error::Other(format!("entry {id}: a {} key where a full one was due", key.tier()))),
            Err(denial) => return Err(Error::Other(format!("entry {id}: key denied: {denial}"))),
        }
    }
    stats.keys += work.len() as u64;

    if let Some(runner) = &plan.runner {
        let runner = runner.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            for (entry, key) in &work {
                let code = key.disambiguate(&entry.code)?;
                ambishare_shared::pipeline::decode_image(&runner, &code, entry.width, entry.height)?;
            }
            Ok::<_, ambishare_shared::Error>(work.len() as u64)
        })
        .await
        .map_err(|e| Error::Other(format!("decoding task: {e}")))??;
        stats.decoded += decoded;
    }
    Ok(())
}
