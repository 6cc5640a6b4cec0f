//! Format v3: fakes and sign flips derived from a secret, and 32-byte keys.
//!
//! Why: with fresh randomness per publication, an image published twice
//! gives two codes whose common nonzeros are nearly all real. Here every
//! choice comes from the entry's secret, itself derived from the owner's
//! master secret and a digest of the true quantized code, so the same image
//! gives a byte-identical public code and a re-publication adds nothing.
//!
//! Derivation (HKDF-SHA256 and HMAC-SHA256 from ring):
//!
//! ```text
//! tag    = HMAC(HKDF(master, "tag"), digest of model, k_fake, bands and the true q8 code)
//! S      = HKDF(salt = tag, ikm = master, "entry")        the full key
//! K_last = S, K_{i-1} = HKDF(K_i, "band")                  one secret per band
//! cell(K_i, map, position) = HMAC(K_i, map || position)  → 16 "pass" bytes and a flip bit
//! ```
//!
//! Bands split each map's reals by rank: band 0 is the `bands[0]` largest
//! (the smallest preview), band i the reals of rank `bands[i-1]..bands[i]`;
//! the last band ends at k. In the order of (level descending, position
//! ascending), a public nonzero is tested with the cell of the band in force
//! there: a fake's byte is one of its cell's pass bytes, a real's never is
//! (the owner moves a real by one q8 level when it would be: counted in
//! [`Derived::nudged`]). A key holder walks that order, counting reals, and
//! moves to the next band after `bands[i]` of them; the holder of band i's
//! secret derives the secrets of bands 0..i and stops after `bands[i]` reals,
//! so a preview key (32 bytes) reveals the largest reals and nothing below.
//!
//! Fakes: positions by systematic sampling with inclusion probability
//! min(1, c·r/(1-r)) for the position's activation rate r (so that
//! P(real | published) is about 1/2 wherever r <= 1/2), values drawn from the
//! per-position distribution of the real q8 levels (the manifest's quantile
//! tables) restricted to the bytes their cell lets pass, signs at random.
//! When the manifest has scale tables (`rank-by-scale/1`, written by
//! `ambishare-eval fit-fakes`), both follow the map's own scale, the low end
//! of its q8 range, since a detector otherwise tells fakes by how they sit
//! against it: the rates come from the map's scale bucket, and a fake's level
//! is a rank fraction drawn from the position's table for that bucket, read
//! off the map's own real levels. Positions whose cell passes too little of
//! that law are used only when nothing else is left.
//! Real values' signs are flipped by their cell's bit. q8 ranges are those of
//! the real values, so a fake at any level in 0..=127 is in range.

use rand::{Rng, SeedableRng, seq::SliceRandom};
use rand_chacha::ChaCha20Rng;
use ring::{hkdf, hmac};

use crate::ambiguate::{AmbiguatedCode, CodeVersion, Q8_MAX_LEVEL, QuantizedValues, q8_map, q8_value};
use crate::code::SparseCode;
use crate::error::{Error, Result};
use crate::ids::{ModelId, Tier};
use crate::key::SupportKey;
use crate::model::Manifest;

/// Bytes of a master secret, an entry secret and a band secret.
pub const SECRET_LEN: usize = 32;
/// Most bands (preview tiers plus the full tier) a key may name.
pub const MAX_BANDS: usize = 16;
/// Quantile points per position in the manifest's level tables (0, 1/16, .., 1).
pub const QUANTILE_POINTS: usize = 17;
/// Pass bytes per cell: a real collides with about 16/256 of bytes.
const PASS_BYTES: usize = 16;
const LEVELS: usize = Q8_MAX_LEVEL as usize + 1;
/// Least probability, under a fake's law of levels, of the bytes its cell lets pass.
const MIN_PASSING_MASS: f64 = 0.02;

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        SECRET_LEN
    }
}

fn hkdf32(salt: &[u8], ikm: &[u8], info: &[u8]) -> [u8; SECRET_LEN] {
    let mut out = [0u8; SECRET_LEN];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    // 32 bytes is far below HKDF's limit of 255 hash lengths: expand cannot fail.
    if let Ok(okm) = prk.expand(&[info], Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

/// `bytes` as a secret's 32 bytes, or why not.
fn secret_bytes(what: &'static str, bytes: &[u8]) -> Result<[u8; SECRET_LEN]> {
    bytes.try_into().map_err(|_| Error::invalid(what, format!("must be {SECRET_LEN} bytes")))
}

/// The owner's one master secret: every entry's secret derives from it.
/// Never log it (Debug hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct MasterSecret([u8; SECRET_LEN]);

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

impl MasterSecret {
    pub fn generate() -> Result<Self> {
        Ok(MasterSecret(crate::crypto::random_bytes()?))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(MasterSecret(secret_bytes("master secret", bytes)?))
    }

    /// The raw bytes, to be sealed (never written in the clear).
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// The entry tag of a true code: what the owner stores per entry to
    /// derive its key again. Not a secret without the master secret, but
    /// kept out of logs all the same.
    pub fn entry_tag(&self, context: &DerivationContext, code: &SparseCode) -> Result<EntryTag> {
        let digest = true_code_digest(context, code)?;
        let tag_key = hmac::Key::new(hmac::HMAC_SHA256, &hkdf32(b"ambishare-v3", &self.0, b"tag"));
        let mut out = [0u8; SECRET_LEN];
        out.copy_from_slice(hmac::sign(&tag_key, &digest).as_ref());
        Ok(EntryTag(out))
    }

    /// The full key of the entry with this tag.
    pub fn entry_key(&self, tag: &EntryTag, bands: &Bands) -> DerivedKey {
        let secret = hkdf32(&tag.0, &self.0, b"ambishare-v3 entry");
        DerivedKey { bands: bands.clone(), band: bands.last_index(), secret }
    }
}

/// Per entry: HMAC of its true code under the master secret (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryTag([u8; SECRET_LEN]);

impl std::fmt::Debug for EntryTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntryTag(..)")
    }
}

impl EntryTag {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Ok(EntryTag(secret_bytes("entry tag", bytes)?))
    }

    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

/// Reals per map that each key tier keeps, ascending; the last is k.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Bands(Vec<u16>);

impl Bands {
    pub fn new(bounds: Vec<u16>) -> Result<Self> {
        if bounds.is_empty() || bounds.len() > MAX_BANDS {
            return Err(Error::invalid("bands", format!("1 to {MAX_BANDS} tiers")));
        }
        if bounds[0] == 0 || bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::invalid("bands", "tier sizes must be at least 1 and strictly ascending"));
        }
        if bounds.last().is_some_and(|&k| k > SupportKey::MAX_NNZ) {
            return Err(Error::invalid("bands", format!("at most {} reals a map", SupportKey::MAX_NNZ)));
        }
        Ok(Bands(bounds))
    }

    /// The model's preview sizes (below k), then k.
    pub fn for_manifest(manifest: &Manifest) -> Result<Self> {
        let mut bounds: Vec<u16> = manifest.preview_k.iter().copied().filter(|&p| p >= 1 && p < manifest.k).collect();
        bounds.sort_unstable();
        bounds.dedup();
        bounds.push(manifest.k);
        Bands::new(bounds)
    }

    pub fn bounds(&self) -> &[u16] {
        &self.0
    }

    /// Reals a map holds (k).
    pub fn k(&self) -> u16 {
        self.0.last().copied().unwrap_or(0)
    }

    fn last_index(&self) -> u8 {
        (self.0.len() - 1) as u8
    }

    /// The band of the real of this rank (0-based) in its map; ranks past k are in the last.
    fn of_rank(&self, rank: usize) -> usize {
        self.0.iter().position(|&b| rank < b as usize).unwrap_or(self.0.len() - 1)
    }
}

/// What every entry of one model shares in its derivation.
#[derive(Clone, Debug)]
pub struct DerivationContext {
    pub model: ModelId,
    pub k_fake: u16,
    pub bands: Bands,
}

