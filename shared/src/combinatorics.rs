//! Enumerative coding of k-subsets of n items, so a support key costs
//! ceil(log2 C(n, k)) bits per code-map: within a bit of the entropy bound.
//!
//! A subset c_0 < c_1 < ... < c_{k-1} has rank sum_i C(c_i, i + 1) (the
//! combinatorial number system). Counts fit u128 for the usual sizes
//! (C(128, 64) < 2^125); larger ones fall back to arbitrary precision.

use num_bigint::BigUint;
use num_traits::{One, Zero};

use crate::error::{Error, Result};

/// Writes bits most significant first.
#[derive(Default)]
pub struct BitWriter {
    bytes: Vec<u8>,
    used: u32,
}

impl BitWriter {
    pub fn push_bit(&mut self, bit: bool) {
        if self.used.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if bit {
            let last = self.bytes.len() - 1;
            self.bytes[last] |= 0x80 >> (self.used % 8);
        }
        self.used += 1;
    }

    /// Appends the low `width` bits of `value`, most significant first.
    pub fn push_u128(&mut self, value: u128, width: u32) {
        for i in (0..width).rev() {
            self.push_bit((value >> i) & 1 == 1);
        }
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads bits most significant first; every read is bounded.
pub struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BitReader { bytes, pos: 0 }
    }

    pub fn bit(&mut self) -> Option<bool> {
        let byte = *self.bytes.get(self.pos / 8)?;
        let bit = byte & (0x80 >> (self.pos % 8)) != 0;
        self.pos += 1;
        Some(bit)
    }

    pub fn u128(&mut self, width: u32) -> Option<u128> {
        let mut v = 0u128;
        for _ in 0..width {
            v = (v << 1) | self.bit()? as u128;
        }
        Some(v)
    }

    /// True when only zero padding bits remain in the current byte and nothing after it.
    pub fn only_padding_left(&self) -> bool {
        let full = self.pos.div_ceil(8);
        if full != self.bytes.len() {
            return false;
        }
        let rem = self.pos % 8;
        rem == 0 || self.bytes[self.pos / 8] & (0xffu8 >> rem) == 0
    }
}

/// Counts in a Pascal table, exact: u128 where it fits, else big integers.
trait Count: Clone + Ord {
    fn zero() -> Self;
    fn one() -> Self;
    fn checked_add(&self, other: &Self) -> Option<Self>;
    fn sub(&self, other: &Self) -> Self;
    fn bit_len(&self) -> u32;
    fn write(&self, w: &mut BitWriter, width: u32);
    fn read(r: &mut BitReader<'_>, width: u32) -> Option<Self>;
}

impl Count for u128 {
    fn zero() -> Self {
        0
    }
    fn one() -> Self {
        1
    }
    fn checked_add(&self, other: &Self) -> Option<Self> {
        u128::checked_add(*self, *other)
    }
    fn sub(&self, other: &Self) -> Self {
        self - other
    }
    fn bit_len(&self) -> u32 {
        128 - self.leading_zeros()
    }
    fn write(&self, w: &mut BitWriter, width: u32) {
        w.push_u128(*self, width)
    }
    fn read(r: &mut BitReader<'_>, width: u32) -> Option<Self> {
        r.u128(width)
    }
}

impl Count for BigUint {
    fn zero() -> Self {
        Zero::zero()
    }
    fn one() -> Self {
        One::one()
    }
    fn checked_add(&self, other: &Self) -> Option<Self> {
        Some(self + other)
    }
    fn sub(&self, other: &Self) -> Self {
        self - other
    }
    fn bit_len(&self) -> u32 {
        self.bits() as u32
    }
    fn write(&self, w: &mut BitWriter, width: u32) {
        for i in (0..width as u64).rev() {
            w.push_bit(self.bit(i));
        }
    }
    fn read(r: &mut BitReader<'_>, width: u32) -> Option<Self> {
        let mut v = <BigUint as Zero>::zero();
        for i in (0..width as u64).rev() {
            if r.bit()? {
                v.set_bit(i, true);
            }
        }
        Some(v)
    }
}

/// Pascal table C(c, i) for c <= n, i <= k.
struct Table<T> {
    k: usize,
    cells: Vec<T>,
}

impl<T: Count> Table<T> {
    fn build(n: usize, k: usize) -> Option<Self> {
        let mut cells = vec![T::zero(); (n + 1) * (k + 1)];
        for c in 0..=n {
            cells[c * (k + 1)] = T::one();
            for i in 1..=k.min(c) {
                let v = cells[(c - 1) * (k + 1) + i - 1].checked_add(&cells[(c - 1) * (k + 1) + i])?;
                cells[c * (k + 1) + i] = v;
            }
        }
        Some(Table { k, cells })
    }

    fn get(&self, c: usize, i: usize) -> &T {
        &self.cells[c * (self.k + 1) + i]
    }

    fn encode(&self, n: usize, subset: &[u16], width: u32, w: &mut BitWriter) {
        let mut rank = T::zero();
        for (i, &c) in subset.iter().enumerate() {
            // Sums of distinct C(c_i, i+1) stay below C(n, k): no overflow.
            rank = rank.checked_add(self.get(c as usize, i + 1)).unwrap_or_else(T::zero);
        }
        debug_assert!(subset.iter().all(|&c| (c as usize) < n));
        rank.write(w, width);
    }

