//! The evaluation: quality against JPEG (and WebP where `cwebp` exists),
//! privacy against attacks, throughput; one run writes `docs/EVALUATION.md`
//! and its plots, and every figure in it comes from that run.

pub mod attacks;
pub mod detector;
pub mod plots;
pub mod subspace;
pub mod throughput;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use ambishare_shared::combinatorics::log2_binomial;
use ambishare_shared::format::code_len;
use ambishare_shared::model::ModelRunner;
use ambishare_shared::pipeline::{code_shape, decode_image, encode_image};
use ambishare_shared::quality::{haarpsi, psnr, ssim};
use ambishare_shared::tiling::image_to_tiles;
use ambishare_shared::{
    AmbiguatedCode, Device, FakeModel, SparseCode, SupportKey, ValueCodec, ambiguate, random_guess,
};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use self::attacks::{CodeStats, Signs};
use self::detector::{Detector, FEATURES, PublicStats, Training, accuracy, features};
use self::plots::{Series, line_plot};
use self::subspace::{ENERGY, MIN_DROP, Orientation, SignSearch, Subspaces};
use crate::quality::{decode_jpeg, jpeg_at_most};
use crate::scheme::DerivedScheme;
use crate::{Error, Result, list_images, list_images_recursive, load_rgb};

/// Most of the attacker's own photos used (taken from each source folder in turn).
const MAX_ATTACKER_PHOTOS: usize = 60;

/// Raynal et al.'s thresholds: below either, a human likely recognises the image.
pub const DSSIM_THRESHOLD: f64 = 0.63;
pub const DHAAR_THRESHOLD: f64 = 0.61;

pub struct EvalOptions {
    pub model_dir: PathBuf,
    /// Held-out images.
    pub images: PathBuf,
    /// The attacker's own images (to train its detector and learn code statistics).
    pub attacker_images: PathBuf,
    /// Where EVALUATION.md and the plots go.
    pub out: PathBuf,
    /// Folder of the node binaries for the throughput run (None: skip that section).
    pub bin_dir: Option<PathBuf>,
    pub seed: u64,
    /// Re-encode consistency iterations.
    pub iterations: usize,
    /// Attacker samples (nonzeros) for the detector.
    pub detector_samples: usize,
    /// Bound on the detector's training time per scheme, seconds.
    pub detector_seconds: f32,
    pub command: String,
}

/// Quality and privacy metrics of one reconstruction.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scores {
    pub psnr: f64,
    pub ssim: f64,
    pub haarpsi: f64,
}

impl Scores {
    pub fn of(original: &RgbImage, image: &RgbImage) -> Result<Self> {
        Ok(Scores { psnr: psnr(original, image)?, ssim: ssim(original, image)?, haarpsi: haarpsi(original, image)? })
    }

    pub fn recognisable(&self) -> bool {
        1.0 - self.ssim < DSSIM_THRESHOLD || 1.0 - self.haarpsi < DHAAR_THRESHOLD
    }
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let v: Vec<f64> = v.into_iter().collect();
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

struct TestImage {
    name: String,
    image: RgbImage,
    code: SparseCode,
}

/// How a scheme makes the public code of one image, and its full key.
pub type Publish = Box<dyn Fn(&SparseCode, &mut ChaCha20Rng) -> Result<(AmbiguatedCode, SupportKey)>>;

/// A way of making the public code: what the privacy section attacks.
pub struct Scheme {
    pub name: String,
    /// The real values' published signs are scrambled: attackers must guess them.
    pub signs_scrambled: bool,
    pub publish: Publish,
}

impl Scheme {
    /// Today's [`ambiguate`] with `fakes`: fresh fakes (and sign flips) at every publication.
    pub fn ambiguating(name: impl Into<String>, k_fake: u16, fakes: FakeModel) -> Self {
        Scheme {
            name: name.into(),
            signs_scrambled: fakes.scramble_signs,
            publish: Box::new(move |code, rng| Ok(ambiguate(code, k_fake, ValueCodec::Q8, &fakes, rng)?)),
        }
    }
}

/// The schemes the privacy section attacks, in the order of its tables; a new
/// scheme is one more entry. The last is the shipped one (format v3).
pub fn schemes(runner: &ModelRunner, v2: &FakeModel, master: [u8; 32]) -> Result<Vec<Scheme>> {
    let m = runner.manifest();
    let derived = DerivedScheme::for_model(runner, master)?;
    Ok(vec![
        Scheme::ambiguating("paper's scheme (σ from k/m, uniform positions, signs kept)", m.k_fake, FakeModel::paper()),
        Scheme::ambiguating(
            "format v2 (σ fitted, weighted positions, signs scrambled, fresh randomness at each publication)",
            m.k_fake,
            v2.clone(),
        ),
        Scheme {
            name: format!(
                "shipped scheme, format v3 (fakes and flips derived from the owner's secret and the image, {})",
                if derived.scale_conditioned() {
                    "fakes' positions and levels conditioned on each map's scale"
                } else {
                    "per-position fake tables"
                }
            ),
            signs_scrambled: true,
            publish: Box::new(move |code, _rng| {
                let d = derived.publish(code)?;
                Ok((d.public, d.support))
            }),
        },
    ])
}

/// What the public code's structure shows without any learning: how real the
/// nonzeros at busy positions are, and whether the smallest level gives reals away.
#[derive(Default)]
struct Structure {
    busy: (usize, usize),
    calm: (usize, usize),
    maps: usize,
    min_all_real: usize,
}

impl Structure {
    fn add(&mut self, public: &AmbiguatedCode, key: &SupportKey, stats: &CodeStats) {
        let n = public.nnz() as usize;
        let values = public.values();
        for map in 0..public.shape().map_count() {
            let reals = key.map(map);
            let is_real = |i: usize| reals.binary_search(&(i as u16)).is_ok();
            for i in 0..n {
                let p = public.positions()[map * n + i] as usize;
                let rate = stats.rate[(map % stats.maps) * stats.dim + p];
                let slot = if rate >= 0.5 { &mut self.busy } else { &mut self.calm };
                slot.0 += usize::from(is_real(i));
                slot.1 += 1;
            }
            let mags: Vec<f32> = values[map * n..(map + 1) * n].iter().map(|v| v.abs()).collect();
            let min = mags.iter().cloned().fold(f32::INFINITY, f32::min);
            self.maps += 1;
            self.min_all_real += usize::from((0..n).filter(|&i| mags[i] <= min * (1.0 + 1e-6)).all(is_real));
        }
    }

