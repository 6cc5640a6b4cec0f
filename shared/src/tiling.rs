//! Cutting images into the fixed-size tiles the model works on, and putting
//! them back together.
//!
//! Tiles are NCHW `f32` in `[0, 1]`, in row-major grid order. Border tiles are
//! padded by edge replication, so the model never sees an artificial black
//! frame, and reassembly crops the padding away.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// Colour channels of a tile (RGB).
const CHANNELS: usize = 3;

/// How an image of some size is covered by square tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    /// Side of one square tile, in pixels.
    pub tile: u32,
    /// Tiles per row.
    pub cols: u32,
    /// Tiles per column.
    pub rows: u32,
}

impl TileGrid {
    /// The smallest grid of `tile`-sized tiles covering a `width`×`height` image.
    pub fn for_image(width: u32, height: u32, tile: u32) -> Result<TileGrid> {
        if width == 0 || height == 0 {
            return Err(Error::Image(format!("image has zero size ({width}x{height})")));
        }
        if tile == 0 {
            return Err(Error::Image("tile size is zero".into()));
        }
        Ok(TileGrid { tile, cols: width.div_ceil(tile), rows: height.div_ceil(tile) })
    }

    /// Number of tiles in the grid.
    pub fn count(&self) -> usize {
        self.cols as usize * self.rows as usize
    }

    /// Number of `f32` values of one tile (C×T×T).
    pub fn tile_len(&self) -> usize {
        CHANNELS * self.tile as usize * self.tile as usize
    }

    /// Number of `f32` values of all tiles, or an error if that does not fit memory.
    fn total_len(&self) -> Result<usize> {
        self.count().checked_mul(self.tile_len()).ok_or_else(|| Error::Image("image too large to tile".into()))
    }
}

/// Cuts `img` into tiles: NCHW `f32` in `[0, 1]`, row-major grid order, border
/// tiles padded by replicating the last row and column.
pub fn image_to_tiles(img: &RgbImage, tile: u32) -> Result<(Vec<f32>, TileGrid)> {
    let (width, height) = img.dimensions();
    let grid = TileGrid::for_image(width, height, tile)?;
    let mut out = Vec::with_capacity(grid.total_len()?);
    let t = tile;
    for row in 0..grid.rows {
        for col in 0..grid.cols {
            for c in 0..CHANNELS {
                for y in 0..t {
                    // Clamping the coordinate is what replicates the edge.
                    let sy = (row * t + y).min(height - 1);
                    for x in 0..t {
                        let sx = (col * t + x).min(width - 1);
                        out.push(f32::from(img.get_pixel(sx, sy)[c]) / 255.0);
                    }
                }
            }
        }
    }
    Ok((out, grid))
}

/// Reassembles tiles made for a `width`×`height` image, cropping the padding.
/// Values are clamped to `[0, 1]` (NaN counts as 0) and rounded to 8 bits.
pub fn tiles_to_image(tiles: &[f32], grid: TileGrid, width: u32, height: u32) -> Result<RgbImage> {
    let expected = TileGrid::for_image(width, height, grid.tile)?;
    if expected != grid {
        return Err(Error::Image(format!(
            "a {}x{} grid of {}-pixel tiles does not fit a {width}x{height} image",
            grid.cols, grid.rows, grid.tile
        )));
    }
    let total = grid.total_len()?;
    if tiles.len() != total {
        return Err(Error::Image(format!(
            "expected {total} tile values for {} tiles, got {}",
            grid.count(),
            tiles.len()
        )));
    }
    let t = grid.tile as usize;
    let cols = grid.cols as usize;
    let tile_len = grid.tile_len();
    Ok(RgbImage::from_fn(width, height, |x, y| {
        let (x, y) = (x as usize, y as usize);
        let index = (y / t) * cols + x / t;
        let base = index * tile_len + (y % t) * t + x % t;
        let mut px = [0u8; CHANNELS];
        for (c, p) in px.iter_mut().enumerate() {
            *p = to_u8(tiles[base + c * t * t]);
        }
        image::Rgb(px)
    }))
}

