//! `ambishare-registry migrate`: copies a registry's data into another store
//! (typically from sled on one machine to the S3 store of replicas).
//!
//! Nothing is copied blind: owners, models and entries go through the checks
//! a request carrying them would pass (the owner's key hashes to its id; a
//! model's header is signed and each file matches its size and sha256; each
//! entry parses, is signed by its registered owner, fits its model's shape,
//! and its stored bytes are its canonical encoding), then through the same
//! writer as a publish. Tombstones are copied first, so a deleted id stays
//! deleted. Thumbnails are not copied: the web view renders them again.
//! Every write is create-if-absent, so an interrupted migration is resumed by
//! running it again.

use std::fmt;

use indicatif::{ProgressBar, ProgressStyle};
use tracing::warn;

use crate::db::{Db, Query};
use crate::error::{Error, Result};
use crate::{Limits, Registry, StoreConfig};

/// Records read from the source per listing page (and entries per import batch, at most).
const PAGE: usize = 256;
/// Refusals described in the report at most (the count is always exact).
const MAX_LISTED_REFUSALS: usize = 20;
/// Record bytes one page of entries may hold in memory.
const PAGE_BYTES: usize = 64 << 20;

/// What a migration copied and refused.
#[derive(Debug, Default)]
pub struct MigrationReport {
    pub owners: u64,
    pub models: u64,
    pub tombstones: u64,
    /// Entries written to the target by this run.
    pub entries_stored: u64,
    /// Entries the target already held, byte for byte (a repeated run).
    pub entries_already_stored: u64,
    /// Records not copied, each with the reason (at most [`MAX_LISTED_REFUSALS`]).
    pub refusals: Vec<String>,
    pub refusal_count: u64,
}

impl MigrationReport {
    fn refuse(&mut self, what: String) {
        warn!(refusal = %what, "not copied");
        self.refusal_count += 1;
        if self.refusals.len() < MAX_LISTED_REFUSALS {
            self.refusals.push(what);
        }
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "owners:      {}", self.owners)?;
        writeln!(f, "models:      {}", self.models)?;
        writeln!(f, "tombstones:  {}", self.tombstones)?;
        writeln!(f, "entries:     {} copied, {} already there", self.entries_stored, self.entries_already_stored)?;
        write!(f, "not copied:  {}", self.refusal_count)?;
        for refusal in &self.refusals {
            write!(f, "\n  {refusal}")?;
        }
        if self.refusal_count > self.refusals.len() as u64 {
            write!(f, "\n  ... and {} more (see the log)", self.refusal_count - self.refusals.len() as u64)?;
        }
        Ok(())
    }
}

/// Copies everything `from` holds into `to`, checking each record. The source
/// is only read; a sled source must not be open in a running registry.
pub async fn migrate(from: &StoreConfig, to: &StoreConfig, limits: Limits, progress: bool) -> Result<MigrationReport> {
    if from.to_string() == to.to_string() {
        return Err(Error::Config(format!("--from and --to are the same store ({from})")));
    }
    if let StoreConfig::Sled { path, .. } = from
        && !path.is_dir()
    {
        return Err(Error::Config(format!("no registry data directory at {}", path.display())));
    }
    let source = Db::open(from.open().await?).await?;
    let total = source.stats().await?.entries;
    let target = Registry::with_store(to.open().await?, limits).await?;
    let copied = copy(&source, &target, total, progress, limits.max_entries_per_message.min(PAGE)).await;
    // Whatever happened, what the writer holds is flushed before we return.
    target.close().await?;
    copied
}

async fn copy(source: &Db, target: &Registry, total: u64, progress: bool, batch: usize) -> Result<MigrationReport> {
    let api = &target.api;
    let mut report = MigrationReport::default();

    let mut after = None;
    loop {
        let owners = source.owners(after.as_ref(), PAGE).await?;
        for owner in &owners {
            match api.import_owner(owner).await {
                Ok(_) => report.owners += 1,
                Err(e) => report.refuse(format!("owner {}: {e}", owner.owner_id)),
            }
        }
        match owners.last().map(|o| o.owner_id.parse()) {
            Some(Ok(last)) if owners.len() == PAGE => after = Some(last),
            Some(Err(_)) => return Err(Error::corrupt("owners", "a record with a bad owner id")),
            _ => break,
        }
    }

    let mut after = None;
    loop {
        let models = source.models(after.as_ref(), PAGE).await?;
        for (id, header) in &models {
            match api.import_model(header, source).await {
                Ok(_) => report.models += 1,
                Err(e) => report.refuse(format!("model {id}: {e}")),
            }
        }
        match models.last() {
            Some((last, _)) if models.len() == PAGE => after = Some(*last),
            _ => break,
        }
    }

    let mut after = None;
    loop {
        let tombstones = source.tombstones(after.as_ref(), PAGE).await?;
        for (id, record) in &tombstones {
            target.api.inner.db.put_tombstone(id, record.clone()).await?;
            report.tombstones += 1;
        }
        match tombstones.last() {
            Some((last, _)) if tombstones.len() == PAGE => after = Some(*last),
            _ => break,
        }
    }
    target.api.inner.db.flush().await?;

    let bar = if progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} entries ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("copying");
    let query = Query::default();
    let mut cursor = None;
    loop {
        let page = source.page(&query, cursor.as_ref(), batch, PAGE_BYTES).await?;
        let read = page.items.len() as u64;
        for ack in api.import_entries(page.items).await? {
            use ambishare_proto::registry::v1::PublishOutcome;
            match PublishOutcome::try_from(ack.outcome) {
                Ok(PublishOutcome::Stored) => report.entries_stored += 1,
                Ok(PublishOutcome::AlreadyStored) => report.entries_already_stored += 1,
                _ => report.refuse(format!("entry {}: {}", ack.entry_id, ack.message)),
            }
        }
        bar.inc(read);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    bar.finish_and_clear();
    Ok(report)
}
