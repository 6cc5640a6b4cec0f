//! `gallery`: a web view, for a browser on this machine, of what `pull` wrote
//! into its output folder: each decoded image beside what the public sees, by
//! dataset, newest first, with the sidecar's metadata.
//!
//! It reads that folder and nothing else, talks to no node, and by default
//! listens on loopback only and answers only to loopback host names (so a web
//! page cannot reach it through DNS rebinding): the images are the party's
//! private decodes. Every file it serves is named from a parsed [`EntryId`]'s
//! canonical text; no request text reaches the file system.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambishare_shared::{DatasetName, EntryId};
use axum::Router;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::{info, instrument, warn};

use crate::error::{Error, Result};
use crate::sidecar::{self, Sidecar, png_path, public_png_path};

/// Where `gallery` listens without `--listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// Entries on one page of the index.
pub const PAGE_SIZE: usize = 60;
/// Every response's CSP: the gallery's own images, style sheet and script, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// A request still unanswered after this gets 408.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests handled at once, over every connection (the rest wait their turn).
pub const DEFAULT_MAX_CONCURRENT: usize = 32;

const CSS: &str = include_str!("gallery/gallery.css");
const JS: &str = include_str!("gallery/gallery.js");

/// What `gallery` serves and how.
#[derive(Clone, Debug)]
pub struct GalleryOptions {
    /// The folder `pull --out` wrote.
    pub out: PathBuf,
    /// Serve on a non-loopback address, to any host name (off by default: the
    /// images are private decodes and the gallery has no login).
    pub allow_remote: bool,
    pub request_timeout: Duration,
    pub max_concurrent: usize,
}

impl GalleryOptions {
    /// Serves `out` on loopback only, with the default limits.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        GalleryOptions {
            out: out.into(),
            allow_remote: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Refuses a non-loopback address unless `allow_remote`.
pub fn check_listen_addr(addr: SocketAddr, allow_remote: bool) -> Result<()> {
    if allow_remote || is_loopback(addr.ip()) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "the gallery would listen on {addr}, which is not a loopback address: it shows this party's decoded \
         private images to whoever can reach it; listen on 127.0.0.1 or ::1, or give --allow-remote"
    )))
}

/// Serves the gallery on `listener` until `shutdown` completes.
pub async fn serve_gallery(
    opts: GalleryOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|e| Error::io("reading the gallery's address", e))?;
    check_listen_addr(addr, opts.allow_remote)?;
    if !opts.out.is_dir() {
        return Err(Error::Config(format!(
            "{} is not a folder: give the --out of `ambishare-client pull`",
            opts.out.display()
        )));
    }
    info!(%addr, out = %opts.out.display(), "gallery serving");
    axum::serve(listener, app(&opts)).with_graceful_shutdown(shutdown).await.map_err(|e| Error::io("gallery", e))
}

struct Gallery {
    out: PathBuf,
}

/// The gallery's routes, limits and headers (what [`serve_gallery`] serves).
pub fn app(opts: &GalleryOptions) -> Router {
    let state = Arc::new(Gallery { out: opts.out.clone() });
    let mut router = Router::new()
        .route("/", get(index))
        .route("/e/{id}", get(entry_page))
        .route("/img/{file}", get(image))
        .route("/static/gallery.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
        .route("/static/gallery.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], JS) }))
        .fallback(not_found)
        .with_state(state);
    if !opts.allow_remote {
        router = router.layer(middleware::from_fn(loopback_host_only));
    }
    // Layers run outside in from the last added: headers on every response
    // (a timeout's too), the timeout counting the wait for a slot, then the slots.
    // One semaphore for all routes (a plain ConcurrencyLimitLayer would give each route its own).
    router
        .layer(GlobalConcurrencyLimitLayer::new(opts.max_concurrent.max(1)))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, opts.request_timeout))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        // Private images: not kept in the browser's disk cache.
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
}

/// Whether a Host header names this machine's loopback: `localhost`, `127.x.y.z`
/// or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// Answers only requests whose Host is a loopback name: a page of another site
/// whose name it rebinds to 127.0.0.1 sends its own name, and is refused.
async fn loopback_host_only(headers: HeaderMap, request: Request, next: Next) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(is_loopback_host) {
        return next.run(request).await;
    }
    Error::BadRequest("this gallery answers only to a loopback host name (localhost, 127.0.0.1, [::1])".into())
        .into_response()
}

