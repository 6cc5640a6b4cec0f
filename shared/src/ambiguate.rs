//! Ambiguation: fake nonzeros that look like the real ones, and the quantized
//! code the public sees.
//!
//! Each code-map of a true code holds k nonzeros, all larger in magnitude than
//! the discarded values. If the dense values were N(0, σ²), the kept ones would
//! follow the complementary truncated Gaussian (CTG): |v| > λ, with λ the
//! smallest kept magnitude and P(|v| > λ) = k/m, so σ = λ / (√2 erfc⁻¹(k/m)).
//! The paper's reference code (`ambiguate`/`generate_CTG`) draws fakes from
//! that CTG at uniformly random zero positions ([`FakeModel::paper`]).
//!
//! A trained encoder is not that Gaussian: its kept values have heavier tails
//! than σ from k/m implies, and some positions are active far more often than
//! others, so such fakes are told apart by size and by place. The default
//! ([`FakeModel::fitted`]) fits σ to the real values of each map (second
//! moment of the Gaussian tail above λ) and draws fake positions in proportion
//! to how often the model activates them (from the manifest). Either way real
//! and fake values are quantized together by one rule, so the format tells
//! them apart by nothing.

use half::f16;
use rand::{CryptoRng, Rng, seq::index::sample};
use statrs::function::erf::{erfc, erfc_inv};

use crate::code::{CodeShape, SparseCode};
use crate::error::{Error, Result};
use crate::ids::Tier;
use crate::key::SupportKey;

/// How the nonzero values of an ambiguated code are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueCodec {
    /// 1 byte a value: sign bit and a 7-bit level on a linear scale between
    /// the map's smallest and largest magnitude (2 × f16 a map).
    Q8,
    /// IEEE half precision, 2 bytes a value.
    F16,
}

impl ValueCodec {
    pub(crate) fn tag(self) -> u8 {
        match self {
            ValueCodec::Q8 => 1,
            ValueCodec::F16 => 2,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(ValueCodec::Q8),
            2 => Some(ValueCodec::F16),
            _ => None,
        }
    }
}

impl std::str::FromStr for ValueCodec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "q8" => Ok(ValueCodec::Q8),
            "f16" => Ok(ValueCodec::F16),
            _ => Err(Error::invalid("value codec", "expected `q8` or `f16`")),
        }
    }
}

/// Quantized nonzero values, in the order of the code's positions.
#[derive(Clone, Debug, PartialEq)]
pub enum QuantizedValues {
    Q8 {
        /// Per map: smallest and largest magnitude.
        ranges: Vec<[f16; 2]>,
        /// Per value: bit 7 the sign (set: negative), bits 0-6 the level.
        levels: Vec<u8>,
    },
    F16(Vec<f16>),
}

const Q8_LEVELS: f32 = 127.0;
/// The largest q8 level (bits 0-6 of a value byte).
pub(crate) const Q8_MAX_LEVEL: u8 = 127;

/// Quantizes one map's values on the q8 scale between their smallest and
/// largest magnitude: appends one byte a value (sign bit 7, level bits 0-6)
/// and returns the range.
pub(crate) fn q8_map(map: &[f32], levels: &mut Vec<u8>) -> Result<[f16; 2]> {
    let (min, max) = map.iter().fold((f32::INFINITY, 0.0f32), |(lo, hi), v| (lo.min(v.abs()), hi.max(v.abs())));
    let lo = f16::from_f32(min).max(f16::from_bits(1)); // never zero
    let hi = f16::from_f32(max).max(lo);
    if !hi.is_finite() {
        return Err(Error::invalid("code values", "outside the range of f16"));
    }
    let (lo32, span) = (lo.to_f32(), hi.to_f32() - lo.to_f32());
    for &v in map {
        let level =
            if span > 0.0 { ((v.abs() - lo32) / span * Q8_LEVELS).round().clamp(0.0, Q8_LEVELS) as u8 } else { 0 };
        levels.push(level | if v < 0.0 { 0x80 } else { 0 });
    }
    Ok([lo, hi])
}

/// The value of a q8 byte in a map of range `[lo, hi]`.
pub(crate) fn q8_value(range: [f16; 2], byte: u8) -> f32 {
    let (lo, hi) = (range[0].to_f32(), range[1].to_f32());
    let mag = lo + (byte & 0x7f) as f32 * (hi - lo) / Q8_LEVELS;
    if byte & 0x80 != 0 { -mag } else { mag }
}

