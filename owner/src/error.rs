//! The one error type of ambishare-owner, and its single mapping to gRPC status.

use thiserror::Error;
use tonic::Status;

/// Errors of the owner node. The first group is the caller's fault (a bad
/// argument, a missing or refused certificate); the rest are ours or the
/// system's, and reach a peer only as "internal error".
#[derive(Debug, Error)]
pub enum Error {
    /// A value failed validation at the edge.
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// The caller presented no usable certificate.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's certificate does not allow this call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is valid but the state does not allow it (a party without a certificate, a busy store).
    #[error("{0}")]
    FailedPrecondition(String),
    /// `init` found an existing identity.
    #[error("{0}")]
    AlreadyExists(String),

    /// From the shared library: the caller's fault or ours, as it says.
    #[error(transparent)]
    Shared(#[from] ambishare_shared::Error),
    #[error("store: {0}")]
    Store(#[from] sled::Error),
    /// A record in the owner's store does not decode.
    #[error("corrupt record in store tree {tree}: {reason}")]
    Corrupt { tree: &'static str, reason: String },
    /// Creating, signing or parsing a certificate failed.
    #[error("certificate: {0}")]
    Certificate(String),
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
    /// A remote service (the owner node, seen by a client) answered with an error status.
    #[error("{} ({:?})", .0.message(), .0.code())]
    Remote(Box<Status>),
    /// A call to the registry failed or was refused (the node calls no other node).
    #[error("registry: {0}")]
    Registry(#[from] ambishare_rpc::Error),
    /// A peer's answer is inconsistent with its request.
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("internal: {0}")]
    Internal(String),
    /// A batch job finished, but not everything it was given (the details were reported).
    #[error("{0}")]
    Incomplete(String),
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid { what, reason: reason.into() }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    pub(crate) fn corrupt(tree: &'static str, reason: impl Into<String>) -> Self {
        Error::Corrupt { tree, reason: reason.into() }
    }

    /// True when whoever sent the request is at fault, not this node.
    pub fn is_caller_fault(&self) -> bool {
        match self {
            Error::Invalid { .. }
            | Error::Unauthenticated(_)
            | Error::PermissionDenied(_)
            | Error::NotFound(_)
            | Error::FailedPrecondition(_)
            | Error::AlreadyExists(_) => true,
            Error::Shared(e) => e.is_caller_fault(),
            _ => false,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Remote(Box::new(status))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        if e.is_caller_fault() {
            tracing::info!(error = %e, "request refused");
        } else {
            tracing::warn!(error = %e, "request failed");
        }
        match e {
            Error::Invalid { .. } => Status::invalid_argument(e.to_string()),
            Error::Shared(ref inner) if inner.is_caller_fault() => Status::invalid_argument(e.to_string()),
            Error::Unauthenticated(msg) => Status::unauthenticated(msg),
            Error::PermissionDenied(msg) => Status::permission_denied(msg),
            Error::NotFound(msg) => Status::not_found(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Error::AlreadyExists(msg) => Status::already_exists(msg),
            // Only an admin's publish job talks to the (public) registry: it learns why that failed.
            Error::Registry(_) => Status::unavailable(e.to_string()),
            _ => Status::internal("internal error"),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_never_reach_the_peer() {
        let status = Status::from(Error::Internal("sealing key /secret/path broke".into()));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = Status::from(Error::io("reading /home/owner/signing.pk8", std::io::Error::other("x")));
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn caller_faults_keep_their_code() {
        assert_eq!(Status::from(Error::invalid("entry ids", "too many")).code(), tonic::Code::InvalidArgument);
        assert_eq!(Status::from(Error::PermissionDenied("x".into())).code(), tonic::Code::PermissionDenied);
        assert_eq!(Status::from(Error::NotFound("x".into())).code(), tonic::Code::NotFound);
    }

    #[test]
    fn registry_failures_are_unavailable_with_their_reason() {
        let status = Status::from(Error::Registry(ambishare_rpc::Error::Config("connection refused".into())));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("connection refused"));
    }
}
