//! The one error type of ambishare-rpc: what a caller sees of a remote node.

use thiserror::Error;
use tonic::{Code, Status};

/// Errors of the clients. `Config` and `Certificate` happen before anything
/// is sent; the rest are the connection's or the remote node's. Nodes that
/// use these clients wrap this type in their own error, named for the node
/// called (the owner's `Error::Registry`; the client's `Error::Registry` and
/// `Error::Owner`).
#[derive(Debug, Error)]
pub enum Error {
    /// The caller's settings are unusable (a URL, TLS options).
    #[error("config: {0}")]
    Config(String),
    /// Making the party's key or certificate request failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The connection failed (unreachable, TLS refused, reset).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The remote node answered with this status.
    #[error("the node answered {:?}: {}", .0.code(), .0.message())]
    Rpc(Box<Status>),
    /// The remote node answered something that does not check out (an id,
    /// a hash, a count, a value that does not parse).
    #[error("bad response: {0}")]
    BadResponse(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The remote node's status code; for a failure on this side, the code
    /// gRPC would give it (no connection: `Unavailable`; bad settings:
    /// `InvalidArgument`; a response that does not check out: `Internal`).
    pub fn code(&self) -> Code {
        match self {
            Error::Rpc(status) => status.code(),
            Error::Transport(_) => Code::Unavailable,
            Error::Config(_) | Error::Certificate(_) => Code::InvalidArgument,
            Error::BadResponse(_) => Code::Internal,
        }
    }

    /// Why the remote owner node refused this party outright (a revoked or
    /// expired certificate), when its status says.
    pub fn denial(&self) -> Option<crate::Denial> {
        self.status().and_then(crate::Denial::of_status)
    }

    /// The status the remote node answered with, if it answered one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::Rpc(status) => Some(status),
            _ => None,
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Rpc(Box::new(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_status_keeps_its_code_and_message() {
        let e = Error::from(Status::permission_denied("revoked"));
        assert_eq!(e.status().map(Status::code), Some(Code::PermissionDenied));
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(e.to_string(), "the node answered PermissionDenied: revoked");
        assert!(Error::BadResponse("x".into()).status().is_none());
        assert_eq!(Error::BadResponse("x".into()).code(), Code::Internal);
    }
}
