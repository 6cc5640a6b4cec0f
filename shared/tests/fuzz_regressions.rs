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