    fn busy_real_share(&self) -> f64 {
        100.0 * self.busy.0 as f64 / self.busy.1.max(1) as f64
    }

    fn calm_real_share(&self) -> f64 {
        100.0 * self.calm.0 as f64 / self.calm.1.max(1) as f64
    }

    fn busy_share(&self) -> f64 {
        100.0 * self.busy.1 as f64 / (self.busy.1 + self.calm.1).max(1) as f64
    }

    fn min_all_real_share(&self) -> f64 {
        100.0 * self.min_all_real as f64 / self.maps.max(1) as f64
    }
}

/// The rows of each scheme's privacy table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Attack {
    Authorized,
    PublicDecode,
    Median,
    RandomGuess,
    RandomGuessUsualSigns,
    TopMagnitude,
    ReencodeLast,
    ReencodeBest,
    Detector,
    DetectorSubspace,
    Twice,
    TwiceSubspace,
    Leaked,
    LeakedSubspace,
}

impl Attack {
    /// In table order (`attack as usize` indexes it).
    const ALL: [Attack; 14] = [
        Attack::Authorized,
        Attack::PublicDecode,
        Attack::Median,
        Attack::RandomGuess,
        Attack::RandomGuessUsualSigns,
        Attack::TopMagnitude,
        Attack::ReencodeLast,
        Attack::ReencodeBest,
        Attack::Detector,
        Attack::DetectorSubspace,
        Attack::Twice,
        Attack::TwiceSubspace,
        Attack::Leaked,
        Attack::LeakedSubspace,
    ];

    fn name(self) -> &'static str {
        match self {
            Attack::Authorized => "authorized decode (the key holder)",
            Attack::PublicDecode => "public decode (every nonzero)",
            Attack::Median => "median 5x5 of the public decode",
            Attack::RandomGuess => "random guess (k of k')",
            Attack::RandomGuessUsualSigns => "random guess, signs from the prior",
            Attack::TopMagnitude => "k largest magnitudes",
            Attack::ReencodeLast => "re-encode consistency, final iteration",
            Attack::ReencodeBest => "re-encode consistency, best iteration (oracle pick)",
            Attack::Detector => "gradient-boosted fake detector, its top k",
            Attack::DetectorSubspace => "fake detector's top k, subspace signs",
            Attack::Twice => "same image published twice: intersection",
            Attack::TwiceSubspace => "published twice: intersection, subspace signs",
            Attack::Leaked => "true support (leaked), sign guessed from the prior",
            Attack::LeakedSubspace => "true support (leaked), subspace signs (upper bound)",
        }
    }

    /// What it does, in plain words (a sentence's predicate).
    fn how(self) -> &'static str {
        match self {
            Attack::Authorized => "decodes with the full key",
            Attack::PublicDecode => "decodes every public nonzero, fakes included",
            Attack::Median => "filters the decode of every public nonzero with a 5x5 median",
            Attack::RandomGuess => {
                "keeps k of each map's nonzeros at random, the floor every attack is measured against"
            }
            Attack::RandomGuessUsualSigns => {
                "keeps the random guess's picks and gives each the position's usual sign: what the model's sign \
                 prior alone adds to a pick no better than chance"
            }
            Attack::TopMagnitude => "keeps each map's k largest published magnitudes",
            Attack::ReencodeLast => {
                "decodes a guess, re-encodes it and keeps the k positions the re-encoding activates most, a few times over"
            }
            Attack::ReencodeBest => {
                "is the same, taking the iteration closest to the image (picked with the original, which an attacker lacks)"
            }
            Attack::Detector => {
                "keeps the k nonzeros a gradient-boosted classifier, trained on the attacker's own publications, \
                 finds most likely real"
            }
            Attack::DetectorSubspace => {
                "takes the detector's picks and the signs that bring each map closest to the encoder's subspace"
            }
            Attack::Twice => {
                "intersects two publications of the image: nonzeros at the same position with matching magnitudes \
                 first, then the rest, by the detector's score"
            }
            Attack::TwiceSubspace => "takes the intersection's picks with the subspace's signs",
            Attack::Leaked => {
                "is handed the true positions (an upper bound on any pick) and guesses each sign from the position's usual sign"
            }
            Attack::LeakedSubspace => "is handed the true positions and searches the signs with the subspace",
        }
    }

    fn uses_subspace(self) -> bool {
        matches!(self, Attack::DetectorSubspace | Attack::TwiceSubspace | Attack::LeakedSubspace)
    }
}

