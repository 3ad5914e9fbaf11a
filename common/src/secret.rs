//! A value that must never be shown: a token, a password, a key. The one redacting type of both binaries:
//! `Debug` prints `Secret(<redacted>)`, there is no `Display`, and the value is reached only through
//! [`Secret::expose`] where it is used (a header, the CLI's stdin envelope, the AWS SDK's credentials).

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The value itself, for where it is used; never for logs, errors or stored rows.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// For flags and environment variables (`--gms-token`).
impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(value: &str) -> Result<Secret, Self::Err> {
        Ok(Secret(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_never_shows_the_value() {
        let secret: super::Secret = "hunter2".parse().unwrap();
        assert_eq!(format!("{secret:?} {:?}", Some(&secret)), "Secret(<redacted>) Some(Secret(<redacted>))");
        assert_eq!(secret.expose(), "hunter2");
    }
}
