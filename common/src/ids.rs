//! Typed identifiers: execution request ids, worker IDs, pools and fencing epochs. Parsing happens here, once.

use std::fmt;

/// The prefix of an execution request URN.
pub const EXECUTION_REQUEST_URN_PREFIX: &str = "urn:li:dataHubExecutionRequest:";

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} has a character outside [A-Za-z0-9._-]")]
    BadCharacter { what: &'static str, value: String },
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong { what: &'static str, len: usize, max: usize },
}

fn check_token(what: &'static str, value: &str, max: usize) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::Empty { what });
    }
    if value.len() > max {
        return Err(Error::TooLong { what, len: value.len(), max });
    }
    if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err(Error::BadCharacter { what, value: value.to_owned() });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Parses and checks the identifier.
            pub fn parse(value: &str) -> Result<Self, Error> {
                check_token($what, value, $max)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// The execution request id: the part of `urn:li:dataHubExecutionRequest:<id>` after the prefix. The task's
    /// natural key.
    TaskId,
    "execution request id",
    200
);
string_id!(
    /// A worker ID, proven by the agent's certificate.
    WorkerId,
    "worker ID",
    128
);
string_id!(
    /// A pool: DataHub's `executorId` routing key.
    PoolId,
    "pool",
    128
);

impl TaskId {
    /// A fresh random id (UUID v4 text), as GMS mints them.
    pub fn from_uuid(uuid: impl fmt::Display) -> Self {
        Self(uuid.to_string())
    }

    /// Accepts either the bare id or the full URN.
    pub fn parse_id_or_urn(value: &str) -> Result<Self, Error> {
        Self::parse(value.strip_prefix(EXECUTION_REQUEST_URN_PREFIX).unwrap_or(value))
    }

    /// `urn:li:dataHubExecutionRequest:<id>`.
    pub fn urn(&self) -> String {
        format!("{EXECUTION_REQUEST_URN_PREFIX}{}", self.0)
    }
}

/// A fencing token: bumped by every grant of a task; every message about an attempt carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One attempt of one task, fenced by its epoch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttemptRef {
    pub task_id: TaskId,
    pub epoch: Epoch,
}

impl fmt::Display for AttemptRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.task_id, self.epoch)
    }
}

/// The version GMS gives an aspect (`systemMetadata.version`, a string; `-1` when the aspect does not exist), which
/// its conditional writes compare (`If-Version-Match`, datahub-protocol.md §2.6). Outpost's claim on an execution
/// request is the version of the `dataHubExecutionRequestResult` it last wrote.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AspectVersion(String);

impl AspectVersion {
    /// The version of an aspect that does not exist yet.
    pub fn absent() -> AspectVersion {
        AspectVersion("-1".to_owned())
    }

    pub fn new(version: impl Into<String>) -> AspectVersion {
        AspectVersion(version.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The version GMS gives the aspect after one more accepted write: `-1` → `1`, `n` → `n + 1`. A guess where the
    /// version is not a number; a wrong guess only costs a re-read (the claim's holder is recognised).
    pub fn next(&self) -> AspectVersion {
        match self.0.parse::<i64>() {
            Ok(n) if n < 1 => AspectVersion("1".to_owned()),
            Ok(n) => AspectVersion((n + 1).to_string()),
            Err(_) => self.clone(),
        }
    }
}

impl fmt::Display for AspectVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aspect_versions_count_from_absent() {
        assert_eq!(AspectVersion::absent().next(), AspectVersion::new("1"));
        assert_eq!(AspectVersion::new("1").next(), AspectVersion::new("2"));
        assert_eq!(AspectVersion::new("41").next().as_str(), "42");
    }

    #[test]
    fn task_id_accepts_bare_id_and_urn() {
        let id = TaskId::parse_id_or_urn("urn:li:dataHubExecutionRequest:abc-123").unwrap();
        assert_eq!(id.as_str(), "abc-123");
        assert_eq!(id.urn(), "urn:li:dataHubExecutionRequest:abc-123");
        assert_eq!(TaskId::parse_id_or_urn("abc-123").unwrap(), id);
    }

    #[test]
    fn ids_refuse_empty_and_odd_characters() {
        assert_eq!(WorkerId::parse(""), Err(Error::Empty { what: "worker ID" }));
        assert_eq!(WorkerId::parse("a/b"), Err(Error::BadCharacter { what: "worker ID", value: "a/b".into() }));
        assert_eq!(PoolId::parse(&"x".repeat(129)), Err(Error::TooLong { what: "pool", len: 129, max: 128 }));
    }
}
