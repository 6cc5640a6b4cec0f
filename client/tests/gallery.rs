//! The gallery served for real on 127.0.0.1:0 and read over a socket with a
//! raw HTTP/1.1 client, from a folder laid out as `pull` writes it (PNGs from
//! the image crate, sidecars from the client's own type).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ambishare_client::gallery::{CONTENT_SECURITY_POLICY, GalleryOptions, PAGE_SIZE, serve_gallery};
use ambishare_client::sidecar::{Sidecar, png_path, public_png_path, sidecar_path};
use ambishare_shared::timestamp::rfc3339_from_unix_ms;
use ambishare_shared::{EntryId, ModelId, OwnerId, Tier};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Every test's limit: a hung server fails the test instead of the suite.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A response as read off the socket.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Entry cards on an index page.
    fn cards(&self) -> usize {
        self.text().matches("<article class=\"card\"").count()
    }

    fn assert_security_headers(&self) {
        assert_eq!(self.header("content-security-policy"), Some(CONTENT_SECURITY_POLICY), "{self:?}");
        assert_eq!(self.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(self.header("referrer-policy"), Some("no-referrer"));
    }
}

/// Sends `target` as the request target, exactly as given (no normalization), and reads the reply.
async fn get_as(addr: SocketAddr, target: &str, host: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: gallery-test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse_reply(&raw)
}

async fn get(addr: SocketAddr, target: &str) -> Reply {
    get_as(addr, target, &addr.to_string()).await
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts.next().unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        assert_eq!(body.len(), len.parse::<usize>().unwrap(), "body length");
    }
    Reply { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&data[..eol]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[eol + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A gallery serving `dir` on 127.0.0.1:0, stopped on drop.
struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(dir: &Path) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve_gallery(GalleryOptions::new(dir), listener, async move {
        let _ = stopped.await;
    }));
    Server { addr, stop: Some(stop) }
}

/// One entry as `pull` leaves it: `<id>.png`, `<id>.public.png` (when
/// `public_view`) and the sidecar last.
fn write_entry(dir: &Path, dataset: &str, tier: Tier, created_unix_ms: i64, public_view: bool) -> Sidecar {
    let id = EntryId::new();
    let sidecar = Sidecar {
        entry_id: id,
        owner_id: OwnerId::from_public_key(&[9; 32]),
        dataset: dataset.parse().unwrap(),
        model_id: ModelId::of_manifest(b"photo64"),
        width: 24,
        height: 16,
        created: rfc3339_from_unix_ms(created_unix_ms),
        label: String::new(),
        tier,
        pulled_at: rfc3339_from_unix_ms(created_unix_ms + 60_000),
        public_view,
    };
    image::RgbImage::from_pixel(24, 16, image::Rgb([200, 40, 40])).save(png_path(dir, id)).unwrap();
    if public_view {
        image::RgbImage::from_pixel(24, 16, image::Rgb([90, 90, 90])).save(public_png_path(dir, id)).unwrap();
    }
    sidecar.write(dir).unwrap();
    sidecar
}

const DAY_MS: i64 = 86_400_000;
const T0: i64 = 1_790_000_000_000;

async fn within_timeout<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

#[tokio::test]
async fn index_lists_entries_newest_first_with_dataset_and_tier() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let old = write_entry(dir.path(), "holidays", Tier::Full, T0, true);
        let new = write_entry(dir.path(), "lab-scans", Tier::Preview, T0 + 2 * DAY_MS, true);
        let mid = write_entry(dir.path(), "holidays", Tier::Full, T0 + DAY_MS, false);
        let server = start(dir.path()).await;

        let reply = get(server.addr, "/").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.header("content-type"), Some("text/html; charset=utf-8"));
        reply.assert_security_headers();
        let html = reply.text();
        assert_eq!(reply.cards(), 3, "{html}");
        let at = |s: &Sidecar| html.find(&format!("data-entry=\"{}\"", s.entry_id)).unwrap();
        assert!(at(&new) < at(&mid) && at(&mid) < at(&old), "newest first: {html}");
        for s in [&old, &new, &mid] {
            assert!(html.contains(&format!("href=\"/e/{}\"", s.entry_id)), "entry link of {}", s.entry_id);
            assert!(html.contains(&format!("src=\"/img/{}.png\"", s.entry_id)));
        }
        assert!(html.contains(&format!("src=\"/img/{}.public.png\"", new.entry_id)));
        assert!(!html.contains(&format!("src=\"/img/{}.public.png\"", mid.entry_id)), "no public view was written");
        assert!(html.contains("pulled with --no-public-view"));
        assert!(html.contains("what the public sees"));
        assert!(html.contains("<dd class=\"tier\">full</dd>") && html.contains("<dd class=\"tier\">preview</dd>"));
        assert!(html.contains("holidays (2)") && html.contains("lab-scans (1)"), "dataset groups: {html}");
        assert!(html.contains(&rfc3339_from_unix_ms(T0)[..10]), "created date shown");
        assert!(html.contains("href=\"/static/gallery.css\"") && html.contains("src=\"/static/gallery.js\""));
        assert!(!html.contains("style=") && !html.contains("<script>"), "nothing inline for the CSP to block");
    })
    .await;
}

