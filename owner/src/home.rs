//! The owner's home directory: its identity (signing key, sealing keys,
//! certificates), its optional config file and its store.
//!
//! ```text
//! signing.pk8                  Ed25519 signing key (PKCS#8)            0600
//! sealing/<id-hex>.key         AES-256-GCM sealing keys (32 bytes)     0600
//! sealing/current              id of the key that seals new support keys
//! tls/server-ca.{pem,key}      CA of the key service's certificate     key 0600
//! tls/server.{pem,key}         the key service's certificate           key 0600
//! tls/client-ca.{pem,key}      CA that issues party and admin certs    key 0600
//! tls/admin.{pem,key}          the owner's admin certificate           key 0600
//! owner.toml                   optional config
//! store/                       sled database
//! ```

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use ambishare_rpc::ClientIdentity;
use ambishare_shared::OwnerId;
use ambishare_shared::crypto::{
    SealingKey, SealingKeyId, SigningKey, check_secret_permissions, read_secret_file, write_secret_file,
};

use crate::error::{Error, Result};
use crate::pki;

/// Paths inside an owner's home directory.
#[derive(Clone, Debug)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn signing_key(&self) -> PathBuf {
        self.root.join("signing.pk8")
    }

    pub fn sealing_dir(&self) -> PathBuf {
        self.root.join("sealing")
    }

    pub fn sealing_key(&self, id: &SealingKeyId) -> PathBuf {
        self.sealing_dir().join(format!("{}.key", hex::encode(id)))
    }

    /// File naming the sealing key in use.
    pub fn sealing_current(&self) -> PathBuf {
        self.sealing_dir().join("current")
    }

    /// File naming the key a rotation in progress re-seals to.
    pub fn sealing_next(&self) -> PathBuf {
        self.sealing_dir().join("next")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn tls(&self, name: &str) -> PathBuf {
        self.tls_dir().join(name)
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("owner.toml")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Every private key file present: the signing key, the sealing keys and the TLS keys.
    pub fn key_files(&self) -> Result<Vec<PathBuf>> {
        let mut out = vec![self.signing_key()];
        for dir in [self.sealing_dir(), self.tls_dir()] {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
            };
            for entry in entries {
                let path = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?.path();
                if path.extension().is_some_and(|x| x == "key") {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Refuses to start when any key file is readable or writable by group or others.
    pub fn check_key_permissions(&self) -> Result<()> {
        if !self.signing_key().exists() {
            return Err(Error::FailedPrecondition(format!(
                "no owner identity in {}; run `ambishare-owner init` first",
                self.root.display()
            )));
        }
        for path in self.key_files()? {
            check_secret_permissions(&path)?;
        }
        Ok(())
    }

    pub fn load_signing_key(&self) -> Result<SigningKey> {
        Ok(SigningKey::from_pkcs8(&read_secret_file(&self.signing_key())?)?)
    }

    pub fn read_pem(&self, name: &str) -> Result<String> {
        let path = self.tls(name);
        fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
    }

    /// A private key PEM, refused when its permissions are loose.
    pub fn read_key_pem(&self, name: &str) -> Result<String> {
        let bytes = read_secret_file(&self.tls(name))?;
        String::from_utf8(bytes).map_err(|_| Error::Certificate(format!("{name} is not PEM text")))
    }

    /// The owner's admin identity, for the CLI to call its running node
    /// (key permissions checked).
    pub fn admin_identity(&self, domain: &str) -> Result<ClientIdentity> {
        Ok(ClientIdentity {
            cert_pem: self.read_pem("admin.pem")?,
            key_pem: self.read_key_pem("admin.key")?,
            ca_pem: self.read_pem("server-ca.pem")?,
            domain: domain.to_owned(),
        })
    }
}

/// Options of `init`.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Extra subject alternative names (DNS names or IP addresses) for the key service's certificate.
    pub sans: Vec<String>,
}

/// Creates a new owner identity in `home`; refuses when one (or part of one) exists.
/// Returns the owner id.
pub fn init(home: &Home, options: &InitOptions) -> Result<OwnerId> {
    let existing: Vec<PathBuf> = [home.signing_key(), home.sealing_dir(), home.tls_dir(), home.store_dir()]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if !existing.is_empty() {
        let list: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::AlreadyExists(format!(
            "an owner identity already exists in {} ({}); refusing to overwrite it",
            home.root().display(),
            list.join(", ")
        )));
    }
    create_private_dir(home.root())?;
    create_private_dir(&home.sealing_dir())?;
    create_private_dir(&home.tls_dir())?;

    let (signing, pkcs8) = SigningKey::generate()?;
    let owner = signing.public_key().owner_id();

    let (sealing, raw) = SealingKey::generate()?;
    write_secret_file(&home.sealing_key(&sealing.id()), &raw)?;
    write_atomically(&home.sealing_current(), hex::encode(sealing.id()).as_bytes())?;

    let generated = pki::generate(&owner, &options.sans)?;
    for (name, issued) in [
        ("server-ca", &generated.server_ca),
        ("server", &generated.server),
        ("client-ca", &generated.client_ca),
        ("admin", &generated.admin),
    ] {
        write_secret_file(&home.tls(&format!("{name}.key")), issued.key_pem.as_bytes())?;
        write_public_file(&home.tls(&format!("{name}.pem")), issued.cert_pem.as_bytes())?;
    }
    // Last: its presence marks a complete identity.
    write_secret_file(&home.signing_key(), &pkcs8)?;
    tracing::info!(owner = %owner, home = %home.root().display(), "owner identity created");
    Ok(owner)
}

fn create_private_dir(path: &Path) -> Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path).map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// Writes a public file (a certificate) that must not exist yet.
fn write_public_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let ctx = || format!("writing {}", path.display());
    let mut f = fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| Error::io(ctx(), e))?;
    f.write_all(data).map_err(|e| Error::io(ctx(), e))?;
    f.sync_all().map_err(|e| Error::io(ctx(), e))
}

