//! `ambishare-crash`: crash consistency of the registry and the owner, as real
//! processes killed with SIGKILL in the middle of a large publish.
//!
//! Each trial starts a fresh registry and owner (the built binaries), runs
//! `ambishare-owner publish` of a few hundred generated images, kills the
//! registry or the owner (or both) at a random moment, stops the survivor,
//! and checks the stores as the crash left them (with `--kills N`, it then
//! restarts both, publishes again and kills again, N times: later kills land
//! in a publish that re-sends what the earlier one left prepared):
//!
//! - every entry the owner saw acknowledged (marked published in its store,
//!   or listed by `publish --ids-out`) is in the registry, parses, verifies
//!   with the owner's key and is byte-equal to what the owner signed;
//! - every registry entry has its three index rows and every index row its
//!   entry; every registry entry is known to the owner with its sealed key;
//! - every owner entry has its signed bytes, its sealed key and a source of its own.
//!
//! Then it restarts both nodes (recovery), checks that ListEntries by owner,
//! by dataset and in publication order and StreamEntries agree with the
//! entries, publishes the same inputs again (which must complete the set
//! without duplicates: the registry holds exactly one entry per distinct
//! image), has a party granted the dataset fetch every key over mTLS and
//! disambiguate every entry, and checks the stores once more.
//!
//! Exits non-zero on any violation, and on any hang (a step that does not
//! finish within its time limit is reported as a hang, never waited out).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ambishare_owner::store::EntryState;
use ambishare_proto::types::v1 as pb;
use ambishare_rpc::{KeyClient, RegistryClient};
use ambishare_shared::{DatasetName, EntryId, Tier};
use ambishare_tests::consistency::{
    OwnerSnapshot, Problems, RegistrySnapshot, check_registry_store, cross_check, open_registry_store, read_owner_store,
};
use ambishare_tests::harness::repo_root;
use ambishare_tests::nodes::{
    Bins, OwnerNode, Proc, PublishArgs, RegistryNode, Stopped, enroll_party, init_owner, list_all, log_tail, owner_err,
    publish_command, read_ids_out, registry_err, stream_all,
};
use ambishare_tests::synth::write_images;
use ambishare_tests::{Error, Result};
use clap::{Parser, ValueEnum};
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Kill the registry and the owner with SIGKILL at random moments of a large
/// publish, restart them, and check that nothing acknowledged was lost, no
/// entry lacks its index or its key, and publishing again completes the set
/// without duplicates. Exits non-zero on any violation or hang.
#[derive(Debug, Parser)]
#[command(name = "ambishare-crash", version, about, long_about)]
struct Args {
    /// Trials: each starts fresh nodes, publishes, kills one, restarts and checks.
    #[arg(long, default_value_t = 50)]
    trials: usize,
    /// Seed of the images, the victims and the moments of the kills.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Which process each kill hits.
    #[arg(long, value_enum, default_value_t = VictimMode::Alternate)]
    victim: VictimMode,
    /// Kills per trial: each kill interrupts a publish, the nodes restart and
    /// the next publish resumes it (and is killed in turn).
    #[arg(long, default_value_t = 3)]
    kills: usize,
    /// Distinct images published in each trial.
    #[arg(long, default_value_t = 300)]
    images: usize,
    /// Extra input files that repeat the bytes of some images (each a duplicate source).
    #[arg(long, default_value_t = 8)]
    copies: usize,
    /// Side of the generated images, in pixels.
    #[arg(long, default_value_t = 16)]
    size: u32,
    /// Model directory [default: shared/testdata/tiny_model, 8x8 tiles, fast]
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Images the owner encodes and publishes together (its --batch).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Kills happen uniformly in [0, this] ms after each publish starts
    /// [default: measured: the time an uninterrupted publish of what is left should take].
    #[arg(long, value_name = "MS")]
    kill_window_ms: Option<u64>,
    /// Directory of ambishare-registry and ambishare-owner [default: beside this executable].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Where trials keep their data [default: a temporary directory].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep every trial's data and logs (kept anyway for trials with a violation).
    #[arg(long)]
    keep: bool,
    /// Time limit of each step (a publish, a restart, the checks), in seconds;
    /// a step over it is reported as a hang.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    step_timeout: u64,
    /// Stop after the first trial with a violation.
    #[arg(long)]
    fail_fast: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VictimMode {
    /// registry, owner, registry, owner, ...
    Alternate,
    /// registry, owner, both, registry, ...
    Cycle,
    /// registry or owner, drawn by the seed.
    Random,
    Registry,
    Owner,
    /// Both at once (a power cut).
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Registry,
    Owner,
    Both,
}

impl fmt::Display for Victim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Victim::Registry => "registry",
            Victim::Owner => "owner",
            Victim::Both => "both",
        })
    }
}

