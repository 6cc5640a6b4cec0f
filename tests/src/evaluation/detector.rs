//! A learned fake detector: the attacker encodes its own images with the
//! public encoder, ambiguates them with the public algorithm (its own
//! randomness), and trains a classifier to tell real from fake nonzeros by
//! value, position and context. A two-layer perceptron (sigmoid output,
//! binary cross-entropy, Adam): small enough to train here in seconds, and
//! no deep-learning framework is worth its build time for it.

use ambishare_shared::AmbiguatedCode;
use rand::Rng;
use rand::seq::SliceRandom;

use super::attacks::CodeStats;

/// Features of every public nonzero, in order (map-major).
pub const FEATURES: usize = 10;

/// Per nonzero: magnitude relative to its map (mean, min, rank), the
/// position's activation rate and typical magnitude, sign against the
/// position's usual sign, the map, and how strongly a re-encoding of the
/// public decode activates the position (`reencoded`, dense, tiles × L × m).
pub fn features(public: &AmbiguatedCode, stats: &CodeStats, reencoded: &[f32]) -> Vec<[f32; FEATURES]> {
    let n = public.nnz() as usize;
    let m = public.shape().dim as usize;
    let values = public.values();
    let mut out = Vec::with_capacity(values.len());
    for map in 0..public.shape().map_count() {
        let l = map % stats.maps;
        let vals = &values[map * n..(map + 1) * n];
        let mags: Vec<f32> = vals.iter().map(|v| v.abs()).collect();
        let mean = mags.iter().sum::<f32>() / n as f32;
        let min = mags.iter().cloned().fold(f32::INFINITY, f32::min);
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| mags[b].total_cmp(&mags[a]));
        let mut rank = vec![0f32; n];
        for (r, &i) in order.iter().enumerate() {
            rank[i] = r as f32 / n as f32;
        }
        let re: Vec<f32> =
            (0..n).map(|i| reencoded[map * m + public.positions()[map * n + i] as usize].abs()).collect();
        let re_mean = re.iter().sum::<f32>() / n as f32 + 1e-6;
        for i in 0..n {
            let p = public.positions()[map * n + i] as usize;
            let s = l * stats.dim + p;
            let rate = stats.rate[s].clamp(1e-4, 1.0 - 1e-4);
            out.push([
                mags[i] / mean,
                rank[i],
                (mags[i] / min).ln(),
                rate,
                (rate / (1.0 - rate)).ln() / 4.0,
                (mags[i] / stats.mean_abs[s].max(1e-6)).ln(),
                vals[i].signum() * stats.sign_mean[s],
                l as f32 / stats.maps as f32,
                re[i] / re_mean,
                (re[i] / re_mean).ln().max(-5.0),
            ]);
        }
    }
    out
}

/// A 2-layer perceptron: FEATURES → H → H → 1.
pub struct Detector {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    w3: Vec<f32>,
    b3: f32,
    /// Feature standardization (mean, std).
    norm: Vec<(f32, f32)>,
}

const H: usize = 32;

struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    fn new(n: usize) -> Self {
        Adam { m: vec![0.0; n], v: vec![0.0; n], t: 0 }
    }

    fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.t += 1;
        let (b1, b2) = (0.9f32, 0.999f32);
        let (c1, c2) = (1.0 - b1.powi(self.t), 1.0 - b2.powi(self.t));
        for i in 0..params.len() {
            self.m[i] = b1 * self.m[i] + (1.0 - b1) * grads[i];
            self.v[i] = b2 * self.v[i] + (1.0 - b2) * grads[i] * grads[i];
            params[i] -= lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + 1e-8);
        }
    }
}