/// Replaces `path` with `data` through a temporary file and a rename, so a crash leaves the old or the new content.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let ctx = |p: &Path| format!("writing {}", p.display());
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io(ctx(&tmp), e))?;
    f.write_all(data).map_err(|e| Error::io(ctx(&tmp), e))?;
    f.sync_all().map_err(|e| Error::io(ctx(&tmp), e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(ctx(path), e))?;
    if let Some(Ok(dir)) = path.parent().map(fs::File::open) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Parses a sealing key id written as 16 hex digits.
pub(crate) fn parse_sealing_id(text: &str) -> Option<SealingKeyId> {
    let mut id = [0u8; 8];
    hex::decode_to_slice(text.trim(), &mut id).ok()?;
    Some(id)
}

/// Every sealing key of the owner, and which one seals new support keys.
pub struct Keyring {
    current: SealingKey,
    /// Every other key (older ones, or the target of a rotation in progress).
    others: HashMap<SealingKeyId, SealingKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &hex::encode(self.current.id()))
            .field("others", &self.others.len())
            .finish()
    }
}

impl Keyring {
    /// Loads `sealing/*.key` (each refused if its permissions are loose or its
    /// name is not its id) and `sealing/current`.
    pub fn load(home: &Home) -> Result<Self> {
        let current_path = home.sealing_current();
        let text = fs::read_to_string(&current_path)
            .map_err(|e| Error::io(format!("reading {}", current_path.display()), e))?;
        let current = parse_sealing_id(&text)
            .ok_or_else(|| Error::Config(format!("{} does not hold a sealing key id", current_path.display())))?;
        let dir = home.sealing_dir();
        let mut keys = HashMap::new();
        let entries = fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?.path();
            if path.extension().is_none_or(|x| x != "key") {
                continue;
            }
            let key = SealingKey::from_bytes(&read_secret_file(&path)?)?;
            let named = path.file_stem().and_then(|s| s.to_str()).and_then(parse_sealing_id);
            if named != Some(key.id()) {
                return Err(Error::Config(format!("sealing key file {} is not named after its id", path.display())));
            }
            keys.insert(key.id(), key);
        }
        let current = keys.remove(&current).ok_or_else(|| {
            Error::Config(format!("the current sealing key {} is missing from {}", hex::encode(current), dir.display()))
        })?;
        Ok(Keyring { current, others: keys })
    }

    /// The key that seals new support keys.
    pub fn current(&self) -> &SealingKey {
        &self.current
    }

    pub fn get(&self, id: &SealingKeyId) -> Option<&SealingKey> {
        if *id == self.current.id() { Some(&self.current) } else { self.others.get(id) }
    }

    /// Ids of every key, the current one first.
    pub fn ids(&self) -> Vec<SealingKeyId> {
        std::iter::once(self.current.id()).chain(self.others.keys().copied()).collect()
    }

    pub(crate) fn insert(&mut self, key: SealingKey) {
        if key.id() != self.current.id() {
            self.others.insert(key.id(), key);
        }
    }

    /// Opens a sealed blob with whichever of our keys sealed it.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let id = SealingKey::sealed_by(sealed).ok_or_else(|| Error::corrupt("keys", "not a sealed blob"))?;
        let key = self.get(&id).ok_or_else(|| {
            Error::Config(format!("sealing key {} is missing from the home directory", hex::encode(id)))
        })?;
        Ok(key.open(sealed, aad)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_private_keys_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("owner"));
        let owner = init(&home, &InitOptions { sans: vec!["keys.example".into()] }).unwrap();
        assert_eq!(home.load_signing_key().unwrap().public_key().owner_id(), owner);
        home.check_key_permissions().unwrap();
        assert_eq!(home.key_files().unwrap().len(), 6);
        let ring = Keyring::load(&home).unwrap();
        let sealed = ring.current().seal(b"k", b"aad").unwrap();
        assert_eq!(ring.open(&sealed, b"aad").unwrap(), b"k");
        assert!(matches!(init(&home, &InitOptions::default()), Err(Error::AlreadyExists(_))));
    }

    #[cfg(unix)]
    #[test]
    fn rejects_loose_key_file_at_start_up() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        init(&home, &InitOptions::default()).unwrap();
        fs::set_permissions(home.tls("client-ca.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let err = home.check_key_permissions().unwrap_err();
        assert!(err.to_string().contains("client-ca.key"), "{err}");
    }

    #[test]
    fn rejects_sealing_key_named_after_another_id() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        init(&home, &InitOptions::default()).unwrap();
        let (_, raw) = SealingKey::generate().unwrap();
        write_secret_file(&home.sealing_dir().join("0011223344556677.key"), &raw).unwrap();
        assert!(matches!(Keyring::load(&home), Err(Error::Config(_))));
    }
}
