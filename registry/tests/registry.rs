//! The registry end to end: real sled in a temporary directory, real gRPC on
//! 127.0.0.1:0, the typed client and raw protobuf where a client would refuse.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use ambishare_proto::registry::v1 as rpb;
use ambishare_proto::types::v1 as pb;
use ambishare_registry::Config;
use ambishare_rpc::{ClientTlsOptions, PublishOutcome, RegistryClient};
use ambishare_shared::crypto::SigningKey;
use ambishare_shared::entry::{NewEntry, deletion_bytes, registration_bytes};
use ambishare_shared::{DatasetName, DisplayName, Entry, EntryId, ModelId, OwnerId};
use common::*;
use futures::{StreamExt, TryStreamExt, stream};
use prost::Message;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tonic::Code;

fn ids(entries: &[Entry]) -> Vec<EntryId> {
    entries.iter().map(|e| e.id).collect()
}

fn dataset(name: &str) -> DatasetName {
    name.parse().unwrap()
}

/// Every entry of an owner, through ListEntries pages of `page_size`.
async fn list_all(
    client: &RegistryClient,
    owner: Option<OwnerId>,
    ds: Option<&DatasetName>,
    page_size: u32,
) -> Vec<EntryId> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client.list_entries(owner, ds, page_size, &token).await.unwrap();
        out.extend(page.entries.iter().map(|s| s.id));
        match page.next_page_token {
            Some(t) => token = t,
            None => return out,
        }
    }
}

