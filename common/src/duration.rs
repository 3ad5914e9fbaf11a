//! Human-readable durations (`5s`, `2m`, `150ms`) for command-line flags. A bare number is seconds, as in
//! DataHub's own variables (`DATAHUB_EXECUTOR_INGESTION_SIGNAL_POLL_INTERVAL=2`).

use std::time::Duration;

/// `d` in whole milliseconds (saturating: no interval here comes near 584 million years).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` in whole milliseconds as a signed number, to add to Unix-ms times (saturating).
pub fn signed_millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `d` in whole seconds as a signed number (saturating).
pub fn signed_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Why a duration flag's value is refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Unparsable {
    #[error("{0:?}: {1}")]
    Seconds(String, std::time::TryFromFloatSecsError),
    #[error("{0:?}: {1}")]
    Text(String, humantime::DurationError),
}

/// A clap value parser for durations.
pub fn parse(value: &str) -> Result<Duration, Unparsable> {
    if let Ok(seconds) = value.trim().parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| Unparsable::Seconds(value.to_owned(), e));
    }
    humantime::parse_duration(value).map_err(|e| Unparsable::Text(value.to_owned(), e))
}

/// A flag value a program refuses at start, with the flag's name in the message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// `flag` must be greater than zero.
pub fn positive(flag: &str, value: Duration) -> Result<(), Invalid> {
    if value.is_zero() { Err(Invalid(format!("{flag} must be greater than zero"))) } else { Ok(()) }
}

/// `flag` must be a whole number of seconds (for APIs that count in seconds, such as SQS: a fraction would be
/// cut off silently).
pub fn whole_seconds(flag: &str, value: Duration) -> Result<(), Invalid> {
    if value.subsec_nanos() == 0 {
        Ok(())
    } else {
        Err(Invalid(format!("{flag} must be a whole number of seconds (SQS counts in seconds), not {value:?}")))
    }
}

/// `flag` (`value`) must be shorter than `other` (`limit`).
pub fn shorter(flag: &str, value: Duration, other: &str, limit: Duration) -> Result<(), Invalid> {
    if value < limit {
        Ok(())
    } else {
        Err(Invalid(format!("{flag} ({value:?}) must be shorter than {other} ({limit:?})")))
    }
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

    #[test]
    fn checks_say_which_flag_is_wrong() {
        assert_eq!(
            positive("--lease-ttl", Duration::ZERO).unwrap_err().to_string(),
            "--lease-ttl must be greater than zero"
        );
        assert_eq!(
            whole_seconds("--sqs-wait", Duration::from_millis(1500)).unwrap_err().to_string(),
            "--sqs-wait must be a whole number of seconds (SQS counts in seconds), not 1.5s"
        );
        assert!(whole_seconds("--sqs-wait", Duration::from_secs(2)).is_ok());
        assert_eq!(
            shorter("--a", Duration::from_secs(2), "--b", Duration::from_secs(2)).unwrap_err().to_string(),
            "--a (2s) must be shorter than --b (2s)"
        );
    }
}