impl Detector {
    /// Trains on labelled samples (true: real) for `epochs` passes of mini-batches.
    pub fn train<R: Rng>(samples: &[([f32; FEATURES], bool)], epochs: usize, rng: &mut R) -> Self {
        let n = samples.len().max(1) as f32;
        let norm: Vec<(f32, f32)> = (0..FEATURES)
            .map(|f| {
                let mean = samples.iter().map(|s| s.0[f]).sum::<f32>() / n;
                let var = samples.iter().map(|s| (s.0[f] - mean).powi(2)).sum::<f32>() / n;
                (mean, var.sqrt().max(1e-6))
            })
            .collect();
        let mut init = |len: usize, fan_in: usize| -> Vec<f32> {
            let s = (2.0 / fan_in as f32).sqrt();
            (0..len).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * s).collect()
        };
        let mut d = Detector {
            w1: init(FEATURES * H, FEATURES),
            b1: vec![0.0; H],
            w2: init(H * H, H),
            b2: vec![0.0; H],
            w3: init(H, H),
            b3: 0.0,
            norm,
        };
        let (mut o1, mut o2, mut o3) = (Adam::new(FEATURES * H + H), Adam::new(H * H + H), Adam::new(H + 1));
        let mut order: Vec<usize> = (0..samples.len()).collect();
        const BATCH: usize = 256;
        for _ in 0..epochs {
            order.shuffle(rng);
            for batch in order.chunks(BATCH) {
                let mut g1 = vec![0f32; FEATURES * H + H];
                let mut g2 = vec![0f32; H * H + H];
                let mut g3 = vec![0f32; H + 1];
                for &i in batch {
                    let (x, label) = (d.normalize(&samples[i].0), samples[i].1);
                    let (h1, h2, p) = d.forward(&x);
                    // d(BCE)/d(logit) = p - y.
                    let dz3 = p - if label { 1.0 } else { 0.0 };
                    let mut dh2 = [0f32; H];
                    for j in 0..H {
                        g3[j] += dz3 * h2[j];
                        dh2[j] = if h2[j] > 0.0 { dz3 * d.w3[j] } else { 0.0 };
                    }
                    g3[H] += dz3;
                    let mut dh1 = [0f32; H];
                    for j in 0..H {
                        for i2 in 0..H {
                            g2[j * H + i2] += dh2[j] * h1[i2];
                            dh1[i2] += dh2[j] * d.w2[j * H + i2];
                        }
                        g2[H * H + j] += dh2[j];
                    }
                    for j in 0..H {
                        let dz1 = if h1[j] > 0.0 { dh1[j] } else { 0.0 };
                        for f in 0..FEATURES {
                            g1[j * FEATURES + f] += dz1 * x[f];
                        }
                        g1[FEATURES * H + j] += dz1;
                    }
                }
                let scale = 1.0 / batch.len() as f32;
                for g in g1.iter_mut().chain(g2.iter_mut()).chain(g3.iter_mut()) {
                    *g *= scale;
                }
                let lr = 2e-3;
                let mut p1: Vec<f32> = d.w1.iter().chain(&d.b1).cloned().collect();
                o1.step(&mut p1, &g1, lr);
                d.w1.copy_from_slice(&p1[..FEATURES * H]);
                d.b1.copy_from_slice(&p1[FEATURES * H..]);
                let mut p2: Vec<f32> = d.w2.iter().chain(&d.b2).cloned().collect();
                o2.step(&mut p2, &g2, lr);
                d.w2.copy_from_slice(&p2[..H * H]);
                d.b2.copy_from_slice(&p2[H * H..]);
                let mut p3: Vec<f32> = d.w3.iter().cloned().chain([d.b3]).collect();
                o3.step(&mut p3, &g3, lr);
                d.w3.copy_from_slice(&p3[..H]);
                d.b3 = p3[H];
            }
        }
        d
    }

    fn normalize(&self, x: &[f32; FEATURES]) -> [f32; FEATURES] {
        let mut out = [0f32; FEATURES];
        for f in 0..FEATURES {
            out[f] = (x[f] - self.norm[f].0) / self.norm[f].1;
        }
        out
    }

    fn forward(&self, x: &[f32; FEATURES]) -> ([f32; H], [f32; H], f32) {
        // One ReLU layer: out[j] = max(0, b[j] + w[j, ·] · input).
        fn layer<const N: usize>(w: &[f32], b: &[f32], input: &[f32; N]) -> [f32; H] {
            std::array::from_fn(|j| {
                let z = b[j] + w[j * N..(j + 1) * N].iter().zip(input).map(|(w, x)| w * x).sum::<f32>();
                z.max(0.0)
            })
        }
        let h1 = layer(&self.w1, &self.b1, x);
        let h2 = layer(&self.w2, &self.b2, &h1);
        let z3 = self.b3 + (0..H).map(|j| self.w3[j] * h2[j]).sum::<f32>();
        (h1, h2, 1.0 / (1.0 + (-z3).exp()))
    }

    /// Probability that the nonzero is real.
    pub fn predict(&self, x: &[f32; FEATURES]) -> f32 {
        self.forward(&self.normalize(x)).2
    }
}
