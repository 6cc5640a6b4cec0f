//! The block-DCT baseline of the model report: JPEG's transform (an 8x8
//! orthonormal DCT-II of each channel in full-range BT.601 YCbCr) keeping, in
//! each tile, the largest-magnitude coefficients over all three channels
//! together, values unquantized. At the model's nonzero count (L·k a tile) it
//! says what a fixed transform does with the same budget.

use std::f64::consts::PI;

use ambishare_shared::tiling::{image_to_tiles, tiles_to_image};
use image::RgbImage;

use crate::{Error, Result};

/// Side of a DCT block.
const BLOCK: usize = 8;
/// Colour channels of a tile.
const CHANNELS: usize = 3;
/// JPEG's level shift: samples and chroma are centred on it before the DCT.
const MID: f64 = 128.0;
/// BT.601 luma weights of red and blue (green is the rest).
const KR: f64 = 0.299;
const KB: f64 = 0.114;
const KG: f64 = 1.0 - KR - KB;

/// The orthonormal 8-point DCT-II: row `u` is basis function `u`.
fn dct_matrix() -> [[f64; BLOCK]; BLOCK] {
    let mut c = [[0.0; BLOCK]; BLOCK];
    for (u, row) in c.iter_mut().enumerate() {
        let scale = if u == 0 { (1.0 / BLOCK as f64).sqrt() } else { (2.0 / BLOCK as f64).sqrt() };
        for (x, v) in row.iter_mut().enumerate() {
            *v = scale * ((2 * x + 1) as f64 * u as f64 * PI / (2 * BLOCK) as f64).cos();
        }
    }
    c
}

/// Transforms every 8x8 block of a `side`×`side` plane in place: `C·X·Cᵀ`
/// forward, `Cᵀ·X·C` inverse.
fn transform_blocks(plane: &mut [f64], side: usize, c: &[[f64; BLOCK]; BLOCK], inverse: bool) {
    // Entry (i, j) of C, or of Cᵀ for the inverse.
    let at = |i: usize, j: usize| if inverse { c[j][i] } else { c[i][j] };
    for by in (0..side).step_by(BLOCK) {
        for bx in (0..side).step_by(BLOCK) {
            let mut block = [[0.0; BLOCK]; BLOCK];
            for (y, row) in block.iter_mut().enumerate() {
                row.copy_from_slice(&plane[(by + y) * side + bx..][..BLOCK]);
            }
            // Rows first (X·Cᵀ), then columns (C·(X·Cᵀ)).
            let mut rows = [[0.0; BLOCK]; BLOCK];
            for (row, x_row) in rows.iter_mut().zip(&block) {
                for (u, r) in row.iter_mut().enumerate() {
                    *r = x_row.iter().enumerate().map(|(x, &v)| v * at(u, x)).sum();
                }
            }
            for v in 0..BLOCK {
                let out = &mut plane[(by + v) * side + bx..][..BLOCK];
                for (u, o) in out.iter_mut().enumerate() {
                    *o = rows.iter().enumerate().map(|(y, row)| at(v, y) * row[u]).sum();
                }
            }
        }
    }
}

/// The three channel planes of a tile, mutably.
fn channels(planes: &mut [f64]) -> impl Iterator<Item = ((&mut f64, &mut f64), &mut f64)> {
    let n = planes.len() / CHANNELS;
    let (first, rest) = planes.split_at_mut(n);
    let (second, third) = rest.split_at_mut(n);
    first.iter_mut().zip(second.iter_mut()).zip(third.iter_mut())
}

/// RGB to level-shifted YCbCr (JPEG's full-range BT.601), in place on three planes.
fn rgb_to_ycbcr(planes: &mut [f64]) {
    for ((r_y, g_cb), b_cr) in channels(planes) {
        let (r, g, b) = (*r_y, *g_cb, *b_cr);
        let y = KR * r + KG * g + KB * b;
        *r_y = y - MID;
        *g_cb = (b - y) / (2.0 * (1.0 - KB));
        *b_cr = (r - y) / (2.0 * (1.0 - KR));
    }
}

/// The exact inverse of [`rgb_to_ycbcr`].
fn ycbcr_to_rgb(planes: &mut [f64]) {
    for ((y_r, cb_g), cr_b) in channels(planes) {
        let (y, cb, cr) = (*y_r + MID, *cb_g, *cr_b);
        let r = y + 2.0 * (1.0 - KR) * cr;
        let b = y + 2.0 * (1.0 - KB) * cb;
        *y_r = r;
        *cb_g = (y - KR * r - KB * b) / KG;
        *cr_b = b;
    }
}

/// Zeroes all but the `keep` largest-magnitude values (ties broken arbitrarily).
fn keep_largest(values: &mut [f64], keep: usize) {
    if keep >= values.len() {
        return;
    }
    if keep == 0 {
        values.fill(0.0);
        return;
    }
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.select_nth_unstable_by(keep, |&a, &b| values[b].abs().total_cmp(&values[a].abs()));
    for &i in &order[keep..] {
        values[i] = 0.0;
    }
}

