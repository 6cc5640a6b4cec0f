//! The registry's read-only web view (`serve --http-listen`): HTML pages of
//! owners, datasets, entries and models, and the same data as JSON under
//! `/api/v1/`.
//!
//! Safe by construction: every path parameter is parsed into a typed id or
//! name before anything is read, nothing in a request reaches the file
//! system (the assets are compiled in), page sizes are bounded, HTML escapes
//! what it interpolates, and every response carries a strict
//! Content-Security-Policy. Thumbnails render on their own threads from a
//! bounded queue ([`thumbnails`]), so the web view never slows gRPC.

use std::future::Future;
use std::time::Duration;

use ambishare_shared::{DatasetName, EntryId, ModelId, OwnerId};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use tokio::net::TcpListener;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tracing::{info, warn};

use crate::db::Db;
use crate::error::{Error, Result};

pub mod html;
pub mod thumbnails;
pub mod views;

pub use thumbnails::{ThumbnailState, Thumbnailer};

/// Requests served at once (the others wait).
const MAX_CONCURRENT_REQUESTS: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Browsers fetch scripts, styles and images from this origin only; no
/// inline script or style, no frames, no forms, no plugins.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; \
                                       connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const WEB_CSS: &str = include_str!("static/web.css");
const WEB_JS: &str = include_str!("static/web.js");
const PENDING_SVG: &str = include_str!("static/pending.svg");
const UNAVAILABLE_SVG: &str = include_str!("static/unavailable.svg");

/// What the handlers share.
#[derive(Clone)]
pub struct WebState {
    db: Db,
    thumbnails: Thumbnailer,
}

impl WebState {
    pub(crate) fn new(db: Db, thumbnails: Thumbnailer) -> Self {
        WebState { db, thumbnails }
    }
}