/// SHA-256 of what makes an entry's code: the context and the true code in q8.
fn true_code_digest(context: &DerivationContext, code: &SparseCode) -> Result<[u8; 32]> {
    let shape = code.shape();
    let mut d = ring::digest::Context::new(&ring::digest::SHA256);
    d.update(b"ambishare-v3 true code\0");
    d.update(context.model.as_bytes());
    d.update(&context.k_fake.to_le_bytes());
    for b in context.bands.bounds() {
        d.update(&b.to_le_bytes());
    }
    d.update(&shape.tiles.to_le_bytes());
    d.update(&shape.maps.to_le_bytes());
    d.update(&shape.dim.to_le_bytes());
    d.update(&code.nnz().to_le_bytes());
    let mut levels = Vec::with_capacity(code.nnz() as usize);
    for map in 0..shape.map_count() {
        let (pos, val) = code.map(map);
        levels.clear();
        let range = q8_map(val, &mut levels)?;
        for p in pos {
            d.update(&p.to_le_bytes());
        }
        d.update(&range[0].to_le_bytes());
        d.update(&range[1].to_le_bytes());
        d.update(&levels);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(d.finish().as_ref());
    Ok(out)
}

/// The PRF of one band's secret over (map, position).
struct BandPrf(hmac::Key);

/// One (band, map, position) cell: which bytes pass as fakes, and the flip bit of a real there.
#[derive(Clone, Copy)]
struct Cell {
    pass: [u64; 4],
    flip: bool,
}

impl Cell {
    fn passes(&self, byte: u8) -> bool {
        self.pass[byte as usize / 64] >> (byte % 64) & 1 == 1
    }
}

impl BandPrf {
    fn new(secret: &[u8; SECRET_LEN]) -> Self {
        BandPrf(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    fn cell(&self, map: usize, position: u16) -> Cell {
        let mut msg = [0u8; 6];
        msg[..4].copy_from_slice(&(map as u32).to_le_bytes());
        msg[4..].copy_from_slice(&position.to_le_bytes());
        let tag = hmac::sign(&self.0, &msg);
        let bytes = tag.as_ref();
        let mut pass = [0u64; 4];
        for &b in &bytes[..PASS_BYTES] {
            pass[b as usize / 64] |= 1 << (b % 64);
        }
        Cell { pass, flip: bytes[PASS_BYTES] & 1 == 1 }
    }
}

/// The secret of band `band - 1` from that of `band`.
fn lower_band_secret(secret: &[u8; SECRET_LEN]) -> [u8; SECRET_LEN] {
    hkdf32(b"ambishare-v3", secret, b"band")
}

/// A v3 key: one band's secret (the full key holds the last band's), and the
/// bands. 44 bytes encoded, whatever the image size. Never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct DerivedKey {
    bands: Bands,
    band: u8,
    secret: [u8; SECRET_LEN],
}

impl std::fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DerivedKey").field("bands", &self.bands).field("band", &self.band).finish_non_exhaustive()
    }
}

impl DerivedKey {
    pub(crate) fn from_parts(bands: Bands, band: u8, secret: [u8; SECRET_LEN]) -> Result<Self> {
        if band as usize >= bands.0.len() {
            return Err(Error::invalid("derived key", "band beyond the bands"));
        }
        Ok(DerivedKey { bands, band, secret })
    }

    pub fn tier(&self) -> Tier {
        if self.band == self.bands.last_index() { Tier::Full } else { Tier::Preview }
    }

    pub fn bands(&self) -> &Bands {
        &self.bands
    }

    pub(crate) fn band(&self) -> u8 {
        self.band
    }

    pub(crate) fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// Reals per map this key recovers.
    pub fn kept(&self) -> u16 {
        self.bands.0[self.band as usize]
    }

    /// The key of a smaller tier: `kept` must be one of the bands at or below this key's.
    pub fn preview(&self, kept: u16) -> Result<DerivedKey> {
        let target = self.bands.0[..=self.band as usize].iter().position(|&b| b == kept).ok_or_else(|| {
            Error::invalid("preview", format!("{kept} is not a tier of this key ({:?})", self.bands.0))
        })?;
        let mut secret = self.secret;
        for _ in target..self.band as usize {
            secret = lower_band_secret(&secret);
        }
        Ok(DerivedKey { bands: self.bands.clone(), band: target as u8, secret })
    }

    /// One PRF per band this key can evaluate, band 0 first.
    fn band_prfs(&self) -> Vec<BandPrf> {
        let mut secrets = vec![self.secret];
        for _ in 0..self.band {
            let next = lower_band_secret(secrets.last().unwrap_or(&self.secret));
            secrets.push(next);
        }
        secrets.iter().rev().map(BandPrf::new).collect()
    }

    /// The real nonzeros this key reveals (the `kept` largest of every map), signs restored.
    pub fn disambiguate(&self, code: &AmbiguatedCode) -> Result<SparseCode> {
        if code.version() != CodeVersion::V3 {
            return Err(Error::invalid("derived key", "a v3 key opens only v3 codes"));
        }
        let QuantizedValues::Q8 { ranges, levels } = code.quantized() else {
            return Err(Error::invalid("derived key", "a v3 code holds q8 values"));
        };
        let shape = code.shape();
        let n = code.nnz() as usize;
        let kept = self.kept() as usize;
        if self.bands.k() as usize > n {
            return Err(Error::invalid("derived key", "the key's tiers hold more reals than the code has nonzeros"));
        }
        let prfs = self.band_prfs();
        let bounds = self.bands.bounds();
        let mut positions = Vec::with_capacity(shape.map_count() * kept);
        let mut values = Vec::with_capacity(shape.map_count() * kept);
        let mut order: Vec<usize> = Vec::with_capacity(n);
        let mut reals: Vec<(u16, f32)> = Vec::with_capacity(kept);
        for map in 0..shape.map_count() {
            let pos = &code.positions()[map * n..(map + 1) * n];
            let bytes = &levels[map * n..(map + 1) * n];
            order.clear();
            order.extend(0..n);
            order.sort_unstable_by(|&a, &b| (bytes[b] & 0x7f).cmp(&(bytes[a] & 0x7f)).then(pos[a].cmp(&pos[b])));
            reals.clear();
            let mut band = 0usize;
            for &i in &order {
                let cell = prfs[band].cell(map, pos[i]);
                if cell.passes(bytes[i]) {
                    continue; // a fake
                }
                let byte = if cell.flip { bytes[i] ^ 0x80 } else { bytes[i] };
                reals.push((pos[i], q8_value(ranges[map], byte)));
                if reals.len() == bounds[band] as usize {
                    band += 1;
                    if band > self.band as usize {
                        break;
                    }
                }
            }
            if reals.len() != kept {
                return Err(Error::invalid(
                    "derived key",
                    format!("map {map} gave {} real nonzeros, not {kept}: the key is not this code's", reals.len()),
                ));
            }
            reals.sort_unstable_by_key(|r| r.0);
            positions.extend(reals.iter().map(|r| r.0));
            values.extend(reals.iter().map(|r| r.1));
        }
        SparseCode::from_parts(shape, kept as u16, positions, values)
    }
}

/// Per (map of a tile, position): the activation rate and the distribution of
/// the real q8 levels there, fitted on training tiles (the manifest's
/// `value_distribution.position_rate` and `level_quantiles`).
#[derive(Clone, Debug)]
pub struct FakeTables {
    maps: u16,
    dim: u16,
    /// maps × dim weights r/(1-r) of fake positions.
    weights: Vec<f64>,
    /// maps × dim × 128: probability of each level.
    level_pmf: Vec<f32>,
    /// Whether the tables came from the manifest (else a generic default).
    fitted: bool,
    /// Tables conditioned on the map's scale, when the manifest has them.
    scale: Option<ScaleTables>,
}

/// Buckets of a map's scale in the scale tables.
pub const SCALE_BUCKETS: usize = 6;

/// Why: a real's value depends on its map's scale (a flat tile has small
/// values everywhere) and on the other reals of its map, so fakes drawn from
/// one distribution per position stand out (the detector's strongest features
/// were a value against its position's usual magnitude and against the map's
/// smallest). These tables condition on the map's scale (ln of the low end of
/// its q8 range, which the public code shows) and give each position the
/// distribution of its real's *rank* among the map's reals; a fake takes the
/// level of the map's own reals at a rank drawn there, so within a map fakes
/// and reals share one law of levels. Pooled over the maps of a tile (one
/// network computes them all).
#[derive(Clone, Debug)]
struct ScaleTables {
    /// Ascending inner edges of ln(lo): SCALE_BUCKETS - 1 of them.
    edges: Vec<f32>,
    /// buckets × dim weights r/(1-r) of fake positions.
    weights: Vec<f64>,
    /// buckets × dim × 17 quantiles of the rank fraction (0 = largest real, 1 = smallest).
    rank_quantiles: Vec<f32>,
}

impl ScaleTables {
    fn bucket(&self, lo: f32) -> usize {
        let x = lo.max(f32::MIN_POSITIVE).ln();
        self.edges.iter().filter(|&&e| x > e).count()
    }

