//! Human-readable durations (`5s`, `2m`, `150ms`) for command-line flags.

use std::time::Duration;

/// A clap value parser for humantime durations.
pub fn parse(value: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(value)
}
