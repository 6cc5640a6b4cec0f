//! The one error type of the storage crate.

use std::io;

/// A boxed source error of a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in storage. [`Error::is_retryable`] tells a transient
/// fault (worth trying again later) from one that will fail the same way again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable (unknown engine, malformed URL, missing credentials).
    #[error("storage configuration: {0}")]
    Config(String),

    /// A namespace name that is not `[a-z0-9][a-z0-9_]*` of at most 64 bytes.
    #[error("invalid namespace {name:?}: {why}")]
    InvalidNamespace { name: String, why: &'static str },

    /// A value the caller passed is malformed (a blob id that is not 64 hex digits).
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// The blob (or other named thing) does not exist.
    #[error("{0} not found")]
    NotFound(String),

    /// Stored bytes fail their check: a hash or length mismatch, a missing
    /// chunk under an existing manifest, an undecodable record.
    #[error("corrupt data in {what}: {why}")]
    Corrupt { what: String, why: String },

    /// The backend refused our credentials or their rights.
    #[error("permission denied by the storage backend ({op}): {source}")]
    PermissionDenied {
        op: &'static str,
        #[source]
        source: BoxError,
    },

    /// The store is held by something else (another process has the sled
    /// database open) or a backend precondition failed.
    #[error("precondition failed: {0}")]
    Precondition(String),

    /// A transient fault: a timeout, a refused or dropped connection, a 5xx
    /// answer or throttling (after the backend client's own retries).
    #[error("storage backend unavailable ({op}): {source}")]
    Unavailable {
        op: &'static str,
        #[source]
        source: BoxError,
    },

    /// Any other backend fault (a 4xx answer we did not expect, a disk error).
    #[error("storage backend failed ({op}): {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: BoxError,
    },

    /// The stream a blob was being written from failed: the caller's source, not the store.
    #[error("reading the blob's source: {0}")]
    Source(#[source] io::Error),

    /// A local file (a credentials file) could not be read.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True for faults that may pass if the same operation is tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. } => true,
            Error::Io { source, .. } | Error::Source(source) => is_transient_io(source),
            Error::Config(_)
            | Error::InvalidNamespace { .. }
            | Error::InvalidInput(_)
            | Error::NotFound(_)
            | Error::Corrupt { .. }
            | Error::PermissionDenied { .. }
            | Error::Precondition(_)
            | Error::Backend { .. } => false,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Corrupt { what: what.into(), why: why.into() }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// A task of ours panicked or was cancelled: a bug or a shutdown, not the store's fault.
    pub(crate) fn join(op: &'static str, e: tokio::task::JoinError) -> Self {
        Error::Backend { op, source: Box::new(e) }
    }
}

fn is_transient_io(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_faults_are_retryable_and_others_are_not() {
        let boxed = || -> BoxError { "x".into() };
        assert!(Error::Unavailable { op: "get", source: boxed() }.is_retryable());
        assert!(Error::io("f", io::Error::from(io::ErrorKind::TimedOut)).is_retryable());
        assert!(!Error::Backend { op: "get", source: boxed() }.is_retryable());
        assert!(!Error::PermissionDenied { op: "get", source: boxed() }.is_retryable());
        assert!(!Error::corrupt("blob", "hash mismatch").is_retryable());
        assert!(!Error::Config("bad".into()).is_retryable());
        assert!(!Error::NotFound("blob".into()).is_retryable());
        assert!(!Error::io("f", io::Error::from(io::ErrorKind::PermissionDenied)).is_retryable());
    }
}