    /// `value_distribution.scale_tables`: `{"kind": "rank-by-scale/1", "edges": [..],
    /// "rates": [[dim] × buckets], "rank_quantiles": [hex × buckets]}`, each hex
    /// string dim × 17 bytes of fraction × 255.
    fn parse(v: &serde_json::Value, dim: u16) -> Result<Self> {
        let bad = |why: &str| Error::Model(format!("value_distribution.scale_tables: {why}"));
        if v.get("kind").and_then(|k| k.as_str()) != Some("rank-by-scale/1") {
            return Err(bad("kind must be rank-by-scale/1"));
        }
        let edges: Vec<f32> = v
            .get("edges")
            .and_then(|e| e.as_array())
            .ok_or_else(|| bad("edges must be a list"))?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32).filter(|x| x.is_finite()).ok_or_else(|| bad("edges are numbers")))
            .collect::<Result<_>>()?;
        if edges.len() + 1 != SCALE_BUCKETS || edges.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad("edges must be 5 ascending numbers"));
        }
        let rows = v.get("rates").and_then(|r| r.as_array()).ok_or_else(|| bad("rates must be a list"))?;
        let hexes = v.get("rank_quantiles").and_then(|r| r.as_array()).ok_or_else(|| bad("rank_quantiles"))?;
        if rows.len() != SCALE_BUCKETS || hexes.len() != SCALE_BUCKETS {
            return Err(bad("one row of rates and of rank quantiles a bucket"));
        }
        let mut weights = Vec::with_capacity(SCALE_BUCKETS * dim as usize);
        for row in rows {
            let row = row.as_array().filter(|r| r.len() == dim as usize).ok_or_else(|| bad("dim rates a bucket"))?;
            for x in row {
                let x = x.as_f64().filter(|x| x.is_finite()).ok_or_else(|| bad("rates are numbers"))?;
                let x = x.clamp(1e-4, 0.999);
                weights.push((x / (1.0 - x)).min(1e3));
            }
        }
        let mut rank_quantiles = Vec::with_capacity(SCALE_BUCKETS * dim as usize * QUANTILE_POINTS);
        for h in hexes {
            let bytes = hex::decode(h.as_str().ok_or_else(|| bad("rank_quantiles hold strings"))?)
                .map_err(|_| bad("rank_quantiles hold hex"))?;
            if bytes.len() != dim as usize * QUANTILE_POINTS {
                return Err(bad("each bucket holds dim × 17 bytes"));
            }
            for q in bytes.chunks_exact(QUANTILE_POINTS) {
                if q.windows(2).any(|w| w[0] > w[1]) {
                    return Err(bad("rank quantiles must ascend"));
                }
            }
            rank_quantiles.extend(bytes.iter().map(|&b| b as f32 / 255.0));
        }
        Ok(ScaleTables { edges, weights, rank_quantiles })
    }
}

/// Probability of each level for a fake whose rank among the map's reals
/// follows the quantiles `q` (fractions, 0 = largest): each 1/16 segment of
/// ranks maps, through the reals' levels (`sorted`, descending), onto a span
/// of levels, spread evenly over it and one level beyond on each side.
fn pmf_of_ranks(q: &[f32], sorted: &[u8]) -> [f32; LEVELS] {
    let mut pmf = [0f32; LEVELS];
    let Some(last) = sorted.len().checked_sub(1) else { return pmf };
    let level_at = |f: f32| {
        let x = f.clamp(0.0, 1.0) * last as f32;
        let i = (x.floor() as usize).min(last);
        let (a, b) = (sorted[i] as f32, sorted[(i + 1).min(last)] as f32);
        a + (b - a) * (x - i as f32)
    };
    const STEPS: usize = 4;
    let mass = 1.0 / ((QUANTILE_POINTS - 1) * STEPS) as f32;
    for w in q.windows(2) {
        for j in 0..STEPS {
            let f0 = w[0] + (w[1] - w[0]) * j as f32 / STEPS as f32;
            let f1 = w[0] + (w[1] - w[0]) * (j + 1) as f32 / STEPS as f32;
            let (hi, lo) = (level_at(f0), level_at(f1));
            let a = (lo.round() as i32 - 1).max(0) as usize;
            let b = ((hi.round() as i32 + 1).min(Q8_MAX_LEVEL as i32)) as usize;
            let span = (b - a + 1) as f32;
            for p in &mut pmf[a..=b] {
                *p += mass / span;
            }
        }
    }
    pmf
}

impl FakeTables {
    /// From per-position rates (maps × dim) and level quantiles (maps × dim × 17, ascending, 0..=127).
    pub fn new(maps: u16, dim: u16, rates: Option<&[f32]>, quantiles: Option<&[f32]>) -> Result<Self> {
        let cells = maps as usize * dim as usize;
        let weights = match rates {
            Some(r) if r.len() == cells && r.iter().all(|x| x.is_finite()) => r
                .iter()
                .map(|&x| {
                    let x = x.clamp(1e-4, 0.999) as f64;
                    (x / (1.0 - x)).min(1e3)
                })
                .collect(),
            Some(_) => return Err(Error::Model(format!("position rates must be {maps}×{dim} finite numbers"))),
            None => vec![1.0; cells],
        };
        let fitted = quantiles.is_some();
        let generic: Vec<f32>;
        let quantiles = match quantiles {
            Some(q) => q,
            None => {
                // Heavy-tailed like a top-k: most reals near the map's smallest.
                generic =
                    (0..cells).flat_map(|_| (0..QUANTILE_POINTS).map(|i| 127.0 * (i as f32 / 16.0).powi(2))).collect();
                &generic
            }
        };
        if quantiles.len() != cells * QUANTILE_POINTS {
            return Err(Error::Model(format!("level quantiles must be {maps}×{dim}×{QUANTILE_POINTS} numbers")));
        }
        let mut level_pmf = Vec::with_capacity(cells * LEVELS);
        for q in quantiles.chunks_exact(QUANTILE_POINTS) {
            if q.iter().any(|x| !x.is_finite() || !(0.0..=127.0).contains(x)) || q.windows(2).any(|w| w[0] > w[1]) {
                return Err(Error::Model("level quantiles must ascend within 0..=127".into()));
            }
            level_pmf.extend(pmf_of_quantiles(q));
        }
        Ok(FakeTables { maps, dim, weights, level_pmf, fitted, scale: None })
    }

    /// The manifest's tables, or generic ones (uniform positions) when it has none.
    pub fn for_manifest(manifest: &Manifest) -> Result<Self> {
        let vd = &manifest.value_distribution;
        let rates: Option<Vec<f32>> = vd.get("position_rate").map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .flat_map(|row| row.as_array().into_iter().flatten())
                .map(|x| x.as_f64().map_or(f32::NAN, |x| x as f32))
                .collect()
        });
        let quantiles = match vd.get("level_quantiles") {
            None => None,
            Some(v) => Some(parse_level_quantiles(v, manifest.maps, manifest.dim)?),
        };
        let mut tables = FakeTables::new(manifest.maps, manifest.dim, rates.as_deref(), quantiles.as_deref())?;
        if let Some(v) = vd.get("scale_tables") {
            tables = tables.with_scale_tables(v)?;
        }
        Ok(tables)
    }

    /// Adds the scale tables of a manifest's `value_distribution.scale_tables`.
    pub fn with_scale_tables(mut self, v: &serde_json::Value) -> Result<Self> {
        self.scale = Some(ScaleTables::parse(v, self.dim)?);
        Ok(self)
    }

    /// Whether fakes are drawn conditioned on their map's scale (the manifest's `scale_tables`).
    pub fn is_scale_conditioned(&self) -> bool {
        self.scale.is_some()
    }

    /// Whether the tables were fitted to the model (not the generic default).
    pub fn is_fitted(&self) -> bool {
        self.fitted
    }

    fn cell(&self, map: usize, position: u16) -> usize {
        (map % self.maps as usize) * self.dim as usize + position as usize
    }
}

/// The manifest's `level_quantiles`: `{"points": 17, "scale": 2, "maps": [hex × maps]}`,
/// each map's hex string holding dim × points bytes of level × scale.
fn parse_level_quantiles(v: &serde_json::Value, maps: u16, dim: u16) -> Result<Vec<f32>> {
    let bad = |why: &str| Error::Model(format!("value_distribution.level_quantiles: {why}"));
    if v.get("points").and_then(|p| p.as_u64()) != Some(QUANTILE_POINTS as u64) {
        return Err(bad("points must be 17"));
    }
    let scale = v.get("scale").and_then(|s| s.as_f64()).filter(|s| *s >= 1.0).ok_or_else(|| bad("scale >= 1"))?;
    let rows = v.get("maps").and_then(|m| m.as_array()).ok_or_else(|| bad("maps must be a list"))?;
    if rows.len() != maps as usize {
        return Err(bad("one hex string a map"));
    }
    let mut out = Vec::with_capacity(maps as usize * dim as usize * QUANTILE_POINTS);
    for row in rows {
        let bytes = hex::decode(row.as_str().ok_or_else(|| bad("maps must hold strings"))?)
            .map_err(|_| bad("maps must hold hex"))?;
        if bytes.len() != dim as usize * QUANTILE_POINTS {
            return Err(bad("each map holds dim × 17 bytes"));
        }
        out.extend(bytes.iter().map(|&b| (b as f64 / scale) as f32));
    }
    Ok(out)
}

/// Encodes level quantiles (maps × dim × 17) for the manifest (see [`parse_level_quantiles`]).
pub fn level_quantiles_json(quantiles: &[f32], maps: u16, dim: u16) -> serde_json::Value {
    let per_map = dim as usize * QUANTILE_POINTS;
    let rows: Vec<serde_json::Value> = quantiles
        .chunks(per_map)
        .take(maps as usize)
        .map(|row| {
            serde_json::Value::String(hex::encode(
                row.iter().map(|&q| (q * 2.0).round().clamp(0.0, 254.0) as u8).collect::<Vec<u8>>(),
            ))
        })
        .collect();
    serde_json::json!({ "points": QUANTILE_POINTS, "scale": 2, "maps": rows })
}