impl VictimMode {
    fn pick(self, trial: usize, rng: &mut ChaCha8Rng) -> Victim {
        match self {
            VictimMode::Alternate => [Victim::Registry, Victim::Owner][trial % 2],
            VictimMode::Cycle => [Victim::Registry, Victim::Owner, Victim::Both][trial % 3],
            VictimMode::Random => {
                if rng.random_bool(0.5) {
                    Victim::Registry
                } else {
                    Victim::Owner
                }
            }
            VictimMode::Registry => Victim::Registry,
            VictimMode::Owner => Victim::Owner,
            VictimMode::Both => Victim::Both,
        }
    }
}

/// Limits of the steps that are not a publish.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
const DATASET: &str = "crash";

/// One kill and the stores as it left them.
#[derive(Debug)]
struct Kill {
    victim: Victim,
    after_ms: u64,
    /// The publish had ended before the kill.
    finished_before: bool,
    /// How the interrupted publish command ended.
    publish: String,
    /// Entries the owner marked published, entries it prepared but had not
    /// seen acknowledged, entries in the registry.
    acked: usize,
    prepared: usize,
    in_registry: usize,
}

/// What one trial saw and found.
#[derive(Debug, Default)]
struct Trial {
    index: usize,
    kills: Vec<Kill>,
    /// The last publish's summary line.
    last_publish: String,
    /// Entries in the registry at the end.
    final_entries: usize,
    keys_ok: usize,
    problems: Problems,
    hangs: Vec<String>,
    secs: f64,
}

impl Trial {
    fn violations(&self) -> usize {
        self.problems.count + self.hangs.len()
    }
}

/// Paths and settings shared by every trial.
struct Setup {
    bins: Bins,
    inputs: PathBuf,
    distinct: usize,
    model: PathBuf,
    batch: usize,
    step_timeout: Duration,
    dataset: DatasetName,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ambishare-crash: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ambishare-crash: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    if args.trials == 0 || args.images == 0 || args.batch == 0 || args.kills == 0 {
        return Err(Error::Other("--trials, --kills, --images and --batch must be at least 1".into()));
    }
    let bins = Bins::locate(args.bin_dir.as_deref())?;
    let model =
        std::path::absolute(args.model.clone().unwrap_or_else(|| repo_root().join("shared/testdata/tiny_model")))?;
    let model = std::fs::canonicalize(&model).unwrap_or(model);
    if !model.join("manifest.json").is_file() {
        return Err(Error::Other(format!("no model at {} (manifest.json missing)", model.display())));
    }
    let temp = match &args.work_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("ambishare-crash.").tempdir()?),
    };
    let work = match (&args.work_dir, &temp) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => return Err(Error::Other("no work directory".into())),
    };
    std::fs::create_dir_all(&work)?;
    let work = std::path::absolute(&work)?;
    let inputs = work.join("images");
    if inputs.exists() {
        std::fs::remove_dir_all(&inputs)?;
    }
    write_images(&inputs, args.images, args.size, args.copies, args.seed)?;
    let setup = Setup {
        bins,
        inputs,
        distinct: args.images,
        model,
        batch: args.batch,
        step_timeout: Duration::from_secs(args.step_timeout),
        dataset: DATASET.parse()?,
    };
    println!(
        "ambishare-crash: {} trials of {} kill(s), seed {}, victims {:?}, {} images ({}x{} px) + {} copies, \
         model {}, batch {}",
        args.trials,
        args.kills,
        args.seed,
        args.victim,
        args.images,
        args.size,
        args.size,
        args.copies,
        setup.model.display(),
        args.batch
    );
    println!("work directory {}", work.display());

    // A first publish without a kill: checks the set-up and times a publish.
    let started = Instant::now();
    let window = match args.kill_window_ms {
        Some(ms) => Window::Fixed(Duration::from_millis(ms)),
        None => {
            let dir = work.join("calibration");
            let window = calibrate(&setup, &dir).await?;
            if !args.keep {
                let _ = std::fs::remove_dir_all(&dir);
            }
            if let Window::Measured { full, noop } = window {
                println!(
                    "uninterrupted publishes took {} ms (all {} images) and {} ms (none left); each kill falls \
                     at a uniform fraction of the time its publish should take",
                    full.as_millis(),
                    setup.distinct,
                    noop.as_millis()
                );
            }
            window
        }
    };

    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    println!();
    println!("{}", header());
    let mut trials = Vec::with_capacity(args.trials);
    for index in 1..=args.trials {
        let plan: Vec<(Victim, f64)> = (0..args.kills)
            .map(|k| {
                let victim = args.victim.pick((index - 1) * args.kills + k, &mut rng);
                (victim, rng.random_range(0.0..1.0))
            })
            .collect();
        let dir = work.join(format!("trial-{index:03}"));
        let t0 = Instant::now();
        let mut trial = Trial { index, ..Trial::default() };
        if let Err(e) = run_trial(&setup, &dir, &plan, window, &mut trial).await {
            trial.problems.push(format!("trial could not go on: {e}"));
        }
        trial.secs = t0.elapsed().as_secs_f64();
        for line in rows(&trial) {
            println!("{line}");
        }
        for p in &trial.problems.listed {
            println!("      ! {p}");
        }
        if trial.problems.count > trial.problems.listed.len() {
            println!("      ! ... {} more", trial.problems.count - trial.problems.listed.len());
        }
        for h in &trial.hangs {
            println!("      ! HANG: {h}");
        }
        if trial.violations() > 0 {
            println!("      (data and logs kept in {})", dir.display());
        } else if !args.keep {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let failed = trial.violations() > 0;
        trials.push(trial);
        if failed && args.fail_fast {
            break;
        }
    }
    let ok = summary(&trials, started.elapsed());
    if let Some(temp) = temp
        && (args.keep || !ok)
    {
        // Kept for inspection.
        let kept = temp.keep();
        println!("data kept in {}", kept.display());
    }
    Ok(ok)
}

