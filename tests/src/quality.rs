//! Quality of every way to decode an image: authorized, preview, public,
//! random guess; JPEG at the same bytes as the true code and a block DCT at
//! the same nonzero count; the seams between tiles and grey in, grey out.

use std::io::Cursor;

use ambishare_shared::combinatorics::log2_binomial;
use ambishare_shared::format::code_len;
use ambishare_shared::model::ModelRunner;
use ambishare_shared::pipeline::{decode_image, encode_image};
use ambishare_shared::quality::{luma, psnr, ssim};
use ambishare_shared::{FakeModel, ValueCodec, ambiguate, random_guess};

use crate::scheme::DerivedScheme;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageReader, RgbImage};
use rand::{CryptoRng, Rng};

use crate::Result;
use crate::dct::block_dct_image;

/// Pixels this close to a tile's edge count as its border (the ring the
/// training loss weights, `models/train/train.py --border`).
pub const BORDER_RING: u32 = 2;

/// Which way an image was decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeKind {
    /// The true code (k a map), through the key.
    Authorized,
    /// A preview key keeping this many nonzeros a map.
    Preview(u16),
    /// The whole public code of the shipped scheme.
    Public,
    /// k of the public code's k' nonzeros at random, shipped scheme.
    Guess,
    /// The whole public code of the paper's scheme.
    PaperPublic,
    /// k of k' at random, paper's scheme.
    PaperGuess,
    /// JPEG at the true code's bytes.
    Jpeg,
    /// JPEG at the paper's support-only rate.
    JpegSupport,
    /// The block-DCT baseline keeping this many coefficients a tile.
    BlockDct(usize),
}

/// One decode of an image and how close it is to the original.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub kind: DecodeKind,
    pub name: String,
    pub image: RgbImage,
    pub psnr: f64,
    pub ssim: f64,
}

impl Decoded {
    pub fn measure(kind: DecodeKind, name: impl Into<String>, original: &RgbImage, image: RgbImage) -> Result<Self> {
        Ok(Decoded { kind, name: name.into(), psnr: psnr(original, &image)?, ssim: ssim(original, &image)?, image })
    }
}

/// PSNR of the pixels within `ring` px of a tile's edge and of the others.
#[derive(Clone, Copy, Debug)]
pub struct Seams {
    pub border_psnr: f64,
    pub interior_psnr: f64,
}

