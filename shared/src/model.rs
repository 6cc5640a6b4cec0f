//! The ONNX model runner: the manifest that describes a model, loading its
//! encoder and decoder into ONNX Runtime, and running batches of tiles.
//!
//! A model lives in `models/<name>/` as `manifest.json` plus the ONNX files it
//! names. The manifest pins every file by SHA-256 and its own hash is the
//! [`ModelId`], so a code made with one model can never be decoded by a
//! different one by accident. The encoder stops before top-k: it maps
//! `N×C×T×T` images in `[0, 1]` to dense `N×L×m` code maps; the decoder maps
//! (sparse) `N×L×m` code maps back to images.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{ModelId, sha256};

/// The `format` every manifest must declare; bumped on incompatible changes.
pub const MANIFEST_FORMAT: &str = "ambishare-model/1";
/// Manifests are small; anything larger is refused before parsing.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Tiles per session run, so memory stays bounded whatever the image size.
pub const MAX_BATCH: usize = 64;
/// File name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One ONNX file of a model, pinned by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFileSpec {
    /// Plain file name inside the model directory (no path separators).
    pub file: String,
    /// SHA-256 of the file, 64 lowercase hex digits.
    pub sha256: String,
    /// Name of the graph's input tensor.
    pub input: String,
    /// Name of the graph's output tensor.
    pub output: String,
}

/// `models/<name>/manifest.json`: the shape of a model's codes and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// Human-readable model name (used in logs).
    pub name: String,
    /// Side of the square tiles the model works on, in pixels.
    pub tile_size: u32,
    /// Colour channels of a tile (1 or 3).
    pub channels: u32,
    /// Number of code maps per tile (L).
    pub maps: u16,
    /// Length of one code map (m).
    pub dim: u16,
    /// Non-zero values kept per map (top-k).
    pub k: u16,
    /// Fake support positions added per map when ambiguating.
    pub k_fake: u16,
    /// Smaller k values offered as low-quality previews.
    #[serde(default)]
    pub preview_k: Vec<u16>,
    /// Absent where a client holds only the decoder.
    #[serde(default)]
    pub encoder: Option<ModelFileSpec>,
    pub decoder: ModelFileSpec,
    /// Statistics of code values, free-form (used by the value codec).
    #[serde(default)]
    pub value_distribution: serde_json::Value,
}

impl Manifest {
    /// Parses and validates manifest bytes.
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(Error::Model(format!(
                "manifest is {} bytes, above the limit of {MAX_MANIFEST_BYTES}",
                bytes.len()
            )));
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| Error::Model(format!("manifest: {e}")))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The id of the model described by these exact manifest bytes.
    pub fn model_id(bytes: &[u8]) -> ModelId {
        ModelId::of_manifest(bytes)
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::Model(format!("manifest: {reason}")));
        if self.format != MANIFEST_FORMAT {
            return bad(format!("format is {:?}, expected {MANIFEST_FORMAT:?}", self.format));
        }
        if self.name.is_empty() || self.name.len() > 64 || self.name.chars().any(|c| c.is_control()) {
            return bad("name must be 1 to 64 printable characters".into());
        }
        if !(8..=1024).contains(&self.tile_size) {
            return bad(format!("tile_size {} is outside 8..=1024", self.tile_size));
        }
        // The tiler works on RGB images (grey models would need a grey tiler).
        if self.channels != 3 {
            return bad(format!("channels is {}, expected 3 (RGB)", self.channels));
        }
        if self.maps == 0 {
            return bad("maps must be at least 1".into());
        }
        if self.k == 0 {
            return bad("k must be at least 1".into());
        }
        let support = u32::from(self.k) + u32::from(self.k_fake);
        if support > u32::from(self.dim) {
            return bad(format!("k + k_fake = {support} exceeds dim {}", self.dim));
        }
        if support > u32::from(crate::SupportKey::MAX_NNZ) {
            return bad(format!(
                "k + k_fake = {support} exceeds the support key's limit of {}",
                crate::SupportKey::MAX_NNZ
            ));
        }
        if let Some(p) = self.preview_k.iter().find(|&&p| p == 0 || p > self.k) {
            return bad(format!("preview_k {p} is outside 1..={}", self.k));
        }
        for (role, spec) in self.files() {
            spec.validate(role)?;
        }
        Ok(())
    }

    /// The model's files with their role, encoder first.
    fn files(&self) -> impl Iterator<Item = (&'static str, &ModelFileSpec)> {
        self.encoder.iter().map(|e| ("encoder", e)).chain([("decoder", &self.decoder)])
    }

    /// Values in one input tile (C×T×T).
    pub fn tile_len(&self) -> usize {
        self.channels as usize * self.tile_size as usize * self.tile_size as usize
    }

    /// Values in one tile's dense code (L×m).
    pub fn code_len(&self) -> usize {
        usize::from(self.maps) * usize::from(self.dim)
    }

    fn image_shape(&self) -> [usize; 3] {
        [self.channels as usize, self.tile_size as usize, self.tile_size as usize]
    }

    fn code_shape(&self) -> [usize; 2] {
        [usize::from(self.maps), usize::from(self.dim)]
    }
}

