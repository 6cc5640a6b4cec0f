//! Times as people read them: RFC 3339 in UTC, to the second.

use std::time::{Duration, SystemTime};

/// The first millisecond of year 10000, which RFC 3339 cannot write.
const YEAR_10000_MS: i64 = 253_402_300_800_000;

/// `unix_ms` (milliseconds since 1970-01-01 UTC) in RFC 3339, such as
/// `2026-12-01T09:30:00Z`. A stored or received time may lie outside what
/// RFC 3339 can write (an entry id's clock reaches year 10889): those read
/// "before 1970" and "after year 9999" instead of panicking.
pub fn rfc3339_from_unix_ms(unix_ms: i64) -> String {
    if unix_ms < 0 {
        return "before 1970".into();
    }
    if unix_ms >= YEAR_10000_MS {
        return "after year 9999".into();
    }
    // Non-negative, checked above.
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms.unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_ms_as_rfc3339() {
        assert_eq!(rfc3339_from_unix_ms(0), "1970-01-01T00:00:00Z");
        // The example: a creation time printed as raw milliseconds.
        assert_eq!(rfc3339_from_unix_ms(1_796_145_283_227), "2026-12-01T17:14:43Z");
        assert_eq!(rfc3339_from_unix_ms(YEAR_10000_MS - 1), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn times_rfc3339_cannot_write_are_named_without_panicking() {
        assert_eq!(rfc3339_from_unix_ms(-1), "before 1970");
        assert_eq!(rfc3339_from_unix_ms(i64::MIN), "before 1970");
        assert_eq!(rfc3339_from_unix_ms(YEAR_10000_MS), "after year 9999");
        assert_eq!(rfc3339_from_unix_ms(i64::MAX), "after year 9999");
        // The largest time a UUIDv7 entry id can carry (48 bits of milliseconds).
        assert_eq!(rfc3339_from_unix_ms((1 << 48) - 1), "after year 9999");
    }
}
