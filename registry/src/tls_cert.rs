//! `ambishare-registry tls-cert`: a certificate authority and a server
//! certificate for the registry's public endpoint, for deployments without a
//! CA of their own. Parties and owners trust `ca.pem` (their `--registry-ca`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{Error, Result};

/// The files `tls-cert` writes, by their names in the output directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "tls.pem";
pub const SERVER_KEY: &str = "tls.key";

/// What was written where.
#[derive(Debug)]
pub struct Written {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// Makes a CA and a server certificate for `names` (DNS names or IP
/// addresses), valid for `days`, in `out` (created; existing files are never
/// overwritten). Keys are written 0600.
pub fn make(out: &Path, names: &[String], days: u32) -> Result<Written> {
    if names.is_empty() {
        return Err(Error::Config("give at least one --name (the host name clients connect to)".into()));
    }
    if !(1..=3650).contains(&days) {
        return Err(Error::Config("--days must be 1 to 3650".into()));
    }
    let cert_err = |e: rcgen::Error| Error::Config(format!("making the certificate: {e}"));
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + time::Duration::days(i64::from(days));

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ambishare registry CA");
    ca_params.distinguished_name = dn;
    ca_params.not_before = now - time::Duration::hours(1);
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(cert_err)?;

    let mut params = CertificateParams::new(names.to_vec()).map_err(cert_err)?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[0].as_str());
    params.distinguished_name = dn;
    params.not_before = now - time::Duration::hours(1);
    params.not_after = not_after;
    let key = KeyPair::generate().map_err(cert_err)?;
    let cert = params.signed_by(&key, &ca).map_err(cert_err)?;

    std::fs::create_dir_all(out).map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
    let written =
        Written { ca_cert: out.join(CA_CERT), server_cert: out.join(SERVER_CERT), server_key: out.join(SERVER_KEY) };
    for path in [&written.ca_cert, &out.join(CA_KEY), &written.server_cert, &written.server_key] {
        if path.exists() {
            return Err(Error::Config(format!("{} exists; not overwriting it", path.display())));
        }
    }
    let secret = |path: &Path, pem: String| {
        ambishare_shared::crypto::write_secret_file(path, pem.as_bytes())
            .map_err(|e| Error::Config(format!("writing {}: {e}", path.display())))
    };
    secret(&out.join(CA_KEY), ca.key().serialize_pem())?;
    secret(&written.server_key, key.serialize_pem())?;
    let public = |path: &Path, pem: String| {
        std::fs::write(path, pem).map_err(|e| Error::io(format!("writing {}", path.display()), e))
    };
    public(&written.ca_cert, ca.pem())?;
    // The chain a server sends: its certificate, then the CA's.
    public(&written.server_cert, format!("{}{}", cert.pem(), ca.pem()))?;
    Ok(written)
}
