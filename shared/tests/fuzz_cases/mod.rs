//! The checks each fuzz target runs on one input, shared by the cargo-fuzz
//! targets in `fuzz/` (which include this file by path) and by
//! `tests/fuzz_regressions.rs` (which replays `testdata/fuzz/<target>/`), so a
//! saved crash is replayed through exactly the code path that found it.
//!
//! Every function must return normally for any input; a panic is a bug.

#![allow(dead_code)]

use ambishare_proto::types::v1 as pb;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::model::Manifest;
use ambishare_shared::tiling::load_image;
use ambishare_shared::{AmbiguatedCode, Entry, EntryKey, SupportKey};
use prost::Message;

/// Pixel limit of the `image` target: large enough for real photos in the
/// corpus, small enough that an accepted image stays within libFuzzer's memory.
pub const IMAGE_MAX_PIXELS: u64 = 1 << 20;

/// A fixed Ed25519 public key (not the signer of any corpus entry: every
/// signature must fail to verify, without panicking).
const VERIFY_KEY: [u8; 32] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a, 0x0e, 0xe1, 0x72,
    0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];

/// The check a fuzz target runs on one input.
pub type Check = fn(&[u8]);

/// Targets by name, for the replay test.
pub const TARGETS: &[(&str, Check)] = &[
    ("ambiguated_code", ambiguated_code),
    ("support_key", support_key),
    ("derived_key", derived_key),
    ("entry", entry),
    ("manifest", manifest),
    ("image", image),
];

/// `AmbiguatedCode::decode`; what decodes re-encodes to the same bytes (the format is canonical).
pub fn ambiguated_code(data: &[u8]) {
    if let Ok(code) = AmbiguatedCode::decode(data) {
        assert_eq!(code.encode(), data, "decode then encode changed the bytes");
        // Accessors of a decoded code must hold for any accepted input.
        let _ = code.to_sparse().expect("a decoded code converts to a sparse code");
    }
}

/// `SupportKey::decode`; what decodes re-encodes to the same bytes.
pub fn support_key(data: &[u8]) {
    if let Ok(key) = SupportKey::decode(data) {
        assert_eq!(key.encode(), data, "decode then encode changed the bytes");
    }
}

/// `EntryKey::decode` (both key formats); what decodes re-encodes to the same
/// bytes, and a derived key's tiers and its walk over a v3 code (the golden
/// file's) return normally whatever the key.
pub fn derived_key(data: &[u8]) {
    let Ok(key) = EntryKey::decode(data) else { return };
    assert_eq!(key.encode(), data, "decode then encode changed the bytes");
    if let EntryKey::Derived(derived) = &key {
        for &kept in derived.bands().bounds() {
            let _ = derived.preview(kept);
        }
        let code = include_bytes!("../../testdata/code_v3.ambc");
        if let Ok(code) = AmbiguatedCode::decode(code) {
            let _ = key.disambiguate(&code);
        }
    }
}

/// Protobuf `Entry`, then the checked `Entry`, its signed bytes and a signature check.
pub fn entry(data: &[u8]) {
    let Ok(p) = pb::Entry::decode(data) else { return };
    let Ok(entry) = Entry::try_from(p) else { return };
    let _ = entry.canonical_bytes();
    if let Ok(key) = PublicKey::from_bytes(&VERIFY_KEY) {
        let _ = entry.verify(&key);
    }
    assert_eq!(entry.code.encode(), entry.code_bytes, "an entry's code bytes are not canonical");
    let back = Entry::try_from(pb::Entry::from(&entry)).expect("a checked entry converts back");
    assert_eq!(back, entry, "protobuf round trip changed the entry");
    let _ = entry.summary();
}

/// `Manifest::parse`; an accepted manifest serializes and parses back to itself.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = Manifest::parse(data) {
        let _ = (m.tile_len(), m.code_len(), Manifest::model_id(data));
        let again = serde_json::to_vec(&m).expect("an accepted manifest serializes");
        let back = Manifest::parse(&again).expect("a serialized manifest parses");
        assert_eq!(back.tile_len(), m.tile_len());
        assert_eq!((back.maps, back.dim, back.k, back.k_fake), (m.maps, m.dim, m.k, m.k_fake));
    }
}

/// `load_image` under a pixel limit; an accepted image respects the limit.
pub fn image(data: &[u8]) {
    if let Ok(img) = load_image(data, IMAGE_MAX_PIXELS) {
        let (w, h) = img.dimensions();
        assert!(w > 0 && h > 0, "zero-sized image accepted");
        assert!(u64::from(w) * u64::from(h) <= IMAGE_MAX_PIXELS, "image above the pixel limit accepted");
    }
}