fn header() -> String {
    format!(
        "{:>6} {:<8} {:>7} {:>4} {:<14} {:>5} {:>5} {:>5} | {:<30} {:>5} {:>5} {:>4} {:>6}",
        "kill",
        "victim",
        "at ms",
        "done",
        "publish",
        "acked",
        "prep",
        "reg",
        "last publish new/resent/skip/dup",
        "final",
        "keys",
        "viol",
        "secs"
    )
}

/// One line per kill; the trial's outcome on the last.
fn rows(t: &Trial) -> Vec<String> {
    let mut lines: Vec<String> = t
        .kills
        .iter()
        .enumerate()
        .map(|(k, kill)| {
            format!(
                "{:>6} {:<8} {:>7} {:>4} {:<14} {:>5} {:>5} {:>5} |",
                format!("{}.{}", t.index, k + 1),
                kill.victim.to_string(),
                kill.after_ms,
                if kill.finished_before { "yes" } else { "no" },
                kill.publish,
                kill.acked,
                kill.prepared,
                kill.in_registry,
            )
        })
        .collect();
    let outcome = format!(
        " {:<30} {:>5} {:>5} {:>4} {:>6.1}",
        t.last_publish,
        t.final_entries,
        t.keys_ok,
        t.violations(),
        t.secs
    );
    match lines.last_mut() {
        Some(last) => last.push_str(&outcome),
        None => lines.push(format!("{:>6} (no kill){:>43}|{outcome}", t.index, "")),
    }
    lines
}