fn resign(entry: &mut Entry, key: &SigningKey) {
    entry.signature = key.sign(&entry.canonical_bytes()).to_vec();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_list_stream_get_round_trip_with_byte_equality() {
    timed(async {
        let f = Fixture::new().await;
        let owner = f.key.public_key().owner_id();
        let entries = f.model.entries(&f.key, "faces", 150, 1);
        let acks = f.client.publish(entries.clone()).await.unwrap();
        assert_eq!(acks.len(), 150);
        assert!(acks.iter().all(|a| a.outcome == PublishOutcome::Stored && a.code == Code::Ok), "{acks:?}");
        assert_eq!(acks.iter().map(|a| a.entry_id).collect::<Vec<_>>(), ids(&entries));

        // Listing: pages in publication order, summaries equal to the entries'.
        assert_eq!(list_all(&f.client, Some(owner), None, 64).await, ids(&entries));
        assert_eq!(list_all(&f.client, Some(owner), Some(&dataset("faces")), 7).await, ids(&entries));
        assert_eq!(list_all(&f.client, None, Some(&dataset("faces")), 1000).await, ids(&entries));
        assert_eq!(list_all(&f.client, None, None, 33).await, ids(&entries));
        assert!(list_all(&f.client, Some(owner), Some(&dataset("other")), 10).await.is_empty());
        let page = f.client.list_entries(Some(owner), None, 0, "").await.unwrap();
        assert_eq!(page.entries.len(), 100, "page size 0 means 100");
        assert_eq!(page.entries[3], entries[3].summary());

        // Streaming: every entry, byte for byte.
        let streamed: Vec<Entry> =
            f.client.stream_entries(Some(owner), None, None).await.unwrap().try_collect().await.unwrap();
        assert_eq!(streamed, entries);
        for (got, sent) in streamed.iter().zip(&entries) {
            assert_eq!(pb::Entry::from(got).encode_to_vec(), pb::Entry::from(sent).encode_to_vec());
        }
        // Resuming after an entry's id, or a page token.
        let rest: Vec<Entry> = f
            .client
            .stream_entries(None, Some(&dataset("faces")), Some(&entries[99].id.to_string()))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(ids(&rest), ids(&entries[100..]));
        let token = page.next_page_token.unwrap();
        let rest: Vec<Entry> =
            f.client.stream_entries(Some(owner), None, Some(&token)).await.unwrap().try_collect().await.unwrap();
        assert_eq!(ids(&rest), ids(&entries[100..]));
        // A client that stops reading early does not hold the node up.
        let first: Vec<_> = f.client.stream_entries(None, None, None).await.unwrap().take(3).collect().await;
        assert_eq!(first.len(), 3);

        // Single entries, raw bytes equal to what was signed.
        let public = f.client.get_owner(owner).await.unwrap();
        for e in entries.iter().step_by(37) {
            let got = f.client.get_entry(e.id).await.unwrap();
            assert_eq!(&got, e);
            got.verify(&public).unwrap();
            let raw = f.client.raw().get_entry(rpb::GetEntryRequest { entry_id: e.id.to_string() }).await.unwrap();
            assert_eq!(raw.into_inner().encode_to_vec(), pb::Entry::from(e).encode_to_vec());
        }
        drop(f.client);
        f.node.stop().await;
        assert_eq!(stats_of(f.dir.path()).await.entries, 150);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_forged_missing_and_wrong_owner_signatures_and_stores_nothing() {
    timed(async {
        let f = Fixture::new().await;
        let other = owner_key();
        f.client.register_owner(&other, &"other owner".parse().unwrap()).await.unwrap();
        let mut entries = f.model.entries(&f.key, "faces", 3, 2);
        entries[0].signature[5] ^= 1; // forged
        entries[1].signature.clear(); // missing
        // Wrong owner: names the fixture's owner, signed by another registered key.
        resign(&mut entries[2], &other);
        // An owner the registry never saw.
        let stranger = owner_key();
        entries.extend(f.model.entries(&stranger, "faces", 1, 3));

        let acks = f.client.publish(entries.clone()).await.unwrap();
        let codes: Vec<Code> = acks.iter().map(|a| a.code).collect();
        assert_eq!(codes, [Code::Unauthenticated; 4]);
        assert!(acks.iter().all(|a| a.outcome == PublishOutcome::Rejected));
        assert!(acks[0].message.contains("does not verify"), "{}", acks[0].message);
        assert!(acks[1].message.contains("not signed"), "{}", acks[1].message);
        assert!(acks[3].message.contains("not registered"), "{}", acks[3].message);
        for e in &entries {
            assert_eq!(f.client.get_entry(e.id).await.unwrap_err().code(), Code::NotFound);
        }
        // A signature of the wrong length is a malformed field.
        let mut p = pb::Entry::from(&f.model.entries(&f.key, "faces", 1, 4)[0]);
        p.signature.truncate(63);
        let acks = raw_publish(&f.client, vec![vec![p]]).await.unwrap();
        assert_eq!(acks[0].code, Code::InvalidArgument as i32);
        assert!(list_all(&f.client, None, None, 100).await.is_empty());
        drop(f.client);
        f.node.stop().await;
        let stats = stats_of(f.dir.path()).await;
        assert_eq!((stats.entries, stats.owners, stats.models), (0, 2, 1));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_malformed_codes() {
    timed(async {
        let f = Fixture::new().await;
        let good = pb::Entry::from(&f.model.entries(&f.key, "faces", 1, 5)[0]);
        let mut cases = Vec::new();
        let mut truncated = good.clone();
        truncated.code.pop();
        cases.push(("truncated", truncated));
        let mut trailing = good.clone();
        trailing.code.push(0);
        cases.push(("trailing", trailing));
        let mut magic = good.clone();
        magic.code[0] = b'X';
        cases.push(("magic", magic));
        let mut empty = good.clone();
        empty.code.clear();
        cases.push(("empty", empty));
        let mut huge_shape = good.clone();
        huge_shape.code[6..10].copy_from_slice(&u32::MAX.to_le_bytes()); // tiles
        cases.push(("tiles", huge_shape));
        let mut id = good.clone();
        id.entry_id = "8c5f6b4e-1234-4abc-8def-0123456789ab".into(); // a v4 UUID
        cases.push(("id", id));
        let names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
        let acks = raw_publish(&f.client, vec![cases.into_iter().map(|(_, p)| p).collect()]).await.unwrap();
        for (name, ack) in names.iter().zip(&acks) {
            assert_eq!(ack.code, Code::InvalidArgument as i32, "{name}: {ack:?}");
            assert_eq!(ack.outcome, rpb::PublishOutcome::Rejected as i32);
        }
        assert!(list_all(&f.client, None, None, 100).await.is_empty());
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_codes_whose_shape_disagrees_with_the_model() {
    timed(async {
        let f = Fixture::new().await;
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let mut entries = Vec::new();
        // Codes of other shapes that claim the fixture's model.
        for (maps, dim, k, k_fake) in [(3, 16, 4, 4), (2, 32, 4, 4), (2, 16, 4, 2)] {
            let mut wrong = TestModel::new("wrong", 8, maps, dim, k, k_fake, 10);
            wrong.id = f.model.id;
            entries.push(wrong.entry(&f.key, "faces", 8, 8, &mut rng));
        }
        // One tile's code for an image of two tiles.
        let mut wide = f.model.entry(&f.key, "faces", 8, 8, &mut rng);
        wide.width = 16;
        resign(&mut wide, &f.key);
        entries.push(wide);
        // A model never published.
        let unknown = TestModel::new("unpublished", 8, 2, 16, 4, 4, 10);
        entries.push(unknown.entry(&f.key, "faces", 8, 8, &mut rng));
        // And a good one, which goes through.
        entries.push(f.model.entry(&f.key, "faces", 20, 9, &mut rng));

        let acks = f.client.publish(entries).await.unwrap();
        let codes: Vec<Code> = acks.iter().map(|a| a.code).collect();
        assert_eq!(
            codes,
            [
                Code::InvalidArgument,
                Code::InvalidArgument,
                Code::InvalidArgument,
                Code::InvalidArgument,
                Code::FailedPrecondition,
                Code::Ok
            ],
            "{acks:?}"
        );
        for (ack, word) in acks.iter().zip(["maps", "dims", "nonzeros", "tiles", "unknown model"]) {
            assert!(ack.message.contains(word), "{word}: {}", ack.message);
        }
        assert_eq!(acks[5].outcome, PublishOutcome::Stored);
        assert_eq!(list_all(&f.client, None, None, 100).await.len(), 1);
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_is_stable_under_concurrent_publishes() {
    timed(async {
        let f = Fixture::new().await;
        let owner = f.key.public_key().owner_id();
        let faces = dataset("faces");
        let initial = f.model.entries(&f.key, "faces", 40, 10);
        f.client.publish(initial.clone()).await.unwrap();
        let later = f.model.entries(&f.key, "faces", 200, 11);
        // Noise in another dataset, published at the same time.
        let noise = f.model.entries(&f.key, "cats", 60, 12);
        let publisher = {
            let (client, later, noise) = (f.client.clone(), later.clone(), noise.clone());
            tokio::spawn(async move {
                for (a, b) in later.chunks(20).zip(noise.chunks(6)) {
                    let acks = client.publish(a.to_vec()).await.unwrap();
                    assert!(acks.iter().all(|a| a.outcome == PublishOutcome::Stored));
                    client.publish(b.to_vec()).await.unwrap();
                }
            })
        };
        let mut seen: Vec<EntryId> = Vec::new();
        let mut token = String::new();
        loop {
            let done = publisher.is_finished();
            let page = f.client.list_entries(Some(owner), Some(&faces), 7, &token).await.unwrap();
            seen.extend(page.entries.iter().map(|s| s.id));
            match page.next_page_token {
                Some(next) => token = next,
                // The end for now: resume after the last entry seen, until the publisher is done.
                None if done => break,
                None => {
                    if let Some(last) = seen.last() {
                        token = last.to_string();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        }
        publisher.await.unwrap();
        // Pages follow the entries' ids (UUIDv7: creation time), with no
        // duplicate and nothing of another dataset. An entry whose position a
        // listing had passed before it was stored is not in that listing
        // (the entries of one message are written concurrently), so the walk
        // concurrent with the publisher may miss some; a listing after it sees all.
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "duplicates in pages");
        let expected: Vec<EntryId> = ids(&initial).into_iter().chain(ids(&later)).collect();
        assert!(seen.is_sorted(), "pages out of id order");
        assert!(seen.iter().all(|id| expected.contains(id)), "an entry of another dataset in the pages");
        assert_eq!(seen[..initial.len()], ids(&initial)[..], "entries stored before the walk are all in it");
        assert_eq!(list_all(&f.client, Some(owner), Some(&faces), 7).await, expected);
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_everything() {
    timed(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(test_config(dir.path())).await;
        let client = node.client().await;
        let key = owner_key();
        let owner = client.register_owner(&key, &"keeper".parse().unwrap()).await.unwrap();
        let model = TestModel::new("big", 8, 2, 16, 4, 4, 700_000); // several chunks
        model.publish(&client, &key).await;
        let entries = model.entries(&key, "faces", 30, 20);
        client.publish(entries.clone()).await.unwrap();
        assert!(client.delete_entry(&key, entries[4].id).await.unwrap());
        drop(client);
        node.stop().await;

        let node = Node::start(test_config(dir.path())).await;
        let client = node.client().await;
        assert_eq!(client.get_owner(owner).await.unwrap(), key.public_key());
        let fetched = client.fetch_model(model.id).await.unwrap();
        assert_eq!(fetched.manifest_bytes, model.manifest_bytes);
        assert_eq!(fetched.encoder.as_deref(), Some(model.encoder.as_slice()));
        assert_eq!(fetched.decoder, model.decoder);
        let mut kept = entries.clone();
        let deleted = kept.remove(4);
        let streamed: Vec<Entry> =
            client.stream_entries(Some(owner), None, None).await.unwrap().try_collect().await.unwrap();
        assert_eq!(streamed, kept);
        assert_eq!(client.get_entry(deleted.id).await.unwrap_err().code(), Code::NotFound);
        let again = client.publish(vec![deleted]).await.unwrap();
        assert_eq!(again[0].code, Code::FailedPrecondition);
        // New entries continue the publication order after the old ones.
        let more = model.entries(&key, "faces", 5, 21);
        client.publish(more.clone()).await.unwrap();
        let expected: Vec<EntryId> = ids(&kept).into_iter().chain(ids(&more)).collect();
        assert_eq!(list_all(&client, Some(owner), None, 10).await, expected);
        drop(client);
        node.stop().await;
        let stats = stats_of(dir.path()).await;
        assert_eq!((stats.entries, stats.deleted, stats.owners, stats.models, stats.datasets), (34, 1, 1, 1, 1));
        // The same counts from the command line (once sled has let go of its lock).
        let mut printed = String::new();
        for _ in 0..100 {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_ambishare-registry"))
                .args(["stats", "--data-dir", dir.path().to_str().unwrap()])
                .output()
                .unwrap();
            printed = String::from_utf8(out.stdout).unwrap();
            if out.status.success() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(printed.contains("entries       34"), "{printed}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_is_idempotent_and_different_bytes_are_refused() {
    timed(async {
        let f = Fixture::new().await;
        let entries = f.model.entries(&f.key, "faces", 10, 30);
        let first = f.client.publish(entries.clone()).await.unwrap();
        assert!(first.iter().all(|a| a.outcome == PublishOutcome::Stored));
        let second = f.client.publish(entries.clone()).await.unwrap();
        assert!(second.iter().all(|a| a.outcome == PublishOutcome::AlreadyStored && a.is_stored()), "{second:?}");
        // The same id with other content (a label), properly signed.
        let e = &entries[0];
        let changed = Entry::create_with_id(
            e.id,
            NewEntry {
                owner: e.owner,
                dataset: e.dataset.clone(),
                model: e.model,
                width: e.width,
                height: e.height,
                label: "changed".into(),
                code: e.code.clone(),
            },
            &f.key,
        )
        .unwrap();
        let acks = f.client.publish(vec![changed]).await.unwrap();
        assert_eq!((acks[0].outcome, acks[0].code), (PublishOutcome::Rejected, Code::AlreadyExists));
        assert_eq!(f.client.get_entry(e.id).await.unwrap(), *e);
        // Twice in one call: stored, then already stored.
        let fresh = f.model.entries(&f.key, "faces", 1, 31).remove(0);
        let acks = f.client.publish(vec![fresh.clone(), fresh]).await.unwrap();
        assert_eq!([acks[0].outcome, acks[1].outcome], [PublishOutcome::Stored, PublishOutcome::AlreadyStored]);
        assert_eq!(list_all(&f.client, None, None, 100).await.len(), 11);
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_oversize_messages_codes_and_batches() {
    timed(async {
        let f = Fixture::with_config(|c| Config {
            max_message_bytes: 8 << 10,
            max_code_bytes: 1 << 10,
            max_entries_per_message: 8,
            ..c
        })
        .await;
        // A message above the size limit ends the stream; nothing of it is stored.
        let big: Vec<pb::Entry> = f.model.entries(&f.key, "faces", 64, 40).iter().map(pb::Entry::from).collect();
        let status = raw_publish(&f.client, vec![big]).await.unwrap_err();
        assert!(matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted), "{status:?}");
        // Too many entries in one message.
        let nine: Vec<pb::Entry> = f.model.entries(&f.key, "faces", 9, 41).iter().map(pb::Entry::from).collect();
        let status = raw_publish(&f.client, vec![nine]).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("at most 8"), "{}", status.message());
        // A code above its limit is refused on its own.
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let wide = f.model.entry(&f.key, "faces", 128, 64, &mut rng);
        assert!(wide.code_bytes.len() > 1 << 10);
        let small = f.model.entry(&f.key, "faces", 8, 8, &mut rng);
        let acks = raw_publish(&f.client, vec![vec![pb::Entry::from(&wide), pb::Entry::from(&small)]]).await.unwrap();
        assert_eq!(acks[0].code, Code::ResourceExhausted as i32);
        assert_eq!(acks[1].outcome, rpb::PublishOutcome::Stored as i32);
        assert_eq!(list_all(&f.client, None, None, 100).await, vec![small.id]);
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_bad_page_sizes_and_tokens() {
    timed(async {
        let f = Fixture::new().await;
        let owner = f.key.public_key().owner_id();
        f.client.publish(f.model.entries(&f.key, "faces", 5, 50)).await.unwrap();
        let err = f.client.list_entries(None, None, 1001, "").await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(f.client.list_entries(None, None, 1000, "").await.is_ok());
        for token in ["zz", "00", "not a token", "0000000000000000ff", &"a".repeat(48)] {
            let err = f.client.list_entries(Some(owner), None, 10, token).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{token}");
        }
        // A token of an owner listing does not fit a dataset-only listing.
        let page = f.client.list_entries(Some(owner), None, 2, "").await.unwrap();
        let token = page.next_page_token.unwrap();
        let err = f.client.list_entries(None, Some(&dataset("faces")), 2, &token).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = f.client.stream_entries(None, None, Some("garbage")).await.err().unwrap();
        assert_eq!(err.code(), Code::InvalidArgument);
        let raw =
            f.client.raw().list_entries(rpb::ListEntriesRequest { owner_id: "ABC".into(), ..Default::default() }).await;
        assert_eq!(raw.unwrap_err().code(), Code::InvalidArgument);
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found_and_bad_ids_invalid() {
    timed(async {
        let f = Fixture::new().await;
        assert_eq!(f.client.get_entry(EntryId::new()).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(f.client.get_owner(OwnerId::from_bytes([9; 16])).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(f.client.fetch_model(ModelId::of_manifest(b"none")).await.unwrap_err().code(), Code::NotFound);
        assert_eq!(f.client.delete_entry(&f.key, EntryId::new()).await.unwrap_err().code(), Code::NotFound);
        let err = f.client.stream_entries(None, None, Some(&EntryId::new().to_string())).await.err().unwrap();
        assert_eq!(err.code(), Code::NotFound);
        let mut raw = f.client.raw();
        let bad = raw.get_entry(rpb::GetEntryRequest { entry_id: "not-an-id".into() }).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        let bad = raw.get_model(rpb::GetModelRequest { model_id: f.model.id.to_string(), roles: vec![7] }).await;
        assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_signed_by_the_owner_and_ids_never_come_back() {
    timed(async {
        let f = Fixture::new().await;
        let owner = f.key.public_key().owner_id();
        let entries = f.model.entries(&f.key, "faces", 3, 60);
        f.client.publish(entries.clone()).await.unwrap();
        let target = entries[0].id;

        // Another registered owner may not delete it.
        let other = owner_key();
        f.client.register_owner(&other, &"other".parse().unwrap()).await.unwrap();
        assert_eq!(f.client.delete_entry(&other, target).await.unwrap_err().code(), Code::PermissionDenied);
        // Nor may anyone sign in the owner's name.
        let ms = now_ms();
        let forged = rpb::DeleteEntryRequest {
            entry_id: target.to_string(),
            owner_id: owner.to_string(),
            requested_unix_ms: ms,
            signature: other.sign(&deletion_bytes(&target, &owner, ms)).to_vec(),
        };
        assert_eq!(f.client.raw().delete_entry(forged).await.unwrap_err().code(), Code::Unauthenticated);
        // A stale request is refused.
        let stale_ms = ms - 10 * 60 * 1000;
        let stale = rpb::DeleteEntryRequest {
            entry_id: target.to_string(),
            owner_id: owner.to_string(),
            requested_unix_ms: stale_ms,
            signature: f.key.sign(&deletion_bytes(&target, &owner, stale_ms)).to_vec(),
        };
        assert_eq!(f.client.raw().delete_entry(stale).await.unwrap_err().code(), Code::InvalidArgument);

        let signed = rpb::DeleteEntryRequest {
            entry_id: target.to_string(),
            owner_id: owner.to_string(),
            requested_unix_ms: ms,
            signature: f.key.sign(&deletion_bytes(&target, &owner, ms)).to_vec(),
        };
        assert!(f.client.raw().delete_entry(signed.clone()).await.unwrap().into_inner().deleted);
        // A replay changes nothing.
        assert!(!f.client.raw().delete_entry(signed).await.unwrap().into_inner().deleted);
        let gone = f.client.get_entry(target).await.unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
        let acks = f.client.publish(vec![entries[0].clone()]).await.unwrap();
        assert_eq!((acks[0].outcome, acks[0].code), (PublishOutcome::Rejected, Code::FailedPrecondition));
        assert_eq!(list_all(&f.client, Some(owner), None, 10).await, ids(&entries[1..]));
        assert_eq!(list_all(&f.client, None, Some(&dataset("faces")), 10).await, ids(&entries[1..]));
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_register_with_proof_of_possession() {
    timed(async {
        let f = Fixture::new().await;
        let key = owner_key();
        let id = f.client.register_owner(&key, &"Ada".parse().unwrap()).await.unwrap();
        assert_eq!(f.client.register_owner(&key, &"Ada again".parse().unwrap()).await.unwrap(), id, "not idempotent");
        let owner = f.client.raw().get_owner(rpb::GetOwnerRequest { owner_id: id.to_string() }).await.unwrap();
        assert_eq!(owner.into_inner().display_name, "Ada");

        let fresh = owner_key();
        let public = fresh.public_key();
        let request = |name: &str, ms: i64, signer: &SigningKey| rpb::RegisterOwnerRequest {
            public_key: public.as_bytes().to_vec(),
            display_name: name.into(),
            requested_unix_ms: ms,
            signature: signer.sign(&registration_bytes(&public, name, ms)).to_vec(),
        };
        let mut raw = f.client.raw();
        let ms = now_ms();
        // Signed by another key: no proof of possession.
        assert_eq!(raw.register_owner(request("x", ms, &key)).await.unwrap_err().code(), Code::Unauthenticated);
        let stale = ms - 6 * 60 * 1000;
        assert_eq!(raw.register_owner(request("x", stale, &fresh)).await.unwrap_err().code(), Code::InvalidArgument);
        let future = ms + 6 * 60 * 1000;
        assert_eq!(raw.register_owner(request("x", future, &fresh)).await.unwrap_err().code(), Code::InvalidArgument);
        let mut unsigned = request("x", ms, &fresh);
        unsigned.signature.clear();
        assert_eq!(raw.register_owner(unsigned).await.unwrap_err().code(), Code::Unauthenticated);
        let mut short = request("x", ms, &fresh);
        short.public_key.pop();
        assert_eq!(raw.register_owner(short).await.unwrap_err().code(), Code::InvalidArgument);
        // Names `DisplayName` refuses are refused, signed or not; empty means no name.
        for bad in ["a\nb".to_owned(), "x".repeat(DisplayName::MAX_LEN + 1)] {
            let refused = raw.register_owner(request(&bad, ms, &fresh)).await.unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{bad:?}: {refused:?}");
        }
        assert_eq!(f.client.get_owner(public.owner_id()).await.unwrap_err().code(), Code::NotFound);
        raw.register_owner(request("", ms, &fresh)).await.unwrap();
        assert_eq!(f.client.get_owner(public.owner_id()).await.unwrap(), public);
        let stored = raw.get_owner(rpb::GetOwnerRequest { owner_id: public.owner_id().to_string() }).await.unwrap();
        assert_eq!(stored.into_inner().display_name, "");
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_round_trip_by_hash_and_bad_uploads_are_refused() {
    timed(async {
        let f = Fixture::new().await;
        let fetched = f.client.fetch_model(f.model.id).await.unwrap();
        assert_eq!(fetched.manifest_bytes, f.model.manifest_bytes);
        assert_eq!(fetched.encoder.as_deref(), Some(f.model.encoder.as_slice()));
        assert_eq!(fetched.decoder, f.model.decoder);
        // Idempotent.
        let (_, created) = f
            .client
            .publish_model(&f.key, &f.model.manifest_bytes, Some(&f.model.encoder), &f.model.decoder)
            .await
            .unwrap();
        assert!(!created);
        // A decoder-only model: the encoder cannot be fetched.
        let public = TestModel::new("decoder-only", 8, 2, 16, 4, 4, 600_000);
        assert!(f.client.has_model(f.model.id).await.unwrap());
        assert!(!f.client.has_model(public.id).await.unwrap(), "a model not uploaded yet is present");
        let (id, created) =
            f.client.publish_model(&f.key, &public.manifest_bytes, None, &public.decoder).await.unwrap();
        assert!(created);
        let fetched = f.client.fetch_model(id).await.unwrap();
        assert_eq!((fetched.encoder, fetched.decoder), (None, public.decoder.clone()));
        let encoder_only =
            rpb::GetModelRequest { model_id: id.to_string(), roles: vec![rpb::ModelFileRole::Encoder as i32] };
        assert_eq!(f.client.raw().get_model(encoder_only).await.unwrap_err().code(), Code::NotFound);

        let other = TestModel::new("other", 8, 2, 16, 4, 4, 1000);
        // Files that do not match the manifest.
        let err = f.client.publish_model(&f.key, &other.manifest_bytes, None, &other.encoder).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // An unregistered owner, and a bad manifest.
        let stranger = owner_key();
        let err = f.client.publish_model(&stranger, &other.manifest_bytes, None, &other.decoder).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert!(err.to_string().contains("not registered"), "{err:?}");
        let err = f.client.publish_model(&f.key, b"{\"format\": 1}", None, &other.decoder).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // A forged signature, and chunks out of place (raw uploads).
        use rpb::publish_model_request::Part;
        let header = |signature: Vec<u8>| rpb::ModelHeader {
            owner_id: f.key.public_key().owner_id().to_string(),
            manifest: other.manifest_bytes.clone(),
            files: vec![rpb::ModelFile {
                role: rpb::ModelFileRole::Decoder as i32,
                sha256: hex::encode(ambishare_shared::ids::sha256(&other.decoder)),
                size: other.decoder.len() as u64,
            }],
            signature,
        };
        let refs = [ambishare_shared::entry::ModelFileRef {
            role: "decoder",
            sha256: ambishare_shared::ids::sha256(&other.decoder),
            size: other.decoder.len() as u64,
        }];
        let good_sig = f.key.sign(&ambishare_shared::entry::model_bytes(
            &f.key.public_key().owner_id(),
            &other.manifest_bytes,
            &refs,
        ));
        let chunk = |offset: u64, data: &[u8]| rpb::PublishModelRequest {
            part: Some(Part::Chunk(rpb::FileChunk {
                sha256: hex::encode(ambishare_shared::ids::sha256(&other.decoder)),
                offset,
                data: data.to_vec(),
            })),
        };
        let mut forged = good_sig;
        forged[0] ^= 1;
        let upload = vec![rpb::PublishModelRequest { part: Some(Part::Header(header(forged.to_vec()))) }];
        let err = f.client.raw().publish_model(stream::iter(upload)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let upload = vec![
            rpb::PublishModelRequest { part: Some(Part::Header(header(good_sig.to_vec()))) },
            chunk(5, &other.decoder[5..]),
        ];
        let err = f.client.raw().publish_model(stream::iter(upload)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let upload = vec![
            rpb::PublishModelRequest { part: Some(Part::Header(header(good_sig.to_vec()))) },
            chunk(0, &other.decoder[..10]),
        ];
        let err = f.client.raw().publish_model(stream::iter(upload)).await.unwrap_err();
        assert!(err.message().contains("incomplete"), "{err:?}");
        let upload = vec![chunk(0, &other.decoder)];
        let err = f.client.raw().publish_model(stream::iter(upload)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(f.client.fetch_model(other.id).await.unwrap_err().code(), Code::NotFound);
        let upload = vec![
            rpb::PublishModelRequest { part: Some(Part::Header(header(good_sig.to_vec()))) },
            chunk(0, &other.decoder),
        ];
        let response = f.client.raw().publish_model(stream::iter(upload)).await.unwrap().into_inner();
        assert_eq!((response.model_id, response.created), (other.id.to_string(), true));
        f.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode_works_and_plaintext_clients_are_refused() {
    timed(async {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // The certificates `ambishare-registry tls-cert` makes.
        let made = ambishare_registry::tls_cert::make(&dir.path().join("tls"), &["localhost".into()], 30).unwrap();
        assert!(ambishare_registry::tls_cert::make(&dir.path().join("tls"), &["localhost".into()], 30).is_err());
        let ca_pem = std::fs::read_to_string(&made.ca_cert).unwrap();
        let (cert_path, key_path) = (made.server_cert, made.server_key);
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
        let tls_config = |c: Config| Config {
            data_dir: dir.path().join("data"),
            tls_cert: Some(cert_path.clone()),
            tls_key: Some(key_path.clone()),
            danger_plaintext: false,
            ..c
        };

        // A key file others may read is refused.
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = ambishare_registry::serve(tls_config(test_config(dir.path())), listener, std::future::pending())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("permissions"), "{err}");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();

        let node = Node::start(tls_config(test_config(dir.path()))).await;
        let port = node.addr.port();
        let tls = ClientTlsOptions { ca_pem: ca_pem.into_bytes(), domain: Some("localhost".into()) };
        let client = RegistryClient::connect(&format!("https://127.0.0.1:{port}"), Some(tls.clone())).await.unwrap();
        let key = owner_key();
        let id = client.register_owner(&key, &"tls owner".parse().unwrap()).await.unwrap();
        assert_eq!(client.get_owner(id).await.unwrap(), key.public_key());

        // Plaintext on the TLS port fails, at connect or at the first request.
        let plaintext = async {
            let c = RegistryClient::connect(&format!("http://127.0.0.1:{port}"), None).await?;
            c.get_owner(id).await
        };
        assert!(plaintext.await.is_err(), "a plaintext client was served on the TLS port");
        // A client that does not trust the CA is refused too.
        let other = ambishare_registry::tls_cert::make(&dir.path().join("other"), &["localhost".into()], 30).unwrap();
        let other_ca = std::fs::read_to_string(other.ca_cert).unwrap();
        let untrusting = async {
            let tls = ClientTlsOptions { ca_pem: other_ca.into_bytes(), domain: Some("localhost".into()) };
            let c = RegistryClient::connect(&format!("https://127.0.0.1:{port}"), Some(tls)).await?;
            c.get_owner(id).await
        };
        assert!(untrusting.await.is_err());
        // And https without a CA is a configuration error of the client.
        assert!(RegistryClient::connect(&format!("https://127.0.0.1:{port}"), None).await.is_err());
        drop(client);
        node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics_are_served() {
    timed(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (listener.local_addr().unwrap(), metrics.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(ambishare_registry::serve_on(
            test_config(dir.path()),
            ambishare_registry::Listeners::grpc(listener).with_metrics(metrics),
            async {
                let _ = stopped.await;
            },
        ));
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: "ambishare.registry.v1.RegistryService".into() })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

        let client = RegistryClient::from_channel(channel);
        let key = owner_key();
        client.register_owner(&key, &"metered".parse().unwrap()).await.unwrap();
        let model = TestModel::tiny();
        model.publish(&client, &key).await;
        client.publish(model.entries(&key, "faces", 5, 70)).await.unwrap();
        let _ = client.get_entry(EntryId::new()).await;
        let streamed: Vec<Entry> = client.stream_entries(None, None, None).await.unwrap().try_collect().await.unwrap();
        assert_eq!(streamed.len(), 5);

        let mut conn = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut body = String::new();
        conn.read_to_string(&mut body).await.unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        for needle in [
            "ambishare_registry_requests_total{method=\"RegisterOwner\",code=\"OK\"} 1",
            "ambishare_registry_requests_total{method=\"GetEntry\",code=\"NOT_FOUND\"} 1",
            "ambishare_registry_entries_stored_total 5",
            "ambishare_registry_entries_streamed_total 5",
            "ambishare_registry_publish_acks_total{outcome=\"stored\"} 5",
            "ambishare_registry_request_duration_seconds_bucket",
        ] {
            assert!(body.contains(needle), "{needle} missing from\n{body}");
        }
        drop(client);
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_open_publishes_and_keeps_every_acknowledged_entry() {
    timed(async {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::start(test_config(dir.path())).await;
        let client = node.client().await;
        let key = owner_key();
        let owner = client.register_owner(&key, &"busy".parse().unwrap()).await.unwrap();
        let model = TestModel::tiny();
        model.publish(&client, &key).await;
        let entries = model.entries(&key, "faces", 20, 80);
        let to_pb = |es: &[Entry]| es.iter().map(pb::Entry::from).collect::<Vec<_>>();

        // A publish stream that is open when shutdown begins...
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut acks =
            client.raw().publish(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        tx.send(rpb::PublishRequest { entries: to_pb(&entries[..10]) }).await.unwrap();
        for _ in 0..10 {
            assert_eq!(acks.message().await.unwrap().unwrap().outcome, rpb::PublishOutcome::Stored as i32);
        }
        let stopping = tokio::spawn(node.stop());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!stopping.is_finished(), "shutdown did not wait for the open stream");
        // ...is still served until it ends, within the grace period.
        tx.send(rpb::PublishRequest { entries: to_pb(&entries[10..]) }).await.unwrap();
        drop(tx);
        let mut late = 0;
        while let Some(ack) = acks.message().await.unwrap() {
            assert_eq!(ack.outcome, rpb::PublishOutcome::Stored as i32);
            late += 1;
        }
        assert_eq!(late, 10);
        stopping.await.unwrap();

        // Everything acknowledged survives; so do the entries of a publish cut by shutdown.
        let node = Node::start(test_config(dir.path())).await;
        let client2 = node.client().await;
        assert_eq!(list_all(&client2, Some(owner), None, 1000).await, ids(&entries));
        let more = model.entries(&key, "faces", 300, 81);
        let publisher = {
            let client = client2.clone();
            let more = more.clone();
            tokio::spawn(async move { client.publish(more).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        node.stop().await;
        let acked: Vec<EntryId> = match publisher.await.unwrap() {
            Ok(acks) => acks.iter().filter(|a| a.is_stored()).map(|a| a.entry_id).collect(),
            Err(_) => Vec::new(),
        };
        drop((client, client2));
        let node = Node::start(test_config(dir.path())).await;
        let client = node.client().await;
        let stored: HashSet<EntryId> = list_all(&client, Some(owner), None, 1000).await.into_iter().collect();
        assert!(acked.iter().all(|id| stored.contains(id)), "an acknowledged entry was lost");
        drop(client);
        node.stop().await;
    })
    .await;
}

#[test]
fn the_client_sends_and_accepts_what_the_registry_does_by_default() {
    assert_eq!(ambishare_rpc::registry::MAX_MESSAGE_BYTES, ambishare_registry::config::DEFAULT_MAX_MESSAGE_BYTES);
}

#[test]
fn the_binary_explains_itself_and_layers_its_configuration() {
    let bin = env!("CARGO_BIN_EXE_ambishare-registry");
    let help = std::process::Command::new(bin).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in
        ["--tls-cert", "--tls-key", "--danger-plaintext", "--metrics-listen", "--data-dir", "AMBISHARE_REGISTRY_LISTEN"]
    {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:1111\"\ndata_dir = \"/file\"\nmax_code_bytes = 1000\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["serve", "--print-config", "--config", file.to_str().unwrap(), "--data-dir", "/flag"])
        .env("AMBISHARE_REGISTRY_LISTEN", "127.0.0.1:2222")
        .env("AMBISHARE_REGISTRY_DATA_DIR", "/env")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Config = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    assert_eq!(printed.listen, "127.0.0.1:2222".parse().unwrap(), "env beats the file");
    assert_eq!(printed.data_dir, std::path::PathBuf::from("/flag"), "flags beat the env");
    assert_eq!(printed.max_code_bytes, 1000, "the file beats the defaults");
    // Without TLS or the danger flag the node refuses to start.
    let out = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", dir.path().join("d").to_str().unwrap()])
        .env_remove("AMBISHARE_REGISTRY_DANGER_PLAINTEXT")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to serve without TLS"));
    let out = std::process::Command::new(bin)
        .args(["stats", "--data-dir", dir.path().join("missing").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no data directory"));
}
