//! The model's quality report: `models/<name>/REPORT.md` and its picture grid.
//!
//! It opens with the model's goals, each measured on the run: the authorized
//! decode, the preview tiers, the seams between tiles, grey in and grey out,
//! the dense code's rank and the activation rates, and the public decode.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ambishare_shared::model::ModelRunner;
use ambishare_shared::tiling::image_to_tiles;
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::Value;

use crate::quality::{BORDER_RING, DecodeKind, ImageReport, report_image};
use crate::scheme::DerivedScheme;
use crate::{Error, Result, grid, list_images, load_rgb};

/// Seed of the ambiguation and guesses in reports (reproducible; owners use a CSPRNG).
pub const REPORT_SEED: u64 = 2026;

/// File-name prefix `prepare_data.py` gives the 10 test photos of `fetch_photos.sh`.
pub const FETCH_PREFIX: &str = "fetch_";

/// The model's goals (the v2 model issue).
const AUTHORIZED_GOAL_DB: f64 = 30.0;
const TIER_GAP_GOAL_DB: f64 = 2.0;
const QUARTER_GOAL_DB: f64 = 24.0;
const SEAM_GOAL_DB: f64 = 1.0;
const SV_RATIO_GOAL: f64 = 0.01;
const RATE_FACTOR_GOAL: f64 = 2.0;
const PUBLIC_GOAL_DB: f64 = 12.0;

/// Tiles a speed run encodes or decodes at once, and timed runs (after one warm-up) whose median counts.
const SPEED_BATCH: usize = 64;
const SPEED_RUNS: usize = 5;

pub struct ModelReport {
    pub images: Vec<ImageReport>,
    pub markdown: String,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// Some of the test images, by index.
struct Group {
    label: String,
    members: Vec<usize>,
}

impl Group {
    /// Mean of `f` over the group's images.
    fn mean(&self, images: &[ImageReport], f: impl Fn(&ImageReport) -> f64) -> f64 {
        mean(self.members.iter().map(|&i| f(&images[i])))
    }

    /// Mean PSNR and SSIM of one kind of decode (NaN where an image lacks it).
    fn decode_mean(&self, images: &[ImageReport], kind: DecodeKind) -> (f64, f64) {
        let get = |r: &ImageReport, f: fn(&crate::quality::Decoded) -> f64| r.decode_of(kind).map_or(f64::NAN, f);
        (self.mean(images, |r| get(r, |d| d.psnr)), self.mean(images, |r| get(r, |d| d.ssim)))
    }
}

/// All images, then, when both are present, those named `fetch_*` and the others.
fn groups(images: &[ImageReport]) -> Vec<Group> {
    let all: Vec<usize> = (0..images.len()).collect();
    let (fetch, other): (Vec<usize>, Vec<usize>) =
        all.iter().copied().partition(|&i| images[i].name.starts_with(FETCH_PREFIX));
    let mut out = vec![Group { label: format!("all {}", all.len()), members: all }];
    if !fetch.is_empty() && !other.is_empty() {
        out.push(Group { label: format!("`{FETCH_PREFIX}*` {}", fetch.len()), members: fetch });
        out.push(Group { label: format!("other {}", other.len()), members: other });
    }
    out
}

/// "all 27.10, `fetch_*` 27.50, other 26.60" with `unit` after each figure.
fn by_group(groups: &[Group], unit: &str, f: impl Fn(&Group) -> f64) -> String {
    groups.iter().map(|g| format!("{} {:.2}{unit}", g.label, f(g))).collect::<Vec<_>>().join(", ")
}

/// A markdown table's header row and its rule, one column per item.
fn table_head(md: &mut String, columns: impl IntoIterator<Item = String>) {
    let columns: Vec<String> = columns.into_iter().collect();
    let _ = writeln!(md, "| {} |\n|{}", columns.join(" | "), "---|".repeat(columns.len()));
}

fn yes_no(met: bool) -> &'static str {
    if met { "yes" } else { "no" }
}

