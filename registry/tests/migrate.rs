//! `ambishare-registry migrate`: a sled registry copied into a real SeaweedFS
//! (into a second sled directory where `weed` is missing, after a loud skip
//! notice; a failure under `AMBISHARE_REQUIRE_S3=1` as in CI). The copy is
//! served as it was, a record that fails its check is reported and left out,
//! and a second run copies nothing twice.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../db/tests/seaweed/mod.rs"]
mod seaweed;

use std::time::Duration;

use ambishare_db::{Bytes, Namespace, StoreConfig};
use ambishare_proto::types::v1 as pb;
use ambishare_registry::{Cli, Config, Limits, migrate};
use ambishare_shared::{Entry, EntryId};
use clap::Parser;
use common::{Node, TestModel, owner_key, test_config};
use futures::TryStreamExt;
use prost::Message;
use seaweed::{Seaweed, weed_or_skip};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrate_copies_a_sled_registry_checking_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let weed = weed_or_skip();
    let seaweed = match weed {
        Some(weed) => Some(tokio::task::spawn_blocking(move || Seaweed::start(&weed)).await.unwrap()),
        None => None,
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        // A registry on sled: an owner, a model, two datasets, one deletion.
        let source_dir = dir.path().join("source");
        let node = Node::start(test_config(&source_dir)).await;
        let client = node.client().await;
        let key = owner_key();
        let owner = client.register_owner(&key, &"migrating owner".parse().unwrap()).await.unwrap();
        let model = TestModel::sixty_four();
        model.publish(&client, &key).await;
        let mut published = model.entries(&key, "faces", 300, 1);
        published.extend(model.entries(&key, "streets", 40, 2));
        assert!(client.publish(published.clone()).await.unwrap().iter().all(|a| a.is_stored()));
        let deleted = published[7].id;
        assert!(client.delete_entry(&key, deleted).await.unwrap());
        let before: Vec<Entry> = client.stream_entries(None, None, None).await.unwrap().try_collect().await.unwrap();
        assert_eq!(before.len(), 339);
        drop(client);
        node.stop().await;

        // A forged record slipped into the source: a valid entry's fields and
        // signature under another id. The signature does not cover it.
        let source = StoreConfig::Sled { path: source_dir.clone(), cache_capacity: 16 << 20 };
        let forged_id = EntryId::new();
        {
            let store = source.open().await.unwrap();
            let mut forged = pb::Entry::from(&published[0]);
            forged.entry_id = forged_id.to_string();
            let entries = Namespace::new("entries").unwrap();
            store.kv().put(&entries, forged_id.as_bytes(), Bytes::from(forged.encode_to_vec())).await.unwrap();
            store.kv().flush().await.unwrap();
        }

        // The target, in the command-line form a user gives.
        let to = match &seaweed {
            Some(seaweed) => seaweed.store_url("migrated"),
            None => format!("sled:{}", dir.path().join("target").display()),
        };
        let target: StoreConfig = to.parse().unwrap();
        // Everything is copied but the forgery, which fails the run.
        let from = format!("sled:{}", source_dir.display());
        let cli =
            Cli::try_parse_from(["ambishare-registry", "migrate", "--from", &from, "--to", &to, "--quiet"]).unwrap();
        let err = ambishare_registry::run(cli).await.unwrap_err().to_string();
        assert!(err.contains("1 records were not copied"), "{err}");
        let report = migrate::migrate(&source, &target, Limits::default(), false).await.unwrap();
        // The run above is the second: nothing new, nothing copied twice.
        assert_eq!((report.owners, report.models, report.tombstones), (1, 1, 1), "{report}");
        assert_eq!((report.entries_stored, report.entries_already_stored), (0, 339), "{report}");
        assert_eq!(report.refusal_count, 1, "{report}");
        assert!(report.refusals[0].contains(&forged_id.to_string()), "{report}");
        assert!(report.refusals[0].contains("signature"), "{report}");

        // The copy serves what the source did: same entries in the same order,
        // the owner, the model's files; the deleted id stays deleted.
        let node = Node::start(Config { store: Some(target.clone()), ..test_config(&dir.path().join("unused")) }).await;
        let client = node.client().await;
        let after: Vec<Entry> = client.stream_entries(None, None, None).await.unwrap().try_collect().await.unwrap();
        assert_eq!(after, before);
        let streets: Vec<Entry> = client
            .stream_entries(Some(owner), Some(&"streets".parse().unwrap()), None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(streets.len(), 40);
        assert_eq!(client.get_owner(owner).await.unwrap(), key.public_key());
        let fetched = client.fetch_model(model.id).await.unwrap();
        assert_eq!(
            (fetched.encoder.as_deref(), fetched.decoder.as_slice()),
            (Some(&model.encoder[..]), &model.decoder[..])
        );
        let again = client.publish(vec![published[7].clone()]).await.unwrap();
        assert!(!again[0].is_stored(), "a deleted id was published again after migration: {again:?}");
        assert_eq!(client.get_entry(forged_id).await.unwrap_err().code(), tonic::Code::NotFound);
        drop(client);
        node.stop().await;
        let check = ambishare_registry::check_store(target.open().await.unwrap()).await.unwrap();
        assert_eq!(
            (check.problem_count, check.orphan_index_keys, check.entries.len()),
            (0, 0, 339),
            "{:?}",
            check.problems
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_is_not_its_entry_canonical_encoding_is_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        let source_dir = dir.path().join("source");
        let node = Node::start(test_config(&source_dir)).await;
        let client = node.client().await;
        let key = owner_key();
        client.register_owner(&key, &"owner".parse().unwrap()).await.unwrap();
        let model = TestModel::tiny();
        model.publish(&client, &key).await;
        let published = model.entries(&key, "faces", 3, 9);
        assert!(client.publish(published.clone()).await.unwrap().iter().all(|a| a.is_stored()));
        drop(client);
        node.stop().await;

        // The genuine entry's record with an unknown field appended: it decodes
        // to the same signed entry, but its bytes are not the ones signed.
        let source = StoreConfig::Sled { path: source_dir, cache_capacity: 16 << 20 };
        {
            let store = source.open().await.unwrap();
            let mut padded = pb::Entry::from(&published[1]).encode_to_vec();
            padded.extend_from_slice(&[0x98, 0x06, 0x01]); // field 99, varint 1
            let entries = Namespace::new("entries").unwrap();
            store.kv().put(&entries, published[1].id.as_bytes(), Bytes::from(padded)).await.unwrap();
            store.kv().flush().await.unwrap();
        }
        let target = StoreConfig::Sled { path: dir.path().join("target"), cache_capacity: 16 << 20 };
        let report = migrate::migrate(&source, &target, Limits::default(), false).await.unwrap();
        assert_eq!((report.entries_stored, report.refusal_count), (2, 1), "{report}");
        assert!(report.refusals[0].contains(&published[1].id.to_string()), "{report}");
        assert!(report.refusals[0].contains("canonical encoding"), "{report}");
    })
    .await
    .unwrap();
}