fn summary(trials: &[Trial], elapsed: Duration) -> bool {
    let kills: Vec<&Kill> = trials.iter().flat_map(|t| &t.kills).collect();
    let count = |v: Victim| kills.iter().filter(|k| k.victim == v).count();
    let violations: usize = trials.iter().map(Trial::violations).sum();
    let hangs: usize = trials.iter().map(|t| t.hangs.len()).sum();
    let bad = trials.iter().filter(|t| t.violations() > 0).count();
    let mid = kills.iter().filter(|k| !k.finished_before).count();
    let acked: usize = kills.iter().map(|k| k.acked).sum();
    let unacked: usize = kills.iter().map(|k| k.in_registry.saturating_sub(k.acked)).sum();
    let secs: Vec<f64> = trials.iter().map(|t| t.secs).collect();
    let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
    let max = secs.iter().copied().fold(0.0, f64::max);
    println!();
    println!("summary");
    println!("  trials        {}", trials.len());
    println!(
        "  kills         {} (registry {}, owner {}, both {}); {mid} mid-publish, {} after the publish had ended",
        kills.len(),
        count(Victim::Registry),
        count(Victim::Owner),
        count(Victim::Both),
        kills.len() - mid
    );
    println!(
        "  at the crashes: {acked} acknowledged entries checked; {unacked} stored by the registry but not yet \
         acknowledged to the owner"
    );
    println!("  violations    {violations} in {bad} trial(s), of which hangs {hangs}");
    println!("  time          {:.1} s (trial mean {mean:.1} s, max {max:.1} s)", elapsed.as_secs_f64());
    println!("  verdict       {}", if violations == 0 { "PASS" } else { "FAIL" });
    violations == 0
}

/// An uninterrupted publish on fresh nodes (checked like a trial); its duration in ms.
/// How long publishes take here, for placing the kills.
#[derive(Clone, Copy, Debug)]
enum Window {
    /// Kills fall in [0, this].
    Fixed(Duration),
    /// Measured: a publish of everything, and one with nothing left to do
    /// (the fixed cost: start, connect, load the model).
    Measured { full: Duration, noop: Duration },
}

impl Window {
    /// Where kills fall for a publish with `remaining` of `total` images left to publish.
    fn span(self, remaining: usize, total: usize) -> Duration {
        match self {
            Window::Fixed(d) => d,
            Window::Measured { full, noop } => {
                let per_image = full.saturating_sub(noop).as_secs_f64() / total.max(1) as f64;
                noop + Duration::from_secs_f64(per_image * remaining as f64)
            }
        }
    }
}

/// Two uninterrupted publishes on fresh nodes: everything, then nothing left
/// (checked like a trial's); their durations.
async fn calibrate(setup: &Setup, dir: &Path) -> Result<Window> {
    std::fs::create_dir_all(dir)?;
    let home = init_owner(&setup.bins, &dir.join("owner"), &dir.join("owner-init.log"), START_TIMEOUT).await?;
    let mut registry =
        RegistryNode::start(&setup.bins, &dir.join("registry"), &dir.join("registry.log"), START_TIMEOUT).await?;
    let mut owner = OwnerNode::start(&setup.bins, &home, &dir.join("owner.log"), START_TIMEOUT).await?;
    let mut times = Vec::with_capacity(2);
    for run in 1..=2 {
        let args = publish_args(setup, dir.join(format!("ids-{run}.tsv")));
        let command = publish_command(&setup.bins, &home, owner.addr, &registry.url(), &args);
        let t0 = Instant::now();
        let mut publish = Proc::spawn("publish", command, &dir.join(format!("publish-{run}.log")))?;
        let status = publish.wait(setup.step_timeout).await?;
        times.push(t0.elapsed());
        match status {
            Some(s) if s.success() => {}
            Some(s) => {
                return Err(Error::Other(format!("the calibration publish failed ({s}): {}", log_tail(&publish.log))));
            }
            None => {
                return Err(Error::Other(format!(
                    "HANG: the calibration publish did not finish within {:?}",
                    setup.step_timeout
                )));
            }
        }
        let ids = read_ids_out(&args.ids_out)?;
        let distinct: BTreeSet<EntryId> = ids.iter().map(|(id, _)| *id).collect();
        if distinct.len() != setup.distinct {
            return Err(Error::Other(format!(
                "the calibration publish listed {} entries for {} distinct images",
                distinct.len(),
                setup.distinct
            )));
        }
    }
    owner.proc.stop(STOP_TIMEOUT).await?;
    registry.proc.stop(STOP_TIMEOUT).await?;
    Ok(Window::Measured { full: times[0], noop: times[1] })
}

fn publish_args(setup: &Setup, ids_out: PathBuf) -> PublishArgs {
    PublishArgs {
        dataset: setup.dataset.clone(),
        model: setup.model.clone(),
        inputs: vec![setup.inputs.clone()],
        batch: setup.batch,
        ids_out,
    }
}

