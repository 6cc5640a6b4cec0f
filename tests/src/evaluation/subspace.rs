//! The code's own structure as an attack: the encoder's dense code of each
//! code-map lies near a low-dimensional subspace of R^m (exactly, when its
//! last layer is linear without bias), which anyone learns from the public
//! encoder and their own images. Given a support and the published
//! magnitudes, the signs that put the sparse code closest to that subspace
//! are mostly the true ones: scrambling the published signs hides nothing
//! the code's structure gives back.

use nalgebra::{DMatrix, SymmetricEigen};
use rand::Rng;

use super::attacks::CodeStats;
use crate::{Error, Result};
use ambishare_shared::SparseCode;

/// A singular value drop of at least this factor marks the subspace's dimension.
pub const MIN_DROP: f64 = 10.0;
/// Without such a drop, the dimension that keeps this share of the energy.
pub const ENERGY: f64 = 0.99;

/// Each code-map's learned subspace (P = U Uᵀ, U its top singular vectors).
pub struct Subspaces {
    pub maps: usize,
    pub dim: usize,
    /// Tiles learned from.
    pub samples: usize,
    /// The chosen dimension of each map's subspace.
    pub ranks: Vec<usize>,
    /// σ_d / σ_(d+1) at the chosen dimension d, per map (below [`MIN_DROP`]:
    /// no clear drop, d keeps [`ENERGY`] of the energy instead).
    pub drops: Vec<f64>,
    /// Per map: the projection onto its subspace, dim × dim, row-major.
    projections: Vec<Vec<f64>>,
    /// Per map: Fisher's direction telling x from -x, U Σ⁻¹ μ, with μ and Σ
    /// the mean and covariance of the codes' coordinates in the subspace.
    fisher: Vec<Vec<f64>>,
    /// Per map: its subspace's basis U, dim × rank.
    bases: Vec<DMatrix<f64>>,
    /// The maps of a tile together: a Gaussian model of their concatenated
    /// coordinates, fitted on the first [`Joint::fitted`] tiles only.
    joint: Option<Joint>,
    /// How a map's orientation is chosen.
    pub orientation: Orientation,
}

/// A Gaussian model N(μ, Λ⁻¹) of a tile's concatenated subspace coordinates.
struct Joint {
    /// Where each map's coordinates start.
    offsets: Vec<usize>,
    lambda: DMatrix<f64>,
    /// Λ μ.
    lambda_mu: nalgebra::DVector<f64>,
    /// Tiles it was fitted on (the first ones); the rest judge it.
    fitted: usize,
}

/// Shrinkage of the joint covariance towards its mean variance.
const JOINT_RIDGE: f64 = 0.1;
/// Largest concatenated dimension the joint model is fitted for.
const JOINT_MAX_DIM: usize = 2048;

/// How the sign search tells x from -x, which lie in the subspace alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orientation {
    /// The side that agrees best with the positions' usual signs.
    Prior,
    /// The side the codes' mean in the subspace lies on (Fisher's discriminant).
    Fisher,
    /// All maps of a tile at once: the orientations under which the tile's
    /// coordinates are likeliest under a Gaussian model of them.
    Joint,
}

/// How hard the sign search works.
#[derive(Clone, Copy, Debug)]
pub struct SignSearch {
    /// Greedy descents from random signs, beside the one from the prior's signs.
    pub restarts: usize,
    /// Weight of the off-support penalty (0: none): Σ max(0, |(Px)_j| - λ)² over
    /// positions j off the support, λ the map's smallest published magnitude.
    pub penalty: f64,
}

impl Default for SignSearch {
    fn default() -> Self {
        SignSearch { restarts: 6, penalty: 1.0 }
    }
}

