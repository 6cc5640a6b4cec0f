//! Publishing to a real registry, offline and through the running node:
//! resumable without duplicates, bad files skipped, keys served meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ambishare_owner::store::{EntryState, OwnerStore};
use ambishare_owner::{
    AdminClient, AuditQuery, AuditResult, Error, FileOutcome, GrantRequest, PublishEvent, PublishJob, PublishSummary,
};
use ambishare_proto::types::v1 as types_pb;
use ambishare_rpc::KeyClient;
use ambishare_shared::{DatasetName, Entry, EntryId, OwnerId, Tier};
use common::*;
use prost::Message;
use tokio::sync::mpsc;

/// Every entry the registry lists for an owner's dataset.
async fn registry_ids(registry: &TestRegistry, owner: OwnerId, dataset: &str) -> Vec<EntryId> {
    let client = registry.client().await;
    let dataset: DatasetName = dataset.parse().unwrap();
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.list_entries(Some(owner), Some(&dataset), 3, &token).await.unwrap();
        out.extend(page.entries.iter().map(|e| e.id));
        match page.next_page_token {
            Some(t) => token = t,
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_resumes_after_interruption_without_duplicates() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start().await;
        let owner = TestOwner::init();
        let owner_id = owner.home.load_signing_key().unwrap().public_key().owner_id();
        let files = write_pngs(dir.path(), 7, 3);
        // A copy of one image under another name is the same source.
        std::fs::copy(&files[0], dir.path().join("copy-of-first.png")).unwrap();

        // Batches of 2: the first batch is sent, then the run stops after the 3rd
        // entry is prepared (stored with its sealed key) and before it is sent.
        let mut job = owner.job(&registry, "trips", vec![dir.path().to_path_buf()]);
        job.stop_after_prepared = Some(3);
        let first = ambishare_owner::publish(&owner.home, job.clone(), |_| {}).await.unwrap();
        assert!(first.interrupted);
        assert_eq!(first.published, 2);
        assert_eq!(registry_ids(&registry, owner_id, "trips").await.len(), 2);
        let prepared: Vec<EntryId> = {
            let store = OwnerStore::open(&owner.home.store_dir()).unwrap();
            let entries = store.entries(None).unwrap();
            assert_eq!(entries.len(), 3);
            entries.iter().filter(|e| e.state == EntryState::Prepared).map(|e| e.id).collect()
        };
        assert_eq!(prepared.len(), 1);

        // The registry stored the prepared entry but the owner never saw the
        // acknowledgement: the re-send must be idempotent.
        let stored_bytes = {
            let store = OwnerStore::open(&owner.home.store_dir()).unwrap();
            store.signed_entry(&prepared[0]).unwrap().unwrap()
        };
        let entry = Entry::try_from(types_pb::Entry::decode(stored_bytes.as_slice()).unwrap()).unwrap();
        let acks = registry.client().await.publish(vec![entry]).await.unwrap();
        assert!(acks[0].is_stored());

        job.stop_after_prepared = None;
        let second = ambishare_owner::publish(&owner.home, job.clone(), |_| {}).await.unwrap();
        assert!(!second.interrupted);
        assert_eq!((second.resent, second.skipped, second.published), (1, 2, 4), "{second}");
        assert_eq!(second.duplicates, 1);
        assert!(second.failed.is_empty(), "{second}");

        let listed = registry_ids(&registry, owner_id, "trips").await;
        let unique: HashSet<EntryId> = listed.iter().copied().collect();
        assert_eq!(listed.len(), 7, "each source exactly once");
        assert_eq!(unique.len(), 7);
        {
            let store = OwnerStore::open(&owner.home.store_dir()).unwrap();
            let entries = store.entries(None).unwrap();
            assert!(entries.iter().all(|e| e.state == EntryState::Published));
            assert_eq!(entries.iter().map(|e| e.id).collect::<HashSet<_>>(), unique);
        }
        for f in &files {
            assert!(unique.contains(&owner.entry_of("trips", f)));
        }

        let third = ambishare_owner::publish(&owner.home, job, |_| {}).await.unwrap();
        assert_eq!((third.published, third.resent, third.skipped), (0, 0, 7), "{third}");
        // Every file (but the copy) is mapped to its entry, published now or before.
        assert_eq!(third.files.len(), 7);
        assert_eq!(third.files.iter().map(|(_, id)| *id).collect::<HashSet<_>>(), unique);
        assert_eq!(second.files.len(), 7, "new, re-sent and skipped files are all listed");
        assert_eq!(registry_ids(&registry, owner_id, "trips").await.len(), 7);
        registry.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_are_skipped_and_the_rest_published() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start().await;
        let owner = TestOwner::init();
        let owner_id = owner.home.load_signing_key().unwrap().public_key().owner_id();
        let good = write_pngs(&dir.path().join("nested"), 3, 4);
        std::fs::write(dir.path().join("garbage.png"), b"this is not an image").unwrap();
        let png = std::fs::read(&good[0]).unwrap();
        std::fs::write(dir.path().join("truncated.png"), &png[..png.len() / 2]).unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not picked up").unwrap();
        // A huge declared size is refused before decoding.
        let big = image::RgbImage::new(2048, 1024);
        big.save(dir.path().join("too-big.png")).unwrap();

        let summary = owner.publish(&registry, "mixed", vec![dir.path().to_path_buf()]).await;
        assert_eq!(summary.published, 3, "{summary}");
        let failed: Vec<String> =
            summary.failed.iter().map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(failed.len(), 3, "{summary}");
        for name in ["garbage.png", "truncated.png", "too-big.png"] {
            assert!(failed.iter().any(|f| f == name), "{name} not reported: {summary}");
        }
        assert!(summary.failed.iter().all(|(_, reason)| !reason.is_empty() && !reason.contains('\n')));
        assert_eq!(registry_ids(&registry, owner_id, "mixed").await.len(), 3);
        registry.stop().await;
    })
    .await;
}

