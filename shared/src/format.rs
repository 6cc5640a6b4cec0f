//! Versioned binary formats of ambiguated codes and support keys.
//!
//! Ambiguated code ("AMBC", all integers little-endian):
//!
//! ```text
//! magic "AMBC" | version u8 = 2 | codec u8 (1 = q8, 2 = f16) | tiles u32 | maps u16 | dim u16 | nnz u16
//! then per code-map (tile-major):
//!   positions: bitmap of dim bits, LSB first, padding bits zero, exactly nnz set
//!   q8:  lo f16 | hi f16 | nnz bytes (sign bit 7, level bits 0-6)
//!   f16: nnz × f16 (finite, nonzero)
//! then crc32 u32 (CRC-32/ISO-HDLC of every byte before it)
//! ```
//!
//! Support key ("AK"):
//!
//! ```text
//! magic "AK" | version u8 = 2 | tier u8 (1 full, 2 preview) | flags u8 (bit 0: sign bits) |
//! tiles, maps, nnz, kept as LEB128 varints
//! then per code-map: the rank of its kept subset in ceil(log2 C(nnz, kept)) bits, and with
//! flag bit 0, one bit per kept value (1: its published sign is flipped); MSB first, zero
//! padding to the byte
//! then crc32 u32 (as above)
//! ```
//!
//! Derived key, format v3 ("AK" version 3, for v3 codes; see `derived`):
//!
//! ```text
//! magic "AK" | version u8 = 3 | tier u8 (1 full, 2 preview) | band u8 | bands u8 |
//! the bands' sizes as LEB128 varints (strictly ascending, the last is k) | secret 32 bytes
//! then crc32 u32 (as above)
//! ```
//!
//! Readers bound every length by the input, reject trailing bytes and never panic.
//! The checksum is checked last, after the structure, so that a fuzzer reaches
//! every structural check; it makes any flipped bit an error (version 1 had no
//! checksum: a flipped value bit was a different valid code).

use half::f16;

use crate::ambiguate::{AmbiguatedCode, CodeVersion, QuantizedValues, ValueCodec};
use crate::code::CodeShape;
use crate::combinatorics::{BitReader, BitWriter, SubsetCoder};
use crate::derived::{Bands, DerivedKey, MAX_BANDS, SECRET_LEN};
use crate::error::{Error, Result};
use crate::ids::Tier;
use crate::key::SupportKey;

pub const CODE_MAGIC: &[u8; 4] = b"AMBC";
pub const KEY_MAGIC: &[u8; 2] = b"AK";
/// Version of the index key format (and of v2 codes).
pub const VERSION: u8 = 2;
/// Version of the derived key format (and of v3 codes).
pub const DERIVED_VERSION: u8 = 3;
const CODE_HEADER_LEN: usize = 4 + 1 + 1 + 4 + 2 + 2 + 2;
/// Bytes of the CRC-32 trailer of both formats.
const CRC_LEN: usize = 4;
/// Key flag: the key carries a sign bit per kept value.
const KEY_FLAG_SIGNS: u8 = 1;

/// Bounded reader over untrusted bytes.
pub struct Reader<'a> {
    format: &'static str,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(format: &'static str, buf: &'a [u8]) -> Self {
        Reader { format, buf }
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::malformed(self.format, reason)
    }

    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(self.err(format!("truncated in {what}")));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// LEB128, at most `max`, and canonical: re-encoding the value must give
    /// the same bytes (the decoder alone would let high bits of a tenth byte
    /// fall off, so two encodings could name one value).
    pub fn varint(&mut self, what: &str, max: u64) -> Result<u64> {
        use unsigned_varint::decode::Error as Leb;
        let (v, rest) = unsigned_varint::decode::u64(self.buf).map_err(|e| match e {
            Leb::Insufficient => self.err(format!("truncated in {what}")),
            Leb::NotMinimal => self.err(format!("{what} is not minimally encoded")),
            _ => self.err(format!("{what} overflows")),
        })?;
        let used = self.buf.len() - rest.len();
        if unsigned_varint::encode::u64(v, &mut unsigned_varint::encode::u64_buffer()) != &self.buf[..used] {
            return Err(self.err(format!("{what} overflows")));
        }
        if v > max {
            return Err(self.err(format!("{what} {v} exceeds {max}")));
        }
        self.buf = rest;
        Ok(v)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// The rest of the input, which must be exactly `n` bytes.
    pub fn rest_exact(self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.buf.len().cmp(&n) {
            std::cmp::Ordering::Less => Err(self.err(format!("truncated in {what}"))),
            std::cmp::Ordering::Greater => Err(self.err("trailing bytes")),
            std::cmp::Ordering::Equal => Ok(self.buf),
        }
    }

    /// Splits the input into what the checksum covers and the checksum.
    pub fn without_crc(bytes: &[u8]) -> (&[u8], Option<u32>) {
        match bytes.split_last_chunk::<CRC_LEN>() {
            Some((covered, crc)) => (covered, Some(u32::from_le_bytes(*crc))),
            None => (bytes, None),
        }
    }

    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() { Ok(()) } else { Err(self.err("trailing bytes")) }
    }
}