impl QuantizedValues {
    fn quantize(codec: ValueCodec, values: &[f32], nnz: usize) -> Result<Self> {
        if values.iter().any(|v| !v.is_finite() || *v == 0.0) {
            return Err(Error::invalid("code values", "must be finite and nonzero"));
        }
        match codec {
            ValueCodec::F16 => {
                let out: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                if out.iter().any(|h| !h.is_finite() || h.to_f32() == 0.0) {
                    return Err(Error::invalid("code values", "outside the range of f16"));
                }
                Ok(QuantizedValues::F16(out))
            }
            ValueCodec::Q8 => {
                let mut ranges = Vec::with_capacity(values.len() / nnz.max(1));
                let mut levels = Vec::with_capacity(values.len());
                for map in values.chunks(nnz.max(1)) {
                    ranges.push(q8_map(map, &mut levels)?);
                }
                Ok(QuantizedValues::Q8 { ranges, levels })
            }
        }
    }

    pub fn codec(&self) -> ValueCodec {
        match self {
            QuantizedValues::Q8 { .. } => ValueCodec::Q8,
            QuantizedValues::F16(_) => ValueCodec::F16,
        }
    }

    fn len(&self) -> usize {
        match self {
            QuantizedValues::Q8 { levels, .. } => levels.len(),
            QuantizedValues::F16(v) => v.len(),
        }
    }

    /// Value `i` (of map `i / nnz`), dequantized.
    fn get(&self, i: usize, nnz: usize) -> f32 {
        match self {
            QuantizedValues::F16(v) => v[i].to_f32(),
            QuantizedValues::Q8 { ranges, levels } => q8_value(ranges[i / nnz], levels[i]),
        }
    }
}

/// What the public sees of one image: `nnz` = k + k_n nonzeros in every
/// code-map, real and fake alike, with quantized values.
#[derive(Clone, Debug, PartialEq)]
pub struct AmbiguatedCode {
    version: CodeVersion,
    shape: CodeShape,
    nnz: u16,
    positions: Vec<u16>,
    values: QuantizedValues,
}

/// Which scheme made a public code; its format version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeVersion {
    /// Fakes and sign flips from fresh randomness; the key lists the real
    /// nonzeros and their flips ([`SupportKey`]).
    V2,
    /// Fakes and sign flips derived from the entry's secret, q8 on the real
    /// values' range; the key is the secret ([`crate::derived::DerivedKey`]).
    V3,
}

impl CodeVersion {
    pub fn number(self) -> u8 {
        match self {
            CodeVersion::V2 => 2,
            CodeVersion::V3 => 3,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            2 => Some(CodeVersion::V2),
            3 => Some(CodeVersion::V3),
            _ => None,
        }
    }
}

impl AmbiguatedCode {
    /// Builds from parts, checking every invariant (used by the format reader).
    pub fn from_parts(shape: CodeShape, nnz: u16, positions: Vec<u16>, values: QuantizedValues) -> Result<Self> {
        let total = shape.map_count() * nnz as usize;
        if values.len() != total {
            return Err(Error::malformed("ambiguated code", "wrong number of values"));
        }
        if let QuantizedValues::Q8 { ranges, .. } = &values {
            if ranges.len() != shape.map_count() {
                return Err(Error::malformed("ambiguated code", "wrong number of value ranges"));
            }
            if ranges.iter().any(|[lo, hi]| !(lo.is_finite() && hi.is_finite() && lo.to_f32() > 0.0 && lo <= hi)) {
                return Err(Error::malformed("ambiguated code", "value range not finite, positive and ordered"));
            }
        }
        if let QuantizedValues::F16(v) = &values
            && v.iter().any(|h| !h.is_finite() || h.to_f32() == 0.0)
        {
            return Err(Error::malformed("ambiguated code", "value not finite or zero"));
        }
        let code = AmbiguatedCode { version: CodeVersion::V2, shape, nnz, positions, values };
        // Positions: counts, order and range, checked once by SparseCode.
        SparseCode::from_parts(shape, nnz, code.positions.clone(), vec![1.0; total])
            .map_err(|e| Error::malformed("ambiguated code", e.to_string()))?;
        Ok(code)
    }

    /// The same code marked as made by `version` (v3 holds q8 values only).
    pub fn with_version(mut self, version: CodeVersion) -> Result<Self> {
        if version == CodeVersion::V3 && self.codec() != ValueCodec::Q8 {
            return Err(Error::malformed("ambiguated code", "version 3 stores q8 values only"));
        }
        self.version = version;
        Ok(self)
    }

