//! Sparse codes: L code-maps of m dims per tile, exactly k nonzeros each.

use crate::error::{Error, Result};

/// Shape of an image's code: `tiles` tiles of `maps` code-maps of `dim` dims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodeShape {
    pub tiles: u32,
    pub maps: u16,
    pub dim: u16,
}

impl CodeShape {
    /// Upper bound on tiles per image: 16384 tiles is a 8192x8192 image at 64x64 tiles.
    pub const MAX_TILES: u32 = 1 << 14;
    /// Upper bound on code-maps per tile.
    pub const MAX_MAPS: u16 = 1024;

    pub fn new(tiles: u32, maps: u16, dim: u16) -> Result<Self> {
        if tiles == 0 || tiles > Self::MAX_TILES {
            return Err(Error::invalid("code shape", format!("tiles must be 1 to {}", Self::MAX_TILES)));
        }
        if maps == 0 || maps > Self::MAX_MAPS {
            return Err(Error::invalid("code shape", format!("maps must be 1 to {}", Self::MAX_MAPS)));
        }
        if dim == 0 {
            return Err(Error::invalid("code shape", "dim must be at least 1"));
        }
        Ok(CodeShape { tiles, maps, dim })
    }

    /// Number of code-maps in the whole image.
    pub fn map_count(&self) -> usize {
        self.tiles as usize * self.maps as usize
    }

    /// Number of dense values (tiles × maps × dim).
    pub fn dense_len(&self) -> usize {
        self.map_count() * self.dim as usize
    }
}

/// A sparse code with exactly `nnz` nonzeros in every code-map.
///
/// Positions are ascending within each map; `positions` and `values` are the
/// concatenation of all maps in order (tile-major, then map).
#[derive(Clone, Debug, PartialEq)]
pub struct SparseCode {
    shape: CodeShape,
    nnz: u16,
    positions: Vec<u16>,
    values: Vec<f32>,
}

impl SparseCode {
    /// Builds from parts, checking every invariant (used by the format readers too).
    pub fn from_parts(shape: CodeShape, nnz: u16, positions: Vec<u16>, values: Vec<f32>) -> Result<Self> {
        if nnz > shape.dim {
            return Err(Error::invalid("sparse code", "more nonzeros than dims"));
        }
        let expected = shape.map_count() * nnz as usize;
        if positions.len() != expected || values.len() != expected {
            return Err(Error::invalid("sparse code", "wrong number of nonzeros"));
        }
        let n = nnz as usize;
        for (map_pos, map_val) in positions.chunks(n.max(1)).zip(values.chunks(n.max(1))) {
            if map_pos.windows(2).any(|w| w[0] >= w[1]) {
                return Err(Error::invalid("sparse code", "positions not strictly ascending"));
            }
            if map_pos.last().is_some_and(|&p| p >= shape.dim) {
                return Err(Error::invalid("sparse code", "position out of range"));
            }
            if map_val.iter().any(|v| !v.is_finite() || *v == 0.0) {
                return Err(Error::invalid("sparse code", "values must be finite and nonzero"));
            }
        }
        Ok(SparseCode { shape, nnz, positions, values })
    }

    /// Keeps the `k` largest magnitudes of every code-map of a dense code (signs kept).
    ///
    /// Ties are broken towards the lower position, so the result is deterministic.
    /// Zeros are never kept: a map with fewer than `k` nonzero values is an error,
    /// as are non-finite values.
    pub fn top_k(dense: &[f32], shape: CodeShape, k: u16) -> Result<Self> {
        if dense.len() != shape.dense_len() {
            return Err(Error::invalid(
                "dense code",
                format!("expected {} values, got {}", shape.dense_len(), dense.len()),
            ));
        }
        if k == 0 || k > shape.dim {
            return Err(Error::invalid("k", format!("must be 1 to {}", shape.dim)));
        }
        if dense.iter().any(|v| !v.is_finite()) {
            return Err(Error::Model("encoder produced a non-finite value".into()));
        }
        let (m, k) = (shape.dim as usize, k as usize);
        let mut positions = Vec::with_capacity(shape.map_count() * k);
        let mut values = Vec::with_capacity(shape.map_count() * k);
        let mut order: Vec<u16> = Vec::with_capacity(m);
        for map in dense.chunks_exact(m) {
            order.clear();
            order.extend(0..m as u16);
            // Descending magnitude, ascending position on ties: a total order.
            let by_magnitude =
                |a: &u16, b: &u16| map[*b as usize].abs().total_cmp(&map[*a as usize].abs()).then(a.cmp(b));
            order.select_nth_unstable_by(k - 1, by_magnitude);
            let kept = &mut order[..k];
            if kept.iter().any(|&p| map[p as usize] == 0.0) {
                return Err(Error::Model(format!("a code-map has fewer than {k} nonzero values")));
            }
            kept.sort_unstable();
            positions.extend_from_slice(kept);
            values.extend(kept.iter().map(|&p| map[p as usize]));
        }
        Ok(SparseCode { shape, nnz: k as u16, positions, values })
    }