/// Runs a publish job through the node in a task; its events, with when they arrived, come on the channel.
fn publish_in_background(
    mut admin: AdminClient,
    job: PublishJob,
) -> (tokio::task::JoinHandle<ambishare_owner::Result<PublishSummary>>, mpsc::UnboundedReceiver<(Instant, PublishEvent)>)
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        admin
            .publish(&job, move |event| {
                let _ = tx.send((Instant::now(), event.clone()));
            })
            .await
    });
    (task, rx)
}

fn is_code(result: &ambishare_owner::Result<PublishSummary>, code: tonic::Code) -> bool {
    matches!(result, Err(Error::Remote(status)) if status.code() == code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_node_publishes_while_it_serves_keys() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start().await;
        let owner = TestOwner::init();
        let earlier = owner.publish(&registry, "earlier", write_pngs(&dir.path().join("earlier"), 2, 11)).await;
        let earlier_ids: Vec<EntryId> = earlier.files.iter().map(|(_, id)| *id).collect();
        assert_eq!(earlier_ids.len(), 2, "{earlier}");

        let node = owner.serve().await;
        let mut admin = node.admin(&owner).await;
        let lab = enroll(&mut admin, "lab", "earlier", Tier::Full, None).await;
        let live = GrantRequest {
            party: "lab".parse().unwrap(),
            dataset: "live".parse().unwrap(),
            tier: Tier::Full,
            expires_unix_ms: None,
            csr_pem: None,
            certificate_days: None,
        };
        admin.grant(&live).await.unwrap();

        // The party fetches keys all along.
        let done = Arc::new(AtomicBool::new(false));
        let fetcher = tokio::spawn({
            let (url, lab, done) = (node.url.clone(), lab.clone(), done.clone());
            async move {
                let mut client = KeyClient::connect(&url, lab).await.unwrap();
                let mut answered = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    for (id, key) in client.get_keys(&earlier_ids).await.unwrap() {
                        assert!(key.is_ok(), "key of {id} denied during the job: {key:?}");
                    }
                    answered.push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                answered
            }
        });

        let files = write_pngs(&dir.path().join("live"), 10, 12);
        let mut job = owner.job(&registry, "live", vec![dir.path().join("live")]);
        job.batch = 1;
        let (task, mut events) = publish_in_background(node.admin(&owner).await, job);
        let summary = task.await.unwrap().unwrap();
        done.store(true, Ordering::Relaxed);
        let answered = fetcher.await.unwrap();
        assert_eq!((summary.published, summary.failed.len(), summary.interrupted), (10, 0, false), "{summary}");

        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(event);
        }
        assert!(matches!(seen[0].1, PublishEvent::Started { files: 10, resend: 0 }), "{:?}", seen[0]);
        let published: Vec<&(Instant, PublishEvent)> = seen
            .iter()
            .filter(|(_, e)| matches!(e, PublishEvent::File(f) if f.outcome == FileOutcome::Published))
            .collect();
        assert_eq!(published.len(), 10);
        let (start, end) = (seen[0].0, published[9].0);
        assert!(
            answered.iter().any(|t| *t > start && *t < end),
            "no key request was answered while the job ran ({} in all)",
            answered.len()
        );

        // The new entries' keys, from the same node, without a restart.
        let new_ids: Vec<EntryId> = summary.files.iter().map(|(_, id)| *id).collect();
        assert_eq!(summary.files.iter().map(|(f, _)| f.clone()).collect::<Vec<PathBuf>>(), files);
        let mut client = KeyClient::connect(&node.url, lab).await.unwrap();
        let me = client.who_am_i().await.unwrap();
        let answers = client.get_keys(&new_ids).await.unwrap();
        let registry_client = registry.client().await;
        for ((file, id), (answered_id, key)) in summary.files.iter().zip(&answers) {
            assert_eq!(answered_id, id);
            let key = key.as_ref().expect("new key released");
            let entry = registry_client.get_entry(*id).await.unwrap();
            entry.verify(&me.owner_public_key).unwrap();
            assert_eq!(key.disambiguate(&entry.code).unwrap().positions(), true_code(file).positions());
        }
        let log = admin.audit_log(&AuditQuery { party: Some("admin".into()), ..Default::default() }).await.unwrap();
        assert!(log.iter().any(|e| e.action == "Publish" && e.detail.contains("live")), "{log:?}");
        node.stop().await;
        registry.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_certificate_may_not_publish_and_is_audited() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let owner = TestOwner::init();
        write_pngs(dir.path(), 1, 13);
        let node = owner.serve().await;
        let mut admin = node.admin(&owner).await;
        let lab = enroll(&mut admin, "lab", "d", Tier::Full, None).await;
        let mut as_party = AdminClient::connect(&node.url, lab).await.unwrap();
        let job =
            PublishJob::new("d".parse().unwrap(), vec![dir.path().to_path_buf()], "http://127.0.0.1:1", tiny_model());
        let refused = as_party.publish(&job, |e| panic!("event for a refused job: {e:?}")).await;
        assert!(is_code(&refused, tonic::Code::PermissionDenied), "{refused:?}");
        let log = admin.audit_log(&AuditQuery { party: Some("lab".into()), ..Default::default() }).await.unwrap();
        assert!(
            log.iter().any(|e| e.action == "Publish" && e.result == Some(AuditResult::Denied)),
            "refusal not audited: {log:?}"
        );
        // A relative path is refused at the edge, before anything is done.
        let relative = PublishJob { inputs: vec!["photos".into()], ..job };
        let refused = admin.publish(&relative, |e| panic!("event for a refused job: {e:?}")).await;
        assert!(is_code(&refused, tonic::Code::InvalidArgument), "{refused:?}");
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_through_the_node_resumes_without_duplicates() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start().await;
        let owner = TestOwner::init();
        let owner_id = owner.home.load_signing_key().unwrap().public_key().owner_id();
        let images = dir.path().join("trips");
        let files = write_pngs(&images, 7, 3);
        std::fs::copy(&files[0], images.join("copy-of-first.png")).unwrap();
        let node = owner.serve().await;
        let mut admin = node.admin(&owner).await;

        // Stopped after the 3rd entry is prepared, before it is sent (as a crash there would).
        let mut job = owner.job(&registry, "trips", vec![images.clone()]);
        job.stop_after_prepared = Some(3);
        let first = admin.publish(&job, |_| {}).await.unwrap();
        assert!(first.interrupted, "{first}");
        assert_eq!(first.published, 2, "{first}");
        assert_eq!(registry_ids(&registry, owner_id, "trips").await.len(), 2);

        // Run again; meanwhile a second job is refused (one at a time).
        job.stop_after_prepared = None;
        let (task, mut events) = publish_in_background(node.admin(&owner).await, job.clone());
        let (_, started) = events.recv().await.unwrap();
        assert_eq!(started, PublishEvent::Started { files: 8, resend: 1 });
        let refused = admin.publish(&job, |_| {}).await;
        assert!(is_code(&refused, tonic::Code::FailedPrecondition), "{refused:?}");
        let second = task.await.unwrap().unwrap();
        assert!(!second.interrupted);
        assert_eq!((second.resent, second.skipped, second.published), (1, 2, 4), "{second}");
        assert_eq!(second.duplicates, 1);
        assert!(second.failed.is_empty(), "{second}");
        assert_eq!(second.files.len(), 7, "new, re-sent and skipped files are all listed");

        let third = admin.publish(&job, |_| {}).await.unwrap();
        assert_eq!((third.published, third.resent, third.skipped), (0, 0, 7), "{third}");
        assert_eq!(third.files, second.files);
        let listed = registry_ids(&registry, owner_id, "trips").await;
        let unique: HashSet<EntryId> = listed.iter().copied().collect();
        assert_eq!((listed.len(), unique.len()), (7, 7), "each source exactly once");

        // The caller goes away: the node stops the job after its batch; the next run finishes it.
        let many = dir.path().join("many");
        write_pngs(&many, 30, 21);
        let mut job = owner.job(&registry, "many", vec![many.clone()]);
        job.batch = 1;
        let (task, mut events) = publish_in_background(node.admin(&owner).await, job.clone());
        loop {
            match events.recv().await {
                Some((_, PublishEvent::File(_))) => break,
                Some(_) => continue,
                None => panic!("the job ended before its first file: {:?}", task.await),
            }
        }
        task.abort();
        let _ = task.await;
        let rest = loop {
            let result = admin.publish(&job, |_| {}).await;
            if is_code(&result, tonic::Code::FailedPrecondition) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            break result.unwrap();
        };
        assert!(rest.failed.is_empty() && !rest.interrupted, "{rest}");
        assert_eq!(rest.published + rest.resent + rest.skipped, 30, "{rest}");
        assert!(rest.skipped >= 1 && rest.published >= 1, "the first job was not stopped early: {rest}");
        let listed = registry_ids(&registry, owner_id, "many").await;
        assert_eq!((listed.len(), listed.iter().collect::<HashSet<_>>().len()), (30, 30));
        let log = admin.audit_log(&AuditQuery { party: Some("admin".into()), ..Default::default() }).await.unwrap();
        assert!(
            log.iter()
                .any(|e| e.action == "Publish" && e.detail.contains("many") && e.detail.contains("stopped early"))
        );

        // The node stops while a job runs: the job ends after its batch and is waited for;
        // the store is then free, and an offline run finishes the job.
        let late = dir.path().join("late");
        write_pngs(&late, 30, 22);
        let mut job = owner.job(&registry, "late", vec![late.clone()]);
        job.batch = 1;
        let (task, mut events) = publish_in_background(node.admin(&owner).await, job.clone());
        loop {
            match events.recv().await {
                Some((_, PublishEvent::File(_))) => break,
                Some(_) => continue,
                None => panic!("the job ended before its first file: {:?}", task.await),
            }
        }
        node.stop().await;
        let stopped = task.await.unwrap().unwrap();
        assert!(stopped.interrupted && stopped.published >= 1, "{stopped}");
        let rest = owner.publish(&registry, "late", vec![late]).await;
        assert_eq!(rest.skipped, stopped.published, "{rest}");
        assert_eq!(rest.published + rest.resent + rest.skipped, 30, "{rest}");
        let listed = registry_ids(&registry, owner_id, "late").await;
        assert_eq!((listed.len(), listed.iter().collect::<HashSet<_>>().len()), (30, 30));

        let store = OwnerStore::open(&owner.home.store_dir()).unwrap();
        let entries = store.entries(Some(&"trips".parse().unwrap())).unwrap();
        assert!(entries.iter().all(|e| e.state == EntryState::Published));
        assert_eq!(entries.iter().map(|e| e.id).collect::<HashSet<_>>(), unique);
        registry.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_that_differs_from_its_manifest_is_refused_and_nothing_published() {
    within(async {
        init_runtime();
        let dir = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start().await;
        let owner = TestOwner::init();
        // A copy of the tiny model whose decoder lost one byte: its hash no longer matches.
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        for file in std::fs::read_dir(tiny_model()).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, model.join(file.file_name().unwrap())).unwrap();
        }
        let manifest = ambishare_shared::Manifest::parse(&std::fs::read(model.join("manifest.json")).unwrap()).unwrap();
        let decoder = model.join(&manifest.decoder.file);
        let mut bytes = std::fs::read(&decoder).unwrap();
        bytes.pop();
        std::fs::write(&decoder, bytes).unwrap();
        let images = write_pngs(&dir.path().join("in"), 2, 4);
        let job = PublishJob { model_dir: model, ..owner.job(&registry, "tampered", images) };
        let err = ambishare_owner::publish(&owner.home, job, |_| {}).await.unwrap_err();
        assert!(err.to_string().contains("the manifest pins"), "{err}");
        let client = registry.client().await;
        let model_id =
            ambishare_shared::ModelId::of_manifest(&std::fs::read(tiny_model().join("manifest.json")).unwrap());
        assert!(!client.has_model(model_id).await.unwrap(), "the tampered model reached the registry");
        registry.stop().await;
    })
    .await;
}