fn push_varint(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(unsigned_varint::encode::u64(v, &mut unsigned_varint::encode::u64_buffer()));
}

/// Appends the CRC-32 of everything in `out`.
fn push_crc(out: &mut Vec<u8>) {
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Checks the trailer of `bytes` (whose structure was already parsed).
fn check_crc(format: &'static str, bytes: &[u8]) -> Result<()> {
    match Reader::without_crc(bytes) {
        (covered, Some(crc)) if crc32fast::hash(covered) == crc => Ok(()),
        (_, Some(_)) => Err(Error::malformed(format, "checksum mismatch: the bytes are corrupt or altered")),
        (_, None) => Err(Error::malformed(format, "truncated in checksum")),
    }
}

/// Bytes per code-map of an ambiguated code.
fn map_len(dim: u16, nnz: u16, codec: ValueCodec) -> usize {
    let bitmap = (dim as usize).div_ceil(8);
    match codec {
        ValueCodec::Q8 => bitmap + 4 + nnz as usize,
        ValueCodec::F16 => bitmap + 2 * nnz as usize,
    }
}

/// Encoded size in bytes of a code of this shape (k' nonzeros a map, or k for a true code).
pub fn code_len(shape: CodeShape, nnz: u16, codec: ValueCodec) -> usize {
    CODE_HEADER_LEN + shape.map_count() * map_len(shape.dim, nnz, codec) + CRC_LEN
}

impl AmbiguatedCode {
    pub fn encode(&self) -> Vec<u8> {
        let shape = self.shape();
        let (dim, nnz) = (shape.dim as usize, self.nnz() as usize);
        let mut out = Vec::with_capacity(code_len(shape, self.nnz(), self.codec()));
        out.extend_from_slice(CODE_MAGIC);
        out.push(self.version().number());
        out.push(self.codec().tag());
        out.extend_from_slice(&shape.tiles.to_le_bytes());
        out.extend_from_slice(&shape.maps.to_le_bytes());
        out.extend_from_slice(&shape.dim.to_le_bytes());
        out.extend_from_slice(&self.nnz().to_le_bytes());
        let mut bitmap = vec![0u8; dim.div_ceil(8)];
        for map in 0..shape.map_count() {
            bitmap.fill(0);
            for &p in &self.positions()[map * nnz..(map + 1) * nnz] {
                bitmap[p as usize / 8] |= 1 << (p % 8);
            }
            out.extend_from_slice(&bitmap);
            match self.quantized() {
                QuantizedValues::Q8 { ranges, levels } => {
                    out.extend_from_slice(&ranges[map][0].to_le_bytes());
                    out.extend_from_slice(&ranges[map][1].to_le_bytes());
                    out.extend_from_slice(&levels[map * nnz..(map + 1) * nnz]);
                }
                QuantizedValues::F16(v) => {
                    for h in &v[map * nnz..(map + 1) * nnz] {
                        out.extend_from_slice(&h.to_le_bytes());
                    }
                }
            }
        }
        push_crc(&mut out);
        out
    }

    /// Parses and fully validates an encoded code.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const F: &str = "ambiguated code";
        let mut r = Reader::new(F, bytes);
        if r.take(4, "magic")? != CODE_MAGIC {
            return Err(Error::malformed(F, "bad magic"));
        }
        let number = r.u8("version")?;
        let version = CodeVersion::from_number(number)
            .ok_or_else(|| Error::malformed(F, format!("unsupported version {number}")))?;
        let codec = ValueCodec::from_tag(r.u8("codec")?).ok_or_else(|| Error::malformed(F, "unknown value codec"))?;
        let (tiles, maps, dim, nnz) = (r.u32("tiles")?, r.u16("maps")?, r.u16("dim")?, r.u16("nnz")?);
        let shape = CodeShape::new(tiles, maps, dim).map_err(|e| Error::malformed(F, e.to_string()))?;
        if nnz == 0 || nnz > dim {
            return Err(Error::malformed(F, "nnz must be 1 to dim"));
        }
        // The declared shape must account for every byte before anything is allocated.
        let per_map = map_len(dim, nnz, codec);
        let body = r.rest_exact(shape.map_count() * per_map + CRC_LEN, "code-maps")?;
        let (body, _) = Reader::without_crc(body);
        let n = nnz as usize;
        let bitmap_len = (dim as usize).div_ceil(8);
        let mut positions = Vec::with_capacity(shape.map_count() * n);
        let mut ranges = Vec::new();
        let mut levels = Vec::new();
        let mut halves = Vec::new();
        for chunk in body.chunks_exact(per_map) {
            let (bitmap, values) = chunk.split_at(bitmap_len);
            let before = positions.len();
            for (byte_index, &byte) in bitmap.iter().enumerate() {
                let mut bits = byte;
                while bits != 0 {
                    let p = byte_index * 8 + bits.trailing_zeros() as usize;
                    if p >= dim as usize {
                        return Err(Error::malformed(F, "position bit set beyond dim"));
                    }
                    positions.push(p as u16);
                    bits &= bits - 1;
                }
            }
            if positions.len() - before != n {
                return Err(Error::malformed(
                    F,
                    format!("a code-map has {} nonzeros, not {n}", positions.len() - before),
                ));
            }
            match codec {
                ValueCodec::Q8 => {
                    let lo = f16::from_le_bytes([values[0], values[1]]);
                    let hi = f16::from_le_bytes([values[2], values[3]]);
                    ranges.push([lo, hi]);
                    levels.extend_from_slice(&values[4..]);
                }
                ValueCodec::F16 => {
                    halves.extend(values.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])));
                }
            }
        }
        let quantized = match codec {
            ValueCodec::Q8 => QuantizedValues::Q8 { ranges, levels },
            ValueCodec::F16 => QuantizedValues::F16(halves),
        };
        let code = AmbiguatedCode::from_parts(shape, nnz, positions, quantized)?.with_version(version)?;
        check_crc(F, bytes)?;
        Ok(code)
    }
}

