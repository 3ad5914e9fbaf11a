//! Human-readable durations (`5s`, `2m`, `150ms`) for command-line flags. A bare number is seconds, as in
//! DataHub's own variables (`DATAHUB_EXECUTOR_INGESTION_SIGNAL_POLL_INTERVAL=2`).

use std::time::Duration;

/// A clap value parser for durations.
pub fn parse(value: &str) -> Result<Duration, String> {
    if let Ok(seconds) = value.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| format!("{value:?}: {e}"));
    }
    humantime::parse_duration(value).map_err(|e| format!("{value:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_and_bare_seconds() {
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("150ms"), Ok(Duration::from_millis(150)));
        assert_eq!(parse("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse("-1").is_err());
        assert!(parse("soon").is_err());
    }
}