#[tokio::test]
async fn dataset_query_filters_the_index() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let a = write_entry(dir.path(), "holidays", Tier::Full, T0, true);
        let b = write_entry(dir.path(), "lab-scans", Tier::Preview, T0 + DAY_MS, true);
        let server = start(dir.path()).await;

        let reply = get(server.addr, "/?dataset=lab-scans").await;
        assert_eq!(reply.status, 200);
        let html = reply.text();
        assert_eq!(reply.cards(), 1, "{html}");
        assert!(html.contains(&b.entry_id.to_string()) && !html.contains(&a.entry_id.to_string()));
        assert!(html.contains("<span class=\"current\">lab-scans (1)</span>"), "{html}");

        let none = get(server.addr, "/?dataset=nothing-here").await;
        assert_eq!(none.status, 200);
        assert_eq!(none.cards(), 0);
        assert!(none.text().contains("No entries in this dataset"));

        for bad in ["/?dataset=Holidays", "/?dataset=..%2Fetc", "/?dataset=%3Cscript%3E"] {
            let reply = get(server.addr, bad).await;
            assert_eq!(reply.status, 400, "{bad}: {reply:?}");
            reply.assert_security_headers();
            assert!(!reply.text().contains("<script>"), "the reason is escaped");
        }
    })
    .await;
}

#[tokio::test]
async fn index_pages_sixty_entries_at_a_time() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        // Sidecars alone are enough for the index.
        let mut ids = Vec::new();
        for i in 0..=PAGE_SIZE as i64 {
            let id = EntryId::new();
            let mut s = Sidecar::from_json(&sample_json(id), Path::new("t")).unwrap();
            s.created = rfc3339_from_unix_ms(T0 + i * 1000);
            s.write(dir.path()).unwrap();
            ids.push(id);
        }
        let server = start(dir.path()).await;

        let first = get(server.addr, "/").await;
        assert_eq!(first.cards(), PAGE_SIZE);
        assert!(first.text().contains("page 1 of 2 (61 entries)"), "{}", first.text());
        assert!(first.text().contains("href=\"/?page=2\""));
        assert!(first.text().contains(&ids[PAGE_SIZE].to_string()), "the newest is on page 1");

        let second = get(server.addr, "/?page=2").await;
        assert_eq!(second.cards(), 1);
        assert!(second.text().contains(&ids[0].to_string()), "the oldest is on the last page");
        assert!(second.text().contains("href=\"/\""));

        let past = get(server.addr, "/?page=999999").await;
        assert_eq!((past.status, past.cards()), (200, 1), "past the end reads as the last page");
        for bad in ["/?page=0", "/?page=-1", "/?page=two", "/?page=99999999999999999999999"] {
            assert_eq!(get(server.addr, bad).await.status, 400, "{bad}");
        }
        let filtered = get(server.addr, "/?dataset=d&page=2").await;
        assert_eq!(filtered.cards(), 1);
        assert!(filtered.text().contains("href=\"/?dataset=d\""), "paging keeps the filter");
    })
    .await;
}

fn sample_json(id: EntryId) -> Vec<u8> {
    format!(
        r#"{{"entry_id":"{id}","owner_id":"{}","dataset":"d","model_id":"{}","width":8,"height":8,
           "created":"x","label":"","tier":"full","pulled_at":"x","public_view":true}}"#,
        OwnerId::from_public_key(&[1; 32]),
        ModelId::of_manifest(b"m")
    )
    .into_bytes()
}

