//! What someone without a key can do with a public code: pick k of k' per map
//! by magnitude, by re-encoding consistency, with a learned detector, or by
//! intersecting two publications of one image; and guess signs from the
//! model's per-position sign statistics (or from its subspaces, `subspace`).

use ambishare_shared::model::ModelRunner;
use ambishare_shared::pipeline::{decode_image, encode_image};
use ambishare_shared::{AmbiguatedCode, CodeShape, QuantizedValues, SparseCode};
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

/// Each map's smallest published magnitude (every real value is at least that large).
pub fn map_floors(public: &AmbiguatedCode) -> Vec<f32> {
    let n = public.nnz() as usize;
    public.values().chunks(n.max(1)).map(|map| map.iter().fold(f32::INFINITY, |a, v| a.min(v.abs()))).collect()
}

/// Attack (a)'s picks: per map, indices into the first publication's nonzeros.
#[derive(Clone, Debug)]
pub struct Intersection {
    pub picks: Vec<Vec<u16>>,
    /// Nonzeros of the first publication at a position the second also holds, over all maps.
    pub common: usize,
    /// Of those, the ones whose two published magnitudes agree within quantization.
    pub agreeing: usize,
}

/// How far two dequantized values of one true value can lie apart in map
/// `map` of `a` and `b`: half a quantization step of each, and f16 rounding.
fn tolerance(a: &AmbiguatedCode, b: &AmbiguatedCode, map: usize, x: f32, y: f32) -> f32 {
    let step = |c: &AmbiguatedCode| match c.quantized() {
        QuantizedValues::Q8 { ranges, .. } => {
            ranges.get(map).map_or(0.0, |[lo, hi]| (hi.to_f32() - lo.to_f32()) / 127.0)
        }
        QuantizedValues::F16(_) => 0.0,
    };
    0.5 * (step(a) + step(b)) * 1.01 + 2e-3 * x.abs().max(y.abs())
}

/// Attack (a), the same image published twice: a real nonzero sits at the
/// same position in both publications with the same magnitude (up to
/// quantization), while fresh fakes rarely coincide. Per map it keeps the
/// first publication's nonzeros present in both with agreeing magnitudes,
/// then those present in both, then the rest, each group by `score(map,
/// index)` (highest first), and takes `k`. Where both publications are
/// identical (a deterministic scheme) every nonzero agrees and the pick is
/// the score's alone.
pub fn intersect(
    first: &AmbiguatedCode,
    second: &AmbiguatedCode,
    k: usize,
    score: impl Fn(usize, usize) -> f32,
) -> Result<Intersection> {
    if first.shape() != second.shape() {
        return Err(crate::Error::Other("intersect: the two publications differ in shape".into()));
    }
    let (n1, n2) = (first.nnz() as usize, second.nnz() as usize);
    if k > n1 {
        return Err(crate::Error::Other(format!("intersect: k = {k} above the {n1} nonzeros a map")));
    }
    let (v1, v2) = (first.values(), second.values());
    let (mut common, mut agreeing) = (0usize, 0usize);
    let mut picks = Vec::with_capacity(first.shape().map_count());
    for map in 0..first.shape().map_count() {
        let p2 = &second.positions()[map * n2..(map + 1) * n2];
        // 2: in both, magnitudes agree; 1: in both; 0: only in the first.
        let class: Vec<u8> = (0..n1)
            .map(|i| {
                let p = first.positions()[map * n1 + i];
                match p2.binary_search(&p) {
                    Ok(j) => {
                        let (x, y) = (v1[map * n1 + i].abs(), v2[map * n2 + j].abs());
                        if (x - y).abs() <= tolerance(first, second, map, x, y) { 2 } else { 1 }
                    }
                    Err(_) => 0,
                }
            })
            .collect();
        common += class.iter().filter(|&&c| c > 0).count();
        agreeing += class.iter().filter(|&&c| c == 2).count();
        let mut order: Vec<u16> = (0..n1 as u16).collect();
        order.sort_by(|&a, &b| {
            class[b as usize]
                .cmp(&class[a as usize])
                .then(score(map, b as usize).total_cmp(&score(map, a as usize)))
                .then(a.cmp(&b))
        });
        order.truncate(k);
        picks.push(order);
    }
    Ok(Intersection { picks, common, agreeing })
}

