//! The model runner against a real ONNX Runtime and the tiny fixture model
//! built by `testdata/make_tiny_model.py`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use ambishare_shared::model::{Device, MAX_BATCH, Manifest, ModelRunner, init_runtime};
use ambishare_shared::{Error, ModelId};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tiny_model");

fn tiny() -> &'static Path {
    Path::new(TINY)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(tiny().join(name)).unwrap()
}

fn runner() -> ModelRunner {
    init_runtime(None).unwrap();
    ModelRunner::load(tiny(), Device::Cpu).unwrap()
}

struct Expected {
    n: usize,
    input: Vec<f32>,
    code: Vec<f32>,
    image: Vec<f32>,
}

fn expected() -> Expected {
    let v: serde_json::Value = serde_json::from_slice(&read("expected.json")).unwrap();
    let floats =
        |key: &str| -> Vec<f32> { v[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    Expected {
        n: v["n"].as_u64().unwrap() as usize,
        input: floats("input"),
        code: floats("code"),
        image: floats("image"),
    }
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "value {i}: got {g}, want {w}");
    }
}

/// Deterministic inputs in [0, 1] without a random number generator.
fn ramp(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i as f32 * 0.618_034).sin() + 1.0) / 2.0).collect()
}

/// A copy of the fixture in a temporary directory, to tamper with.
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["manifest.json", "encoder.onnx", "decoder.onnx"] {
        std::fs::copy(tiny().join(name), dir.path().join(name)).unwrap();
    }
    dir
}

