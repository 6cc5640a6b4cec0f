//! Property and hostile-input tests of ambiguation, keys and the binary formats.

#![allow(clippy::unwrap_used)]

use ambishare_shared::derived::Derived;
use ambishare_shared::format::code_len;
use ambishare_shared::{
    AmbiguatedCode, Bands, CodeShape, DerivationContext, EntryKey, FakeModel, FakeTables, MasterSecret, ModelId,
    SparseCode, SupportKey, Tier, ValueCodec, ambiguate, ambiguate_derived,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// A dense code with Gaussian-like values (sums of uniforms) and no zeros.
fn dense_code(seed: u64, shape: CodeShape) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..shape.dense_len())
        .map(|_| {
            let v: f32 = (0..4).map(|_| rng.random::<f32>() - 0.5).sum();
            if v == 0.0 { 1e-3 } else { v }
        })
        .collect()
}

fn sample(
    seed: u64,
    shape: CodeShape,
    k: u16,
    k_fake: u16,
    codec: ValueCodec,
) -> (SparseCode, AmbiguatedCode, SupportKey) {
    let code = SparseCode::top_k(&dense_code(seed, shape), shape, k).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
    // Both fake models: the paper's, and σ fitted with position weights.
    let fakes = if seed.is_multiple_of(2) {
        FakeModel::paper()
    } else {
        let rates: Vec<f32> = (0..shape.maps as usize * shape.dim as usize).map(|i| (i % 7) as f32 / 7.0).collect();
        FakeModel::fitted(Some(&rates), shape.maps, shape.dim).unwrap()
    };
    let (public, key) = ambiguate(&code, k_fake, codec, &fakes, &mut rng).unwrap();
    (code, public, key)
}

fn codec_strategy() -> impl Strategy<Value = ValueCodec> {
    prop_oneof![Just(ValueCodec::Q8), Just(ValueCodec::F16)]
}

