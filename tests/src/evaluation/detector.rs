//! A learned fake detector: the attacker encodes its own images with the
//! public encoder, publishes them with the public algorithm (its own
//! randomness), and trains a gradient-boosted classifier (`perpetual`, a
//! maintained pure-Rust GBM) to tell real from fake nonzeros by value,
//! position and context.

use ambishare_shared::{AmbiguatedCode, SupportKey};
use perpetual::booster::config::ImportanceMethod;
use perpetual::objective::Objective;
use perpetual::{Matrix, PerpetualBooster};

use super::attacks::CodeStats;
use crate::{Error, Result};

/// Features of every public nonzero, in order (map-major).
pub const FEATURES: usize = 15;

/// What each column of [`features`] is, in order (for the report).
pub const FEATURE_NAMES: [&str; FEATURES] = [
    "magnitude / map mean",
    "magnitude rank in map",
    "ln(magnitude / map min)",
    "position's activation rate",
    "logit of that rate",
    "ln(magnitude / position's mean)",
    "sign × position's usual sign",
    "map",
    "re-encoding / map mean",
    "ln(re-encoding / map mean)",
    "position's mean / map mean",
    "|position's usual sign|",
    "scheme's real share at the position",
    "scheme's publication rate at the position",
    "position",
];

/// What the attacker learns of a scheme from its own publications, per
/// (map, position) of a tile.
#[derive(Clone, Debug)]
pub struct PublicStats {
    pub maps: usize,
    pub dim: usize,
    /// How often the position holds a published nonzero.
    pub published: Vec<f32>,
    /// Of those, the share that is real: P(real | published nonzero here).
    pub real_share: Vec<f32>,
}

impl PublicStats {
    pub fn from_publications<'a>(
        publications: impl IntoIterator<Item = (&'a AmbiguatedCode, &'a SupportKey)>,
        maps: usize,
        dim: usize,
    ) -> Self {
        let n = maps * dim;
        let (mut published, mut real, mut tiles) = (vec![0f64; n], vec![0f64; n], 0f64);
        for (public, key) in publications {
            tiles += public.shape().tiles as f64;
            let nnz = public.nnz() as usize;
            for map in 0..public.shape().map_count() {
                let l = map % maps;
                let positions = &public.positions()[map * nnz..(map + 1) * nnz];
                for &p in positions {
                    published[l * dim + p as usize] += 1.0;
                }
                for &i in key.map(map) {
                    real[l * dim + positions[i as usize] as usize] += 1.0;
                }
            }
        }
        PublicStats {
            maps,
            dim,
            published: published.iter().map(|c| (c / tiles.max(1.0)) as f32).collect(),
            // Laplace smoothing: an unseen position is a coin toss.
            real_share: real.iter().zip(&published).map(|(r, p)| ((r + 1.0) / (p + 2.0)) as f32).collect(),
        }
    }
}

/// Per nonzero: magnitude relative to its map (mean, min, rank), the
/// position's activation rate and typical magnitude (from the attacker's
/// true codes), sign against the position's usual sign, the map and
/// position, how strongly a re-encoding of the public decode activates the
/// position (`reencoded`, dense, tiles × L × m), and how often the scheme
/// publishes the position and how often it is real there (`public`).
pub fn features(
    public: &AmbiguatedCode,
    stats: &CodeStats,
    scheme: &PublicStats,
    reencoded: &[f32],
) -> Vec<[f32; FEATURES]> {
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
                stats.mean_abs[s] / mean.max(1e-6),
                stats.sign_mean[s].abs(),
                scheme.real_share[s],
                scheme.published[s],
                p as f32 / stats.dim as f32,
            ]);
        }
    }
    out
}

/// Column-major f64 copy of feature rows, as `perpetual::Matrix` reads them.
fn columns(rows: &[[f32; FEATURES]]) -> Vec<f64> {
    let mut out = Vec::with_capacity(rows.len() * FEATURES);
    for f in 0..FEATURES {
        out.extend(rows.iter().map(|r| r[f] as f64));
    }
    out
}

/// How long the booster may train, and how complex it may grow.
#[derive(Clone, Copy, Debug)]
pub struct Training {
    /// perpetual's single complexity knob (0.5 .. 2 typical; higher: more trees).
    pub budget: f32,
    /// Wall-clock bound on training, seconds.
    pub timeout_s: f32,
    /// Bound on boosting rounds.
    pub iterations: usize,
    pub seed: u64,
}

impl Default for Training {
    fn default() -> Self {
        Training { budget: 0.5, timeout_s: 30.0, iterations: 2000, seed: 2026 }
    }
}

/// A gradient-boosted classifier of nonzeros (log loss): real or fake.
pub struct Detector {
    booster: PerpetualBooster,
}

