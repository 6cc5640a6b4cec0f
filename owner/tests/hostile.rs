//! Hostile input to the owner's node: client certificates that TLS must refuse
//! (and the audit log must record), and images that publishing must skip
//! without storing anything of them.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambishare_owner::pki::{Fingerprint, fingerprint};
use ambishare_owner::store::{OwnerStore, PartyCert};
use ambishare_owner::tls::{AUDIT_ACTION, NO_CERTIFICATE};
use ambishare_owner::types::now_unix_ms;
use ambishare_owner::{AuditEvent, AuditQuery, AuditResult, Denial, FileOutcome, Grant, PublishEvent};
use ambishare_proto::owner::v1 as pb;
use ambishare_shared::{DatasetName, EntryId, Tier};
use common::*;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

const DAY: Duration = Duration::from_secs(86_400);

fn at(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64).unwrap()
}

/// A leaf certificate signed by the owner's own client CA, of any validity and usage.
struct Forged {
    cert_pem: String,
    key_pem: String,
    fingerprint: Fingerprint,
}

fn sign_with_client_ca(
    owner: &TestOwner,
    cn: &str,
    not_before: SystemTime,
    not_after: SystemTime,
    usage: ExtendedKeyUsagePurpose,
) -> Forged {
    let ca_key = KeyPair::from_pem(&owner.home.read_key_pem("client-ca.key").unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&owner.home.read_pem("client-ca.pem").unwrap(), ca_key).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = at(not_before);
    params.not_after = at(not_after);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    Forged { fingerprint: fingerprint(cert.der()), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// Records the certificate as `party`'s, with a full grant on `dataset`, so
/// only what TLS checks can refuse it.
fn enroll_offline(store: &OwnerStore, party: &str, dataset: &str, cert: &Forged) {
    let now = now_unix_ms();
    let grant = Grant {
        party: party.parse().unwrap(),
        dataset: dataset.parse().unwrap(),
        tier: Tier::Full,
        granted_unix_ms: now,
        expires_unix_ms: None,
        revoked_unix_ms: None,
    };
    let record = PartyCert {
        fingerprint: cert.fingerprint,
        party: party.parse().unwrap(),
        issued_unix_ms: now,
        not_after_unix_ms: now + 30 * 86_400_000,
        revoked_unix_ms: None,
    };
    store.put_grant(&grant, Some(&record)).unwrap();
}

/// Asks for keys over a fresh connection with a certificate; the key bytes
/// released, or the error (handshake or call) that refused the certificate.
async fn ask(url: &str, ca: &str, cert: &str, key: &str, ids: &[EntryId]) -> Result<usize, String> {
    let request = pb::GetKeysRequest { entry_ids: ids.iter().map(ToString::to_string).collect() };
    match raw_key_client(url, ca, Some((cert, key))).await {
        Err(e) => Err(format!("connect: {e:?}")),
        Ok(mut client) => match client.get_keys(request).await {
            Ok(r) => Ok(key_bytes(&r.into_inner())),
            Err(status) => Err(format!("{status:?}")),
        },
    }
}

fn refusals<'a>(events: &'a [AuditEvent], party: &str) -> Vec<&'a AuditEvent> {
    events.iter().filter(|e| e.action == AUDIT_ACTION && e.party == party).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_refused_in_the_handshake_get_no_keys_and_are_audited() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start().await;
        let owner = TestOwner::init();
        let files = write_pngs(&dir.path().join("alpha"), 2, 11);
        let s = owner.publish(&registry, "alpha", files.clone()).await;
        assert_eq!((s.published, s.failed.len()), (2, 0), "{s}");
        let ids: Vec<EntryId> = files.iter().map(|f| owner.entry_of("alpha", f)).collect();

        // Certificates from the owner's own client CA, each recorded for its
        // party with a full grant: only the certificate itself can be wrong.
        let now = SystemTime::now();
        let good =
            sign_with_client_ca(&owner, "good-lab", now - DAY, now + 30 * DAY, ExtendedKeyUsagePurpose::ClientAuth);
        let expired =
            sign_with_client_ca(&owner, "expired-lab", now - 30 * DAY, now - DAY, ExtendedKeyUsagePurpose::ClientAuth);
        let future =
            sign_with_client_ca(&owner, "future-lab", now + DAY, now + 30 * DAY, ExtendedKeyUsagePurpose::ClientAuth);
        let server_only =
            sign_with_client_ca(&owner, "server-lab", now - DAY, now + 30 * DAY, ExtendedKeyUsagePurpose::ServerAuth);
        {
            let store = OwnerStore::open(&owner.home.store_dir()).unwrap();
            for (party, cert) in
                [("good-lab", &good), ("expired-lab", &expired), ("future-lab", &future), ("server-lab", &server_only)]
            {
                enroll_offline(&store, party, "alpha", cert);
            }
            store.flush().unwrap();
        }

        let node = owner.serve().await;
        let mut admin = node.admin(&owner).await;
        let ca = owner.server_ca();
        let before = admin.audit_log(&AuditQuery::default()).await.unwrap().len();

        // The control: the same making, a sound certificate, gets keys.
        assert!(ask(&node.url, &ca, &good.cert_pem, &good.key_pem, &ids).await.unwrap() > 0);

        for (name, cert) in [("expired", &expired), ("not yet valid", &future), ("serverAuth only", &server_only)] {
            // Twice: an identical refusal within a minute is recorded once.
            for _ in 0..2 {
                let refused = ask(&node.url, &ca, &cert.cert_pem, &cert.key_pem, &ids).await;
                assert!(refused.is_err(), "{name} certificate got an answer: {refused:?}");
            }
        }
        // A certificate of another owner's client CA.
        let stranger = TestOwner::init();
        let other = stranger.admin_identity();
        assert!(ask(&node.url, &ca, &other.cert_pem, &other.key_pem, &ids).await.is_err());
        // No certificate at all, twice: refused by rustls, recorded once by the accept loop.
        for _ in 0..2 {
            if let Ok(mut c) = raw_key_client(&node.url, &ca, None).await {
                let request = pb::GetKeysRequest { entry_ids: vec![ids[0].to_string()] };
                assert!(c.get_keys(request).await.is_err(), "served without a client certificate");
            }
        }
        // The admin service too refuses an expired certificate in the handshake.
        let expired_admin = ambishare_rpc::ClientIdentity {
            cert_pem: expired.cert_pem.clone(),
            key_pem: expired.key_pem.clone(),
            ca_pem: ca.clone(),
            domain: "localhost".into(),
        };
        match ambishare_owner::AdminClient::connect(&node.url, expired_admin).await {
            Err(_) => {}
            Ok(mut c) => assert!(c.list_grants(None).await.is_err(), "expired certificate served by OwnerAdmin"),
        }

        // A party whose certificate is sound but revoked: refused per call, with no key bytes.
        let revoked = enroll(&mut admin, "gone-lab", "alpha", Tier::Full, None).await;
        assert!(ask(&node.url, &ca, &revoked.cert_pem, &revoked.key_pem, &ids).await.unwrap() > 0);
        assert_eq!(admin.revoke(&"gone-lab".parse().unwrap(), None).await.unwrap(), 1);
        let refused = ask(&node.url, &ca, &revoked.cert_pem, &revoked.key_pem, &ids).await.unwrap_err();
        assert!(refused.contains("PermissionDenied") && refused.contains("revoked"), "{refused}");

        // The accept loop records a missing certificate after the client has seen its refusal.
        let events = loop {
            let events = admin.audit_log(&AuditQuery::default()).await.unwrap();
            if !refusals(&events, NO_CERTIFICATE).is_empty() {
                break events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(events.len() > before);
        let none = refusals(&events, NO_CERTIFICATE);
        assert_eq!(none.len(), 1, "{none:?}");
        assert_eq!(none[0].denial, Some(Denial::CertificateRefused));
        assert!(none[0].detail.contains("no client certificate") && none[0].detail.contains("127.0.0.1"), "{none:?}");
        for (party, words) in [
            ("cn=expired-lab", "certificate expired"),
            ("cn=future-lab", "not valid yet"),
            ("cn=server-lab", "not for client authentication"),
        ] {
            let found = refusals(&events, party);
            // Two handshakes with the expired certificate on OwnerAdmin and KeyService: still coalesced.
            assert_eq!(found.len(), 1, "{party}: {found:?}");
            let e = found[0];
            assert_eq!((e.result, e.denial), (Some(AuditResult::Denied), Some(Denial::CertificateRefused)));
            assert!(e.detail.contains(words), "{party}: {}", e.detail);
            assert!(!e.detail.contains("PRIVATE KEY"), "{}", e.detail);
            assert!(e.unix_ms > 0 && e.entry_id.is_empty());
        }
        let unknown = refusals(&events, "cn=ambishare-owner-admin");
        assert_eq!(unknown.len(), 1, "{unknown:?}");
        assert!(unknown[0].detail.contains("unknown issuer"), "{}", unknown[0].detail);
        assert!(refusals(&events, "cn=good-lab").is_empty(), "a sound certificate is not a refusal");
        let gone: Vec<_> = events.iter().filter(|e| e.party == "gone-lab").collect();
        assert_eq!(gone.iter().filter(|e| e.denial == Some(Denial::Revoked)).count(), 2, "{gone:?}");
        // Only the sound certificates ever released keys.
        let released: Vec<&str> =
            events.iter().filter(|e| e.result == Some(AuditResult::Released)).map(|e| e.party.as_str()).collect();
        assert!(released.iter().all(|p| *p == "good-lab" || *p == "gone-lab"), "{released:?}");
        node.stop().await;
        registry.stop().await;
    })
    .await;
}