/// Stops a node with SIGTERM; a node that does not stop is a hang (it is then killed).
async fn stop_node(proc: &mut Proc, when: &str, trial: &mut Trial) -> Result<()> {
    match proc.stop(STOP_TIMEOUT).await? {
        Stopped::Exited(status) if status.success() => {}
        Stopped::Exited(status) => trial.problems.push(format!(
            "{} exited with {status} when stopped {when}: {}",
            proc.name,
            log_tail(&proc.log)
        )),
        Stopped::Hung => trial.hangs.push(format!(
            "{} did not stop within {STOP_TIMEOUT:?} of SIGTERM {when} (killed): {}",
            proc.name,
            log_tail(&proc.log)
        )),
    }
    Ok(())
}

/// The store checks, with both nodes stopped.
async fn check_stores(
    dir: &Path,
    home: &ambishare_owner::Home,
    acknowledged: &[EntryId],
) -> Result<(OwnerSnapshot, RegistrySnapshot, Problems)> {
    let owner = read_owner_store(home)?;
    let registry = {
        let store = open_registry_store(&dir.join("registry")).await?;
        check_registry_store(store).await?
    };
    let mut problems = Problems::default();
    problems.extend(owner.problems.clone());
    problems.extend(registry.problems.clone());
    problems.extend(cross_check(&owner, &registry, acknowledged));
    Ok((owner, registry, problems))
}

