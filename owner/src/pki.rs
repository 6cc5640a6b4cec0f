//! Certificates: the owner's two CAs, the key service's and the admin's
//! certificates (made once by `init`), parties' certificates signed from their
//! CSRs, and what the key service reads from a peer's certificate. (The
//! party's side, its key and CSR, is `ambishare_rpc::make_csr`.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambishare_shared::ids::sha256;
use ambishare_shared::{OwnerId, PartyName};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// Validity of the CAs, the key service's and the admin's certificates.
const LONG_VALIDITY_DAYS: u32 = 3650;
/// Validity of a party's certificate when the grant does not say.
pub const DEFAULT_PARTY_CERT_DAYS: u32 = 365;
/// Longest validity of a party's certificate.
pub const MAX_PARTY_CERT_DAYS: u32 = 3650;
/// Certificates start this much in the past, for peers whose clocks lag.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Largest CSR accepted, in bytes of PEM.
pub const MAX_CSR_PEM: usize = 16 * 1024;
/// Common name of the admin certificate (authorization is by fingerprint, not by name).
pub const ADMIN_COMMON_NAME: &str = "ambishare-owner-admin";

/// SHA-256 of a certificate's DER bytes.
pub type Fingerprint = [u8; 32];

pub fn fingerprint(der: &[u8]) -> Fingerprint {
    sha256(der)
}

/// A certificate and its private key, both PEM.
pub struct IssuedPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything `init` writes under `tls/`.
pub struct GeneratedPki {
    pub server_ca: IssuedPair,
    pub server: IssuedPair,
    pub client_ca: IssuedPair,
    pub admin: IssuedPair,
}

fn cert_err(e: rcgen::Error) -> Error {
    Error::Certificate(e.to_string())
}

fn to_time(t: SystemTime) -> Result<OffsetDateTime> {
    let secs = t.duration_since(UNIX_EPOCH).map_err(|_| Error::Internal("clock before 1970".into()))?.as_secs();
    OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|e| Error::Internal(format!("time: {e}")))
}

/// Parameters with a random serial and a validity of `days` from now.
fn base_params(common_name: &str, days: u32) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let now = SystemTime::now();
    params.not_before = to_time(now - BACKDATE)?;
    params.not_after = to_time(now + Duration::from_secs(u64::from(days) * 86_400))?;
    let mut serial = ambishare_shared::crypto::random_bytes::<16>()?;
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

fn ca_params(common_name: &str) -> Result<CertificateParams> {
    let mut params = base_params(common_name, LONG_VALIDITY_DAYS)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

fn leaf_params(mut params: CertificateParams, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    params
}

/// The owner's CAs and certificates. The key service's certificate names
/// `localhost`, `127.0.0.1` and every name in `sans`.
pub fn generate(owner: &OwnerId, sans: &[String]) -> Result<GeneratedPki> {
    let short = &owner.to_string()[..8];

    let server_ca_key = KeyPair::generate().map_err(cert_err)?;
    let server_ca_params = ca_params(&format!("ambishare owner {short} server CA"))?;
    let server_ca_cert = server_ca_params.self_signed(&server_ca_key).map_err(cert_err)?;
    let server_ca_pem = server_ca_cert.pem();
    let server_ca = Issuer::new(server_ca_params, server_ca_key);

    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for san in sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let mut server_params = CertificateParams::new(names).map_err(cert_err)?;
    let base = base_params(&format!("ambishare owner {short} key service"), LONG_VALIDITY_DAYS)?;
    server_params.distinguished_name = base.distinguished_name;
    server_params.not_before = base.not_before;
    server_params.not_after = base.not_after;
    server_params.serial_number = base.serial_number;
    let server_params = leaf_params(server_params, ExtendedKeyUsagePurpose::ServerAuth);
    let server_key = KeyPair::generate().map_err(cert_err)?;
    let server_cert = server_params.signed_by(&server_key, &server_ca).map_err(cert_err)?;

    let client_ca_key = KeyPair::generate().map_err(cert_err)?;
    let client_ca_params = ca_params(&format!("ambishare owner {short} client CA"))?;
    let client_ca_cert = client_ca_params.self_signed(&client_ca_key).map_err(cert_err)?;
    let client_ca_pem = client_ca_cert.pem();
    let client_ca = Issuer::new(client_ca_params, client_ca_key);

    let admin_params =
        leaf_params(base_params(ADMIN_COMMON_NAME, LONG_VALIDITY_DAYS)?, ExtendedKeyUsagePurpose::ClientAuth);
    let admin_key = KeyPair::generate().map_err(cert_err)?;
    let admin_cert = admin_params.signed_by(&admin_key, &client_ca).map_err(cert_err)?;

    Ok(GeneratedPki {
        server_ca: IssuedPair { cert_pem: server_ca_pem, key_pem: server_ca.key().serialize_pem() },
        server: IssuedPair { cert_pem: server_cert.pem(), key_pem: server_key.serialize_pem() },
        client_ca: IssuedPair { cert_pem: client_ca_pem, key_pem: client_ca.key().serialize_pem() },
        admin: IssuedPair { cert_pem: admin_cert.pem(), key_pem: admin_key.serialize_pem() },
    })
}

/// A party's certificate as issued.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub pem: String,
    pub fingerprint: Fingerprint,
    pub not_after_unix_ms: i64,
}