/// A figure of the manifest, or "not recorded".
fn recorded(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "not recorded".to_owned(), |v| format!("{v:.digits$}"))
}

/// Encode and decode time of the model on CPU, per tile.
struct Speed {
    encode_ms: f64,
    decode_ms: f64,
    threads: usize,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times the runner as loaded on [`SPEED_BATCH`] tiles of `img` (repeated when it has fewer).
fn speed(runner: &ModelRunner, img: &RgbImage) -> Result<Speed> {
    let (tiles, grid) = image_to_tiles(img, runner.manifest().tile_size)?;
    let batch: Vec<f32> = tiles.chunks_exact(grid.tile_len()).cycle().take(SPEED_BATCH).flatten().copied().collect();
    let time = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        f()?;
        let mut runs = Vec::with_capacity(SPEED_RUNS);
        for _ in 0..SPEED_RUNS {
            let start = Instant::now();
            f()?;
            runs.push(start.elapsed().as_secs_f64() * 1000.0 / SPEED_BATCH as f64);
        }
        Ok(median(runs))
    };
    let code = runner.encode_tiles(&batch, SPEED_BATCH)?;
    let encode_ms = time(&|| runner.encode_tiles(&batch, SPEED_BATCH).map(drop).map_err(Error::from))?;
    let decode_ms = time(&|| runner.decode_tiles(&code, SPEED_BATCH).map(drop).map_err(Error::from))?;
    // What ModelRunner::load asks of ONNX Runtime: one intra-op thread per core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Speed { encode_ms, decode_ms, threads })
}

/// The training line: validation PSNR at k, k/2, k/4 under the v2 keys
/// (`psnr_k64`...) or the v1 ones (`val_psnr_k`...), and border / interior.
fn training_line(manifest: &Value, k: u16) -> String {
    let training = &manifest["training"];
    let last = &training["last_epoch"];
    let at = |n: u16, v1: &str| last[format!("psnr_k{n}")].as_f64().or_else(|| last[v1].as_f64());
    let mut line = format!(
        "Training (models/train/, see its README): {} epochs of {}; last validation PSNR {} dB at k, {} at k/2, {} \
         at k/4",
        training["epochs"],
        training["data"].as_str().unwrap_or("?"),
        recorded(at(k, "val_psnr_k"), 2),
        recorded(at(k / 2, "val_psnr_k2"), 2),
        recorded(at(k / 4, "val_psnr_k4"), 2),
    );
    if let (Some(b), Some(i)) = (last["psnr_border"].as_f64(), last["psnr_interior"].as_f64()) {
        let _ = write!(line, "; tile border {b:.2} dB, interior {i:.2} dB at k");
    }
    line.push_str(" (64x64 tiles).");
    line
}