impl SupportKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.encoded_body_len() + CRC_LEN);
        out.extend_from_slice(KEY_MAGIC);
        out.push(VERSION);
        out.push(self.tier().tag());
        out.push(if self.has_signs() { KEY_FLAG_SIGNS } else { 0 });
        push_varint(&mut out, self.tiles() as u64);
        push_varint(&mut out, self.maps() as u64);
        push_varint(&mut out, self.nnz() as u64);
        push_varint(&mut out, self.kept() as u64);
        // The coder was built for these sizes and the indices were checked at construction.
        let mut w = BitWriter::default();
        if let Ok(coder) = SubsetCoder::new(self.nnz(), self.kept()) {
            for map in 0..self.map_count() {
                let _ = coder.encode(self.map(map), &mut w);
                for &flip in self.map_flips(map).unwrap_or(&[]) {
                    w.push_bit(flip);
                }
            }
        }
        out.extend_from_slice(&w.finish());
        push_crc(&mut out);
        out
    }

    fn encoded_body_len(&self) -> usize {
        let width = SubsetCoder::new(self.nnz(), self.kept()).map(|c| c.width()).unwrap_or(0) as usize;
        let signs = if self.has_signs() { self.kept() as usize } else { 0 };
        (self.map_count() * (width + signs)).div_ceil(8)
    }

    /// Parses and fully validates an encoded key.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const F: &str = "support key";
        let mut r = Reader::new(F, bytes);
        if r.take(2, "magic")? != KEY_MAGIC {
            return Err(Error::malformed(F, "bad magic"));
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(Error::malformed(F, format!("unsupported version {version}")));
        }
        let tier = Tier::from_tag(r.u8("tier")?).ok_or_else(|| Error::malformed(F, "unknown tier"))?;
        let flags = r.u8("flags")?;
        if flags & !KEY_FLAG_SIGNS != 0 {
            return Err(Error::malformed(F, format!("unknown flags {flags:#04x}")));
        }
        let signs = flags & KEY_FLAG_SIGNS != 0;
        let tiles = r.varint("tiles", CodeShape::MAX_TILES as u64)? as u32;
        let maps = r.varint("maps", CodeShape::MAX_MAPS as u64)? as u16;
        let nnz = r.varint("nnz", SupportKey::MAX_NNZ as u64)? as u16;
        let kept = r.varint("kept", nnz as u64)? as u16;
        if kept == 0 || tiles == 0 || maps == 0 {
            return Err(Error::malformed(F, "tiles, maps and kept must be at least 1"));
        }
        // Before any allocation sized by the header: a few hostile bytes must not claim gigabytes.
        SupportKey::check_bounds(tiles, maps, nnz, kept).map_err(|e| Error::malformed(F, e.to_string()))?;
        let map_count = tiles as usize * maps as usize;
        let coder = SubsetCoder::new(nnz, kept)?;
        let per_map = coder.width() as usize + if signs { kept as usize } else { 0 };
        let body_len = (map_count * per_map).div_ceil(8);
        let body = r.rest_exact(body_len + CRC_LEN, "subset ranks")?;
        let (body, _) = Reader::without_crc(body);
        let mut bits = BitReader::new(body);
        let mut indices = Vec::with_capacity(map_count * kept as usize);
        let mut flips = Vec::with_capacity(if signs { map_count * kept as usize } else { 0 });
        for _ in 0..map_count {
            coder.decode(&mut bits, &mut indices)?;
            if signs {
                for _ in 0..kept {
                    flips.push(bits.bit().ok_or_else(|| Error::malformed(F, "truncated sign bits"))?);
                }
            }
        }
        if !bits.only_padding_left() {
            return Err(Error::malformed(F, "nonzero padding bits"));
        }
        let key = SupportKey::from_parts(tier, tiles, maps, nnz, kept, indices)
            .map_err(|e| Error::malformed(F, e.to_string()))?;
        let key = if signs { key.with_sign_flips(flips)? } else { key };
        check_crc(F, bytes)?;
        Ok(key)
    }
}

