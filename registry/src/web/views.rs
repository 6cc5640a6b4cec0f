//! What each page shows, read from the store (blocking) into plain values
//! that the HTML pages and the JSON API both render: one source of truth.

use ambishare_proto::registry::v1 as rpb;
use ambishare_shared::crypto::PublicKey;
use ambishare_shared::model::Manifest;
use ambishare_shared::timestamp::rfc3339_from_unix_ms;
use ambishare_shared::{DatasetName, Entry, EntryId, ModelId, OwnerId};
use serde::Serialize;

use crate::db::{DatasetRow, Db, Query, StoredEntry};
use crate::error::{Error, Result};
use crate::web::thumbnails::{ThumbnailState, Thumbnailer, fit};

/// Owners on one home page.
pub const OWNERS_PER_PAGE: usize = 50;
/// Datasets listed under one owner on the home page.
pub const DATASETS_PER_OWNER: usize = 200;
/// Entries on one dataset page, unless asked for fewer.
pub const DEFAULT_ENTRIES_PER_PAGE: usize = 60;
pub const MAX_ENTRIES_PER_PAGE: usize = 100;
/// Record bytes one dataset page may read (codes included).
const MAX_PAGE_BYTES: usize = 64 << 20;

#[derive(Debug, Serialize)]
pub struct HomeView {
    pub owners: Vec<OwnerView>,
    /// Query value of `after` for the next page of owners.
    pub next: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OwnerView {
    pub owner_id: String,
    pub display_name: String,
    pub registered: String,
    pub datasets: Vec<DatasetView>,
}

#[derive(Debug, Serialize)]
pub struct DatasetView {
    pub owner_id: String,
    pub dataset: String,
    pub entries: u64,
    /// Sum of the entries' code sizes.
    pub code_bytes: u64,
    /// Creation time of the newest entry (RFC 3339).
    pub last_publish: String,
    pub models: Vec<ModelCount>,
    /// Path of the dataset's page.
    pub url: String,
}

#[derive(Debug, Serialize)]
pub struct ModelCount {
    pub model_id: String,
    pub entries: u64,
}

#[derive(Debug, Serialize)]
pub struct DatasetPageView {
    pub owner_id: String,
    pub display_name: String,
    pub dataset: DatasetView,
    pub entries: Vec<EntryCard>,
    /// Query value of `after` for the next page.
    pub next: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EntryCard {
    pub entry_id: String,
    pub width: u32,
    pub height: u32,
    pub created: String,
    pub label: String,
    pub code_bytes: u64,
    pub url: String,
    pub thumbnail: ThumbnailView,
}

#[derive(Debug, Serialize)]
pub struct ThumbnailView {
    /// "ready", "pending" or "unavailable".
    pub state: &'static str,
    pub url: String,
    pub width: u32,
    pub height: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EntryView {
    pub entry_id: String,
    pub owner_id: String,
    pub display_name: String,
    pub dataset: String,
    pub dataset_url: String,
    pub model_id: String,
    pub model_name: String,
    pub width: u32,
    pub height: u32,
    pub created: String,
    pub label: String,
    pub tiles: u32,
    pub maps: u16,
    pub dim: u16,
    /// Nonzeros a map in the public code (real and fake).
    pub nonzeros_per_map: u16,
    pub format_version: u8,
    pub value_codec: &'static str,
    pub code_bytes: u64,
    /// "valid", "invalid" or "owner unknown": the owner's Ed25519 signature, checked now.
    pub signature: &'static str,
    pub code_url: String,
    pub thumbnail: ThumbnailView,
}

#[derive(Debug, Serialize)]
pub struct ModelView {
    pub model_id: String,
    pub owner_id: String,
    pub name: String,
    pub tile_size: u32,
    pub channels: u32,
    pub maps: u16,
    pub dim: u16,
    pub k: u16,
    pub k_fake: u16,
    pub preview_k: Vec<u16>,
    pub files: Vec<ModelFileView>,
    /// The manifest as published (its SHA-256 is the model id).
    pub manifest: String,
}

#[derive(Debug, Serialize)]
pub struct ModelFileView {
    pub role: &'static str,
    pub sha256: String,
    pub size: u64,
}

pub fn dataset_url(owner: &str, dataset: &str) -> String {
    format!("/owners/{owner}/datasets/{dataset}")
}

pub fn entry_url(id: &str) -> String {
    format!("/entries/{id}")
}

pub fn model_url(id: &str) -> String {
    format!("/models/{id}")
}

pub fn thumbnail_url(id: &str) -> String {
    format!("/entries/{id}/thumbnail.jpg")
}

fn when(unix_ms: i64) -> String {
    if unix_ms == 0 { String::new() } else { rfc3339_from_unix_ms(unix_ms) }
}

fn dataset_view(row: &DatasetRow) -> DatasetView {
    let (owner, dataset) = (row.owner.to_string(), row.dataset.as_str().to_owned());
    DatasetView {
        url: dataset_url(&owner, &dataset),
        owner_id: owner,
        dataset,
        entries: row.summary.entries,
        code_bytes: row.summary.code_bytes,
        last_publish: when(row.summary.last_created_unix_ms),
        models: row.summary.models.iter().map(|(m, n)| ModelCount { model_id: m.to_string(), entries: *n }).collect(),
    }
}

async fn display_name(db: &Db, owner: &OwnerId) -> Result<String> {
    Ok(db.owner(owner).await?.map(|o| o.display_name).unwrap_or_default())
}

/// Owners (after `after`) and each one's datasets.
pub async fn home(db: &Db, after: Option<&OwnerId>) -> Result<HomeView> {
    let mut owners = db.owners(after, OWNERS_PER_PAGE + 1).await?;
    let more = owners.len() > OWNERS_PER_PAGE;
    owners.truncate(OWNERS_PER_PAGE);
    let mut views = Vec::with_capacity(owners.len());
    for owner in &owners {
        let id: OwnerId = owner.owner_id.parse().map_err(|_| Error::corrupt("owners", "bad owner id"))?;
        let datasets = db.datasets(Some(&id), None, DATASETS_PER_OWNER).await?;
        views.push(OwnerView {
            owner_id: owner.owner_id.clone(),
            display_name: owner.display_name.clone(),
            registered: when(owner.registered_unix_ms),
            datasets: datasets.iter().map(dataset_view).collect(),
        });
    }
    let next = if more { views.last().map(|o| o.owner_id.clone()) } else { None };
    Ok(HomeView { owners: views, next })
}

async fn thumbnail_view(thumbs: &Thumbnailer, id: &EntryId, width: u32, height: u32) -> Result<ThumbnailView> {
    let (tw, th) = fit(width, height);
    let (state, reason) = match thumbs.state(id).await? {
        ThumbnailState::Ready => ("ready", None),
        ThumbnailState::Pending => ("pending", None),
        ThumbnailState::Unavailable(why) => ("unavailable", Some(why)),
    };
    Ok(ThumbnailView { state, url: thumbnail_url(&id.to_string()), width: tw, height: th, reason })
}

async fn card(thumbs: &Thumbnailer, stored: &StoredEntry) -> Result<EntryCard> {
    let e = &stored.entry;
    let id: EntryId = e.entry_id.parse().map_err(|_| Error::corrupt("entries", "bad entry id"))?;
    Ok(EntryCard {
        url: entry_url(&e.entry_id),
        entry_id: e.entry_id.clone(),
        width: e.width,
        height: e.height,
        created: when(e.created_unix_ms),
        label: e.label.clone(),
        code_bytes: e.code.len() as u64,
        thumbnail: thumbnail_view(thumbs, &id, e.width, e.height).await?,
    })
}

/// One page of a dataset's entries (in id order: creation time), `after` a page token.
pub async fn dataset_page(
    db: &Db,
    thumbs: &Thumbnailer,
    owner: &OwnerId,
    dataset: &DatasetName,
    after: Option<&str>,
    limit: usize,
) -> Result<DatasetPageView> {
    let summary = db
        .dataset_summary(owner, dataset)
        .await?
        .ok_or_else(|| Error::NotFound(format!("owner {owner} has no dataset {dataset}")))?;
    let row = DatasetRow { owner: *owner, dataset: dataset.clone(), summary };
    let query = Query { owner: Some(*owner), dataset: Some(dataset.clone()) };
    let cursor = after.map(|t| query.parse_token(t)).transpose()?;
    let page = db.page(&query, cursor.as_ref(), limit.clamp(1, MAX_ENTRIES_PER_PAGE), MAX_PAGE_BYTES).await?;
    let mut entries = Vec::with_capacity(page.items.len());
    for stored in &page.items {
        entries.push(card(thumbs, stored).await?);
    }
    Ok(DatasetPageView {
        owner_id: owner.to_string(),
        display_name: display_name(db, owner).await?,
        dataset: dataset_view(&row),
        entries,
        next: page.next.map(|c| c.token()),
    })
}

/// The stored entry under `id`.
pub async fn stored_entry(db: &Db, id: &EntryId) -> Result<StoredEntry> {
    db.entry(id).await?.ok_or_else(|| Error::NotFound(format!("no entry {id}")))
}

pub async fn entry(db: &Db, thumbs: &Thumbnailer, id: &EntryId) -> Result<EntryView> {
    let stored = stored_entry(db, id).await?;
    let entry = Entry::try_from(stored.entry.clone())
        .map_err(|e| Error::corrupt("entries", format!("stored entry does not parse: {e}")))?;
    let owner = db.owner(&entry.owner).await?;
    let signature = match owner.as_ref().map(|o| PublicKey::from_bytes(&o.public_key)) {
        Some(Ok(key)) if key.owner_id() == entry.owner && entry.verify(&key).is_ok() => "valid",
        Some(_) => "invalid",
        None => "owner unknown",
    };
    let model_name = db
        .model(&entry.model)
        .await?
        .and_then(|h| Manifest::parse(&h.manifest).ok())
        .map(|m| m.name)
        .unwrap_or_default();
    let shape = entry.code.shape();
    let (owner_id, dataset, entry_id) = (entry.owner.to_string(), entry.dataset.to_string(), entry.id.to_string());
    Ok(EntryView {
        dataset_url: dataset_url(&owner_id, &dataset),
        display_name: owner.map(|o| o.display_name).unwrap_or_default(),
        code_url: format!("{}/code.ambc", entry_url(&entry_id)),
        thumbnail: thumbnail_view(thumbs, id, entry.width, entry.height).await?,
        entry_id,
        owner_id,
        dataset,
        model_id: entry.model.to_string(),
        model_name,
        width: entry.width,
        height: entry.height,
        created: when(entry.created_unix_ms),
        label: entry.label.clone(),
        tiles: shape.tiles,
        maps: shape.maps,
        dim: shape.dim,
        nonzeros_per_map: entry.code.nnz(),
        format_version: match entry.code.version() {
            ambishare_shared::ambiguate::CodeVersion::V2 => 2,
            ambishare_shared::ambiguate::CodeVersion::V3 => 3,
        },
        value_codec: match entry.code.codec() {
            ambishare_shared::ambiguate::ValueCodec::Q8 => "q8",
            ambishare_shared::ambiguate::ValueCodec::F16 => "f16",
        },
        code_bytes: entry.code_bytes.len() as u64,
        signature,
    })
}

pub async fn model(db: &Db, id: &ModelId) -> Result<ModelView> {
    let header: rpb::ModelHeader = db.model(id).await?.ok_or_else(|| Error::NotFound(format!("no model {id}")))?;
    let manifest = Manifest::parse(&header.manifest).map_err(|e| Error::corrupt("models", e.to_string()))?;
    let files = header
        .files
        .iter()
        .map(|f| ModelFileView {
            role: match rpb::ModelFileRole::try_from(f.role) {
                Ok(rpb::ModelFileRole::Encoder) => "encoder",
                Ok(rpb::ModelFileRole::Decoder) => "decoder",
                _ => "unknown",
            },
            sha256: f.sha256.clone(),
            size: f.size,
        })
        .collect();
    // Pretty-printed for reading; the id is the hash of the exact bytes, shown beside it.
    let manifest_text = serde_json::from_slice::<serde_json::Value>(&header.manifest)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| String::from_utf8_lossy(&header.manifest).into_owned());
    Ok(ModelView {
        model_id: id.to_string(),
        owner_id: header.owner_id.clone(),
        name: manifest.name,
        tile_size: manifest.tile_size,
        channels: manifest.channels,
        maps: manifest.maps,
        dim: manifest.dim,
        k: manifest.k,
        k_fake: manifest.k_fake,
        preview_k: manifest.preview_k,
        files,
        manifest: manifest_text,
    })
}

/// The exact bytes of an entry's public (ambiguated) code.
pub async fn code_bytes(db: &Db, id: &EntryId) -> Result<Vec<u8>> {
    let stored = stored_entry(db, id).await?;
    Ok(stored.entry.code)
}
