//! A party's node of ambishare.
//!
//! - [`enroll()`]: the party's private key (never leaves this node) and a CSR for the owner to sign.
//! - [`pull::pull()`]: stream a dataset from the registry, verify each owner signature, fetch
//!   the party's support keys over mutual TLS, disambiguate and decode to PNG.
//! - [`browse::browse()`] and [`browse::show()`]: what the public sees, without keys.
//! - [`gallery::serve_gallery()`]: a loopback web view of what `pull` wrote
//!   (each decode beside the public view, with its [`sidecar::Sidecar`]).

pub mod browse;
pub mod cli;
pub mod config;
pub mod error;
pub mod gallery;
pub mod models;
pub mod pull;
pub mod sidecar;

use std::path::Path;

use ambishare_rpc::ClientTlsOptions;

pub use error::{Error, Result};

/// TLS options for an `https://` registry whose certificate `ca` signed (none: plaintext `http://`).
pub fn registry_tls(ca: Option<&Path>) -> Result<Option<ClientTlsOptions>> {
    ca.map(|path| {
        let ca_pem = std::fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(ClientTlsOptions { ca_pem, domain: None })
    })
    .transpose()
}

/// Files `enroll` writes.
pub struct Enrolled {
    pub key_path: std::path::PathBuf,
    pub csr_path: std::path::PathBuf,
}

/// Makes the party's private key (0600) and a certificate signing request with
/// the party's name, in `home`. Refuses to replace an existing key.
pub fn enroll(home: &Path, party: &ambishare_shared::PartyName) -> Result<Enrolled> {
    std::fs::create_dir_all(home).map_err(|e| Error::io(format!("creating {}", home.display()), e))?;
    let key_path = home.join(config::PARTY_KEY);
    let csr_path = home.join(config::PARTY_CSR);
    if key_path.exists() {
        return Err(Error::Config(format!("{} exists: this node is already enrolled", key_path.display())));
    }
    let (csr_pem, key_pem) =
        ambishare_rpc::make_csr(party.as_str()).map_err(|e| Error::Config(format!("making the key and CSR: {e}")))?;
    ambishare_shared::crypto::write_secret_file(&key_path, key_pem.as_bytes())?;
    std::fs::write(&csr_path, csr_pem).map_err(|e| Error::io(format!("writing {}", csr_path.display()), e))?;
    Ok(Enrolled { key_path, csr_path })
}