    pub fn version(&self) -> CodeVersion {
        self.version
    }

    pub fn shape(&self) -> CodeShape {
        self.shape
    }

    /// Nonzeros per code-map (k').
    pub fn nnz(&self) -> u16 {
        self.nnz
    }

    pub fn positions(&self) -> &[u16] {
        &self.positions
    }

    pub fn quantized(&self) -> &QuantizedValues {
        &self.values
    }

    pub fn codec(&self) -> ValueCodec {
        self.values.codec()
    }

    /// Dequantized values in position order.
    pub fn values(&self) -> Vec<f32> {
        (0..self.values.len()).map(|i| self.values.get(i, self.nnz as usize)).collect()
    }

    /// Every nonzero, real and fake: what decodes to the public (noisy) image.
    pub fn to_sparse(&self) -> Result<SparseCode> {
        SparseCode::from_parts(self.shape, self.nnz, self.positions.clone(), self.values())
    }
}

/// How the σ of the fakes' CTG is chosen, per code-map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeSigma {
    /// σ = λ / (√2 erfc⁻¹(k/m)), as if the dense code were Gaussian (the paper's choice).
    FromSparsity,
    /// σ whose Gaussian tail above λ has the real values' mean square.
    Fitted,
}

/// How the public code is made: how fake nonzeros are drawn, and whether the
/// real values' signs are scrambled.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeModel {
    pub sigma: FakeSigma,
    /// Weights over the positions of each code-map of a tile (maps × dim),
    /// or None for uniformly random zero positions.
    pub position_weights: Option<Vec<f32>>,
    /// Flip the sign of each real value with probability 1/2 and keep the
    /// flips in the support key (one bit per real value). Without it, the
    /// decode of every public nonzero shows the image through the fakes'
    /// noise (docs/EVALUATION.md); with it, published signs carry nothing.
    pub scramble_signs: bool,
}

impl FakeModel {
    /// The reference code's choice: σ from k/m, uniform positions, signs kept.
    pub fn paper() -> Self {
        FakeModel { sigma: FakeSigma::FromSparsity, position_weights: None, scramble_signs: false }
    }

    /// σ fitted to each map's real values; positions drawn by how often the
    /// model activates them: weight r/(1-r) for activation rate r, which makes
    /// P(real | position in the support) equal for every position whose rate
    /// allows it; real values' signs scrambled.
    pub fn fitted(position_rates: Option<&[f32]>, maps: u16, dim: u16) -> Result<Self> {
        let position_weights = match position_rates {
            None => None,
            Some(rates) => {
                if rates.len() != maps as usize * dim as usize || rates.iter().any(|r| !r.is_finite()) {
                    return Err(Error::Model(format!("position rates must be {maps}×{dim} finite numbers")));
                }
                Some(rates.iter().map(|&r| (r.clamp(1e-4, 0.999) / (1.0 - r.clamp(1e-4, 0.999))).min(1e3)).collect())
            }
        };
        Ok(FakeModel { sigma: FakeSigma::Fitted, position_weights, scramble_signs: true })
    }
}

impl FakeModel {
    /// The default for a model: σ fitted per map, positions weighted by the
    /// activation rates in the manifest's `value_distribution.position_rate`
    /// (L lists of m numbers) when present, else uniform.
    pub fn for_manifest(manifest: &crate::model::Manifest) -> Result<Self> {
        let rates = manifest.value_distribution.get("position_rate").map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .flat_map(|row| row.as_array().into_iter().flatten())
                .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect::<Vec<f32>>()
        });
        FakeModel::fitted(rates.as_deref(), manifest.maps, manifest.dim)
    }
}