/// The one mapping of errors to HTTP: the caller's faults at info with their
/// reason, ours at warn with the detail only in the log.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Error::BadRequest(_) => {
                info!("gallery: {self}");
                (StatusCode::BAD_REQUEST, self.to_string())
            }
            Error::NotFound(_) => {
                info!("gallery: {self}");
                (StatusCode::NOT_FOUND, self.to_string())
            }
            _ => {
                warn!("gallery: {self}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
            }
        };
        let title = status.canonical_reason().unwrap_or("error");
        let body = layout(
            title,
            html! {
                header { h1 { (title) } }
                main { p.empty { (message) } p { a href="/" { "Back to the gallery" } } }
            },
        );
        (status, body).into_response()
    }
}

async fn not_found() -> Error {
    Error::NotFound("no such page".into())
}

/// The index's query: `?dataset=NAME&page=N` (both optional).
#[derive(Debug, Default, Deserialize)]
struct IndexQuery {
    dataset: Option<String>,
    page: Option<String>,
}

impl IndexQuery {
    fn dataset(&self) -> Result<Option<DatasetName>> {
        match self.dataset.as_deref() {
            None | Some("") => Ok(None),
            Some(text) => text.parse().map(Some).map_err(|e| Error::BadRequest(format!("dataset: {e}"))),
        }
    }

    /// The page asked for, from 1 (past the last page reads as the last).
    fn page(&self) -> Result<usize> {
        match self.page.as_deref() {
            None | Some("") => Ok(1),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|&p| p >= 1)
                .ok_or_else(|| Error::BadRequest("page: a whole number from 1".into())),
        }
    }
}

/// Every sidecar in `out` that parses, newest first (a missing folder is an
/// empty gallery). The folder is read once; only `<uuid>.json` names are opened.
fn list(out: &Path) -> Result<Vec<Sidecar>> {
    let dir = match std::fs::read_dir(out) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", out.display()), e)),
    };
    let mut entries = Vec::new();
    for item in dir {
        let item = item.map_err(|e| Error::io(format!("reading {}", out.display()), e))?;
        let Some(id) = item.file_name().to_str().and_then(sidecar::sidecar_id) else { continue };
        match Sidecar::read(out, id) {
            Ok(Some(sidecar)) => entries.push(sidecar),
            // Removed since the folder was read (a pull redoing it).
            Ok(None) => {}
            Err(e) => warn!(entry = %id, "gallery: skipped: {e}"),
        }
    }
    entries.sort_by(|a, b| newest_first(b).cmp(&newest_first(a)));
    Ok(entries)
}

/// Sort key of an entry by creation time: RFC 3339 in UTC to the second sorts
/// as text; the two times it cannot write go to their ends; the id (a UUID v7,
/// by time) breaks ties.
fn newest_first(s: &Sidecar) -> (u8, &str, EntryId) {
    let rank = match s.created.as_bytes().first() {
        Some(b) if b.is_ascii_digit() => 1,
        _ if s.created.starts_with("after") => 2,
        _ => 0,
    };
    (rank, s.created.as_str(), s.entry_id)
}

/// `2026-12-01` of `2026-12-01T17:14:43Z` (other texts whole).
fn created_date(created: &str) -> &str {
    match created.as_bytes().first() {
        Some(b) if b.is_ascii_digit() => created.get(..10).unwrap_or(created),
        _ => created,
    }
}

fn index_href(dataset: Option<&DatasetName>, page: usize) -> String {
    match (dataset, page) {
        (None, 1) => "/".into(),
        (None, p) => format!("/?page={p}"),
        (Some(d), 1) => format!("/?dataset={d}"),
        (Some(d), p) => format!("/?dataset={d}&page={p}"),
    }
}