/// PSNR (peak 255, 100 dB when identical) over `pixels` RGB pixels of squared error `se`.
fn psnr_of(se: f64, pixels: usize) -> f64 {
    let mse = se / (3 * pixels.max(1)) as f64;
    if mse == 0.0 { 100.0 } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

/// [`Seams`] of `decoded` against `original`, the tiles laid out as
/// `ambishare_shared::tiling` lays them: `tile`-pixel squares from the image's
/// top-left, the last row and column padded past the image (so the image's
/// top and left edges are tile edges, and its right and bottom edges only when
/// the size is a multiple of `tile`).
pub fn seams(original: &RgbImage, decoded: &RgbImage, tile: u32, ring: u32) -> Result<Seams> {
    // Same sizes checked by psnr.
    psnr(original, decoded)?;
    let near_edge = |v: u32| v % tile < ring || v % tile >= tile.saturating_sub(ring);
    let (mut se, mut count) = ([0.0f64; 2], [0usize; 2]);
    for (x, y, a) in original.enumerate_pixels() {
        let b = decoded.get_pixel(x, y);
        let border = usize::from(near_edge(x) || near_edge(y));
        se[border] += a.0.iter().zip(b.0).map(|(&p, q)| (f64::from(p) - f64::from(q)).powi(2)).sum::<f64>();
        count[border] += 1;
    }
    Ok(Seams { border_psnr: psnr_of(se[1], count[1]), interior_psnr: psnr_of(se[0], count[0]) })
}

/// Mean over pixels of (|R-G| + |G-B| + |B-R|) / 3, in 8-bit levels: 0 for a grey image.
pub fn colour_spread(img: &RgbImage) -> f64 {
    let total: f64 = img
        .pixels()
        .map(|p| {
            let [r, g, b] = p.0.map(f64::from);
            ((r - g).abs() + (g - b).abs() + (b - r).abs()) / 3.0
        })
        .sum();
    total / (img.width() as f64 * img.height() as f64).max(1.0)
}

/// The grey version of an image: its BT.601 luma, rounded, in all three channels.
pub fn grey_version(img: &RgbImage) -> RgbImage {
    let y = luma(img);
    RgbImage::from_fn(img.width(), img.height(), |x, row| {
        // Luma of 8-bit samples is within [0, 255].
        let v = y[(row * img.width() + x) as usize].round().clamp(0.0, 255.0) as u8;
        image::Rgb([v, v, v])
    })
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
    /// Authorized (k), previews (as the manifest lists them), public (k') and
    /// random guess (k of k') with signs scrambled and with the paper's scheme,
    /// JPEG, block DCT.
    pub decodes: Vec<Decoded>,
    /// Tile borders against interiors in the authorized decode.
    pub seams: Seams,
    /// [`colour_spread`] of the grey version of the image (0 by construction)
    /// and of its authorized decode.
    pub grey_input_spread: f64,
    pub grey_decode_spread: f64,
    pub jpeg_bytes: usize,
    pub jpeg_quality: u8,
}

impl ImageReport {
    pub fn decode(&self, name: &str) -> Option<&Decoded> {
        self.decodes.iter().find(|d| d.name == name)
    }

    pub fn decode_of(&self, kind: DecodeKind) -> Option<&Decoded> {
        self.decodes.iter().find(|d| d.kind == kind)
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
    let authorized_image = decode_image(runner, &authorized, w, h)?;
    let seams = seams(original, &authorized_image, m.tile_size, BORDER_RING)?;
    decodes.push(Decoded::measure(
        DecodeKind::Authorized,
        format!("authorized (k={})", m.k),
        original,
        authorized_image,
    )?);
    for &kp in &m.preview_k {
        let pk = key.preview(kp)?.disambiguate(public)?;
        let image = decode_image(runner, &pk, w, h)?;
        decodes.push(Decoded::measure(DecodeKind::Preview(kp), format!("preview (k_p={kp})"), original, image)?);
    }
    let nnz = public.nnz();
    let guess = random_guess(public, m.k, rng)?;
    decodes.push(Decoded::measure(
        DecodeKind::Public,
        format!("public (k'={nnz}), signs scrambled"),
        original,
        decode_image(runner, &public.to_sparse()?, w, h)?,
    )?);
    decodes.push(Decoded::measure(
        DecodeKind::Guess,
        format!("random guess (k of {nnz}), signs scrambled"),
        original,
        decode_image(runner, &guess, w, h)?,
    )?);
    // The paper's scheme on the same code: fakes, signs kept.
    let (paper_public, _) = ambiguate(&code, m.k_fake, ValueCodec::Q8, &FakeModel::paper(), rng)?;
    let paper_guess = random_guess(&paper_public, m.k, rng)?;
    decodes.push(Decoded::measure(
        DecodeKind::PaperPublic,
        format!("public (k'={nnz}), paper's scheme"),
        original,
        decode_image(runner, &paper_public.to_sparse()?, w, h)?,
    )?);
    decodes.push(Decoded::measure(
        DecodeKind::PaperGuess,
        format!("random guess (k of {nnz}), paper's scheme"),
        original,
        decode_image(runner, &paper_guess, w, h)?,
    )?);
    let true_code_bytes = code_len(shape, m.k, ValueCodec::Q8);
    let (jpeg, jpeg_quality) = jpeg_at_most(original, true_code_bytes)?;
    decodes.push(Decoded::measure(
        DecodeKind::Jpeg,
        "JPEG, same bytes as the true code",
        original,
        decode_jpeg(&jpeg)?,
    )?);
    let support_bits = shape.map_count() as f64 * log2_binomial(m.dim as u64, m.k as u64);
    let (jpeg_support, _) = jpeg_at_most(original, (support_bits / 8.0) as usize)?;
    decodes.push(Decoded::measure(
        DecodeKind::JpegSupport,
        "JPEG at the paper's support-only rate",
        original,
        decode_jpeg(&jpeg_support)?,
    )?);
    // The same nonzero count as the true code (L·k a tile), and a quarter of it.
    let nonzeros = usize::from(m.maps) * usize::from(m.k);
    for keep in [nonzeros, nonzeros / 4] {
        decodes.push(Decoded::measure(
            DecodeKind::BlockDct(keep),
            format!("block DCT, {keep} largest coefficients a tile"),
            original,
            block_dct_image(original, m.tile_size, keep)?,
        )?);
    }
    // Grey in, grey out: the grey version through the whole scheme.
    let grey = grey_version(original);
    let grey_public = scheme.publish(&encode_image(runner, &grey)?)?;
    let grey_decode = decode_image(runner, &grey_public.key.disambiguate(&grey_public.public)?, w, h)?;
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
        seams,
        grey_input_spread: colour_spread(&grey),
        grey_decode_spread: colour_spread(&grey_decode),
        jpeg_bytes: jpeg.len(),
        jpeg_quality,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seams_split_tile_edges_from_interiors() {
        // 70x50: one full tile column and a padded one; x = 62..66 and the image's left and top frame are border.
        let original = RgbImage::from_pixel(70, 50, image::Rgb([100, 100, 100]));
        let mut at_seam = original.clone();
        at_seam.put_pixel(65, 20, image::Rgb([110, 100, 100]));
        let s = seams(&original, &at_seam, 64, BORDER_RING).unwrap();
        assert!(s.border_psnr < 100.0 && s.interior_psnr == 100.0);
        let mut inside = original.clone();
        inside.put_pixel(30, 20, image::Rgb([110, 100, 100]));
        let s = seams(&original, &inside, 64, BORDER_RING).unwrap();
        assert!(s.border_psnr == 100.0 && s.interior_psnr < 100.0);
        // The image's right edge (x = 69) is inside the padded tile, not at its edge.
        let mut right = original.clone();
        right.put_pixel(69, 20, image::Rgb([110, 100, 100]));
        assert_eq!(seams(&original, &right, 64, BORDER_RING).unwrap().border_psnr, 100.0);
        assert!(seams(&original, &RgbImage::new(10, 10), 64, BORDER_RING).is_err());
    }

    #[test]
    fn grey_version_has_no_colour_spread() {
        let img = RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 30) as u8, (y * 35) as u8, 200]));
        assert!(colour_spread(&img) > 0.0);
        assert_eq!(colour_spread(&grey_version(&img)), 0.0);
        // (|R-G| + |G-B| + |B-R|) / 3 of one pixel: (30 + 0 + 30) / 3.
        assert_eq!(colour_spread(&RgbImage::from_pixel(1, 1, image::Rgb([30, 0, 0]))), 20.0);
    }
}
