//! What `pull` leaves in its output folder, and what the gallery reads back:
//! per entry `<id>.png` (the authorized decode), `<id>.public.png` (the public
//! decode of the same ambiguated code) and `<id>.json`, the [`Sidecar`].
//!
//! The sidecar is written last, atomically, so its presence means the images
//! beside it are complete; every file name is built from a parsed [`EntryId`]'s
//! canonical text, never from outside input.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ambishare_shared::timestamp::rfc3339_from_unix_ms;
use ambishare_shared::{DatasetName, Entry, EntryId, ModelId, OwnerId, Tier};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest sidecar read back (a real one is well under 1 KiB: the label is at
/// most 256 bytes), so a stray huge `<uuid>.json` costs nothing to skip.
pub const MAX_SIDECAR_BYTES: u64 = 16 * 1024;

/// An entry's metadata beside its decoded images (`<entry-id>.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    pub entry_id: EntryId,
    pub owner_id: OwnerId,
    pub dataset: DatasetName,
    /// The decoder that made both images (by content hash).
    pub model_id: ModelId,
    pub width: u32,
    pub height: u32,
    /// When the owner published the entry (RFC 3339, UTC).
    pub created: String,
    /// The owner's public label (may be empty).
    #[serde(default)]
    pub label: String,
    /// What the party's key opened: `full` or `preview`.
    pub tier: Tier,
    /// When this party decoded it (RFC 3339, UTC).
    pub pulled_at: String,
    /// Whether `<entry-id>.public.png` was written with it (`pull --no-public-view` skips it).
    #[serde(default)]
    pub public_view: bool,
}

impl Sidecar {
    /// The sidecar of `entry`, decoded with a key of `tier` at `pulled_at_unix_ms`.
    pub fn for_entry(entry: &Entry, tier: Tier, public_view: bool, pulled_at_unix_ms: i64) -> Self {
        Sidecar {
            entry_id: entry.id,
            owner_id: entry.owner,
            dataset: entry.dataset.clone(),
            model_id: entry.model,
            width: entry.width,
            height: entry.height,
            created: rfc3339_from_unix_ms(entry.created_unix_ms),
            label: entry.label.clone(),
            tier,
            pulled_at: rfc3339_from_unix_ms(pulled_at_unix_ms),
            public_view,
        }
    }

    /// Pretty JSON, one field a line, with a final newline.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings and numbers always serializes.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses a sidecar; `path` only names it in the error.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::Sidecar { path: path.display().to_string(), reason: e.to_string() })
    }

    /// Writes `<out>/<entry-id>.json` atomically (temporary file, sync, rename).
    /// Call it after the images: a sidecar means they are complete.
    pub fn write(&self, out: &Path) -> Result<PathBuf> {
        let path = sidecar_path(out, self.entry_id);
        write_atomic(&path, &self.to_json())?;
        Ok(path)
    }

    /// Reads `<out>/<id>.json`: `None` when there is none; an error when it is
    /// unreadable, too large, does not parse or names another entry.
    pub fn read(out: &Path, id: EntryId) -> Result<Option<Self>> {
        let path = sidecar_path(out, id);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let mut bytes = Vec::new();
        file.take(MAX_SIDECAR_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if bytes.len() as u64 > MAX_SIDECAR_BYTES {
            return Err(Error::Sidecar {
                path: path.display().to_string(),
                reason: format!("larger than {MAX_SIDECAR_BYTES} bytes"),
            });
        }
        let sidecar = Self::from_json(&bytes, &path)?;
        if sidecar.entry_id != id {
            return Err(Error::Sidecar {
                path: path.display().to_string(),
                reason: format!("names entry {}", sidecar.entry_id),
            });
        }
        Ok(Some(sidecar))
    }
}

/// The authorized decode of an entry.
pub fn png_path(out: &Path, id: EntryId) -> PathBuf {
    out.join(format!("{id}.png"))
}

/// The public decode of the same entry (every nonzero, real and fake).
pub fn public_png_path(out: &Path, id: EntryId) -> PathBuf {
    out.join(format!("{id}.public.png"))
}

/// The entry's [`Sidecar`].
pub fn sidecar_path(out: &Path, id: EntryId) -> PathBuf {
    out.join(format!("{id}.json"))
}

/// The entry a file name is the sidecar of: `<id>.json` with `id` in its
/// canonical form (lowercase, hyphenated UUID v7), nothing else.
pub fn sidecar_id(file_name: &str) -> Option<EntryId> {
    let stem = file_name.strip_suffix(".json")?;
    let id: EntryId = stem.parse().ok()?;
    (id.to_string() == stem).then_some(id)
}

