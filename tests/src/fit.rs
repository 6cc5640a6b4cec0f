//! `ambishare-eval fit-fakes`: fits the fakes' tables of a model (activation
//! rate and q8 level quantiles per position) on training photos, and writes
//! them into its manifest. The model id changes with the manifest.

use std::fmt::Write as _;
use std::path::Path;

use ambishare_shared::model::{MANIFEST_FILE, ModelRunner};
use ambishare_shared::pipeline::encode_image;
use ambishare_shared::{Device, TableFitter};

use crate::{Error, Result, list_images_recursive, load_rgb};

/// Fits on at most `max_tiles` tiles of the images under `images` (searched
/// recursively, at most `max_side` pixels a side each, centre crop) and
/// rewrites `<model>/manifest.json`. Returns a summary.
pub fn fit_fakes(model_dir: &Path, images: &Path, max_tiles: u64, max_side: u32) -> Result<String> {
    let runner = ModelRunner::load(model_dir, Device::Cpu)?;
    let m = runner.manifest().clone();
    let mut fitter = TableFitter::new(m.maps, m.dim);
    let paths = list_images_recursive(images)?;
    if paths.is_empty() {
        return Err(Error::Other(format!("no images in {}", images.display())));
    }
    let bar = indicatif::ProgressBar::new(max_tiles).with_message("fitting the fakes' tables");
    for path in paths {
        if fitter.tiles() >= max_tiles {
            break;
        }
        let mut img = load_rgb(&path)?;
        if img.width() > max_side || img.height() > max_side {
            let (w, h) = (img.width().min(max_side), img.height().min(max_side));
            img = image::imageops::crop_imm(&img, (img.width() - w) / 2, (img.height() - h) / 2, w, h).to_image();
        }
        let code = encode_image(&runner, &img)?;
        fitter.add(&code)?;
        bar.set_position(fitter.tiles().min(max_tiles));
    }
    bar.finish_and_clear();
    let fitted = fitter.finish();
    let path = model_dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let mut manifest: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
    fitted.write_into(&mut manifest)?;
    let out = serde_json::to_string_pretty(&manifest).map_err(|e| Error::Other(e.to_string()))? + "\n";
    std::fs::write(&path, out).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    let (min, max) = fitted.rates.iter().fold((f32::INFINITY, 0f32), |(a, b), &r| (a.min(r), b.max(r)));
    let busy = fitted.rates.iter().filter(|&&r| r >= 0.5).count();
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "fitted on {} tiles: activation rates {min:.4} to {max:.4} (k/m = {:.4}); {busy} of {} positions active in at \
         least half the tiles (no fake can hide those); wrote {}",
        fitted.tiles,
        m.k as f32 / m.dim as f32,
        fitted.rates.len(),
        path.display()
    );
    Ok(summary)
}
