//! Typed values of the owner node (grant requests, audit events) and their
//! checked conversions from and to protobuf, done once at the edge.

use ambishare_proto::owner::v1 as pb;
use ambishare_proto::types::v1 as types_pb;
use ambishare_shared::{DatasetName, PartyName, Tier};

use crate::error::{Error, Result};

/// What the key service tells its clients about access; defined below the
/// nodes (in `ambishare-rpc`), since parties read them too.
pub use ambishare_rpc::{Denial, Grant};

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn positive(ms: i64) -> Option<i64> {
    (ms > 0).then_some(ms)
}

/// Outcome recorded for an audited request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditResult {
    Released,
    Denied,
}

/// One audit record: a key released or denied, a refused call, or an admin change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Monotonic sequence number (assigned when stored).
    pub seq: u64,
    pub unix_ms: i64,
    /// Party name, or how an unauthorized peer was identified.
    pub party: String,
    /// Entry id as requested (empty for calls about no entry).
    pub entry_id: String,
    pub tier: Option<Tier>,
    /// None for admin changes (grant, revoke).
    pub result: Option<AuditResult>,
    pub denial: Option<Denial>,
    /// What was asked: "GetKeys", "WhoAmI", "Grant", ...
    pub action: String,
    pub detail: String,
}

impl AuditEvent {
    pub fn new(action: &str, party: impl Into<String>) -> Self {
        AuditEvent {
            seq: 0,
            unix_ms: now_unix_ms(),
            party: party.into(),
            entry_id: String::new(),
            tier: None,
            result: None,
            denial: None,
            action: action.to_owned(),
            detail: String::new(),
        }
    }

    pub fn released(mut self, entry: impl Into<String>, tier: Tier) -> Self {
        self.entry_id = entry.into();
        self.tier = Some(tier);
        self.result = Some(AuditResult::Released);
        self
    }

    pub fn denied(mut self, entry: impl Into<String>, denial: Denial) -> Self {
        self.entry_id = entry.into();
        self.result = Some(AuditResult::Denied);
        self.denial = Some(denial);
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

impl From<&AuditEvent> for pb::AuditEvent {
    fn from(e: &AuditEvent) -> Self {
        pb::AuditEvent {
            seq: e.seq,
            unix_ms: e.unix_ms,
            party: e.party.clone(),
            entry_id: e.entry_id.clone(),
            tier: e.tier.map_or(types_pb::Tier::Unspecified, types_pb::Tier::from) as i32,
            result: match e.result {
                None => pb::AuditResult::Unspecified,
                Some(AuditResult::Released) => pb::AuditResult::Released,
                Some(AuditResult::Denied) => pb::AuditResult::Denied,
            } as i32,
            denial: e.denial.map_or(pb::Denial::Unspecified, pb::Denial::from) as i32,
            action: e.action.clone(),
            detail: e.detail.clone(),
        }
    }
}

impl TryFrom<pb::AuditEvent> for AuditEvent {
    type Error = Error;
    fn try_from(p: pb::AuditEvent) -> Result<Self> {
        let result = match pb::AuditResult::try_from(p.result) {
            Ok(pb::AuditResult::Unspecified) => None,
            Ok(pb::AuditResult::Released) => Some(AuditResult::Released),
            Ok(pb::AuditResult::Denied) => Some(AuditResult::Denied),
            Err(_) => return Err(Error::invalid("audit result", format!("unknown result {}", p.result))),
        };
        Ok(AuditEvent {
            seq: p.seq,
            unix_ms: p.unix_ms,
            party: p.party,
            entry_id: p.entry_id,
            tier: if p.tier == 0 { None } else { Some(Tier::try_from(p.tier)?) },
            result,
            denial: if p.denial == 0 { None } else { Some(Denial::try_from(p.denial)?) },
            action: p.action,
            detail: p.detail,
        })
    }
}

/// A query of the audit log.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// Only events after this sequence number.
    pub after_seq: u64,
    /// 1 to [`AuditQuery::MAX_LIMIT`]; 0 means [`AuditQuery::DEFAULT_LIMIT`].
    pub limit: u32,
    /// Only this party's events.
    pub party: Option<String>,
}

impl AuditQuery {
    pub const DEFAULT_LIMIT: u32 = 1000;
    pub const MAX_LIMIT: u32 = 10_000;

    pub fn effective_limit(&self) -> Result<usize> {
        match self.limit {
            0 => Ok(Self::DEFAULT_LIMIT as usize),
            n if n <= Self::MAX_LIMIT => Ok(n as usize),
            _ => Err(Error::invalid("limit", format!("must be 1 to {}", Self::MAX_LIMIT))),
        }
    }
}

/// What the owner is asked to grant.
#[derive(Clone, Debug)]
pub struct GrantRequest {
    pub party: PartyName,
    pub dataset: DatasetName,
    pub tier: Tier,
    /// None: never expires.
    pub expires_unix_ms: Option<i64>,
    /// The party's CSR (PEM); None to add a dataset to an enrolled party.
    pub csr_pem: Option<String>,
    /// Validity of the issued certificate (None: the default).
    pub certificate_days: Option<u32>,
}

impl TryFrom<pb::GrantRequest> for GrantRequest {
    type Error = Error;
    fn try_from(p: pb::GrantRequest) -> Result<Self> {
        if p.expires_unix_ms < 0 {
            return Err(Error::invalid("expiry", "must not be negative"));
        }
        Ok(GrantRequest {
            party: p.party.parse()?,
            dataset: p.dataset.parse()?,
            tier: Tier::try_from(p.tier)?,
            expires_unix_ms: positive(p.expires_unix_ms),
            csr_pem: (!p.csr_pem.is_empty()).then_some(p.csr_pem),
            certificate_days: (p.certificate_days != 0).then_some(p.certificate_days),
        })
    }
}

impl From<&GrantRequest> for pb::GrantRequest {
    fn from(g: &GrantRequest) -> Self {
        pb::GrantRequest {
            party: g.party.to_string(),
            dataset: g.dataset.to_string(),
            tier: types_pb::Tier::from(g.tier) as i32,
            expires_unix_ms: g.expires_unix_ms.unwrap_or(0),
            csr_pem: g.csr_pem.clone().unwrap_or_default(),
            certificate_days: g.certificate_days.unwrap_or(0),
        }
    }
}

/// What a grant produced.
#[derive(Clone, Debug)]
pub struct GrantOutcome {
    pub grant: Grant,
    /// The party's certificate (PEM) when a CSR was given.
    pub certificate_pem: Option<String>,
    /// The owner's server CA (PEM), for the party to trust the key service.
    pub server_ca_pem: String,
    pub owner_id: ambishare_shared::OwnerId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unspecified_tier_in_grant_request() {
        let p = pb::GrantRequest { party: "p".into(), dataset: "d".into(), tier: 0, ..Default::default() };
        assert!(GrantRequest::try_from(p).is_err());
    }

    #[test]
    fn audit_events_round_trip() {
        let e = AuditEvent::new("GetKeys", "p").denied("x", Denial::Expired).detail("d");
        assert_eq!(AuditEvent::try_from(pb::AuditEvent::from(&e)).unwrap(), e);
        let e = AuditEvent::new("GetKeys", "p").released("y", Tier::Full);
        assert_eq!(AuditEvent::try_from(pb::AuditEvent::from(&e)).unwrap(), e);
    }
}
