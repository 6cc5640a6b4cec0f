//! Image quality between an original and a reconstruction: PSNR, SSIM and
//! HaarPSI (with dSSIM = 1 - SSIM and dHaar = 1 - HaarPSI, the privacy
//! metrics of Raynal et al.).

use image::RgbImage;

use crate::error::{Error, Result};

fn same_size(a: &RgbImage, b: &RgbImage) -> Result<()> {
    if a.dimensions() != b.dimensions() {
        return Err(Error::invalid("images", format!("sizes differ: {:?} and {:?}", a.dimensions(), b.dimensions())));
    }
    if a.width() == 0 || a.height() == 0 {
        return Err(Error::invalid("images", "empty"));
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB over all RGB samples (peak 255); 100 dB when identical.
pub fn psnr(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    let se: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let mse = se / a.as_raw().len() as f64;
    Ok(if mse == 0.0 { 100.0 } else { 10.0 * (255.0f64 * 255.0 / mse).log10() })
}

/// Luma (ITU-R BT.601), row-major.
pub fn luma(img: &RgbImage) -> Vec<f64> {
    img.pixels().map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).collect()
}

/// A plane of f64 samples.
#[derive(Clone, Debug)]
pub struct Plane {
    pub width: usize,
    pub height: usize,
    pub data: Vec<f64>,
}

impl Plane {
    pub fn luma(img: &RgbImage) -> Self {
        Plane { width: img.width() as usize, height: img.height() as usize, data: luma(img) }
    }

    fn map2(&self, other: &Plane, f: impl Fn(f64, f64) -> f64) -> Plane {
        Plane {
            width: self.width,
            height: self.height,
            data: self.data.iter().zip(&other.data).map(|(&a, &b)| f(a, b)).collect(),
        }
    }

    /// Separable filter over the "valid" region (output smaller by len-1 each way).
    pub fn filter_valid(&self, kx: &[f64], ky: &[f64]) -> Plane {
        let (w, h) = (self.width, self.height);
        let (ow, oh) = (w + 1 - kx.len(), h + 1 - ky.len());
        let mut rows = vec![0.0; ow * h];
        for y in 0..h {
            let src = &self.data[y * w..(y + 1) * w];
            for x in 0..ow {
                rows[y * ow + x] = kx.iter().zip(&src[x..]).map(|(k, v)| k * v).sum();
            }
        }
        let mut out = vec![0.0; ow * oh];
        for y in 0..oh {
            for x in 0..ow {
                out[y * ow + x] = ky.iter().enumerate().map(|(i, k)| k * rows[(y + i) * ow + x]).sum();
            }
        }
        Plane { width: ow, height: oh, data: out }
    }
}

fn gaussian(n: usize, sigma: f64) -> Vec<f64> {
    let c = (n as f64 - 1.0) / 2.0;
    let k: Vec<f64> = (0..n).map(|i| (-((i as f64 - c).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = k.iter().sum();
    k.into_iter().map(|v| v / s).collect()
}

/// Structural similarity (Wang et al. 2004) of the luma planes: 11x11 Gaussian
/// window with σ = 1.5, K1 = 0.01, K2 = 0.03, averaged over the valid region
/// (a smaller window for images under 11 pixels a side).
pub fn ssim(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    Ok(ssim_planes(&Plane::luma(a), &Plane::luma(b)))
}

pub(crate) fn ssim_planes(x: &Plane, y: &Plane) -> f64 {
    let n = 11.min(x.width).min(x.height);
    let k = gaussian(n, 1.5);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let mx = x.filter_valid(&k, &k);
    let my = y.filter_valid(&k, &k);
    let sxx = x.map2(x, |a, b| a * b).filter_valid(&k, &k);
    let syy = y.map2(y, |a, b| a * b).filter_valid(&k, &k);
    let sxy = x.map2(y, |a, b| a * b).filter_valid(&k, &k);
    let len = mx.data.len();
    let total: f64 = (0..len)
        .map(|i| {
            let (ux, uy) = (mx.data[i], my.data[i]);
            let vx = sxx.data[i] - ux * ux;
            let vy = syy.data[i] - uy * uy;
            let cxy = sxy.data[i] - ux * uy;
            ((2.0 * ux * uy + c1) * (2.0 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        })
        .sum();
    total / len as f64
}

/// Zero-padded 2D convolution with MATLAB's `conv2(..., 'same')` alignment (as
/// the HaarPSI reference code uses), for a separable kernel `outer(col, row)`.
fn convolve_same(x: &Plane, col: &[f64], row: &[f64]) -> Plane {
    let (w, h) = (x.width as isize, x.height as isize);
    let conv1 = |get: &dyn Fn(isize) -> f64, k: &[f64], i: isize| -> f64 {
        // out[i] = full[i + floor(k/2)], full[m] = sum_j x[m - j] k[j]
        let m = i + k.len() as isize / 2;
        k.iter().enumerate().map(|(j, kj)| kj * get(m - j as isize)).sum()
    };
    let mut rows = vec![0.0; x.data.len()];
    for y in 0..h {
        let src = &x.data[(y * w) as usize..((y + 1) * w) as usize];
        let get = |c: isize| if (0..w).contains(&c) { src[c as usize] } else { 0.0 };
        for c in 0..w {
            rows[(y * w + c) as usize] = conv1(&get, row, c);
        }
    }
    let mut out = vec![0.0; x.data.len()];
    for c in 0..w {
        let get = |r: isize| if (0..h).contains(&r) { rows[(r * w + c) as usize] } else { 0.0 };
        for y in 0..h {
            out[(y * w + c) as usize] = conv1(&get, col, y);
        }
    }
    Plane { width: x.width, height: x.height, data: out }
}

/// 2x2 mean then every second sample (HaarPSI's pre-processing).
fn subsample(x: &Plane) -> Plane {
    let f = convolve_same(x, &[0.5, 0.5], &[0.5, 0.5]);
    let (w, h) = (x.width.div_ceil(2), x.height.div_ceil(2));
    let mut data = Vec::with_capacity(w * h);
    for y in (0..x.height).step_by(2) {
        for c in (0..x.width).step_by(2) {
            data.push(f.data[y * x.width + c]);
        }
    }
    Plane { width: w, height: h, data }
}

fn yiq(img: &RgbImage) -> [Plane; 3] {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = [vec![0.0; w * h], vec![0.0; w * h], vec![0.0; w * h]];
    for (i, p) in img.pixels().enumerate() {
        let (r, g, b) = (p[0] as f64, p[1] as f64, p[2] as f64);
        out[0][i] = 0.299 * r + 0.587 * g + 0.114 * b;
        out[1][i] = 0.596 * r - 0.274 * g - 0.322 * b;
        out[2][i] = 0.211 * r - 0.523 * g + 0.312 * b;
    }
    out.map(|data| Plane { width: w, height: h, data })
}

/// Haar wavelet-based perceptual similarity index (Reisenhofer, Bosse,
/// Kutyniok and Wiegand 2018), colour version with sub-sampling, as in the
/// authors' reference code: C = 30, α = 4.2, three scales. 1 means identical.
pub fn haarpsi(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    same_size(a, b)?;
    const C: f64 = 30.0;
    const ALPHA: f64 = 4.2;
    const SCALES: usize = 3;
    let [ya, ia, qa] = yiq(a).map(|p| subsample(&p));
    let [yb, ib, qb] = yiq(b).map(|p| subsample(&p));
    // Haar filters: 2^-s * ones(2^s, 2^s) with the top half negated (and its transpose).
    let haar = |x: &Plane, scale: usize, vertical: bool| {
        let n = 1usize << scale;
        let v = 2f64.powi(-(scale as i32));
        let signed: Vec<f64> = (0..n).map(|r| if r < n / 2 { -v } else { v }).collect();
        let ones = vec![1.0; n];
        if vertical { convolve_same(x, &ones, &signed) } else { convolve_same(x, &signed, &ones) }
    };
    let mean2 = |x: &Plane| {
        let mut p = convolve_same(x, &[0.5, 0.5], &[0.5, 0.5]);
        p.data.iter_mut().for_each(|v| *v = v.abs());
        p
    };
    let sim = |x: f64, y: f64| (2.0 * x * y + C) / (x * x + y * y + C);
    let len = ya.data.len();
    let mut local = [vec![0.0; len], vec![0.0; len], vec![0.0; len]];
    let mut weight = [vec![0.0; len], vec![0.0; len], vec![0.0; len]];
    for (orientation, vertical) in [false, true].into_iter().enumerate() {
        let ca: Vec<Plane> = (1..=SCALES).map(|s| haar(&ya, s, vertical)).collect();
        let cb: Vec<Plane> = (1..=SCALES).map(|s| haar(&yb, s, vertical)).collect();
        for i in 0..len {
            weight[orientation][i] = ca[2].data[i].abs().max(cb[2].data[i].abs());
            local[orientation][i] =
                (sim(ca[0].data[i].abs(), cb[0].data[i].abs()) + sim(ca[1].data[i].abs(), cb[1].data[i].abs())) / 2.0;
        }
    }
    let (cia, cib, cqa, cqb) = (mean2(&ia), mean2(&ib), mean2(&qa), mean2(&qb));
    for i in 0..len {
        local[2][i] = (sim(cia.data[i], cib.data[i]) + sim(cqa.data[i], cqb.data[i])) / 2.0;
        weight[2][i] = (weight[0][i] + weight[1][i]) / 2.0;
    }
    let sigmoid = |x: f64| 1.0 / (1.0 + (-ALPHA * x).exp());
    let (mut num, mut den) = (0.0, 0.0);
    for k in 0..3 {
        for i in 0..len {
            num += sigmoid(local[k][i]) * weight[k][i];
            den += weight[k][i];
        }
    }
    if den == 0.0 {
        // Two flat images: no structure to compare.
        return Ok(if a == b { 1.0 } else { 0.0 });
    }
    let v = num / den;
    let logit = (v / (1.0 - v)).ln() / ALPHA;
    Ok(logit * logit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let v = (x.wrapping_mul(2654435761) ^ y.wrapping_mul(40503) ^ seed).wrapping_mul(2246822519) >> 24;
            Rgb([v as u8, (v * 3) as u8, (v * 7) as u8])
        })
    }

    #[test]
    fn identical_images_score_perfectly() {
        let a = noise(40, 30, 1);
        assert_eq!(psnr(&a, &a).unwrap(), 100.0);
        assert!((ssim(&a, &a).unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn psnr_of_a_constant_offset() {
        let a = RgbImage::from_pixel(8, 8, Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(8, 8, Rgb([110, 110, 110]));
        // MSE 100: 10 log10(65025 / 100) = 28.13 dB.
        assert!((psnr(&a, &b).unwrap() - 28.1308).abs() < 1e-3);
    }

    #[test]
    fn haarpsi_is_one_for_identical_and_drops_with_noise() {
        let a = RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 255) as u8]));
        assert!((haarpsi(&a, &a).unwrap() - 1.0).abs() < 1e-9);
        let noisy = noise(64, 48, 5);
        let blend = RgbImage::from_fn(64, 48, |x, y| {
            let (p, q) = (a.get_pixel(x, y), noisy.get_pixel(x, y));
            Rgb([0, 1, 2].map(|c| ((p[c] as u16 * 3 + q[c] as u16) / 4) as u8))
        });
        let near = haarpsi(&a, &blend).unwrap();
        let far = haarpsi(&a, &noisy).unwrap();
        assert!(near < 1.0 && far < near, "near {near}, far {far}");
    }

    /// A 77x101 crop of butterfly.jpg and the same with Gaussian noise (σ = 40):
    /// values from scikit-image's `structural_similarity` (Gaussian window,
    /// σ = 1.5, on luma) and the HaarPSI authors' Python code (haarPsi.py).
    #[test]
    fn matches_the_reference_implementations() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/quality");
        let load = |name: &str| image::open(format!("{dir}/{name}")).unwrap().to_rgb8();
        let (a, b) = (load("original.png"), load("noisy.png"));
        assert!((ssim(&a, &b).unwrap() - 0.193_720_015).abs() < 1e-6);
        assert!((haarpsi(&a, &b).unwrap() - 0.591_603_254).abs() < 1e-6);
        assert!((psnr(&a, &b).unwrap() - 16.5021).abs() < 1e-3);
    }

    #[test]
    fn ssim_drops_for_unrelated_images_and_rejects_size_mismatch() {
        let (a, b) = (noise(64, 64, 1), noise(64, 64, 99));
        assert!(ssim(&a, &b).unwrap() < 0.2);
        assert!(ssim(&a, &noise(63, 64, 1)).is_err());
    }
}
