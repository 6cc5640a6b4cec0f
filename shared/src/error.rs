//! The one error type of ambishare-shared.

use thiserror::Error;

/// Errors of the shared library. `Invalid*` and `Malformed` are the caller's
/// fault (bad input from disk or the network); the rest are ours or the system's.
#[derive(Debug, Error)]
pub enum Error {
    /// A value failed validation at the edge (an id, a name, a size).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// Bytes that do not follow one of ambishare's binary formats.
    #[error("malformed {format}: {reason}")]
    Malformed { format: &'static str, reason: String },
    /// A signature did not verify.
    #[error("bad signature")]
    BadSignature,
    /// Sealed data failed to open (wrong key, or tampered).
    #[error("sealed data could not be opened (wrong key or tampered)")]
    Unseal,
    /// A key file is readable by group or others.
    #[error("key file {path} has loose permissions {mode:o}; run `chmod 600 {path}`")]
    LoosePermissions { path: String, mode: u32 },
    /// An image could not be decoded or has unusable dimensions.
    #[error("image: {0}")]
    Image(String),
    /// The model manifest or files are missing, inconsistent or fail their hash.
    #[error("model: {0}")]
    Model(String),
    /// ONNX Runtime failed.
    #[error("onnx runtime: {0}")]
    Runtime(String),
    /// A cryptographic primitive failed (randomness, key generation).
    #[error("crypto: {0}")]
    Crypto(&'static str),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid { what, reason: reason.into() }
    }

    pub(crate) fn malformed(format: &'static str, reason: impl Into<String>) -> Self {
        Error::Malformed { format, reason: reason.into() }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// True when the error is the fault of whoever supplied the input.
    pub fn is_caller_fault(&self) -> bool {
        matches!(self, Error::Invalid { .. } | Error::Malformed { .. } | Error::BadSignature | Error::Image(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