/// Tables fitted on true codes: activation rate and level quantiles per
/// (map of a tile, position), for the manifest's `value_distribution`.
#[derive(Clone, Debug)]
pub struct FittedTables {
    pub maps: u16,
    pub dim: u16,
    pub tiles: u64,
    /// maps × dim.
    pub rates: Vec<f32>,
    /// maps × dim × 17 levels (0..=127).
    pub quantiles: Vec<f32>,
    /// The scale tables (see [`FakeTables`]): inner edges of ln(lo), SCALE_BUCKETS - 1.
    pub scale_edges: Vec<f32>,
    /// SCALE_BUCKETS × dim activation rates, pooled over the maps of a tile.
    pub scale_rates: Vec<f32>,
    /// SCALE_BUCKETS × dim × 17 quantiles of the rank fraction (0 = largest).
    pub scale_rank_quantiles: Vec<f32>,
}

/// Counts levels of true codes' reals per position, then reads off quantiles.
#[derive(Clone, Debug)]
pub struct TableFitter {
    maps: u16,
    dim: u16,
    tiles: u64,
    /// maps × dim × 128 counts.
    histogram: Vec<u64>,
    /// Per map seen: ln of its q8 range's low end, and where its reals start in `ranked`.
    scales: Vec<(f32, u32)>,
    /// Every real seen, in its map's walk order: (position, rank bin of RANK_BINS).
    ranked: Vec<(u16, u8)>,
}

/// Bins of the rank fraction while fitting.
const RANK_BINS: usize = 64;

/// Cells seen fewer times than this take their map's pooled levels.
const MIN_SAMPLES: u64 = 64;

impl TableFitter {
    pub fn new(maps: u16, dim: u16) -> Self {
        TableFitter {
            maps,
            dim,
            tiles: 0,
            histogram: vec![0; maps as usize * dim as usize * LEVELS],
            scales: Vec::new(),
            ranked: Vec::new(),
        }
    }

    /// Adds a true code (k nonzeros a map) of this model's shape.
    pub fn add(&mut self, code: &SparseCode) -> Result<()> {
        let shape = code.shape();
        if (shape.maps, shape.dim) != (self.maps, self.dim) {
            return Err(Error::invalid("code", "shape differs from the tables'"));
        }
        let mut levels = Vec::with_capacity(code.nnz() as usize);
        let mut walk: Vec<(u8, u16)> = Vec::with_capacity(code.nnz() as usize);
        for map in 0..shape.map_count() {
            let (pos, val) = code.map(map);
            levels.clear();
            let range = q8_map(val, &mut levels)?;
            let base = (map % self.maps as usize) * self.dim as usize;
            for (&p, &b) in pos.iter().zip(&levels) {
                self.histogram[(base + p as usize) * LEVELS + (b & 0x7f) as usize] += 1;
            }
            // The owner's walk order: level descending, position ascending.
            walk.clear();
            walk.extend(pos.iter().zip(&levels).map(|(&p, &b)| (b & 0x7f, p)));
            walk.sort_unstable_by_key(|&(l, p)| (std::cmp::Reverse(l), p));
            self.scales.push((range[0].to_f32().max(f32::MIN_POSITIVE).ln(), self.ranked.len() as u32));
            let last = walk.len().saturating_sub(1).max(1);
            self.ranked.extend(
                walk.iter()
                    .enumerate()
                    .map(|(r, &(_, p))| (p, ((r * RANK_BINS) / (last + 1)).min(RANK_BINS - 1) as u8)),
            );
        }
        self.tiles += shape.tiles as u64;
        Ok(())
    }

    pub fn tiles(&self) -> u64 {
        self.tiles
    }

    pub fn finish(&self) -> FittedTables {
        let (maps, dim) = (self.maps as usize, self.dim as usize);
        let mut rates = Vec::with_capacity(maps * dim);
        let mut quantiles = Vec::with_capacity(maps * dim * QUANTILE_POINTS);
        for l in 0..maps {
            let mut pooled = [0u64; LEVELS];
            for p in 0..dim {
                for (i, c) in self.histogram[(l * dim + p) * LEVELS..][..LEVELS].iter().enumerate() {
                    pooled[i] += c;
                }
            }
            for p in 0..dim {
                let cell = &self.histogram[(l * dim + p) * LEVELS..][..LEVELS];
                let count: u64 = cell.iter().sum();
                rates.push(count as f32 / self.tiles.max(1) as f32);
                let source: &[u64] = if count >= MIN_SAMPLES { cell } else { &pooled };
                quantiles.extend(quantiles_of_histogram(source));
            }
        }
        let (scale_edges, scale_rates, scale_rank_quantiles) = self.finish_scale();
        FittedTables {
            maps: self.maps,
            dim: self.dim,
            tiles: self.tiles,
            rates,
            quantiles,
            scale_edges,
            scale_rates,
            scale_rank_quantiles,
        }
    }

    /// The scale tables: buckets at the quantiles of ln(lo) over the maps seen,
    /// per bucket and position the activation rate and the rank quantiles
    /// (the bucket's pooled ranks where a position was seen too rarely).
    fn finish_scale(&self) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        if self.scales.is_empty() {
            return (Vec::new(), Vec::new(), Vec::new());
        }
        let dim = self.dim as usize;
        let mut sorted: Vec<f32> = self.scales.iter().map(|s| s.0).collect();
        sorted.sort_unstable_by(f32::total_cmp);
        let edges: Vec<f32> =
            (1..SCALE_BUCKETS).map(|i| sorted[(sorted.len() * i / SCALE_BUCKETS).min(sorted.len() - 1)]).collect();
        let bucket = |x: f32| edges.iter().filter(|&&e| x > e).count();
        let mut maps_in = [0u64; SCALE_BUCKETS];
        let mut hist = vec![0u64; SCALE_BUCKETS * dim * RANK_BINS];
        for (i, &(x, start)) in self.scales.iter().enumerate() {
            let b = bucket(x);
            maps_in[b] += 1;
            let end = self.scales.get(i + 1).map_or(self.ranked.len(), |s| s.1 as usize);
            for &(p, r) in &self.ranked[start as usize..end] {
                hist[(b * dim + p as usize) * RANK_BINS + r as usize] += 1;
            }
        }
        let mut rates = Vec::with_capacity(SCALE_BUCKETS * dim);
        let mut quantiles = Vec::with_capacity(SCALE_BUCKETS * dim * QUANTILE_POINTS);
        for b in 0..SCALE_BUCKETS {
            let mut pooled = [0u64; RANK_BINS];
            for p in 0..dim {
                for (j, c) in hist[(b * dim + p) * RANK_BINS..][..RANK_BINS].iter().enumerate() {
                    pooled[j] += c;
                }
            }
            for p in 0..dim {
                let cell = &hist[(b * dim + p) * RANK_BINS..][..RANK_BINS];
                let count: u64 = cell.iter().sum();
                rates.push(count as f32 / maps_in[b].max(1) as f32);
                quantiles.extend(fraction_quantiles(if count >= MIN_SAMPLES { cell } else { &pooled }));
            }
        }
        (edges, rates, quantiles)
    }
}

/// The 17 quantiles (0, 1/16, .., 1) of a histogram of rank fractions in
/// [`RANK_BINS`] equal bins of [0, 1], linear within a bin; uniform when empty.
fn fraction_quantiles(h: &[u64]) -> Vec<f32> {
    let total: u64 = h.iter().sum();
    let bins = h.len() as f64;
    if total == 0 {
        return (0..QUANTILE_POINTS).map(|i| i as f32 / (QUANTILE_POINTS - 1) as f32).collect();
    }
    let first = h.iter().position(|&c| c > 0).unwrap_or(0) as f64 / bins;
    let last = (h.iter().rposition(|&c| c > 0).unwrap_or(h.len() - 1) + 1) as f64 / bins;
    let mut out = vec![first as f32];
    let (mut cumulative, mut bin) = (0u64, 0usize);
    for i in 1..QUANTILE_POINTS - 1 {
        let target = total as f64 * i as f64 / (QUANTILE_POINTS - 1) as f64;
        while bin < h.len() && (cumulative + h[bin]) as f64 <= target {
            cumulative += h[bin];
            bin += 1;
        }
        let within = if bin < h.len() && h[bin] > 0 { (target - cumulative as f64) / h[bin] as f64 } else { 0.0 };
        out.push((((bin as f64 + within) / bins).clamp(first, last)) as f32);
    }
    out.push(last as f32);
    for i in 1..out.len() {
        out[i] = out[i].max(out[i - 1]);
    }
    out
}

/// The 17 quantile points (0, 1/16, .., 1) of a histogram of levels; a
/// generic top-k law when it is empty.
fn quantiles_of_histogram(h: &[u64]) -> Vec<f32> {
    let total: u64 = h.iter().sum();
    if total == 0 {
        return (0..QUANTILE_POINTS).map(|i| 127.0 * (i as f32 / 16.0).powi(2)).collect();
    }
    let mut out = Vec::with_capacity(QUANTILE_POINTS);
    let first = h.iter().position(|&c| c > 0).unwrap_or(0);
    let last = h.iter().rposition(|&c| c > 0).unwrap_or(LEVELS - 1);
    out.push(first as f32);
    let mut cumulative = 0u64;
    let mut level = 0usize;
    for i in 1..QUANTILE_POINTS - 1 {
        let target = total as f64 * i as f64 / 16.0;
        while level < LEVELS && (cumulative + h[level]) as f64 <= target {
            cumulative += h[level];
            level += 1;
        }
        out.push(level.min(LEVELS - 1) as f32);
    }
    out.push(last as f32);
    // Rounding aside, quantiles never descend.
    for i in 1..out.len() {
        out[i] = out[i].max(out[i - 1]);
    }
    out
}

