//! Hostile requests to the registry over real gRPC: each gets a clear error
//! (its code, and a message naming what is wrong) and leaves the store as it
//! was: the same entries, the same tombstones, no sequence number spent.

#![allow(clippy::unwrap_used)]

mod common;

use ambishare_proto::registry::v1 as rpb;
use ambishare_proto::types::v1 as pb;
use ambishare_registry::{Config, Stats};
use ambishare_shared::EntryId;
use ambishare_shared::entry::deletion_bytes;
use common::*;
use tonic::Code;

/// Every entry id, through one large ListEntries page.
async fn listed(f: &Fixture) -> Vec<String> {
    let page = f.client.list_entries(None, None, 1000, "").await.unwrap();
    assert!(page.next_page_token.is_none());
    page.entries.iter().map(|s| s.id.to_string()).collect()
}

fn assert_status(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, words: &str) {
    let status = result.expect_err("a hostile request was answered");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(words), "expected {words:?} in {:?}", status.message());
}

/// What the store holds, which no refused request may change.
fn footprint(s: &Stats) -> (u64, u64, u64, u64, u64) {
    (s.entries, s.owners, s.models, s.deleted, s.datasets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_requests_and_huge_pages_get_clear_errors_and_change_nothing() {
    timed(async {
        let f = Fixture::with_config(|c| Config { max_message_bytes: 8 << 10, max_code_bytes: 1 << 10, ..c }).await;
        f.client.publish(f.model.entries(&f.key, "faces", 3, 70)).await.unwrap();
        let before = listed(&f).await;
        let mut raw = f.client.raw();

        // Unary requests above the decoding limit, refused before they are parsed.
        let huge = "0".repeat(16 << 10);
        let status = raw.get_entry(rpb::GetEntryRequest { entry_id: huge.clone() }).await.unwrap_err();
        assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");
        assert!(status.message().contains("too large"), "{}", status.message());
        let request = rpb::ListEntriesRequest { page_token: huge.clone(), ..Default::default() };
        let status = raw.list_entries(request).await.unwrap_err();
        assert!(status.message().contains("too large"), "{}", status.message());
        let forged = rpb::DeleteEntryRequest {
            entry_id: EntryId::new().to_string(),
            owner_id: f.key.public_key().owner_id().to_string(),
            requested_unix_ms: now_ms(),
            signature: vec![7; 16 << 10],
        };
        let status = raw.delete_entry(forged).await.unwrap_err();
        assert!(status.message().contains("too large"), "{}", status.message());
        // A publish message above the limit ends its stream, with the same words.
        let big: Vec<pb::Entry> = f.model.entries(&f.key, "faces", 64, 71).iter().map(pb::Entry::from).collect();
        let status = raw_publish(&f.client, vec![big]).await.unwrap_err();
        assert!(status.message().contains("too large"), "{}", status.message());

        // Page sizes far above the maximum.
        for size in [1001, 1 << 20, u32::MAX] {
            let request = rpb::ListEntriesRequest { page_size: size, ..Default::default() };
            assert_status(raw.list_entries(request).await, Code::InvalidArgument, "above the maximum of 1000");
        }
        // The node still answers, and holds what it held.
        assert_eq!(listed(&f).await, before);
        drop((raw, f.client));
        f.node.stop().await;
        let stats = stats_of(f.dir.path()).await;
        assert_eq!(footprint(&stats), (3, 1, 1, 0, 1), "{stats}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_transplanted_signatures_are_refused_and_change_nothing() {
    timed(async {
        let f = Fixture::new().await;
        let owner = f.key.public_key().owner_id();
        let other = owner_key();
        f.client.register_owner(&other, &"other owner".parse().unwrap()).await.unwrap();
        let stored = f.model.entries(&f.key, "faces", 2, 80);
        f.client.publish(stored.clone()).await.unwrap();
        let fresh = f.model.entries(&f.key, "faces", 2, 81);

        // A valid signature of a stored entry attached to another entry.
        let mut transplanted = fresh[0].clone();
        transplanted.signature = stored[0].signature.clone();
        // A stored entry, signature kept, moved to another dataset.
        let mut moved = stored[1].clone();
        moved.dataset = "other-faces".parse().unwrap();
        // An entry signed (validly) by owner B, published under owner A's id.
        let mut wrong_owner = fresh[1].clone();
        wrong_owner.signature = other.sign(&wrong_owner.canonical_bytes()).to_vec();
        // Owner B's own entry, with A's name put on it after signing.
        let mut b_entry = f.model.entries(&other, "faces", 1, 82).remove(0);
        b_entry.owner = owner;

        let cases = [transplanted, moved, wrong_owner, b_entry];
        let acks = raw_publish(&f.client, vec![cases.iter().map(pb::Entry::from).collect()]).await.unwrap();
        assert_eq!(acks.len(), cases.len());
        for (ack, case) in acks.iter().zip(&cases) {
            assert_eq!(ack.code, Code::Unauthenticated as i32, "{ack:?}");
            assert_eq!(ack.outcome, rpb::PublishOutcome::Rejected as i32);
            assert!(ack.message.contains("does not verify"), "{}", ack.message);
            assert!(ack.message.contains(&owner.to_string()), "names the owner it checked: {}", ack.message);
            if case.id != stored[1].id {
                assert_eq!(f.client.get_entry(case.id).await.unwrap_err().code(), Code::NotFound);
            }
        }
        // The stored entry the dataset move aimed at is untouched.
        assert_eq!(f.client.get_entry(stored[1].id).await.unwrap(), stored[1]);

        // Deletions: a valid signature of one deletion, replayed on another entry,
        // under another owner, or at another time.
        let ms = now_ms();
        let signed = rpb::DeleteEntryRequest {
            entry_id: stored[0].id.to_string(),
            owner_id: owner.to_string(),
            requested_unix_ms: ms,
            signature: f.key.sign(&deletion_bytes(&stored[0].id, &owner, ms)).to_vec(),
        };
        let mut raw = f.client.raw();
        let on_other_entry = rpb::DeleteEntryRequest { entry_id: stored[1].id.to_string(), ..signed.clone() };
        assert_status(raw.delete_entry(on_other_entry).await, Code::Unauthenticated, "does not verify");
        let at_other_time = rpb::DeleteEntryRequest { requested_unix_ms: ms + 1, ..signed.clone() };
        assert_status(raw.delete_entry(at_other_time).await, Code::Unauthenticated, "does not verify");
        let other_id = other.public_key().owner_id().to_string();
        let under_other_owner = rpb::DeleteEntryRequest { owner_id: other_id, ..signed.clone() };
        assert_status(raw.delete_entry(under_other_owner).await, Code::Unauthenticated, "does not verify");
        let forged = rpb::DeleteEntryRequest { signature: vec![0; 64], ..signed.clone() };
        assert_status(raw.delete_entry(forged).await, Code::Unauthenticated, "does not verify");
        assert_eq!(listed(&f).await.len(), 2, "no refused deletion removed anything");

        // The deletion itself, then its replay, which changes nothing more.
        assert!(raw.delete_entry(signed.clone()).await.unwrap().into_inner().deleted);
        assert!(!raw.delete_entry(signed).await.unwrap().into_inner().deleted);
        assert_eq!(listed(&f).await, vec![stored[1].id.to_string()]);
        drop((raw, f.client));
        f.node.stop().await;
        let stats = stats_of(f.dir.path()).await;
        assert_eq!(footprint(&stats), (1, 2, 1, 1, 1), "only the signed deletion changed anything: {stats}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_and_other_owners_entries_get_clear_errors_and_change_nothing() {
    timed(async {
        let f = Fixture::new().await;
        let owner = f.key.public_key().owner_id();
        let other = owner_key();
        f.client.register_owner(&other, &"other owner".parse().unwrap()).await.unwrap();
        let entries = f.model.entries(&f.key, "faces", 2, 90);
        f.client.publish(entries.clone()).await.unwrap();
        let before = listed(&f).await;
        let mut raw = f.client.raw();

        let unknown = EntryId::new();
        let status = f.client.get_entry(unknown).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.to_string().contains(&unknown.to_string()), "names the id: {status}");
        let status = f.client.delete_entry(&f.key, unknown).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert!(status.to_string().contains(&unknown.to_string()), "{status}");
        for bad in ["", "not-an-id", &"f".repeat(200), "8c5f6b4e-1234-4abc-8def-0123456789ab"] {
            let status = raw.get_entry(rpb::GetEntryRequest { entry_id: bad.into() }).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
            assert!(!status.message().is_empty());
        }
        // A deletion of A's entry, properly signed by the registered owner B.
        let status = f.client.delete_entry(&other, entries[0].id).await.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.to_string().contains("belongs to another owner"), "{status}");
        // A deletion by an owner the registry never saw.
        let stranger = owner_key();
        let status = f.client.delete_entry(&stranger, entries[0].id).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(status.to_string().contains("not registered"), "{status}");
        // Listing by an unknown owner is empty, not an error.
        let page = f.client.list_entries(Some(stranger.public_key().owner_id()), None, 10, "").await.unwrap();
        assert!(page.entries.is_empty());
        assert_eq!(f.client.get_entry(entries[0].id).await.unwrap(), entries[0]);
        assert_eq!(listed(&f).await, before);
        assert_eq!(f.client.list_entries(Some(owner), None, 10, "").await.unwrap().entries.len(), 2);
        drop((raw, f.client));
        f.node.stop().await;
        let stats = stats_of(f.dir.path()).await;
        assert_eq!(footprint(&stats), (2, 2, 1, 0, 1), "{stats}");
    })
    .await;
}