fn path_in(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[test]
fn loads_the_fixture() {
    let r = runner();
    let m = r.manifest();
    assert_eq!((m.tile_size, m.channels, m.maps, m.dim, m.k, m.k_fake), (8, 3, 2, 16, 4, 4));
    assert_eq!(m.preview_k, vec![2]);
    assert_eq!(*r.id(), ModelId::of_manifest(&read("manifest.json")));
    assert_eq!(r.execution_provider(), "CPU");
    assert!(r.has_encoder());
}

#[test]
fn encodes_like_onnxruntime() {
    let e = expected();
    let code = runner().encode_tiles(&e.input, e.n).unwrap();
    assert_close(&code, &e.code, 1e-4);
}

#[test]
fn decodes_like_onnxruntime() {
    let e = expected();
    let image = runner().decode_tiles(&e.code, e.n).unwrap();
    assert_close(&image, &e.image, 1e-4);
}

#[test]
fn batches_above_limit_match_one_by_one() {
    let r = runner();
    let (tile_len, code_len) = (r.manifest().tile_len(), r.manifest().code_len());
    let n = 2 * MAX_BATCH + 2;
    let tiles = ramp(n * tile_len);

    let codes = r.encode_tiles(&tiles, n).unwrap();
    assert_eq!(codes.len(), n * code_len);
    let images = r.decode_tiles(&codes, n).unwrap();
    assert_eq!(images.len(), n * tile_len);
    for i in 0..n {
        let one = r.encode_tiles(&tiles[i * tile_len..(i + 1) * tile_len], 1).unwrap();
        assert_close(&codes[i * code_len..(i + 1) * code_len], &one, 1e-5);
        let one = r.decode_tiles(&codes[i * code_len..(i + 1) * code_len], 1).unwrap();
        assert_close(&images[i * tile_len..(i + 1) * tile_len], &one, 1e-5);
    }
}

#[test]
fn rejects_wrong_input_length() {
    let r = runner();
    let tile_len = r.manifest().tile_len();
    let code_len = r.manifest().code_len();
    assert!(matches!(r.encode_tiles(&vec![0.5; tile_len + 1], 1), Err(Error::Invalid { .. })));
    assert!(matches!(r.encode_tiles(&vec![0.5; tile_len], 2), Err(Error::Invalid { .. })));
    assert!(matches!(r.decode_tiles(&vec![0.0; code_len - 1], 1), Err(Error::Invalid { .. })));
    assert!(matches!(r.decode_tiles(&[], usize::MAX), Err(Error::Invalid { .. })));
    assert!(r.encode_tiles(&[], 0).unwrap().is_empty());
}

#[test]
fn rejects_manifest_hash_mismatch() {
    let dir = copy_fixture();
    let manifest = std::fs::read_to_string(path_in(&dir, "manifest.json")).unwrap();
    let pinned = Manifest::parse(manifest.as_bytes()).unwrap().decoder.sha256;
    std::fs::write(path_in(&dir, "manifest.json"), manifest.replace(&pinned, &"0".repeat(64))).unwrap();
    match ModelRunner::load(dir.path(), Device::Cpu) {
        Err(Error::Model(msg)) => assert!(msg.contains("decoder.onnx"), "{msg}"),
        other => panic!("hash mismatch accepted: {other:?}"),
    }
}

#[test]
fn rejects_tampered_file() {
    let dir = copy_fixture();
    let mut encoder = read("encoder.onnx");
    let last = encoder.len() - 1;
    encoder[last] ^= 1;
    std::fs::write(path_in(&dir, "encoder.onnx"), encoder).unwrap();
    match ModelRunner::load(dir.path(), Device::Cpu) {
        Err(Error::Model(msg)) => assert!(msg.contains("encoder.onnx"), "{msg}"),
        other => panic!("tampered encoder accepted: {other:?}"),
    }
}

#[test]
fn missing_file_is_an_error() {
    let dir = copy_fixture();
    std::fs::remove_file(path_in(&dir, "decoder.onnx")).unwrap();
    assert!(matches!(ModelRunner::load(dir.path(), Device::Cpu), Err(Error::Io { .. })));
    assert!(ModelRunner::load(Path::new("/nonexistent/model"), Device::Cpu).is_err());
}

#[test]
fn from_parts_decoder_only() {
    init_runtime(None).unwrap();
    let e = expected();
    let r = ModelRunner::from_parts(&read("manifest.json"), None, &read("decoder.onnx"), Device::Auto).unwrap();
    assert!(!r.has_encoder());
    assert!(matches!(r.encode_tiles(&e.input, e.n), Err(Error::Model(_))));
    assert_close(&r.decode_tiles(&e.code, e.n).unwrap(), &e.image, 1e-4);
}

#[test]
fn from_parts_rejects_tampered_decoder() {
    init_runtime(None).unwrap();
    let mut decoder = read("decoder.onnx");
    decoder[100] ^= 0x40;
    let encoder = read("encoder.onnx");
    match ModelRunner::from_parts(&read("manifest.json"), Some(&encoder), &decoder, Device::Cpu) {
        Err(Error::Model(msg)) => assert!(msg.contains("decoder.onnx"), "{msg}"),
        other => panic!("tampered decoder accepted: {other:?}"),
    }
    // The encoder given in place of the decoder fails its hash too.
    assert!(matches!(
        ModelRunner::from_parts(&read("manifest.json"), None, &encoder, Device::Cpu),
        Err(Error::Model(_))
    ));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_feature_is_a_clear_error() {
    init_runtime(None).unwrap();
    match ModelRunner::load(tiny(), Device::Cuda) {
        Err(Error::Runtime(msg)) => assert!(msg.contains("without CUDA support"), "{msg}"),
        other => panic!("cuda accepted: {other:?}"),
    }
}

/// With CUDA compiled in, `cuda` either runs on the GPU or fails cleanly (a
/// CPU-only ONNX Runtime, no GPU), and `auto` always falls back to the CPU.
#[cfg(feature = "cuda")]
#[test]
fn cuda_runs_or_fails_cleanly() {
    init_runtime(None).unwrap();
    match ModelRunner::load(tiny(), Device::Cuda) {
        Ok(r) => assert_eq!(r.execution_provider(), "CUDA"),
        Err(Error::Runtime(msg)) => assert!(msg.contains("CUDA"), "{msg}"),
        Err(other) => panic!("unexpected error: {other:?}"),
    }
    let r = ModelRunner::load(tiny(), Device::Auto).unwrap();
    let e = expected();
    assert_close(&r.encode_tiles(&e.input, e.n).unwrap(), &e.code, 1e-4);
}

#[test]
fn runner_is_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ModelRunner>();

    let r = runner();
    let e = expected();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(|| r.encode_tiles(&e.input, e.n).unwrap())).collect();
        for h in handles {
            assert_close(&h.join().unwrap(), &e.code, 1e-4);
        }
    });
}