/// Whether `<out>` holds a complete pull of `id`: a sidecar that parses and
/// names it, the PNG, and the public view when `public_view` is asked for.
/// Anything less is decoded again.
pub fn is_complete(out: &Path, id: EntryId, public_view: bool) -> bool {
    match Sidecar::read(out, id) {
        Ok(Some(sidecar)) => {
            png_path(out, id).is_file() && (!public_view || (sidecar.public_view && public_png_path(out, id).is_file()))
        }
        Ok(None) | Err(_) => false,
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Writes `bytes` to `path` through `<path>.tmp`, synced before the rename, so
/// `path` is either absent, its old content, or all of `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format!("writing {}", path.display()), e)
    })
}

/// Removes `path` if it is there.
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Sidecar {
        Sidecar {
            entry_id: EntryId::new(),
            owner_id: OwnerId::from_public_key(&[7; 32]),
            dataset: "holidays".parse().unwrap(),
            model_id: ModelId::of_manifest(b"manifest"),
            width: 320,
            height: 200,
            created: rfc3339_from_unix_ms(1_796_145_283_227),
            label: "beach <b>& \"sea\"".into(),
            tier: Tier::Preview,
            pulled_at: rfc3339_from_unix_ms(1_796_145_300_000),
            public_view: true,
        }
    }

    #[test]
    fn sidecar_round_trips_through_json_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let sidecar = sample();
        let json = String::from_utf8(sidecar.to_json()).unwrap();
        for field in [
            format!("\"entry_id\": \"{}\"", sidecar.entry_id),
            format!("\"owner_id\": \"{}\"", sidecar.owner_id),
            "\"dataset\": \"holidays\"".into(),
            "\"tier\": \"preview\"".into(),
            "\"created\": \"2026-12-01T17:14:43Z\"".into(),
            "\"public_view\": true".into(),
        ] {
            assert!(json.contains(&field), "{field} not in {json}");
        }
        assert_eq!(Sidecar::from_json(json.as_bytes(), Path::new("x")).unwrap(), sidecar);

        let path = sidecar.write(dir.path()).unwrap();
        assert_eq!(path, dir.path().join(format!("{}.json", sidecar.entry_id)));
        assert_eq!(Sidecar::read(dir.path(), sidecar.entry_id).unwrap(), Some(sidecar.clone()));
        assert_eq!(Sidecar::read(dir.path(), EntryId::new()).unwrap(), None);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    #[test]
    fn rejects_a_sidecar_that_names_another_entry_or_is_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let sidecar = sample();
        let other = EntryId::new();
        std::fs::write(sidecar_path(dir.path(), other), sidecar.to_json()).unwrap();
        assert!(matches!(Sidecar::read(dir.path(), other), Err(Error::Sidecar { .. })));

        let mut big = sidecar.clone();
        big.label = "x".repeat(MAX_SIDECAR_BYTES as usize);
        big.write(dir.path()).unwrap();
        assert!(matches!(Sidecar::read(dir.path(), big.entry_id), Err(Error::Sidecar { .. })));

        std::fs::write(sidecar_path(dir.path(), sidecar.entry_id), b"{\"entry_id\": 3").unwrap();
        assert!(matches!(Sidecar::read(dir.path(), sidecar.entry_id), Err(Error::Sidecar { .. })));
    }

    #[test]
    fn only_canonical_sidecar_names_are_entries() {
        let id = EntryId::new();
        assert_eq!(sidecar_id(&format!("{id}.json")), Some(id));
        for name in [
            format!("{id}.png"),
            format!("{id}.json.tmp"),
            format!("{}.json", id.to_string().to_uppercase()),
            format!("{}.json", id.to_string().replace('-', "")),
            format!("x{id}.json"),
            "8c5f6b4e-1234-4abc-8def-0123456789ab.json".into(), // a v4 UUID
            ".json".into(),
            "../etc/passwd.json".into(),
        ] {
            assert_eq!(sidecar_id(&name), None, "{name}");
        }
    }

    #[test]
    fn an_entry_is_complete_only_with_its_sidecar_and_images() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        let mut sidecar = sample();
        let id = sidecar.entry_id;
        std::fs::write(png_path(out, id), b"png").unwrap();
        assert!(!is_complete(out, id, false), "a PNG without its sidecar (an older pull) is done again");
        sidecar.public_view = false;
        sidecar.write(out).unwrap();
        assert!(is_complete(out, id, false));
        assert!(!is_complete(out, id, true), "the public view was skipped last time and is asked for now");
        std::fs::write(public_png_path(out, id), b"png").unwrap();
        sidecar.public_view = true;
        sidecar.write(out).unwrap();
        assert!(is_complete(out, id, true));
        std::fs::remove_file(png_path(out, id)).unwrap();
        assert!(!is_complete(out, id, true));
    }
}
