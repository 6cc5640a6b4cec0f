//! The typed gRPC clients of ambishare's nodes, and what their callers share.
//!
//! - [`RegistryClient`]: the registry's client for every node (the owner
//!   publishes through it, a party pulls and browses through it); it signs
//!   what it sends and checks what it receives.
//! - [`KeyClient`] and [`ClientIdentity`]: a party fetches its entry keys from
//!   an owner's key service over mutual TLS; the identity is also what the
//!   owner's CLI presents to its own node.
//! - [`Grant`] and [`Denial`]: what the owner's key service says about access,
//!   decided by the owner node and read by its clients.
//! - [`make_csr`]: the party's key and certificate request, for the owner to sign.
//!
//! Why a crate of its own: a node crate never links another node crate. The
//! party's node (`ambishare-client`) talks to the registry and to an owner,
//! and links neither; the registry links none of this. So the graph is
//! `proto <- shared <- rpc <- {owner, client, tests}`, with `registry` on
//! `shared` only (its own tests talk to it through this crate).

pub mod csr;
pub mod error;
pub mod grant;
pub mod keys;
pub mod registry;

pub use csr::make_csr;
pub use error::{Error, Result};
pub use grant::{Denial, Grant};
pub use keys::{ClientIdentity, KeyAnswer, KeyClient, WhoAmI};
pub use registry::{ClientTlsOptions, EntryPage, FetchedModel, PublishAck, PublishOutcome, RegistryClient};