async fn run_trial(setup: &Setup, dir: &Path, plan: &[(Victim, f64)], window: Window, trial: &mut Trial) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let home = init_owner(&setup.bins, &dir.join("owner"), &dir.join("owner-init.log"), START_TIMEOUT).await?;
    let mut registry =
        RegistryNode::start(&setup.bins, &dir.join("registry"), &dir.join("registry.log"), START_TIMEOUT).await?;
    let mut owner = OwnerNode::start(&setup.bins, &home, &dir.join("owner.log"), START_TIMEOUT).await?;
    // Ids listed by a publish that completed: acknowledged too.
    let mut acknowledged: BTreeSet<EntryId> = BTreeSet::new();

    // Images the registry may still lack (for placing the kill).
    let mut remaining = setup.distinct;
    for (k, &(victim, fraction)) in plan.iter().enumerate() {
        let after = window.span(remaining, setup.distinct).mul_f64(fraction);
        // 1. Publish, and kill at the chosen moment.
        let args = publish_args(setup, dir.join(format!("ids-{}.tsv", k + 1)));
        let command = publish_command(&setup.bins, &home, owner.addr, &registry.url(), &args);
        let mut publish = Proc::spawn("publish", command, &dir.join(format!("publish-{}.log", k + 1)))?;
        tokio::time::sleep(after).await;
        let finished_before = publish.try_status()?.is_some();
        if matches!(victim, Victim::Registry | Victim::Both) {
            registry.proc.kill()?;
        }
        if matches!(victim, Victim::Owner | Victim::Both) {
            owner.proc.kill()?;
        }
        let outcome = match publish.wait(setup.step_timeout).await? {
            Some(s) if s.success() => "completed".to_string(),
            Some(_) => "failed (crash)".to_string(),
            None => {
                publish.kill()?;
                trial.hangs.push(format!(
                    "the publish command did not end within {:?} of the {victim} kill: {}",
                    setup.step_timeout,
                    log_tail(&publish.log)
                ));
                "HUNG".to_string()
            }
        };
        // The survivor stops cleanly: the stores are then as the crash left them.
        if victim == Victim::Owner {
            stop_node(&mut registry.proc, "after the owner's crash", trial).await?;
        }
        if victim == Victim::Registry {
            stop_node(&mut owner.proc, "after the registry's crash", trial).await?;
        }

        // 2. The stores as the crash left them.
        if args.ids_out.exists() {
            acknowledged.extend(read_ids_out(&args.ids_out)?.into_iter().map(|(id, _)| id));
        }
        let listed: Vec<EntryId> = acknowledged.iter().copied().collect();
        let (owner_snap, registry_snap, problems) = check_stores(dir, &home, &listed).await?;
        remaining = setup.distinct.saturating_sub(registry_snap.entries.len());
        trial.kills.push(Kill {
            victim,
            after_ms: after.as_millis() as u64,
            finished_before,
            publish: outcome,
            acked: owner_snap.published().count(),
            prepared: owner_snap.entries.values().filter(|r| r.state == EntryState::Prepared).count(),
            in_registry: registry_snap.entries.len(),
        });
        trial.problems.extend(problems);

        // 3. Restart both (recovery), and check what they serve.
        registry =
            RegistryNode::start(&setup.bins, &dir.join("registry"), &dir.join("registry.log"), START_TIMEOUT).await?;
        owner = OwnerNode::start(&setup.bins, &home, &dir.join("owner.log"), START_TIMEOUT).await?;
        let served =
            tokio::time::timeout(setup.step_timeout, check_served(&registry.url(), &owner_snap, &registry_snap, setup))
                .await;
        match served {
            Ok(Ok(problems)) => trial.problems.extend(problems),
            Ok(Err(e)) => trial.problems.push(format!("after the restart: {e}")),
            Err(_) => trial.hangs.push(format!("the reads after the restart took over {:?}", setup.step_timeout)),
        }
    }

    // 4. Publish the same inputs again, uninterrupted: it must complete the set, without duplicates.
    let last = publish_args(setup, dir.join("ids-last.tsv"));
    let command = publish_command(&setup.bins, &home, owner.addr, &registry.url(), &last);
    let mut publish = Proc::spawn("publish", command, &dir.join("publish-last.log"))?;
    let ids: Vec<EntryId> = match publish.wait(setup.step_timeout).await? {
        Some(s) if s.success() => {
            trial.last_publish = summary_line(&publish.log);
            read_ids_out(&last.ids_out)?.into_iter().map(|(id, _)| id).collect()
        }
        Some(s) => {
            trial.last_publish = "FAILED".into();
            trial.problems.push(format!("the last publish failed ({s}): {}", log_tail(&publish.log)));
            Vec::new()
        }
        None => {
            publish.kill()?;
            trial.last_publish = "HUNG".into();
            trial.hangs.push(format!(
                "the last publish did not end within {:?}: {}",
                setup.step_timeout,
                log_tail(&publish.log)
            ));
            Vec::new()
        }
    };
    let distinct: BTreeSet<EntryId> = ids.iter().copied().collect();
    if !ids.is_empty() && (distinct.len() != setup.distinct || ids.len() != setup.distinct) {
        trial.problems.push(format!(
            "the last publish lists {} files and {} entries for {} distinct images",
            ids.len(),
            distinct.len(),
            setup.distinct
        ));
    }
    if !ids.is_empty() {
        for id in acknowledged.difference(&distinct) {
            trial.problems.push(format!("entry {id} listed by an earlier publish is not the entry of its file now"));
        }
    }

    // 5. A party granted the dataset fetches every key, and each disambiguates its entry.
    let keys = tokio::time::timeout(setup.step_timeout, check_keys(&owner, &registry.url(), setup, trial.index)).await;
    match keys {
        Ok(Ok((n, problems))) => {
            trial.keys_ok = n;
            trial.problems.extend(problems);
        }
        Ok(Err(e)) => trial.problems.push(format!("fetching keys: {e}")),
        Err(_) => trial.hangs.push(format!("fetching keys took over {:?}", setup.step_timeout)),
    }

    // 6. The stores at the end: complete, consistent, one entry per image.
    stop_node(&mut owner.proc, "at the end", trial).await?;
    stop_node(&mut registry.proc, "at the end", trial).await?;
    let (owner_end, registry_end, problems) = check_stores(dir, &home, &ids).await?;
    trial.problems.extend(problems);
    trial.final_entries = registry_end.entries.len();
    if registry_end.entries.len() != setup.distinct {
        trial.problems.push(format!(
            "DUPLICATES or MISSING: the registry holds {} entries for {} distinct images",
            registry_end.entries.len(),
            setup.distinct
        ));
    }
    let unpublished = owner_end.entries.values().filter(|r| r.state != EntryState::Published).count();
    if owner_end.entries.len() != setup.distinct || unpublished > 0 {
        trial.problems.push(format!(
            "the owner holds {} entries ({unpublished} not published) for {} distinct images",
            owner_end.entries.len(),
            setup.distinct
        ));
    }
    Ok(())
}