/// Adds `k_fake` fake nonzeros to every code-map of `code` and quantizes.
///
/// Returns the public code and the full support key (which of each map's
/// k + k_fake nonzeros are real). `rng` must be a CSPRNG: the fakes' positions
/// and values are the whole secret.
pub fn ambiguate<R: Rng + CryptoRng>(
    code: &SparseCode,
    k_fake: u16,
    codec: ValueCodec,
    fakes: &FakeModel,
    rng: &mut R,
) -> Result<(AmbiguatedCode, SupportKey)> {
    let shape = code.shape();
    let (m, k) = (shape.dim as usize, code.nnz() as usize);
    let kn = k_fake as usize;
    if k == 0 || k + kn > m {
        return Err(Error::invalid("ambiguation", format!("need 1 <= k and k + k_fake <= {m}")));
    }
    if let Some(w) = &fakes.position_weights
        && w.len() != shape.maps as usize * m
    {
        return Err(Error::Model("position weights do not match the code's maps and dims".into()));
    }
    let nnz = k + kn;
    // P(|v| > λ) = k/m fixes σ relative to λ.
    let tail = k as f64 / m as f64;
    let sparsity_sigma_over_lambda = 1.0 / (std::f64::consts::SQRT_2 * erfc_inv(tail));

    let mut positions = Vec::with_capacity(shape.map_count() * nnz);
    let mut values = Vec::with_capacity(shape.map_count() * nnz);
    let mut real_indices = Vec::with_capacity(shape.map_count() * k);
    let mut flips = Vec::with_capacity(if fakes.scramble_signs { shape.map_count() * k } else { 0 });
    let mut is_real = vec![false; m];
    let mut value_at = vec![0.0f32; m];
    let mut zeros = Vec::with_capacity(m);
    let mut keyed: Vec<(f64, u16)> = Vec::with_capacity(m);
    for map in 0..shape.map_count() {
        let (pos, val) = code.map(map);
        is_real.fill(false);
        for (&p, &v) in pos.iter().zip(val) {
            is_real[p as usize] = true;
            value_at[p as usize] = v;
        }
        zeros.clear();
        zeros.extend((0..m as u16).filter(|&p| !is_real[p as usize]));
        let lambda = val.iter().fold(f32::INFINITY, |a, v| a.min(v.abs())) as f64;
        let sigma = lambda
            * match fakes.sigma {
                FakeSigma::FromSparsity => sparsity_sigma_over_lambda,
                FakeSigma::Fitted => fit_tail_sigma(val, lambda).unwrap_or(sparsity_sigma_over_lambda),
            };
        let mut fake = vec![false; m];
        let chosen: Vec<u16> = match &fakes.position_weights {
            None => sample(rng, zeros.len(), kn).into_iter().map(|i| zeros[i]).collect(),
            Some(weights) => {
                // Weighted sampling without replacement (Efraimidis-Spirakis): smallest -ln(u)/w.
                let w = &weights[(map % shape.maps as usize) * m..][..m];
                keyed.clear();
                keyed.extend(zeros.iter().map(|&p| {
                    let u: f64 = 1.0 - rng.random::<f64>();
                    (-u.ln() / w[p as usize].max(1e-6) as f64, p)
                }));
                if kn > 0 {
                    keyed.select_nth_unstable_by(kn - 1, |a, b| a.0.total_cmp(&b.0));
                }
                keyed[..kn].iter().map(|&(_, p)| p).collect()
            }
        };
        for p in chosen {
            let p = p as usize;
            fake[p] = true;
            value_at[p] = sample_ctg(rng, lambda, sigma) as f32;
        }
        let mut index = 0u16;
        for p in 0..m {
            if is_real[p] || fake[p] {
                positions.push(p as u16);
                let mut v = value_at[p];
                if is_real[p] {
                    real_indices.push(index);
                    if fakes.scramble_signs {
                        let flip = rng.random::<bool>();
                        flips.push(flip);
                        if flip {
                            v = -v;
                        }
                    }
                }
                values.push(v);
                index += 1;
            }
        }
    }
    let quantized = QuantizedValues::quantize(codec, &values, nnz)?;
    let public = AmbiguatedCode::from_parts(shape, nnz as u16, positions, quantized)?;
    let key = SupportKey::from_parts(Tier::Full, shape.tiles, shape.maps, nnz as u16, k as u16, real_indices)?;
    let key = if fakes.scramble_signs { key.with_sign_flips(flips)? } else { key };
    Ok((public, key))
}