/// Encodes an image and returns its true code (for attacker statistics).
pub fn true_code(runner: &ModelRunner, image: &RgbImage) -> Result<SparseCode> {
    Ok(encode_image(runner, image)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ambishare_shared::{FakeModel, ValueCodec, ambiguate};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    fn laplace_code(seed: u64, shape: CodeShape, k: u16) -> SparseCode {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let dense: Vec<f32> = (0..shape.dense_len())
            .map(|_| {
                let u: f64 = rng.random::<f64>() - 0.5;
                (-(1.0 - 2.0 * u.abs()).max(1e-12).ln() * u.signum()) as f32
            })
            .collect();
        SparseCode::top_k(&dense, shape, k).unwrap()
    }

    /// Share of the picks at true positions.
    fn true_share(public: &AmbiguatedCode, picks: &[Vec<u16>], truth: &SparseCode) -> f64 {
        let n = public.nnz() as usize;
        let (mut hit, mut all) = (0usize, 0usize);
        for (map, p) in picks.iter().enumerate() {
            let (tp, _) = truth.map(map);
            for &i in p {
                all += 1;
                hit += tp.binary_search(&public.positions()[map * n + i as usize]).is_ok() as usize;
            }
        }
        hit as f64 / all.max(1) as f64
    }

    #[test]
    fn intersecting_two_publications_picks_the_real_nonzeros() {
        let shape = CodeShape::new(8, 4, 256).unwrap();
        let code = laplace_code(1, shape, 64);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        for fakes in [FakeModel::paper(), FakeModel::fitted(None, 4, 256).unwrap()] {
            let (a, _) = ambiguate(&code, 64, ValueCodec::Q8, &fakes, &mut rng).unwrap();
            let (b, _) = ambiguate(&code, 64, ValueCodec::Q8, &fakes, &mut rng).unwrap();
            let cut = intersect(&a, &b, 64, |_, _| 0.0).unwrap();
            let share = true_share(&a, &cut.picks, &code);
            assert!(share > 0.97, "{share:.3} of the picks real ({} in both)", cut.common);
            assert!(cut.picks.iter().all(|p| p.len() == 64));
            // Every real nonzero is in both; about 64 * 64/192 fakes coincide by chance.
            assert!(cut.common >= 64 * shape.map_count() && cut.agreeing < cut.common);
            // A random pick of 64 of 128 is right about half the time.
            let mut guess = ChaCha20Rng::seed_from_u64(3);
            let noise: Vec<f32> = (0..a.positions().len()).map(|_| guess.random()).collect();
            let random = intersect(&a, &a, 64, |map, i| noise[map * 128 + i]).unwrap();
            assert!(true_share(&a, &random.picks, &code) < 0.6);
        }
    }

    #[test]
    fn identical_publications_fall_back_to_the_score() {
        // A deterministic scheme publishes the same bytes twice: the
        // intersection is every nonzero, and the score alone decides.
        let shape = CodeShape::new(2, 2, 64).unwrap();
        let code = laplace_code(4, shape, 16);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (public, key) = ambiguate(&code, 16, ValueCodec::Q8, &FakeModel::paper(), &mut rng).unwrap();
        let real = |map: usize, i: usize| if key.map(map).binary_search(&(i as u16)).is_ok() { 1.0 } else { 0.0 };
        let cut = intersect(&public, &public.clone(), 16, real).unwrap();
        assert_eq!((cut.common, cut.agreeing), (4 * 32, 4 * 32));
        for (map, picks) in cut.picks.iter().enumerate() {
            let mut p = picks.clone();
            p.sort_unstable();
            assert_eq!(p, key.map(map));
        }
        let anti = intersect(&public, &public, 16, |m, i| -real(m, i)).unwrap();
        assert_eq!(true_share(&public, &anti.picks, &code), 0.0);
        assert!(intersect(&public, &public, 33, real).is_err());
    }

    #[test]
    fn floors_are_each_maps_smallest_magnitude() {
        let shape = CodeShape::new(1, 2, 8).unwrap();
        let code = SparseCode::top_k(
            &[0.0, 5.0, 0.0, -7.0, 0.0, 6.0, 0.0, 0.0, 1.0, -2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 4.0],
            shape,
            3,
        )
        .unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (public, _) = ambiguate(&code, 2, ValueCodec::F16, &FakeModel::paper(), &mut rng).unwrap();
        let floors = map_floors(&public);
        assert_eq!(floors.len(), 2);
        assert!((floors[0] - 5.0).abs() < 1e-2 && (floors[1] - 2.0).abs() < 1e-2, "{floors:?}");
    }
}
