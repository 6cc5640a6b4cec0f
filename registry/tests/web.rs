//! The web view over real sockets: a registry with the shipped model's real
//! decoder, entries published over gRPC, pages and JSON fetched over HTTP.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use ambishare_shared::Entry;
use common::{Node, TestModel, http_get, owner_key, test_config, timed};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde_json::Value;

async fn json(addr: SocketAddr, path: &str) -> Value {
    let (status, content_type, body, _) = http_get(addr, path).await;
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    assert_eq!(content_type.as_deref(), Some("application/json"), "{path}");
    serde_json::from_slice(&body).unwrap()
}

async fn page(addr: SocketAddr, path: &str) -> String {
    let (status, content_type, body, headers) = http_get(addr, path).await;
    assert_eq!(status, 200, "{path}");
    assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"), "{path}");
    let csp = headers.get("content-security-policy").unwrap().to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(headers.get("x-content-type-options").unwrap(), "nosniff");
    String::from_utf8(body).unwrap()
}

/// Waits until every entry of a dataset page has its thumbnail rendered.
async fn thumbnails_ready(addr: SocketAddr, path: &str) -> Value {
    for _ in 0..600 {
        let page = json(addr, path).await;
        let states: Vec<&str> =
            page["entries"].as_array().unwrap().iter().map(|e| e["thumbnail"]["state"].as_str().unwrap()).collect();
        assert!(!states.contains(&"unavailable"), "{page}");
        if states.iter().all(|s| *s == "ready") {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("thumbnails not rendered within a minute");
}

struct Published {
    node: Node,
    web: SocketAddr,
    owner: String,
    entries: Vec<Entry>,
    client: ambishare_rpc::RegistryClient,
    key: ambishare_shared::crypto::SigningKey,
    model: TestModel,
    _dir: tempfile::TempDir,
}

/// A registry with the web view, an owner whose name is markup, the photo64
/// model and three entries in "holidays" (one of 2x1 tiles) and one in "cats".
async fn published() -> Published {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with_web(test_config(dir.path())).await;
    let web = node.web.unwrap();
    let client = node.client().await;
    let key = owner_key();
    client.register_owner(&key, &"<b>Ada</b> & \"co\"".parse().unwrap()).await.unwrap();
    let model = TestModel::photo64();
    model.publish(&client, &key).await;
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut entries = vec![
        model.entry(&key, "holidays", 64, 64, &mut rng),
        model.entry(&key, "holidays", 100, 40, &mut rng),
        model.entry(&key, "holidays", 64, 64, &mut rng),
    ];
    entries.push(model.entry(&key, "cats", 64, 64, &mut rng));
    client.publish(entries.clone()).await.unwrap();
    let owner = key.public_key().owner_id().to_string();
    Published { node, web, owner, entries, client, key, model, _dir: dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_api_show_owners_datasets_entries_and_models() {
    timed(async {
        let p = published().await;
        let (web, owner) = (p.web, p.owner.as_str());

        // Home: the owner (escaped), both datasets, counts and bytes.
        let home = page(web, "/").await;
        assert!(home.contains("&lt;b&gt;Ada&lt;/b&gt; &amp; &quot;co&quot;"), "{home}");
        assert!(!home.contains("<b>Ada</b>"));
        assert!(home.contains(&format!("/owners/{owner}/datasets/holidays")));
        let api = json(web, "/api/v1/datasets").await;
        let datasets = api["owners"][0]["datasets"].as_array().unwrap();
        let names: Vec<&str> = datasets.iter().map(|d| d["dataset"].as_str().unwrap()).collect();
        assert_eq!(names, ["cats", "holidays"]);
        assert_eq!(datasets[1]["entries"], 3);
        let holiday_bytes: usize = p.entries[..3].iter().map(|e| e.code_bytes.len()).sum();
        assert_eq!(datasets[1]["code_bytes"], holiday_bytes);
        assert_eq!(datasets[1]["models"][0]["model_id"], p.model.id.to_string());

        // Dataset page: every entry, in publication order, with a thumbnail
        // of its public decode once rendered.
        let path = format!("/api/v1/owners/{owner}/datasets/holidays/entries");
        let listing = thumbnails_ready(web, &path).await;
        let ids: Vec<String> =
            listing["entries"].as_array().unwrap().iter().map(|e| e["entry_id"].as_str().unwrap().to_owned()).collect();
        let expected: Vec<String> = p.entries[..3].iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, expected);
        let html = page(web, &format!("/owners/{owner}/datasets/holidays")).await;
        for id in &ids {
            assert!(html.contains(&format!("/entries/{id}/thumbnail.jpg")), "{html}");
        }
        assert!(!html.contains("pending.svg"), "thumbnails rendered but the page shows placeholders");

        // The thumbnail is a JPEG of the image's shape (never enlarged).
        let (status, content_type, jpeg, _) = http_get(web, &format!("/entries/{}/thumbnail.jpg", ids[1])).await;
        assert_eq!((status, content_type.as_deref()), (200, Some("image/jpeg")));
        let thumb = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (100, 40));

        // Entry page: signature checked, model named, raw code downloadable.
        let entry = &p.entries[1];
        let view = json(web, &format!("/api/v1/entries/{}", entry.id)).await;
        assert_eq!(view["signature"], "valid");
        assert_eq!(view["tiles"], 2);
        assert_eq!(view["model_name"], "photo64");
        assert_eq!((view["width"].as_u64(), view["height"].as_u64()), (Some(100), Some(40)));
        let html = page(web, &format!("/entries/{}", entry.id)).await;
        assert!(html.contains("valid") && html.contains("photo64"));
        let (status, content_type, code, _) = http_get(web, &format!("/entries/{}/code.ambc", entry.id)).await;
        assert_eq!((status, content_type.as_deref()), (200, Some("application/octet-stream")));
        assert_eq!(code, entry.code_bytes);

        // Model page: manifest and file hashes.
        let model = json(web, &format!("/api/v1/models/{}", p.model.id)).await;
        let decoder = hex::encode(ambishare_shared::ids::sha256(&p.model.decoder));
        assert!(model["files"].as_array().unwrap().iter().any(|f| f["role"] == "decoder" && f["sha256"] == decoder));
        assert!(page(web, &format!("/models/{}", p.model.id)).await.contains(&decoder));
        p.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_bounded_and_follow_their_tokens() {
    timed(async {
        let p = published().await;
        let (web, owner) = (p.web, p.owner.as_str());
        let base = format!("/api/v1/owners/{owner}/datasets/holidays/entries");
        let first = json(web, &format!("{base}?limit=2")).await;
        assert_eq!(first["entries"].as_array().unwrap().len(), 2);
        let next = first["next"].as_str().unwrap();
        let second = json(web, &format!("{base}?limit=2&after={next}")).await;
        assert_eq!(second["entries"].as_array().unwrap().len(), 1);
        assert!(second["next"].is_null());
        assert_eq!(second["entries"][0]["entry_id"], p.entries[2].id.to_string());
        // The HTML pager carries the token.
        let html = page(web, &format!("/owners/{owner}/datasets/holidays?limit=2")).await;
        assert!(html.contains(&format!("after={next}")), "{html}");
        // Any limit is clamped to the page bound.
        assert_eq!(json(web, &format!("{base}?limit=100000")).await["entries"].as_array().unwrap().len(), 3);

        // Deleting an entry updates the counts and the listing.
        assert!(p.client.delete_entry(&p.key, p.entries[0].id).await.unwrap());
        let api = json(web, "/api/v1/datasets").await;
        let holidays = &api["owners"][0]["datasets"][1];
        assert_eq!((holidays["dataset"].as_str(), holidays["entries"].as_u64()), (Some("holidays"), Some(2)));
        let (status, _, _, _) = http_get(web, &format!("/entries/{}", p.entries[0].id)).await;
        assert_eq!(status, 404);
        p.node.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_get_clear_errors_and_nothing_else() {
    timed(async {
        let p = published().await;
        let (web, owner) = (p.web, p.owner.as_str());
        let unknown_entry = ambishare_shared::EntryId::new();
        let cases: Vec<(String, u16)> = vec![
            ("/entries/not-a-uuid".into(), 400),
            (format!("/entries/{unknown_entry}"), 404),
            (format!("/entries/{unknown_entry}/thumbnail.jpg"), 404),
            (format!("/entries/{unknown_entry}/code.ambc"), 404),
            ("/models/abc".into(), 400),
            (format!("/models/{}", "0".repeat(64)), 404),
            (format!("/owners/{owner}/datasets/Not_Valid"), 400),
            (format!("/owners/{owner}/datasets/nothing-here"), 404),
            (format!("/owners/{}/datasets/holidays", "f".repeat(32)), 404),
            (format!("/owners/{owner}/datasets/holidays?after=zz"), 400),
            ("/static/../../etc/passwd".into(), 404),
            ("/static/web.css/../../../../etc/passwd".into(), 404),
            ("/etc/passwd".into(), 404),
            ("/?after=not-an-owner".into(), 400),
            ("/api/v1/nothing".into(), 404),
            ("/api/v1/entries/not-a-uuid".into(), 400),
        ];
        for (path, expected) in cases {
            let (status, content_type, body, headers) = http_get(web, &path).await;
            assert_eq!(status, expected, "{path}: {}", String::from_utf8_lossy(&body));
            assert!(headers.contains_key("content-security-policy"), "{path}");
            let body = String::from_utf8_lossy(&body);
            assert!(!body.contains("root:"), "{path} leaked a file");
            if path.starts_with("/api/") {
                assert_eq!(content_type.as_deref(), Some("application/json"), "{path}");
            }
        }
        // A request's text comes back escaped, never as markup.
        let (_, _, body, _) = http_get(web, "/entries/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await;
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("<script>alert"), "{body}");
        p.node.stop().await;
    })
    .await;
}