impl FittedTables {
    /// Writes the tables into a manifest's `value_distribution` (replacing
    /// `position_rate` and `level_quantiles`).
    pub fn write_into(&self, manifest: &mut serde_json::Value) -> Result<()> {
        let vd = manifest
            .get_mut("value_distribution")
            .and_then(|v| v.as_object_mut())
            .ok_or_else(|| Error::Model("the manifest has no value_distribution object".into()))?;
        let rows: Vec<serde_json::Value> = self
            .rates
            .chunks(self.dim as usize)
            .map(|row| row.iter().map(|&r| serde_json::json!((r as f64 * 1e4).round() / 1e4)).collect())
            .collect();
        vd.insert("position_rate".into(), serde_json::Value::Array(rows));
        vd.insert("level_quantiles".into(), level_quantiles_json(&self.quantiles, self.maps, self.dim));
        vd.insert("level_tiles".into(), serde_json::json!(self.tiles));
        if self.scale_edges.len() + 1 == SCALE_BUCKETS {
            let dim = self.dim as usize;
            let rates: Vec<serde_json::Value> = self
                .scale_rates
                .chunks(dim)
                .map(|row| row.iter().map(|&r| serde_json::json!((r as f64 * 1e4).round() / 1e4)).collect())
                .collect();
            let ranks: Vec<serde_json::Value> = self
                .scale_rank_quantiles
                .chunks(dim * QUANTILE_POINTS)
                .map(|row| {
                    serde_json::Value::String(hex::encode(
                        row.iter().map(|&q| (q * 255.0).round().clamp(0.0, 255.0) as u8).collect::<Vec<u8>>(),
                    ))
                })
                .collect();
            let edges: Vec<f64> = self.scale_edges.iter().map(|&e| (e as f64 * 1e4).round() / 1e4).collect();
            vd.insert(
                "scale_tables".into(),
                serde_json::json!({
                    "kind": "rank-by-scale/1",
                    "note": "per bucket of ln(low end of the map's q8 range) and position, pooled over the maps of \
                             a tile: activation rate, and 17 quantiles of the real's rank among its map's reals \
                             (byte / 255; 0 = largest); fakes take the map's own real level at a rank drawn there",
                    "edges": edges,
                    "rates": rates,
                    "rank_quantiles": ranks,
                }),
            );
        }
        let (min, max) = self.rates.iter().fold((f32::INFINITY, 0f32), |(a, b), &r| (a.min(r), b.max(r)));
        vd.insert("position_rate_min".into(), serde_json::json!(min));
        vd.insert("position_rate_max".into(), serde_json::json!(max));
        Ok(())
    }
}

/// Probability of each integer level under the piecewise-linear CDF through
/// the quantile points (each segment 1/16 of the mass, spread evenly over
/// the levels it covers; a zero-width segment is a point mass).
fn pmf_of_quantiles(q: &[f32]) -> [f32; LEVELS] {
    let mut pmf = [0f32; LEVELS];
    let seg = 1.0 / (QUANTILE_POINTS - 1) as f32;
    for w in q.windows(2) {
        let (a, b) = (w[0].round() as usize, w[1].round() as usize);
        let span = (b - a + 1) as f32;
        for p in pmf.iter_mut().take(b.min(LEVELS - 1) + 1).skip(a) {
            *p += seg / span;
        }
    }
    pmf
}

/// The public code of a true code under format v3, and what the owner keeps.
#[derive(Debug)]
pub struct Derived {
    pub public: AmbiguatedCode,
    /// Stored per entry to derive its key again.
    pub tag: EntryTag,
    /// The full key (the tag's secret).
    pub key: DerivedKey,
    /// The same reals as explicit indices and flips (for evaluation and checks).
    pub support: SupportKey,
    /// Reals moved by one q8 level because their byte would have passed as a fake.
    pub nudged: usize,
}

/// The true code as format v3 quantizes it (q8 on each map's real range),
/// before any real is moved off a fake's byte: the baseline of that move's cost.
pub fn q8_on_real_range(code: &SparseCode) -> Result<SparseCode> {
    let mut values = Vec::with_capacity(code.values().len());
    let mut levels = Vec::with_capacity(code.nnz() as usize);
    for map in 0..code.shape().map_count() {
        let (_, val) = code.map(map);
        levels.clear();
        let range = q8_map(val, &mut levels)?;
        values.extend(levels.iter().map(|&b| q8_value(range, b)));
    }
    SparseCode::from_parts(code.shape(), code.nnz(), code.positions().to_vec(), values)
}

/// A real of one map while the owner builds its public code.
#[derive(Clone, Copy)]
struct Real {
    position: u16,
    level: u8,
    negative: bool,
}

/// Makes the v3 public code of `code` (q8 values).
pub fn ambiguate_derived(
    code: &SparseCode,
    master: &MasterSecret,
    context: &DerivationContext,
    tables: &FakeTables,
) -> Result<Derived> {
    let shape = code.shape();
    let (m, k) = (shape.dim as usize, code.nnz() as usize);
    let kn = context.k_fake as usize;
    if k != context.bands.k() as usize {
        return Err(Error::invalid(
            "ambiguation",
            format!("the code has {k} nonzeros a map, the bands end at {}", context.bands.k()),
        ));
    }
    if k == 0 || k + kn > m || k + kn > SupportKey::MAX_NNZ as usize {
        return Err(Error::invalid("ambiguation", format!("need 1 <= k and k + k_fake <= {m}")));
    }
    if (tables.maps, tables.dim) != (shape.maps, shape.dim) {
        return Err(Error::Model("fake tables do not match the code's maps and dims".into()));
    }
    let tag = master.entry_tag(context, code)?;
    let key = master.entry_key(&tag, &context.bands);
    let prfs = key.band_prfs();
    let fake_key = hmac::Key::new(hmac::HMAC_SHA256, &hkdf32(b"ambishare-v3", &key.secret, b"fakes"));
    let bands = &context.bands;
    let nnz = k + kn;

    let mut positions = Vec::with_capacity(shape.map_count() * nnz);
    let mut bytes_out = Vec::with_capacity(shape.map_count() * nnz);
    let mut ranges = Vec::with_capacity(shape.map_count());
    let mut real_indices = Vec::with_capacity(shape.map_count() * k);
    let mut flips = Vec::with_capacity(shape.map_count() * k);
    let mut nudged = 0usize;
    let mut levels = Vec::with_capacity(k);
    let mut is_real = vec![false; m];
    for map in 0..shape.map_count() {
        let (pos, val) = code.map(map);
        levels.clear();
        let range = q8_map(val, &mut levels)?;
        let mut reals: Vec<Real> = pos
            .iter()
            .zip(&levels)
            .map(|(&position, &b)| Real { position, level: b & 0x7f, negative: b & 0x80 != 0 })
            .collect();
        nudged += settle_reals(&mut reals, map, bands, &prfs)?;
        // Reals in walk order; their published bytes.
        let real_cells: Vec<Cell> =
            reals.iter().enumerate().map(|(rank, r)| prfs[bands.of_rank(rank)].cell(map, r.position)).collect();

        let mut seed = [0u8; 32];
        seed.copy_from_slice(hmac::sign(&fake_key, &(map as u64).to_le_bytes()).as_ref());
        let mut rng = ChaCha20Rng::from_seed(seed);
        is_real.fill(false);
        for r in &reals {
            is_real[r.position as usize] = true;
        }
        let fakes = draw_fakes(&mut rng, map, range[0].to_f32(), m, kn, &is_real, &reals, bands, &prfs, tables)?;

        let mut all: Vec<(u16, u8, Option<bool>)> = Vec::with_capacity(nnz);
        for (r, cell) in reals.iter().zip(&real_cells) {
            let negative = r.negative ^ cell.flip;
            all.push((r.position, r.level | if negative { 0x80 } else { 0 }, Some(cell.flip)));
        }
        all.extend(fakes.iter().map(|&(p, b)| (p, b, None)));
        all.sort_unstable_by_key(|e| e.0);
        for (index, &(p, b, flip)) in all.iter().enumerate() {
            positions.push(p);
            bytes_out.push(b);
            if let Some(f) = flip {
                real_indices.push(index as u16);
                flips.push(f);
            }
        }
        ranges.push(range);
    }
    let quantized = QuantizedValues::Q8 { ranges, levels: bytes_out };
    let public = AmbiguatedCode::from_parts(shape, nnz as u16, positions, quantized)?.with_version(CodeVersion::V3)?;
    let support = SupportKey::from_parts(Tier::Full, shape.tiles, shape.maps, nnz as u16, k as u16, real_indices)?
        .with_sign_flips(flips)?;
    // Never publish what the key would not open to the same reals.
    if key.disambiguate(&public)? != support.disambiguate(&public)? {
        return Err(Error::invalid("ambiguation", "the derived key does not recover the reals (a bug: please report)"));
    }
    Ok(Derived { public, tag, key, support, nudged })
}

