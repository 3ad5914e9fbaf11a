//! Wall-clock time as Unix milliseconds, the unit every stored and wire timestamp uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(crate::duration::signed_millis).unwrap_or(0)
}

/// A Unix-ms time as a `SystemTime` (a time before the epoch is the epoch).
pub fn system_time(unix_ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0))
}

/// Unix seconds as a `SystemTime` (a time before the epoch is the epoch).
pub fn system_time_secs(unix_secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_secs).unwrap_or(0))
}
