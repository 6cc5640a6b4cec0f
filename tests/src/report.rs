//! The model's quality report: `models/<name>/REPORT.md` and its picture grid.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ambishare_shared::model::ModelRunner;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::quality::{ImageReport, report_image};
use crate::scheme::DerivedScheme;
use crate::{Error, Result, grid, list_images, load_rgb};

/// Seed of the ambiguation and guesses in reports (reproducible; owners use a CSPRNG).
pub const REPORT_SEED: u64 = 2026;

pub struct ModelReport {
    pub images: Vec<ImageReport>,
    pub markdown: String,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
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
         per-position level tables of the manifest, real values' signs flipped; the key is a 32-byte secret. \
         The paper's scheme: σ from k/m, uniform positions, signs kept. Values stored as q8. Whole images, tiled \
         ({} tiles in all).\n",
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
    if let Ok(text) = std::fs::read(model_dir.join("manifest.json")) {
        let manifest: serde_json::Value = serde_json::from_slice(&text).unwrap_or_default();
        let training = &manifest["training"];
        let last = &training["last_epoch"];
        let _ = writeln!(
            md,
            "Training (models/train/, see its README): {} epochs of {}; last validation PSNR {:.2} dB at k, {:.2} \
             at k/2, {:.2} at k/4 (64x64 tiles).\n",
            training["epochs"],
            training["data"].as_str().unwrap_or("?"),
            last["val_psnr_k"].as_f64().unwrap_or(f64::NAN),
            last["val_psnr_k2"].as_f64().unwrap_or(f64::NAN),
            last["val_psnr_k4"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let _ = writeln!(
        md,
        "The test images are made by `models/train/prepare_data.py --opencv-doc DIR --out DATA` (DATA/test: \
         scikit-learn's china and flower, six named opencv-doc photos).\n"
    );
    let _ = writeln!(md, "Held-out test images ({}, never trained on): {}.\n", images.len(), {
        let names: Vec<&str> = images.iter().map(|r| r.name.as_str()).collect();
        names.join(", ")
    });

    let _ = writeln!(md, "## Mean over the test images\n");
    let _ = writeln!(md, "| decode | PSNR (dB) | SSIM | bits per pixel |");
    let _ = writeln!(md, "|---|---|---|---|");
    let true_bpp = images.iter().map(|r| r.true_code_bytes as f64 * 8.0).sum::<f64>() / pixels;
    let public_bpp = images.iter().map(|r| r.public_code_bytes as f64 * 8.0).sum::<f64>() / pixels;
    let jpeg_bpp = images.iter().map(|r| r.jpeg_bytes as f64 * 8.0).sum::<f64>() / pixels;
    let support_bpp = images.iter().map(|r| r.support_bits).sum::<f64>() / pixels;
    for (i, d) in images[0].decodes.iter().enumerate() {
        let rate = if d.name.starts_with("authorized") {
            format!("{true_bpp:.3} (true code)")
        } else if d.name.starts_with("preview") {
            "-".to_owned()
        } else if d.name.starts_with("JPEG at the paper") {
            format!("{support_bpp:.3} (at most)")
        } else if d.name.starts_with("JPEG") {
            format!("{jpeg_bpp:.3}")
        } else {
            format!("{public_bpp:.3} (public code)")
        };
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.3} | {} |",
            d.name,
            mean(images.iter().map(|r| r.decodes[i].psnr)),
            mean(images.iter().map(|r| r.decodes[i].ssim)),
            rate
        );
    }
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
    let mut header = String::from("| image | size | tiles |");
    let mut rule = String::from("|---|---|---|");
    for d in &images[0].decodes {
        let _ = write!(header, " {} PSNR / SSIM |", d.name);
        rule.push_str("---|");
    }
    let _ = writeln!(md, "{header} JPEG quality |\n{rule}---|");
    for r in &images {
        let mut row = format!("| {} | {}x{} | {} |", r.name, r.width, r.height, r.tiles);
        for d in &r.decodes {
            let _ = write!(row, " {:.2} / {:.3} |", d.psnr, d.ssim);
        }
        let _ = writeln!(md, "{row} {} |", r.jpeg_quality);
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