/// Sorts the reals into walk order (level descending, position ascending)
/// and moves each real whose byte would pass its band's cell by the fewest
/// levels that make it fail. A move keeps the real inside its band (between
/// the last real of the band above and the first of the band below), so no
/// other real changes band and one pass settles all; a real with no such
/// level left falls back to moves across bands, settled again until none
/// passes. Returns how many reals moved.
fn settle_reals(reals: &mut [Real], map: usize, bands: &Bands, prfs: &[BandPrf]) -> Result<usize> {
    let key = |r: &Real| (std::cmp::Reverse(r.level), r.position);
    reals.sort_unstable_by_key(key);
    let mut moved = 0usize;
    let mut stuck = false;
    let bounds = bands.bounds();
    for rank in 0..reals.len() {
        let band = bands.of_rank(rank);
        let cell = prfs[band].cell(map, reals[rank].position);
        let sign = if reals[rank].negative ^ cell.flip { 0x80 } else { 0 };
        if !cell.passes(reals[rank].level | sign) {
            continue;
        }
        // Walk order keys this real must stay between: the lowest of the band
        // above, the highest of the band below (earlier moves included).
        let start = |b: usize| if b == 0 { 0 } else { (bounds[b - 1] as usize).min(reals.len()) };
        let end = |b: usize| (bounds[b] as usize).min(reals.len());
        let above = (band > 0).then(|| reals[start(band - 1)..end(band - 1)].iter().map(key).max()).flatten();
        let below =
            (band + 1 < bounds.len()).then(|| reals[start(band + 1)..end(band + 1)].iter().map(key).min()).flatten();
        let position = reals[rank].position;
        let level = reals[rank].level as i16;
        let fits = |l: i16| {
            let k = (std::cmp::Reverse(l as u8), position);
            (0..=Q8_MAX_LEVEL as i16).contains(&l)
                && above.is_none_or(|a| a < k)
                && below.is_none_or(|b| k < b)
                && !cell.passes(l as u8 | sign)
        };
        match (1..=Q8_MAX_LEVEL as i16).flat_map(|d| [level - d, level + d]).find(|&l| fits(l)) {
            Some(l) => {
                reals[rank].level = l as u8;
                moved += 1;
            }
            None => stuck = true,
        }
    }
    reals.sort_unstable_by_key(key);
    if stuck {
        let before: Vec<Real> = reals.to_vec();
        moved += match settle_top_down(reals, map, bands, prfs) {
            Ok(moves) => moves,
            Err(_) => {
                reals.copy_from_slice(&before);
                settle_at_random(reals, map, bands, prfs)?
            }
        };
    }
    Ok(moved)
}

/// The fallback of [`settle_reals`], which always ends: fixes the reals in
/// walk order, one rank at a time. The real that comes next keeps its level
/// when its byte fails its band's cell; else it moves down one level (and the
/// next real is chosen again), so the reals already fixed never change rank.
/// At level 0 it moves up to the nearest level that fails, still behind the
/// reals already fixed.
fn settle_top_down(reals: &mut [Real], map: usize, bands: &Bands, prfs: &[BandPrf]) -> Result<usize> {
    let key = |r: &Real| (std::cmp::Reverse(r.level), r.position);
    let mut moves = 0usize;
    for rank in 0..reals.len() {
        loop {
            let next = (rank..reals.len()).min_by_key(|&i| key(&reals[i])).unwrap_or(rank);
            reals.swap(rank, next);
            let cell = prfs[bands.of_rank(rank)].cell(map, reals[rank].position);
            let sign = if reals[rank].negative ^ cell.flip { 0x80 } else { 0 };
            if !cell.passes(reals[rank].level | sign) {
                break;
            }
            moves += 1;
            if reals[rank].level > 0 {
                reals[rank].level -= 1;
                continue;
            }
            let behind = rank.checked_sub(1).map(|i| key(&reals[i]));
            let position = reals[rank].position;
            let up = (1..=Q8_MAX_LEVEL)
                .find(|&l| behind.is_none_or(|b| b < (std::cmp::Reverse(l), position)) && !cell.passes(l | sign))
                .ok_or_else(|| Error::invalid("ambiguation", "reals did not settle clear of the fakes' bytes"))?;
            reals[rank].level = up;
            break;
        }
    }
    Ok(moves)
}

/// The last resort of [`settle_reals`] (reals crowded at the lowest level,
/// where no move keeps the reals already fixed in place): moves a passing
/// real to one of the three nearest levels that fail its cell, chosen at
/// random (from the map's own seed, so the same image settles the same way),
/// and checks every real again, until none passes.
fn settle_at_random(reals: &mut [Real], map: usize, bands: &Bands, prfs: &[BandPrf]) -> Result<usize> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(map as u64).to_le_bytes());
    for r in reals.iter() {
        seed[8 + (r.position as usize % 24)] ^= r.level;
    }
    let mut rng = ChaCha20Rng::from_seed(seed);
    for moves in 0..64 * reals.len() + 64 {
        reals.sort_unstable_by(|a, b| b.level.cmp(&a.level).then(a.position.cmp(&b.position)));
        let collisions: Vec<(usize, Cell, u8)> = reals
            .iter()
            .enumerate()
            .filter_map(|(rank, r)| {
                let cell = prfs[bands.of_rank(rank)].cell(map, r.position);
                let sign = if r.negative ^ cell.flip { 0x80 } else { 0 };
                cell.passes(r.level | sign).then_some((rank, cell, sign))
            })
            .collect();
        if collisions.is_empty() {
            return Ok(moves);
        }
        let (rank, cell, sign) = collisions[rng.random_range(0..collisions.len())];
        let level = reals[rank].level as i16;
        let near: Vec<i16> = (1..=Q8_MAX_LEVEL as i16)
            .flat_map(|d| [level - d, level + d])
            .filter(|l| (0..=Q8_MAX_LEVEL as i16).contains(l) && !cell.passes(*l as u8 | sign))
            .take(3)
            .collect();
        if near.is_empty() {
            break;
        }
        reals[rank].level = near[rng.random_range(0..near.len())] as u8;
    }
    Err(Error::invalid("ambiguation", "reals did not settle clear of the fakes' bytes"))
}

/// Chooses `kn` fake positions among the zeros and a byte for each.
#[allow(clippy::too_many_arguments)]
fn draw_fakes(
    rng: &mut ChaCha20Rng,
    map: usize,
    lo: f32,
    m: usize,
    kn: usize,
    is_real: &[bool],
    reals: &[Real],
    bands: &Bands,
    prfs: &[BandPrf],
    tables: &FakeTables,
) -> Result<Vec<(u16, u8)>> {
    let mut zeros: Vec<u16> = (0..m as u16).filter(|&p| !is_real[p as usize]).collect();
    if zeros.len() < kn {
        return Err(Error::invalid("ambiguation", "fewer zero positions than fakes"));
    }
    zeros.shuffle(rng);
    let scale = tables.scale.as_ref().map(|s| (s, s.bucket(lo)));
    let weight = |p: u16| match scale {
        Some((s, b)) => s.weights[b * m + p as usize],
        None => tables.weights[tables.cell(map, p)],
    };
    let inclusion = inclusion_probabilities(&zeros.iter().map(|&p| weight(p)).collect::<Vec<_>>(), kn);
    // Systematic sampling in the shuffled order: exactly kn, each with its probability.
    let start: f64 = rng.random();
    let mut chosen = Vec::with_capacity(kn);
    let mut taken = vec![false; zeros.len()];
    let (mut cumulative, mut next) = (0.0f64, start);
    for (i, &pi) in inclusion.iter().enumerate() {
        cumulative += pi;
        if cumulative > next && chosen.len() < kn {
            chosen.push(i);
            taken[i] = true;
            next += 1.0;
        }
    }
    // Rounding can leave one short: the most probable of the rest.
    let mut rest: Vec<usize> = (0..zeros.len()).filter(|&i| !taken[i]).collect();
    rest.sort_by(|&a, &b| inclusion[b].total_cmp(&inclusion[a]));
    let mut spare = rest.into_iter();

    // Reals before a (level, position): those of higher level, and of equal level at a lower position.
    let mut above = [0usize; LEVELS + 1];
    for r in reals {
        above[r.level as usize] += 1;
    }
    for l in (0..LEVELS).rev() {
        above[l] += above[l + 1];
    }
    // above[l] now counts reals of level >= l.
    let reals_before = |level: usize, p: u16| {
        above[level + 1] + reals.iter().filter(|r| r.level as usize == level && r.position < p).count()
    };

    let mut fakes = Vec::with_capacity(kn);
    let mut candidates: Vec<(u8, f64)> = Vec::with_capacity(256);
    let mut queue: std::collections::VecDeque<usize> = chosen.into();
    let (mut deferred, mut last_resort) = (Vec::new(), false);
    while fakes.len() < kn {
        let Some(i) = queue.pop_front().or_else(|| spare.next()) else {
            match deferred.pop() {
                Some(i) => {
                    last_resort = true;
                    queue.push_back(i);
                    continue;
                }
                None => return Err(Error::invalid("ambiguation", "no position can hold a fake")),
            }
        };
        let p = zeros[i];
        let by_rank;
        let pmf: &[f32] = match scale {
            Some((s, b)) => {
                // reals are in walk order: levels descending.
                let sorted: Vec<u8> = reals.iter().map(|r| r.level).collect();
                by_rank = pmf_of_ranks(
                    &s.rank_quantiles[(b * m + p as usize) * QUANTILE_POINTS..][..QUANTILE_POINTS],
                    &sorted,
                );
                &by_rank
            }
            None => &tables.level_pmf[tables.cell(map, p) * LEVELS..][..LEVELS],
        };
        let cells: Vec<Cell> = prfs.iter().map(|prf| prf.cell(map, p)).collect();
        candidates.clear();
        for (level, &mass) in pmf.iter().enumerate() {
            let band = bands.of_rank(reals_before(level, p));
            for sign in [0u8, 0x80] {
                let byte = level as u8 | sign;
                if cells[band].passes(byte) {
                    // A small floor keeps every passing byte possible.
                    candidates.push((byte, mass as f64 + 1e-6));
                }
            }
        }
        let total: f64 = candidates.iter().map(|c| c.1).sum();
        if candidates.is_empty() || total <= 0.0 {
            continue; // no byte can pass here: another position takes the fake
        }
        // Where the map's law puts (almost) no mass on the bytes that pass, a
        // fake would take a level no real there would: defer the position,
        // used only when no other is left.
        if scale.is_some() && total < MIN_PASSING_MASS && !last_resort {
            deferred.push(i);
            continue;
        }
        let mut u = rng.random::<f64>() * total;
        let byte = candidates
            .iter()
            .find(|c| {
                u -= c.1;
                u <= 0.0
            })
            .or(candidates.last())
            .map(|c| c.0)
            .unwrap_or(0);
        fakes.push((p, byte));
    }
    Ok(fakes)
}

