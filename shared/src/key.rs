//! Support keys: which of each code-map's nonzeros are real.

use crate::ambiguate::AmbiguatedCode;
use crate::code::{CodeShape, SparseCode};
use crate::derived::DerivedKey;
use crate::error::{Error, Result};
use crate::ids::Tier;

/// For every code-map, the indices (ascending, into the map's `nnz` public
/// nonzeros) of the `kept` ones a holder may use: all k real ones for a full
/// key, only the k_p largest real ones for a preview key; and, when the
/// owner scrambled the signs of the real values, one bit per kept value that
/// says whether its published sign is flipped.
///
/// Key material: never log it (Debug prints only its shape).
#[derive(Clone, PartialEq, Eq)]
pub struct SupportKey {
    tier: Tier,
    tiles: u32,
    maps: u16,
    nnz: u16,
    kept: u16,
    indices: Vec<u16>,
    /// Per kept value (same order as `indices`): true when its published sign is flipped.
    flips: Option<Vec<bool>>,
}

impl std::fmt::Debug for SupportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupportKey")
            .field("tier", &self.tier)
            .field("tiles", &self.tiles)
            .field("maps", &self.maps)
            .field("nnz", &self.nnz)
            .field("kept", &self.kept)
            .field("signs", &self.flips.is_some())
            .finish_non_exhaustive()
    }
}

impl SupportKey {
    /// Most nonzeros a map of a key may have (k'): it bounds the subset coder's
    /// table, which a decoder builds from a few header bytes.
    pub const MAX_NNZ: u16 = 512;
    /// Most real indices a key may hold in all (tiles × maps × kept): it bounds
    /// what a short hostile key can make a decoder allocate (128 MiB of u16).
    pub const MAX_INDICES: usize = 1 << 26;

    /// Refuses dimensions beyond [`Self::MAX_NNZ`] and [`Self::MAX_INDICES`].
    pub fn check_bounds(tiles: u32, maps: u16, nnz: u16, kept: u16) -> Result<()> {
        if nnz > Self::MAX_NNZ {
            return Err(Error::invalid("support key", format!("at most {} nonzeros a map", Self::MAX_NNZ)));
        }
        if tiles as usize * maps as usize * kept as usize > Self::MAX_INDICES {
            return Err(Error::invalid("support key", format!("at most {} real indices in all", Self::MAX_INDICES)));
        }
        Ok(())
    }

    /// `tiles` and `maps` are those of the code the key belongs to (its dim is not needed).
    pub fn from_parts(tier: Tier, tiles: u32, maps: u16, nnz: u16, kept: u16, indices: Vec<u16>) -> Result<Self> {
        // Same bounds as a code's shape; dim only has to hold the nonzeros.
        CodeShape::new(tiles, maps, nnz.max(1))?;
        if kept == 0 || kept > nnz {
            return Err(Error::invalid("support key", "1 <= kept <= nnz must hold"));
        }
        Self::check_bounds(tiles, maps, nnz, kept)?;
        let k = kept as usize;
        if indices.len() != tiles as usize * maps as usize * k {
            return Err(Error::invalid("support key", "wrong number of indices"));
        }
        for map in indices.chunks(k.max(1)) {
            if map.windows(2).any(|w| w[0] >= w[1]) || map.last().is_some_and(|&i| i >= nnz) {
                return Err(Error::invalid("support key", "indices not ascending within 0..nnz"));
            }
        }
        Ok(SupportKey { tier, tiles, maps, nnz, kept, indices, flips: None })
    }

    /// Adds the sign bits of the kept values (one per index, same order).
    pub fn with_sign_flips(mut self, flips: Vec<bool>) -> Result<Self> {
        if flips.len() != self.indices.len() {
            return Err(Error::invalid("support key", "one sign bit per kept value"));
        }
        self.flips = Some(flips);
        Ok(self)
    }

    /// Sign bits of the kept values of map `index`, when the key carries them.
    pub fn map_flips(&self, index: usize) -> Option<&[bool]> {
        let k = self.kept as usize;
        self.flips.as_ref().map(|f| &f[index * k..(index + 1) * k])
    }