impl Subspaces {
    /// Learns every map's subspace from dense codes (tiles × maps × dim,
    /// concatenated): the eigendecomposition of the dim × dim second-moment
    /// matrix of each map index, cut at the largest singular value drop.
    pub fn learn(dense: &[f32], maps: usize, dim: usize) -> Result<Self> {
        let per_tile = maps * dim;
        if per_tile == 0 || !dense.len().is_multiple_of(per_tile) {
            return Err(Error::Other(format!("dense codes: {} values are not tiles of {maps}×{dim}", dense.len())));
        }
        let samples = dense.len() / per_tile;
        if samples < 2 * dim {
            return Err(Error::Other(format!("subspaces: {samples} tiles, at least {} needed", 2 * dim)));
        }
        let (mut ranks, mut drops, mut projections, mut fisher) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut bases = Vec::new();
        for l in 0..maps {
            let x = DMatrix::<f64>::from_fn(samples, dim, |t, p| dense[t * per_tile + l * dim + p] as f64);
            let eigen = SymmetricEigen::new(x.tr_mul(&x));
            let mut order: Vec<usize> = (0..dim).collect();
            order.sort_by(|&a, &b| eigen.eigenvalues[b].total_cmp(&eigen.eigenvalues[a]));
            let sigma: Vec<f64> = order.iter().map(|&i| eigen.eigenvalues[i].max(0.0).sqrt()).collect();
            let (rank, drop) = choose_rank(&sigma);
            let u = DMatrix::<f64>::from_fn(dim, rank, |p, j| eigen.eigenvectors[(p, order[j])]);
            let proj = &u * u.transpose();
            projections.push((0..dim * dim).map(|i| proj[(i / dim, i % dim)]).collect());
            fisher.push(fisher_direction(&x, &u).iter().copied().collect());
            bases.push(u);
            ranks.push(rank);
            drops.push(drop);
        }
        let joint = fit_joint(dense, maps, dim, &bases, samples * 2 / 3);
        Ok(Subspaces {
            maps,
            dim,
            samples,
            ranks,
            drops,
            projections,
            fisher,
            bases,
            joint,
            orientation: Orientation::Prior,
        })
    }

    /// Orientations (±1) of one tile's maps, given as (positions, signed
    /// values) in map order, that make the tile likeliest under the joint
    /// model: greedy flips on L(o) = Σ o_l h_l - ½ Σ_(l≠l') o_l o_l' J_ll',
    /// from all +1 and a few random starts. All +1 without a joint model.
    pub fn orient_tile<R: Rng>(&self, maps: &[(&[u16], Vec<f64>)], rng: &mut R) -> Vec<f64> {
        let n = maps.len();
        let Some(joint) = self.joint.as_ref().filter(|_| n == self.maps) else {
            return vec![1.0; n];
        };
        let total = joint.lambda.nrows();
        let mut c = nalgebra::DVector::<f64>::zeros(total);
        for (l, (pos, val)) in maps.iter().enumerate() {
            let u = &self.bases[l];
            for j in 0..u.ncols() {
                c[joint.offsets[l] + j] = pos.iter().zip(val).map(|(&p, v)| v * u[(p as usize, j)]).sum();
            }
        }
        let range = |l: usize| joint.offsets[l]..joint.offsets.get(l + 1).copied().unwrap_or(total);
        // J_ll' = c_lᵀ Λ_ll' c_l' (symmetric), h_l = c_lᵀ (Λμ)_l.
        let mut jm = vec![0f64; n * n];
        let mut h = vec![0f64; n];
        for l in 0..n {
            h[l] = range(l).map(|i| c[i] * joint.lambda_mu[i]).sum();
            for l2 in 0..n {
                if l2 != l {
                    jm[l * n + l2] =
                        range(l).map(|i| c[i] * range(l2).map(|j| joint.lambda[(i, j)] * c[j]).sum::<f64>()).sum();
                }
            }
        }
        let value = |o: &[f64]| -> f64 {
            let mut v: f64 = (0..n).map(|l| o[l] * h[l]).sum();
            for l in 0..n {
                for l2 in 0..n {
                    v -= 0.5 * o[l] * o[l2] * jm[l * n + l2];
                }
            }
            v
        };
        let climb = |mut o: Vec<f64>| -> (Vec<f64>, f64) {
            for _ in 0..50 * n {
                let gain = |l: usize| 2.0 * o[l] * ((0..n).map(|l2| jm[l * n + l2] * o[l2]).sum::<f64>() - h[l]);
                let Some((l, g)) = (0..n).map(|l| (l, gain(l))).max_by(|a, b| a.1.total_cmp(&b.1)) else { break };
                if g <= 1e-12 {
                    break;
                }
                o[l] = -o[l];
            }
            let v = value(&o);
            (o, v)
        };
        let mut best = climb(vec![1.0; n]);
        for _ in 0..4 {
            let start: Vec<f64> = (0..n).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
            let candidate = climb(start);
            if candidate.1 > best.1 {
                best = candidate;
            }
        }
        best.0
    }