#[tokio::test]
async fn images_are_served_as_png() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let s = write_entry(dir.path(), "holidays", Tier::Full, T0, true);
        let bare = write_entry(dir.path(), "holidays", Tier::Full, T0, false);
        let server = start(dir.path()).await;

        for (target, path) in [
            (format!("/img/{}.png", s.entry_id), png_path(dir.path(), s.entry_id)),
            (format!("/img/{}.public.png", s.entry_id), public_png_path(dir.path(), s.entry_id)),
        ] {
            let reply = get(server.addr, &target).await;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(reply.header("content-type"), Some("image/png"));
            reply.assert_security_headers();
            assert_eq!(reply.body, std::fs::read(&path).unwrap());
            let decoded = image::load_from_memory_with_format(&reply.body, image::ImageFormat::Png).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (24, 16));
        }
        let upper = get(server.addr, &format!("/img/{}.png", s.entry_id.to_string().to_uppercase())).await;
        assert_eq!(upper.status, 200, "the id is parsed, then written canonically");
        let missing = get(server.addr, &format!("/img/{}.public.png", bare.entry_id)).await;
        assert_eq!(missing.status, 404);
    })
    .await;
}

#[tokio::test]
async fn hostile_and_unknown_paths_get_400_or_404() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let s = write_entry(dir.path(), "holidays", Tier::Full, T0, true);
        // Something a traversal would find, beside the folder served.
        std::fs::write(dir.path().join("secret.png"), b"not for the web").unwrap();
        let server = start(dir.path()).await;
        let unknown = EntryId::new();

        for (target, status) in [
            ("/img/../../etc/passwd".to_owned(), 404),
            ("/img/..%2F..%2Fetc%2Fpasswd".to_owned(), 400),
            ("/img/..%2Fsecret.png".to_owned(), 400),
            ("/img/secret.png".to_owned(), 400),
            ("/img/not-a-uuid.png".to_owned(), 400),
            ("/img/8c5f6b4e-1234-4abc-8def-0123456789ab.png".to_owned(), 400), // a v4 UUID
            (format!("/img/{}.json", s.entry_id), 400),
            (format!("/img/{unknown}.png"), 404),
            (format!("/img/{unknown}.public.png"), 404),
            ("/e/not-a-uuid".to_owned(), 400),
            (format!("/e/{unknown}"), 404),
            ("/e/../../etc/passwd".to_owned(), 404),
            ("/nowhere".to_owned(), 404),
            ("/static/../Cargo.toml".to_owned(), 404),
        ] {
            let reply = get(server.addr, &target).await;
            assert_eq!(reply.status, status, "{target}: {}", reply.text());
            reply.assert_security_headers();
            assert!(!reply.body.starts_with(b"root:") && !reply.text().contains("not for the web"), "{target}");
        }
    })
    .await;
}

#[tokio::test]
async fn every_response_carries_the_security_headers_and_the_assets_are_served() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path()).await;
        let css = get(server.addr, "/static/gallery.css").await;
        assert_eq!((css.status, css.header("content-type")), (200, Some("text/css; charset=utf-8")));
        css.assert_security_headers();
        assert!(css.text().contains(".grid"));

        let js = get(server.addr, "/static/gallery.js").await;
        assert_eq!((js.status, js.header("content-type")), (200, Some("text/javascript; charset=utf-8")));
        js.assert_security_headers();
        let script = js.text();
        for needle in ["\"load\"", "\"error\"", "data-natural-width", "naturalWidth"] {
            assert!(script.contains(needle), "{needle} not in the script");
        }

        for target in ["/", "/nowhere"] {
            let reply = get(server.addr, target).await;
            reply.assert_security_headers();
            assert_eq!(reply.header("cache-control"), Some("no-store"));
        }
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_sidecar_is_skipped_and_the_others_show() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let good = write_entry(dir.path(), "holidays", Tier::Full, T0, true);
        let other = write_entry(dir.path(), "holidays", Tier::Preview, T0 + DAY_MS, true);
        let corrupt = EntryId::new();
        std::fs::write(sidecar_path(dir.path(), corrupt), b"{\"entry_id\": \"half a sidecar").unwrap();
        let mislabelled = EntryId::new();
        std::fs::write(sidecar_path(dir.path(), mislabelled), good.to_json()).unwrap();
        // Not sidecars at all: never opened.
        std::fs::write(dir.path().join("notes.json"), b"{").unwrap();
        std::fs::write(dir.path().join(format!("{}.json.tmp", EntryId::new())), b"{").unwrap();
        std::fs::create_dir(dir.path().join(format!("{}.json", EntryId::new()))).unwrap();
        let server = start(dir.path()).await;

        let reply = get(server.addr, "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.cards(), 2, "{}", reply.text());
        let html = reply.text();
        assert!(html.contains(&good.entry_id.to_string()) && html.contains(&other.entry_id.to_string()));
        assert!(!html.contains(&corrupt.to_string()) && !html.contains(&mislabelled.to_string()));
        assert_eq!(get(server.addr, &format!("/e/{corrupt}")).await.status, 404);
        assert_eq!(get(server.addr, &format!("/e/{mislabelled}")).await.status, 404);
    })
    .await;
}