/// The publish command's summary line, shortened.
fn summary_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Some(line) = text.lines().rev().find(|l| l.starts_with("published ")) else { return "?".into() };
    // "published N, re-sent N from an earlier run, skipped N already published, N duplicate file(s), failed N"
    let numbers: Vec<&str> = line.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).collect();
    match numbers.as_slice() {
        [new, resent, skipped, dup, failed] => format!("{new}/{resent}/{skipped}/{dup} (failed {failed})"),
        _ => line.chars().take(40).collect(),
    }
}

/// With the nodes restarted: every acknowledged entry is served intact and
/// byte-equal, and every listing agrees with the entries the store holds.
async fn check_served(
    url: &str,
    owner: &OwnerSnapshot,
    registry_snap: &RegistrySnapshot,
    setup: &Setup,
) -> Result<Problems> {
    let mut problems = Problems::default();
    let registry = RegistryClient::connect(url, None).await.map_err(registry_err)?;
    for id in owner.published() {
        match registry.get_entry(*id).await {
            Ok(entry) => {
                if entry.verify(&owner.public_key).is_err() {
                    problems.push(format!("GetEntry {id}: the signature does not verify"));
                }
                let bytes = pb::Entry::from(&entry).encode_to_vec();
                if owner.entries.get(id).and_then(|r| r.signed.as_deref()) != Some(bytes.as_slice()) {
                    problems.push(format!("GetEntry {id}: not the bytes the owner signed"));
                }
            }
            Err(e) => problems.push(format!("LOST after restart: GetEntry {id}: {e}")),
        }
    }
    let stored: BTreeSet<EntryId> = registry_snap.entries.keys().copied().collect();
    let mut compare = |what: &str, got: Vec<EntryId>| {
        let set: BTreeSet<EntryId> = got.iter().copied().collect();
        if set.len() != got.len() {
            problems.push(format!("{what} lists {} entries, {} distinct", got.len(), set.len()));
        }
        if set != stored {
            problems.push(format!(
                "{what} lists {} entries, the store holds {} ({} missing, {} extra)",
                set.len(),
                stored.len(),
                stored.difference(&set).count(),
                set.difference(&stored).count()
            ));
        }
    };
    compare("ListEntries by owner", list_all(&registry, Some(owner.owner), None).await?);
    compare("ListEntries by dataset", list_all(&registry, None, Some(&setup.dataset)).await?);
    compare("ListEntries by owner and dataset", list_all(&registry, Some(owner.owner), Some(&setup.dataset)).await?);
    compare("ListEntries of everything", list_all(&registry, None, None).await?);
    let streamed = stream_all(&registry, owner.owner, Some(&setup.dataset)).await?;
    compare("StreamEntries", streamed.iter().map(|e| e.id).collect());
    Ok(problems)
}

/// A party granted the dataset fetches the key of every entry in the registry
/// over mTLS; each must be a full key that disambiguates its entry.
async fn check_keys(owner: &OwnerNode, registry_url: &str, setup: &Setup, trial: usize) -> Result<(usize, Problems)> {
    let mut problems = Problems::default();
    let mut admin = owner.admin().await?;
    let identity = enroll_party(&mut admin, &format!("crash-party-{trial}"), &setup.dataset, Tier::Full).await?;
    let mut keys = KeyClient::connect(&owner.url(), identity).await.map_err(owner_err)?.with_batch_size(100);
    let registry = RegistryClient::connect(registry_url, None).await.map_err(registry_err)?;
    let me = keys.who_am_i().await.map_err(owner_err)?;
    let entries = stream_all(&registry, me.owner_id, Some(&setup.dataset)).await?;
    let ids: Vec<EntryId> = entries.iter().map(|e| e.id).collect();
    let answers: HashMap<EntryId, _> = keys.get_keys(&ids).await.map_err(owner_err)?.into_iter().collect();
    let mut ok = 0;
    for entry in &entries {
        match answers.get(&entry.id) {
            Some(Ok(key)) if key.tier() == Tier::Full => match key.disambiguate(&entry.code) {
                Ok(_) => ok += 1,
                Err(e) => problems.push(format!("the key of {} does not disambiguate it: {e}", entry.id)),
            },
            Some(Ok(key)) => problems.push(format!("the key of {} is {} , not full", entry.id, key.tier())),
            Some(Err(denial)) => problems.push(format!("NO KEY for registry entry {}: {denial}", entry.id)),
            None => problems.push(format!("no answer for the key of {}", entry.id)),
        }
    }
    Ok((ok, problems))
}