/// (tiles, maps, dim, k, k_fake) with k + k_fake <= dim.
fn shape_strategy() -> impl Strategy<Value = (u32, u16, u16, u16, u16)> {
    (1u32..4, 1u16..6, 2u16..300).prop_flat_map(|(tiles, maps, dim)| {
        (Just(tiles), Just(maps), Just(dim), 1..dim)
            .prop_flat_map(|(t, m, d, k)| (Just(t), Just(m), Just(d), Just(k), 0..=d - k))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn disambiguate_of_ambiguate_is_the_quantized_code(
        (tiles, maps, dim, k, k_fake) in shape_strategy(), codec in codec_strategy(), seed in any::<u64>()
    ) {
        let shape = CodeShape::new(tiles, maps, dim).unwrap();
        let (code, public, key) = sample(seed, shape, k, k_fake, codec);
        prop_assert_eq!(public.nnz(), k + k_fake);
        // Through the wire formats, as a party would receive them.
        let public = AmbiguatedCode::decode(&public.encode()).unwrap();
        let key = SupportKey::decode(&key.encode()).unwrap();
        let back = key.disambiguate(&public).unwrap();
        prop_assert_eq!(back.positions(), code.positions());
        // Values equal the code's up to its quantization: exactly f16 rounding,
        // or half a q8 level of the map's magnitude range.
        let values = public.values();
        for map in 0..shape.map_count() {
            let (_, orig) = code.map(map);
            let (_, got) = back.map(map);
            let span = values[map * public.nnz() as usize..(map + 1) * public.nnz() as usize]
                .iter()
                .fold(0.0f32, |a, v| a.max(v.abs()));
            for (a, b) in orig.iter().zip(got) {
                prop_assert_eq!(a.signum(), b.signum());
                let tol = match codec {
                    ValueCodec::F16 => a.abs() * 1e-3,
                    ValueCodec::Q8 => span / 127.0 * 0.5 + span * 2e-3,
                };
                prop_assert!((a - b).abs() <= tol, "{} vs {} (tol {})", a, b, tol);
            }
        }
    }

    #[test]
    fn preview_keeps_exactly_the_largest_reals(
        (tiles, maps, dim, k, k_fake) in shape_strategy(), seed in any::<u64>(), frac in 0.0f64..1.0
    ) {
        let shape = CodeShape::new(tiles, maps, dim).unwrap();
        let (_, public, key) = sample(seed, shape, k, k_fake, ValueCodec::Q8);
        let k_p = 1 + ((k - 1) as f64 * frac) as u16;
        let preview = SupportKey::decode(&key.preview(&public, k_p).unwrap().encode()).unwrap();
        prop_assert_eq!(preview.tier(), Tier::Preview);
        let full = key.disambiguate(&public).unwrap();
        let part = preview.disambiguate(&public).unwrap();
        for map in 0..shape.map_count() {
            let (fp, fv) = full.map(map);
            let (pp, pv) = part.map(map);
            prop_assert_eq!(pp.len(), k_p as usize);
            // Every kept nonzero is real, and none left out is larger.
            prop_assert!(pp.iter().all(|p| fp.contains(p)));
            let smallest_kept = pv.iter().fold(f32::INFINITY, |a, v| a.min(v.abs()));
            for (p, v) in fp.iter().zip(fv) {
                if !pp.contains(p) {
                    prop_assert!(v.abs() <= smallest_kept);
                }
            }
        }
    }

    #[test]
    fn code_decoder_survives_any_mutation(
        seed in any::<u64>(), codec in codec_strategy(), cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(), bit in 0u8..8, extra in prop::collection::vec(any::<u8>(), 1..8)
    ) {
        let shape = CodeShape::new(2, 3, 64).unwrap();
        let (_, public, _) = sample(seed, shape, 16, 16, codec);
        let bytes = public.encode();
        prop_assert_eq!(bytes.len(), code_len(shape, 32, codec));
        // Truncated and extended input is always refused.
        prop_assert!(AmbiguatedCode::decode(&bytes[..cut.index(bytes.len())]).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(AmbiguatedCode::decode(&longer).is_err());
        // A flipped bit is always refused (the CRC-32 trailer catches what the structure does not).
        let mut flipped = bytes.clone();
        let i = flip.index(bytes.len());
        flipped[i] ^= 1 << bit;
        prop_assert!(AmbiguatedCode::decode(&flipped).is_err());
        // With its checksum mended, a flip is refused by the structure or is a different valid code.
        // (A flip inside the checksum itself is mended back to the original.)
        if let Ok(other) = AmbiguatedCode::decode(&sealed(flipped)) {
            prop_assert!(i >= bytes.len() - 4 || other != public);
        }
    }

    #[test]
    fn key_decoder_survives_any_mutation(
        seed in any::<u64>(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(),
        bit in 0u8..8, extra in prop::collection::vec(any::<u8>(), 1..8)
    ) {
        let shape = CodeShape::new(2, 3, 64).unwrap();
        let (_, _, key) = sample(seed, shape, 16, 16, ValueCodec::Q8);
        let bytes = key.encode();
        prop_assert!(SupportKey::decode(&bytes[..cut.index(bytes.len())]).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(SupportKey::decode(&longer).is_err());
        let mut flipped = bytes.clone();
        let i = flip.index(bytes.len());
        flipped[i] ^= 1 << bit;
        prop_assert!(SupportKey::decode(&flipped).is_err());
        if let Ok(other) = SupportKey::decode(&sealed(flipped)) {
            prop_assert!(i >= bytes.len() - 4 || other != key);
        }
    }

    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = AmbiguatedCode::decode(&bytes);
        let _ = SupportKey::decode(&bytes);
        let mut with_magic = b"AMBC\x01\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = AmbiguatedCode::decode(&with_magic);
        let mut with_magic = b"AK\x01\x01".to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = SupportKey::decode(&with_magic);
    }
}

/// `bytes` with its CRC-32 trailer recomputed, so that a test reaches the check it aims at.
fn sealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(n) = bytes.len().checked_sub(4) else { return bytes };
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// `bytes` with a CRC-32 trailer appended.
fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.extend_from_slice(&[0; 4]);
    sealed(bytes)
}

/// The error message of decoding a code that must be refused.
fn code_error(bytes: &[u8]) -> String {
    AmbiguatedCode::decode(bytes).expect_err("a bad code was accepted").to_string()
}

fn header(tiles: u32, maps: u16, dim: u16, nnz: u16, codec: u8) -> Vec<u8> {
    let mut h = b"AMBC\x02".to_vec();
    h.push(codec);
    h.extend_from_slice(&tiles.to_le_bytes());
    h.extend_from_slice(&maps.to_le_bytes());
    h.extend_from_slice(&dim.to_le_bytes());
    h.extend_from_slice(&nnz.to_le_bytes());
    h
}

#[test]
fn rejects_huge_declared_shape_without_allocating() {
    // Declares 16384 tiles × 1024 maps but carries no body.
    let err = AmbiguatedCode::decode(&header(1 << 14, 1024, 65535, 100, 1)).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(AmbiguatedCode::decode(&header(u32::MAX, 1, 8, 1, 1)).is_err());
    // A key declaring a huge count of maps with no body.
    assert!(SupportKey::decode(b"AK\x02\x01\x00\x80\x80\x01\x80\x08\x80\x01\x40").is_err());
    // Headers whose coder table or index count alone would take gigabytes: refused from the header.
    let key_header = |tiles: u64, maps: u64, nnz: u64, kept: u64| {
        let mut h = b"AK\x02\x01\x00".to_vec();
        for v in [tiles, maps, nnz, kept] {
            let mut v = v;
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    h.push(b);
                    break;
                }
                h.push(b | 0x80);
            }
        }
        h
    };
    let err = |h: Vec<u8>| SupportKey::decode(&h).unwrap_err().to_string();
    assert!(err(key_header(1, 1, 65535, 32768)).contains("exceeds 512"));
    assert!(err(key_header(1 << 14, 1024, 512, 512)).contains("real indices"));
    // Within the bounds, a missing body is a truncation.
    assert!(err(key_header(1, 16, 512, 256)).contains("truncated"));
}

#[test]
fn rejects_wrong_counts_and_positions() {
    // dim 10, nnz 2, f16: bitmap of 2 bytes + 4 bytes of values.
    let one = half::f16::from_f32(1.0).to_le_bytes();
    // Values are written before the checksum; `last` replaces the last one.
    let body = |bitmap: [u8; 2], last: [u8; 2]| {
        let mut b = header(1, 1, 10, 2, 2);
        b.extend_from_slice(&bitmap);
        b.extend_from_slice(&one);
        b.extend_from_slice(&last);
        with_crc(b)
    };
    assert!(AmbiguatedCode::decode(&body([0b0000_0011, 0], one)).is_ok());
    assert!(code_error(&body([0b0000_0111, 0], one)).contains("3 nonzeros"), "3 positions for nnz 2");
    assert!(code_error(&body([0b0000_0001, 0], one)).contains("1 nonzeros"), "1 position for nnz 2");
    assert!(code_error(&body([0b0000_0001, 0b0000_0100], one)).contains("beyond dim"), "position 10 >= dim");
    for bad in [half::f16::from_f32(0.0), half::f16::NAN, half::f16::INFINITY] {
        assert!(AmbiguatedCode::decode(&body([0b11, 0], bad.to_le_bytes())).is_err(), "value {bad}");
    }
    let mut version = body([0b11, 0], one);
    version[4] = 1;
    assert!(code_error(&sealed(version)).contains("unsupported version 1"));
    let mut codec = body([0b11, 0], one);
    codec[5] = 9;
    assert!(code_error(&sealed(codec)).contains("unknown value codec"));
    let mut flipped = body([0b11, 0], one);
    flipped[20] ^= 0x40;
    assert!(code_error(&flipped).contains("checksum mismatch"));
}

#[test]
fn rejects_q8_ranges_that_are_not_positive_and_ordered() {
    let f = |v: f32| half::f16::from_f32(v).to_le_bytes();
    let code = |lo: f32, hi: f32| {
        let mut b = header(1, 1, 8, 1, 1);
        b.push(0b1);
        b.extend_from_slice(&f(lo));
        b.extend_from_slice(&f(hi));
        b.push(0x85);
        with_crc(b)
    };
    assert!(AmbiguatedCode::decode(&code(0.5, 2.0)).is_ok());
    assert!(AmbiguatedCode::decode(&code(2.0, 0.5)).is_err());
    assert!(AmbiguatedCode::decode(&code(0.0, 0.5)).is_err());
    assert!(AmbiguatedCode::decode(&code(-1.0, 0.5)).is_err());
    assert!(AmbiguatedCode::decode(&code(0.5, f32::INFINITY)).is_err());
}

#[test]
fn rejects_key_with_nonzero_padding_or_bad_rank() {
    let shape = CodeShape::new(1, 1, 16).unwrap();
    // Even seed: the paper's scheme, no sign bits. C(6, 3) = 20: 5 bits, 3 padding bits.
    let (_, public, key) = sample(2, shape, 3, 3, ValueCodec::Q8);
    assert!(!key.has_signs());
    let bytes = key.encode();
    let key_error = |b: Vec<u8>| SupportKey::decode(&sealed(b)).expect_err("a bad key was accepted").to_string();
    let last = bytes.len() - 5; // the last byte before the checksum
    let mut padded = bytes.clone();
    padded[last] |= 1;
    assert!(key_error(padded).contains("padding"));
    let mut rank = bytes.clone();
    rank[last] = 0b1111_1000; // rank 31 >= 20
    assert!(SupportKey::decode(&sealed(rank)).is_err());
    let mut tier = bytes.clone();
    tier[3] = 7;
    assert!(key_error(tier).contains("unknown tier"));
    let mut flags = bytes.clone();
    flags[4] = 0x80;
    assert!(key_error(flags).contains("unknown flags"));
    // Non-minimal varint for tiles.
    let mut long = bytes[..5].to_vec();
    long.extend_from_slice(&[0x81, 0x00]);
    long.extend_from_slice(&bytes[6..]);
    assert!(key_error(long).contains("minimally"));
    // Ten bytes whose high bits fall off a u64: would read as tiles = 1.
    let mut wrapped = bytes[..5].to_vec();
    wrapped.extend_from_slice(&[0x81, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
    wrapped.extend_from_slice(&bytes[6..]);
    assert!(key_error(wrapped).contains("overflows"));
    let mut flipped = bytes.clone();
    flipped[last] ^= 0x80;
    assert!(SupportKey::decode(&flipped).unwrap_err().to_string().contains("checksum mismatch"));
    assert!(key.disambiguate(&public).is_ok());
}

/// Sizes of the shipped model's configuration (L=16, m=256, k=64, k_n=64) per
/// 64x64 tile, printed for the notes; the key must stay within 5% of the bound.
#[test]
fn sizes_per_tile_and_key_against_the_entropy_bound() {
    let shape = CodeShape::new(1, 16, 256).unwrap();
    let (_, _, key) = sample(9, shape, 64, 64, ValueCodec::Q8); // odd seed: sign bits included
    assert!(key.has_signs());
    let bound_bits = key.entropy_bits();
    let key_bytes = key.encode().len();
    let ratio = key_bytes as f64 * 8.0 / bound_bits;
    println!(
        "key: {key_bytes} bytes for one tile; bound L*(log2 C(128,64) + 64 sign bits) = {bound_bits:.1} bits = {:.1} bytes; ratio {ratio:.4}",
        bound_bits / 8.0
    );
    assert!(ratio <= 1.05, "key is {ratio:.4} × the entropy bound");
    // The paper's scheme (no sign bits): the 14 bytes of header and checksum weigh more on one tile.
    let (_, _, paper_key) = sample(8, shape, 64, 64, ValueCodec::Q8);
    let paper_ratio = paper_key.encode().len() as f64 * 8.0 / paper_key.entropy_bits();
    println!(
        "key without sign bits: {} bytes for one tile; bound {:.1} bytes; ratio {paper_ratio:.4}",
        paper_key.encode().len(),
        paper_key.entropy_bits() / 8.0
    );
    assert!(paper_ratio <= 1.07);
    for seed in [4u64, 5, 64, 65] {
        let tiles = seed as u32 & !1;
        let s = CodeShape::new(tiles, 16, 256).unwrap();
        let (_, _, k) = sample(seed, s, 64, 64, ValueCodec::Q8);
        let r = k.encode().len() as f64 * 8.0 / k.entropy_bits();
        println!("key for {tiles} tiles (signs: {}): {} bytes, ratio {r:.4}", k.has_signs(), k.encode().len());
        assert!(r <= 1.05);
    }
    for codec in [ValueCodec::Q8, ValueCodec::F16] {
        println!(
            "{codec:?}: ambiguated code (k'=128) {} bytes per tile, true code (k=64) {} bytes per tile",
            code_len(shape, 128, codec),
            code_len(shape, 64, codec)
        );
    }
    assert_eq!(code_len(shape, 128, ValueCodec::Q8), 16 + 16 * (32 + 4 + 128) + 4);
}

#[test]
fn golden_files_decode_and_re_encode_byte_for_byte() {
    // Files written by format version 2: a reader change that breaks them is a format change.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
    let shape = CodeShape::new(2, 3, 32).unwrap();
    let (_, public, key) = sample(43, shape, 8, 8, ValueCodec::Q8); // odd seed: with sign bits
    let code_path = format!("{dir}/code_v2.ambc");
    let key_path = format!("{dir}/key_v2.ak");
    if std::env::var_os("AMBISHARE_WRITE_GOLDEN").is_some() {
        std::fs::write(&code_path, public.encode()).unwrap();
        std::fs::write(&key_path, key.encode()).unwrap();
    }
    let code_bytes = std::fs::read(&code_path).unwrap();
    let key_bytes = std::fs::read(&key_path).unwrap();
    let code = AmbiguatedCode::decode(&code_bytes).unwrap();
    let k = SupportKey::decode(&key_bytes).unwrap();
    assert_eq!(code.encode(), code_bytes);
    assert_eq!(k.encode(), key_bytes);
    assert!(k.has_signs());
    assert_eq!(k.disambiguate(&code).unwrap().nnz(), 8);
}

// ---- format v3: derived fakes and 44-byte keys

fn derived_sample(seed: u64, shape: CodeShape, bands: Vec<u16>, k_fake: u16) -> (SparseCode, Derived) {
    let k = *bands.last().unwrap();
    let code = SparseCode::top_k(&dense_code(seed, shape), shape, k).unwrap();
    let rates: Vec<f32> = (0..shape.maps as usize * shape.dim as usize).map(|i| (i % 9) as f32 / 18.0).collect();
    let tables = FakeTables::new(shape.maps, shape.dim, Some(&rates), None).unwrap();
    let context = DerivationContext { model: ModelId::from_bytes([3; 32]), k_fake, bands: Bands::new(bands).unwrap() };
    let master = MasterSecret::from_bytes(&[seed as u8; 32]).unwrap();
    let derived = ambiguate_derived(&code, &master, &context, &tables).unwrap();
    (code, derived)
}

/// (tiles, maps, dim, bands, k_fake) with k + k_fake <= dim.
fn derived_strategy() -> impl Strategy<Value = (u32, u16, u16, Vec<u16>, u16)> {
    (1u32..3, 1u16..5, 8u16..300).prop_flat_map(|(tiles, maps, dim)| {
        (Just(tiles), Just(maps), Just(dim), 2..=dim / 2).prop_flat_map(|(t, m, d, k)| {
            let bands = prop::collection::btree_set(1..k, 0..3)
                .prop_map(move |set| set.into_iter().chain([k]).collect::<Vec<u16>>());
            (Just(t), Just(m), Just(d), bands, 1..=d - k)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn derived_keys_open_their_codes_and_every_tier_keeps_the_largest(
        (tiles, maps, dim, bands, k_fake) in derived_strategy(), seed in any::<u64>()
    ) {
        let shape = CodeShape::new(tiles, maps, dim).unwrap();
        let (code, d) = derived_sample(seed, shape, bands.clone(), k_fake);
        let public = AmbiguatedCode::decode(&d.public.encode()).unwrap();
        prop_assert_eq!(&public, &d.public);
        let key = EntryKey::decode(&d.key.encode()).unwrap();
        prop_assert!(d.key.encode().len() <= 64);
        let full = key.disambiguate(&public).unwrap();
        prop_assert_eq!(full.positions(), code.positions());
        for &kp in &bands[..bands.len() - 1] {
            let preview = d.key.preview(kp).unwrap();
            let expected = d.support.preview(&public, kp).unwrap().disambiguate(&public).unwrap();
            prop_assert_eq!(EntryKey::decode(&preview.encode()).unwrap().disambiguate(&public).unwrap(), expected);
        }
    }

    #[test]
    fn derived_key_decoder_survives_any_mutation(seed in any::<u64>(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let shape = CodeShape::new(1, 2, 64).unwrap();
        let (_, d) = derived_sample(seed, shape, vec![4, 16], 16);
        let mut bytes = d.key.encode();
        let i = at.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(EntryKey::decode(&bytes).is_err(), "a flipped bit was accepted");
    }
}

#[test]
fn derived_keys_refuse_bad_headers_and_v2_codes() {
    let shape = CodeShape::new(1, 2, 64).unwrap();
    let (_, d) = derived_sample(5, shape, vec![4, 16], 16);
    let good = d.key.encode();
    let err = |mut b: Vec<u8>| {
        let len = b.len();
        b.truncate(len - 4);
        EntryKey::decode(&with_crc(b)).unwrap_err().to_string()
    };
    let mut b = good.clone();
    b[4] = 7; // band beyond the bands
    assert!(err(b).contains("band"));
    let mut b = good.clone();
    b[3] = 2; // band 1 of 2 is the full key: a preview tier contradicts it
    assert!(err(b).contains("tier"));
    let mut b = good.clone();
    b[6] = 16; // bands not ascending: [16, 16]
    assert!(err(b).contains("ascending"));
    assert!(EntryKey::decode(&good[..good.len() - 1]).is_err());
    // A v3 key does not open a v2 code.
    let (_, v2, _) = sample(3, shape, 16, 16, ValueCodec::Q8);
    assert!(d.key.disambiguate(&v2).is_err());
}

#[test]
fn golden_v3_files_decode_and_the_derivation_is_stable() {
    // Written by format version 3. The derivation is part of the format: a change
    // that makes other bytes from the same inputs would leave published keys unable
    // to open their codes.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");
    let shape = CodeShape::new(2, 3, 32).unwrap();
    let (code, d) = derived_sample(47, shape, vec![2, 4, 8], 8);
    let preview = d.key.preview(2).unwrap();
    let (code_path, key_path, preview_path) =
        (format!("{dir}/code_v3.ambc"), format!("{dir}/key_v3.ak"), format!("{dir}/key_v3_preview.ak"));
    if std::env::var_os("AMBISHARE_WRITE_GOLDEN").is_some() {
        std::fs::write(&code_path, d.public.encode()).unwrap();
        std::fs::write(&key_path, d.key.encode()).unwrap();
        std::fs::write(&preview_path, preview.encode()).unwrap();
    }
    let code_bytes = std::fs::read(&code_path).unwrap();
    let key_bytes = std::fs::read(&key_path).unwrap();
    assert_eq!(d.public.encode(), code_bytes, "the derivation changed");
    assert_eq!(d.key.encode(), key_bytes, "the key derivation changed");
    assert_eq!(preview.encode(), std::fs::read(&preview_path).unwrap());
    let public = AmbiguatedCode::decode(&code_bytes).unwrap();
    let key = EntryKey::decode(&key_bytes).unwrap();
    assert_eq!(key_bytes.len(), 45);
    assert_eq!(key.disambiguate(&public).unwrap().positions(), code.positions());
    assert_eq!(EntryKey::decode(&std::fs::read(&preview_path).unwrap()).unwrap().kept(), 2);
}
