//! The key service over real mutual TLS: who gets which keys, who gets none,
//! revocation on an open channel, the audit log, the admin service.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use ambishare_owner::{AuditQuery, AuditResult, Denial, Error, GrantRequest};
use ambishare_proto::owner::v1 as pb;
use ambishare_rpc::KeyClient;
use ambishare_shared::{EntryId, PartyName, Tier};
use common::*;

/// Owner with two datasets published: `alpha` (3 images) and `beta` (2).
struct World {
    owner: TestOwner,
    registry: TestRegistry,
    alpha: Vec<(std::path::PathBuf, EntryId)>,
    beta: Vec<(std::path::PathBuf, EntryId)>,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    init_runtime();
    let dir = tempfile::tempdir().unwrap();
    let registry = TestRegistry::start().await;
    let owner = TestOwner::init();
    let alpha_files = write_pngs(&dir.path().join("alpha"), 3, 1);
    let beta_files = write_pngs(&dir.path().join("beta"), 2, 2);
    let s = owner.publish(&registry, "alpha", vec![dir.path().join("alpha")]).await;
    assert_eq!((s.published, s.failed.len()), (3, 0), "{s}");
    let s = owner.publish(&registry, "beta", beta_files.clone()).await;
    assert_eq!((s.published, s.failed.len()), (2, 0), "{s}");
    let alpha = alpha_files.iter().map(|f| (f.clone(), owner.entry_of("alpha", f))).collect();
    let beta = beta_files.iter().map(|f| (f.clone(), owner.entry_of("beta", f))).collect();
    World { owner, registry, alpha, beta, _dir: dir }
}

fn ids(entries: &[(std::path::PathBuf, EntryId)]) -> Vec<EntryId> {
    entries.iter().map(|(_, id)| *id).collect()
}

