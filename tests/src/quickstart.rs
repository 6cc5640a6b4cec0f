//! The quickstart's picture and table: decodes of each published sample,
//! one set per party (full, preview) and the public, against the originals.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ambishare_shared::quality::{psnr, ssim};

use crate::{Error, Result, grid, load_rgb};

/// One set of decodes: a name and the folder of `<entry-id>.png` files.
pub struct DecodeSet {
    pub name: String,
    pub dir: PathBuf,
}

/// Reads `entry_id<TAB>path` lines (as `ambishare-owner publish --ids-out` writes them).
pub fn read_ids(path: &Path) -> Result<Vec<(String, PathBuf)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, file) = l.split_once('\t').ok_or_else(|| Error::Other(format!("bad line in ids file: {l:?}")))?;
            Ok((id.to_owned(), PathBuf::from(file)))
        })
        .collect()
}

/// Writes `out/grid.png` (rows: samples; columns: original, then each set;
/// a missing decode is a grey cell) and returns a markdown table of PSNR/SSIM;
/// an error, after writing both, when a set lacks a decode.
pub fn quickstart_grid(ids: &[(String, PathBuf)], sets: &[DecodeSet], out: &Path) -> Result<String> {
    let mut originals = Vec::new();
    let mut decodes: Vec<Vec<Option<image::RgbImage>>> = Vec::new();
    for (id, file) in ids {
        let original = load_rgb(file)?;
        let row = sets
            .iter()
            .map(|set| {
                let path = set.dir.join(format!("{id}.png"));
                path.exists().then(|| load_rgb(&path)).transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        originals.push(original);
        decodes.push(row);
    }
    let mut md = String::new();
    let _ = write!(md, "| image |");
    for set in sets {
        let _ = write!(md, " {} PSNR (dB) / SSIM |", set.name);
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "|---|{}", "---|".repeat(sets.len()));
    let mut sums = vec![(0.0, 0.0, 0usize); sets.len()];
    for ((id, file), (original, row)) in ids.iter().zip(originals.iter().zip(&decodes)) {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| id.clone());
        let _ = write!(md, "| {name} |");
        for (i, decoded) in row.iter().enumerate() {
            match decoded {
                Some(img) if img.dimensions() == original.dimensions() => {
                    let (p, s) = (psnr(original, img)?, ssim(original, img)?);
                    sums[i] = (sums[i].0 + p, sums[i].1 + s, sums[i].2 + 1);
                    let _ = write!(md, " {p:.2} / {s:.3} |");
                }
                Some(_) => {
                    let _ = write!(md, " wrong size |");
                }
                None => {
                    let _ = write!(md, " no image |");
                }
            }
        }
        let _ = writeln!(md);
    }
    let _ = write!(md, "| **mean** |");
    for (p, s, n) in &sums {
        if *n == 0 {
            let _ = write!(md, " - |");
        } else {
            let _ = write!(md, " **{:.2} / {:.3}** |", p / *n as f64, s / *n as f64);
        }
    }
    let _ = writeln!(md);

    let grey = image::RgbImage::from_pixel(64, 64, image::Rgb([128, 128, 128]));
    let rows: Vec<Vec<&image::RgbImage>> = originals
        .iter()
        .zip(&decodes)
        .map(|(o, row)| std::iter::once(o).chain(row.iter().map(|d| d.as_ref().unwrap_or(&grey))).collect())
        .collect();
    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    grid::grid(&rows, 180, 6).save(out.join("grid.png"))?;
    let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    let text = format!("Columns of grid.png: original, {}.\n\n{md}", names.join(", "));
    std::fs::write(out.join("table.md"), &text).map_err(|e| Error::io("writing table.md", e))?;
    // Written either way (to look at); a set with a missing decode is a failed run.
    let incomplete: Vec<String> = sets
        .iter()
        .zip(&sums)
        .filter(|(_, (_, _, n))| *n < ids.len())
        .map(|(set, (_, _, n))| format!("{}: {n} of {} images", set.name, ids.len()))
        .collect();
    if !incomplete.is_empty() {
        return Err(Error::Other(format!("decodes missing ({}); see {}", incomplete.join(", "), out.display())));
    }
    Ok(text)
}