// ---- hostile images

/// A small PNG whose header declares `width`x`height` (its pixel data is of 1x1).
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = Vec::new();
    image::RgbImage::new(1, 1).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    // Signature (8), IHDR length (4), "IHDR" (4), then width and height; the CRC follows its 13 data bytes.
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([(x * 9) as u8, (y * 5) as u8, (x ^ y) as u8]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Jpeg).unwrap();
    out
}

fn name_of(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_images_are_reported_skipped_and_leave_nothing_stored() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in");
        let registry = TestRegistry::start().await;
        let owner = TestOwner::init();
        let good = write_pngs(&input, 2, 21);
        let full_jpeg = jpeg(40, 32);
        let bad: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty.png", Vec::new(), "not an image"),
            ("zero.png", png_declaring(0, 0), "image header|zero size"),
            // A decompression bomb: refused by its declared size before decoding.
            ("bomb.png", png_declaring(20_000, 20_000), "20000x20000 = 400000000 pixels exceeds the limit"),
            ("cut-early.jpg", full_jpeg[..full_jpeg.len() / 3].to_vec(), "truncated JPEG"),
            // Cut inside its scan: the decoder alone would fill the rest with gray.
            ("cut-scan.jpg", full_jpeg[..full_jpeg.len() * 4 / 5].to_vec(), "truncated JPEG"),
            ("text.webp", b"RIFF\x10\0\0\0WEBPVP8 nonsense bytes".to_vec(), "cannot read image header"),
            (
                "random.jpeg",
                (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(),
                "not an image in a known format",
            ),
        ];
        let bad_paths: Vec<PathBuf> = bad
            .iter()
            .map(|(name, bytes, _)| {
                let path = input.join(name);
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect();

        let node = owner.serve().await;
        let mut admin = node.admin(&owner).await;
        let started = std::time::Instant::now();
        let mut failed_events = Vec::new();
        let summary = admin
            .publish(&owner.job(&registry, "hostile", vec![input.clone()]), |event| {
                if let PublishEvent::File(f) = event
                    && let FileOutcome::Failed(reason) = &f.outcome
                {
                    failed_events.push((f.path.clone(), f.entry, reason.clone()));
                }
            })
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(30), "hostile images took {:?}", started.elapsed());
        assert_eq!(summary.published, good.len(), "{summary}");
        assert_eq!(summary.failed.len(), bad.len(), "{summary}");
        for (name, _, words) in &bad {
            let (_, reason) = summary
                .failed
                .iter()
                .find(|(p, _)| name_of(p) == *name)
                .unwrap_or_else(|| panic!("{name} not reported: {summary}"));
            assert!(words.split('|').any(|w| reason.contains(w)), "{name}: {reason}");
            assert!(!reason.is_empty() && !reason.contains('\n'), "{name}: {reason:?}");
        }
        // Each failure was reported as it happened, before any entry was made of it.
        assert_eq!(failed_events.len(), bad.len());
        assert!(failed_events.iter().all(|(path, entry, _)| path.is_some() && entry.is_none()), "{failed_events:?}");
        node.stop().await;

        // Nothing of the bad files is in the owner's store or in the registry.
        let store = OwnerStore::open(&owner.home.store_dir()).unwrap();
        let dataset: DatasetName = "hostile".parse().unwrap();
        assert_eq!(store.entries(Some(&dataset)).unwrap().len(), good.len());
        for path in &bad_paths {
            let sha = ambishare_shared::ids::sha256(&std::fs::read(path).unwrap());
            assert!(store.source_entry(&dataset, &sha).unwrap().is_none(), "{} left an entry", path.display());
        }
        for path in &good {
            let sha = ambishare_shared::ids::sha256(&std::fs::read(path).unwrap());
            let (id, _) = store.source_entry(&dataset, &sha).unwrap().unwrap();
            assert!(store.key_material(&id).unwrap().is_some());
        }
        assert_eq!(store.key_material_count(), good.len(), "no key kept for a bad file");
        drop(store);
        let client = registry.client().await;
        let owner_id = owner.home.load_signing_key().unwrap().public_key().owner_id();
        let page = client.list_entries(Some(owner_id), None, 100, "").await.unwrap();
        assert_eq!(page.entries.len(), good.len());
        registry.stop().await;
    })
    .await;
}
