//! Replays every saved fuzz input (`testdata/fuzz/<target>/`) and every seed
//! (`testdata/fuzz/seeds/<target>/`) through the code path of its cargo-fuzz
//! target, so crashes the fuzzer found stay fixed without a nightly toolchain.

#![allow(clippy::unwrap_used)]

mod fuzz_cases;

use std::path::{Path, PathBuf};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz")
}

/// Files of a folder, sorted; none if the folder does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<PathBuf> = read.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

#[test]
fn replays_every_saved_input_without_panic() {
    let root = testdata();
    let mut replayed = 0;
    for (target, check) in fuzz_cases::TARGETS {
        for dir in [root.join(target), root.join("seeds").join(target)] {
            for path in files(&dir) {
                let bytes = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| check(&bytes));
                assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
                replayed += 1;
            }
        }
    }
    // The seeds are checked in: an empty replay means the folders moved.
    assert!(replayed >= fuzz_cases::TARGETS.len(), "only {replayed} inputs found under {}", root.display());
}

#[test]
fn every_saved_folder_belongs_to_a_target() {
    let known: Vec<&str> = fuzz_cases::TARGETS.iter().map(|(name, _)| *name).collect();
    for dir in std::fs::read_dir(testdata()).unwrap() {
        let name = dir.unwrap().file_name().into_string().unwrap();
        assert!(name == "seeds" || known.contains(&name.as_str()), "testdata/fuzz/{name} names no fuzz target");
    }
}

/// The binary seeds, made from the current formats; `AMBISHARE_WRITE_SEEDS=1`
/// rewrites them after a format change (see the test below).
fn binary_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use ambishare_proto::types::v1 as pb;
    use ambishare_shared::crypto::SigningKey;
    use ambishare_shared::entry::NewEntry;
    use ambishare_shared::{CodeShape, Entry, FakeModel, ModelId, SparseCode, ValueCodec, ambiguate};
    use prost::Message;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut code = |tiles: u32, maps: u16, dim: u16, k: u16, k_fake: u16, codec: ValueCodec, fakes: &FakeModel| {
        let shape = CodeShape::new(tiles, maps, dim).unwrap();
        let dense: Vec<f32> = (0..shape.dense_len()).map(|_| rng.random::<f32>() - 0.5).collect();
        let sparse = SparseCode::top_k(&dense, shape, k).unwrap();
        ambiguate(&sparse, k_fake, codec, fakes, &mut rng).unwrap()
    };
    let signs = FakeModel::fitted(None, 1, 256).unwrap();
    let (q8, q8_key) = code(2, 3, 64, 16, 16, ValueCodec::Q8, &FakeModel::paper());
    let (f16, _) = code(1, 2, 13, 3, 4, ValueCodec::F16, &FakeModel::paper());
    let (signed, signed_key) = code(1, 1, 32, 8, 8, ValueCodec::Q8, &FakeModel::fitted(None, 1, 32).unwrap());
    let (wide, wide_key) = code(1, 1, 256, 64, 64, ValueCodec::Q8, &signs);
    let (_, big_key) = code(1, 1, 256, 128, 128, ValueCodec::Q8, &FakeModel::paper());
    let preview = q8_key.preview(&q8, 4).unwrap();
    let derived = {
        use ambishare_shared::{Bands, DerivationContext, FakeTables, MasterSecret, ambiguate_derived};
        let shape = CodeShape::new(2, 3, 64).unwrap();
        let dense: Vec<f32> = (0..shape.dense_len()).map(|_| rng.random::<f32>() - 0.5).collect();
        let sparse = SparseCode::top_k(&dense, shape, 16).unwrap();
        let context = DerivationContext {
            model: ModelId::of_manifest(b"{}"),
            k_fake: 16,
            bands: Bands::new(vec![4, 8, 16]).unwrap(),
        };
        let tables = FakeTables::new(3, 64, None, None).unwrap();
        ambiguate_derived(&sparse, &MasterSecret::from_bytes(&[9; 32]).unwrap(), &context, &tables).unwrap()
    };
    let (signer, _) = SigningKey::generate().unwrap();
    let entry = Entry::create(
        NewEntry {
            owner: signer.public_key().owner_id(),
            dataset: "holidays".parse().unwrap(),
            model: ModelId::of_manifest(b"{}"),
            width: 100,
            height: 60,
            label: "seed".into(),
            code: q8.clone(),
        },
        &signer,
    )
    .unwrap();
    vec![
        ("ambiguated_code", "code_q8.ambc", q8.encode()),
        ("ambiguated_code", "code_f16_dim13.ambc", f16.encode()),
        ("ambiguated_code", "code_q8_signs.ambc", signed.encode()),
        ("support_key", "full_nosigns.ak", q8_key.encode()),
        ("support_key", "full_signs.ak", signed_key.encode()),
        ("support_key", "n128_k64_signs.ak", wide_key.encode()),
        ("support_key", "n256_k128_bigint.ak", big_key.encode()),
        ("support_key", "preview.ak", preview.encode()),
        ("entry", "signed_q8.pb", pb::Entry::from(&entry).encode_to_vec()),
        ("ambiguated_code", "code_q8_wide.ambc", wide.encode()),
        ("ambiguated_code", "code_v3.ambc", derived.public.encode()),
        ("derived_key", "full_v3.ak", derived.key.encode()),
        ("derived_key", "preview_v3.ak", derived.key.preview(4).unwrap().encode()),
        ("derived_key", "full_v2.ak", signed_key.encode()),
    ]
}