impl ModelFileSpec {
    fn validate(&self, role: &str) -> Result<()> {
        let bad = |reason: String| Err(Error::Model(format!("manifest {role}: {reason}")));
        let f = &self.file;
        if f.is_empty()
            || f.len() > 255
            || f == "."
            || f == ".."
            || f.chars().any(|c| c == '/' || c == '\\' || c == ':' || c.is_control())
        {
            return bad(format!("file {f:?} is not a plain file name"));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return bad("sha256 must be 64 lowercase hex digits".into());
        }
        if self.input.is_empty() || self.output.is_empty() {
            return bad("input and output tensor names must not be empty".into());
        }
        Ok(())
    }

    /// Refuses bytes whose hash differs from the manifest's.
    fn check(&self, bytes: &[u8]) -> Result<()> {
        let actual = hex::encode(sha256(bytes));
        if actual != self.sha256 {
            return Err(Error::Model(format!(
                "{} has sha256 {actual}, but the manifest pins {}",
                self.file, self.sha256
            )));
        }
        Ok(())
    }
}

/// Where inference runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// CUDA when built with it and a GPU is usable, otherwise CPU.
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda),
            _ => Err(Error::invalid("device", format!("{s:?}; expected auto, cpu or cuda"))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        })
    }
}

/// The process-wide ONNX Runtime environment. ort keeps only a weak reference
/// to it, so it must be held here for sessions to share it.
static RUNTIME: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime, once per process.
///
/// The library is `explicit` if given, else `$ORT_DYLIB_PATH` at run time, else
/// the `ORT_DYLIB_PATH` seen at build time (cargo's `[env]` points it at
/// `.ort/`). Only the first call decides; later calls return its outcome.
pub fn init_runtime(explicit: Option<&Path>) -> Result<()> {
    runtime(explicit).map(|_| ())
}

fn runtime(explicit: Option<&Path>) -> Result<&'static Environment> {
    RUNTIME.get_or_init(|| build_runtime(explicit)).as_ref().map_err(|e| Error::Runtime(e.clone()))
}

fn build_runtime(explicit: Option<&Path>) -> std::result::Result<Environment, String> {
    let path = library_path(explicit)?;
    let env = ort::init_from(&path)
        .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?
        .with_name("ambishare")
        // Microsoft's builds send usage telemetry unless told not to.
        .with_telemetry(false)
        .build()
        .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
    tracing::info!(library = %path.display(), "ONNX Runtime loaded");
    Ok(env)
}