impl Detector {
    /// Trains on feature rows and their labels (true: real).
    pub fn train(rows: &[[f32; FEATURES]], labels: &[bool], training: &Training) -> Result<Self> {
        if rows.len() != labels.len() || rows.is_empty() {
            return Err(Error::Other(format!("detector: {} rows for {} labels", rows.len(), labels.len())));
        }
        let data = columns(rows);
        let matrix = Matrix::new(&data, rows.len(), FEATURES);
        let y: Vec<f64> = labels.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
        let mut booster = PerpetualBooster::default()
            .set_objective(Objective::LogLoss)
            .set_budget(training.budget)
            .set_seed(training.seed)
            .set_log_iterations(0)
            .set_timeout(Some(training.timeout_s))
            .set_iteration_limit(Some(training.iterations));
        booster.fit(&matrix, &y, None, None).map_err(|e| Error::Other(format!("detector training: {e}")))?;
        Ok(Detector { booster })
    }

    /// Probability that each nonzero is real.
    pub fn predict(&self, rows: &[[f32; FEATURES]]) -> Vec<f32> {
        if rows.is_empty() {
            return Vec::new();
        }
        let data = columns(rows);
        let matrix = Matrix::new(&data, rows.len(), FEATURES);
        self.booster.predict_proba(&matrix, true, false).into_iter().map(|p| p as f32).collect()
    }

    /// The features by their share of the total split gain, largest first.
    pub fn importance(&self) -> Vec<(&'static str, f32)> {
        let gains = self.booster.calculate_feature_importance(ImportanceMethod::TotalGain, true);
        let mut out: Vec<(&'static str, f32)> =
            FEATURE_NAMES.iter().enumerate().map(|(i, &name)| (name, gains.get(&i).copied().unwrap_or(0.0))).collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    /// Boosting rounds the training kept.
    pub fn trees(&self) -> usize {
        self.booster.get_prediction_trees().len()
    }
}

/// Share of rows whose prediction (>= 1/2: real) matches its label.
pub fn accuracy(probabilities: &[f32], labels: &[bool]) -> f64 {
    let ok = probabilities.iter().zip(labels).filter(|(p, y)| (**p >= 0.5) == **y).count();
    ok as f64 / labels.len().max(1) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn learns_a_rule_no_single_feature_shows() {
        // Real when feature 0 > 0.5 and feature 3 < 0.3 (an interaction), 10% label noise.
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let sample = |rng: &mut ChaCha20Rng| -> ([f32; FEATURES], bool) {
            let row: [f32; FEATURES] = std::array::from_fn(|_| rng.random::<f32>());
            let real = (row[0] > 0.5 && row[3] < 0.3) != (rng.random::<f64>() < 0.1);
            (row, real)
        };
        let (rows, labels): (Vec<_>, Vec<_>) = (0..4000).map(|_| sample(&mut rng)).unzip();
        let training = Training { timeout_s: 20.0, ..Training::default() };
        let detector = Detector::train(&rows, &labels, &training).unwrap();
        let (test, truth): (Vec<_>, Vec<_>) = (0..2000).map(|_| sample(&mut rng)).unzip();
        let acc = accuracy(&detector.predict(&test), &truth);
        // The best possible is 90%; always answering "fake" gets about 76%.
        assert!(acc > 0.85, "accuracy {acc:.3} with {} trees", detector.trees());
        // The rule uses features 0 and 3 only: they carry most of the gain.
        let importance = detector.importance();
        let top: Vec<&str> = importance.iter().take(2).map(|(name, _)| *name).collect();
        assert!(top.contains(&FEATURE_NAMES[0]) && top.contains(&FEATURE_NAMES[3]), "{importance:?}");
        let total: f32 = importance.iter().map(|(_, g)| g).sum();
        assert!((total - 1.0).abs() < 1e-3, "{importance:?}");
        assert!(Detector::train(&rows[..3], &labels[..2], &training).is_err());
    }

    #[test]
    fn public_stats_count_real_shares() {
        use ambishare_shared::{CodeShape, FakeModel, SparseCode, ValueCodec, ambiguate};
        // Positions 0..8 always real in a map of 32: fakes land elsewhere.
        let shape = CodeShape::new(4, 1, 32).unwrap();
        let dense: Vec<f32> = (0..shape.dense_len()).map(|i| if i % 32 < 8 { 10.0 + i as f32 } else { 0.1 }).collect();
        let code = SparseCode::top_k(&dense, shape, 8).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let pubs: Vec<_> =
            (0..10).map(|_| ambiguate(&code, 8, ValueCodec::F16, &FakeModel::paper(), &mut rng).unwrap()).collect();
        let s = PublicStats::from_publications(pubs.iter().map(|(p, k)| (p, k)), 1, 32);
        assert!(s.real_share[..8].iter().all(|&r| r > 0.9), "{:?}", &s.real_share[..8]);
        assert!(s.real_share[8..].iter().all(|&r| r < 0.5), "{:?}", &s.real_share[8..]);
        assert!(s.published[..8].iter().all(|&p| (p - 1.0).abs() < 1e-6));
    }
}
