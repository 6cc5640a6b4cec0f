//! What an owner node tells its clients about access: a party's [`Grant`]s
//! and, for each key it withholds, the [`Denial`]; with their checked
//! conversions from and to protobuf. The owner node decides with these, and
//! its clients read them: so they live here, below both.

use std::fmt;

use ambishare_proto::owner::v1 as pb;
use ambishare_proto::types::v1 as types_pb;
use ambishare_shared::{DatasetName, Error, PartyName, Result, Tier};
use tonic::Status;
use tonic::metadata::MetadataValue;

/// Metadata key of a `PermissionDenied` status that names its [`Denial`]
/// (the protobuf number), so a client tells a revoked certificate from an
/// expired one by value, not by the wording of the message.
pub const DENIAL_METADATA_KEY: &str = "ambishare-denial";

/// Why a key was not released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Denial {
    /// The party holds no grant on the entry's dataset.
    NotGranted,
    /// The grant (or the party's certificate) was revoked.
    Revoked,
    /// The grant has expired.
    Expired,
    /// This owner published no such entry.
    UnknownEntry,
    /// The id is not a valid entry id.
    InvalidId,
    /// The client certificate was refused in the TLS handshake (audit log only).
    CertificateRefused,
}

impl Denial {
    /// How reports and the audit log name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::NotGranted => "not granted",
            Denial::Revoked => "revoked",
            Denial::Expired => "expired",
            Denial::UnknownEntry => "unknown entry",
            Denial::InvalidId => "invalid id",
            Denial::CertificateRefused => "certificate refused",
        }
    }
}

impl Denial {
    /// A `PermissionDenied` status that carries this denial.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut status = Status::permission_denied(message);
        status.metadata_mut().insert(DENIAL_METADATA_KEY, MetadataValue::from(pb::Denial::from(self) as i32));
        status
    }

    /// The denial a status carries, if it carries one this build knows.
    pub fn of_status(status: &Status) -> Option<Denial> {
        if status.code() != tonic::Code::PermissionDenied {
            return None;
        }
        let number: i32 = status.metadata().get(DENIAL_METADATA_KEY)?.to_str().ok()?.parse().ok()?;
        Denial::try_from(number).ok()
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Denial> for pb::Denial {
    fn from(d: Denial) -> Self {
        match d {
            Denial::NotGranted => pb::Denial::NotGranted,
            Denial::Revoked => pb::Denial::Revoked,
            Denial::Expired => pb::Denial::Expired,
            Denial::UnknownEntry => pb::Denial::UnknownEntry,
            Denial::InvalidId => pb::Denial::InvalidId,
            Denial::CertificateRefused => pb::Denial::CertificateRefused,
        }
    }
}

impl TryFrom<i32> for Denial {
    type Error = Error;
    fn try_from(v: i32) -> Result<Self> {
        match pb::Denial::try_from(v) {
            Ok(pb::Denial::NotGranted) => Ok(Denial::NotGranted),
            Ok(pb::Denial::Revoked) => Ok(Denial::Revoked),
            Ok(pb::Denial::Expired) => Ok(Denial::Expired),
            Ok(pb::Denial::UnknownEntry) => Ok(Denial::UnknownEntry),
            Ok(pb::Denial::InvalidId) => Ok(Denial::InvalidId),
            Ok(pb::Denial::CertificateRefused) => Ok(Denial::CertificateRefused),
            _ => Err(Error::Invalid { what: "denial", reason: format!("unknown denial {v}") }),
        }
    }
}

/// One party's access to one dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub party: PartyName,
    pub dataset: DatasetName,
    pub tier: Tier,
    pub granted_unix_ms: i64,
    /// None: never expires.
    pub expires_unix_ms: Option<i64>,
    /// None: not revoked.
    pub revoked_unix_ms: Option<i64>,
}