    /// Picks the orientation rule that is right more often on the attacker's
    /// own true codes (whose signs it knows), counted on the tiles the joint
    /// model was not fitted on (`codes` in the order of the dense codes
    /// learned from); returns how often each is right: (prior, Fisher, joint).
    pub fn choose_orientation<'a, R: Rng>(
        &mut self,
        codes: impl IntoIterator<Item = &'a SparseCode>,
        stats: &CodeStats,
        rng: &mut R,
    ) -> (f64, f64, f64) {
        // Right: on the true code's side; a tie counts half.
        let side = |v: f64| {
            if v > 0.0 {
                1.0
            } else if v == 0.0 {
                0.5
            } else {
                0.0
            }
        };
        let held_from = self.joint.as_ref().map_or(0, |j| j.fitted);
        let (mut prior_ok, mut fisher_ok, mut joint_ok, mut all) = (0f64, 0f64, 0f64, 0usize);
        let mut tile_index = 0usize;
        for code in codes {
            for tile in 0..code.shape().tiles as usize {
                tile_index += 1;
                if tile_index <= held_from {
                    continue;
                }
                let mut flipped = Vec::with_capacity(self.maps);
                let mut truth_flips = Vec::with_capacity(self.maps);
                for l in 0..self.maps.min(code.shape().maps as usize) {
                    let (pos, val) = code.map(tile * code.shape().maps as usize + l);
                    let prior: f64 = pos
                        .iter()
                        .zip(val)
                        .map(|(&p, v)| v.signum() as f64 * stats.sign_mean[l * stats.dim + p as usize] as f64)
                        .sum();
                    let fisher: f64 = pos.iter().zip(val).map(|(&p, &v)| v as f64 * self.fisher[l][p as usize]).sum();
                    prior_ok += side(prior);
                    fisher_ok += side(fisher);
                    all += 1;
                    let r = if rng.random::<bool>() { 1.0 } else { -1.0 };
                    truth_flips.push(r);
                    flipped.push((pos, val.iter().map(|&v| v as f64 * r).collect::<Vec<f64>>()));
                }
                let o = self.orient_tile(&flipped, rng);
                joint_ok += o.iter().zip(&truth_flips).filter(|(o, r)| **o == **r).count() as f64;
            }
        }
        let rate = |ok: f64| ok / all.max(1) as f64;
        let (prior, fisher, joint) =
            (rate(prior_ok), rate(fisher_ok), if self.joint.is_some() { rate(joint_ok) } else { 0.0 });
        self.orientation = if joint > fisher.max(prior) {
            Orientation::Joint
        } else if fisher > prior {
            Orientation::Fisher
        } else {
            Orientation::Prior
        };
        (prior, fisher, joint)
    }

    fn projection(&self, map: usize) -> &[f64] {
        &self.projections[map % self.maps]
    }

    /// ||(I - P) x||² of a dense vector of map index `map` (how far it lies from the subspace).
    pub fn residual(&self, map: usize, x: &[f64]) -> f64 {
        let p = self.projection(map);
        (0..self.dim).map(|i| (x[i] - (0..self.dim).map(|j| p[i * self.dim + j] * x[j]).sum::<f64>()).powi(2)).sum()
    }

    /// Signs for the nonzeros of one code-map (`magnitudes` at `positions`)
    /// that put the sparse vector closest to the map's subspace: steepest
    /// single-flip descent on ||(I-P)x||² from the prior's signs and from
    /// `search.restarts` random ones, the best polished with the off-support
    /// penalty; then, since x and -x lie equally close, the orientation
    /// [`Subspaces::orientation`] says (`prior`: each position's mean sign, -1 .. 1).
    #[allow(clippy::too_many_arguments)]
    pub fn signs<R: Rng>(
        &self,
        map: usize,
        positions: &[u16],
        magnitudes: &[f32],
        prior: &[f32],
        floor: f32,
        search: &SignSearch,
        rng: &mut R,
    ) -> Vec<f32> {
        let k = positions.len();
        let (m, p) = (self.dim, self.projection(map));
        let a: Vec<f64> = magnitudes.iter().map(|&v| v.abs() as f64).collect();
        // G = diag(a) Q_SS diag(a), Q = I - P: f(s) = sᵀ G s.
        let g: Vec<f64> = (0..k * k)
            .map(|ij| {
                let (i, j) = (ij / k, ij % k);
                let (pi, pj) = (positions[i] as usize, positions[j] as usize);
                let q = if i == j { 1.0 } else { 0.0 } - p[pi * m + pj];
                a[i] * a[j] * q
            })
            .collect();
        let start: Vec<f64> = prior.iter().map(|&v| if v < 0.0 { -1.0 } else { 1.0 }).collect();
        let mut best = descend(&g, k, start);
        for _ in 0..search.restarts {
            let s: Vec<f64> = (0..k).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
            let candidate = descend(&g, k, s);
            if candidate.1 < best.1 {
                best = candidate;
            }
        }
        let mut s = best.0;
        if search.penalty > 0.0 {
            polish(&mut s, &g, k, p, m, positions, &a, floor as f64, search.penalty);
        }
        let agreement: f64 = match self.orientation {
            Orientation::Prior => s.iter().zip(prior).map(|(s, &q)| s * q as f64).sum(),
            Orientation::Fisher | Orientation::Joint => {
                let v = &self.fisher[map % self.maps];
                (0..k).map(|i| s[i] * a[i] * v[positions[i] as usize]).sum()
            }
        };
        let orient = if agreement < 0.0 { -1.0 } else { 1.0 };
        s.iter().map(|v| (v * orient) as f32).collect()
    }

    /// `code` with every map's signs from [`Subspaces::signs`] (magnitudes
    /// kept); `floors` holds each map's smallest published magnitude.
    pub fn recover_signs<R: Rng>(
        &self,
        code: &SparseCode,
        floors: &[f32],
        stats: &CodeStats,
        search: &SignSearch,
        rng: &mut R,
    ) -> Result<SparseCode> {
        let mut values = Vec::with_capacity(code.values().len());
        let per_tile = code.shape().maps as usize;
        for tile in 0..code.shape().tiles as usize {
            let mut tile_maps = Vec::with_capacity(per_tile);
            for map in tile * per_tile..(tile + 1) * per_tile {
                let l = map % self.maps;
                let (pos, val) = code.map(map);
                let prior: Vec<f32> = pos.iter().map(|&p| stats.sign_mean[l * stats.dim + p as usize]).collect();
                let floor = floors.get(map).copied().unwrap_or(0.0);
                let signs = self.signs(l, pos, val, &prior, floor, search, rng);
                tile_maps.push((pos, val.iter().zip(signs).map(|(v, s)| (v.abs() * s) as f64).collect::<Vec<f64>>()));
            }
            let orient = if self.orientation == Orientation::Joint {
                self.orient_tile(&tile_maps, rng)
            } else {
                vec![1.0; per_tile]
            };
            for ((_, vals), o) in tile_maps.iter().zip(orient) {
                values.extend(vals.iter().map(|v| (v * o) as f32));
            }
        }
        Ok(SparseCode::from_parts(code.shape(), code.nnz(), code.positions().to_vec(), values)?)
    }
}

