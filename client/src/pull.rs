//! `pull`: stream a dataset's entries, verify each owner signature, fetch the
//! party's keys over mTLS, disambiguate and decode to PNG; beside each, the
//! public decode of the same code and a JSON sidecar (see [`crate::sidecar`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ambishare_rpc::{ClientIdentity, Denial, KeyClient, RegistryClient};
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::model::{Device, ModelRunner};
use ambishare_shared::pipeline::decode_image;
use ambishare_shared::{DatasetName, Entry, EntryId, EntryKey, Tier};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::models::ModelCache;
use crate::registry_tls;
use crate::sidecar::{self, Sidecar, png_path, public_png_path, sidecar_path};

/// What `pull` needs.
#[derive(Clone, Debug)]
pub struct PullOptions {
    pub registry_url: String,
    /// CA of the registry's certificate (for https).
    pub registry_ca: Option<PathBuf>,
    pub owner_url: String,
    pub identity: ClientIdentity,
    /// Only this dataset (every dataset the owner published otherwise).
    pub dataset: Option<DatasetName>,
    pub out: PathBuf,
    /// Decode again entries already complete in `out` (skipped otherwise,
    /// so an interrupted pull picks up where it stopped; see [`sidecar::is_complete`]).
    pub redo: bool,
    pub model_cache: PathBuf,
    pub device: Device,
    /// Entries per key request.
    pub batch: usize,
    pub progress: bool,
    /// Also write `<entry-id>.public.png`: the public decode of the same
    /// ambiguated code (every nonzero, real and fake), what everyone else sees.
    pub public_view: bool,
}

/// What happened to every entry seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullSummary {
    /// Decoded and written, by tier of the key.
    pub decoded: BTreeMap<Tier, u64>,
    /// Verified entries already complete in the output folder (images and
    /// sidecar): not asked for again.
    pub already_present: u64,
    /// Entries without a key, by reason.
    pub denied: BTreeMap<Denial, Vec<EntryId>>,
    /// Entries whose owner signature did not verify: never decoded.
    pub bad_signature: Vec<EntryId>,
    /// Entries the registry sent that did not parse, or failed to decode.
    pub failed: Vec<(String, String)>,
}

/// How a pull that ran to its end went, from best to worst; the process exits
/// with [`PullOutcome::exit_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PullOutcome {
    /// Every entry asked for was decoded, or was already in the output folder.
    Complete,
    /// Some entries could not be decoded for lack of a key (not granted,
    /// revoked, expired...), and nothing else went wrong.
    NoKey,
    /// Some entries had a bad owner signature or failed to parse, fetch their
    /// model or decode (whether or not others also lacked a key).
    Failed,
}

impl PullOutcome {
    /// The process exit code. 1 and 2 are left to errors that stop the pull
    /// and to a bad command line (clap's own code), so a script tells all four apart.
    pub fn exit_code(self) -> u8 {
        match self {
            PullOutcome::Complete => 0,
            PullOutcome::NoKey => 3,
            PullOutcome::Failed => 4,
        }
    }
}

impl PullSummary {
    pub fn decoded_total(&self) -> u64 {
        self.decoded.values().sum()
    }

    /// Entries without a key, for every reason.
    pub fn denied_total(&self) -> usize {
        self.denied.values().map(Vec::len).sum()
    }

    /// Whether something went wrong (a forged entry, a failure), as opposed to
    /// entries the party has no key for.
    pub fn has_problems(&self) -> bool {
        !self.bad_signature.is_empty() || !self.failed.is_empty()
    }

    /// How the pull went: problems outrank entries without a key.
    pub fn outcome(&self) -> PullOutcome {
        if self.has_problems() {
            PullOutcome::Failed
        } else if self.denied_total() > 0 {
            PullOutcome::NoKey
        } else {
            PullOutcome::Complete
        }
    }

    /// Why the pull is incomplete, in one line (none when it is complete).
    pub fn shortfall(&self) -> Option<String> {
        match self.outcome() {
            PullOutcome::Complete => None,
            PullOutcome::NoKey => Some(format!("no key for {} entries (listed above)", self.denied_total())),
            PullOutcome::Failed => Some(format!(
                "{} entries with a bad signature, {} failures, {} entries without a key (listed above)",
                self.bad_signature.len(),
                self.failed.len(),
                self.denied_total()
            )),
        }
    }