impl Grant {
    /// The tier the grant allows at `now_ms`, or why it allows nothing.
    pub fn check(&self, now_ms: i64) -> Result<Tier, Denial> {
        if self.revoked_unix_ms.is_some() {
            return Err(Denial::Revoked);
        }
        if self.expires_unix_ms.is_some_and(|t| now_ms >= t) {
            return Err(Denial::Expired);
        }
        Ok(self.tier)
    }

    pub fn is_active(&self, now_ms: i64) -> bool {
        self.check(now_ms).is_ok()
    }
}

fn positive(ms: i64) -> Option<i64> {
    (ms > 0).then_some(ms)
}

impl From<&Grant> for pb::GrantInfo {
    fn from(g: &Grant) -> Self {
        pb::GrantInfo {
            party: g.party.to_string(),
            dataset: g.dataset.to_string(),
            tier: types_pb::Tier::from(g.tier) as i32,
            granted_unix_ms: g.granted_unix_ms,
            expires_unix_ms: g.expires_unix_ms.unwrap_or(0),
            revoked_unix_ms: g.revoked_unix_ms.unwrap_or(0),
        }
    }
}

impl TryFrom<pb::GrantInfo> for Grant {
    type Error = Error;
    fn try_from(p: pb::GrantInfo) -> Result<Self> {
        Ok(Grant {
            party: p.party.parse()?,
            dataset: p.dataset.parse()?,
            tier: Tier::try_from(p.tier)?,
            granted_unix_ms: p.granted_unix_ms,
            expires_unix_ms: positive(p.expires_unix_ms),
            revoked_unix_ms: positive(p.revoked_unix_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_survives_its_status() {
        for denial in [Denial::Revoked, Denial::Expired, Denial::NotGranted] {
            let status = denial.status("certificate refused");
            assert_eq!(status.code(), tonic::Code::PermissionDenied);
            assert_eq!(Denial::of_status(&status), Some(denial));
        }
        assert_eq!(Denial::of_status(&Status::permission_denied("certificate revoked")), None);
        let mut unknown = Status::permission_denied("x");
        unknown.metadata_mut().insert(DENIAL_METADATA_KEY, MetadataValue::from(99));
        assert_eq!(Denial::of_status(&unknown), None);
        let mut other_code = Status::not_found("x");
        other_code.metadata_mut().insert(DENIAL_METADATA_KEY, MetadataValue::from(2));
        assert_eq!(Denial::of_status(&other_code), None);
    }

    #[test]
    fn grant_checks_revocation_before_expiry() {
        let g = Grant {
            party: "p".parse().unwrap(),
            dataset: "d".parse().unwrap(),
            tier: Tier::Preview,
            granted_unix_ms: 1,
            expires_unix_ms: Some(100),
            revoked_unix_ms: None,
        };
        assert_eq!(g.check(99), Ok(Tier::Preview));
        assert_eq!(g.check(100), Err(Denial::Expired));
        let revoked = Grant { revoked_unix_ms: Some(50), ..g.clone() };
        assert_eq!(revoked.check(200), Err(Denial::Revoked));
        assert_eq!(Grant::try_from(pb::GrantInfo::from(&g)).unwrap(), g);
    }

    #[test]
    fn denials_round_trip_and_unknown_ones_are_refused() {
        for d in [
            Denial::NotGranted,
            Denial::Revoked,
            Denial::Expired,
            Denial::UnknownEntry,
            Denial::InvalidId,
            Denial::CertificateRefused,
        ] {
            assert_eq!(Denial::try_from(pb::Denial::from(d) as i32).unwrap(), d);
        }
        assert!(Denial::try_from(0).unwrap_err().is_caller_fault());
        assert!(Denial::try_from(99).is_err());
    }

    #[test]
    fn rejects_grant_with_unspecified_tier() {
        let info = pb::GrantInfo { party: "p".into(), dataset: "d".into(), tier: 0, ..Default::default() };
        assert!(Grant::try_from(info).is_err());
    }
}