/// One attack's result on one image.
#[derive(Clone, Debug)]
struct Outcome {
    scores: Scores,
    support: Option<f64>,
    signs: Option<f64>,
}

fn median(img: &RgbImage, radius: u32) -> RgbImage {
    imageproc::filter::median_filter(img, radius, radius)
}

/// Runs the whole evaluation and writes `out/EVALUATION.md`.
pub fn run(opts: &EvalOptions) -> Result<String> {
    let started = Instant::now();
    let runner = ModelRunner::load(&opts.model_dir, Device::Cpu)?;
    let m = runner.manifest().clone();
    let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(format!("creating {}", opts.out.display()), e))?;

    let mut tests = Vec::new();
    for path in list_images(&opts.images)? {
        let image = load_rgb(&path)?;
        let code = encode_image(&runner, &image)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        tests.push(TestImage { name, image, code });
    }
    if tests.is_empty() {
        return Err(Error::Other(format!("no images in {}", opts.images.display())));
    }
    let pixels: f64 = tests.iter().map(|t| (t.image.width() * t.image.height()) as f64).sum();

    let mut md = String::new();
    let _ = writeln!(md, "# ambishare evaluation\n");
    let _ = writeln!(
        md,
        "Produced by:\n\n```sh\n{}\n```\n\n(`bash deploy/evaluate.sh DATA` prepares the held-out and attacker photos in DATA \
         and runs this command.)\n",
        opts.command
    );
    let _ = writeln!(
        md,
        "Every figure below comes from that one run (seed {}; {} held-out images, {} tiles; model `{}` {}, \
         {}x{} tiles, L = {}, m = {}, k = {}, k_n = {}; 2-core machine, CPU only). Thresholds of recognisability from \
         Raynal et al.: dSSIM = 1 - SSIM below {DSSIM_THRESHOLD} or dHaar = 1 - HaarPSI below {DHAAR_THRESHOLD} \
         means a person likely recognises the image.\n",
        opts.seed,
        tests.len(),
        tests.iter().map(|t| t.code.shape().tiles).sum::<u32>(),
        m.name,
        runner.id(),
        m.tile_size,
        m.tile_size,
        m.maps,
        m.dim,
        m.k,
        m.k_fake
    );

    // ---------------------------------------------------------------- quality
    // Format v2's fakes (for its row of the privacy section) and the shipped format v3.
    let shipped = FakeModel::for_manifest(&m)?;
    let owner_master: [u8; 32] = rng.random();
    let derived = DerivedScheme::for_model(&runner, owner_master)?;
    if !derived.tables_fitted() {
        let _ = writeln!(
            md,
            "**The model's manifest has no fitted fake tables** (`ambishare-eval fit-fakes`): format v3 falls back \
             to generic ones.\n"
        );
    }
    let _ = writeln!(md, "## 1. Quality against JPEG\n");
    // A format v3 key previews only the manifest's tiers.
    let mut k_values: Vec<u16> = m.preview_k.iter().copied().chain([m.k]).collect();
    k_values.sort_unstable();
    k_values.dedup();
    let webp = throughput::has_cwebp();
    let mut ours = Vec::new();
    let mut support_rate = Vec::new();
    let mut jpeg_same = Vec::new();
    let mut webp_same = Vec::new();
    let _ = writeln!(
        md,
        "Authorized decode from the k_p largest real nonzeros (k_p = k is the full key; smaller k_p are preview keys), \
         against the *stored bytes of the true code* with k_p nonzeros (position bitmap + q8 values + header), and \
         JPEG{} at those same bytes (highest quality that fits, per image). The paper counts only the support \
         (L·log2 C(m, k_p) bits a tile), shown beside.\n",
        if webp { " and WebP (cwebp)" } else { "" }
    );
    let _ = writeln!(
        md,
        "| k_p | stored bpp | support-only bpp | ours PSNR / SSIM | JPEG PSNR / SSIM at the same bytes |{}",
        if webp { " WebP PSNR / SSIM |" } else { "" }
    );
    let _ = writeln!(md, "|---|---|---|---|---|{}", if webp { "---|" } else { "" });
    // Format v3 is deterministic: each image's publication, made once for every table below.
    let published: Vec<_> = tests.iter().map(|t| derived.publish(&t.code)).collect::<Result<_>>()?;
    for &kp in &k_values {
        let (mut ps, mut ss, mut bytes, mut sbits) = (Vec::new(), Vec::new(), 0usize, 0f64);
        let (mut jp, mut js, mut wp, mut ws) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (t, d) in tests.iter().zip(&published) {
            let key = if kp == m.k { d.key.clone() } else { d.key.preview(kp)? };
            let (w, h) = t.image.dimensions();
            let decoded = decode_image(&runner, &key.disambiguate(&d.public)?, w, h)?;
            ps.push(psnr(&t.image, &decoded)?);
            ss.push(ssim(&t.image, &decoded)?);
            let size = code_len(t.code.shape(), kp, ValueCodec::Q8);
            bytes += size;
            sbits += t.code.shape().map_count() as f64 * log2_binomial(m.dim as u64, kp as u64);
            let (jpeg, _) = jpeg_at_most(&t.image, size)?;
            let j = decode_jpeg(&jpeg)?;
            jp.push(psnr(&t.image, &j)?);
            js.push(ssim(&t.image, &j)?);
            if webp && let Some(wimg) = throughput::webp_at_most(&t.image, size)? {
                wp.push(psnr(&t.image, &wimg)?);
                ws.push(ssim(&t.image, &wimg)?);
            }
        }
        let bpp = bytes as f64 * 8.0 / pixels;
        ours.push((bpp, mean(ps.clone()), mean(ss.clone())));
        support_rate.push((sbits / pixels, mean(ps.clone()), mean(ss.clone())));
        jpeg_same.push((bpp, mean(jp.clone()), mean(js.clone())));
        if webp {
            webp_same.push((bpp, mean(wp.clone()), mean(ws.clone())));
        }
        let _ = writeln!(
            md,
            "| {kp} | {bpp:.3} | {:.3} | {:.2} / {:.3} | {:.2} / {:.3} |{}",
            sbits / pixels,
            mean(ps),
            mean(ss),
            mean(jp),
            mean(js),
            if webp { format!(" {:.2} / {:.3} |", mean(wp), mean(ws)) } else { String::new() }
        );
    }
    if !webp {
        let _ = writeln!(md, "\nWebP: not measured (no `cwebp` on this machine; `apt-get install webp` adds it).");
    }
    if let (Some(full), Some(jpeg)) = (ours.last(), jpeg_same.last()) {
        let _ = writeln!(
            md,
            "\nAs a codec, ambishare is far behind: at the same stored bytes as the full true code, JPEG is {:.1} dB \
             better ({:.2} against {:.2} dB). What the bytes buy is the split of the image into a public code and a \
             small key, not compression; the model (see its REPORT.md) is also small and briefly trained.",
            jpeg.1 - full.1,
            jpeg.1,
            full.1
        );
    }
    // A JPEG curve for the plots.
    let mut jpeg_curve = Vec::new();
    for q in [5u8, 10, 20, 30, 45, 60, 75, 85, 95] {
        let (mut bits, mut ps, mut ss) = (0usize, Vec::new(), Vec::new());
        for t in &tests {
            let mut buf = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, q).encode_image(&t.image)?;
            let j = decode_jpeg(&buf)?;
            bits += buf.len() * 8;
            ps.push(psnr(&t.image, &j)?);
            ss.push(ssim(&t.image, &j)?);
        }
        jpeg_curve.push((bits as f64 / pixels, mean(ps), mean(ss)));
    }
    let as_series = |name: &str, v: &[(f64, f64, f64)], ssim: bool| Series {
        name: name.to_owned(),
        points: v.iter().map(|p| (p.0, if ssim { p.2 } else { p.1 })).collect(),
    };
    for (metric, file, is_ssim) in [("PSNR (dB)", "rate-psnr.png", false), ("SSIM", "rate-ssim.png", true)] {
        let mut series = vec![
            as_series("ambishare, stored bytes (k/4, k/2, k)", &ours, is_ssim),
            as_series("ambishare at the paper's support-only rate", &support_rate, is_ssim),
            as_series("JPEG (quality 5..95)", &jpeg_curve, is_ssim),
        ];
        if webp {
            series.push(as_series("WebP at the stored bytes", &webp_same, is_ssim));
        }
        line_plot(&opts.out.join(file), &format!("Rate-distortion: {metric}"), "bits per pixel", metric, &series)?;
    }
    let _ = writeln!(md, "\n![PSNR against rate](rate-psnr.png)\n![SSIM against rate](rate-ssim.png)\n");

    // Key sizes.
    let _ = writeln!(md, "### Key size per image\n");
    let preview_k = m.preview_k.iter().copied().min().unwrap_or(m.k / 2);
    let _ = writeln!(
        md,
        "Format v3 (shipped): one derived secret per key. Format v2: the real nonzeros' indices and sign bits \
         (its entropy bound L·(log2 C(k', k) + k) a tile shown beside).\n"
    );
    let _ = writeln!(
        md,
        "| image | tiles | v3 full key bytes | v3 preview key bytes (k_p = {preview_k}) | v2 full key bytes | v2 bound, bytes | \
         v2 preview key bytes | reals moved one level (v3) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let (mut signed_bytes, mut unsigned_bytes, mut all_tiles) = (0usize, 0usize, 0u32);
    let (mut nudged, mut reals) = (0usize, 0usize);
    for (t, d) in tests.iter().zip(&published) {
        let (public, key) = ambiguate(&t.code, m.k_fake, ValueCodec::Q8, &shipped, &mut rng)?;
        let (_, unsigned) = ambiguate(&t.code, m.k_fake, ValueCodec::Q8, &FakeModel::paper(), &mut rng)?;
        let bytes = key.encode().len();
        signed_bytes += bytes;
        unsigned_bytes += unsigned.encode().len();
        all_tiles += t.code.shape().tiles;
        nudged += d.nudged;
        reals += t.code.shape().map_count() * m.k as usize;
        let bound = key.entropy_bits() / 8.0;
        let preview = key.preview(&public, preview_k)?.encode().len();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {bytes} | {bound:.1} | {preview} | {:.2}% |",
            t.name,
            t.code.shape().tiles,
            d.key.encode().len(),
            d.key.preview(preview_k)?.encode().len(),
            100.0 * d.nudged as f64 / (t.code.shape().map_count() * m.k as usize) as f64
        );
    }
    // What moving reals off the fakes' bytes costs: the same keys' decode, moved and not.
    let (mut with_moves, mut without_moves) = (Vec::new(), Vec::new());
    for (t, d) in tests.iter().zip(&published) {
        let (w, h) = t.image.dimensions();
        with_moves.push(psnr(&t.image, &decode_image(&runner, &d.key.disambiguate(&d.public)?, w, h)?)?);
        let unmoved = ambishare_shared::derived::q8_on_real_range(&t.code)?;
        without_moves.push(psnr(&t.image, &decode_image(&runner, &unmoved, w, h)?)?);
    }
    let _ = writeln!(
        md,
        "\nFormat v3 moves a real by one q8 level where its byte would pass as a fake: {:.2}% of reals ({nudged} of \
         {reals}). Cost: {:.3} dB mean PSNR ({:.2} dB with the moves, {:.2} dB with the same q8 code unmoved).\n",
        100.0 * nudged as f64 / reals.max(1) as f64,
        mean(without_moves.clone()) - mean(with_moves.clone()),
        mean(with_moves),
        mean(without_moves),
    );

    // ---------------------------------------------------------------- privacy
    let _ = writeln!(md, "\n## 2. Privacy: what someone without a key recovers\n");
    let stats_started = Instant::now();
    // The attacker's knowledge: codes of its own images under the public encoder.
    let mut attacker_images = Vec::new();
    // Bounded work: the first photos of each source in turn.
    for path in list_images_recursive(&opts.attacker_images)?.into_iter().take(MAX_ATTACKER_PHOTOS) {
        let mut img = load_rgb(&path)?;
        // Bounded work: at most 384x384 of each image.
        if img.width() > 384 || img.height() > 384 {
            img = image::imageops::crop_imm(&img, 0, 0, img.width().min(384), img.height().min(384)).to_image();
        }
        attacker_images.push(img);
    }
    // Dense codes (before top-k) for the subspaces, and the true codes.
    let (mut attacker_dense, mut attacker_codes) = (Vec::new(), Vec::new());
    for img in &attacker_images {
        let shape = code_shape(&runner, img.width(), img.height())?;
        let (tiles, grid) = image_to_tiles(img, m.tile_size)?;
        let dense = runner.encode_tiles(&tiles, grid.count())?;
        attacker_codes.push(SparseCode::top_k(&dense, shape, m.k)?);
        attacker_dense.extend_from_slice(&dense);
    }
    let stats = CodeStats::from_codes(attacker_codes.iter(), m.maps as usize, m.dim as usize);
    let mut subspaces = Subspaces::learn(&attacker_dense, m.maps as usize, m.dim as usize)?;
    drop(attacker_dense);
    let (orient_prior, orient_fisher, orient_joint) =
        subspaces.choose_orientation(attacker_codes.iter(), &stats, &mut rng);
    let search = SignSearch::default();
    let _ = writeln!(
        md,
        "The attacker knows the model (it is public) and has its own images: {} photos of the training folder \
         (never the test images), from which it learns each position's activation rate, usual sign and usual \
         magnitude, each code-map's subspace, and trains its fake detector on its own publications under each \
         scheme ({:.0} s for the statistics and subspaces).\n",
        attacker_images.len(),
        stats_started.elapsed().as_secs_f64()
    );
    let (rank_lo, rank_hi) = (subspaces.ranks.iter().min().copied(), subspaces.ranks.iter().max().copied());
    let drop_lo = subspaces.drops.iter().copied().fold(f64::INFINITY, f64::min);
    let drop_hi = subspaces.drops.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        md,
        "**The code's subspaces.** From the dense codes (before top-k) of {} tiles, the attacker computes each \
         map's {m2}×{m2} second-moment matrix and its eigendecomposition, and cuts at the largest drop of the \
         singular values: dimension {} of m = {m2} (σ_d / σ_(d+1) = {:.3e} .. {:.3e} across the {} maps; a drop \
         below {MIN_DROP} would mean no subspace, and the dimension keeping {:.0}% of the energy). Given a \
         support and the published magnitudes, it then searches the signs that bring the sparse vector closest \
         to the subspace (greedy sign flips from the prior's signs and {} random starts, polished with a penalty \
         on off-support values above the map's smallest published magnitude). x and -x lie in the subspace \
         alike: it orients each map {}, the rule right most often on the last third of its own codes (right for \
         {:.1}% of their maps by the positions' usual signs, {:.1}% by the side of each map's mean in its subspace, \
         {:.1}% with all maps of a tile at once under a Gaussian model of their coordinates fitted on the first two \
         thirds).\n",
        subspaces.samples,
        match (rank_lo, rank_hi) {
            (Some(a), Some(b)) if a == b => format!("{a}"),
            (Some(a), Some(b)) => format!("{a} to {b}"),
            _ => "-".into(),
        },
        drop_lo,
        drop_hi,
        subspaces.maps,
        ENERGY * 100.0,
        search.restarts,
        match subspaces.orientation {
            Orientation::Prior => "by the positions' usual signs",
            Orientation::Fisher => "by the side of the codes' mean in the subspace (Fisher's discriminant)",
            Orientation::Joint => "together with the other maps of its tile",
        },
        100.0 * orient_prior,
        100.0 * orient_fisher,
        100.0 * orient_joint,
        m2 = m.dim,
    );

    let schemes = schemes(&runner, &shipped, owner_master)?;
    let mut findings = Vec::new();
    // How often a decode at chance (random guess) crosses the thresholds: the metrics' floor.
    let mut chance_hits: Vec<(&str, usize, usize)> = Vec::new();
    for scheme in &schemes {
        let t0 = Instant::now();
        let signs_scrambled = scheme.signs_scrambled;
        let attacker_signs = if signs_scrambled { Signs::Prior } else { Signs::Published };
        // Train the detector on the attacker's own publications (its own randomness).
        let publications: Vec<(AmbiguatedCode, SupportKey)> =
            attacker_codes.iter().map(|code| (scheme.publish)(code, &mut rng)).collect::<Result<_>>()?;
        let public_stats =
            PublicStats::from_publications(publications.iter().map(|(p, k)| (p, k)), m.maps as usize, m.dim as usize);
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for (img, (public, key)) in attacker_images.iter().zip(&publications) {
            let reenc = reencode_dense(&runner, public, img.width(), img.height())?;
            rows.extend(features(public, &stats, &public_stats, &reenc));
            labels.extend(real_labels(public, key));
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.shuffle(&mut rng);
        order.truncate(opts.detector_samples);
        let rows: Vec<[f32; FEATURES]> = order.iter().map(|&i| rows[i]).collect();
        let labels: Vec<bool> = order.iter().map(|&i| labels[i]).collect();
        let trained = Instant::now();
        let training = Training { timeout_s: opts.detector_seconds, seed: opts.seed, ..Training::default() };
        let detector = Detector::train(&rows, &labels, &training)?;
        let train_s = trained.elapsed().as_secs_f64();
        let train_acc = accuracy(&detector.predict(&rows), &labels);

        let mut per_attack: Vec<Vec<Outcome>> = vec![Vec::new(); Attack::ALL.len()];
        let mut structure = Structure::default();
        let mut identical = 0usize;
        let (mut correct, mut total) = (0usize, 0usize);
        let (mut common, mut agreeing, mut twice_maps) = (0usize, 0usize, 0usize);
        for t in &tests {
            let (w, h) = t.image.dimensions();
            let (public, key) = (scheme.publish)(&t.code, &mut rng)?;
            structure.add(&public, &key, &stats);
            // The same image published a second time (another dataset, a re-publish).
            let (again, _) = (scheme.publish)(&t.code, &mut rng)?;
            identical += usize::from(again.encode() == public.encode());
            let truth = key.disambiguate(&public)?;
            let floors = attacks::map_floors(&public);
            let dec = |code: &SparseCode| decode_image(&runner, code, w, h);
            let score = |img: &RgbImage| Scores::of(&t.image, img);
            let with = |code: &SparseCode, img: &RgbImage| -> Result<Outcome> {
                let (s, g) = attacks::support_and_signs(code, &truth);
                Ok(Outcome { scores: score(img)?, support: Some(s), signs: Some(g) })
            };
            let mut push = |attack: Attack, outcome: Outcome| per_attack[attack as usize].push(outcome);
            let authorized = dec(&truth)?;
            push(Attack::Authorized, Outcome { scores: score(&authorized)?, support: Some(1.0), signs: Some(1.0) });
            let public_img = dec(&public.to_sparse()?)?;
            push(Attack::PublicDecode, Outcome { scores: score(&public_img)?, support: None, signs: None });
            push(Attack::Median, Outcome { scores: score(&median(&public_img, 2))?, support: None, signs: None });
            let guess = random_guess(&public, m.k, &mut rng)?;
            push(Attack::RandomGuess, with(&guess, &dec(&guess)?)?);
            let guess = with_prior_signs(&guess, &stats, signs_scrambled)?;
            push(Attack::RandomGuessUsualSigns, with(&guess, &dec(&guess)?)?);
            let topk = attacks::top_k_magnitude(&public, m.k, attacker_signs, &stats)?;
            push(Attack::TopMagnitude, with(&topk, &dec(&topk)?)?);
            let iterations =
                attacks::reencode_consistency(&runner, &public, m.k, w, h, opts.iterations, signs_scrambled)?;
            let mut best: Option<Outcome> = None;
            let mut last = None;
            for code in &iterations {
                let o = with(code, &dec(code)?)?;
                if best.as_ref().is_none_or(|b| o.scores.psnr > b.scores.psnr) {
                    best = Some(o.clone());
                }
                last = Some(o);
            }
            if let (Some(last), Some(best)) = (last, best) {
                push(Attack::ReencodeLast, last);
                push(Attack::ReencodeBest, best);
            }
            // Signs from the subspaces where they are scrambled (published ones are the truth otherwise).
            let mut subspace_signs = |code: SparseCode| -> Result<SparseCode> {
                if signs_scrambled {
                    subspaces.recover_signs(&code, &floors, &stats, &search, &mut rng)
                } else {
                    Ok(code)
                }
            };
            // The detector on this image's public code.
            let reenc = reencode_dense(&runner, &public, w, h)?;
            let probs = detector.predict(&features(&public, &stats, &public_stats, &reenc));
            let truth_labels = real_labels(&public, &key);
            total += truth_labels.len();
            correct += probs.iter().zip(&truth_labels).filter(|(p, y)| (**p >= 0.5) == **y).count();
            let n = public.nnz() as usize;
            let chosen = attacks::top_by_score(public.shape(), n, m.k as usize, |map, i| probs[map * n + i]);
            let learned = attacks::choose(&public, &chosen, attacker_signs, &stats)?;
            push(Attack::Detector, with(&learned, &dec(&learned)?)?);
            let learned = subspace_signs(learned)?;
            push(Attack::DetectorSubspace, with(&learned, &dec(&learned)?)?);
            // (a) Published twice: intersect, the detector's score breaking ties.
            let cut = attacks::intersect(&public, &again, m.k as usize, |map, i| probs[map * n + i])?;
            (common, agreeing, twice_maps) =
                (common + cut.common, agreeing + cut.agreeing, twice_maps + public.shape().map_count());
            let twice = attacks::choose(&public, &cut.picks, attacker_signs, &stats)?;
            push(Attack::Twice, with(&twice, &dec(&twice)?)?);
            let twice = subspace_signs(twice)?;
            push(Attack::TwiceSubspace, with(&twice, &dec(&twice)?)?);
            // Upper bounds: the support leaked entirely, signs still unknown (scrambled) or known.
            let leaked = with_prior_signs(&truth, &stats, signs_scrambled)?;
            push(Attack::Leaked, with(&leaked, &dec(&leaked)?)?);
            let leaked = subspace_signs(truth.clone())?;
            push(Attack::LeakedSubspace, with(&leaked, &dec(&leaked)?)?);
        }

        let floor = per_attack[Attack::RandomGuess as usize].iter().filter(|o| o.scores.recognisable()).count();
        let _ = writeln!(md, "### {}\n", scheme.name);
        let _ = writeln!(
            md,
            "Structure of the public codes of the held-out images: published twice, {identical} of {} images give \
             byte-identical codes. P(real | published) is {:.1}% at positions active in at least half the \
             attacker's tiles ({:.1}% of published nonzeros) and {:.1}% elsewhere; in {:.1}% of maps every \
             nonzero at the smallest published level is real (1/2 is what fakes drawn like reals give).\n",
            tests.len(),
            structure.busy_real_share(),
            structure.busy_share(),
            structure.calm_real_share(),
            structure.min_all_real_share(),
        );
        let _ = writeln!(
            md,
            "Gradient-boosted detector (perpetual, {} trees, {:.0} s to train): trained on {} nonzeros of the \
             attacker's publications (accuracy {:.1}% there), accuracy on the held-out codes {:.1}% (chance: \
             {:.1}%). Published twice, {:.1} of a map's {} nonzeros sit at a position of both publications, {:.1} \
             of them with matching magnitudes. Its features by share of split gain: {}. {:.0} s for this scheme.\n",
            detector.trees(),
            train_s,
            rows.len(),
            train_acc * 100.0,
            correct as f64 / total.max(1) as f64 * 100.0,
            100.0 * (m.k_fake as f64).max(m.k as f64) / (m.k + m.k_fake) as f64,
            common as f64 / twice_maps.max(1) as f64,
            m.k + m.k_fake,
            agreeing as f64 / twice_maps.max(1) as f64,
            detector
                .importance()
                .iter()
                .take(5)
                .map(|(name, share)| format!("{name} {:.0}%", share * 100.0))
                .collect::<Vec<_>>()
                .join(", "),
            t0.elapsed().as_secs_f64()
        );
        let _ = writeln!(
            md,
            "| what | PSNR (dB) | SSIM | dSSIM | HaarPSI | dHaar | true positions among its picks | signs right | \
             recognisable | random guess |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
        let mut sentences = Vec::new();
        for (attack, outcomes) in Attack::ALL.iter().zip(&per_attack) {
            let s = |f: fn(&Outcome) -> f64| mean(outcomes.iter().map(f));
            let recognised = outcomes.iter().filter(|o| o.scores.recognisable()).count();
            let pct = |v: Vec<f64>| if v.is_empty() { "-".to_owned() } else { format!("{:.1}%", mean(v) * 100.0) };
            let support = pct(outcomes.iter().filter_map(|o| o.support).collect());
            let signs = pct(outcomes.iter().filter_map(|o| o.signs).collect());
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {support} | {signs} | {recognised} of {} | {floor} of {} |",
                attack.name(),
                s(|o| o.scores.psnr),
                s(|o| o.scores.ssim),
                1.0 - s(|o| o.scores.ssim),
                s(|o| o.scores.haarpsi),
                1.0 - s(|o| o.scores.haarpsi),
                outcomes.len(),
                outcomes.len()
            );
            if *attack != Attack::Authorized {
                let picks = if support == "-" {
                    String::new()
                } else {
                    format!("{support} of its picks are real, {signs} of their signs right; ")
                };
                let verdict = match recognised.cmp(&floor) {
                    std::cmp::Ordering::Greater => "more than chance",
                    std::cmp::Ordering::Equal => "no more than chance",
                    std::cmp::Ordering::Less => "fewer than chance",
                };
                let published = if attack.uses_subspace() && !signs_scrambled {
                    " (the signs are published here, so it keeps them)"
                } else {
                    ""
                };
                sentences.push(format!(
                    "- *{}* {}{published}: {picks}recognisable for {recognised} of {} images against {floor} by \
                     random guess, {verdict}.",
                    attack.name(),
                    attack.how(),
                    outcomes.len()
                ));
            }
            if *attack == Attack::RandomGuess {
                chance_hits.push((&scheme.name, recognised, outcomes.len()));
            }
            if *attack != Attack::Authorized && recognised > floor {
                findings.push(format!(
                    "- **{}**: *{}* recovers a recognisable image for {} of {} held-out images, against {floor} by \
                     random guess (mean dSSIM {:.2}, dHaar {:.2}).",
                    scheme.name,
                    attack.name(),
                    recognised,
                    outcomes.len(),
                    1.0 - s(|o| o.scores.ssim),
                    1.0 - s(|o| o.scores.haarpsi)
                ));
            }
        }
        let _ = writeln!(md);
        for sentence in &sentences {
            let _ = writeln!(md, "{sentence}");
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(md, "### Findings\n");
    for (scheme, hits, of) in &chance_hits {
        if *hits > 0 {
            let _ = writeln!(
                md,
                "Under the {scheme}, a random guess (chance: half the picks real, half the signs right where they \
                 are scrambled) already crosses a threshold on {hits} of {of} images: there the thresholds flag \
                 decodes that carry no more than chance, and an attack only counts where it does better than that.\n"
            );
        }
    }
    if findings.is_empty() {
        let _ = writeln!(md, "No attack recognised more images than the random guess under any scheme.\n");
    } else {
        let _ = writeln!(md, "Attacks that recognise more images than the random guess does:\n");
        for f in &findings {
            let _ = writeln!(md, "{f}");
        }
        let _ = writeln!(
            md,
            "\nScrambling the real values' signs costs one secret bit per real value in the key (k bits a map; \
             here the key grows from {:.0} to {:.0} bytes a tile). Where the signs come back from the code's own \
             subspaces, or the support from a second publication of the same image, that bit protects nothing.\n",
            unsigned_bytes as f64 / all_tiles.max(1) as f64,
            signed_bytes as f64 / all_tiles.max(1) as f64
        );
    }

    // ---------------------------------------------------------------- throughput
    let _ = writeln!(md, "## 3. Throughput and memory (2 cores, one run)\n");
    let rows = throughput::in_process(&runner, &tests.iter().map(|t| &t.image).collect::<Vec<_>>(), &derived)?;
    let _ = writeln!(md, "| what | figure |\n|---|---|");
    for (what, figure) in &rows {
        let _ = writeln!(md, "| {what} | {figure} |");
    }
    match &opts.bin_dir {
        Some(bin) => {
            let rows = throughput::with_nodes(bin, &opts.model_dir, &opts.images)?;
            for (what, figure) in &rows {
                let _ = writeln!(md, "| {what} | {figure} |");
            }
        }
        None => {
            let _ = writeln!(md, "\n(Node throughput and memory not measured: no --bin-dir.)");
        }
    }
    let _ = writeln!(
        md,
        "\nGPU: not measured (this run had no GPU; the CUDA execution provider is built with `--features cuda`)."
    );
    let _ = writeln!(md, "\nTotal time of this run: {:.0} s.", started.elapsed().as_secs_f64());
    std::fs::write(opts.out.join("EVALUATION.md"), &md).map_err(|e| Error::io("writing EVALUATION.md", e))?;
    Ok(md)
}

/// Per public nonzero, in order: whether it is real.
fn real_labels(public: &AmbiguatedCode, key: &SupportKey) -> Vec<bool> {
    let n = public.nnz();
    let mut out = Vec::with_capacity(public.positions().len());
    for map in 0..public.shape().map_count() {
        let reals = key.map(map);
        out.extend((0..n).map(|i| reals.binary_search(&i).is_ok()));
    }
    out
}

/// The dense re-encoding of the public decode (tiles × L × m).
fn reencode_dense(runner: &ModelRunner, public: &AmbiguatedCode, w: u32, h: u32) -> Result<Vec<f32>> {
    let img = decode_image(runner, &public.to_sparse()?, w, h)?;
    let (tiles, grid) = ambishare_shared::tiling::image_to_tiles(&img, runner.manifest().tile_size)?;
    Ok(runner.encode_tiles(&tiles, grid.count())?)
}

/// A code's picks with signs from the prior when they are scrambled (published signs otherwise are the truth).
fn with_prior_signs(truth: &SparseCode, stats: &CodeStats, scrambled: bool) -> Result<SparseCode> {
    if !scrambled {
        return Ok(truth.clone());
    }
    let mut values = Vec::with_capacity(truth.values().len());
    for map in 0..truth.shape().map_count() {
        let (pos, val) = truth.map(map);
        values.extend(pos.iter().zip(val).map(|(&p, v)| v.abs() * stats.prior_sign(map, p)));
    }
    Ok(SparseCode::from_parts(truth.shape(), truth.nnz(), truth.positions().to_vec(), values)?)
}