    /// Whether the key carries sign bits (the owner scrambled the real values' signs).
    pub fn has_signs(&self) -> bool {
        self.flips.is_some()
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn tiles(&self) -> u32 {
        self.tiles
    }

    pub fn maps(&self) -> u16 {
        self.maps
    }

    /// Code-maps covered: tiles × maps.
    pub fn map_count(&self) -> usize {
        self.tiles as usize * self.maps as usize
    }

    /// Public nonzeros per map (k') the key indexes into.
    pub fn nnz(&self) -> u16 {
        self.nnz
    }

    /// Nonzeros per map the key keeps (k, or k_p for a preview).
    pub fn kept(&self) -> u16 {
        self.kept
    }

    /// Kept indices of map `index`.
    pub fn map(&self, index: usize) -> &[u16] {
        let k = self.kept as usize;
        &self.indices[index * k..(index + 1) * k]
    }

    fn check_fits(&self, code: &AmbiguatedCode) -> Result<()> {
        let shape = code.shape();
        if (shape.tiles, shape.maps, code.nnz()) != (self.tiles, self.maps, self.nnz) {
            return Err(Error::invalid(
                "support key",
                format!(
                    "key is for {} tiles of {} maps with {} nonzeros each, code has {} tiles of {} maps with {}",
                    self.tiles,
                    self.maps,
                    self.nnz,
                    shape.tiles,
                    shape.maps,
                    code.nnz()
                ),
            ));
        }
        Ok(())
    }

    /// Zeroes the nonzeros the key does not keep: the true code (or its preview).
    pub fn disambiguate(&self, code: &AmbiguatedCode) -> Result<SparseCode> {
        self.check_fits(code)?;
        let mut selected = code.to_sparse()?.select(self.kept, &self.indices)?;
        if let Some(flips) = &self.flips {
            selected.negate(flips);
        }
        Ok(selected)
    }

    /// A preview key: in every map, the `k_preview` kept nonzeros of largest
    /// quantized magnitude (ties: lower position first).
    pub fn preview(&self, code: &AmbiguatedCode, k_preview: u16) -> Result<SupportKey> {
        self.check_fits(code)?;
        if k_preview == 0 || k_preview > self.kept {
            return Err(Error::invalid("preview", format!("k_preview must be 1 to {}", self.kept)));
        }
        let values = code.values();
        let n = self.nnz as usize;
        let mut indices = Vec::with_capacity(self.map_count() * k_preview as usize);
        let mut flips = self.flips.as_ref().map(|_| Vec::with_capacity(indices.capacity()));
        for map in 0..self.map_count() {
            let all = self.map(map);
            // Positions in `all` (0..kept), largest magnitude first; indices ascend
            // with position, so comparing them breaks ties by position.
            let mag = |j: usize| values[map * n + all[j] as usize].abs();
            let mut order: Vec<usize> = (0..all.len()).collect();
            order.sort_by(|&a, &b| mag(b).total_cmp(&mag(a)).then(a.cmp(&b)));
            order.truncate(k_preview as usize);
            order.sort_unstable();
            indices.extend(order.iter().map(|&j| all[j]));
            if let (Some(out), Some(bits)) = (flips.as_mut(), self.map_flips(map)) {
                out.extend(order.iter().map(|&j| bits[j]));
            }
        }
        let key = SupportKey::from_parts(Tier::Preview, self.tiles, self.maps, self.nnz, k_preview, indices)?;
        match flips {
            Some(f) => key.with_sign_flips(f),
            None => Ok(key),
        }
    }

    /// Size of the key's information in bits: map_count × (log2 C(nnz, kept),
    /// plus one bit per kept value when it carries signs).
    pub fn entropy_bits(&self) -> f64 {
        let signs = if self.flips.is_some() { self.kept as f64 } else { 0.0 };
        self.map_count() as f64 * (crate::combinatorics::log2_binomial(self.nnz as u64, self.kept as u64) + signs)
    }
}

/// A key as the key service sends it: explicit indices (format v2, for v2
/// codes) or a derived secret (format v3, for v3 codes). Never log it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKey {
    Index(SupportKey),
    Derived(DerivedKey),
}

impl EntryKey {
    /// Parses either format (by its version byte), fully validated.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes.get(2) {
            Some(&3) => Ok(EntryKey::Derived(DerivedKey::decode(bytes)?)),
            _ => Ok(EntryKey::Index(SupportKey::decode(bytes)?)),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            EntryKey::Index(k) => k.encode(),
            EntryKey::Derived(k) => k.encode(),
        }
    }

    pub fn tier(&self) -> Tier {
        match self {
            EntryKey::Index(k) => k.tier(),
            EntryKey::Derived(k) => k.tier(),
        }
    }

    /// Real nonzeros per map the key recovers.
    pub fn kept(&self) -> u16 {
        match self {
            EntryKey::Index(k) => k.kept(),
            EntryKey::Derived(k) => k.kept(),
        }
    }

    /// The true code (or its preview) of `code`.
    pub fn disambiguate(&self, code: &AmbiguatedCode) -> Result<SparseCode> {
        match self {
            EntryKey::Index(k) => k.disambiguate(code),
            EntryKey::Derived(k) => k.disambiguate(code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ambiguate::{FakeModel, ValueCodec, ambiguate};
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn preview_keeps_largest_reals() {
        let shape = CodeShape::new(1, 1, 8).unwrap();
        let code = SparseCode::top_k(&[0.0, 5.0, 0.0, -7.0, 0.0, 6.0, 0.0, 0.0], shape, 3).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (public, key) = ambiguate(&code, 2, ValueCodec::F16, &FakeModel::paper(), &mut rng).unwrap();
        let preview = key.preview(&public, 2).unwrap();
        let back = preview.disambiguate(&public).unwrap();
        assert_eq!(back.positions(), &[3, 5]);
        assert_eq!(back.values(), &[-7.0, 6.0]);
        assert_eq!(preview.tier(), Tier::Preview);
        assert!(key.preview(&public, 4).is_err());
    }

    #[test]
    fn refuses_a_key_for_another_shape() {
        let shape = CodeShape::new(1, 1, 8).unwrap();
        let code = SparseCode::top_k(&[1.0, 5.0, 0.0, -7.0, 0.0, 6.0, 0.0, 0.0], shape, 3).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (public, _) = ambiguate(&code, 2, ValueCodec::F16, &FakeModel::paper(), &mut rng).unwrap();
        let (_, other_key) = ambiguate(&code, 1, ValueCodec::F16, &FakeModel::paper(), &mut rng).unwrap();
        assert!(other_key.disambiguate(&public).is_err());
    }

    #[test]
    fn debug_hides_indices() {
        let key = SupportKey::from_parts(Tier::Full, 1, 1, 4, 2, vec![1, 3]).unwrap();
        assert!(!format!("{key:?}").contains("indices"));
    }
}