#[instrument(skip_all)]
async fn index(State(gallery): State<Arc<Gallery>>, Query(query): Query<IndexQuery>) -> Result<Markup> {
    let dataset = query.dataset()?;
    let asked_page = query.page()?;
    let out = gallery.out.clone();
    let all = tokio::task::spawn_blocking(move || list(&out)).await??;

    let mut counts: BTreeMap<&DatasetName, usize> = BTreeMap::new();
    for s in &all {
        *counts.entry(&s.dataset).or_default() += 1;
    }
    let shown: Vec<&Sidecar> = all.iter().filter(|s| dataset.as_ref().is_none_or(|d| &s.dataset == d)).collect();
    let pages = shown.len().div_ceil(PAGE_SIZE).max(1);
    let page = asked_page.min(pages);
    let on_page = shown.iter().skip((page - 1) * PAGE_SIZE).take(PAGE_SIZE);

    let body = html! {
        header {
            h1 { "Gallery" }
            p.note {
                "What " code { "ambishare-client pull" } " decoded into " code { (gallery.out.display()) }
                ", each image beside what the public sees. Served from this machine only."
            }
        }
        @if all.is_empty() {
            main {
                p.empty {
                    "Nothing here yet. Run " code { "ambishare-client pull --out " (gallery.out.display()) }
                    " to decode the entries this party was granted, then reload this page."
                }
            }
        } @else {
            nav.datasets {
                @if dataset.is_none() { span.current { "all (" (all.len()) ")" } }
                @else { a href="/" { "all (" (all.len()) ")" } }
                @for (name, n) in &counts {
                    @if dataset.as_ref() == Some(*name) { span.current { (name) " (" (n) ")" } }
                    @else { a href=(index_href(Some(name), 1)) { (name) " (" (n) ")" } }
                }
            }
            @if shown.is_empty() {
                main { p.empty { "No entries in this dataset. " a href="/" { "Show all" } } }
            } @else {
                main.grid {
                    @for s in on_page { (card(s)) }
                }
                nav.pages {
                    @if page > 1 { a rel="prev" href=(index_href(dataset.as_ref(), page - 1)) { "← newer" } }
                    span { "page " (page) " of " (pages) " (" (shown.len()) " entries)" }
                    @if page < pages { a rel="next" href=(index_href(dataset.as_ref(), page + 1)) { "older →" } }
                }
            }
        }
    };
    Ok(layout("Gallery", body))
}

fn card(s: &Sidecar) -> Markup {
    let id = s.entry_id;
    html! {
        article.card data-entry=(id) {
            div.pair {
                figure {
                    a href={ "/e/" (id) } {
                        img src={ "/img/" (id) ".png" } width=(s.width) height=(s.height) alt={ "decoded " (id) };
                    }
                    figcaption { "decoded (" (s.tier) ")" }
                }
                figure { (public_view(s)) figcaption { "what the public sees" } }
            }
            dl.meta {
                dt { "dataset" } dd.dataset { a href=(index_href(Some(&s.dataset), 1)) { (s.dataset) } }
                dt { "tier" } dd.tier { (s.tier) }
                dt { "created" } dd { span title=(s.created) { (created_date(&s.created)) } }
                @if !s.label.is_empty() { dt { "label" } dd { (s.label) } }
                dt { "entry" } dd { a.entry href={ "/e/" (id) } { code { (id) } } }
            }
        }
    }
}

fn public_view(s: &Sidecar) -> Markup {
    html! {
        @if s.public_view {
            img src={ "/img/" (s.entry_id) ".public.png" } width=(s.width) height=(s.height) alt="what the public sees";
        } @else {
            div.missing { "not rendered (pulled with --no-public-view)" }
        }
    }
}

#[instrument(skip_all, fields(entry = %id))]
async fn entry_page(State(gallery): State<Arc<Gallery>>, UrlPath(id): UrlPath<String>) -> Result<Markup> {
    let id: EntryId = id.parse().map_err(|e| Error::BadRequest(format!("{e}")))?;
    let out = gallery.out.clone();
    let sidecar = match tokio::task::spawn_blocking(move || Sidecar::read(&out, id)).await? {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Error::NotFound(format!("entry {id} is not in this gallery"))),
        Err(e @ Error::Sidecar { .. }) => {
            warn!("gallery: {e}");
            return Err(Error::NotFound(format!("entry {id} is not in this gallery")));
        }
        Err(e) => return Err(e),
    };
    let s = &sidecar;
    let body = html! {
        header {
            p { a href="/" { "← gallery" } " · " a href=(index_href(Some(&s.dataset), 1)) { (s.dataset) } }
            h1 { "Entry " code { (id) } }
        }
        main {
            div.entry-images {
                figure {
                    a href={ "/img/" (id) ".png" } {
                        img src={ "/img/" (id) ".png" } width=(s.width) height=(s.height) alt={ "decoded " (id) };
                    }
                    figcaption { "decoded with this party's " (s.tier) " key" }
                }
                figure {
                    (public_view(s))
                    figcaption { "what the public sees: every nonzero of the published code, real and fake" }
                }
            }
            table.meta {
                tr { th { "entry id" } td { code { (s.entry_id) } } }
                tr { th { "owner id" } td { code { (s.owner_id) } } }
                tr { th { "dataset" } td { (s.dataset) } }
                tr { th { "model id" } td { code { (s.model_id) } } }
                tr { th { "size" } td { (s.width) " × " (s.height) } }
                tr { th { "created" } td { (s.created) } }
                tr { th { "label" } td { (s.label) } }
                tr { th { "tier" } td.tier { (s.tier) } }
                tr { th { "pulled at" } td { (s.pulled_at) } }
                tr { th { "public view" } td { @if s.public_view { "written" } @else { "not written" } } }
            }
        }
    };
    Ok(layout(&format!("Entry {id}"), body))
}