/// π_i = min(1, c·w_i) with Σ π_i = n (c by bisection); uniform when the weights are degenerate.
fn inclusion_probabilities(weights: &[f64], n: usize) -> Vec<f64> {
    let sum_at = |c: f64| weights.iter().map(|&w| (c * w).min(1.0)).sum::<f64>();
    let total: f64 = weights.iter().sum();
    if total.is_nan() || total <= 0.0 || n >= weights.len() {
        return vec![n as f64 / weights.len().max(1) as f64; weights.len()];
    }
    let (mut lo, mut hi) = (0.0f64, n as f64 / weights.iter().cloned().fold(f64::INFINITY, f64::min).max(1e-12));
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if sum_at(mid) < n as f64 { lo = mid } else { hi = mid }
    }
    weights.iter().map(|&w| (hi * w).min(1.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ambiguate::tests::gaussian_code;
    use crate::code::CodeShape;
    use half::f16;

    fn context(k_fake: u16, bands: Vec<u16>) -> DerivationContext {
        DerivationContext { model: ModelId::from_bytes([7; 32]), k_fake, bands: Bands::new(bands).unwrap() }
    }

    fn q8_range_of(values: &[f32]) -> Result<[f16; 2]> {
        q8_map(values, &mut Vec::new())
    }

    fn master(b: u8) -> MasterSecret {
        MasterSecret::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn the_key_recovers_the_q8_reals_and_the_same_image_gives_the_same_code() {
        let shape = CodeShape::new(4, 8, 256).unwrap();
        let code = gaussian_code(1, shape, 64);
        let ctx = context(64, vec![16, 32, 64]);
        let tables = FakeTables::new(8, 256, None, None).unwrap();
        let a = ambiguate_derived(&code, &master(1), &ctx, &tables).unwrap();
        let b = ambiguate_derived(&code, &master(1), &ctx, &tables).unwrap();
        assert_eq!(a.public.encode(), b.public.encode());
        assert_eq!(a.tag, b.tag);
        // Another owner: other fakes.
        let c = ambiguate_derived(&code, &master(2), &ctx, &tables).unwrap();
        assert_ne!(a.public.encode(), c.public.encode());

        let back = a.key.disambiguate(&a.public).unwrap();
        assert_eq!(back.positions(), code.positions());
        assert_eq!(back, a.support.disambiguate(&a.public).unwrap());
        for map in 0..shape.map_count() {
            let (_, orig) = code.map(map);
            let (_, got) = back.map(map);
            let range = q8_range_of(orig).unwrap();
            let step = (range[1].to_f32() - range[0].to_f32()) / 127.0;
            for (x, y) in orig.iter().zip(got) {
                assert_eq!(x.signum(), y.signum());
                // Half a step of rounding, one more where a real was moved.
                assert!((x - y).abs() <= 1.5 * step + 1e-3 * x.abs(), "{x} vs {y}");
            }
        }
        assert!(a.nudged < shape.map_count() * 64 / 5, "{} nudged", a.nudged);
    }

    #[test]
    fn previews_reveal_exactly_the_largest_reals() {
        let shape = CodeShape::new(2, 4, 256).unwrap();
        let code = gaussian_code(3, shape, 64);
        let ctx = context(64, vec![16, 32, 64]);
        let tables = FakeTables::new(4, 256, None, None).unwrap();
        let d = ambiguate_derived(&code, &master(3), &ctx, &tables).unwrap();
        let full = d.key.disambiguate(&d.public).unwrap();
        for kp in [16u16, 32] {
            let preview = d.key.preview(kp).unwrap();
            assert_eq!(preview.tier(), Tier::Preview);
            let got = preview.disambiguate(&d.public).unwrap();
            assert_eq!(got.nnz(), kp);
            for map in 0..shape.map_count() {
                let (fp, fv) = full.map(map);
                let mut order: Vec<usize> = (0..fp.len()).collect();
                order.sort_by(|&a, &b| fv[b].abs().total_cmp(&fv[a].abs()).then(fp[a].cmp(&fp[b])));
                let mut want: Vec<u16> = order[..kp as usize].iter().map(|&i| fp[i]).collect();
                want.sort_unstable();
                assert_eq!(got.map(map).0, &want[..]);
            }
            // A preview key cannot be widened.
            assert!(preview.preview(64).is_err());
        }
        // The tier-16 key derived from the tier-32 key is the one derived from the full key.
        assert_eq!(d.key.preview(32).unwrap().preview(16).unwrap(), d.key.preview(16).unwrap());
    }

    #[test]
    fn a_wrong_key_is_refused_not_decoded() {
        let shape = CodeShape::new(1, 4, 256).unwrap();
        let code = gaussian_code(5, shape, 64);
        let ctx = context(64, vec![16, 64]);
        let tables = FakeTables::new(4, 256, None, None).unwrap();
        let d = ambiguate_derived(&code, &master(5), &ctx, &tables).unwrap();
        let other = ambiguate_derived(&gaussian_code(6, shape, 64), &master(5), &ctx, &tables).unwrap();
        // The other image's key walks this code to a wrong support (or fails): never the truth.
        match other.key.disambiguate(&d.public) {
            Ok(wrong) => assert_ne!(wrong.positions(), code.positions()),
            Err(e) => assert!(e.to_string().contains("not this code's"), "{e}"),
        }
    }

    #[test]
    fn fakes_follow_the_rates_and_span_the_levels() {
        // Weights r/(1-r): 1 on positions 0..64, 1/4 elsewhere, so about
        // 64 / (64 + 192/4) = 57% of the fakes land in 0..64.
        let (maps, dim) = (1u16, 256u16);
        let mut rates = vec![0.2f32; 256];
        rates[..64].iter_mut().for_each(|r| *r = 0.5);
        let tables = FakeTables::new(maps, dim, Some(&rates), None).unwrap();
        let ctx = context(32, vec![32]);
        let shape = CodeShape::new(400, maps, dim).unwrap();
        let code = gaussian_code(7, shape, 32);
        let d = ambiguate_derived(&code, &master(7), &ctx, &tables).unwrap();
        let QuantizedValues::Q8 { levels, .. } = d.public.quantized() else { panic!("q8") };
        let (mut fakes_low, mut fakes, mut min_only_real) = (0usize, 0usize, 0usize);
        for map in 0..shape.map_count() {
            let reals = d.support.map(map);
            let bytes = &levels[map * 64..(map + 1) * 64];
            let pos = &d.public.positions()[map * 64..(map + 1) * 64];
            let is_real = |i: usize| reals.binary_search(&(i as u16)).is_ok();
            for i in (0..64).filter(|&i| !is_real(i)) {
                fakes += 1;
                fakes_low += usize::from(pos[i] < 64);
            }
            let min = bytes.iter().map(|b| b & 0x7f).min().unwrap_or(0);
            if (0..64).filter(|&i| bytes[i] & 0x7f == min).all(is_real) {
                min_only_real += 1;
            }
        }
        let share = fakes_low as f64 / fakes as f64;
        assert!((0.50..0.65).contains(&share), "{share} of fakes in the busy band");
        // The smallest published level is not a sure sign of a real.
        assert!(min_only_real < shape.map_count() * 3 / 4, "{min_only_real} of {} maps", shape.map_count());
    }

    #[test]
    fn reals_of_equal_magnitude_settle() {
        // Every real of a map at one magnitude: all at level 0, so no move keeps
        // a real inside its band and the top-down fallback must settle them.
        let (maps, dim) = (4u16, 256u16);
        let shape = CodeShape::new(50, maps, dim).unwrap();
        let dense: Vec<f32> = (0..shape.dense_len())
            .map(|i| match i % 256 {
                p if p < 64 => {
                    if (i / 256) % 3 == 0 {
                        1.0
                    } else if p % 2 == 0 {
                        2.0
                    } else {
                        -2.0
                    }
                }
                p => 1e-3 * (1.0 + p as f32 / 256.0),
            })
            .collect();
        let code = SparseCode::top_k(&dense, shape, 64).unwrap();
        let tables = FakeTables::new(maps, dim, None, None).unwrap();
        for seed in 0..4 {
            let d = ambiguate_derived(&code, &master(seed), &context(64, vec![16, 32, 64]), &tables).unwrap();
            assert_eq!(d.key.disambiguate(&d.public).unwrap().positions(), code.positions());
            for kp in [16, 32] {
                assert_eq!(d.key.preview(kp).unwrap().disambiguate(&d.public).unwrap().nnz(), kp);
            }
        }
    }

    #[test]
    fn inclusion_probabilities_sum_and_cap() {
        let pi = inclusion_probabilities(&[10.0, 1.0, 1.0, 1.0, 1.0], 2);
        assert!((pi.iter().sum::<f64>() - 2.0).abs() < 1e-9);
        assert!((pi[0] - 1.0).abs() < 1e-9 && (pi[1] - 0.25).abs() < 1e-6);
    }

    #[test]
    fn pmf_of_quantiles_sums_to_one() {
        let q: Vec<f32> = (0..17).map(|i| (i * 7) as f32).collect();
        let pmf = pmf_of_quantiles(&q);
        assert!((pmf.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let point: Vec<f32> = vec![5.0; 17];
        assert!((pmf_of_quantiles(&point)[5] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn fitted_tables_round_trip_through_the_manifest() {
        let shape = CodeShape::new(50, 2, 64).unwrap();
        let code = gaussian_code(11, shape, 16);
        let mut fitter = TableFitter::new(2, 64);
        fitter.add(&code).unwrap();
        let fitted = fitter.finish();
        assert!((fitted.rates.iter().sum::<f32>() - 32.0).abs() < 1e-3, "rates sum to maps × k");
        let mut manifest = serde_json::json!({"value_distribution": {}});
        fitted.write_into(&mut manifest).unwrap();
        let q = parse_level_quantiles(&manifest["value_distribution"]["level_quantiles"], 2, 64).unwrap();
        assert_eq!(q.len(), 2 * 64 * QUANTILE_POINTS);
        for (a, b) in q.iter().zip(&fitted.quantiles) {
            assert!((a - b).abs() <= 0.5, "{a} vs {b}");
        }
        // Every map has one real at level 0 and one at 127: the extremes are reached.
        assert!(q.chunks(QUANTILE_POINTS).all(|c| c[16] >= c[0]));
        assert!(q.chunks(QUANTILE_POINTS).any(|c| c[0] == 0.0) && q.chunks(QUANTILE_POINTS).any(|c| c[16] == 127.0));
    }

    /// Maps whose scale decides where their reals are and whose position
    /// decides a real's rank: small maps hold reals at positions 0..32, large
    /// ones at 32..64, and the value grows with the position, as the reals
    /// of flat and of busy tiles differ.
    fn scale_dependent_code(seed: u64, shape: CodeShape, k: u16) -> SparseCode {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (mut positions, mut values) = (Vec::new(), Vec::new());
        for _ in 0..shape.map_count() {
            let large = rng.random::<bool>();
            let scale = if large { 10.0 } else { 0.1 } * (1.0 + rng.random::<f32>());
            let base = if large { 32u16 } else { 0 };
            let mut pos: Vec<u16> = (base..base + 32).collect();
            pos.shuffle(&mut rng);
            let mut pos = pos[..k as usize].to_vec();
            pos.sort_unstable();
            for &p in &pos {
                values.push(scale * (1.0 + (p % 32) as f32) / 32.0 * (1.0 + 0.01 * rng.random::<f32>()));
            }
            positions.extend(pos);
        }
        SparseCode::from_parts(shape, k, positions, values).unwrap()
    }

    /// For the fakes of a public code: the share at a position of their map's
    /// half, and the mean distance of their level from the level a real there
    /// would have had.
    fn fakes_against_the_law(code: &SparseCode, d: &Derived) -> (f64, f64) {
        let Some(QuantizedValues::Q8 { levels, ranges }) = Some(d.public.quantized().clone()) else { unreachable!() };
        let n = d.public.nnz() as usize;
        let (mut in_half, mut distance, mut fakes) = (0usize, 0f64, 0usize);
        for map in 0..code.shape().map_count() {
            let (pos, val) = code.map(map);
            let large = pos[0] >= 32;
            let scale = val[0] / ((1.0 + (pos[0] % 32) as f32) / 32.0);
            let (lo, hi) = (ranges[map][0].to_f32(), ranges[map][1].to_f32());
            let reals = d.support.map(map);
            for i in 0..n {
                if reals.binary_search(&(i as u16)).is_ok() {
                    continue;
                }
                let p = d.public.positions()[map * n + i];
                fakes += 1;
                in_half += usize::from((p >= 32) == large);
                let would = ((scale * (1.0 + (p % 32) as f32) / 32.0 - lo) / (hi - lo) * 127.0).clamp(0.0, 127.0);
                distance += (would as f64 - (levels[map * n + i] & 0x7f) as f64).abs();
            }
        }
        (in_half as f64 / fakes as f64, distance / fakes as f64)
    }

    #[test]
    fn scale_tables_round_trip_and_fakes_follow_their_maps_scale() {
        let (maps, dim, k) = (2u16, 64u16, 16u16);
        let mut fitter = TableFitter::new(maps, dim);
        for seed in 0..6 {
            fitter.add(&scale_dependent_code(100 + seed, CodeShape::new(100, maps, dim).unwrap(), k)).unwrap();
        }
        let fitted = fitter.finish();
        assert_eq!(fitted.scale_edges.len(), SCALE_BUCKETS - 1);
        for row in fitted.scale_rates.chunks(dim as usize) {
            assert!((row.iter().sum::<f32>() - k as f32).abs() < 1e-3, "each bucket's rates sum to k");
        }
        let mut manifest = serde_json::json!({"value_distribution": {}});
        fitted.write_into(&mut manifest).unwrap();
        let scale = &manifest["value_distribution"]["scale_tables"];
        let plain = FakeTables::new(maps, dim, Some(&fitted.rates), Some(&fitted.quantiles)).unwrap();
        let tables = plain.clone().with_scale_tables(scale).unwrap();
        assert!(tables.is_scale_conditioned() && !plain.is_scale_conditioned());
        // A malformed table is refused, not used.
        let mut broken = scale.clone();
        broken["edges"] = serde_json::json!([1.0, 0.0, 2.0, 3.0, 4.0]);
        assert!(plain.clone().with_scale_tables(&broken).is_err());

        let shape = CodeShape::new(40, maps, dim).unwrap();
        let code = scale_dependent_code(7, shape, k);
        let ctx = context(16, vec![4, 8, 16]);
        let conditioned = ambiguate_derived(&code, &master(3), &ctx, &tables).unwrap();
        let back = conditioned.key.disambiguate(&conditioned.public).unwrap();
        assert_eq!(back.positions(), code.positions());
        let (half, distance) = fakes_against_the_law(&code, &conditioned);
        // The same fakes from tables that ignore the scale: half of them in
        // the wrong half, where no real ever is.
        let (plain_half, plain_distance) =
            fakes_against_the_law(&code, &ambiguate_derived(&code, &master(3), &ctx, &plain).unwrap());
        assert!(half > 0.8 && plain_half < 0.6, "{half} vs {plain_half}");
        // Levels near what a real at the position would have had (a level
        // drawn without regard to the position lands about 40 away).
        assert!(distance < 24.0 && plain_distance < 24.0, "{distance} vs {plain_distance}");
    }

    #[test]
    fn pmf_of_ranks_follows_the_maps_levels() {
        let sorted: Vec<u8> = (0..16u8).rev().map(|i| i * 8).collect(); // 120, 112, .., 0
        let uniform: Vec<f32> = (0..QUANTILE_POINTS).map(|i| i as f32 / 16.0).collect();
        let pmf = pmf_of_ranks(&uniform, &sorted);
        assert!((pmf.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        assert!(pmf[121..].iter().sum::<f32>() < 0.02, "nothing far above the largest real");
        // Ranks only among the smallest quarter: levels only near the bottom.
        let low: Vec<f32> = (0..QUANTILE_POINTS).map(|i| 0.75 + 0.25 * i as f32 / 16.0).collect();
        let pmf = pmf_of_ranks(&low, &sorted);
        assert!(pmf[..33].iter().sum::<f32>() > 0.99, "{:?}", &pmf[..40]);
    }

    #[test]
    fn debug_hides_secrets() {
        let key = master(9).entry_key(&EntryTag([1; 32]), &Bands::new(vec![8, 16]).unwrap());
        let text = format!("{key:?} {:?} {:?}", master(9), EntryTag([1; 32]));
        assert!(!text.contains("secret:") && !text.contains("9, 9") && !text.contains("1, 1"), "{text}");
    }
}
