//! The one error type of the registry, and its mapping to gRPC statuses.

use thiserror::Error;
use tonic::{Code, Status};
use tracing::{info, warn};

/// Errors of the registry. The first group is the fault of whoever sent the
/// request; the second is ours (or the system's); the last is a status from
/// the transport, passed on as it is. (What a client sees of a remote
/// registry is `ambishare_rpc::Error`.)
#[derive(Debug, Error)]
pub enum Error {
    /// A request field failed validation (an id, a code, a size, a token).
    #[error("{0}")]
    Invalid(String),
    /// A request went over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    NotFound(String),
    /// The id is taken by different content.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request needs state that is missing (an unregistered owner, an unknown model, a deleted id).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A write carried no signature.
    #[error("{0} is not signed")]
    NotSigned(&'static str),
    /// A signature did not verify with the key it must verify with.
    #[error("{0}")]
    BadSignature(String),
    /// A write signed by an owner the registry does not know (no key to check it with).
    #[error("{0}")]
    UnknownSigner(String),
    /// A valid signer asked for something only another owner may do.
    #[error("{0}")]
    Forbidden(String),
    /// The registry is shutting down and takes no more writes.
    #[error("the registry is shutting down")]
    ShuttingDown,

    /// The storage backend failed ([`ambishare_db::Error::is_retryable`] tells
    /// a transient fault, answered `UNAVAILABLE`, from a lasting one).
    #[error("storage: {0}")]
    Storage(#[from] ambishare_db::Error),
    /// A stored record does not parse: the data directory is damaged.
    #[error("corrupt record in {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    /// The configuration is unusable.
    #[error("config: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Anything else of ours (a failed task, a broken invariant).
    #[error("internal: {0}")]
    Internal(String),

    /// A status from the transport (a message too large, a cancelled stream).
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(Box<Status>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    pub fn corrupt(tree: &'static str, reason: impl Into<String>) -> Self {
        Error::Corrupt { tree, reason: reason.into() }
    }

    /// True when the error is the fault of whoever sent the request.
    pub fn is_caller_fault(&self) -> bool {
        matches!(
            self,
            Error::Invalid(_)
                | Error::TooLarge(_)
                | Error::NotFound(_)
                | Error::AlreadyExists(_)
                | Error::FailedPrecondition(_)
                | Error::NotSigned(_)
                | Error::BadSignature(_)
                | Error::UnknownSigner(_)
                | Error::Forbidden(_)
        )
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::NotSigned(_) | Error::BadSignature(_) | Error::UnknownSigner(_) => Code::Unauthenticated,
            Error::Forbidden(_) => Code::PermissionDenied,
            Error::ShuttingDown => Code::Unavailable,
            Error::Storage(e) if e.is_retryable() => Code::Unavailable,
            Error::Rpc(status) => status.code(),
            Error::Storage(_)
            | Error::Corrupt { .. }
            | Error::Config(_)
            | Error::Io { .. }
            | Error::Transport(_)
            | Error::Internal(_) => Code::Internal,
        }
    }
}

/// Input errors of the shared library are the caller's; the rest are ours.
impl From<ambishare_shared::Error> for Error {
    fn from(e: ambishare_shared::Error) -> Self {
        match e {
            ambishare_shared::Error::BadSignature => Error::BadSignature("signature does not verify".into()),
            e if e.is_caller_fault() => Error::Invalid(e.to_string()),
            e => Error::Internal(e.to_string()),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Rpc(Box::new(status))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Error::Internal(format!("task failed: {e}"))
    }
}

/// The one place errors become statuses: callers' faults are answered with
/// their message and logged at `info`; ours are logged at `warn` and answered
/// with "internal error" only, so nothing of our state leaks to the peer.
impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = e.code();
        match e {
            // A status from the transport (a message too large, a cancelled stream).
            Error::Rpc(status) => {
                info!(code = ?status.code(), error = %status.message(), "request failed");
                *status
            }
            Error::ShuttingDown => {
                info!(error = %e, "request refused");
                Status::unavailable(e.to_string())
            }
            Error::Storage(e) if e.is_retryable() => {
                warn!(error = %e, "storage unavailable");
                Status::unavailable("storage temporarily unavailable; try again")
            }
            e if e.is_caller_fault() => {
                info!(error = %e, ?code, "request refused");
                Status::new(code, e.to_string())
            }
            e => {
                warn!(error = %e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak() {
        let fault = ambishare_db::Error::Backend { op: "put", source: "disk /var/lib/x on fire".into() };
        let status = Status::from(Error::Storage(fault));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = Status::from(Error::corrupt("entries", "short record"));
        assert_eq!(status.message(), "internal error");
        let timeout = std::io::Error::new(std::io::ErrorKind::TimedOut, "s3 at 10.0.0.7 timed out");
        let status =
            Status::from(Error::Storage(ambishare_db::Error::Unavailable { op: "get", source: timeout.into() }));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.7"), "{}", status.message());
    }

    #[test]
    fn caller_faults_keep_their_message() {
        let status = Status::from(Error::FailedPrecondition("owner not registered".into()));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "owner not registered");
        assert_eq!(Status::from(Error::NotSigned("entry")).code(), Code::Unauthenticated);
        let shared = ambishare_shared::Error::Malformed { format: "ambiguated code", reason: "bad magic".into() };
        let status = Status::from(Error::from(shared));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("bad magic"));
    }
}