/// The joint model of a tile's coordinates from its first `fit` tiles (None
/// when too few, or too many dimensions).
fn fit_joint(dense: &[f32], maps: usize, dim: usize, bases: &[DMatrix<f64>], fit: usize) -> Option<Joint> {
    let mut offsets = Vec::with_capacity(maps);
    let mut total = 0usize;
    for u in bases {
        offsets.push(total);
        total += u.ncols();
    }
    if total > JOINT_MAX_DIM || fit < 2 {
        return None;
    }
    let per_tile = maps * dim;
    let mut coords = DMatrix::<f64>::zeros(fit, total);
    for (l, u) in bases.iter().enumerate() {
        let x = DMatrix::<f64>::from_fn(fit, dim, |t, p| dense[t * per_tile + l * dim + p] as f64);
        coords.columns_mut(offsets[l], u.ncols()).copy_from(&(x * u));
    }
    let mu = coords.row_mean().transpose();
    let mut cov = coords.tr_mul(&coords) / fit as f64 - &mu * mu.transpose();
    let ridge = JOINT_RIDGE * cov.trace() / total.max(1) as f64;
    for i in 0..total {
        cov[(i, i)] += ridge;
    }
    let lambda = cov.cholesky()?.inverse();
    let lambda_mu = &lambda * &mu;
    Some(Joint { offsets, lambda, lambda_mu, fitted: fit })
}