/// Binary seeds must be valid inputs of the current formats (so the fuzzer
/// starts past the structural checks); a format change rewrites them with
/// `AMBISHARE_WRITE_SEEDS=1 cargo test -p ambishare-shared --test fuzz_regressions`.
#[test]
fn binary_seeds_decode_under_the_current_formats() {
    use ambishare_shared::{AmbiguatedCode, SupportKey};
    let seeds = testdata().join("seeds");
    let write = std::env::var_os("AMBISHARE_WRITE_SEEDS").is_some();
    for (target, name, bytes) in binary_seeds() {
        let path = seeds.join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let ok = match target {
            "ambiguated_code" => AmbiguatedCode::decode(&stored).is_ok(),
            "support_key" => SupportKey::decode(&stored).is_ok(),
            "derived_key" => ambishare_shared::EntryKey::decode(&stored).is_ok(),
            _ => {
                use prost::Message;
                let p = ambishare_proto::types::v1::Entry::decode(stored.as_slice()).unwrap();
                ambishare_shared::Entry::try_from(p).is_ok()
            }
        };
        assert!(ok, "{} does not decode under the current formats", path.display());
    }
}

/// A short fuzz smoke of every target on every `cargo test` (CI has no time
/// for cargo-fuzz's nightly build): seeded random mutations of each seed
/// (bit flips, byte overwrites with boundary values, insertions, deletions,
/// truncations, splices of two seeds) through the target's own checks. The
/// long runs are `deploy/fuzz.sh`.
#[test]
fn fuzz_smoke_of_every_target() {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    const MUTANTS_PER_TARGET: usize = 3000;
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_f022);
    let root = testdata();
    for (target, check) in fuzz_cases::TARGETS {
        let seeds: Vec<Vec<u8>> = [root.join(target), root.join("seeds").join(target)]
            .iter()
            .flat_map(|dir| files(dir))
            .map(|path| std::fs::read(path).unwrap())
            .collect();
        assert!(!seeds.is_empty(), "no seeds for {target}");
        for round in 0..MUTANTS_PER_TARGET {
            let mut data = seeds[round % seeds.len()].clone();
            for _ in 0..rng.random_range(1..=4) {
                let len = data.len();
                match rng.random_range(0..6) {
                    0 if len > 0 => data[rng.random_range(0..len)] ^= 1 << rng.random_range(0..8),
                    1 if len > 0 => data[rng.random_range(0..len)] = [0, 1, 0x7f, 0x80, 0xff][rng.random_range(0..5)],
                    2 => data.insert(rng.random_range(0..=len), rng.random()),
                    3 if len > 0 => {
                        data.remove(rng.random_range(0..len));
                    }
                    4 => data.truncate(rng.random_range(0..=len)),
                    _ => {
                        let other = &seeds[rng.random_range(0..seeds.len())];
                        let cut = rng.random_range(0..=len.min(other.len()));
                        data.splice(cut.., other[cut..].iter().copied());
                    }
                }
            }
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: mutant {round} panicked: {}", hex(&data));
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(512).map(|b| format!("{b:02x}")).collect()
}
