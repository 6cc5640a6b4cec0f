//! Typed identifiers, parsed once at the edge.

use std::fmt;
use std::str::FromStr;

use ambishare_proto::types::v1 as pb;
use ring::digest;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Identifies one published entry: a UUID v7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntryId(Uuid);

impl EntryId {
    /// A fresh id for an entry created now.
    pub fn new() -> Self {
        EntryId(Uuid::now_v7())
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Result<Self> {
        Self::checked(Uuid::from_bytes(bytes))
    }

    fn checked(uuid: Uuid) -> Result<Self> {
        if uuid.get_version_num() != 7 {
            return Err(Error::invalid("entry id", "not a UUID v7"));
        }
        Ok(EntryId(uuid))
    }

    /// Milliseconds since the Unix epoch encoded in the id.
    pub fn unix_ms(&self) -> u64 {
        let b = self.0.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

impl Default for EntryId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for EntryId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 36 {
            return Err(Error::invalid("entry id", "expected a hyphenated UUID of 36 characters"));
        }
        let uuid = Uuid::try_parse(s).map_err(|e| Error::invalid("entry id", e.to_string()))?;
        Self::checked(uuid)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({self})")
    }
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            pub fn from_bytes(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                if s.len() != 2 * $len || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                    return Err(Error::invalid($what, concat!("expected ", stringify!($len), " bytes as lowercase hex")));
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|e| Error::invalid($what, e.to_string()))?;
                Ok($name(out))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(
    /// Identifies an owner: the first 16 bytes of SHA-256 of its Ed25519 public key,
    /// so anyone holding the id can check a public key offered for it.
    OwnerId, 16, "owner id"
);

hex_id!(
    /// Identifies a model: SHA-256 of its manifest's bytes (which name the SHA-256 of each file).
    ModelId, 32, "model id"
);

impl OwnerId {
    pub fn from_public_key(public_key: &[u8]) -> Self {
        let d = digest::digest(&digest::SHA256, public_key);
        let mut out = [0u8; 16];
        out.copy_from_slice(&d.as_ref()[..16]);
        OwnerId(out)
    }
}

impl ModelId {
    pub fn of_manifest(manifest_bytes: &[u8]) -> Self {
        ModelId(sha256(manifest_bytes))
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn check_name(what: &'static str, s: &str, max: usize) -> Result<()> {
    if s.is_empty() || s.len() > max {
        return Err(Error::invalid(what, format!("must be 1 to {max} characters")));
    }
    if !s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-')) {
        return Err(Error::invalid(what, "only lowercase letters, digits, '.', '_' and '-' are allowed"));
    }
    if s.starts_with('.') || s.starts_with('-') {
        return Err(Error::invalid(what, "must not start with '.' or '-'"));
    }
    Ok(())
}

/// A validated name: a `String` newtype whose every constructor runs `$check`
/// (`check_name` unless given).
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        name_type!($(#[$doc])* $name, $what, $max, check_name);
    };
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr, $check:path) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest name, in characters.
            pub const MAX_LEN: usize = $max;

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                $check($what, s, $max)?;
                Ok($name(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                $check($what, &s, $max)?;
                Ok($name(s))
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:?})"), self.0)
            }
        }
    };
}

name_type!(
    /// A dataset of one owner: lowercase letters, digits, '.', '_' and '-', 1 to 64 characters.
    DatasetName, "dataset name", 64
);

name_type!(
    /// A party (a data user) as the owner names it; also the common name of its certificate.
    PartyName, "party name", 64
);

name_type!(
    /// The name an owner registers under at the registry, shown to everyone who
    /// browses it. The registry's rules, checked here so that the owner refuses
    /// at its edge what the registry would refuse after a model upload: 1 to
    /// [`DisplayName::MAX_LEN`] characters, none of them a control character
    /// (a newline or an escape would forge lines in logs and pages). On the wire
    /// an empty string means "no name", so the type itself is never empty.
    DisplayName, "display name", 128, check_display_name
);

/// [`DisplayName`]'s rules: 1 to `max` characters (Unicode scalar values, not
/// bytes), no control characters.
fn check_display_name(what: &'static str, s: &str, max: usize) -> Result<()> {
    // Counting stops past the limit: a huge input costs no more than a long one.
    let chars = s.chars().take(max + 1).count();
    if chars == 0 || chars > max {
        return Err(Error::invalid(what, format!("must be 1 to {max} characters")));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(what, "must not contain control characters"));
    }
    Ok(())
}