    fn decode(&self, n: usize, k: usize, width: u32, r: &mut BitReader<'_>, out: &mut Vec<u16>) -> Option<()> {
        let mut rank = T::read(r, width)?;
        if rank >= *self.get(n, k) {
            return None;
        }
        let start = out.len();
        let mut c = n;
        for i in (1..=k).rev() {
            // Largest c with C(c, i) <= rank; c >= i - 1 always satisfies it (C = 0 or 1 <= ...).
            c -= 1;
            while *self.get(c, i) > rank {
                c -= 1;
            }
            rank = rank.sub(self.get(c, i));
            out.push(c as u16);
        }
        out[start..].reverse();
        Some(())
    }
}

enum Tables {
    Small(Table<u128>),
    Big(Table<BigUint>),
}

/// Encodes and decodes k-subsets of {0, .., n-1} as fixed-width ranks.
pub struct SubsetCoder {
    n: usize,
    k: usize,
    width: u32,
    tables: Tables,
}

impl SubsetCoder {
    pub fn new(n: u16, k: u16) -> Result<Self> {
        if k > n {
            return Err(Error::invalid("subset", "k larger than n"));
        }
        let (n, k) = (n as usize, k as usize);
        let (tables, width) = match Table::<u128>::build(n, k) {
            Some(t) => {
                let width = (t.get(n, k) - 1).bit_len();
                (Tables::Small(t), width)
            }
            None => {
                let t = Table::<BigUint>::build(n, k).ok_or(Error::Crypto("subset table"))?;
                let width = (t.get(n, k).clone() - 1u32).bits() as u32;
                (Tables::Big(t), width)
            }
        };
        Ok(SubsetCoder { n, k, width, tables })
    }

    /// Bits per subset: ceil(log2 C(n, k)).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// log2 C(n, k), the entropy of a uniformly drawn subset.
    pub fn entropy_bits(&self) -> f64 {
        log2_binomial(self.n as u64, self.k as u64)
    }

    /// Appends the rank of `subset` (strictly ascending, each < n, exactly k items).
    pub fn encode(&self, subset: &[u16], w: &mut BitWriter) -> Result<()> {
        if subset.len() != self.k
            || subset.windows(2).any(|p| p[0] >= p[1])
            || subset.last().is_some_and(|&c| c as usize >= self.n)
        {
            return Err(Error::invalid("subset", "not a strictly ascending k-subset of 0..n"));
        }
        match &self.tables {
            Tables::Small(t) => t.encode(self.n, subset, self.width, w),
            Tables::Big(t) => t.encode(self.n, subset, self.width, w),
        }
        Ok(())
    }

    /// Reads one rank and appends its subset (ascending) to `out`.
    pub fn decode(&self, r: &mut BitReader<'_>, out: &mut Vec<u16>) -> Result<()> {
        let ok = match &self.tables {
            Tables::Small(t) => t.decode(self.n, self.k, self.width, r, out),
            Tables::Big(t) => t.decode(self.n, self.k, self.width, r, out),
        };
        ok.ok_or_else(|| Error::malformed("support key", "truncated or out-of-range subset rank"))
    }
}

/// log2 C(n, k) computed in floating point (for size reports).
pub fn log2_binomial(n: u64, k: u64) -> f64 {
    let k = k.min(n - k.min(n));
    (0..k).map(|i| ((n - i) as f64).log2() - ((i + 1) as f64).log2()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(n: u16, subset: Vec<u16>) {
        let coder = SubsetCoder::new(n, subset.len() as u16).unwrap();
        let mut w = BitWriter::default();
        coder.encode(&subset, &mut w).unwrap();
        let bytes = w.finish();
        let mut r = BitReader::new(&bytes);
        let mut out = Vec::new();
        coder.decode(&mut r, &mut out).unwrap();
        assert_eq!(out, subset);
        assert!(r.only_padding_left());
    }

    #[test]
    fn widths_match_the_entropy_bound() {
        let c = SubsetCoder::new(128, 64).unwrap();
        assert_eq!(c.width(), 125);
        assert!((c.entropy_bits() - 124.17).abs() < 0.05, "{}", c.entropy_bits());
        // C(256, 128) does not fit u128: the big-integer path.
        let big = SubsetCoder::new(256, 128).unwrap();
        assert!(matches!(big.tables, Tables::Big(_)));
        assert_eq!(big.width(), 252);
        assert_eq!(SubsetCoder::new(5, 0).unwrap().width(), 0);
        assert_eq!(SubsetCoder::new(5, 5).unwrap().width(), 0);
    }

    #[test]
    fn extremes_round_trip() {
        round_trip(128, (0..64).collect());
        round_trip(128, (64..128).collect());
        round_trip(256, (128..256).collect());
        round_trip(256, (0..128).map(|i| i * 2).collect());
        round_trip(7, vec![]);
        round_trip(3, vec![0, 1, 2]);
    }

    #[test]
    fn rejects_out_of_range_rank() {
        let coder = SubsetCoder::new(4, 2).unwrap(); // C = 6, width 3
        let mut w = BitWriter::default();
        w.push_u128(6, 3);
        let bytes = w.finish();
        assert!(coder.decode(&mut BitReader::new(&bytes), &mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn any_subset_round_trips(n in 1u16..300, seed in any::<u64>()) {
            use rand::{SeedableRng, seq::index::sample};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let k = (seed % (n as u64 + 1)) as usize;
            let mut subset: Vec<u16> = sample(&mut rng, n as usize, k).into_iter().map(|i| i as u16).collect();
            subset.sort_unstable();
            round_trip(n, subset);
        }
    }
}
