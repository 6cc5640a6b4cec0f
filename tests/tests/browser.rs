//! The web views in a real browser: a registry with its web view, an owner
//! that publishes the sample photos, a party that pulls them and serves its
//! gallery; headless Chromium loads every kind of page, runs its script, and
//! the DOM must hold the expected entries with every image loaded.
//!
//! `AMBISHARE_WRITE_SCREENSHOTS=1` also writes the pages' screenshots into docs/.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ambishare_shared::Tier;
use ambishare_tests::browser::{Browser, images};
use ambishare_tests::harness::{TestOwner, TestParty, TestRegistry, repo_root, within};
use ambishare_tests::list_images;

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent.get(&format!("http://{addr}{path}")).call().unwrap();
    assert_eq!(response.status(), 200, "{path}");
    serde_json::from_slice(&response.body_mut().read_to_vec().unwrap()).unwrap()
}

/// Asks for the dataset's thumbnails and waits until all are rendered.
async fn thumbnails_ready(addr: SocketAddr, path: String) {
    for _ in 0..1200 {
        let path = path.clone();
        let page = tokio::task::spawn_blocking(move || get_json(addr, &path)).await.unwrap();
        let states: Vec<String> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["thumbnail"]["state"].as_str().unwrap().to_owned())
            .collect();
        assert!(!states.iter().any(|s| s == "unavailable"), "{page}");
        if states.iter().all(|s| s == "ready") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("thumbnails not rendered within two minutes");
}

/// Loads `url`, checks that every image loaded (the page's script recorded a
/// natural width above 0) and that the DOM names every id; returns the images.
async fn check_page(browser: &Browser, url: &str, ids: &[String]) -> Vec<(String, Option<u32>)> {
    let dom = browser.dom(url).await.unwrap();
    for id in ids {
        assert!(dom.contains(id.as_str()), "{url}: entry {id} missing from the DOM:\n{dom}");
    }
    let imgs = images(&dom);
    for (src, width) in &imgs {
        assert!(matches!(width, Some(w) if *w > 0), "{url}: image {src} did not load ({width:?}):\n{dom}");
    }
    imgs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_web_view_and_gallery_pages_load_in_chromium() {
    within(async {
        let Some(browser) = Browser::find().unwrap() else {
            eprintln!("no Chromium; skipped ({}=1)", ambishare_tests::browser::SKIP_VAR);
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let registry = TestRegistry::start(&dir.path().join("registry")).await.unwrap();
        let owner = TestOwner::start(&dir.path().join("owner")).await.unwrap();
        let samples = list_images(&repo_root().join("deploy/samples")).unwrap();
        let summary =
            owner.publish(&registry, "holidays", &repo_root().join("models/photo64"), samples.clone()).await.unwrap();
        assert_eq!(summary.published, samples.len(), "{summary}");
        let ids: Vec<String> = summary.entries.iter().map(|id| id.to_string()).collect();
        let owner_id = owner.home.load_signing_key().unwrap().public_key().owner_id().to_string();

        let alice =
            TestParty::enroll(&owner, &dir.path().join("alice"), "alice", "holidays", Tier::Full).await.unwrap();
        let out = dir.path().join("decoded");
        let pulled = alice.pull(&registry, &owner, "holidays", &out).await.unwrap();
        assert_eq!(pulled.decoded_total(), samples.len() as u64);

        let web = registry.web_addr;
        thumbnails_ready(web, format!("/api/v1/owners/{owner_id}/datasets/holidays/entries")).await;

        let gallery_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gallery_addr = gallery_listener.local_addr().unwrap();
        let (stop_gallery, gallery_stopped) = tokio::sync::oneshot::channel::<()>();
        let gallery = tokio::spawn(ambishare_client::gallery::serve_gallery(
            ambishare_client::gallery::GalleryOptions::new(&out),
            gallery_listener,
            async {
                let _ = gallery_stopped.await;
            },
        ));

        // Registry: home, dataset (a thumbnail per entry), entry, model.
        let home = format!("http://{web}/");
        let dom = browser.dom(&home).await.unwrap();
        assert!(dom.contains("holidays") && dom.contains(&owner_id), "{dom}");
        let dataset = format!("http://{web}/owners/{owner_id}/datasets/holidays");
        let imgs = check_page(&browser, &dataset, &ids).await;
        let thumbs = imgs.iter().filter(|(src, _)| src.ends_with("/thumbnail.jpg")).count();
        assert_eq!(thumbs, ids.len(), "{imgs:?}");
        let entry = format!("http://{web}/entries/{}", ids[0]);
        let imgs = check_page(&browser, &entry, &ids[..1]).await;
        assert_eq!(imgs.len(), 1);
        let dom = browser.dom(&entry).await.unwrap();
        assert!(dom.contains("valid") && dom.contains("photo64"), "{dom}");
        let model_id = get_json(web, &format!("/api/v1/entries/{}", ids[0]))["model_id"].as_str().unwrap().to_owned();
        let model = format!("http://{web}/models/{model_id}");
        assert!(browser.dom(&model).await.unwrap().contains(&model_id));

        // Gallery: the party's decodes beside the public views.
        let index = format!("http://{gallery_addr}/");
        let imgs = check_page(&browser, &index, &ids).await;
        assert_eq!(imgs.len(), 2 * ids.len(), "a decode and a public view per entry: {imgs:?}");
        assert_eq!(imgs.iter().filter(|(src, _)| src.ends_with(".public.png")).count(), ids.len());
        let gallery_entry = format!("http://{gallery_addr}/e/{}", ids[0]);
        check_page(&browser, &gallery_entry, &ids[..1]).await;

        // Screenshots, which a person can look at.
        let shots: Vec<(&str, &String)> =
            vec![("web-home", &home), ("web-dataset", &dataset), ("web-entry", &entry), ("gallery", &index)];
        let write_docs = std::env::var("AMBISHARE_WRITE_SCREENSHOTS").as_deref() == Ok("1");
        for (name, url) in shots {
            let path = if write_docs {
                repo_root().join("docs").join(format!("{name}.png"))
            } else {
                dir.path().join(format!("{name}.png"))
            };
            browser.screenshot(url, &path, 1280, 860).await.unwrap();
            let shot = image::open(&path).unwrap();
            assert_eq!((shot.width(), shot.height()), (1280, 860));
        }

        let _ = stop_gallery.send(());
        gallery.await.unwrap().unwrap();
        owner.stop().await;
        registry.stop().await.unwrap();
    })
    .await
    .unwrap();
}
