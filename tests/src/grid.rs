//! Pictures of decodes side by side: one row per image, one column per decode.

use image::imageops::{FilterType, resize};
use image::{Rgb, RgbImage};

/// Each cell scaled to `cell_height` pixels high (aspect kept, centred in the
/// widest cell of its column), separated by `gap` white pixels.
pub fn grid(rows: &[Vec<&RgbImage>], cell_height: u32, gap: u32) -> RgbImage {
    let scaled: Vec<Vec<RgbImage>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|img| {
                    let w = (img.width() as u64 * cell_height as u64 / img.height().max(1) as u64).max(1) as u32;
                    resize(*img, w, cell_height, FilterType::Triangle)
                })
                .collect()
        })
        .collect();
    let columns = scaled.iter().map(Vec::len).max().unwrap_or(0);
    let col_width: Vec<u32> =
        (0..columns).map(|c| scaled.iter().filter_map(|r| r.get(c)).map(RgbImage::width).max().unwrap_or(0)).collect();
    let width = col_width.iter().sum::<u32>() + gap * (columns as u32 + 1);
    let height = scaled.len() as u32 * (cell_height + gap) + gap;
    let mut out = RgbImage::from_pixel(width.max(1), height.max(1), Rgb([255, 255, 255]));
    for (r, row) in scaled.iter().enumerate() {
        let y = gap + r as u32 * (cell_height + gap);
        let mut x = gap;
        for (c, cell) in row.iter().enumerate() {
            let offset = (col_width[c] - cell.width()) / 2;
            image::imageops::replace(&mut out, cell, (x + offset) as i64, y as i64);
            x += col_width[c] + gap;
        }
    }
    out
}

/// Saves as JPEG (quality 90): pictures committed to the repository stay small.
pub fn save_jpeg(img: &RgbImage, path: &std::path::Path) -> crate::Result<()> {
    let file = std::fs::File::create(path).map_err(|e| crate::Error::io(format!("creating {}", path.display()), e))?;
    image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90).encode_image(img)?;
    Ok(())
}