async fn audit(admin: &mut ambishare_owner::AdminClient, party: &str) -> Vec<ambishare_owner::AuditEvent> {
    admin.audit_log(&AuditQuery { party: Some(party.into()), ..Default::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_party_gets_exactly_its_keys_and_they_disambiguate() {
    within(async {
        let w = world().await;
        let node = w.owner.serve().await;
        let mut admin = node.admin(&w.owner).await;
        let lab = enroll(&mut admin, "lab-a", "alpha", Tier::Full, None).await;
        let mut client = KeyClient::connect(&node.url, lab.clone()).await.unwrap();

        let me = client.who_am_i().await.unwrap();
        assert_eq!(me.party.as_str(), "lab-a");
        assert_eq!(me.grants.len(), 1);
        assert_eq!(me.owner_public_key.owner_id(), me.owner_id);

        let unknown = EntryId::new();
        let mut asked = ids(&w.alpha);
        asked.extend(ids(&w.beta));
        asked.push(unknown);
        let answers = client.get_keys(&asked).await.unwrap();
        assert_eq!(answers.len(), asked.len());
        let registry = w.registry.client().await;
        for ((file, id), (answered, result)) in w.alpha.iter().zip(&answers) {
            assert_eq!(answered, id);
            let key = result.as_ref().expect("alpha key released");
            assert_eq!(key.tier(), Tier::Full);
            // The published entry is the owner's, and the key recovers the true code.
            let entry = registry.get_entry(*id).await.unwrap();
            entry.verify(&me.owner_public_key).unwrap();
            let recovered = key.disambiguate(&entry.code).unwrap();
            let truth = true_code(file);
            assert_eq!(recovered.positions(), truth.positions(), "support of {}", file.display());
            let max = truth.values().iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in recovered.values().iter().zip(truth.values()) {
                assert!((a - b).abs() <= max / 100.0 + 1e-4, "{a} vs {b}");
            }
            // The public code alone carries k + k_fake nonzeros a map.
            assert_eq!(entry.code.nnz(), 8);
        }
        for (_, result) in &answers[w.alpha.len()..w.alpha.len() + w.beta.len()] {
            assert_eq!(result.as_ref().err(), Some(&Denial::NotGranted));
        }
        assert_eq!(answers.last().unwrap().1.as_ref().err(), Some(&Denial::UnknownEntry));

        // An id that does not parse is answered on its own.
        let mut raw = raw_key_client(&node.url, &lab.ca_pem, Some((&lab.cert_pem, &lab.key_pem))).await.unwrap();
        let r = raw
            .get_keys(pb::GetKeysRequest { entry_ids: vec!["not-an-id".into(), w.alpha[0].1.to_string()] })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.results[0].result, Some(pb::key_result::Result::Denial(pb::Denial::InvalidId as i32)));
        assert!(matches!(r.results[1].result, Some(pb::key_result::Result::Key(_))));
        // More than 10,000 ids is refused as a whole.
        let too_many = pb::GetKeysRequest { entry_ids: vec![w.alpha[0].1.to_string(); 10_001] };
        let status = raw.get_keys(too_many).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        let events = audit(&mut admin, "lab-a").await;
        let released: HashSet<&str> =
            events.iter().filter(|e| e.result == Some(AuditResult::Released)).map(|e| e.entry_id.as_str()).collect();
        assert_eq!(released.len(), 3);
        assert!(events.iter().any(|e| e.denial == Some(Denial::UnknownEntry) && e.entry_id == unknown.to_string()));
        assert!(events.iter().any(|e| e.denial == Some(Denial::InvalidId)));
        assert!(events.iter().all(|e| e.party == "lab-a"));

        // Thousands of ids in one call: each answered, in order, on its own.
        let mut many: Vec<String> = (0..5_000).map(|_| EntryId::new().to_string()).collect();
        many[1234] = w.alpha[1].1.to_string();
        let r = raw.get_keys(pb::GetKeysRequest { entry_ids: many.clone() }).await.unwrap().into_inner();
        assert_eq!(r.results.len(), many.len());
        assert!(r.results.iter().zip(&many).all(|(answer, id)| &answer.entry_id == id));
        let denied = pb::key_result::Result::Denial(pb::Denial::UnknownEntry as i32);
        for (i, answer) in r.results.iter().enumerate() {
            match i {
                1234 => assert!(matches!(answer.result, Some(pb::key_result::Result::Key(_)))),
                _ => assert_eq!(answer.result.as_ref(), Some(&denied)),
            }
        }
        node.stop().await;
        w.registry.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_grant_gets_preview_keys_only() {
    within(async {
        let w = world().await;
        let node = w.owner.serve().await;
        let mut admin = node.admin(&w.owner).await;
        let lab = enroll(&mut admin, "lab-p", "alpha", Tier::Preview, None).await;
        let mut client = KeyClient::connect(&node.url, lab).await.unwrap();
        let registry = w.registry.client().await;
        let answers = client.get_keys(&ids(&w.alpha)).await.unwrap();
        for ((file, id), (_, result)) in w.alpha.iter().zip(&answers) {
            let key = result.as_ref().unwrap();
            assert_eq!((key.tier(), key.kept()), (Tier::Preview, 2), "preview_k of the tiny model is 2");
            let entry = registry.get_entry(*id).await.unwrap();
            let preview = key.disambiguate(&entry.code).unwrap();
            let truth = true_code(file);
            // Every kept nonzero is a real one, and among the two largest of its map
            // (up to quantization: near-ties may swap).
            for map in 0..truth.shape().map_count() {
                let (pos, _) = preview.map(map);
                let (true_pos, true_val) = truth.map(map);
                let mut mags: Vec<f32> = true_val.iter().map(|v| v.abs()).collect();
                mags.sort_by(|a, b| b.total_cmp(a));
                let tol = mags[0] / 50.0;
                for p in pos {
                    let i = true_pos.iter().position(|q| q == p).expect("fake position released");
                    assert!(true_val[i].abs() >= mags[1] - tol, "a small real nonzero kept in a preview");
                }
            }
        }
        let events = audit(&mut admin, "lab-p").await;
        assert_eq!(events.iter().filter(|e| e.tier == Some(Tier::Preview)).count(), 3);
        assert!(events.iter().all(|e| e.tier != Some(Tier::Full)));
        node.stop().await;
        w.registry.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_get_no_key_bytes() {
    within(async {
        let w = world().await;
        let node = w.owner.serve().await;
        let mut admin = node.admin(&w.owner).await;
        let alpha: Vec<String> = ids(&w.alpha).iter().map(ToString::to_string).collect();
        let request = || pb::GetKeysRequest { entry_ids: alpha.clone() };
        let ca = w.owner.server_ca();

        // No client certificate: the handshake or the first request fails.
        match raw_key_client(&node.url, &ca, None).await {
            Err(_) => {}
            Ok(mut c) => assert!(c.get_keys(request()).await.is_err(), "served without a client certificate"),
        }

        // A certificate from another owner's client CA.
        let stranger = TestOwner::init();
        let other = stranger.admin_identity();
        match raw_key_client(&node.url, &ca, Some((&other.cert_pem, &other.key_pem))).await {
            Err(_) => {}
            Ok(mut c) => assert!(c.get_keys(request()).await.is_err(), "served a certificate of another CA"),
        }

        // The owner's own admin certificate is not a party's.
        let me = w.owner.admin_identity();
        let mut c = raw_key_client(&node.url, &ca, Some((&me.cert_pem, &me.key_pem))).await.unwrap();
        assert_eq!(c.get_keys(request()).await.unwrap_err().code(), tonic::Code::PermissionDenied);

        // Another dataset.
        let beta_only = enroll(&mut admin, "beta-lab", "beta", Tier::Full, None).await;
        let mut c = raw_key_client(&node.url, &ca, Some((&beta_only.cert_pem, &beta_only.key_pem))).await.unwrap();
        let r = c.get_keys(request()).await.unwrap().into_inner();
        assert_eq!(key_bytes(&r), 0);
        assert!(
            r.results.iter().all(|k| k.result == Some(pb::key_result::Result::Denial(pb::Denial::NotGranted as i32)))
        );

        // An expired grant.
        let soon = ambishare_owner::types::now_unix_ms() + 1500;
        let expiring = enroll(&mut admin, "late-lab", "alpha", Tier::Full, Some(soon)).await;
        let mut c = raw_key_client(&node.url, &ca, Some((&expiring.cert_pem, &expiring.key_pem))).await.unwrap();
        assert!(key_bytes(&c.get_keys(request()).await.unwrap().into_inner()) > 0, "valid before expiry");
        tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
        let r = c.get_keys(request()).await.unwrap().into_inner();
        assert_eq!(key_bytes(&r), 0);
        assert!(r.results.iter().all(|k| k.result == Some(pb::key_result::Result::Denial(pb::Denial::Expired as i32))));

        // An expiry past what a date can show is refused at the edge, not stored.
        let far = ambishare_owner::types::now_unix_ms() + 200 * 366 * 86_400_000;
        let refused = admin
            .grant(&GrantRequest {
                party: "far-lab".parse().unwrap(),
                dataset: "alpha".parse().unwrap(),
                tier: Tier::Full,
                expires_unix_ms: Some(far),
                csr_pem: Some(ambishare_rpc::make_csr("far-lab").unwrap().0),
                certificate_days: Some(30),
            })
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("100 years"), "{refused}");
        assert!(admin.list_grants(Some(&"far-lab".parse().unwrap())).await.unwrap().is_empty());

        // A revoked party.
        let revoked = enroll(&mut admin, "gone-lab", "alpha", Tier::Full, None).await;
        assert_eq!(admin.revoke(&"gone-lab".parse().unwrap(), None).await.unwrap(), 1);
        match raw_key_client(&node.url, &ca, Some((&revoked.cert_pem, &revoked.key_pem))).await {
            Err(_) => {}
            Ok(mut c) => assert_eq!(c.get_keys(request()).await.unwrap_err().code(), tonic::Code::PermissionDenied),
        }

        // The audit log names each refusal.
        let all = admin.audit_log(&AuditQuery::default()).await.unwrap();
        let denied = |party: &str, denial: Denial| {
            all.iter().filter(|e| e.party == party && e.denial == Some(denial) && e.action == "GetKeys").count()
        };
        assert_eq!(denied("beta-lab", Denial::NotGranted), 3);
        assert_eq!(denied("late-lab", Denial::Expired), 3);
        assert_eq!(denied("gone-lab", Denial::Revoked), 3);
        assert!(all.iter().any(|e| e.party.contains("admin") && e.result == Some(AuditResult::Denied)));
        assert!(
            all.iter().filter(|e| e.result == Some(AuditResult::Released)).all(|e| e.party == "late-lab"),
            "only the grant before expiry released keys"
        );
        assert!(all.iter().any(|e| e.action == "Revoke" && e.detail.contains("gone-lab")));
        node.stop().await;
        w.registry.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_applies_to_an_open_channel() {
    within(async {
        let w = world().await;
        let node = w.owner.serve().await;
        let mut admin = node.admin(&w.owner).await;
        let lab = enroll(&mut admin, "lab-r", "alpha", Tier::Full, None).await;
        let mut client = KeyClient::connect(&node.url, lab).await.unwrap();
        let alpha = ids(&w.alpha);
        assert!(client.get_keys(&alpha).await.unwrap().iter().all(|(_, r)| r.is_ok()));

        // Revoking the dataset: the same channel's next call gets denials.
        let party: PartyName = "lab-r".parse().unwrap();
        assert_eq!(admin.revoke(&party, Some(&"alpha".parse().unwrap())).await.unwrap(), 1);
        let answers = client.get_keys(&alpha).await.unwrap();
        assert!(answers.iter().all(|(_, r)| r.as_ref().err() == Some(&Denial::Revoked)));

        // Granting it again (no CSR: the party is enrolled) restores access.
        let regrant = GrantRequest {
            party: party.clone(),
            dataset: "alpha".parse().unwrap(),
            tier: Tier::Full,
            expires_unix_ms: None,
            csr_pem: None,
            certificate_days: None,
        };
        let outcome = admin.grant(&regrant).await.unwrap();
        assert!(outcome.certificate_pem.is_none());
        assert!(client.get_keys(&alpha).await.unwrap().iter().all(|(_, r)| r.is_ok()));

        // Revoking the party: its certificate is refused on the open channel.
        admin.revoke(&party, None).await.unwrap();
        match client.get_keys(&alpha).await {
            Err(ambishare_rpc::Error::Rpc(status)) => assert_eq!(status.code(), tonic::Code::PermissionDenied),
            other => panic!("revoked party served: {other:?}"),
        }
        assert!(client.who_am_i().await.is_err());
        // A grant without CSR cannot revive a revoked certificate.
        assert!(admin.grant(&regrant).await.is_err());

        let events = audit(&mut admin, "lab-r").await;
        assert_eq!(events.iter().filter(|e| e.result == Some(AuditResult::Released)).count(), 6);
        assert_eq!(events.iter().filter(|e| e.denial == Some(Denial::Revoked)).count(), 7); // 3 + 3 + WhoAmI
        let grants = admin.list_grants(Some(&party)).await.unwrap();
        assert!(grants.iter().all(|g| g.revoked_unix_ms.is_some()));
        node.stop().await;
        w.registry.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_service_refuses_party_certificates() {
    within(async {
        let w = world().await;
        let node = w.owner.serve().await;
        let mut admin = node.admin(&w.owner).await;
        let lab = enroll(&mut admin, "lab-x", "alpha", Tier::Preview, None).await;
        let mut pretender = ambishare_owner::AdminClient::connect(&node.url, lab).await.unwrap();
        let party: PartyName = "lab-x".parse().unwrap();
        let upgrade = GrantRequest {
            party: party.clone(),
            dataset: "beta".parse().unwrap(),
            tier: Tier::Full,
            expires_unix_ms: None,
            csr_pem: None,
            certificate_days: None,
        };
        for result in [
            pretender.grant(&upgrade).await.map(|_| ()),
            pretender.list_grants(None).await.map(|_| ()),
            pretender.audit_log(&AuditQuery::default()).await.map(|_| ()),
            pretender.revoke(&"someone".parse().unwrap(), None).await.map(|_| ()),
        ] {
            match result {
                Err(Error::Remote(status)) => assert_eq!(status.code(), tonic::Code::PermissionDenied),
                other => panic!("party certificate allowed on OwnerAdmin: {other:?}"),
            }
        }
        let grants = admin.list_grants(Some(&party)).await.unwrap();
        assert_eq!(grants.len(), 1, "nothing was granted");
        let events = audit(&mut admin, "lab-x").await;
        let refused: Vec<&str> =
            events.iter().filter(|e| e.result == Some(AuditResult::Denied)).map(|e| e.action.as_str()).collect();
        assert_eq!(refused, ["Grant", "ListGrants", "AuditLog", "Revoke"]);
        node.stop().await;
        w.registry.stop().await;
    })
    .await;
}

/// Hundreds of calls at once, each audited and made durable: all answered,
/// all audited. (Once sled 0.34 deadlocked here: ids from `generate_id` under
/// concurrent writers, then one `flush_async` a call starving its I/O threads;
/// the audit log now takes plain inserts and one group flush at a time.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_calls_are_all_answered_and_audited() {
    within(async {
        let w = world().await;
        let node = w.owner.serve().await;
        let mut admin = node.admin(&w.owner).await;
        let lab = enroll(&mut admin, "lab-c", "alpha", Tier::Full, None).await;
        let alpha = ids(&w.alpha);
        const CONNECTIONS: usize = 16;
        const CALLS_EACH: usize = 16;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(KeyClient::connect(&node.url, lab.clone()).await.unwrap());
        }
        let calls = clients.iter().flat_map(|c| {
            (0..CALLS_EACH).map(|_| {
                let (mut c, asked) = (c.clone(), alpha.clone());
                tokio::spawn(async move { c.get_keys(&asked).await })
            })
        });
        let answers = futures::future::join_all(calls.collect::<Vec<_>>()).await;
        for answer in answers {
            let keys = answer.unwrap().unwrap();
            assert!(keys.len() == alpha.len() && keys.iter().all(|(_, k)| k.is_ok()));
        }
        let events = audit(&mut admin, "lab-c").await;
        let released = events.iter().filter(|e| e.result == Some(AuditResult::Released)).count();
        assert_eq!(released, CONNECTIONS * CALLS_EACH * alpha.len());
        // Every record has its own sequence number.
        assert_eq!(events.iter().map(|e| e.seq).collect::<HashSet<_>>().len(), events.len());
        node.stop().await;
        w.registry.stop().await;
    })
    .await;
}
