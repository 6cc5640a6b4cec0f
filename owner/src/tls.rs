//! The key service's mutual TLS: its own accept loop over tokio-rustls, so
//! that the client-certificate verifier can record the certificates it refuses
//! in the audit log (tonic's `ServerTlsConfig` takes no verifier of ours).
//!
//! A certificate refused in the handshake (expired, not yet valid, not for
//! client authentication, not from the owner's client CA, or whose holder
//! cannot sign with its key) never reaches a call, so [`AuditedVerifier`]
//! records it: who the certificate claims to be, why it was refused. Anyone
//! can make certificates, so these records are rate limited: one per
//! (claimed name, reason) in a minute's window, and at most
//! [`MAX_REFUSALS_PER_WINDOW`] in a window in all; the next record counts
//! those left out (the log still grows, by at most that many a minute). A peer without any
//! certificate is refused by rustls before the verifier runs; the accept loop
//! sees that handshake error and records it under the party
//! [`NO_CERTIFICATE`], one record per peer address in a window.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{Error, Result};
use crate::pki::PeerCert;
use crate::store::OwnerStore;
use crate::types::{AuditEvent, Denial};

/// A TLS handshake that takes longer is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; further connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;
/// Audit action of a certificate refused in the handshake.
pub const AUDIT_ACTION: &str = "TlsHandshake";
/// The party recorded for a peer that sent no certificate.
pub const NO_CERTIFICATE: &str = "no certificate";
/// Window of the rate limit on recorded refusals.
const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Refusals recorded per window; more are counted and noted in the next record.
pub const MAX_REFUSALS_PER_WINDOW: u32 = 120;
/// Longest reason text copied into a record.
const MAX_REASON_LEN: usize = 240;

/// The key service's TLS: the rustls configuration and the audit log of the
/// handshakes it refuses (the verifier's, and the accept loop's).
#[derive(Clone, Debug)]
pub struct KeyServiceTls {
    pub config: Arc<ServerConfig>,
    refusals: Arc<RefusalLog>,
}

/// The server's TLS configuration: its certificate, client certificates
/// required and verified against the client CA, refusals audited into `store`.
pub fn server_config(
    server_cert_pem: &str,
    server_key_pem: &str,
    client_ca_pem: &str,
    store: Weak<OwnerStore>,
) -> Result<KeyServiceTls> {
    let tls_err = |what: &str, e: rustls::Error| Error::Certificate(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for cert in pem_certs(client_ca_pem, "client CA")? {
        roots.add(cert).map_err(|e| tls_err("client CA", e))?;
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| Error::Certificate(format!("client certificate verifier: {e}")))?;
    let refusals = Arc::new(RefusalLog { store, limiter: Mutex::new(RefusalLimiter::default()) });
    let verifier = Arc::new(AuditedVerifier { inner: webpki, refusals: refusals.clone() });
    let key = PrivateKeyDer::from_pem_slice(server_key_pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("server key: not a PEM private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pem_certs(server_cert_pem, "server certificate")?, key)
        .map_err(|e| tls_err("server certificate", e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(KeyServiceTls { config: Arc::new(config), refusals })
}

fn pem_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate(format!("{what}: not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Certificate(format!("{what}: no certificate in the PEM text")));
    }
    Ok(certs)
}

/// Accepts TCP connections on `listener` and does their TLS handshakes
/// concurrently (each within [`HANDSHAKE_TIMEOUT`]); the stream yields the
/// connections whose handshake succeeded. Abort the task to stop accepting.
pub fn incoming(
    listener: TcpListener,
    tls: KeyServiceTls,
) -> (ReceiverStream<std::io::Result<TlsStream<TcpStream>>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(accept_loop(listener, TlsAcceptor::from(tls.config), tls.refusals, tx));
    (ReceiverStream::new(rx), task)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    refusals: Arc<RefusalLog>,
    tx: mpsc::Sender<std::io::Result<TlsStream<TcpStream>>>,
) {
    // Dropping the set (the task ends or is aborted) aborts the handshakes in flight.
    let mut handshakes = JoinSet::new();
    loop {
        while handshakes.try_join_next().is_some() {}
        if handshakes.len() >= MAX_HANDSHAKES {
            tokio::select! {
                _ = handshakes.join_next() => continue,
                _ = tx.closed() => return,
            }
        }
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = tx.closed() => return,
        };
        // Without it a multi-segment answer waits on the peer's delayed ACK (~40 ms).
        let _ = tcp.set_nodelay(true);
        let (acceptor, refusals, tx) = (acceptor.clone(), refusals.clone(), tx.clone());
        handshakes.spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) if presented_no_certificate(&e) => refusals.record(
                    NO_CERTIFICATE,
                    &peer.ip().to_string(),
                    "no client certificate",
                    &format!("the peer at {} sent none", peer.ip()),
                ),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Whether a failed handshake is rustls refusing a client that sent no certificate.
fn presented_no_certificate(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::NoCertificatesPresented))
}

/// Which refusals are recorded: one per key (claimed name and reason) per
/// window, and at most [`MAX_REFUSALS_PER_WINDOW`] per window in all.
#[derive(Debug, Default)]
struct RefusalLimiter {
    window_start: Option<Instant>,
    /// Keys recorded in this window (at most [`MAX_REFUSALS_PER_WINDOW`]).
    recorded: HashSet<String>,
    left_out: u64,
}

impl RefusalLimiter {
    /// Some(number left out since the last record) when this refusal is to be recorded.
    fn admit(&mut self, key: &str, now: Instant) -> Option<u64> {
        if self.window_start.is_none_or(|t| now.duration_since(t) >= REFUSAL_WINDOW) {
            self.window_start = Some(now);
            self.recorded.clear();
        }
        if self.recorded.contains(key) || self.recorded.len() >= MAX_REFUSALS_PER_WINDOW as usize {
            self.left_out += 1;
            return None;
        }
        self.recorded.insert(key.to_owned());
        Some(std::mem::take(&mut self.left_out))
    }
}

/// Why a certificate was refused, in words that do not change from one attempt to the next.
fn category(error: &rustls::Error) -> &'static str {
    use rustls::CertificateError as E;
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            E::Expired | E::ExpiredContext { .. } => "certificate expired",
            E::NotValidYet | E::NotValidYetContext { .. } => "certificate not valid yet",
            E::InvalidPurpose | E::InvalidPurposeContext { .. } => "certificate not for client authentication",
            E::UnknownIssuer => "unknown issuer (not the owner's client CA)",
            E::BadSignature => "bad signature",
            E::Revoked => "certificate revoked",
            E::BadEncoding => "malformed certificate",
            _ => "invalid certificate",
        },
        _ => "handshake signature refused",
    }
}

