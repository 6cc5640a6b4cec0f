//! Decoders fetched from the registry by content hash, cached on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ambishare_rpc::RegistryClient;
use ambishare_shared::model::{Device, MANIFEST_FILE, Manifest, ModelRunner};
use ambishare_shared::{Error as SharedError, ModelId};
use tracing::{info, warn};

use crate::error::{Error, Result};

const DECODER_FILE: &str = "decoder.onnx";

/// Decoders by model id: from memory, else the disk cache, else the registry.
/// Every file is checked against the manifest's hash, and the manifest against the id.
pub struct ModelCache {
    dir: PathBuf,
    device: Device,
    loaded: HashMap<ModelId, Arc<ModelRunner>>,
}

impl ModelCache {
    pub fn new(dir: PathBuf, device: Device) -> Self {
        ModelCache { dir, device, loaded: HashMap::new() }
    }

    pub async fn get(&mut self, registry: &RegistryClient, id: ModelId) -> Result<Arc<ModelRunner>> {
        if let Some(runner) = self.loaded.get(&id) {
            return Ok(runner.clone());
        }
        let dir = self.dir.join(id.to_string());
        let device = self.device;
        let cached = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || load_cached(&dir, id, device)).await?
        };
        let runner = match cached {
            Ok(runner) => runner,
            Err(e) => {
                if dir.exists() {
                    warn!(model = %id, "cached model unusable ({e}); fetching it again");
                }
                info!(model = %id, "fetching the decoder from the registry");
                let fetched = registry.fetch_model(id).await.map_err(Error::Registry)?;
                if ModelId::of_manifest(&fetched.manifest_bytes) != id {
                    return Err(Error::Shared(SharedError::Model(format!("registry sent another model for {id}"))));
                }
                store(&dir, &fetched.manifest_bytes, &fetched.decoder)?;
                let (manifest, decoder) = (fetched.manifest_bytes, fetched.decoder);
                tokio::task::spawn_blocking(move || ModelRunner::from_parts(&manifest, None, &decoder, device))
                    .await??
            }
        };
        let runner = Arc::new(runner);
        self.loaded.insert(id, runner.clone());
        Ok(runner)
    }
}

fn load_cached(dir: &Path, id: ModelId, device: Device) -> Result<ModelRunner> {
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| Error::io(format!("reading {name}"), e));
    let manifest = read(MANIFEST_FILE)?;
    if ModelId::of_manifest(&manifest) != id {
        return Err(Error::Config(format!("{} does not hash to {id}", dir.join(MANIFEST_FILE).display())));
    }
    Manifest::parse(&manifest)?;
    let decoder = read(DECODER_FILE)?;
    Ok(ModelRunner::from_parts(&manifest, None, &decoder, device)?)
}

/// Writes the files through a temporary directory, so a crash never leaves half a model.
fn store(dir: &Path, manifest: &[u8], decoder: &[u8]) -> Result<()> {
    let parent = dir.parent().ok_or_else(|| Error::Config("model cache has no parent directory".into()))?;
    std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    let tmp = parent.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    std::fs::write(tmp.join(MANIFEST_FILE), manifest).map_err(|e| Error::io("writing manifest", e))?;
    std::fs::write(tmp.join(DECODER_FILE), decoder).map_err(|e| Error::io("writing decoder", e))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(format!("moving into {}", dir.display()), e))
}
