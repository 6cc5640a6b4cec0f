//! What someone without a key can do with a public code: pick k of k' per map
//! by magnitude, by re-encoding consistency, or with a learned detector; and
//! guess signs from the model's per-position sign statistics.

use ambishare_shared::model::ModelRunner;
use ambishare_shared::pipeline::{decode_image, encode_image};
use ambishare_shared::{AmbiguatedCode, CodeShape, SparseCode};
use image::RgbImage;

use crate::Result;

/// Statistics of the model's true codes that an attacker computes from its
/// own images with the public encoder, per (map, position) of a tile.
#[derive(Clone, Debug)]
pub struct CodeStats {
    pub maps: usize,
    pub dim: usize,
    /// How often each position is among the k kept.
    pub rate: Vec<f32>,
    /// Mean sign of the kept values at each position (-1 .. 1).
    pub sign_mean: Vec<f32>,
    /// Mean magnitude of the kept values at each position.
    pub mean_abs: Vec<f32>,
}

impl CodeStats {
    pub fn from_codes<'a>(codes: impl IntoIterator<Item = &'a SparseCode>, maps: usize, dim: usize) -> Self {
        let n = maps * dim;
        let (mut count, mut sign, mut abs, mut tiles) = (vec![0f64; n], vec![0f64; n], vec![0f64; n], 0f64);
        for code in codes {
            tiles += code.shape().tiles as f64;
            for map in 0..code.shape().map_count() {
                let l = map % maps;
                let (pos, val) = code.map(map);
                for (&p, &v) in pos.iter().zip(val) {
                    let i = l * dim + p as usize;
                    count[i] += 1.0;
                    sign[i] += v.signum() as f64;
                    abs[i] += v.abs() as f64;
                }
            }
        }
        let div =
            |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| if *y > 0.0 { (x / y) as f32 } else { 0.0 }).collect();
        CodeStats {
            maps,
            dim,
            rate: count.iter().map(|c| (c / tiles.max(1.0)) as f32).collect(),
            sign_mean: div(&sign, &count),
            mean_abs: div(&abs, &count),
        }
    }

    /// The most common sign at (map, position); + when unknown.
    pub fn prior_sign(&self, map: usize, position: u16) -> f32 {
        if self.sign_mean[(map % self.maps) * self.dim + position as usize] < 0.0 { -1.0 } else { 1.0 }
    }
}

/// How to set the signs of chosen nonzeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signs {
    /// Keep the published signs (right for the paper's scheme).
    Published,
    /// The position's most common sign (the best blind guess when signs are scrambled).
    Prior,
}

/// Builds a k-sparse code from chosen indices (per map, into the public code's
/// nonzeros), with published magnitudes and signs set as `signs` says.
pub fn choose(public: &AmbiguatedCode, chosen: &[Vec<u16>], signs: Signs, stats: &CodeStats) -> Result<SparseCode> {
    let values = public.values();
    picked(public, chosen, |map, j, p| match signs {
        Signs::Published => values[j],
        Signs::Prior => values[j].abs() * stats.prior_sign(map, p),
    })
}

/// The k-sparse code of the chosen nonzeros (indices into each map's public
/// nonzeros), each valued `value(map, index into the public values, position)`.
fn picked(
    public: &AmbiguatedCode,
    chosen: &[Vec<u16>],
    value: impl Fn(usize, usize, u16) -> f32,
) -> Result<SparseCode> {
    let n = public.nnz() as usize;
    let k = chosen.first().map_or(0, Vec::len);
    let (mut positions, mut out) = (Vec::new(), Vec::new());
    for (map, picks) in chosen.iter().enumerate() {
        let mut picks = picks.clone();
        picks.sort_unstable();
        for i in picks {
            let j = map * n + i as usize;
            let p = public.positions()[j];
            positions.push(p);
            out.push(value(map, j, p));
        }
    }
    Ok(SparseCode::from_parts(public.shape(), k as u16, positions, out)?)
}

/// Per map, the `k` indices with the highest `score` (ties: lower index).
pub fn top_by_score(shape: CodeShape, nnz: usize, k: usize, score: impl Fn(usize, usize) -> f32) -> Vec<Vec<u16>> {
    (0..shape.map_count())
        .map(|map| {
            let mut order: Vec<u16> = (0..nnz as u16).collect();
            order.sort_by(|&a, &b| score(map, b as usize).total_cmp(&score(map, a as usize)).then(a.cmp(&b)));
            order.truncate(k);
            order
        })
        .collect()
}

/// Fraction of a guess's nonzeros at true positions, and of those whose sign
/// came out right (measured against the true code, which the attacker lacks).
pub fn support_and_signs(guess: &SparseCode, truth: &SparseCode) -> (f64, f64) {
    let (mut hit, mut total, mut sign_ok) = (0usize, 0usize, 0usize);
    for map in 0..truth.shape().map_count() {
        let (tp, tv) = truth.map(map);
        let (gp, gv) = guess.map(map);
        for (p, v) in gp.iter().zip(gv) {
            total += 1;
            if let Ok(i) = tp.binary_search(p) {
                hit += 1;
                if tv[i].signum() == v.signum() {
                    sign_ok += 1;
                }
            }
        }
    }
    (hit as f64 / total.max(1) as f64, sign_ok as f64 / hit.max(1) as f64)
}

/// The k largest published magnitudes of every map.
pub fn top_k_magnitude(public: &AmbiguatedCode, k: u16, signs: Signs, stats: &CodeStats) -> Result<SparseCode> {
    let values = public.values();
    let n = public.nnz() as usize;
    let chosen = top_by_score(public.shape(), n, k as usize, |map, i| values[map * n + i].abs());
    choose(public, &chosen, signs, stats)
}

/// Re-encode consistency: decode a guess, re-encode it with the public
/// encoder, keep in every map the k public positions the re-encoding
/// activates most (signs from the re-encoding when they are scrambled), and
/// iterate from the decode of every public nonzero. Returns each iteration's code.
pub fn reencode_consistency(
    runner: &ModelRunner,
    public: &AmbiguatedCode,
    k: u16,
    width: u32,
    height: u32,
    iterations: usize,
    signs_scrambled: bool,
) -> Result<Vec<SparseCode>> {
    let n = public.nnz() as usize;
    let m = public.shape().dim as usize;
    let values = public.values();
    let mut current = public.to_sparse()?;
    let mut out = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let image = decode_image(runner, &current, width, height)?;
        let (tiles, grid) = ambishare_shared::tiling::image_to_tiles(&image, runner.manifest().tile_size)?;
        let dense = runner.encode_tiles(&tiles, grid.count())?;
        let score = |map: usize, i: usize| dense[map * m + public.positions()[map * n + i] as usize].abs();
        let chosen = top_by_score(public.shape(), n, k as usize, score);
        current = picked(public, &chosen, |map, j, p| {
            let sign = if signs_scrambled { dense[map * m + p as usize].signum() } else { values[j].signum() };
            values[j].abs() * if sign == 0.0 { 1.0 } else { sign }
        })?;
        out.push(current.clone());
    }
    Ok(out)
}

/// Encodes an image and returns its true code (for attacker statistics).
pub fn true_code(runner: &ModelRunner, image: &RgbImage) -> Result<SparseCode> {
    Ok(encode_image(runner, image)?)
}