/// σ/λ of the zero-mean Gaussian whose tail above λ has the mean square of
/// `values` (all of magnitude >= λ): solves s² + s φ(1/s) / Q(1/s) = E[(v/λ)²].
fn fit_tail_sigma(values: &[f32], lambda: f64) -> Option<f64> {
    if lambda.is_nan() || lambda <= 0.0 || values.is_empty() {
        return None;
    }
    let m2 = values.iter().map(|v| (v.abs() as f64 / lambda).powi(2)).sum::<f64>() / values.len() as f64;
    let tail_m2 = |s: f64| {
        let t = 1.0 / s;
        let q = 0.5 * erfc(t / std::f64::consts::SQRT_2);
        let phi = (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
        if q <= 0.0 { 1.0 } else { s * s + s * phi / q }
    };
    // tail_m2 grows from 1 (s → 0) without bound: bisect in log space.
    let (mut lo, mut hi) = (1e-3f64, 1e3f64);
    if m2 <= tail_m2(lo) {
        return Some(lo);
    }
    for _ in 0..80 {
        let mid = (lo * hi).sqrt();
        if tail_m2(mid) < m2 { lo = mid } else { hi = mid }
    }
    let s = (lo * hi).sqrt();
    s.is_finite().then_some(s)
}

/// One draw of the complementary truncated Gaussian: |v| > λ, random sign.
fn sample_ctg<R: Rng>(rng: &mut R, lambda: f64, sigma: f64) -> f64 {
    let s2 = sigma * std::f64::consts::SQRT_2;
    let tail = erfc(lambda / s2);
    // u in (0, 1]: p in (0, tail], so |v| = s2 erfc⁻¹(p) >= λ.
    let u: f64 = 1.0 - rng.random::<f64>();
    let mag = (s2 * erfc_inv(u * tail)).max(lambda);
    let mag = if mag.is_finite() { mag } else { lambda };
    if rng.random::<bool>() { -mag } else { mag }
}

/// An attacker's blind guess: k of each map's nonzeros picked uniformly.
pub fn random_guess<R: Rng>(code: &AmbiguatedCode, k: u16, rng: &mut R) -> Result<SparseCode> {
    if k > code.nnz() {
        return Err(Error::invalid("guess", "k larger than the code's nonzeros"));
    }
    let mut indices = Vec::with_capacity(code.shape().map_count() * k as usize);
    for _ in 0..code.shape().map_count() {
        let mut pick: Vec<u16> = sample(rng, code.nnz() as usize, k as usize).into_iter().map(|i| i as u16).collect();
        pick.sort_unstable();
        indices.extend(pick);
    }
    code.to_sparse()?.select(k, &indices)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// A top-k code of standard normal dense values (Box-Muller), for tests here and in `derived`.
    pub(crate) fn gaussian_code(seed: u64, shape: CodeShape, k: u16) -> SparseCode {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let dense: Vec<f32> = (0..shape.dense_len())
            .map(|_| {
                let u: f64 = 1.0 - rng.random::<f64>();
                let v: f64 = rng.random();
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect();
        SparseCode::top_k(&dense, shape, k).unwrap()
    }

    #[test]
    fn fakes_lie_above_the_threshold_at_zero_positions() {
        let shape = CodeShape::new(2, 4, 256).unwrap();
        let code = gaussian_code(1, shape, 64);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (public, key) = ambiguate(&code, 64, ValueCodec::F16, &FakeModel::paper(), &mut rng).unwrap();
        assert_eq!(public.nnz(), 128);
        let values = public.values();
        for map in 0..shape.map_count() {
            let (pos, val) = code.map(map);
            let lambda = val.iter().fold(f32::INFINITY, |a, v| a.min(v.abs()));
            let real: Vec<u16> = key.map(map).iter().map(|&i| public.positions()[map * 128 + i as usize]).collect();
            assert_eq!(real, pos);
            for i in 0..128 {
                assert!(values[map * 128 + i].abs() >= lambda * 0.999);
            }
        }
    }

    #[test]
    fn fake_magnitudes_follow_the_ctg_of_gaussian_codes() {
        // With Gaussian dense codes the real and fake magnitudes share one law:
        // compare their means over many maps (within 5%).
        let shape = CodeShape::new(64, 16, 256).unwrap();
        let code = gaussian_code(3, shape, 64);
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (public, key) = ambiguate(&code, 64, ValueCodec::F16, &FakeModel::paper(), &mut rng).unwrap();
        let values = public.values();
        let (mut real, mut fake) = (0.0f64, 0.0f64);
        for map in 0..shape.map_count() {
            let reals = key.map(map);
            for i in 0..128u16 {
                let v = values[map * 128 + i as usize].abs() as f64;
                if reals.binary_search(&i).is_ok() { real += v } else { fake += v }
            }
        }
        let ratio = real / fake;
        assert!((0.95..1.05).contains(&ratio), "mean |real| / mean |fake| = {ratio}");
    }

    #[test]
    fn q8_levels_stay_nonzero_and_close() {
        let shape = CodeShape::new(1, 8, 256).unwrap();
        let code = gaussian_code(5, shape, 64);
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let (public, key) = ambiguate(&code, 64, ValueCodec::Q8, &FakeModel::paper(), &mut rng).unwrap();
        let back = key.disambiguate(&public).unwrap();
        assert_eq!(back.positions(), code.positions());
        let QuantizedValues::Q8 { ranges, .. } = public.quantized() else { panic!() };
        for (map, [lo, hi]) in ranges.iter().enumerate() {
            let step = (hi.to_f32() - lo.to_f32()) / 127.0;
            let (_, orig) = code.map(map);
            let (_, got) = back.map(map);
            for (a, b) in orig.iter().zip(got) {
                assert_eq!(a.signum(), b.signum());
                assert!((a - b).abs() <= step * 0.5 + lo.to_f32() * 1e-3 + 1e-6, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn fitted_sigma_matches_heavy_tailed_reals() {
        // Laplace-like dense values: heavier tails than a Gaussian. With σ fitted
        // to the reals the fakes' mean square matches; with σ from k/m it falls short.
        let shape = CodeShape::new(32, 16, 256).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let dense: Vec<f32> = (0..shape.dense_len())
            .map(|_| {
                let u: f64 = rng.random::<f64>() - 0.5;
                (-(1.0 - 2.0 * u.abs()).max(1e-12).ln() * u.signum()) as f32
            })
            .collect();
        let code = SparseCode::top_k(&dense, shape, 64).unwrap();
        let mean_sq_ratio = |model: &FakeModel| {
            let mut rng = ChaCha20Rng::seed_from_u64(12);
            let (public, key) = ambiguate(&code, 64, ValueCodec::F16, model, &mut rng).unwrap();
            let values = public.values();
            let (mut real, mut fake) = (0.0f64, 0.0f64);
            for map in 0..shape.map_count() {
                for i in 0..128u16 {
                    let v = (values[map * 128 + i as usize] as f64).powi(2);
                    if key.map(map).binary_search(&i).is_ok() { real += v } else { fake += v }
                }
            }
            real / fake
        };
        let fitted = mean_sq_ratio(&FakeModel::fitted(None, 16, 256).unwrap());
        let paper = mean_sq_ratio(&FakeModel::paper());
        assert!((0.9..1.1).contains(&fitted), "fitted: real/fake mean square {fitted}");
        assert!(paper > 1.2, "paper: real/fake mean square {paper}");
    }

    #[test]
    fn weighted_positions_follow_activation_rates() {
        // Map 0 activates positions 0..64 always: fakes must avoid... nothing is left there,
        // so they go where rates are highest among the zeros.
        let shape = CodeShape::new(1, 1, 256).unwrap();
        let mut rates = vec![0.01f32; 256];
        rates[64..96].iter_mut().for_each(|r| *r = 0.5);
        let model = FakeModel::fitted(Some(&rates), 1, 256).unwrap();
        let dense: Vec<f32> = (0..256).map(|i| if i < 64 { 5.0 + i as f32 } else { 0.01 }).collect();
        let code = SparseCode::top_k(&dense, shape, 64).unwrap();
        let mut hits = 0;
        for seed in 0..50 {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let (public, key) = ambiguate(&code, 16, ValueCodec::F16, &model, &mut rng).unwrap();
            let reals = key.map(0);
            for (i, &p) in public.positions().iter().enumerate() {
                if reals.binary_search(&(i as u16)).is_err() && (64..96).contains(&p) {
                    hits += 1;
                }
            }
        }
        // Weight 1 on 32 positions against ~0.01 on 160: nearly all fakes land in 64..96.
        assert!(hits > 50 * 16 * 8 / 10, "{hits} of {} fakes in the active band", 50 * 16);
        assert!(FakeModel::fitted(Some(&rates[..10]), 1, 256).is_err());
    }

    #[test]
    fn refuses_too_many_fakes() {
        let shape = CodeShape::new(1, 1, 8).unwrap();
        let code = SparseCode::top_k(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], shape, 4).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        assert!(ambiguate(&code, 5, ValueCodec::Q8, &FakeModel::paper(), &mut rng).is_err());
        assert!(ambiguate(&code, 4, ValueCodec::Q8, &FakeModel::paper(), &mut rng).is_ok());
    }

    #[test]
    fn random_guess_keeps_k() {
        let shape = CodeShape::new(1, 2, 64).unwrap();
        let code = gaussian_code(7, shape, 16);
        let mut rng = ChaCha20Rng::seed_from_u64(8);
        let (public, _) = ambiguate(&code, 16, ValueCodec::Q8, &FakeModel::paper(), &mut rng).unwrap();
        let guess = random_guess(&public, 16, &mut rng).unwrap();
        assert_eq!(guess.nnz(), 16);
    }
}
