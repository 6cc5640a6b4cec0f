//! End-to-end harness, evaluation and quickstart tools of ambishare.
//!
//! - [`quality`]: every decode of an image (authorized, preview, public, random
//!   guess) against JPEG at the same bytes.
//! - [`grid`]: pictures of decodes side by side.
//! - [`report`]: the model's quality report (`models/<name>/REPORT.md`), with
//!   [`dct`], its block-DCT baseline.
//! - [`nodes`], [`consistency`], [`synth`]: real node processes, store
//!   checks and generated images for the reliability tools
//!   (`ambishare-crash`, `ambishare-load`).

pub mod browser;
pub mod consistency;
pub mod dct;
pub mod evaluation;
pub mod fit;
pub mod grid;
pub mod harness;
pub mod nodes;
pub mod quality;
pub mod quickstart;
pub mod report;
pub mod scheme;
pub mod synth;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Shared(#[from] ambishare_shared::Error),
    #[error("image: {0}")]
    Image(#[from] image::ImageError),
    /// A client operation failed (kept typed: tests check why).
    #[error("client: {0}")]
    Client(#[from] ambishare_client::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io("i/o", e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Images of a folder (png, jpg, jpeg, webp), sorted by name.
pub fn list_images(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))? {
        let path = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg" | "webp")) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The images of `dir` and of its sub-folders, taken in turn from each
/// folder (round robin), so that one large source does not dominate a prefix.
pub fn list_images_recursive(dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    let mut folders = vec![list_images(dir)?];
    let mut subdirs: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        folders.push(list_images_recursive(&sub)?);
    }
    let longest = folders.iter().map(Vec::len).max().unwrap_or(0);
    Ok((0..longest).flat_map(|i| folders.iter().filter_map(move |f| f.get(i).cloned())).collect())
}

/// Loads an image file as RGB (bounded by the shared loader's limits).
pub fn load_rgb(path: &std::path::Path) -> Result<image::RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(ambishare_shared::tiling::load_image(&bytes, 1 << 26)?)
}
