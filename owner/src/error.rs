//! The one error type of ambishare-owner, and its single mapping to gRPC status.

use ambishare_rpc::Denial;
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
    /// The caller's certificate is refused for a reason its client acts on
    /// (revoked, expired): the status names the denial, not only the message.
    #[error("permission denied: {reason}")]
    Denied { denial: Denial, reason: &'static str },
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
            | Error::Denied { .. }
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
            Error::Denied { denial, reason } => denial.status(reason),
            Error::NotFound(msg) => Status::not_found(msg),
            Error::FailedPrecondition(msg) => Status::failed_precondition(msg),
            Error::AlreadyExists(msg) => Status::already_exists(msg),
            Error::Registry(ref remote) => registry_status(remote),
            _ => Status::internal("internal error"),
        }
    }
}

/// What the caller of a publish job (the only call that reaches the registry)
/// learns of a failed registry call. The registry's refusals keep their code
/// and message: the registry words them for its callers, and answers its own
/// faults with "internal error" only. What failed on this side of the wire
/// (the connection, an answer that does not check out) keeps its detail in
/// the log, written by the caller of this function.
fn registry_status(e: &ambishare_rpc::Error) -> Status {
    use ambishare_rpc::Error as Rpc;
    use tonic::Code;
    match e {
        Rpc::Rpc(status) => {
            let code = match status.code() {
                code @ (Code::InvalidArgument
                | Code::OutOfRange
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::ResourceExhausted
                | Code::FailedPrecondition
                | Code::DeadlineExceeded
                | Code::Unavailable) => code,
                // The registry refused this node's key or signature: the node's
                // standing there, not the credentials of the owner's caller.
                Code::Unauthenticated => Code::FailedPrecondition,
                // Worth retrying, as a registry that is down.
                Code::Cancelled | Code::Aborted => Code::Unavailable,
                // Internal, Unknown, DataLoss, Unimplemented: a message from the
                // transport may carry detail; the log has it.
                code => return Status::internal(format!("the registry failed ({code:?})")),
            };
            Status::new(code, format!("registry: {}", status.message()))
        }
        Rpc::Transport(_) => Status::unavailable("registry unreachable (the owner node's log says why)"),
        // The job's registry URL or TLS options: the caller's to fix.
        Rpc::Config(reason) => Status::invalid_argument(format!("registry: {reason}")),
        Rpc::Certificate(_) | Rpc::BadResponse(_) => Status::internal("internal error"),
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
        let revoked = Status::from(Error::Denied { denial: Denial::Revoked, reason: "certificate revoked" });
        assert_eq!(
            (revoked.code(), Denial::of_status(&revoked)),
            (tonic::Code::PermissionDenied, Some(Denial::Revoked))
        );
    }

    #[test]
    fn registry_refusals_keep_their_code_and_message() {
        use tonic::Code;
        for (remote, code) in [
            (Status::invalid_argument("entry 3: bad magic"), Code::InvalidArgument),
            (Status::not_found("model abc is not at the registry"), Code::NotFound),
            (Status::already_exists("id taken by other content"), Code::AlreadyExists),
            (Status::permission_denied("entry of another owner"), Code::PermissionDenied),
            (Status::resource_exhausted("600 entries in one message"), Code::ResourceExhausted),
            (Status::failed_precondition("owner not registered"), Code::FailedPrecondition),
            // The registry refused this node's signature: not the caller's credentials.
            (Status::unauthenticated("registration is not signed"), Code::FailedPrecondition),
            (Status::unavailable("the registry is shutting down"), Code::Unavailable),
            (Status::cancelled("stream cancelled"), Code::Unavailable),
        ] {
            let said = remote.message().to_owned();
            let status = Status::from(Error::Registry(ambishare_rpc::Error::from(remote)));
            assert_eq!(status.code(), code, "{said}");
            assert_eq!(status.message(), format!("registry: {said}"));
        }
    }

    #[test]
    fn registry_faults_keep_their_detail_in_the_log() {
        let remote = Status::unknown("h2 protocol error: stream 7 reset at 10.0.0.5");
        let status = Status::from(Error::Registry(ambishare_rpc::Error::from(remote)));
        assert_eq!((status.code(), status.message()), (tonic::Code::Internal, "the registry failed (Unknown)"));
        let bad = ambishare_rpc::Error::BadResponse("owner id 0123 is not the key's".into());
        let status = Status::from(Error::Registry(bad));
        assert_eq!((status.code(), status.message()), (tonic::Code::Internal, "internal error"));
    }

    #[test]
    fn a_bad_registry_url_is_the_callers_to_fix() {
        let config = ambishare_rpc::Error::Config("registry url \"ftp://r\" must start with http://".into());
        let status = Status::from(Error::Registry(config));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("ftp://r"), "{}", status.message());
    }

    #[tokio::test]
    async fn an_unreachable_registry_is_unavailable_without_detail() {
        // Port 9 on loopback (discard): nothing listens there in a test.
        let refused = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect().await.unwrap_err();
        let status = Status::from(Error::Registry(ambishare_rpc::Error::Transport(refused)));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("127.0.0.1"), "{}", status.message());
    }
}
