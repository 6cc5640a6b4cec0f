//! Quality of every way to decode an image: authorized, preview, public,
//! random guess; and JPEG at the same bytes as the true code.

use std::io::Cursor;

use ambishare_shared::combinatorics::log2_binomial;
use ambishare_shared::format::code_len;
use ambishare_shared::model::ModelRunner;
use ambishare_shared::pipeline::{decode_image, encode_image};
use ambishare_shared::quality::{psnr, ssim};
use ambishare_shared::{FakeModel, ValueCodec, ambiguate, random_guess};

use crate::scheme::DerivedScheme;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageReader, RgbImage};
use rand::{CryptoRng, Rng};

use crate::Result;

/// One decode of an image and how close it is to the original.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub name: String,
    pub image: RgbImage,
    pub psnr: f64,
    pub ssim: f64,
}

impl Decoded {
    pub fn measure(name: impl Into<String>, original: &RgbImage, image: RgbImage) -> Result<Self> {
        Ok(Decoded { name: name.into(), psnr: psnr(original, &image)?, ssim: ssim(original, &image)?, image })
    }
}

/// Every decode of one image, and the sizes that go with them.
#[derive(Clone, Debug)]
pub struct ImageReport {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub tiles: u32,
    /// Bytes of the true code (positions + q8 values, the format's own header included).
    pub true_code_bytes: usize,
    /// Bytes of the ambiguated code the registry stores.
    pub public_code_bytes: usize,
    /// Bytes of the full support key.
    pub key_bytes: usize,
    /// The paper's rate: support only, tiles × L × log2 C(m, k) bits.
    pub support_bits: f64,
    /// The key's entropy bound: L × (log2 C(k', k) + k sign bits) per tile.
    pub key_bound_bits: f64,
    /// Reals moved by one q8 level off the fakes' bytes.
    pub nudged: usize,
    /// Authorized (k), previews (largest k_p), public (k') and random guess (k of
    /// k') with signs scrambled and with the paper's scheme, JPEG.
    pub decodes: Vec<Decoded>,
    pub jpeg_bytes: usize,
    pub jpeg_quality: u8,
}

impl ImageReport {
    pub fn decode(&self, name: &str) -> Option<&Decoded> {
        self.decodes.iter().find(|d| d.name == name)
    }
}

/// The JPEG (image crate, baseline) of highest quality whose size is at most
/// `target` bytes; quality 1 when even that is larger.
pub fn jpeg_at_most(img: &RgbImage, target: usize) -> Result<(Vec<u8>, u8)> {
    let encode = |q: u8| -> Result<Vec<u8>> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, q).encode_image(img)?;
        Ok(out)
    };
    let (mut lo, mut hi) = (1u8, 100u8);
    let mut best = (encode(1)?, 1u8);
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        let bytes = encode(mid)?;
        if bytes.len() <= target {
            best = (bytes, mid);
            lo = mid + 1;
        } else {
            if mid == 1 {
                break;
            }
            hi = mid - 1;
        }
    }
    Ok(best)
}

pub fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage> {
    Ok(ImageReader::new(Cursor::new(bytes)).with_guessed_format()?.decode()?.to_rgb8())
}

/// Measures every decode of `original` under `runner`'s model.
pub fn report_image<R: Rng + CryptoRng>(
    runner: &ModelRunner,
    scheme: &DerivedScheme,
    name: &str,
    original: &RgbImage,
    rng: &mut R,
) -> Result<ImageReport> {
    let m = runner.manifest();
    let (w, h) = original.dimensions();
    let code = encode_image(runner, original)?;
    let shape = code.shape();
    let derived = scheme.publish(&code)?;
    let (public, key) = (&derived.public, &derived.key);
    let mut decodes = Vec::new();
    let authorized = key.disambiguate(public)?;
    decodes.push(Decoded::measure(
        format!("authorized (k={})", m.k),
        original,
        decode_image(runner, &authorized, w, h)?,
    )?);
    for &kp in &m.preview_k {
        let pk = key.preview(kp)?.disambiguate(public)?;
        decodes.push(Decoded::measure(format!("preview (k_p={kp})"), original, decode_image(runner, &pk, w, h)?)?);
    }
    let nnz = public.nnz();
    let guess = random_guess(public, m.k, rng)?;
    decodes.push(Decoded::measure(
        format!("public (k'={nnz}), signs scrambled"),
        original,
        decode_image(runner, &public.to_sparse()?, w, h)?,
    )?);
    decodes.push(Decoded::measure(
        format!("random guess (k of {nnz}), signs scrambled"),
        original,
        decode_image(runner, &guess, w, h)?,
    )?);
    // The paper's scheme on the same code: fakes, signs kept.
    let (paper_public, _) = ambiguate(&code, m.k_fake, ValueCodec::Q8, &FakeModel::paper(), rng)?;
    let paper_guess = random_guess(&paper_public, m.k, rng)?;
    decodes.push(Decoded::measure(
        format!("public (k'={nnz}), paper's scheme"),
        original,
        decode_image(runner, &paper_public.to_sparse()?, w, h)?,
    )?);
    decodes.push(Decoded::measure(
        format!("random guess (k of {nnz}), paper's scheme"),
        original,
        decode_image(runner, &paper_guess, w, h)?,
    )?);
    let true_code_bytes = code_len(shape, m.k, ValueCodec::Q8);
    let (jpeg, jpeg_quality) = jpeg_at_most(original, true_code_bytes)?;
    decodes.push(Decoded::measure("JPEG, same bytes as the true code", original, decode_jpeg(&jpeg)?)?);
    let support_bits = shape.map_count() as f64 * log2_binomial(m.dim as u64, m.k as u64);
    let (jpeg_support, _) = jpeg_at_most(original, (support_bits / 8.0) as usize)?;
    decodes.push(Decoded::measure("JPEG at the paper's support-only rate", original, decode_jpeg(&jpeg_support)?)?);
    Ok(ImageReport {
        name: name.to_owned(),
        width: w,
        height: h,
        tiles: shape.tiles,
        true_code_bytes,
        public_code_bytes: public.encode().len(),
        key_bytes: key.encode().len(),
        support_bits,
        key_bound_bits: derived.support.entropy_bits(),
        nudged: derived.nudged,
        decodes,
        jpeg_bytes: jpeg.len(),
        jpeg_quality,
    })
}
