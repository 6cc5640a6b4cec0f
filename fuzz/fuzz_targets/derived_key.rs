//! Fuzz target `derived_key`: see `shared/tests/fuzz_cases/mod.rs` for what it checks.
#![no_main]

#[path = "../../shared/tests/fuzz_cases/mod.rs"]
mod cases;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cases::derived_key(data));
