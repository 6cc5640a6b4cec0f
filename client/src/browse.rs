//! What the public sees: listings, one entry's metadata, and the public decode
//! of ambiguated codes (every nonzero, real and fake).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use ambishare_rpc::RegistryClient;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::model::Device;
use ambishare_shared::pipeline::decode_image;
use ambishare_shared::timestamp::rfc3339_from_unix_ms;
use ambishare_shared::{DatasetName, Entry, EntryId, OwnerId};
use futures::StreamExt;

use crate::error::{Error, Result};
use crate::models::ModelCache;
use crate::pull::{progress_bar, write_png};
use crate::registry_tls;
use crate::sidecar::png_path;

#[derive(Clone, Debug)]
pub struct BrowseOptions {
    pub registry_url: String,
    pub registry_ca: Option<PathBuf>,
    pub owner: Option<OwnerId>,
    pub dataset: Option<DatasetName>,
    /// Render the public decode of each entry here.
    pub out: Option<PathBuf>,
    pub model_cache: PathBuf,
    pub device: Device,
    /// Most entries to show (0: all).
    pub limit: u64,
    pub progress: bool,
}

/// Owners' keys from the registry, each checked to hash to its owner id.
#[derive(Default)]
struct OwnerKeys(HashMap<OwnerId, Option<PublicKey>>);

impl OwnerKeys {
    async fn signature(&mut self, registry: &RegistryClient, entry: &Entry) -> &'static str {
        let key = match self.0.get(&entry.owner) {
            Some(k) => *k,
            None => match registry.get_owner(entry.owner).await {
                Ok(k) => {
                    self.0.insert(entry.owner, Some(k));
                    Some(k)
                }
                // Only "not registered" is remembered: a transient error is tried again.
                Err(ambishare_rpc::Error::Rpc(status)) if status.code() == tonic::Code::NotFound => {
                    self.0.insert(entry.owner, None);
                    None
                }
                Err(_) => None,
            },
        };
        match key {
            Some(k) if entry.verify(&k).is_ok() => VALID,
            Some(_) => "BAD",
            None => "owner unknown",
        }
    }
}

/// What [`OwnerKeys::signature`] says of an entry whose signature verifies.
const VALID: &str = "valid";

fn line(entry: &Entry, signature: &str) -> String {
    let shape = entry.code.shape();
    format!(
        "{}  owner {}  dataset {}  {}x{}  {} tiles x {} maps, {} of {} nonzeros  {} bytes  signature {}",
        entry.id,
        entry.owner,
        entry.dataset,
        entry.width,
        entry.height,
        shape.tiles,
        shape.maps,
        entry.code.nnz(),
        shape.dim,
        entry.code_bytes.len(),
        signature
    )
}

/// Lists what the public sees, one line an entry; with `out`, writes the public decode of each.
pub async fn browse(opts: &BrowseOptions) -> Result<String> {
    let registry = RegistryClient::connect(&opts.registry_url, registry_tls(opts.registry_ca.as_deref())?)
        .await
        .map_err(Error::Registry)?;
    let mut owners = OwnerKeys::default();
    let mut models = ModelCache::new(opts.model_cache.clone(), opts.device);
    if let Some(out) = &opts.out {
        std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    }
    let mut stream = registry.stream_entries(opts.owner, opts.dataset.as_ref(), None).await.map_err(Error::Registry)?;
    let bar = progress_bar(opts.progress && opts.out.is_some(), "browse");
    let mut report = String::new();
    let (mut seen, mut written, mut skipped, mut failed) = (0u64, 0u64, 0u64, 0u64);
    while let Some(item) = stream.next().await {
        if opts.limit > 0 && seen >= opts.limit {
            break;
        }
        seen += 1;
        bar.inc(1);
        let entry = match item {
            Ok(entry) => entry,
            Err(ambishare_rpc::Error::BadResponse(why)) => {
                let _ = writeln!(report, "unreadable entry: {why}");
                continue;
            }
            Err(e) => return Err(Error::Registry(e)),
        };
        let signature = owners.signature(&registry, &entry).await;
        let _ = writeln!(report, "{}", line(&entry, signature));
        let Some(out) = &opts.out else { continue };
        // The decoder an entry names runs here: only for entries its owner signed.
        if signature != VALID {
            skipped += 1;
            continue;
        }
        let id = entry.id;
        let rendered = match models.get(&registry, entry.model).await {
            Ok(runner) => {
                let path = png_path(out, id);
                tokio::task::spawn_blocking(move || -> Result<()> {
                    let public = entry.code.to_sparse()?;
                    let image = decode_image(&runner, &public, entry.width, entry.height)?;
                    write_png(&image, &path)
                })
                .await
                .map_err(Error::from)
                .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        match rendered {
            Ok(()) => written += 1,
            Err(e) => {
                let _ = writeln!(report, "not rendered {id}: {e}");
                failed += 1;
            }
        }
    }
    bar.finish_and_clear();
    let _ = writeln!(report, "{seen} entries");
    if let Some(out) = &opts.out {
        let _ = writeln!(report, "{written} public decodes in {}", out.display());
        if skipped > 0 {
            let _ = writeln!(report, "{skipped} entries without a valid owner signature were not rendered");
        }
        if failed > 0 {
            let _ = writeln!(report, "{failed} entries failed to render");
        }
    }
    Ok(report)
}

/// Metadata of one entry, with its signature checked against the owner's registered key.
pub async fn show(registry_url: &str, registry_ca: Option<&std::path::Path>, id: EntryId) -> Result<String> {
    let registry = RegistryClient::connect(registry_url, registry_tls(registry_ca)?).await.map_err(Error::Registry)?;
    let entry = registry.get_entry(id).await.map_err(Error::Registry)?;
    let signature = OwnerKeys::default().signature(&registry, &entry).await;
    let shape = entry.code.shape();
    let mut out = String::new();
    let _ = writeln!(out, "entry      {}", entry.id);
    let _ = writeln!(out, "owner      {}", entry.owner);
    let _ = writeln!(out, "dataset    {}", entry.dataset);
    let _ = writeln!(out, "model      {}", entry.model);
    let _ = writeln!(out, "image      {}x{}", entry.width, entry.height);
    let _ = writeln!(out, "created    {}", rfc3339_from_unix_ms(entry.created_unix_ms));
    if !entry.label.is_empty() {
        let _ = writeln!(out, "label      {}", entry.label);
    }
    let _ = writeln!(
        out,
        "code       {} tiles x {} maps of {} dims, {} nonzeros a map, {:?} values, {} bytes",
        shape.tiles,
        shape.maps,
        shape.dim,
        entry.code.nnz(),
        entry.code.codec(),
        entry.code_bytes.len()
    );
    let _ = writeln!(out, "signature  {signature}");
    Ok(out)
}
