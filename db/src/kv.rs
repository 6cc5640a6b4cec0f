//! The key-value half: namespaces of byte keys, create-if-absent, ordered pages.

use std::borrow::Cow;
use std::fmt;
use std::ops::Bound;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};

/// The longest namespace name, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// A checked namespace name: `[a-z0-9][a-z0-9_]*`, at most 64 bytes.
///
/// The names are directory names on S3 and tree names in sled, so they are
/// kept to a set that needs no escaping anywhere. Names starting with `_`
/// belong to the crate itself (the blob store's chunks and manifests).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(Cow<'static, str>);

/// Why `name` is not a namespace a caller may use, if it is not.
const fn namespace_fault(name: &str) -> Option<&'static str> {
    let bytes = name.as_bytes();
    if bytes.is_empty() {
        return Some("it is empty");
    }
    if bytes.len() > MAX_NAMESPACE_LEN {
        return Some("it is longer than 64 bytes");
    }
    if bytes[0] == b'_' {
        return Some("names starting with '_' are reserved for the storage crate");
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Some("only a-z, 0-9 and '_' are allowed");
        }
        i += 1;
    }
    None
}

impl Namespace {
    /// Checks a namespace name.
    pub fn new(name: &str) -> Result<Self> {
        match namespace_fault(name) {
            None => Ok(Namespace(Cow::Owned(name.to_owned()))),
            Some(why) => Err(Error::InvalidNamespace { name: name.to_owned(), why }),
        }
    }

    /// A namespace fixed in the code: `const ENTRIES: Namespace = Namespace::from_static("entries");`.
    /// An invalid name fails the build when used in a `const`.
    pub const fn from_static(name: &'static str) -> Self {
        if namespace_fault(name).is_some() {
            panic!("invalid namespace name");
        }
        Namespace(Cow::Borrowed(name))
    }

    /// The crate's own namespaces, which callers cannot name.
    pub(crate) const fn internal(name: &'static str) -> Self {
        Namespace(Cow::Borrowed(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({})", self.0)
    }
}

impl std::str::FromStr for Namespace {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Namespace::new(s)
    }
}

/// The outcome of [`KvStore::put_if_absent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Creation {
    /// This call created the key.
    Created,
    /// The key was already there; its value was left as it was.
    AlreadyExists,
}

impl Creation {
    pub fn is_created(self) -> bool {
        self == Creation::Created
    }
}

/// A key and its value, as [`KvStore::list`] returns them.
pub type Pair = (Vec<u8>, Bytes);

/// Byte-level key-value operations of a backend, in namespaces.
///
/// Keys are meant to be written once (create-if-absent) and read many times;
/// [`put`](KvStore::put) overwrites for a node's own mutable records. There is
/// no multi-key transaction: S3 has none. Every write is durable on return on
/// S3; on sled, once [`flush`](KvStore::flush) returns.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// The value of `key`, or None.
    async fn get(&self, namespace: &Namespace, key: &[u8]) -> Result<Option<Bytes>>;

    /// Writes `value` under `key` unless the key exists. Of concurrent
    /// creators of one key exactly one gets [`Creation::Created`].
    ///
    /// On S3 a create whose answer was lost and that the client retried can
    /// report `AlreadyExists` for its own write: callers that care compare
    /// the stored value with theirs.
    async fn put_if_absent(&self, namespace: &Namespace, key: &[u8], value: Bytes) -> Result<Creation>;

    /// Writes `value` under `key`, replacing any value (last writer wins).
    async fn put(&self, namespace: &Namespace, key: &[u8], value: Bytes) -> Result<()>;

    /// Removes `key`; removing an absent key is no error.
    async fn delete(&self, namespace: &Namespace, key: &[u8]) -> Result<()>;

    /// Up to `limit` keys starting with `prefix` and greater than `after`,
    /// in byte order. A page shorter than `limit` is the last one.
    ///
    /// By default [`list`](KvStore::list) without the values: embedded
    /// backends read values with their keys anyway. S3 lists keys alone.
    async fn list_keys(
        &self,
        namespace: &Namespace,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>> {
        Ok(self.list(namespace, prefix, after, limit).await?.into_iter().map(|(k, _)| k).collect())
    }

    /// Like [`list_keys`](KvStore::list_keys), with each key's value. A key
    /// deleted while the page is read may be left out (S3 lists, then gets).
    async fn list(&self, namespace: &Namespace, prefix: &[u8], after: Option<&[u8]>, limit: usize)
    -> Result<Vec<Pair>>;

    /// Makes every write so far durable (a no-op where writes are durable on return).
    async fn flush(&self) -> Result<()>;
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The start and end of a range of keys in an ordered map.
pub(crate) type KeyBounds = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The bounds of a listing in an ordered map; None when it is empty.
pub(crate) fn list_bounds(prefix: &[u8], after: Option<&[u8]>) -> Option<KeyBounds> {
    let start = match after {
        Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
        _ => Bound::Included(prefix.to_vec()),
    };
    let end = prefix_end(prefix);
    // BTreeMap::range panics on an inverted range: report it empty instead.
    if let (Bound::Included(s) | Bound::Excluded(s), Some(e)) = (&start, &end)
        && s >= e
    {
        return None;
    }
    Some((start, end.map_or(Bound::Unbounded, Bound::Excluded)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_checked() {
        assert_eq!(Namespace::new("entries_2").map(|n| n.to_string()).ok().as_deref(), Some("entries_2"));
        for bad in ["", "Entries", "a-b", "a/b", "_chunks", "é", &"a".repeat(65)] {
            assert!(matches!(Namespace::new(bad), Err(Error::InvalidNamespace { .. })), "{bad:?}");
        }
        const FIXED: Namespace = Namespace::from_static("fixed");
        assert_eq!(FIXED.as_str(), "fixed");
    }

    #[test]
    fn prefix_end_skips_saturated_bytes() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn list_bounds_are_empty_past_the_prefix() {
        assert_eq!(list_bounds(b"ab", Some(b"b")), None);
        assert_eq!(
            list_bounds(b"ab", Some(b"a")),
            Some((Bound::Included(b"ab".to_vec()), Bound::Excluded(b"ac".to_vec())))
        );
        assert_eq!(list_bounds(b"\xff", Some(b"\xff\x01")).map(|b| b.1), Some(Bound::Unbounded));
    }
}