/// U Σ⁻¹ μ for the coordinates c = Uᵀx of the rows x of `x` (mean μ,
/// covariance Σ, a small ridge): the side of it a code lies on tells x from -x
/// when the codes' distribution in the subspace is not symmetric.
fn fisher_direction(x: &DMatrix<f64>, u: &DMatrix<f64>) -> nalgebra::DVector<f64> {
    let c = x * u;
    let n = c.nrows().max(1) as f64;
    let mu = c.row_mean().transpose();
    let mut cov = c.tr_mul(&c) / n - &mu * mu.transpose();
    let ridge = 1e-6 * cov.trace().max(f64::MIN_POSITIVE) / cov.nrows().max(1) as f64;
    for i in 0..cov.nrows() {
        cov[(i, i)] += ridge;
    }
    let w = match cov.cholesky() {
        Some(ch) => ch.solve(&mu),
        None => mu,
    };
    u * w
}

/// (dimension, drop): the largest σ_d / σ_(d+1); without one of at least
/// [`MIN_DROP`], the smallest d that keeps [`ENERGY`] of Σσ².
fn choose_rank(sigma: &[f64]) -> (usize, f64) {
    let n = sigma.len();
    let floor = sigma.first().copied().unwrap_or(0.0) * 1e-12;
    let mut best = (n, 1.0);
    for d in 1..n {
        let ratio = sigma[d - 1] / sigma[d].max(floor).max(f64::MIN_POSITIVE);
        if ratio > best.1 {
            best = (d, ratio);
        }
    }
    if best.1 >= MIN_DROP {
        return best;
    }
    let total: f64 = sigma.iter().map(|s| s * s).sum();
    let mut kept = 0.0;
    for (d, s) in sigma.iter().enumerate() {
        kept += s * s;
        if kept >= ENERGY * total {
            let next = sigma.get(d + 1).copied().unwrap_or(0.0);
            return (d + 1, if next > 0.0 { s / next } else { f64::INFINITY });
        }
    }
    (n, 1.0)
}

/// Steepest single-flip descent on f(s) = sᵀ G s: flipping s_i changes f by
/// -4 s_i (g_i - G_ii s_i), g = G s. Returns the local minimum and its f.
fn descend(g: &[f64], k: usize, mut s: Vec<f64>) -> (Vec<f64>, f64) {
    let mut gs: Vec<f64> = (0..k).map(|i| (0..k).map(|j| g[i * k + j] * s[j]).sum()).collect();
    let mut f: f64 = (0..k).map(|i| s[i] * gs[i]).sum();
    // Each flip lowers f: at most 2^k, in practice a few k; bounded all the same.
    for _ in 0..50 * k.max(1) {
        let (mut best, mut delta) = (usize::MAX, -1e-12 * f.abs().max(1e-30));
        for i in 0..k {
            let d = -4.0 * s[i] * (gs[i] - g[i * k + i] * s[i]);
            if d < delta {
                (best, delta) = (i, d);
            }
        }
        if best == usize::MAX {
            break;
        }
        let old = s[best];
        for j in 0..k {
            gs[j] -= 2.0 * old * g[j * k + best];
        }
        s[best] = -old;
        f += delta;
    }
    (s, f)
}

