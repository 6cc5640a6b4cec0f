//! Whole images through a model: tile, encode, keep the top k; and back.

use image::RgbImage;

use crate::code::{CodeShape, SparseCode};
use crate::error::{Error, Result};
use crate::model::ModelRunner;
use crate::tiling::{TileGrid, image_to_tiles, tiles_to_image};

/// The code shape of a `width`×`height` image under `runner`'s model.
pub fn code_shape(runner: &ModelRunner, width: u32, height: u32) -> Result<CodeShape> {
    let m = runner.manifest();
    let grid = TileGrid::for_image(width, height, m.tile_size)?;
    let tiles = u32::try_from(grid.count()).map_err(|_| Error::Image("image too large".into()))?;
    CodeShape::new(tiles, m.maps, m.dim)
        .map_err(|_| Error::Image(format!("{width}x{height} needs {tiles} tiles, above {}", CodeShape::MAX_TILES)))
}

/// Encodes an image into its true sparse code (k nonzeros a map).
pub fn encode_image(runner: &ModelRunner, img: &RgbImage) -> Result<SparseCode> {
    let shape = code_shape(runner, img.width(), img.height())?;
    let (tiles, grid) = image_to_tiles(img, runner.manifest().tile_size)?;
    let dense = runner.encode_tiles(&tiles, grid.count())?;
    SparseCode::top_k(&dense, shape, runner.manifest().k)
}

/// Decodes any sparse code of the model (true, preview, public or guessed)
/// into a `width`×`height` image.
pub fn decode_image(runner: &ModelRunner, code: &SparseCode, width: u32, height: u32) -> Result<RgbImage> {
    let expected = code_shape(runner, width, height)?;
    if code.shape() != expected {
        return Err(Error::invalid(
            "code",
            format!("shape {:?} does not fit a {width}x{height} image under this model ({expected:?})", code.shape()),
        ));
    }
    let grid = TileGrid::for_image(width, height, runner.manifest().tile_size)?;
    let tiles = runner.decode_tiles(&code.to_dense(), grid.count())?;
    tiles_to_image(&tiles, grid, width, height)
}