#[tokio::test]
async fn an_empty_folder_says_to_run_pull() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path()).await;
        let reply = get(server.addr, "/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.cards(), 0);
        let html = reply.text();
        assert!(html.contains("Nothing here yet") && html.contains("ambishare-client pull --out"), "{html}");
    })
    .await;
}

#[tokio::test]
async fn the_entry_page_shows_both_images_and_every_field_escaped() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let mut s = write_entry(dir.path(), "holidays", Tier::Preview, T0, true);
        s.label = "<script>alert(1)</script> & friends".into();
        s.write(dir.path()).unwrap();
        let server = start(dir.path()).await;

        let reply = get(server.addr, &format!("/e/{}", s.entry_id)).await;
        assert_eq!(reply.status, 200);
        reply.assert_security_headers();
        let html = reply.text();
        for field in [
            s.entry_id.to_string(),
            s.owner_id.to_string(),
            s.model_id.to_string(),
            s.created.clone(),
            s.pulled_at.clone(),
            "holidays".into(),
            "preview".into(),
            "24 × 16".into(),
            format!("src=\"/img/{}.png\"", s.entry_id),
            format!("src=\"/img/{}.public.png\"", s.entry_id),
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends".into(),
        ] {
            assert!(html.contains(&field), "{field} not in {html}");
        }
        assert!(!html.contains("<script>alert"), "the label is escaped");
    })
    .await;
}

#[tokio::test]
async fn a_foreign_host_name_is_refused() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        write_entry(dir.path(), "holidays", Tier::Full, T0, true);
        let server = start(dir.path()).await;
        // A page of evil.example whose name now resolves to 127.0.0.1 (DNS rebinding).
        let reply = get_as(server.addr, "/", "evil.example:8090").await;
        assert_eq!(reply.status, 400);
        reply.assert_security_headers();
        assert_eq!(reply.cards(), 0);
        for host in ["localhost", &format!("localhost:{}", server.addr.port()), "127.0.0.1"] {
            assert_eq!(get_as(server.addr, "/", host).await.status, 200, "{host}");
        }
    })
    .await;
}

#[tokio::test]
async fn serve_gallery_refuses_a_non_loopback_listener_or_a_missing_folder() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let err = serve_gallery(GalleryOptions::new(dir.path()), listener, std::future::pending()).await.unwrap_err();
        assert!(err.to_string().contains("--allow-remote"), "{err}");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let missing = dir.path().join("not-pulled-yet");
        let err = serve_gallery(GalleryOptions::new(&missing), listener, std::future::pending()).await.unwrap_err();
        assert!(err.to_string().contains("not a folder"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn the_gallery_stops_on_shutdown() {
    within_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_gallery(GalleryOptions::new(dir.path()), listener, async move {
            let _ = stopped.await;
        }));
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    })
    .await;
}

/// The real binary: what its help promises, and that it refuses a remote address.
mod binary {
    use std::process::Command;

    fn client(args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_ambishare-client"))
            .args(args)
            .env_remove("AMBISHARE_CLIENT_GALLERY_OUT")
            .env_remove("AMBISHARE_CLIENT_GALLERY_LISTEN")
            .env("RUST_LOG", "warn")
            .output()
            .expect("run ambishare-client")
    }

    #[test]
    fn gallery_help_says_nothing_leaves_the_machine() {
        let out = client(&["gallery", "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{help}");
        for needle in
            ["nothing leaves this", "--allow-remote", "loopback", "127.0.0.1:8090", "AMBISHARE_CLIENT_GALLERY_OUT"]
        {
            assert!(help.contains(needle), "{needle:?} not in:\n{help}");
        }
        let pull = client(&["pull", "--help"]);
        let help = String::from_utf8_lossy(&pull.stdout);
        assert!(help.contains("--no-public-view") && help.contains("<entry-id>.json"), "{help}");
    }

    #[test]
    fn gallery_refuses_a_non_loopback_address_without_allow_remote() {
        let dir = tempfile::tempdir().unwrap();
        let out = client(&["gallery", "--out", dir.path().to_str().unwrap(), "--listen", "0.0.0.0:0"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("not a loopback address") && stderr.contains("--allow-remote"), "{stderr}");
    }
}
