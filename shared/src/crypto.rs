//! Signing (Ed25519), sealing at rest (AES-256-GCM), canonical bytes and
//! secret files, all with ring.

use std::fs;
use std::io::Write;
use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, ED25519, Ed25519KeyPair, KeyPair};

use crate::error::{Error, Result};
use crate::ids::OwnerId;

/// A ChaCha20 CSPRNG seeded from the operating system (ring's `SystemRandom`).
pub fn secure_rng() -> Result<ChaCha20Rng> {
    let mut seed = [0u8; 32];
    SystemRandom::new().fill(&mut seed).map_err(|_| Error::Crypto("system randomness unavailable"))?;
    Ok(ChaCha20Rng::from_seed(seed))
}

/// Fills a fresh array from the operating system's randomness.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| Error::Crypto("system randomness unavailable"))?;
    Ok(out)
}

/// An owner's Ed25519 signing key. Debug prints only the owner id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key().owner_id())
    }
}

impl SigningKey {
    /// A fresh key, returned with its PKCS#8 document (what goes to disk).
    pub fn generate() -> Result<(Self, Vec<u8>)> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| Error::Crypto("ed25519 key generation"))?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| Error::invalid("signing key", e.to_string()))?;
        Ok(SigningKey { pair })
    }

    pub fn public_key(&self) -> PublicKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(out)
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// An owner's Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::invalid("public key", "expected 32 bytes"))?;
        Ok(PublicKey(arr))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn owner_id(&self) -> OwnerId {
        OwnerId::from_public_key(&self.0)
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        signature::UnparsedPublicKey::new(&ED25519, &self.0).verify(message, signature).map_err(|_| Error::BadSignature)
    }
}

/// Length-prefixed fields after a domain tag: unambiguous bytes to sign, so a
/// signature over one kind of message can never be replayed as another.
pub struct Canonical(Vec<u8>);

impl Canonical {
    pub fn new(domain: &str) -> Self {
        let mut c = Canonical(Vec::with_capacity(256));
        c.bytes(domain.as_bytes());
        c
    }

    pub fn bytes(&mut self, field: &[u8]) -> &mut Self {
        self.0.extend_from_slice(&(field.len() as u64).to_le_bytes());
        self.0.extend_from_slice(field);
        self
    }

    pub fn str(&mut self, field: &str) -> &mut Self {
        self.bytes(field.as_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Identifies a sealing key without revealing it: 8 bytes of SHA-256 of a tag and the key.
pub type SealingKeyId = [u8; 8];

/// AES-256-GCM key that seals support keys at rest.
pub struct SealingKey {
    id: SealingKeyId,
    key: LessSafeKey,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealingKey({})", hex::encode(self.id))
    }
}

const SEALED_VERSION: u8 = 1;
const SEALED_OVERHEAD: usize = 1 + 8 + NONCE_LEN + 16;

impl SealingKey {
    pub const LEN: usize = 32;

    pub fn generate() -> Result<(Self, [u8; 32])> {
        let raw = random_bytes::<32>()?;
        Ok((Self::from_bytes(&raw)?, raw))
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self> {
        if raw.len() != Self::LEN {
            return Err(Error::invalid("sealing key", "expected 32 bytes"));
        }
        let unbound = UnboundKey::new(&AES_256_GCM, raw).map_err(|_| Error::Crypto("aes-256-gcm key"))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&crate::ids::sha256(&[b"ambishare sealing key id\0".as_slice(), raw].concat())[..8]);
        Ok(SealingKey { id, key: LessSafeKey::new(unbound) })
    }

    pub fn id(&self) -> SealingKeyId {
        self.id
    }

    /// `version | key id | nonce | ciphertext+tag`; `aad` binds the blob to its context (the entry id).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut out = Vec::with_capacity(plaintext.len() + SEALED_OVERHEAD);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&nonce_bytes);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(aad), &mut body)
            .map_err(|_| Error::Crypto("aes-256-gcm seal"))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Which key sealed `sealed` (None when it is not a sealed blob).
    pub fn sealed_by(sealed: &[u8]) -> Option<SealingKeyId> {
        if sealed.len() < SEALED_OVERHEAD || sealed[0] != SEALED_VERSION {
            return None;
        }
        sealed[1..9].try_into().ok()
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        if Self::sealed_by(sealed) != Some(self.id) {
            return Err(Error::Unseal);
        }
        let nonce: [u8; NONCE_LEN] = sealed[9..9 + NONCE_LEN].try_into().map_err(|_| Error::Unseal)?;
        let mut body = sealed[9 + NONCE_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| Error::Unseal)?;
        Ok(plain.to_vec())
    }
}

/// Reads a secret (key) file, refusing it when group or others may read or write it.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>> {
    check_secret_permissions(path)?;
    fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Refuses a key file with permission bits for group or others.
pub fn check_secret_permissions(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::LoosePermissions { path: path.display().to_string(), mode });
        }
    }
    Ok(())
}

/// Writes a secret file with mode 0600 (created new: an existing file is not overwritten).
pub fn write_secret_file(path: &Path, data: &[u8]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let ctx = || format!("writing {}", path.display());
    let mut f = opts.open(path).map_err(|e| Error::io(ctx(), e))?;
    f.write_all(data).map_err(|e| Error::io(ctx(), e))?;
    f.sync_all().map_err(|e| Error::io(ctx(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_forgeries_fail() {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        let sig = key.sign(b"hello");
        key.public_key().verify(b"hello", &sig).unwrap();
        assert!(key.public_key().verify(b"hellO", &sig).is_err());
        let mut bad = sig;
        bad[3] ^= 1;
        assert!(key.public_key().verify(b"hello", &bad).is_err());
        let (other, _) = SigningKey::generate().unwrap();
        assert!(other.public_key().verify(b"hello", &sig).is_err());
    }

    #[test]
    fn canonical_fields_cannot_be_shifted() {
        let a = Canonical::new("t").str("ab").str("c").finish();
        let b = Canonical::new("t").str("a").str("bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn sealing_round_trips_and_binds_context() {
        let (key, raw) = SealingKey::generate().unwrap();
        let sealed = key.seal(b"support key", b"entry-1").unwrap();
        assert_eq!(SealingKey::sealed_by(&sealed), Some(key.id()));
        assert_eq!(SealingKey::from_bytes(&raw).unwrap().open(&sealed, b"entry-1").unwrap(), b"support key");
        assert!(key.open(&sealed, b"entry-2").is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(key.open(&tampered, b"entry-1").is_err());
        assert!(key.open(&sealed[..10], b"entry-1").is_err());
        let (other, _) = SealingKey::generate().unwrap();
        assert!(other.open(&sealed, b"entry-1").is_err());
    }

    #[test]
    fn loose_key_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_secret_file(&path, b"secret").unwrap();
        assert_eq!(read_secret_file(&path).unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
            assert!(matches!(read_secret_file(&path), Err(Error::LoosePermissions { .. })));
        }
        assert!(write_secret_file(&path, b"again").is_err(), "existing key overwritten");
    }
}
