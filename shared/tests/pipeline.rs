//! Whole images through the tiny test model: encode, ambiguate, key, decode.

#![allow(clippy::unwrap_used)]

use ambishare_shared::model::{Device, ModelRunner, init_runtime};
use ambishare_shared::pipeline::{decode_image, encode_image};
use ambishare_shared::{AmbiguatedCode, FakeModel, SupportKey, ValueCodec, ambiguate};
use image::{Rgb, RgbImage};
use rand::SeedableRng;

fn tiny() -> ModelRunner {
    init_runtime(None).unwrap();
    ModelRunner::load(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tiny_model").as_ref(), Device::Cpu).unwrap()
}

fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x + y) % 256) as u8]))
}

#[test]
fn a_key_holder_decodes_what_the_owner_encoded() {
    let runner = tiny();
    let img = gradient(21, 13); // 3x2 tiles of 8, padded
    let code = encode_image(&runner, &img).unwrap();
    assert_eq!(code.shape().tiles, 6);
    let m = runner.manifest();
    let fakes = FakeModel::for_manifest(m).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let (public, key) = ambiguate(&code, m.k_fake, ValueCodec::F16, &fakes, &mut rng).unwrap();
    // Through the wire formats.
    let public = AmbiguatedCode::decode(&public.encode()).unwrap();
    let key = SupportKey::decode(&key.encode()).unwrap();
    let back = key.disambiguate(&public).unwrap();
    assert_eq!(back.positions(), code.positions());
    let direct = decode_image(&runner, &code, 21, 13).unwrap();
    let via_key = decode_image(&runner, &back, 21, 13).unwrap();
    assert_eq!(via_key.dimensions(), (21, 13));
    let max_diff = direct.as_raw().iter().zip(via_key.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(max_diff <= 2, "f16 rounding moved a pixel by {max_diff}");
    // The public decode differs: it carries the fakes.
    let public_img = decode_image(&runner, &public.to_sparse().unwrap(), 21, 13).unwrap();
    assert_ne!(public_img, direct);
}

#[test]
fn refuses_a_code_of_another_size() {
    let runner = tiny();
    let code = encode_image(&runner, &gradient(16, 16)).unwrap();
    assert!(decode_image(&runner, &code, 17, 16).is_err());
}