fn library_path(explicit: Option<&Path>) -> std::result::Result<PathBuf, String> {
    const HINT: &str = "run deploy/setup.sh or set ORT_DYLIB_PATH";
    let path = if let Some(p) = explicit {
        p.to_path_buf()
    } else if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        PathBuf::from(p)
    } else if let Some(p) = option_env!("ORT_DYLIB_PATH") {
        PathBuf::from(p)
    } else {
        return Err(format!("no ONNX Runtime library configured; {HINT}"));
    };
    // ort resolves a relative path against the executable's directory; we
    // mean the working directory, as a user typing it would.
    let path = std::path::absolute(&path).unwrap_or(path);
    if !path.is_file() {
        return Err(format!("ONNX Runtime library not found at {}; {HINT}", path.display()));
    }
    Ok(path)
}

/// Name of the execution provider a session runs on.
const CPU_EP: &str = "CPU";
#[cfg(feature = "cuda")]
const CUDA_EP: &str = "CUDA";

/// A loaded model: its manifest, its id, and ONNX Runtime sessions for the
/// decoder and, when present, the encoder.
pub struct ModelRunner {
    manifest: Manifest,
    id: ModelId,
    // ort's `Session::run` takes `&mut self`; the mutex lets the runner be
    // shared (`Send + Sync`) with methods on `&self`.
    encoder: Option<Mutex<Session>>,
    decoder: Mutex<Session>,
    execution_provider: &'static str,
}

impl fmt::Debug for ModelRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRunner")
            .field("name", &self.manifest.name)
            .field("id", &self.id)
            .field("has_encoder", &self.has_encoder())
            .field("execution_provider", &self.execution_provider)
            .finish()
    }
}