/// One `side`×`side` RGB tile (channel planes one after the other, samples in
/// 0..=255) kept to its `keep` largest block-DCT coefficients over the three
/// channels. Returns RGB in the same layout, neither clamped nor rounded.
pub fn compress_tile(rgb: &[f64], side: usize, keep: usize) -> Result<Vec<f64>> {
    if side == 0 || !side.is_multiple_of(BLOCK) {
        return Err(Error::Other(format!("block DCT: tile side {side} is not a multiple of {BLOCK}")));
    }
    if rgb.len() != CHANNELS * side * side {
        return Err(Error::Other(format!("block DCT: {} samples for a {side}x{side} RGB tile", rgb.len())));
    }
    let c = dct_matrix();
    let mut planes = rgb.to_vec();
    rgb_to_ycbcr(&mut planes);
    for plane in planes.chunks_exact_mut(side * side) {
        transform_blocks(plane, side, &c, false);
    }
    keep_largest(&mut planes, keep);
    for plane in planes.chunks_exact_mut(side * side) {
        transform_blocks(plane, side, &c, true);
    }
    ycbcr_to_rgb(&mut planes);
    Ok(planes)
}

/// The whole image through [`compress_tile`], tiled exactly as the model sees
/// it ([`image_to_tiles`]: from the top-left, border tiles padded by edge
/// replication; [`tiles_to_image`] crops, clamps and rounds).
pub fn block_dct_image(img: &RgbImage, tile: u32, keep: usize) -> Result<RgbImage> {
    let (tiles, grid) = image_to_tiles(img, tile)?;
    let side = tile as usize;
    let mut out = Vec::with_capacity(tiles.len());
    for t in tiles.chunks_exact(grid.tile_len()) {
        let rgb: Vec<f64> = t.iter().map(|&v| f64::from(v) * 255.0).collect();
        out.extend(compress_tile(&rgb, side, keep)?.into_iter().map(|v| (v / 255.0) as f32));
    }
    tiles_to_image(&out, grid, img.width(), img.height()).map_err(Error::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn random_tile(side: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..CHANNELS * side * side).map(|_| rng.random_range(0.0..=255.0)).collect()
    }

    #[test]
    fn dct_matrix_is_orthonormal() {
        let c = dct_matrix();
        for (i, a) in c.iter().enumerate() {
            for (j, b) in c.iter().enumerate() {
                let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                assert!((dot - f64::from(u8::from(i == j))).abs() < 1e-12, "row {i} . row {j} = {dot}");
            }
        }
    }

    #[test]
    fn keeping_every_coefficient_reconstructs_the_tile() {
        let tile = random_tile(64, 1);
        let back = compress_tile(&tile, 64, tile.len()).unwrap();
        let worst = tile.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-3, "largest error {worst}");
    }

    #[test]
    fn keeping_no_coefficient_gives_mid_grey() {
        let back = compress_tile(&random_tile(16, 2), 16, 0).unwrap();
        assert!(back.iter().all(|&v| (v - MID).abs() < 1e-9));
        let img = RgbImage::from_fn(70, 50, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let grey = block_dct_image(&img, 64, 0).unwrap();
        assert!(grey.pixels().all(|p| p.0 == [128, 128, 128]));
    }

    #[test]
    fn keeps_exactly_the_count_asked() {
        let tile = random_tile(16, 3);
        let c = dct_matrix();
        let mut coefficients = tile.clone();
        rgb_to_ycbcr(&mut coefficients);
        for plane in coefficients.chunks_exact_mut(16 * 16) {
            transform_blocks(plane, 16, &c, false);
        }
        let mut kept = coefficients.clone();
        keep_largest(&mut kept, 100);
        assert_eq!(kept.iter().filter(|&&v| v != 0.0).count(), 100);
        // The smallest kept magnitude is at least the largest dropped one.
        let smallest_kept = kept.iter().filter(|&&v| v != 0.0).map(|v| v.abs()).fold(f64::INFINITY, f64::min);
        let largest_dropped =
            coefficients.iter().zip(&kept).filter(|&(_, &k)| k == 0.0).map(|(v, _)| v.abs()).fold(0.0, f64::max);
        assert!(smallest_kept >= largest_dropped);
    }

    #[test]
    fn whole_image_with_every_coefficient_is_lossless() {
        // 70x50: padded border tiles on both axes.
        let img = RgbImage::from_fn(70, 50, |x, y| image::Rgb([(x * 3) as u8, (y * 5) as u8, ((x + y) * 2) as u8]));
        assert_eq!(block_dct_image(&img, 64, CHANNELS * 64 * 64).unwrap(), img);
    }

    #[test]
    fn rejects_a_tile_side_off_the_block_grid() {
        assert!(compress_tile(&random_tile(12, 4), 12, 10).is_err());
        assert!(compress_tile(&[0.0; 10], 8, 10).is_err());
    }
}