/// The CA that issues parties' certificates.
pub struct ClientCa {
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCa")
    }
}

impl ClientCa {
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(cert_err)?;
        Ok(ClientCa { issuer })
    }

    /// Signs a party's CSR: the CSR contributes only its public key (its
    /// signature is checked); the subject is `CN=<party>`, the only usage
    /// client authentication, and the validity `days` from now.
    pub fn sign_csr(&self, csr_pem: &str, party: &PartyName, days: u32) -> Result<IssuedCert> {
        if csr_pem.len() > MAX_CSR_PEM {
            return Err(Error::invalid("csr", format!("larger than {MAX_CSR_PEM} bytes")));
        }
        if days == 0 || days > MAX_PARTY_CERT_DAYS {
            return Err(Error::invalid("certificate days", format!("must be 1 to {MAX_PARTY_CERT_DAYS}")));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::invalid("csr", format!("not a valid, self-signed PEM CSR: {e}")))?;
        let params = leaf_params(base_params(party.as_str(), days)?, ExtendedKeyUsagePurpose::ClientAuth);
        let not_after_unix_ms = params.not_after.unix_timestamp().saturating_mul(1000);
        let signed = CertificateSigningRequestParams { params, public_key: csr.public_key }
            .signed_by(&self.issuer)
            .map_err(cert_err)?;
        Ok(IssuedCert { fingerprint: fingerprint(signed.der()), pem: signed.pem(), not_after_unix_ms })
    }
}

/// What the key service reads from a peer's leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCert {
    pub fingerprint: Fingerprint,
    /// The subject's common name, when there is exactly one and it is UTF-8.
    pub common_name: Option<String>,
}

impl PeerCert {
    /// Parses a DER certificate (already verified by TLS against the client CA).
    pub fn parse(der: &[u8]) -> Result<Self> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Unauthenticated(format!("unreadable peer certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Unauthenticated("trailing bytes after the peer certificate".into()));
        }
        let mut names = cert.subject().iter_common_name();
        let common_name = match (names.next(), names.next()) {
            (Some(cn), None) => cn.as_str().ok().map(str::to_owned),
            _ => None,
        };
        Ok(PeerCert { fingerprint: fingerprint(der), common_name })
    }

    /// How audit records name an unauthorized peer.
    pub fn describe(&self) -> String {
        match &self.common_name {
            Some(cn) => format!("cn={}", cn.chars().filter(|c| !c.is_control()).take(64).collect::<String>()),
            None => format!("fingerprint={}", hex::encode(&self.fingerprint[..8])),
        }
    }
}

/// DER bytes of the first certificate in a PEM text.
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("not a PEM certificate: {e}")))?;
    Ok(parsed.contents)
}

#[cfg(test)]
mod tests {
    use ambishare_rpc::make_csr;

    use super::*;

    #[test]
    fn signs_csr_with_forced_name_and_client_usage() {
        let owner = OwnerId::from_public_key(&[1u8; 32]);
        let pki = generate(&owner, &["keys.example".into()]).unwrap();
        let ca = ClientCa::load(&pki.client_ca.cert_pem, &pki.client_ca.key_pem).unwrap();
        let (csr, _) = make_csr("someone-else").unwrap();
        let party: PartyName = "lab-a".parse().unwrap();
        let issued = ca.sign_csr(&csr, &party, 30).unwrap();
        let der = pem_to_der(&issued.pem).unwrap();
        let peer = PeerCert::parse(&der).unwrap();
        assert_eq!(peer.common_name.as_deref(), Some("lab-a"));
        assert_eq!(peer.fingerprint, issued.fingerprint);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
    }

    #[test]
    fn rejects_garbage_and_tampered_csr() {
        let owner = OwnerId::from_public_key(&[2u8; 32]);
        let pki = generate(&owner, &[]).unwrap();
        let ca = ClientCa::load(&pki.client_ca.cert_pem, &pki.client_ca.key_pem).unwrap();
        let party: PartyName = "p".parse().unwrap();
        assert!(matches!(ca.sign_csr("not a csr", &party, 30), Err(Error::Invalid { .. })));
        let (csr, _) = make_csr("p").unwrap();
        let der = x509_parser::pem::parse_x509_pem(csr.as_bytes()).unwrap().1.contents;
        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 5] ^= 0x40; // inside the signature
        let pem =
            format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", base64_lines(&bad));
        assert!(ca.sign_csr(&pem, &party, 30).is_err());
        assert!(ca.sign_csr(&csr, &party, 0).is_err());
    }

    fn base64_lines(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }
}
