//! Small generated images for the reliability tools: deterministic from a
//! seed, each different from every other (so each is its own source).

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// Writes `count` PNG images of `size`x`size` pixels into `dir` (`img-00000.png`
/// ...), then `copies` files with the same bytes as some of them
/// (`copy-00000.png` ...). Returns the distinct images' paths.
pub fn write_images(dir: &Path, count: usize, size: u32, copies: usize, seed: u64) -> Result<Vec<PathBuf>> {
    if count == 0 || size == 0 {
        return Err(Error::Other("give at least one image of at least one pixel".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut paths = Vec::with_capacity(count);
    for i in 0..count {
        let image = image(size, seed, i as u64);
        let path = dir.join(format!("img-{i:05}.png"));
        image.save(&path)?;
        paths.push(path);
    }
    for c in 0..copies {
        let from = &paths[(c * 7 + 3) % count];
        let to = dir.join(format!("copy-{c:05}.png"));
        std::fs::copy(from, &to).map_err(|e| Error::io(format!("writing {}", to.display()), e))?;
    }
    Ok(paths)
}

/// A smooth gradient with noise, its index written into the first pixels.
fn image(size: u32, seed: u64, index: u64) -> RgbImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let base: [f32; 3] = [rng.random_range(0.0..255.0), rng.random_range(0.0..255.0), rng.random_range(0.0..255.0)];
    let slope: [f32; 3] = [rng.random_range(-4.0..4.0), rng.random_range(-4.0..4.0), rng.random_range(-4.0..4.0)];
    let mut img = RgbImage::from_fn(size, size, |x, y| {
        let t = (x + y) as f32;
        let px = |c: usize, noise: f32| (base[c] + slope[c] * t + noise).clamp(0.0, 255.0) as u8;
        Rgb([
            px(0, rng.random_range(-12.0..12.0)),
            px(1, rng.random_range(-12.0..12.0)),
            px(2, rng.random_range(-12.0..12.0)),
        ])
    });
    // Distinct bytes whatever the noise: the index in the first pixels.
    for (k, byte) in index.to_le_bytes().chunks(3).enumerate() {
        let mut rgb = [0u8; 3];
        rgb[..byte.len()].copy_from_slice(byte);
        let k = k as u32;
        if k < size * size {
            img.put_pixel(k % size, k / size, Rgb(rgb));
        }
    }
    img
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn images_are_distinct_and_copies_are_equal() {
        let dir = tempfile::tempdir().unwrap();
        let paths = write_images(dir.path(), 20, 16, 3, 7).unwrap();
        let bytes: std::collections::HashSet<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
        assert_eq!(bytes.len(), 20);
        for c in 0..3 {
            let copy = std::fs::read(dir.path().join(format!("copy-{c:05}.png"))).unwrap();
            assert!(bytes.contains(&copy));
        }
        // Deterministic.
        let again = tempfile::tempdir().unwrap();
        let paths2 = write_images(again.path(), 20, 16, 0, 7).unwrap();
        assert_eq!(std::fs::read(&paths[5]).unwrap(), std::fs::read(&paths2[5]).unwrap());
    }
}
