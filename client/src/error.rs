//! The one error type of the client node.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Shared(#[from] ambishare_shared::Error),
    /// A call to the registry failed (no `From`: each call says which node it was).
    #[error("registry: {0}")]
    Registry(#[source] ambishare_rpc::Error),
    /// A call to the owner's key service failed.
    #[error("owner: {0}")]
    Owner(#[source] ambishare_rpc::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image: {0}")]
    Image(#[from] image::ImageError),
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A sidecar (`<entry-id>.json` beside a pull's PNGs) that does not parse.
    #[error("sidecar {path}: {reason}")]
    Sidecar { path: String, reason: String },
    /// The gallery's caller sent a request that does not parse (HTTP 400).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The gallery has nothing by that name (HTTP 404).
    #[error("not found: {0}")]
    NotFound(String),
}

impl Error {
    /// Why the owner refused this party outright (a revoked or expired
    /// certificate), when it said.
    pub fn owner_denial(&self) -> Option<ambishare_rpc::Denial> {
        match self {
            Error::Owner(e) => e.denial(),
            _ => None,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