/// First-improvement flips on f(s) + w·h(s), h the off-support penalty
/// (see [`SignSearch::penalty`]); a few sweeps at most.
#[allow(clippy::too_many_arguments)]
fn polish(s: &mut [f64], g: &[f64], k: usize, p: &[f64], m: usize, positions: &[u16], a: &[f64], floor: f64, w: f64) {
    let mut on = vec![false; m];
    for &q in positions {
        on[q as usize] = true;
    }
    // y = P x, x the sparse vector.
    let mut y = vec![0f64; m];
    for i in 0..k {
        let col = positions[i] as usize;
        for (j, yj) in y.iter_mut().enumerate() {
            *yj += p[j * m + col] * s[i] * a[i];
        }
    }
    let excess = |v: f64| (v.abs() - floor).max(0.0).powi(2);
    let mut gs: Vec<f64> = (0..k).map(|i| (0..k).map(|j| g[i * k + j] * s[j]).sum()).collect();
    let mut moved = vec![0f64; m];
    for _ in 0..4 {
        let mut improved = false;
        for i in 0..k {
            let col = positions[i] as usize;
            let step = -2.0 * s[i] * a[i];
            let mut dh = 0.0;
            for j in 0..m {
                moved[j] = y[j] + step * p[j * m + col];
                if !on[j] {
                    dh += excess(moved[j]) - excess(y[j]);
                }
            }
            let df = -4.0 * s[i] * (gs[i] - g[i * k + i] * s[i]);
            if df + w * dh < -1e-12 {
                let old = s[i];
                for j in 0..k {
                    gs[j] -= 2.0 * old * g[j * k + i];
                }
                s[i] = -old;
                y.copy_from_slice(&moved);
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ambishare_shared::CodeShape;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn normal<R: Rng>(rng: &mut R) -> f64 {
        let u: f64 = 1.0 - rng.random::<f64>();
        let v: f64 = rng.random();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    /// Dense codes of `tiles` tiles whose `maps` maps lie exactly in one random
    /// `rank`-dimensional subspace of R^dim each.
    fn subspace_codes(seed: u64, tiles: usize, maps: usize, dim: usize, rank: usize) -> Vec<f32> {
        shifted_codes(seed, tiles, maps, dim, rank, 0.0)
    }

    /// The same, coordinates N(shift, 1) in the subspace (not symmetric about 0 when shift != 0).
    fn shifted_codes(seed: u64, tiles: usize, maps: usize, dim: usize, rank: usize, shift: f64) -> Vec<f32> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let bases: Vec<Vec<f64>> = (0..maps).map(|_| (0..dim * rank).map(|_| normal(&mut rng)).collect()).collect();
        let mut out = Vec::with_capacity(tiles * maps * dim);
        for _ in 0..tiles {
            for basis in &bases {
                let z: Vec<f64> = (0..rank).map(|_| normal(&mut rng) + shift).collect();
                out.extend((0..dim).map(|p| (0..rank).map(|j| basis[p * rank + j] * z[j]).sum::<f64>() as f32));
            }
        }
        out
    }

    #[test]
    fn finds_the_dimension_of_an_exact_subspace() {
        let dense = subspace_codes(1, 400, 2, 64, 16);
        let sub = Subspaces::learn(&dense, 2, 64).unwrap();
        assert_eq!(sub.ranks, vec![16, 16]);
        assert!(sub.drops.iter().all(|&d| d > 1e3), "drops {:?}", sub.drops);
        // A code of the subspace lies in it; a random vector does not.
        let x: Vec<f64> = dense[..64].iter().map(|&v| v as f64).collect();
        let norm: f64 = x.iter().map(|v| v * v).sum();
        assert!(sub.residual(0, &x) < 1e-8 * norm);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let y: Vec<f64> = (0..64).map(|_| normal(&mut rng)).collect();
        assert!(sub.residual(0, &y) > 0.5 * y.iter().map(|v| v * v).sum::<f64>());
    }

    #[test]
    fn refuses_too_few_tiles() {
        let dense = subspace_codes(3, 100, 1, 64, 16);
        assert!(Subspaces::learn(&dense, 1, 64).is_err());
        assert!(Subspaces::learn(&dense[..10], 1, 64).is_err());
    }

    #[test]
    fn recovers_the_signs_of_codes_in_a_subspace_from_the_true_support() {
        // 16-dim subspaces of R^64, the top 16 of each code kept, published
        // with scrambled signs: the search starts from a prior right 60% of
        // the time and has to do far better. The subspace fixes the signs up
        // to one flip of the whole map (x and -x lie in it alike), so count
        // each map in its better orientation first.
        let (maps, dim, rank, k) = (4usize, 64usize, 16usize, 16u16);
        let all = subspace_codes(5, 650, maps, dim, rank);
        let sub = Subspaces::learn(&all[..600 * maps * dim], maps, dim).unwrap();
        // Held-out codes of the same subspaces: the last 50 tiles.
        let shape = CodeShape::new(50, maps as u16, dim as u16).unwrap();
        let truth = SparseCode::top_k(&all[600 * maps * dim..], shape, k).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let noisy = |rng: &mut ChaCha20Rng, v: f32, right: f64| {
            if rng.random::<f64>() < right { v.signum() } else { -v.signum() }
        };
        let (mut right, mut prior_right, mut total) = (0usize, 0usize, 0usize);
        for map in 0..shape.map_count() {
            let (pos, val) = truth.map(map);
            let prior: Vec<f32> = val.iter().map(|&v| noisy(&mut rng, v, 0.6) * 0.2).collect();
            let floor = val.iter().fold(f32::INFINITY, |a, v| a.min(v.abs()));
            let signs = sub.signs(map % maps, pos, val, &prior, floor, &SignSearch::default(), &mut rng);
            let same = val.iter().zip(&signs).filter(|(v, s)| v.signum() == **s).count();
            right += same.max(val.len() - same);
            prior_right += val.iter().zip(&prior).filter(|(v, q)| v.signum() == q.signum()).count();
            total += val.len();
        }
        let rate = right as f64 / total as f64;
        assert!(rate > 0.9, "signs right {rate:.3} (prior {:.3})", prior_right as f64 / total as f64);

        // Through a code of one tile, oriented by a prior (each position's
        // mean sign) right 80% of the time: most signs right outright.
        let one = CodeShape::new(1, maps as u16, dim as u16).unwrap();
        let (mut ok, mut all) = (0usize, 0usize);
        for tile in 0..50 {
            let r = tile * maps * k as usize..(tile + 1) * maps * k as usize;
            let tile_truth =
                SparseCode::from_parts(one, k, truth.positions()[r.clone()].to_vec(), truth.values()[r].to_vec())
                    .unwrap();
            let mut sign_mean = vec![0f32; maps * dim];
            for map in 0..maps {
                let (pos, val) = tile_truth.map(map);
                for (&p, &v) in pos.iter().zip(val) {
                    sign_mean[map * dim + p as usize] = noisy(&mut rng, v, 0.8) * 0.5;
                }
            }
            let stats =
                CodeStats { maps, dim, rate: vec![0.25; maps * dim], sign_mean, mean_abs: vec![1.0; maps * dim] };
            let scrambled = SparseCode::from_parts(
                one,
                k,
                tile_truth.positions().to_vec(),
                tile_truth.values().iter().map(|v| if rng.random::<bool>() { -v } else { *v }).collect(),
            )
            .unwrap();
            let floors: Vec<f32> =
                (0..maps).map(|m| tile_truth.map(m).1.iter().fold(f32::INFINITY, |a, v| a.min(v.abs()))).collect();
            let back = sub.recover_signs(&scrambled, &floors, &stats, &SignSearch::default(), &mut rng).unwrap();
            assert_eq!(back.positions(), tile_truth.positions());
            ok += back.values().iter().zip(tile_truth.values()).filter(|(a, b)| a.signum() == b.signum()).count();
            all += back.values().len();
        }
        assert!(ok as f64 / all as f64 > 0.85, "{ok} of {all} signs right");
    }

    #[test]
    fn orients_by_the_codes_mean_where_it_is_not_zero() {
        // Coordinates N(1, 1) in the subspace: Fisher's side is right for most
        // codes; a prior that knows no usual sign is a coin toss.
        let (maps, dim) = (2usize, 64usize);
        let dense = shifted_codes(7, 600, maps, dim, 16, 1.0);
        let mut sub = Subspaces::learn(&dense, maps, dim).unwrap();
        assert_eq!(sub.orientation, Orientation::Prior);
        let shape = CodeShape::new(600, maps as u16, dim as u16).unwrap();
        let codes = SparseCode::top_k(&dense, shape, 16).unwrap();
        let mut stats = CodeStats::from_codes([&codes], maps, dim);
        stats.sign_mean.fill(0.0);
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let (prior, fisher, joint) = sub.choose_orientation([&codes], &stats, &mut rng);
        assert!(fisher > 0.9 && fisher > prior, "prior {prior:.3}, Fisher {fisher:.3}");
        assert!(joint > 0.9, "joint {joint:.3}");
        assert_ne!(sub.orientation, Orientation::Prior);
    }

    #[test]
    fn descent_reaches_a_single_flip_minimum() {
        // f(s) = sᵀ G s with G = v vᵀ: minimal (0) when s ⟂ v, e.g. v = (1, 1, 1, 1).
        let g = vec![1.0; 16];
        let (s, f) = descend(&g, 4, vec![1.0; 4]);
        assert!(f.abs() < 1e-9, "f {f}, s {s:?}");
        assert_eq!(s.iter().sum::<f64>(), 0.0);
    }
}
