//! The inputs of a job: files and directories walked into image paths, read
//! with a size limit, hashed, decoded in a reader thread.

use super::*;

/// Files named, and image files under directories named, sorted, without repeats.
pub fn collect_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| unreadable(input, &e))?;
        if meta.is_dir() {
            walk(input, &mut out)?;
        } else {
            out.push(input.clone());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// An input the caller named that cannot be read (the caller's fault).
pub(super) fn unreadable(path: &Path, e: &std::io::Error) -> Error {
    Error::invalid("input", format!("cannot read {}: {e}", path.display()))
}

pub(super) fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| unreadable(dir, &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| unreadable(dir, &e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| unreadable(&path, &e))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file()
            && path
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| IMAGE_EXTENSIONS.iter().any(|e| x.eq_ignore_ascii_case(e)))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a whole file of at most `limit` bytes.
pub fn read_file(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let ctx = || format!("reading {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| Error::io(ctx(), e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(ctx(), e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::invalid("file", format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(bytes)
}

pub(super) fn model_files(dir: &Path, manifest: &Manifest) -> Result<(Vec<u8>, Vec<u8>)> {
    let encoder = manifest
        .encoder
        .as_ref()
        .ok_or_else(|| Error::invalid("model", format!("{} has no encoder", manifest.name)))?;
    let limit = 1 << 30;
    Ok((read_file(&dir.join(&encoder.file), limit)?, read_file(&dir.join(&manifest.decoder.file), limit)?))
}

/// An image to encode.
pub(super) struct Source {
    pub(super) path: PathBuf,
    pub(super) sha256: [u8; 32],
    pub(super) image: image::RgbImage,
    pub(super) tiles: usize,
}

/// A file read.
pub(super) enum Fetched {
    New(Source),
    /// An earlier run prepared its entry, and it is still not acknowledged
    /// (its re-send in this run failed).
    Prepared(EntryId),
}

pub(super) enum Skip {
    /// Published by an earlier run (or re-sent by this one).
    Published(EntryId),
    Duplicate,
    Failed(String),
}

/// Reads input files (on a blocking thread), remembering what it has seen.
pub(super) struct Reader {
    pub(super) store: Arc<OwnerStore>,
    pub(super) dataset: DatasetName,
    pub(super) max_pixels: u64,
    pub(super) tile_size: u32,
    pub(super) seen: HashSet<[u8; 32]>,
}

impl Reader {
    pub(super) fn read(&mut self, path: &Path) -> Result<Fetched, Skip> {
        let bytes = read_file(path, crate::config::MAX_IMAGE_FILE_BYTES).map_err(|e| Skip::Failed(e.to_string()))?;
        let sha = sha256(&bytes);
        if !self.seen.insert(sha) {
            return Err(Skip::Duplicate);
        }
        match self.store.source_entry(&self.dataset, &sha) {
            Ok(Some((id, EntryState::Published))) => return Err(Skip::Published(id)),
            Ok(Some((id, EntryState::Prepared))) => return Ok(Fetched::Prepared(id)),
            Ok(None) => {}
            Err(e) => return Err(Skip::Failed(format!("store: {e}"))),
        }
        let image = load_image(&bytes, self.max_pixels).map_err(|e| Skip::Failed(e.to_string()))?;
        let (w, h) = image.dimensions();
        let tile = self.tile_size.max(1);
        let tiles = w.div_ceil(tile) as usize * h.div_ceil(tile) as usize;
        Ok(Fetched::New(Source { path: path.to_path_buf(), sha256: sha, image, tiles }))
    }
}