/// Handshake refusals into the audit log, rate limited.
#[derive(Debug)]
struct RefusalLog {
    /// Weak: connections outliving the node must not hold its store open.
    store: Weak<OwnerStore>,
    limiter: Mutex<RefusalLimiter>,
}

impl RefusalLog {
    /// Records that `who` (a claimed name, never a secret) was refused for
    /// `why` (words that do not change between attempts); `source` tells the
    /// attempts of one `who` apart for the rate limit.
    fn record(&self, who: &str, source: &str, why: &str, reason: &str) {
        let admitted = match self.limiter.lock() {
            Ok(mut limiter) => limiter.admit(&format!("{who}\0{source}\0{why}"), Instant::now()),
            Err(_) => None,
        };
        let Some(left_out) = admitted else {
            tracing::debug!(peer = %who, %reason, "client refused in the TLS handshake (not recorded: rate limit)");
            return;
        };
        tracing::warn!(peer = %who, %reason, "client refused in the TLS handshake");
        let Some(store) = self.store.upgrade() else { return };
        let mut detail = format!("refused in the TLS handshake: {why} ({reason})");
        if left_out > 0 {
            detail.push_str(&format!(" ({left_out} earlier refusal(s) not recorded: rate limit)"));
        }
        let mut event = AuditEvent::new(AUDIT_ACTION, who).denied("", Denial::CertificateRefused).detail(detail);
        if let Err(e) = store.append_audit(std::slice::from_mut(&mut event)) {
            tracing::error!(error = %e, "cannot record a handshake refusal in the audit log");
        }
    }
}

/// The WebPKI client-certificate verifier, recording what it refuses in the audit log.
pub struct AuditedVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    refusals: Arc<RefusalLog>,
}

impl std::fmt::Debug for AuditedVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditedVerifier")
    }
}

impl AuditedVerifier {
    /// Records a refused certificate (rate limited). Certificates are public:
    /// only the claimed name, or a fingerprint prefix, and the reason are kept.
    fn refused(&self, cert: &CertificateDer<'_>, error: &rustls::Error) {
        let who = PeerCert::parse(cert.as_ref()).map_or_else(|_| "unreadable certificate".to_owned(), |p| p.describe());
        let reason: String = error.to_string().chars().filter(|c| !c.is_control()).take(MAX_REASON_LEN).collect();
        self.refusals.record(&who, "", category(error), &reason);
    }

    fn audited<T>(
        &self,
        cert: &CertificateDer<'_>,
        result: std::result::Result<T, rustls::Error>,
    ) -> std::result::Result<T, rustls::Error> {
        if let Err(e) = &result {
            self.refused(cert, e);
        }
        result
    }
}

impl ClientCertVerifier for AuditedVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.audited(end_entity, self.inner.verify_client_cert(end_entity, intermediates, now))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.audited(cert, self.inner.verify_tls12_signature(message, cert, dss))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.audited(cert, self.inner.verify_tls13_signature(message, cert, dss))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_records_each_refusal_once_a_minute_and_caps_the_rest() {
        let mut l = RefusalLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.admit("a", t0), Some(0));
        assert_eq!(l.admit("a", t0 + Duration::from_secs(1)), None, "identical refusal within the window");
        assert_eq!(l.admit("b", t0 + Duration::from_secs(2)), Some(1), "the next record counts the left-out one");
        assert_eq!(l.admit("a", t0 + Duration::from_secs(2)), None, "also when not consecutive");
        for i in 2..MAX_REFUSALS_PER_WINDOW {
            assert!(l.admit(&format!("k{i}"), t0 + Duration::from_secs(3)).is_some());
        }
        assert_eq!(l.admit("over", t0 + Duration::from_secs(4)), None, "cap reached");
        assert_eq!(l.admit("over", t0 + REFUSAL_WINDOW + Duration::from_secs(1)), Some(1), "a new window");
    }
}