/// How much of an image's support a key reveals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Every real nonzero.
    Full,
    /// Only the largest-magnitude real nonzeros.
    Preview,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Full => "full",
            Tier::Preview => "preview",
        }
    }

    /// Tag used in the support-key format.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Tier::Full => 1,
            Tier::Preview => 2,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(Tier::Full),
            2 => Some(Tier::Preview),
            _ => None,
        }
    }

    /// Whether a grant of this tier allows releasing a key of tier `other`.
    pub fn allows(self, other: Tier) -> bool {
        self == Tier::Full || other == Tier::Preview
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "full" => Ok(Tier::Full),
            "preview" => Ok(Tier::Preview),
            _ => Err(Error::invalid("tier", "expected `full` or `preview`")),
        }
    }
}

impl TryFrom<i32> for Tier {
    type Error = Error;
    fn try_from(v: i32) -> Result<Self> {
        match pb::Tier::try_from(v) {
            Ok(pb::Tier::Full) => Ok(Tier::Full),
            Ok(pb::Tier::Preview) => Ok(Tier::Preview),
            _ => Err(Error::invalid("tier", format!("unknown tier {v}"))),
        }
    }
}

impl From<Tier> for pb::Tier {
    fn from(t: Tier) -> Self {
        match t {
            Tier::Full => pb::Tier::Full,
            Tier::Preview => pb::Tier::Preview,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_id_round_trips_and_rejects_other_versions() {
        let id = EntryId::new();
        assert_eq!(id.to_string().parse::<EntryId>().unwrap(), id);
        assert!("8c5f6b4e-1234-4abc-8def-0123456789ab".parse::<EntryId>().is_err()); // v4
        assert!("not-a-uuid".parse::<EntryId>().is_err());
        assert!(EntryId::new().unix_ms() > 1_700_000_000_000);
    }

    #[test]
    fn hex_ids_reject_uppercase_and_wrong_length() {
        let id = OwnerId::from_public_key(&[7u8; 32]);
        assert_eq!(id.to_string().parse::<OwnerId>().unwrap(), id);
        assert!(id.to_string().to_uppercase().parse::<OwnerId>().is_err());
        assert!("abcd".parse::<ModelId>().is_err());
    }

    #[test]
    fn names_are_checked() {
        assert!("faces-2026.v1".parse::<DatasetName>().is_ok());
        for bad in ["", "Faces", "a b", "../x", ".hidden", "-x", &"a".repeat(65)] {
            assert!(bad.parse::<DatasetName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_names_take_up_to_128_printable_characters() {
        for good in ["Ada", "<b>Ada</b> & \"co\"", "Zoë Ångström 東京", " spaced ", &"é".repeat(128)] {
            let name: DisplayName = good.parse().unwrap();
            assert_eq!(name.as_str(), good);
            assert_eq!(DisplayName::try_from(good.to_owned()).unwrap(), name);
        }
    }

    #[test]
    fn rejects_empty_long_and_control_display_names() {
        let too_long = "a".repeat(129);
        for bad in ["", &too_long, "line\nbreak", "tab\there", "nul\0", "esc\u{1b}[31m", "del\u{7f}", "c1\u{85}"] {
            let err = bad.parse::<DisplayName>().unwrap_err();
            assert!(matches!(err, Error::Invalid { what: "display name", .. }), "{bad:?}: {err}");
            assert!(DisplayName::try_from(bad.to_owned()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn display_names_deserialize_only_when_valid() {
        #[derive(Deserialize)]
        struct Config {
            name: DisplayName,
        }
        let ok: Config = serde_json::from_str(r#"{"name":"Ada"}"#).unwrap();
        assert_eq!(ok.name.as_str(), "Ada");
        assert!(serde_json::from_str::<Config>(r#"{"name":"a\u0007b"}"#).is_err());
        assert_eq!(serde_json::to_string(&ok.name).unwrap(), r#""Ada""#);
    }

    #[test]
    fn tiers_allow_downgrade_only() {
        assert!(Tier::Full.allows(Tier::Preview));
        assert!(!Tier::Preview.allows(Tier::Full));
    }
}
