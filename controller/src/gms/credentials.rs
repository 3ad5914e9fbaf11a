//! The GMS access token: given on the command line or in the environment, or read from a file that may be
//! replaced while the controller runs (a mounted Secret, a CSI or Vault mount; DataHub's chart's
//! `global.datahub.auth.tokenFile`). Owns reading it; never shows it in logs, errors or `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// A bearer token (`Debug` never shows it).
pub type Token = outpost_common::secret::Secret;

/// Where each GMS call's token comes from.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// No token (a GMS without authentication).
    #[default]
    None,
    Given(Token),
    /// Read again whenever the file changes, so a rotated Secret is used without a restart.
    File(Arc<TokenFile>),
}

impl Credentials {
    pub fn from_file(path: &Path) -> Credentials {
        Credentials::File(Arc::new(TokenFile { path: path.to_owned(), cached: Mutex::new(None) }))
    }

    /// The token for the next call.
    pub fn current(&self) -> Result<Option<Token>, TokenFileError> {
        match self {
            Credentials::None => Ok(None),
            Credentials::Given(token) => Ok(Some(token.clone())),
            Credentials::File(file) => file.current().map(Some),
        }
    }
}

/// Why the token file gave no token; an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the GMS token file {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("the GMS token file {} is empty", path.display())]
    Empty { path: PathBuf },
}

/// A token file and the token last read from it (with the file's modification time then).
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(SystemTime, Token)>>,
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl TokenFile {
    fn current(&self) -> Result<Token, TokenFileError> {
        let unreadable = |source| TokenFileError::Unreadable { path: self.path.clone(), source };
        // metadata() follows symbolic links: a Kubernetes Secret volume swaps its `..data` link on an update.
        let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).map_err(unreadable)?;
        let mut cached = self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, token)) = cached.as_ref()
            && *at == modified
        {
            return Ok(token.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(unreadable)?;
        let text = text.trim();
        if text.is_empty() {
            return Err(TokenFileError::Empty { path: self.path.clone() });
        }
        let token = Token::new(text.to_owned());
        *cached = Some((modified, token.clone()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_read_again_and_a_missing_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let credentials = Credentials::from_file(&path);
        let missing = credentials.current().unwrap_err().to_string();
        assert!(missing.starts_with(&format!("cannot read the GMS token file {}", path.display())), "{missing}");

        std::fs::write(&path, "first-token\n").unwrap();
        assert_eq!(credentials.current().unwrap(), Some(Token::new("first-token".into())));
        // A new file in its place (as a Secret volume's update does), with a later modification time.
        let next = dir.path().join("token.new");
        std::fs::write(&next, "second-token").unwrap();
        let later = std::fs::metadata(&path).unwrap().modified().unwrap() + std::time::Duration::from_secs(2);
        std::fs::File::options().write(true).open(&next).unwrap().set_modified(later).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(credentials.current().unwrap(), Some(Token::new("second-token".into())));

        std::fs::write(&path, " \n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(2))
            .unwrap();
        assert_eq!(
            credentials.current().unwrap_err().to_string(),
            format!("the GMS token file {} is empty", path.display())
        );
        let shown = format!("{credentials:?}");
        assert!(!shown.contains("second-token") && !shown.contains("first-token"), "{shown}");
    }
}
