//! The data owner's node of ambishare.
//!
//! - [`Publisher`]: images → sparse codes → ambiguated, signed entries in the
//!   public registry, each support key sealed in the owner's store; resumable.
//!   The running node does it for [`AdminClient::publish`]; [`publish()`]
//!   does it on the store directly (`--offline`).
//! - [`serve()`]: the key service (parties fetch support keys at their grant's
//!   tier) and the admin service, over mutual TLS on one listener.
//! - [`AdminClient`]: the CLI's mTLS client of the admin service. The typed
//!   clients other nodes use (the key service's, the registry's) are in
//!   `ambishare-rpc`: a party's node links that, not this crate.
//! - [`admin::AdminOps`]: grants, revocations and the audit log, shared by the
//!   admin service and the CLI's `--offline` mode.

pub mod admin;
pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod home;
pub mod pki;
pub mod publish;
pub mod rotate;
pub mod service;
pub mod store;
pub mod tls;
pub mod types;

pub use client::AdminClient;
pub use error::{Error, Result};
pub use home::{Home, InitOptions, init};
pub use publish::{FileEvent, FileOutcome, PublishEvent, PublishJob, PublishSummary, Publisher, publish};
pub use rotate::rotate_sealing_key;
pub use service::{MAX_IDS_PER_CALL, ServeConfig, serve};
pub use types::{AuditEvent, AuditQuery, AuditResult, Denial, Grant, GrantOutcome, GrantRequest};