    pub fn shape(&self) -> CodeShape {
        self.shape
    }

    /// Nonzeros per code-map.
    pub fn nnz(&self) -> u16 {
        self.nnz
    }

    pub fn positions(&self) -> &[u16] {
        &self.positions
    }

    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// Positions and values of code-map `index` (0 .. tiles × maps).
    pub fn map(&self, index: usize) -> (&[u16], &[f32]) {
        let n = self.nnz as usize;
        let r = index * n..(index + 1) * n;
        (&self.positions[r.clone()], &self.values[r])
    }

    /// The dense code (tiles × maps × dim), zeros elsewhere: what the decoder takes.
    pub fn to_dense(&self) -> Vec<f32> {
        let m = self.shape.dim as usize;
        let n = self.nnz as usize;
        let mut dense = vec![0.0f32; self.shape.dense_len()];
        for (i, out) in dense.chunks_exact_mut(m).enumerate() {
            for j in i * n..(i + 1) * n {
                out[self.positions[j] as usize] = self.values[j];
            }
        }
        dense
    }

    /// Negates the values where `which` is true (same length as the values).
    pub(crate) fn negate(&mut self, which: &[bool]) {
        for (v, &flip) in self.values.iter_mut().zip(which) {
            if flip {
                *v = -*v;
            }
        }
    }

    /// Keeps, in every map, the nonzeros at the given indices (ascending, into
    /// the map's nonzeros). Used to disambiguate with a key or to guess.
    pub(crate) fn select(&self, kept: u16, indices: &[u16]) -> Result<SparseCode> {
        let (n, kk) = (self.nnz as usize, kept as usize);
        if indices.len() != self.shape.map_count() * kk {
            return Err(Error::invalid("selection", "wrong number of indices"));
        }
        let mut positions = Vec::with_capacity(indices.len());
        let mut values = Vec::with_capacity(indices.len());
        for (map, sel) in indices.chunks(kk.max(1)).enumerate().take(self.shape.map_count()) {
            let base = map * n;
            for &i in sel {
                if i as usize >= n {
                    return Err(Error::invalid("selection", "index out of range"));
                }
                positions.push(self.positions[base + i as usize]);
                values.push(self.values[base + i as usize]);
            }
        }
        SparseCode::from_parts(self.shape, kept, positions, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_largest_magnitudes_with_signs() {
        let shape = CodeShape::new(1, 2, 5).unwrap();
        let dense = [0.1, -3.0, 2.0, 0.5, -0.2, 1.0, 1.0, -1.0, 0.0, 4.0];
        let c = SparseCode::top_k(&dense, shape, 2).unwrap();
        assert_eq!(c.map(0), (&[1u16, 2][..], &[-3.0f32, 2.0][..]));
        // Ties between 1.0, 1.0, -1.0: the lowest position wins.
        assert_eq!(c.map(1), (&[0u16, 4][..], &[1.0f32, 4.0][..]));
        let dense_back = c.to_dense();
        assert_eq!(dense_back, vec![0.0, -3.0, 2.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 4.0]);
    }

    #[test]
    fn top_k_rejects_non_finite_and_short_maps() {
        let shape = CodeShape::new(1, 1, 4).unwrap();
        assert!(SparseCode::top_k(&[1.0, f32::NAN, 0.0, 1.0], shape, 1).is_err());
        assert!(SparseCode::top_k(&[1.0, 0.0, 0.0, 0.0], shape, 2).is_err());
        assert!(SparseCode::top_k(&[1.0, 2.0], shape, 1).is_err());
    }

    #[test]
    fn from_parts_checks_invariants() {
        let shape = CodeShape::new(1, 1, 8).unwrap();
        assert!(SparseCode::from_parts(shape, 2, vec![3, 1], vec![1.0, 1.0]).is_err());
        assert!(SparseCode::from_parts(shape, 2, vec![1, 8], vec![1.0, 1.0]).is_err());
        assert!(SparseCode::from_parts(shape, 2, vec![1, 2], vec![1.0, 0.0]).is_err());
        assert!(SparseCode::from_parts(shape, 2, vec![1, 2], vec![1.0, f32::INFINITY]).is_err());
        assert!(SparseCode::from_parts(shape, 2, vec![1, 2], vec![1.0, -1.0]).is_ok());
    }
}
