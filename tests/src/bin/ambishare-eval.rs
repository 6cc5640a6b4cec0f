//! `ambishare-eval`: the model's quality report, the quickstart's picture and
//! table, and the evaluation. Every figure it writes comes from the run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Measures ambishare: image quality of every decode, and pictures of them.
#[derive(Debug, Parser)]
#[command(name = "ambishare-eval", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fit the fakes' tables of a model (activation rate and q8 level quantiles
    /// of the real values per position) on training photos and write them into
    /// its manifest.json (the model id changes with it).
    FitFakes {
        /// Model directory (manifest.json and its ONNX files)
        #[arg(long, default_value = "models/photo64")]
        model: PathBuf,
        /// Training photos (searched recursively, sub-folders taken in turn); never the test photos
        #[arg(long)]
        images: PathBuf,
        /// Tiles to fit on
        #[arg(long, default_value_t = 10_000)]
        tiles: u64,
        /// Each photo's centre crop, at most this many pixels a side
        #[arg(long, default_value_t = 512)]
        max_side: u32,
    },
    /// Write <out>/REPORT.md and <out>/report-grid.jpg for a model on held-out images:
    /// its goals measured; authorized, preview, public and random-guess decodes, JPEG
    /// at the same bytes and a block DCT at the same nonzero count; seams between
    /// tiles, grey in and grey out, encode and decode speed.
    ModelReport {
        /// Model directory (manifest.json and its ONNX files)
        #[arg(long, default_value = "models/photo64")]
        model: PathBuf,
        /// Folder of held-out images
        #[arg(long)]
        images: PathBuf,
        /// Where REPORT.md and report-grid.jpg go [default: the model directory]
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The evaluation: quality against JPEG, privacy against attacks, throughput;
    /// writes <out>/EVALUATION.md and its plots.
    Evaluation {
        #[arg(long, default_value = "models/photo64")]
        model: PathBuf,
        /// Folder of held-out images
        #[arg(long)]
        images: PathBuf,
        /// The attacker's own images (e.g. the training photos)
        #[arg(long)]
        attacker_images: PathBuf,
        #[arg(long, default_value = "docs")]
        out: PathBuf,
        /// Folder of the node binaries for the throughput run [default: this binary's folder]
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Skip running the nodes as processes
        #[arg(long)]
        no_nodes: bool,
        #[arg(long, default_value_t = 2026)]
        seed: u64,
        /// Re-encode consistency iterations
        #[arg(long, default_value_t = 4)]
        iterations: usize,
        /// Nonzeros the attacker's detector trains on
        #[arg(long, default_value_t = 200_000)]
        detector_samples: usize,
        /// Bound on the detector's training time per scheme, seconds
        #[arg(long, default_value_t = 30.0)]
        detector_seconds: f32,
    },
    /// PSNR, SSIM and HaarPSI of a reconstruction against its original.
    Compare { original: PathBuf, reconstruction: PathBuf },
    /// The quickstart's picture and table: <out>/grid.png and <out>/table.md.
    QuickstartGrid {
        /// `entry_id<TAB>file` lines, as `ambishare-owner publish --ids-out` writes them
        #[arg(long)]
        ids: PathBuf,
        /// A set of decodes: NAME=DIR of <entry-id>.png files; repeatable, in column order
        #[arg(long = "set", value_name = "NAME=DIR", required = true)]
        sets: Vec<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn quickstart_grid(ids: &std::path::Path, sets: &[String], out: &std::path::Path) -> ambishare_tests::Result<()> {
    use ambishare_tests::quickstart::{DecodeSet, quickstart_grid, read_ids};
    let sets = sets
        .iter()
        .map(|s| {
            let (name, dir) = s
                .split_once('=')
                .ok_or_else(|| ambishare_tests::Error::Other(format!("--set {s:?}: expected NAME=DIR")))?;
            Ok(DecodeSet { name: name.to_owned(), dir: PathBuf::from(dir) })
        })
        .collect::<ambishare_tests::Result<Vec<_>>>()?;
    print!("{}", quickstart_grid(&read_ids(ids)?, &sets, out)?);
    Ok(())
}

fn compare(a: &std::path::Path, b: &std::path::Path) -> ambishare_tests::Result<()> {
    use ambishare_shared::quality::{haarpsi, psnr, ssim};
    let (a, b) = (ambishare_tests::load_rgb(a)?, ambishare_tests::load_rgb(b)?);
    println!("psnr {:.4} ssim {:.6} haarpsi {:.6}", psnr(&a, &b)?, ssim(&a, &b)?, haarpsi(&a, &b)?);
    Ok(())
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let args: Vec<String> = std::env::args().collect();
    let command = format!("ambishare-eval {}", args[1..].join(" "));
    let result = match Cli::parse().command {
        Command::ModelReport { model, images, out } => {
            let out = out.unwrap_or_else(|| model.clone());
            ambishare_shared::model::init_runtime(None)
                .map_err(ambishare_tests::Error::from)
                .and_then(|()| ambishare_tests::report::model_report(&model, &images, &out, &command))
                .map(|r| print!("{}", r.markdown))
        }
        Command::Evaluation {
            model,
            images,
            attacker_images,
            out,
            bin_dir,
            no_nodes,
            seed,
            iterations,
            detector_samples,
            detector_seconds,
        } => {
            let bin_dir = if no_nodes {
                None
            } else {
                bin_dir.or_else(|| std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from)))
            };
            let opts = ambishare_tests::evaluation::EvalOptions {
                model_dir: model,
                images,
                attacker_images,
                out,
                bin_dir,
                seed,
                iterations,
                detector_samples,
                detector_seconds,
                command: command.clone(),
            };
            ambishare_shared::model::init_runtime(None)
                .map_err(ambishare_tests::Error::from)
                .and_then(|()| ambishare_tests::evaluation::run(&opts))
                .map(|md| print!("{md}"))
        }
        Command::FitFakes { model, images, tiles, max_side } => ambishare_shared::model::init_runtime(None)
            .map_err(ambishare_tests::Error::from)
            .and_then(|()| ambishare_tests::fit::fit_fakes(&model, &images, tiles, max_side))
            .map(|summary| print!("{summary}")),
        Command::Compare { original, reconstruction } => compare(&original, &reconstruction),
        Command::QuickstartGrid { ids, sets, out } => quickstart_grid(&ids, &sets, &out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
