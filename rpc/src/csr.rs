//! The party's side of enrolment: a fresh key pair and a certificate signing
//! request for the owner to sign (the owner node's `pki` signs it, forcing the
//! name and the usage; it takes only the public key from the request).

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::error::{Error, Result};

fn cert_err(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

/// A fresh key and a CSR for `common_name`, as a party's node makes them
/// (its private key never leaves it). Returns `(csr_pem, key_pem)`.
pub fn make_csr(common_name: &str) -> Result<(String, String)> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(cert_err)?;
    Ok((csr.pem().map_err(cert_err)?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_self_signed_request_and_a_distinct_key_each_time() {
        let (csr, key) = make_csr("lab-a").unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(key.contains("PRIVATE KEY"));
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        assert_eq!(parsed.params.distinguished_name.get(&DnType::CommonName), Some(&"lab-a".into()));
        assert_ne!(make_csr("lab-a").unwrap().1, key);
    }
}