/// `<entry-id>.png` or `<entry-id>.public.png`: the id and whether it is the public view.
fn image_name(file: &str) -> Result<(EntryId, bool)> {
    let (stem, public) = if let Some(stem) = file.strip_suffix(".public.png") {
        (stem, true)
    } else if let Some(stem) = file.strip_suffix(".png") {
        (stem, false)
    } else {
        return Err(Error::BadRequest("expected <entry-id>.png or <entry-id>.public.png".into()));
    };
    let id = stem.parse().map_err(|e| Error::BadRequest(format!("{e}")))?;
    Ok((id, public))
}

#[instrument(skip_all)]
async fn image(State(gallery): State<Arc<Gallery>>, UrlPath(file): UrlPath<String>) -> Result<Response> {
    let (id, public) = image_name(&file)?;
    // Built from the parsed id alone.
    let path = if public { public_png_path(&gallery.out, id) } else { png_path(&gallery.out, id) };
    match tokio::fs::read(&path).await {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, "image/png")], bytes).into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::NotFound(format!("no image {} in this gallery", path_name(&path))))
        }
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// The file name of a path built from an id (for messages).
fn path_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · ambishare" }
                link rel="stylesheet" href="/static/gallery.css";
                // Not deferred: it must listen for image errors before any image loads.
                script src="/static/gallery.js" {}
            }
            body {
                (body)
                footer { "ambishare gallery: decoded on this machine; nothing here is sent anywhere." }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_loopback_addresses_without_allow_remote() {
        for ok in ["127.0.0.1:8090", "127.1.2.3:1", "[::1]:8090", "[::ffff:127.0.0.1]:80"] {
            check_listen_addr(ok.parse().unwrap(), false).unwrap();
        }
        for bad in ["0.0.0.0:8090", "192.168.1.2:8090", "[::]:8090", "[2001:db8::1]:80"] {
            let addr: SocketAddr = bad.parse().unwrap();
            let err = check_listen_addr(addr, false).unwrap_err().to_string();
            assert!(err.contains("--allow-remote"), "{err}");
            check_listen_addr(addr, true).unwrap();
        }
    }

    #[test]
    fn only_loopback_host_names_are_answered() {
        for ok in ["localhost", "LOCALHOST:8090", "127.0.0.1", "127.0.0.1:8090", "[::1]", "[::1]:8090"] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8090", "localhost.evil.example", "10.0.0.1:80", "[::1", "[::1]x", ""]
        {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn image_names_parse_to_an_id_and_a_view() {
        let id = EntryId::new();
        assert_eq!(image_name(&format!("{id}.png")).unwrap(), (id, false));
        assert_eq!(image_name(&format!("{id}.public.png")).unwrap(), (id, true));
        for bad in
            ["not-a-uuid.png", "../../etc/passwd", &format!("{id}.json"), &format!("{id}.public.png.png"), ".png"]
        {
            assert!(matches!(image_name(bad), Err(Error::BadRequest(_))), "{bad}");
        }
    }

    #[test]
    fn creation_times_sort_newest_first_and_show_their_date() {
        assert_eq!(created_date("2026-12-01T17:14:43Z"), "2026-12-01");
        assert_eq!(created_date("before 1970"), "before 1970");
        let key = |created: &str| {
            let mut s = Sidecar::from_json(
                br#"{"entry_id":"019a0000-0000-7000-8000-000000000000","owner_id":"00000000000000000000000000000000",
                     "dataset":"d","model_id":"0000000000000000000000000000000000000000000000000000000000000000",
                     "width":1,"height":1,"created":"x","tier":"full","pulled_at":"x"}"#,
                Path::new("t"),
            )
            .unwrap();
            s.created = created.into();
            s
        };
        let (old, new, before, after) =
            (key("2020-01-01T00:00:00Z"), key("2026-01-01T00:00:00Z"), key("before 1970"), key("after year 9999"));
        assert!(newest_first(&new) > newest_first(&old));
        assert!(newest_first(&old) > newest_first(&before));
        assert!(newest_first(&after) > newest_first(&new));
    }
}