impl ModelRunner {
    /// Loads `dir/manifest.json` and the files it names. The encoder is loaded
    /// when the manifest lists it.
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let manifest_bytes = read_bounded(&manifest_path, MAX_MANIFEST_BYTES as u64)?;
        let manifest = Manifest::parse(&manifest_bytes)?;
        let read = |spec: &ModelFileSpec| {
            let path = dir.join(&spec.file);
            std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
        };
        let encoder = manifest.encoder.as_ref().map(read).transpose()?;
        let decoder = read(&manifest.decoder)?;
        Self::from_parts(&manifest_bytes, encoder.as_deref(), &decoder, device)
    }

    /// Builds a runner from bytes fetched elsewhere (the registry). Every file
    /// is checked against the manifest's hash before ONNX Runtime sees it.
    pub fn from_parts(manifest_bytes: &[u8], encoder: Option<&[u8]>, decoder: &[u8], device: Device) -> Result<Self> {
        Self::from_parts_with_threads(manifest_bytes, encoder, decoder, device, 0)
    }

    /// [`from_parts`](Self::from_parts) with ONNX Runtime limited to `threads`
    /// intra-op threads (0: one per core), for a runner that must leave the
    /// other cores to a server's requests.
    pub fn from_parts_with_threads(
        manifest_bytes: &[u8],
        encoder: Option<&[u8]>,
        decoder: &[u8],
        device: Device,
        threads: usize,
    ) -> Result<Self> {
        let manifest = Manifest::parse(manifest_bytes)?;
        let id = Manifest::model_id(manifest_bytes);
        let encoder = match (&manifest.encoder, encoder) {
            (Some(spec), Some(bytes)) => {
                spec.check(bytes)?;
                Some((spec, bytes))
            }
            (None, Some(_)) => {
                return Err(Error::Model(format!(
                    "an encoder was given but the manifest of {} lists none",
                    manifest.name
                )));
            }
            (_, None) => None,
        };
        manifest.decoder.check(decoder)?;

        let env = runtime(None)?;
        let (decoder_session, ep) = commit(env, device, decoder, &manifest.decoder, threads)?;
        check_io(&decoder_session, &manifest.decoder, &manifest.code_shape(), &manifest.image_shape())?;
        // Run the encoder wherever the decoder ended up, so Auto decides once.
        let encoder_session = match encoder {
            Some((spec, bytes)) => {
                let same = if ep == CPU_EP { Device::Cpu } else { Device::Cuda };
                let (session, _) = commit(env, same, bytes, spec, threads)?;
                check_io(&session, spec, &manifest.image_shape(), &manifest.code_shape())?;
                Some(Mutex::new(session))
            }
            None => None,
        };
        tracing::info!(
            model = %id,
            "model {} running on {ep} execution provider",
            manifest.name
        );
        Ok(ModelRunner {
            manifest,
            id,
            encoder: encoder_session,
            decoder: Mutex::new(decoder_session),
            execution_provider: ep,
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn id(&self) -> &ModelId {
        &self.id
    }

    /// `"CPU"` or `"CUDA"`.
    pub fn execution_provider(&self) -> &str {
        self.execution_provider
    }

    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// Encodes `n` tiles (`N×C×T×T`, values in `[0, 1]`) into dense code maps
    /// (`N×L×m`).
    pub fn encode_tiles(&self, tiles: &[f32], n: usize) -> Result<Vec<f32>> {
        let (encoder, spec) = match (&self.encoder, &self.manifest.encoder) {
            (Some(session), Some(spec)) => (session, spec),
            _ => {
                return Err(Error::Model(format!("model {} was loaded without its encoder", self.manifest.name)));
            }
        };
        let m = &self.manifest;
        run_batched(encoder, spec, tiles, n, &m.image_shape(), &m.code_shape(), "tiles")
    }

    /// Decodes `n` code maps (`N×L×m`) into tiles (`N×C×T×T`).
    pub fn decode_tiles(&self, codes: &[f32], n: usize) -> Result<Vec<f32>> {
        let m = &self.manifest;
        run_batched(&self.decoder, &m.decoder, codes, n, &m.code_shape(), &m.image_shape(), "codes")
    }
}

/// Reads at most `limit` bytes of a file, refusing larger ones.
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let ctx = || format!("reading {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| Error::io(ctx(), e))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(ctx(), e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::Model(format!("{} is larger than {limit} bytes", path.display())));
    }
    Ok(bytes)
}

/// Creates a session for `bytes` on `device`, returning the provider it got.
fn commit(
    env: &Environment,
    device: Device,
    bytes: &[u8],
    spec: &ModelFileSpec,
    threads: usize,
) -> Result<(Session, &'static str)> {
    let ort_err = |e: ort::Error<SessionBuilder>| Error::Runtime(format!("{}: {e}", spec.file));
    let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
    let builder = Session::builder(env)
        .map_err(|e| Error::Runtime(format!("{}: {e}", spec.file)))?
        .with_intra_threads(threads)
        .map_err(ort_err)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(ort_err)?;
    let (mut builder, ep) = with_device(builder, device)?;
    match builder.commit_from_memory(bytes) {
        Ok(session) => Ok((session, ep)),
        // CUDA can register and still fail when the session is made (no device, wrong driver).
        Err(e) if device == Device::Auto && ep != CPU_EP => {
            tracing::info!("{} cannot be loaded on {ep} ({e}); falling back to CPU", spec.file);
            commit(env, Device::Cpu, bytes, spec, threads)
        }
        Err(e) => Err(Error::Model(format!("{} cannot be loaded: {e}", spec.file))),
    }
}

#[cfg(feature = "cuda")]
fn with_device(builder: SessionBuilder, device: Device) -> Result<(SessionBuilder, &'static str)> {
    use ort::ep::CUDA;
    let cuda = || [CUDA::default().build().error_on_failure()];
    match device {
        Device::Cpu => Ok((builder, CPU_EP)),
        Device::Cuda => builder
            .with_execution_providers(cuda())
            .map(|b| (b, CUDA_EP))
            .map_err(|e| Error::Runtime(format!("cannot use the CUDA execution provider: {e}"))),
        Device::Auto => match builder.with_execution_providers(cuda()) {
            Ok(b) => Ok((b, CUDA_EP)),
            Err(e) => {
                tracing::info!("CUDA execution provider unavailable ({e}); falling back to CPU");
                Ok((e.recover(), CPU_EP))
            }
        },
    }
}

#[cfg(not(feature = "cuda"))]
fn with_device(builder: SessionBuilder, device: Device) -> Result<(SessionBuilder, &'static str)> {
    match device {
        Device::Cpu | Device::Auto => Ok((builder, CPU_EP)),
        Device::Cuda => Err(Error::Runtime(
            "device cuda requested, but ambishare was built without CUDA support (cargo feature `cuda`)".into(),
        )),
    }
}

/// Checks that the graph has the manifest's input and output, as f32 tensors
/// whose static dimensions agree with `[N, in_dims..]` and `[N, out_dims..]`.
fn check_io(session: &Session, spec: &ModelFileSpec, in_dims: &[usize], out_dims: &[usize]) -> Result<()> {
    let find = |outlets: &[ort::value::Outlet], name: &str, dims: &[usize], kind: &str| -> Result<()> {
        let outlet = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
            let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
            Error::Model(format!("{} has no {kind} named {name:?} (it has {names:?})", spec.file))
        })?;
        let ok = match outlet.dtype() {
            ValueType::Tensor { ty: TensorElementType::Float32, shape, .. } => {
                shape.len() == dims.len() + 1
                    && shape.iter().skip(1).zip(dims).all(|(&got, &want)| got < 0 || got as usize == want)
            }
            _ => false,
        };
        if !ok {
            return Err(Error::Model(format!(
                "{} {kind} {name:?} is {}, expected float32 [N, {}]",
                spec.file,
                outlet.dtype(),
                dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    };
    find(session.inputs(), &spec.input, in_dims, "input")?;
    find(session.outputs(), &spec.output, out_dims, "output")
}

/// Runs `n` items of shape `in_dims` through `session` in batches of at most
/// [`MAX_BATCH`], checking the output shape and that every value is finite.
fn run_batched(
    session: &Mutex<Session>,
    spec: &ModelFileSpec,
    input: &[f32],
    n: usize,
    in_dims: &[usize],
    out_dims: &[usize],
    what: &'static str,
) -> Result<Vec<f32>> {
    let in_len: usize = in_dims.iter().product();
    let out_len: usize = out_dims.iter().product();
    let expected = n.checked_mul(in_len);
    if expected != Some(input.len()) {
        return Err(Error::invalid(
            what,
            format!("{} values given for {n} items of {in_len} values each", input.len()),
        ));
    }
    let mut out = Vec::with_capacity(n.saturating_mul(out_len));
    let mut session = session.lock().map_err(|_| Error::Runtime("model session lock poisoned".into()))?;
    for chunk in input.chunks(MAX_BATCH * in_len) {
        let batch = chunk.len() / in_len;
        let shape: Vec<usize> = std::iter::once(batch).chain(in_dims.iter().copied()).collect();
        let tensor = TensorRef::from_array_view((shape, chunk))
            .map_err(|e| Error::Runtime(format!("{}: building input tensor: {e}", spec.file)))?;
        let outputs = session
            .run(ort::inputs![spec.input.as_str() => tensor])
            .map_err(|e| Error::Runtime(format!("{}: inference failed: {e}", spec.file)))?;
        let value = outputs
            .get(&spec.output)
            .ok_or_else(|| Error::Model(format!("{} produced no output {:?}", spec.file, spec.output)))?;
        let (got_shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| Error::Model(format!("{} output {:?}: {e}", spec.file, spec.output)))?;
        let want_shape: Vec<i64> = std::iter::once(batch).chain(out_dims.iter().copied()).map(|d| d as i64).collect();
        if **got_shape != *want_shape || data.len() != batch * out_len {
            return Err(Error::Model(format!("{} output has shape {got_shape:?}, expected {want_shape:?}", spec.file)));
        }
        if data.iter().any(|v| !v.is_finite()) {
            return Err(Error::Model(format!("{} produced non-finite values", spec.file)));
        }
        out.extend_from_slice(data);
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn manifest_json() -> serde_json::Value {
        serde_json::json!({
            "format": "ambishare-model/1",
            "name": "photo64",
            "tile_size": 64,
            "channels": 3,
            "maps": 8,
            "dim": 256,
            "k": 16,
            "k_fake": 16,
            "preview_k": [4, 8],
            "encoder": {"file": "encoder.onnx", "sha256": "ab".repeat(32), "input": "image", "output": "code"},
            "decoder": {"file": "decoder.onnx", "sha256": "cd".repeat(32), "input": "code", "output": "image"},
            "value_distribution": {"kind": "laplace", "scale": 0.5},
            "trained_on": "future field, ignored"
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Manifest> {
        Manifest::parse(&serde_json::to_vec(v).unwrap())
    }

    fn with(path: &[&str], value: serde_json::Value) -> serde_json::Value {
        let mut v = manifest_json();
        let mut at = &mut v;
        for key in &path[..path.len() - 1] {
            at = &mut at[*key];
        }
        at[path[path.len() - 1]] = value;
        v
    }

    #[test]
    fn parses_valid_manifest() {
        let m = parse(&manifest_json()).unwrap();
        assert_eq!((m.tile_size, m.maps, m.dim, m.k, m.k_fake), (64, 8, 256, 16, 16));
        assert_eq!(m.preview_k, vec![4, 8]);
        assert_eq!(m.encoder.as_ref().unwrap().file, "encoder.onnx");
        assert_eq!(m.tile_len(), 3 * 64 * 64);
        assert_eq!(m.code_len(), 8 * 256);
    }

    #[test]
    fn optional_fields_default() {
        let mut v = manifest_json();
        let obj = v.as_object_mut().unwrap();
        obj.remove("encoder");
        obj.remove("preview_k");
        obj.remove("value_distribution");
        let m = parse(&v).unwrap();
        assert!(m.encoder.is_none() && m.preview_k.is_empty() && m.value_distribution.is_null());
    }

    #[test]
    fn model_id_is_hash_of_bytes() {
        let bytes = serde_json::to_vec(&manifest_json()).unwrap();
        assert_eq!(Manifest::model_id(&bytes), ModelId::of_manifest(&bytes));
    }

    #[test]
    fn rejects_invalid_manifests() {
        let cases = [
            with(&["format"], "ambishare-model/2".into()),
            with(&["name"], "".into()),
            with(&["tile_size"], 4.into()),
            with(&["tile_size"], 2048.into()),
            with(&["channels"], 2.into()),
            with(&["channels"], 1.into()),
            with(&["maps"], 0.into()),
            with(&["k"], 0.into()),
            with(&["k_fake"], 241.into()),
            with(&["preview_k"], serde_json::json!([0])),
            with(&["preview_k"], serde_json::json!([17])),
            with(&["decoder", "file"], "../decoder.onnx".into()),
            with(&["decoder", "file"], "sub/decoder.onnx".into()),
            with(&["encoder", "file"], "..".into()),
            with(&["decoder", "file"], "".into()),
            with(&["decoder", "sha256"], "AB".repeat(32).into()),
            with(&["decoder", "sha256"], "ab".into()),
            with(&["decoder", "input"], "".into()),
            with(&["maps"], 70000.into()),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(matches!(parse(case), Err(Error::Model(_))), "case {i} accepted");
        }
        assert!(Manifest::parse(b"not json").is_err());
        assert!(Manifest::parse(b"").is_err());
    }

    #[test]
    fn rejects_oversized_manifest() {
        let mut v = manifest_json();
        v["padding"] = "x".repeat(MAX_MANIFEST_BYTES).into();
        match parse(&v) {
            Err(Error::Model(msg)) => assert!(msg.contains("limit"), "{msg}"),
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn device_parses_and_displays() {
        for d in [Device::Auto, Device::Cpu, Device::Cuda] {
            assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
        }
        assert!("gpu".parse::<Device>().is_err());
        assert!("".parse::<Device>().is_err());
    }

    #[test]
    fn missing_library_is_reported() {
        let err = library_path(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(err.contains("not found at /nonexistent/libonnxruntime.so"), "{err}");
        assert!(err.contains("deploy/setup.sh"), "{err}");
    }
}