fn to_u8(v: f32) -> u8 {
    if v.is_nan() {
        return 0;
    }
    // In [0, 255] after the clamp, so the cast cannot truncate.
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Whether a JPEG's last scan is followed by its end-of-image marker. Inside
/// entropy-coded data a 0xFF byte is always followed by 0x00 or a restart
/// marker, so an EOI after the last SOS is the main image's own (an EXIF
/// thumbnail's comes before its SOS).
fn jpeg_has_end(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_scan.is_some_and(|sos| bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9]))
}

/// Decodes an image of any supported format (PNG, JPEG, WebP) to RGB, upright:
/// an EXIF orientation (as phones write instead of rotating the pixels) is
/// applied, so every reader sees the image as its viewer would.
///
/// The declared dimensions are read from the header and checked against
/// `max_pixels` before anything is decoded, so a small file declaring a huge
/// image (a decompression bomb) is refused without allocating for it.
pub fn load_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let reader = || -> Result<ImageReader<Cursor<&[u8]>>> {
        let reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::Image(format!("cannot read image: {e}")))?;
        match reader.format() {
            None => return Err(Error::Image("not an image in a known format (PNG, JPEG, WebP)".into())),
            // The JPEG decoder fills a truncated scan with gray instead of failing.
            Some(ImageFormat::Jpeg) if !jpeg_has_end(bytes) => {
                return Err(Error::Image("truncated JPEG: no end-of-image marker after its last scan".into()));
            }
            Some(_) => {}
        }
        Ok(reader)
    };

    let (width, height) =
        reader()?.into_dimensions().map_err(|e| Error::Image(format!("cannot read image header: {e}")))?;
    if width == 0 || height == 0 {
        return Err(Error::Image(format!("image has zero size ({width}x{height})")));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(Error::Image(format!(
            "image of {width}x{height} = {pixels} pixels exceeds the limit of {max_pixels} pixels"
        )));
    }

    // Hold the decoder to the dimensions it declared, and bound its memory
    // (8 bytes per pixel covers 16-bit RGBA, plus room for codec state).
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    let mut reader = reader()?;
    reader.limits(limits.clone());
    let decode_error = |e| Error::Image(format!("cannot decode image: {e}"));
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    // What `ImageReader::decode` reserves, checked before the buffer is allocated.
    limits.reserve(decoder.total_bytes()).map_err(decode_error)?;
    let orientation = decoder.orientation().map_err(|e| Error::Image(format!("cannot read image orientation: {e}")))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    // Rotating keeps the pixel count, so the limit checked above still holds.
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x * 3 % 256) as u8, (y * 5 % 256) as u8, ((x + y) % 256) as u8])
        })
    }

    fn png_bytes(img: &RgbImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    /// A real 1x1 PNG whose IHDR is patched (with a valid CRC) to declare `w`x`h`.
    fn png_declaring(w: u32, h: u32) -> Vec<u8> {
        let mut png = png_bytes(&gradient(1, 1));
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&w.to_be_bytes());
        png[20..24].copy_from_slice(&h.to_be_bytes());
        let crc = crc32fast::hash(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    #[test]
    fn grid_uses_ceil_division() {
        let g = TileGrid::for_image(100, 70, 64).unwrap();
        assert_eq!((g.cols, g.rows, g.count()), (2, 2, 4));
        let g = TileGrid::for_image(128, 64, 64).unwrap();
        assert_eq!((g.cols, g.rows), (2, 1));
        assert!(TileGrid::for_image(0, 10, 8).is_err());
        assert!(TileGrid::for_image(10, 0, 8).is_err());
        assert!(TileGrid::for_image(10, 10, 0).is_err());
    }

    #[test]
    fn round_trip_is_exact() {
        let img = gradient(100, 70);
        let (tiles, grid) = image_to_tiles(&img, 64).unwrap();
        assert_eq!((grid.cols, grid.rows), (2, 2));
        assert_eq!(tiles.len(), 4 * 3 * 64 * 64);
        assert!(tiles.iter().all(|v| (0.0..=1.0).contains(v)));
        let back = tiles_to_image(&tiles, grid, 100, 70).unwrap();
        assert_eq!(back, img);
    }

    #[test]
    fn tiles_are_nchw_in_row_major_order() {
        let img = gradient(16, 16);
        let (tiles, _) = image_to_tiles(&img, 8).unwrap();
        let t = 8usize;
        // Tile 1 is the top-right one; channel 2, row 3, column 5 of it.
        let v = tiles[3 * t * t + 2 * t * t + 3 * t + 5];
        assert_eq!(v, f32::from(img.get_pixel(8 + 5, 3)[2]) / 255.0);
        // Tile 2 is the bottom-left one.
        let v = tiles[2 * 3 * t * t + 4 * t + 1];
        assert_eq!(v, f32::from(img.get_pixel(1, 8 + 4)[0]) / 255.0);
    }

    #[test]
    fn padding_replicates_the_edge() {
        let img = gradient(10, 9);
        let (tiles, grid) = image_to_tiles(&img, 8).unwrap();
        assert_eq!((grid.cols, grid.rows), (2, 2));
        let t = 8usize;
        let at = |tile: usize, c: usize, y: usize, x: usize| tiles[tile * 3 * t * t + c * t * t + y * t + x];
        for c in 0..3 {
            // Right tile: columns past x=9 repeat column 9.
            for x in 2..t {
                assert_eq!(at(1, c, 4, x), f32::from(img.get_pixel(9, 4)[c]) / 255.0);
            }
            // Bottom tiles: rows past y=8 repeat row 8.
            for y in 1..t {
                assert_eq!(at(2, c, y, 3), f32::from(img.get_pixel(3, 8)[c]) / 255.0);
                assert_eq!(at(3, c, y, 7), f32::from(img.get_pixel(9, 8)[c]) / 255.0);
            }
        }
    }

    #[test]
    fn values_are_clamped_and_rounded() {
        let grid = TileGrid::for_image(1, 1, 1).unwrap();
        let img = tiles_to_image(&[-0.5, 2.0, f32::NAN], grid, 1, 1).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [0, 255, 0]);
        let img = tiles_to_image(&[0.5, 0.1, 0.999], grid, 1, 1).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [128, 26, 255]);
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let (tiles, grid) = image_to_tiles(&gradient(20, 20), 8).unwrap();
        assert!(tiles_to_image(&tiles[1..], grid, 20, 20).is_err());
        assert!(tiles_to_image(&[], grid, 20, 20).is_err());
        // A grid that does not belong to the requested size.
        assert!(tiles_to_image(&tiles, grid, 40, 20).is_err());
        assert!(tiles_to_image(&tiles, grid, 0, 20).is_err());
    }

    #[test]
    fn loads_png() {
        let img = gradient(33, 17);
        let loaded = load_image(&png_bytes(&img), 10_000).unwrap();
        assert_eq!(loaded, img);
    }

    #[test]
    fn rejects_a_jpeg_cut_inside_its_scan() {
        let mut jpeg = Vec::new();
        gradient(48, 40).write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        assert_eq!(load_image(&jpeg, 10_000).unwrap().dimensions(), (48, 40));
        // Bytes after the end marker (as some cameras write) are no truncation.
        let mut padded = jpeg.clone();
        padded.extend_from_slice(&[0, 0, 0xAB]);
        assert!(load_image(&padded, 10_000).is_ok());
        for cut in [jpeg.len() - 2, jpeg.len() * 4 / 5] {
            match load_image(&jpeg[..cut], 10_000) {
                Err(Error::Image(msg)) => assert!(msg.contains("truncated JPEG"), "{msg}"),
                other => panic!("a JPEG cut at {cut} of {} bytes: {other:?}", jpeg.len()),
            }
        }
    }

    /// `jpeg` with an APP1 Exif segment (a big-endian TIFF header and one IFD
    /// holding only the Orientation tag) inserted after its SOI marker.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = b"MM\0\x2a".to_vec();
        tiff.extend_from_slice(&8u32.to_be_bytes()); // offset of IFD 0
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // tag: Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // type: SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // count
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // the value field's padding
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let len = u16::try_from(app1.len() + 2).unwrap();
        assert_eq!(&jpeg[..2], [0xFF, 0xD8]);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// Whether two images differ by at most `tolerance` in every sample
    /// (JPEG is lossy, so pixels are compared loosely).
    fn close(a: &RgbImage, b: &RgbImage, tolerance: u8) -> bool {
        a.dimensions() == b.dimensions() && a.as_raw().iter().zip(b.as_raw()).all(|(x, y)| x.abs_diff(*y) <= tolerance)
    }

    #[test]
    fn applies_exif_orientation() {
        // Four flat quadrants of distinct colours, so any rotation or flip shows.
        let (w, h) = (48, 32);
        let colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];
        let stored =
            RgbImage::from_fn(w, h, |x, y| image::Rgb(colours[usize::from(x >= w / 2) + 2 * usize::from(y >= h / 2)]));
        let mut jpeg = Vec::new();
        stored.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        let plain = load_image(&jpeg, 10_000).unwrap();
        assert!(close(&plain, &stored, 40), "the JPEG itself decodes to what was stored");
        // Orientation 1 is upright; 3 is rotated 180°; 6 needs a 90° clockwise turn to view.
        let cases = [
            (1, stored.clone()),
            (3, image::imageops::rotate180(&stored)),
            (6, image::imageops::rotate90(&stored)),
            (8, image::imageops::rotate270(&stored)),
        ];
        for (orientation, expected) in cases {
            let loaded = load_image(&with_exif_orientation(&jpeg, orientation), 10_000).unwrap();
            assert!(close(&loaded, &expected, 40), "orientation {orientation}");
        }
        let turned = load_image(&with_exif_orientation(&jpeg, 6), 10_000).unwrap();
        assert_eq!(turned.dimensions(), (h, w));
        // The top-left of the upright image is the stored bottom-left quadrant.
        let corner = turned.get_pixel(2, 2).0;
        assert!(corner.iter().zip(colours[2]).all(|(a, b)| a.abs_diff(b) <= 40), "{corner:?}");
    }

    #[test]
    fn rejects_decompression_bomb_by_declared_size() {
        let bomb = png_declaring(20_000, 20_000);
        assert!(bomb.len() < 200);
        match load_image(&bomb, 16_000_000) {
            Err(Error::Image(msg)) => assert!(msg.contains("exceeds the limit"), "{msg}"),
            other => panic!("bomb not refused by size: {other:?}"),
        }
    }

    #[test]
    fn rejects_image_above_pixel_limit() {
        let png = png_bytes(&gradient(100, 70));
        assert!(matches!(load_image(&png, 6_999), Err(Error::Image(_))));
        assert!(load_image(&png, 7_000).is_ok());
    }

    #[test]
    fn rejects_zero_sized_image() {
        assert!(matches!(load_image(&png_declaring(0, 10), 1_000_000), Err(Error::Image(_))));
    }

    #[test]
    fn rejects_truncated_image() {
        let png = png_bytes(&gradient(64, 64));
        assert!(matches!(load_image(&png[..png.len() / 2], 1_000_000), Err(Error::Image(_))));
    }

    #[test]
    fn rejects_garbage() {
        for bytes in [&b""[..], b"not an image at all", &[0u8; 64], &[0x89, b'P', b'N', b'G']] {
            match load_image(bytes, 1_000_000) {
                Err(Error::Image(msg)) => assert!(!msg.is_empty()),
                other => panic!("garbage accepted: {other:?}"),
            }
        }
    }
}
