//! Rotation of the sealing key: a new key with a new id re-seals every stored
//! support key, then becomes current, then the old key files are removed.
//!
//! Resumable: the target key is named in `sealing/next` before any key is
//! re-sealed; each key is swapped on its own (compare-and-swap), and keys
//! already sealed by the target are skipped, so an interrupted rotation is
//! finished by running it again.

use std::fs;
use std::path::PathBuf;

use ambishare_shared::crypto::{SealingKey, SealingKeyId, write_secret_file};

use crate::error::{Error, Result};
use crate::home::{Home, Keyring, parse_sealing_id, write_atomically};
use crate::store::OwnerStore;

/// What a rotation did.
#[derive(Clone, Debug)]
pub struct RotateSummary {
    /// Id (hex) of the new current key.
    pub new_key: String,
    /// Whether an interrupted rotation was resumed.
    pub resumed: bool,
    /// Support keys (format v2 entries) re-sealed.
    pub resealed: usize,
    /// Whether the master secret (format v3 entries) was re-sealed.
    pub master_resealed: bool,
    /// Old key files removed.
    pub removed: Vec<PathBuf>,
}

/// Rotates the sealing key of the owner in `home`. The key service must not
/// be running (it holds the store).
pub fn rotate_sealing_key(home: &Home) -> Result<RotateSummary> {
    home.check_key_permissions()?;
    let store = OwnerStore::open(&home.store_dir())?;
    let mut keyring = Keyring::load(home)?;
    let (target, resumed) = match fs::read_to_string(home.sealing_next()) {
        Ok(text) => {
            let id = parse_sealing_id(&text)
                .ok_or_else(|| Error::Config(format!("{} does not hold a key id", home.sealing_next().display())))?;
            if keyring.get(&id).is_none() {
                return Err(Error::Config(format!(
                    "an interrupted rotation targets sealing key {}, whose file is missing",
                    hex::encode(id)
                )));
            }
            (id, true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (key, raw) = SealingKey::generate()?;
            let id = key.id();
            write_secret_file(&home.sealing_key(&id), &raw)?;
            keyring.insert(key);
            write_atomically(&home.sealing_next(), hex::encode(id).as_bytes())?;
            (id, false)
        }
        Err(e) => return Err(Error::io(format!("reading {}", home.sealing_next().display()), e)),
    };
    let new = keyring.get(&target).ok_or_else(|| Error::Internal("new sealing key vanished".into()))?;

    let mut resealed = 0;
    for item in store.sealed_keys() {
        let (id, sealed) = item?;
        if SealingKey::sealed_by(&sealed) == Some(target) {
            continue;
        }
        let plain = keyring.open(&sealed, id.as_bytes())?;
        let fresh = new.seal(&plain, id.as_bytes())?;
        if store.replace_sealed_key(&id, &sealed, &fresh)? {
            resealed += 1;
        }
    }
    let master_resealed = store.reseal_master_secret(&keyring, new)?;
    store.flush()?;
    write_atomically(&home.sealing_current(), hex::encode(target).as_bytes())?;
    fs::remove_file(home.sealing_next())
        .map_err(|e| Error::io(format!("removing {}", home.sealing_next().display()), e))?;

    // Only once nothing depends on them.
    for item in store.sealed_keys() {
        let (id, sealed) = item?;
        if SealingKey::sealed_by(&sealed) != Some(target) {
            return Err(Error::Internal(format!("support key of {id} is still sealed by an old key")));
        }
    }
    if store.master_sealed_by()?.is_some_and(|id| id != target) {
        return Err(Error::Internal("the master secret is still sealed by an old key".into()));
    }
    let old: Vec<SealingKeyId> = keyring.ids().into_iter().filter(|id| *id != target).collect();
    let mut removed = Vec::new();
    for id in old {
        let path = home.sealing_key(&id);
        fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        removed.push(path);
    }
    tracing::info!(new_key = %hex::encode(target), resealed, master_resealed, resumed, "sealing key rotated");
    Ok(RotateSummary { new_key: hex::encode(target), resumed, resealed, master_resealed, removed })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::home::{InitOptions, init};
    use crate::store::KeyMaterial;
    use ambishare_shared::{DatasetName, EntryId};

    #[test]
    fn rotation_reseals_every_key_and_removes_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        init(&home, &InitOptions::default()).unwrap();
        let old = Keyring::load(&home).unwrap().current().id();
        let dataset: DatasetName = "d".parse().unwrap();
        let ids: Vec<EntryId> = (0..3).map(|_| EntryId::new()).collect();
        let master;
        {
            let ring = Keyring::load(&home).unwrap();
            let store = OwnerStore::open(&home.store_dir()).unwrap();
            master = store.master_secret(&ring).unwrap();
            for (i, id) in ids.iter().enumerate() {
                let sealed = ring.current().seal(format!("key {i}").as_bytes(), id.as_bytes()).unwrap();
                store.prepare(&dataset, &[i as u8; 32], id, b"e", &KeyMaterial::Sealed(sealed)).unwrap();
            }
        }
        // An interrupted rotation: the target is named, nothing re-sealed yet.
        let (key, raw) = SealingKey::generate().unwrap();
        write_secret_file(&home.sealing_key(&key.id()), &raw).unwrap();
        write_atomically(&home.sealing_next(), hex::encode(key.id()).as_bytes()).unwrap();

        let summary = rotate_sealing_key(&home).unwrap();
        assert!(summary.resumed);
        assert_eq!(summary.new_key, hex::encode(key.id()));
        assert_eq!(summary.resealed, 3);
        assert!(!home.sealing_key(&old).exists());
        let ring = Keyring::load(&home).unwrap();
        assert_eq!(ring.current().id(), key.id());
        let store = OwnerStore::open(&home.store_dir()).unwrap();
        assert_eq!(store.master_sealed_by().unwrap(), Some(key.id()));
        assert_eq!(store.master_secret(&ring).unwrap(), master);
        for (i, id) in ids.iter().enumerate() {
            let sealed = store.sealed_key(id).unwrap().unwrap();
            assert_eq!(ring.open(&sealed, id.as_bytes()).unwrap(), format!("key {i}").as_bytes());
        }
        drop(store);
        let again = rotate_sealing_key(&home).unwrap();
        assert!(!again.resumed && again.resealed == 3 && again.master_resealed && again.removed.len() == 1);
    }
}