impl DerivedKey {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.extend_from_slice(KEY_MAGIC);
        out.push(DERIVED_VERSION);
        out.push(self.tier().tag());
        out.push(self.band());
        out.push(self.bands().bounds().len() as u8);
        for &b in self.bands().bounds() {
            push_varint(&mut out, b as u64);
        }
        out.extend_from_slice(self.secret());
        push_crc(&mut out);
        out
    }

    /// Parses and fully validates an encoded derived key.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        const F: &str = "derived key";
        let mut r = Reader::new(F, bytes);
        if r.take(2, "magic")? != KEY_MAGIC {
            return Err(Error::malformed(F, "bad magic"));
        }
        let version = r.u8("version")?;
        if version != DERIVED_VERSION {
            return Err(Error::malformed(F, format!("unsupported version {version}")));
        }
        let tier = Tier::from_tag(r.u8("tier")?).ok_or_else(|| Error::malformed(F, "unknown tier"))?;
        let band = r.u8("band")?;
        let count = r.u8("bands")? as usize;
        if count == 0 || count > MAX_BANDS {
            return Err(Error::malformed(F, format!("1 to {MAX_BANDS} bands")));
        }
        let mut bounds = Vec::with_capacity(count);
        for _ in 0..count {
            bounds.push(r.varint("band size", SupportKey::MAX_NNZ as u64)? as u16);
        }
        let bands = Bands::new(bounds).map_err(|e| Error::malformed(F, e.to_string()))?;
        let rest = r.rest_exact(SECRET_LEN + CRC_LEN, "secret")?;
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&rest[..SECRET_LEN]);
        let key = DerivedKey::from_parts(bands, band, secret).map_err(|e| Error::malformed(F, e.to_string()))?;
        if key.tier() != tier {
            return Err(Error::malformed(F, "tier does not match the band"));
        }
        check_crc(F, bytes)?;
        Ok(key)
    }
}