    /// A few lines for the terminal.
    pub fn report(&self) -> String {
        let mut out = format!("decoded {} entries", self.decoded_total());
        for (tier, n) in &self.decoded {
            out.push_str(&format!(" ({n} {tier})"));
        }
        out.push('\n');
        if self.already_present > 0 {
            out.push_str(&format!(
                "{} entries already in the output folder, skipped (--redo decodes them again)\n",
                self.already_present
            ));
        }
        for (denial, ids) in &self.denied {
            out.push_str(&format!("no key for {} entries: {}\n", ids.len(), denial.as_str()));
        }
        if !self.bad_signature.is_empty() {
            out.push_str(&format!(
                "{} entries with a bad owner signature were skipped (first: {})\n",
                self.bad_signature.len(),
                self.bad_signature[0]
            ));
        }
        for (what, why) in self.failed.iter().take(10) {
            out.push_str(&format!("failed: {what}: {why}\n"));
        }
        if self.failed.len() > 10 {
            out.push_str(&format!("... and {} more failures\n", self.failed.len() - 10));
        }
        out
    }
}

pub(crate) fn progress_bar(enabled: bool, what: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} {pos} entries ({per_sec}, {elapsed}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// Pulls, verifies, unlocks and decodes every entry the owner published (in
/// `dataset`), writing each decode, its public view and its sidecar.
pub async fn pull(opts: &PullOptions) -> Result<PullSummary> {
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(format!("creating {}", opts.out.display()), e))?;
    let mut keys = KeyClient::connect(&opts.owner_url, opts.identity.clone()).await.map_err(Error::Owner)?;
    // Over mTLS, so the owner's signing key comes from the owner, not the registry.
    let me = keys.who_am_i().await.map_err(Error::Owner)?;
    info!(party = %me.party, owner = %me.owner_id, grants = me.grants.len(), "authenticated to the owner");
    let registry = RegistryClient::connect(&opts.registry_url, registry_tls(opts.registry_ca.as_deref())?)
        .await
        .map_err(Error::Registry)?;
    let mut models = ModelCache::new(opts.model_cache.clone(), opts.device);
    let mut entries =
        registry.stream_entries(Some(me.owner_id), opts.dataset.as_ref(), None).await.map_err(Error::Registry)?;

    let bar = progress_bar(opts.progress, "pull");
    let mut summary = PullSummary::default();
    let mut batch: Vec<Entry> = Vec::with_capacity(opts.batch);
    loop {
        let next = entries.next().await;
        let done = next.is_none();
        if let Some(item) = next {
            bar.inc(1);
            match item {
                Ok(entry) => match entry.verify(&me.owner_public_key) {
                    Ok(()) if !opts.redo && sidecar::is_complete(&opts.out, entry.id, opts.public_view) => {
                        summary.already_present += 1
                    }
                    Ok(()) => batch.push(entry),
                    Err(_) => {
                        warn!(entry = %entry.id, "owner signature does not verify: skipped");
                        summary.bad_signature.push(entry.id);
                    }
                },
                // A transport error ends the stream; a bad entry is only skipped.
                Err(ambishare_rpc::Error::BadResponse(why)) => summary.failed.push(("entry".into(), why)),
                Err(e) => return Err(Error::Registry(e)),
            }
        }
        if batch.len() >= opts.batch.max(1) || (done && !batch.is_empty()) {
            let chunk = std::mem::take(&mut batch);
            let out = Output { dir: &opts.out, public_view: opts.public_view };
            unlock_and_decode(chunk, &mut keys, &registry, &mut models, out, &mut summary).await?;
            bar.set_message(format!("{} decoded", summary.decoded_total()));
        }
        if done {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Where a batch's files go.
#[derive(Clone, Copy)]
struct Output<'a> {
    dir: &'a Path,
    public_view: bool,
}

async fn unlock_and_decode(
    chunk: Vec<Entry>,
    keys: &mut KeyClient,
    registry: &RegistryClient,
    models: &mut ModelCache,
    out: Output<'_>,
    summary: &mut PullSummary,
) -> Result<()> {
    let ids: Vec<EntryId> = chunk.iter().map(|e| e.id).collect();
    let answers = keys.get_keys(&ids).await.map_err(Error::Owner)?;
    let mut work: Vec<(Entry, EntryKey, Arc<ModelRunner>)> = Vec::new();
    for (entry, (_, answer)) in chunk.into_iter().zip(answers) {
        match answer {
            // A model that cannot be fetched fails its entries, not the pull.
            Ok(key) => match models.get(registry, entry.model).await {
                Ok(runner) => work.push((entry, key, runner)),
                Err(e) => summary.failed.push((entry.id.to_string(), format!("model {}: {e}", entry.model))),
            },
            Err(denial) => summary.denied.entry(denial).or_default().push(entry.id),
        }
    }
    let (dir, public_view) = (out.dir.to_owned(), out.public_view);
    // Decoding is CPU work: off the async threads.
    let results = tokio::task::spawn_blocking(move || {
        work.into_iter()
            .map(|(entry, key, runner)| {
                let tier = key.tier();
                let written = decode_to_files(&entry, &key, &runner, &dir, public_view);
                (entry.id, tier, written)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    for (id, tier, written) in results {
        match written {
            Ok(()) => *summary.decoded.entry(tier).or_default() += 1,
            Err(e) => summary.failed.push((id.to_string(), e.to_string())),
        }
    }
    Ok(())
}

/// Writes `<id>.png` (the key's decode), `<id>.public.png` (with `public_view`:
/// every nonzero decoded, as `browse` does) and then the sidecar.
fn decode_to_files(entry: &Entry, key: &EntryKey, runner: &ModelRunner, out: &Path, public_view: bool) -> Result<()> {
    let code = key.disambiguate(&entry.code)?;
    let image = decode_image(runner, &code, entry.width, entry.height)?;
    // A sidecar vouches for the images beside it: none while they are replaced.
    sidecar::remove_if_present(&sidecar_path(out, entry.id))?;
    write_png(&image, &png_path(out, entry.id))?;
    if public_view {
        let public = entry.code.to_sparse()?;
        let image = decode_image(runner, &public, entry.width, entry.height)?;
        write_png(&image, &public_png_path(out, entry.id))?;
    }
    Sidecar::for_entry(entry, key.tier(), public_view, sidecar::now_unix_ms()).write(out)?;
    Ok(())
}

/// Writes through a synced temporary file, so a crash never leaves half a PNG.
pub(crate) fn write_png(image: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    sidecar::write_atomic(path, &bytes)
}

/// Checks an entry against a public key (exposed for `show`).
pub fn verify(entry: &Entry, key: &PublicKey) -> bool {
    entry.verify(key).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn outcome_and_exit_code_follow_the_worst_entry() {
        let mut summary = PullSummary::default();
        assert_eq!(summary.outcome(), PullOutcome::Complete, "nothing asked for is nothing missing");
        summary.decoded.insert(Tier::Full, 5);
        summary.already_present = 2;
        assert_eq!((summary.outcome(), summary.outcome().exit_code()), (PullOutcome::Complete, 0));
        assert_eq!(summary.shortfall(), None);

        summary.denied.entry(Denial::NotGranted).or_default().extend([EntryId::new(), EntryId::new()]);
        summary.denied.entry(Denial::Expired).or_default().push(EntryId::new());
        assert_eq!((summary.outcome(), summary.outcome().exit_code()), (PullOutcome::NoKey, 3));
        assert_eq!(summary.shortfall().unwrap(), "no key for 3 entries (listed above)");

        let mut forged = summary.clone();
        forged.bad_signature.push(EntryId::new());
        assert_eq!((forged.outcome(), forged.outcome().exit_code()), (PullOutcome::Failed, 4));
        let mut failed = PullSummary::default();
        failed.failed.push(("entry".into(), "bad".into()));
        assert_eq!(failed.outcome().exit_code(), 4);
        assert!(failed.shortfall().unwrap().contains("1 failures"));
    }
}