/// Measures every image of `images_dir`, writes `out/REPORT.md` and `out/report-grid.jpg`.
pub fn model_report(model_dir: &Path, images_dir: &Path, out: &Path, command: &str) -> Result<ModelReport> {
    let runner = ModelRunner::load(model_dir, ambishare_shared::Device::Cpu)?;
    let m = runner.manifest().clone();
    let mut rng = ChaCha20Rng::seed_from_u64(REPORT_SEED);
    // The report's owner: a master secret of its own, fixed by the seed.
    let scheme = DerivedScheme::for_model(&runner, rng.random())?;
    let paths: Vec<PathBuf> = list_images(images_dir)?;
    if paths.is_empty() {
        return Err(Error::Other(format!("no images in {}", images_dir.display())));
    }
    let mut images = Vec::new();
    let mut originals = Vec::new();
    for path in &paths {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let img = load_rgb(path)?;
        images.push(report_image(&runner, &scheme, &name, &img, &mut rng)?);
        originals.push(img);
    }
    let speed = speed(&runner, &originals[0])?;
    let manifest: Value = std::fs::read(model_dir.join("manifest.json"))
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or_default();
    let groups = groups(&images);
    let all = &groups[0];

    // The figures the goals are judged on.
    let mut tiers = vec![DecodeKind::Authorized];
    let mut previews = m.preview_k.clone();
    previews.sort_unstable_by(|a, b| b.cmp(a));
    tiers.extend(previews.iter().map(|&kp| DecodeKind::Preview(kp)));
    let tier_k = |t: DecodeKind| if let DecodeKind::Preview(kp) = t { kp } else { m.k };
    let tier_name = |t: DecodeKind| match t {
        DecodeKind::Preview(kp) => format!("k_p = {kp}"),
        _ => format!("full (k = {})", m.k),
    };
    let tier_psnr = |g: &Group, t: DecodeKind| g.decode_mean(&images, t).0;
    let gaps: Vec<f64> = tiers.windows(2).map(|w| tier_psnr(all, w[0]) - tier_psnr(all, w[1])).collect();
    let quarter = previews.iter().find(|&&kp| u32::from(kp) * 4 == u32::from(m.k)).map(|&kp| DecodeKind::Preview(kp));
    let border = |g: &Group| g.mean(&images, |r| r.seams.border_psnr);
    let interior = |g: &Group| g.mean(&images, |r| r.seams.interior_psnr);
    let grey_mean = all.mean(&images, |r| r.grey_decode_spread);
    let grey_max = images.iter().map(|r| r.grey_decode_spread).fold(f64::NAN, f64::max);
    let grey_input_max = images.iter().map(|r| r.grey_input_spread).fold(f64::NAN, f64::max);
    let sv_ratio = manifest["architecture"]["dense_code_sv_ratio_min"].as_f64();
    let rate_min = manifest["value_distribution"]["position_rate_min"].as_f64();
    let rate_max = manifest["value_distribution"]["position_rate_max"].as_f64();
    let k_over_m = f64::from(m.k) / f64::from(m.dim);
    let public_psnr = |g: &Group| g.decode_mean(&images, DecodeKind::Public).0;

    let mut md = String::new();
    let pixels: f64 = images.iter().map(|r| (r.width * r.height) as f64).sum();
    let _ = writeln!(md, "# Quality report: model `{}`\n", m.name);
    let _ =
        writeln!(md, "Produced by `{command}` (fixed seed {REPORT_SEED}); every figure below comes from that run.\n");
    let _ = writeln!(
        md,
        "Model {}: {}x{} RGB tiles, L = {} code-maps of m = {} dims, k = {} real and k_n = {} fake nonzeros a map \
         (k' = {}), previews k_p = {:?}. Shipped scheme (format v3): fakes and sign flips derived from the owner's \
         master secret and the image, fake positions weighted by activation rate and fake values drawn from the \
         per-position level tables of the manifest (generic ones where it has none), real values' signs flipped; \
         the key is a 32-byte secret. The paper's scheme: σ from k/m, uniform positions, signs kept. Values stored \
         as q8. Whole images, tiled ({} tiles in all).\n",
        runner.id(),
        m.tile_size,
        m.tile_size,
        m.maps,
        m.dim,
        m.k,
        m.k_fake,
        m.k + m.k_fake,
        m.preview_k,
        images.iter().map(|r| r.tiles).sum::<u32>()
    );
    if !scheme.tables_fitted() {
        let _ = writeln!(
            md,
            "This manifest has no fitted level tables (`value_distribution.level_quantiles`; `ambishare-eval \
             fit-fakes` writes them): the fakes' values here come from the generic table.\n"
        );
    }
    if !manifest.is_null() {
        let _ = writeln!(md, "{}\n", training_line(&manifest, m.k));
    }
    let _ = writeln!(
        md,
        "The test images are made by `models/train/prepare_data.py --out DATA` (`--photos DIR` where \
         `fetch_photos.sh` already ran, `--opencv-doc DIR` for an unpacked opencv-doc): DATA/test holds the 10 test \
         photos of fetch_photos.sh (sporco's barbara, kodim23, monarch, sail, tulips; libjxl's flower, hdr_room and \
         three 500px photos), named `{FETCH_PREFIX}*`, and today's 8 (opencv-doc baboon, butterfly, fruits, home, \
         messi5, orange; scikit-learn's china and flower), kept at full size and never trained on (training and \
         validation photos that look like one of them are dropped).\n"
    );
    let _ = writeln!(md, "Held-out test images ({}, never trained on): {}.\n", images.len(), {
        let names: Vec<&str> = images.iter().map(|r| r.name.as_str()).collect();
        names.join(", ")
    });
    if groups.len() > 1 {
        let _ = writeln!(
            md,
            "Means are given for all images and for two groups by file name: names starting with `{FETCH_PREFIX}` \
             (the test photos of fetch_photos.sh) and the others (today's). Each mean is the mean over the \
             images of the per-image figure.\n"
        );
    }

    let _ = writeln!(md, "## Goals\n");
    let _ = writeln!(md, "| goal | measured | met |");
    let _ = writeln!(md, "|---|---|---|");
    // Authorized: every group (both groups where there are two).
    let judged = if groups.len() > 1 { &groups[1..] } else { &groups[..] };
    let authorized = |g: &Group| g.decode_mean(&images, DecodeKind::Authorized).0;
    let _ = writeln!(
        md,
        "| authorized decode ≥ {AUTHORIZED_GOAL_DB:.0} dB mean{} | {} | {} |",
        if groups.len() > 1 { " in both groups" } else { "" },
        by_group(&groups, " dB", authorized),
        yes_no(judged.iter().all(|g| authorized(g) >= AUTHORIZED_GOAL_DB))
    );
    let gap_text: Vec<String> = tiers
        .windows(2)
        .zip(&gaps)
        .map(|(w, gap)| format!("{} → {}: {gap:.2} dB", tier_name(w[0]), tier_name(w[1])))
        .collect();
    let _ = writeln!(
        md,
        "| each preview tier ≥ {TIER_GAP_GOAL_DB:.0} dB below the one above (all images) | {} | {} |",
        if gap_text.is_empty() { "no previews".to_owned() } else { gap_text.join("; ") },
        if gaps.is_empty() { "-" } else { yes_no(gaps.iter().all(|&g| g >= TIER_GAP_GOAL_DB)) }
    );
    match quarter {
        Some(t) => {
            let _ = writeln!(
                md,
                "| preview at k_p = k/4 = {} ≥ {QUARTER_GOAL_DB:.0} dB (all images) | {} | {} |",
                tier_k(t),
                by_group(&groups, " dB", |g| tier_psnr(g, t)),
                yes_no(tier_psnr(all, t) >= QUARTER_GOAL_DB)
            );
        }
        None => {
            let _ = writeln!(md, "| preview at k_p = k/4 ≥ {QUARTER_GOAL_DB:.0} dB | no k/4 preview offered | no |");
        }
    }
    let _ = writeln!(
        md,
        "| tile border ({BORDER_RING} px) PSNR at most {SEAM_GOAL_DB:.0} dB below the interior's (authorized, all \
         images) | border {:.2} dB, interior {:.2} dB: border − interior = {:+.2} dB | {} |",
        border(all),
        interior(all),
        border(all) - interior(all),
        yes_no(border(all) >= interior(all) - SEAM_GOAL_DB)
    );
    let _ = writeln!(
        md,
        "| grey in, grey out: a grey image's authorized decode stays grey | mean colour spread {grey_mean:.2} \
         levels, max over images {grey_max:.2} (input: {grey_input_max:.2}) | - (figure only) |"
    );
    let _ = writeln!(
        md,
        "| each map's dense code full rank m: smallest m-th/1st singular value ratio ≥ {SV_RATIO_GOAL} | {} | {} |",
        recorded(sv_ratio, 4),
        sv_ratio.map_or("not recorded", |v| yes_no(v >= SV_RATIO_GOAL))
    );
    let _ = writeln!(
        md,
        "| activation rates within {RATE_FACTOR_GOAL:.0}x of k/m = {k_over_m:.4} | min {}, max {} | {} |",
        recorded(rate_min, 4),
        recorded(rate_max, 4),
        match (rate_min, rate_max) {
            (Some(lo), Some(hi)) => yes_no(lo >= k_over_m / RATE_FACTOR_GOAL && hi <= k_over_m * RATE_FACTOR_GOAL),
            _ => "not recorded",
        }
    );
    let _ = writeln!(
        md,
        "| public decode (shipped scheme) ≤ {PUBLIC_GOAL_DB:.0} dB mean (all images) | {} | {} |",
        by_group(&groups, " dB", public_psnr),
        yes_no(public_psnr(all) <= PUBLIC_GOAL_DB)
    );

    let _ = writeln!(md, "\n## Mean over the test images\n");
    table_head(
        &mut md,
        std::iter::once("decode".to_owned())
            .chain(groups.iter().map(|g| format!("{}: PSNR (dB) / SSIM", g.label)))
            .chain(["bits per pixel".to_owned()]),
    );
    let true_bpp = images.iter().map(|r| r.true_code_bytes as f64 * 8.0).sum::<f64>() / pixels;
    let public_bpp = images.iter().map(|r| r.public_code_bytes as f64 * 8.0).sum::<f64>() / pixels;
    let jpeg_bpp = images.iter().map(|r| r.jpeg_bytes as f64 * 8.0).sum::<f64>() / pixels;
    let support_bpp = images.iter().map(|r| r.support_bits).sum::<f64>() / pixels;
    for d in &images[0].decodes {
        let rate = match d.kind {
            DecodeKind::Authorized => format!("{true_bpp:.3} (true code)"),
            DecodeKind::Preview(_) => "-".to_owned(),
            DecodeKind::JpegSupport => format!("{support_bpp:.3} (at most)"),
            DecodeKind::Jpeg => format!("{jpeg_bpp:.3}"),
            DecodeKind::BlockDct(_) => "- (values unquantized, positions not counted)".to_owned(),
            DecodeKind::Public | DecodeKind::Guess | DecodeKind::PaperPublic | DecodeKind::PaperGuess => {
                format!("{public_bpp:.3} (public code)")
            }
        };
        let mut row = format!("| {} |", d.name);
        for g in &groups {
            let (p, s) = g.decode_mean(&images, d.kind);
            let _ = write!(row, " {p:.2} / {s:.3} |");
        }
        let _ = writeln!(md, "{row} {rate} |");
    }
    let _ = writeln!(
        md,
        "\nBlock DCT: JPEG's transform (full-range BT.601 YCbCr, an orthonormal 8x8 DCT per channel) keeping in each \
         {t}x{t} tile (tiled as the model is) the largest-magnitude coefficients over all three channels: L·k = {} \
         (the true code's nonzero count) and L·k/4 = {}, values unquantized, no entropy coding.",
        usize::from(m.maps) * usize::from(m.k),
        usize::from(m.maps) * usize::from(m.k) / 4,
        t = m.tile_size
    );

    let _ = writeln!(md, "\n## Preview tiers\n");
    table_head(
        &mut md,
        ["tier".to_owned(), "nonzeros a map".to_owned()]
            .into_iter()
            .chain(groups.iter().map(|g| format!("{}: PSNR (dB)", g.label)))
            .chain(["below the tier above (all)".to_owned()]),
    );
    for (i, &t) in tiers.iter().enumerate() {
        let mut row = format!("| {} | {} |", tier_name(t), tier_k(t));
        for g in &groups {
            let _ = write!(row, " {:.2} |", tier_psnr(g, t));
        }
        let gap = if i == 0 { "-".to_owned() } else { format!("{:.2} dB", gaps[i - 1]) };
        let _ = writeln!(md, "{row} {gap} |");
    }

    let _ = writeln!(md, "\n## Seams\n");
    let _ = writeln!(
        md,
        "PSNR of the authorized decode over the pixels within {BORDER_RING} px of a tile's edge against the other \
         pixels. Tiles are laid out as `ambishare_shared::tiling` cuts them: {t}x{t} squares from the image's \
         top-left, the last row and column padded past the image by edge replication; so the image's top and left \
         edges are tile edges, its right and bottom edges only where the size is a multiple of {t}.\n",
        t = m.tile_size
    );
    let _ = writeln!(md, "| images | border PSNR (dB) | interior PSNR (dB) | border − interior (dB) |");
    let _ = writeln!(md, "|---|---|---|---|");
    for g in &groups {
        let _ =
            writeln!(md, "| {} | {:.2} | {:.2} | {:+.2} |", g.label, border(g), interior(g), border(g) - interior(g));
    }

    let _ = writeln!(md, "\n## Grey in, grey out\n");
    let _ = writeln!(
        md,
        "Each test image's grey version (BT.601 luma, rounded, in all three channels) through the shipped scheme and \
         its authorized decode. Colour spread: the mean over pixels of (|R−G| + |G−B| + |B−R|) / 3, in 8-bit levels.\n"
    );
    let _ = writeln!(md, "| image | mean over images | max over images |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(md, "| grey input | {:.2} | {grey_input_max:.2} |", all.mean(&images, |r| r.grey_input_spread));
    let _ = writeln!(md, "| its authorized decode | {grey_mean:.2} | {grey_max:.2} |");

    let _ = writeln!(md, "\n## Structure (from the manifest)\n");
    let _ = writeln!(md, "| figure | goal | recorded |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(
        md,
        "| architecture.dense_code_sv_ratio_min (each map's dense code full rank m) | ≥ {SV_RATIO_GOAL} | {} |",
        recorded(sv_ratio, 4)
    );
    let _ = writeln!(
        md,
        "| value_distribution.position_rate_min | ≥ k/m / {RATE_FACTOR_GOAL:.0} = {:.4} | {} |",
        k_over_m / RATE_FACTOR_GOAL,
        recorded(rate_min, 4)
    );
    let _ = writeln!(
        md,
        "| value_distribution.position_rate_max | ≤ {RATE_FACTOR_GOAL:.0} k/m = {:.4} | {} |",
        k_over_m * RATE_FACTOR_GOAL,
        recorded(rate_max, 4)
    );

    let _ = writeln!(md, "\n## Speed\n");
    let _ = writeln!(
        md,
        "The model as loaded (ModelRunner, {} execution provider, ONNX Runtime with {} intra-op threads: one per core \
         of the machine that ran the report), batches of {SPEED_BATCH} tiles of the first test image, median of \
         {SPEED_RUNS} runs after a warm-up. Informative only: it depends on the machine.\n",
        runner.execution_provider(),
        speed.threads
    );
    let _ = writeln!(md, "| step | ms per tile |");
    let _ = writeln!(md, "|---|---|");
    let _ = writeln!(md, "| encode (dense code) | {:.2} |", speed.encode_ms);
    let _ = writeln!(md, "| decode | {:.2} |", speed.decode_ms);

    let key_bits: f64 = images.iter().map(|r| r.key_bytes as f64 * 8.0).sum();
    let bound_bits: f64 = images.iter().map(|r| r.key_bound_bits).sum();
    let _ = writeln!(md, "\n## Rates\n");
    let _ = writeln!(md, "| what | bits per pixel |");
    let _ = writeln!(md, "|---|---|");
    let _ = writeln!(md, "| true code, honestly counted (positions bitmap + q8 values + header) | {true_bpp:.3} |");
    let _ = writeln!(md, "| the paper's support-only rate, L·log2 C(m, k) per tile | {support_bpp:.3} |");
    let _ = writeln!(md, "| ambiguated (public) code as stored | {public_bpp:.3} |");
    let _ = writeln!(md, "| JPEG at the true code's bytes (image crate, baseline) | {jpeg_bpp:.3} |");
    let _ = writeln!(
        md,
        "| full key (format v3: a derived secret, {:.0} bytes whatever the image) | {:.5} (against the v2 index key's \
         entropy bound L·(log2 C(k', k) + k) = {:.1} bytes a tile) |",
        key_bits / 8.0 / images.len() as f64,
        key_bits / pixels,
        bound_bits / 8.0 / images.iter().map(|r| r.tiles as f64).sum::<f64>(),
    );
    let reals: f64 = images.iter().map(|r| r.tiles as f64 * m.maps as f64 * m.k as f64).sum();
    let _ = writeln!(
        md,
        "\nReals moved by one q8 level so that their byte cannot pass as a fake: {:.2}% ({} of {:.0}).",
        100.0 * images.iter().map(|r| r.nudged).sum::<usize>() as f64 / reals,
        images.iter().map(|r| r.nudged).sum::<usize>(),
        reals
    );

    let _ = writeln!(md, "\n## Beside the paper\n");
    let _ = writeln!(
        md,
        "The paper (CelebA faces 128x128, L = 20, m = 512, k = 128, k' = 256, trained 40 epochs on 200k images) reports \
         30.75 dB / SSIM 0.95 authorized, 12.00 dB / 0.24 ambiguated, 12.31 dB / 0.25 random guess, and JPEG 22.40 dB / \
         0.76 at 0.1830 bpp beside its support-only rate of 0.1690 bpp. Here the data are a few dozen general photos, not \
         200k aligned faces, and JPEG gets the *honest* byte count of the true code (positions and values), not the \
         support-only rate; at the support-only rate JPEG would have {:.1}× fewer bytes.\n",
        true_bpp / support_bpp
    );

    let _ = writeln!(md, "## Per image\n");
    table_head(
        &mut md,
        ["image", "size", "tiles"]
            .map(str::to_owned)
            .into_iter()
            .chain(images[0].decodes.iter().map(|d| format!("{} PSNR / SSIM", d.name)))
            .chain(["JPEG quality".to_owned()]),
    );
    for r in &images {
        let mut row = format!("| {} | {}x{} | {} |", r.name, r.width, r.height, r.tiles);
        for d in &r.decodes {
            let _ = write!(row, " {:.2} / {:.3} |", d.psnr, d.ssim);
        }
        let _ = writeln!(md, "{row} {} |", r.jpeg_quality);
    }
    let _ = writeln!(
        md,
        "\n| image | border PSNR (dB) | interior PSNR (dB) | border − interior (dB) | colour spread of the grey \
         version's decode |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in &images {
        let (b, i) = (r.seams.border_psnr, r.seams.interior_psnr);
        let _ = writeln!(md, "| {} | {b:.2} | {i:.2} | {:+.2} | {:.2} |", r.name, b - i, r.grey_decode_spread);
    }

    // Picture: originals, authorized, previews, public, random guess, JPEG.
    let rows: Vec<Vec<&image::RgbImage>> = images
        .iter()
        .zip(&originals)
        .map(|(r, o)| std::iter::once(o).chain(r.decodes.iter().map(|d| &d.image)).collect())
        .collect();
    let picture = grid::grid(&rows, 128, 4);
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    grid::save_jpeg(&picture, &out.join("report-grid.jpg"))?;
    let columns: Vec<&str> = images[0].decodes.iter().map(|d| d.name.as_str()).collect();
    let _ = writeln!(md, "\n## Picture\n");
    let _ = writeln!(md, "Columns: original, {}.\n", columns.join(", "));
    let _ = writeln!(md, "![originals and decodes](report-grid.jpg)");
    std::fs::write(out.join("REPORT.md"), &md).map_err(|e| Error::io("writing REPORT.md", e))?;
    Ok(ModelReport { images, markdown: md })
}
