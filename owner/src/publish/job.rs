//! The typed publish job and its wire form (`PublishJobRequest`): every
//! path and number checked once, here.

use super::*;

/// What to publish, and how (the typed `PublishJobRequest`).
#[derive(Clone, Debug)]
pub struct PublishJob {
    pub dataset: DatasetName,
    /// Image files and directories. A node resolves them on its own machine,
    /// so over the wire they must be absolute.
    pub inputs: Vec<PathBuf>,
    /// Registry URL (`http://` or `https://`).
    pub registry_url: String,
    /// PEM of the registry's CA (for `https://`).
    pub registry_ca_pem: Option<Vec<u8>>,
    /// Name to register under (default: "ambishare owner <id>").
    pub display_name: Option<DisplayName>,
    /// Model directory (manifest.json and its ONNX files).
    pub model_dir: PathBuf,
    pub device: Device,
    pub codec: ValueCodec,
    /// Format of the public codes: v3 (the default: fakes derived from a
    /// secret, 44-byte keys) or v2 (fresh randomness, for compatibility;
    /// an image published twice under v2 can be recovered).
    pub format: CodeVersion,
    /// Images encoded and published together (1 to [`MAX_BATCH`]).
    pub batch: usize,
    /// Largest image accepted, in pixels.
    pub max_pixels: u64,
    /// For tests: stop once this many new entries are prepared (stored here,
    /// sealed key included) and before they are sent, as a crash there would.
    pub stop_after_prepared: Option<usize>,
}

impl PublishJob {
    /// A job with the default device, codec, batch and size limit.
    pub fn new(
        dataset: DatasetName,
        inputs: Vec<PathBuf>,
        registry_url: impl Into<String>,
        model_dir: impl Into<PathBuf>,
    ) -> Self {
        PublishJob {
            dataset,
            inputs,
            registry_url: registry_url.into(),
            registry_ca_pem: None,
            display_name: None,
            model_dir: model_dir.into(),
            device: Device::Auto,
            codec: ValueCodec::Q8,
            format: CodeVersion::V3,
            batch: DEFAULT_BATCH,
            max_pixels: DEFAULT_MAX_PIXELS,
            stop_after_prepared: None,
        }
    }

    /// Checks the limits (whichever way the job came).
    pub(super) fn check(&self) -> Result<()> {
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(Error::invalid("batch", format!("must be 1 to {MAX_BATCH}")));
        }
        if self.inputs.is_empty() || self.inputs.len() > MAX_INPUTS {
            return Err(Error::invalid("inputs", format!("give 1 to {MAX_INPUTS} files or directories")));
        }
        if self.max_pixels == 0 {
            return Err(Error::invalid("max pixels", "must be at least 1"));
        }
        if self.registry_ca_pem.as_ref().is_some_and(|p| p.len() as u64 > MAX_REGISTRY_CA_BYTES) {
            return Err(Error::invalid("registry CA", format!("at most {MAX_REGISTRY_CA_BYTES} bytes")));
        }
        if self.format == CodeVersion::V3 && self.codec != ValueCodec::Q8 {
            return Err(Error::invalid("codec", "format v3 publishes q8 values (f16 needs format v2)"));
        }
        Ok(())
    }
}

/// A path from the wire: absolute, since the node resolves it on its own machine.
pub(super) fn wire_path(what: &'static str, s: String) -> Result<PathBuf> {
    if s.is_empty() || s.len() > MAX_PATH_BYTES || s.contains('\0') {
        return Err(Error::invalid(what, format!("must be a path of 1 to {MAX_PATH_BYTES} bytes")));
    }
    let path = PathBuf::from(s);
    if !path.is_absolute() {
        return Err(Error::invalid(
            what,
            format!("{} is not absolute (the node resolves paths on its own machine)", path.display()),
        ));
    }
    Ok(path)
}

/// A path for the wire (UTF-8, or refused).
pub(super) fn path_text(what: &'static str, path: &Path) -> Result<String> {
    path.to_str().map(str::to_owned).ok_or_else(|| Error::invalid(what, format!("{} is not UTF-8", path.display())))
}