/// The web view's routes and limits.
pub fn router(state: WebState) -> Router {
    let api = Router::new()
        .route("/datasets", get(api_home))
        .route("/owners/{owner}/datasets/{dataset}/entries", get(api_dataset))
        .route("/entries/{id}", get(api_entry))
        .route("/models/{id}", get(api_model))
        .fallback(api_not_found);
    Router::new()
        .route("/", get(home))
        .route("/owners/{owner}/datasets/{dataset}", get(dataset))
        .route("/entries/{id}", get(entry))
        .route("/entries/{id}/code.ambc", get(code))
        .route("/entries/{id}/thumbnail.jpg", get(thumbnail))
        .route("/models/{id}", get(model))
        .route("/static/web.css", get(|| asset("text/css; charset=utf-8", WEB_CSS)))
        .route("/static/web.js", get(|| asset("text/javascript; charset=utf-8", WEB_JS)))
        .route("/static/pending.svg", get(|| asset("image/svg+xml", PENDING_SVG)))
        .route("/static/unavailable.svg", get(|| asset("image/svg+xml", UNAVAILABLE_SVG)))
        .nest("/api/v1", api)
        .fallback(not_found)
        .with_state(state)
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
        .layer(SetResponseHeaderLayer::overriding(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(SetResponseHeaderLayer::overriding(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("same-origin"),
        ))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(ConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
}

/// Serves the web view on `listener` until `shutdown` completes.
pub async fn serve_web(
    listener: TcpListener,
    state: WebState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().map_err(|e| Error::io("reading the web view's address", e))?;
    info!(%addr, "web view serving http://{addr}/");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving the web view", e))
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=3600")], body).into_response()
}

/// An error as the web view answers it: the caller's faults in words, ours
/// as a bare "internal error" (the details go to the log).
struct WebError {
    status: StatusCode,
    message: String,
    json: bool,
}

impl WebError {
    fn from_error(e: Error, json: bool) -> Self {
        let (status, message) = match &e {
            Error::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
            Error::Invalid(m) => (StatusCode::BAD_REQUEST, m.clone()),
            _ => {
                warn!(error = %e, "web view request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".to_owned())
            }
        };
        WebError { status, message, json }
    }

    fn bad_request(message: impl Into<String>, json: bool) -> Self {
        WebError { status: StatusCode::BAD_REQUEST, message: message.into(), json }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        if self.json {
            (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
        } else {
            (self.status, html::error(self.status.as_u16(), &self.message)).into_response()
        }
    }
}

type WebResult<T> = std::result::Result<T, WebError>;

/// Runs a view's store reads, answering a failure as a page or as JSON.
async fn run<T>(json: bool, view: impl std::future::Future<Output = Result<T>>) -> WebResult<T> {
    view.await.map_err(|e| WebError::from_error(e, json))
}

fn parse<T: std::str::FromStr>(what: &str, text: &str, json: bool) -> WebResult<T> {
    text.parse().map_err(|_| WebError::bad_request(format!("not a valid {what}: {:?}", truncated(text)), json))
}

/// At most 80 characters of a request's text, for error messages.
fn truncated(text: &str) -> String {
    text.chars().take(80).collect()
}

#[derive(Debug, Default, Deserialize)]
struct HomeParams {
    after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PageParams {
    after: Option<String>,
    limit: Option<usize>,
}

async fn home_view(state: WebState, params: HomeParams, json: bool) -> WebResult<views::HomeView> {
    let after: Option<OwnerId> = params.after.as_deref().map(|a| parse("owner id", a, json)).transpose()?;
    run(json, views::home(&state.db, after.as_ref())).await
}

async fn home(State(state): State<WebState>, Query(params): Query<HomeParams>) -> WebResult<Response> {
    let view = home_view(state, params, false).await?;
    Ok(html::home(&view).into_response())
}

async fn api_home(State(state): State<WebState>, Query(params): Query<HomeParams>) -> WebResult<Response> {
    Ok(Json(home_view(state, params, true).await?).into_response())
}

async fn dataset_view(
    state: WebState,
    (owner, dataset): (String, String),
    params: PageParams,
    json: bool,
) -> WebResult<(views::DatasetPageView, usize)> {
    let owner: OwnerId = parse("owner id", &owner, json)?;
    let dataset: DatasetName = parse("dataset name", &dataset, json)?;
    let limit = params.limit.unwrap_or(views::DEFAULT_ENTRIES_PER_PAGE).clamp(1, views::MAX_ENTRIES_PER_PAGE);
    let view =
        run(json, views::dataset_page(&state.db, &state.thumbnails, &owner, &dataset, params.after.as_deref(), limit))
            .await?;
    Ok((view, limit))
}

async fn dataset(
    State(state): State<WebState>,
    Path(path): Path<(String, String)>,
    Query(params): Query<PageParams>,
) -> WebResult<Response> {
    let (view, limit) = dataset_view(state, path, params, false).await?;
    Ok(html::dataset(&view, limit).into_response())
}

async fn api_dataset(
    State(state): State<WebState>,
    Path(path): Path<(String, String)>,
    Query(params): Query<PageParams>,
) -> WebResult<Response> {
    Ok(Json(dataset_view(state, path, params, true).await?.0).into_response())
}

async fn entry_view(state: WebState, id: String, json: bool) -> WebResult<views::EntryView> {
    let id: EntryId = parse("entry id", &id, json)?;
    run(json, views::entry(&state.db, &state.thumbnails, &id)).await
}

async fn entry(State(state): State<WebState>, Path(id): Path<String>) -> WebResult<Response> {
    Ok(html::entry(&entry_view(state, id, false).await?).into_response())
}

async fn api_entry(State(state): State<WebState>, Path(id): Path<String>) -> WebResult<Response> {
    Ok(Json(entry_view(state, id, true).await?).into_response())
}

async fn model_view(state: WebState, id: String, json: bool) -> WebResult<views::ModelView> {
    let id: ModelId = parse("model id", &id, json)?;
    run(json, views::model(&state.db, &id)).await
}

async fn model(State(state): State<WebState>, Path(id): Path<String>) -> WebResult<Response> {
    Ok(html::model(&model_view(state, id, false).await?).into_response())
}

async fn api_model(State(state): State<WebState>, Path(id): Path<String>) -> WebResult<Response> {
    Ok(Json(model_view(state, id, true).await?).into_response())
}

/// The raw public code, as the owner signed it.
async fn code(State(state): State<WebState>, Path(id): Path<String>) -> WebResult<Response> {
    let id: EntryId = parse("entry id", &id, false)?;
    let bytes = run(false, views::code_bytes(&state.db, &id)).await?;
    let disposition = format!("attachment; filename=\"{id}.ambc\"");
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400, immutable")),
        ],
        bytes,
    )
        .into_response())
}

/// 200 with the JPEG once rendered; 202 while it renders (asked again by
/// the page's script); 404 for an unknown entry or one with no thumbnail.
async fn thumbnail(State(state): State<WebState>, Path(id): Path<String>) -> WebResult<Response> {
    let id: EntryId = parse("entry id", &id, false)?;
    let thumbs = &state.thumbnails;
    let found = run(false, async {
        match thumbs.get(&id).await? {
            Some(jpeg) => Ok(Ok(jpeg)),
            None => {
                // Unknown entries are not queued.
                views::stored_entry(&state.db, &id).await?;
                Ok(Err(thumbs.state(&id).await?))
            }
        }
    })
    .await?;
    Ok(match found {
        Ok(jpeg) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                // Entries never change; a deleted one's thumbnail may linger a day in caches.
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            jpeg,
        )
            .into_response(),
        Err(ThumbnailState::Ready) | Err(ThumbnailState::Pending) => {
            (StatusCode::ACCEPTED, [(header::CACHE_CONTROL, "no-store"), (header::RETRY_AFTER, "1")], "rendering")
                .into_response()
        }
        Err(ThumbnailState::Unavailable(why)) => {
            (StatusCode::NOT_FOUND, [(header::CACHE_CONTROL, "no-store")], format!("no thumbnail: {why}"))
                .into_response()
        }
    })
}

async fn not_found() -> WebError {
    WebError { status: StatusCode::NOT_FOUND, message: "no such page".into(), json: false }
}

async fn api_not_found() -> WebError {
    WebError { status: StatusCode::NOT_FOUND, message: "no such API path".into(), json: true }
}