impl TryFrom<pb::PublishJobRequest> for PublishJob {
    type Error = Error;
    fn try_from(p: pb::PublishJobRequest) -> Result<Self> {
        if p.inputs.is_empty() || p.inputs.len() > MAX_INPUTS {
            return Err(Error::invalid("inputs", format!("give 1 to {MAX_INPUTS} files or directories")));
        }
        if p.registry_url.is_empty() || p.registry_url.len() > MAX_PATH_BYTES {
            return Err(Error::invalid("registry url", format!("must be 1 to {MAX_PATH_BYTES} bytes")));
        }
        let device = match pb::Device::try_from(p.device) {
            Ok(pb::Device::Unspecified | pb::Device::Auto) => Device::Auto,
            Ok(pb::Device::Cpu) => Device::Cpu,
            Ok(pb::Device::Cuda) => Device::Cuda,
            Err(_) => return Err(Error::invalid("device", format!("unknown device {}", p.device))),
        };
        let codec = match pb::ValueCodec::try_from(p.codec) {
            Ok(pb::ValueCodec::Unspecified | pb::ValueCodec::Q8) => ValueCodec::Q8,
            Ok(pb::ValueCodec::F16) => ValueCodec::F16,
            Err(_) => return Err(Error::invalid("codec", format!("unknown codec {}", p.codec))),
        };
        let job = PublishJob {
            dataset: p.dataset.parse()?,
            inputs: p.inputs.into_iter().map(|s| wire_path("input", s)).collect::<Result<_>>()?,
            registry_url: p.registry_url,
            registry_ca_pem: (!p.registry_ca_pem.is_empty()).then_some(p.registry_ca_pem),
            display_name: if p.display_name.is_empty() { None } else { Some(p.display_name.try_into()?) },
            model_dir: wire_path("model directory", p.model_dir)?,
            device,
            codec,
            format: match p.format {
                0 | 3 => CodeVersion::V3,
                2 => CodeVersion::V2,
                other => return Err(Error::invalid("format", format!("unknown code format {other} (2 or 3)"))),
            },
            batch: if p.batch == 0 { DEFAULT_BATCH } else { p.batch as usize },
            max_pixels: if p.max_pixels == 0 { DEFAULT_MAX_PIXELS } else { p.max_pixels },
            stop_after_prepared: (p.stop_after_prepared != 0).then_some(p.stop_after_prepared as usize),
        };
        job.check()?;
        Ok(job)
    }
}

impl TryFrom<&PublishJob> for pb::PublishJobRequest {
    type Error = Error;
    fn try_from(job: &PublishJob) -> Result<Self> {
        let count = |what: &'static str, n: usize| {
            u32::try_from(n).map_err(|_| Error::invalid(what, format!("{n} is more than a node accepts")))
        };
        Ok(pb::PublishJobRequest {
            dataset: job.dataset.to_string(),
            inputs: job.inputs.iter().map(|p| path_text("input", p)).collect::<Result<_>>()?,
            registry_url: job.registry_url.clone(),
            registry_ca_pem: job.registry_ca_pem.clone().unwrap_or_default(),
            model_dir: path_text("model directory", &job.model_dir)?,
            device: match job.device {
                Device::Auto => pb::Device::Auto,
                Device::Cpu => pb::Device::Cpu,
                Device::Cuda => pb::Device::Cuda,
            } as i32,
            codec: match job.codec {
                ValueCodec::Q8 => pb::ValueCodec::Q8,
                ValueCodec::F16 => pb::ValueCodec::F16,
            } as i32,
            format: job.format.number() as u32,
            batch: count("batch", job.batch)?,
            display_name: job.display_name.clone().map(String::from).unwrap_or_default(),
            max_pixels: job.max_pixels,
            stop_after_prepared: count("stop after prepared", job.stop_after_prepared.unwrap_or(0))?,
        })
    }
}
