//! Who may see the status page: login tokens an admin makes (`outpostctl ui-tokens create`, stored as hashes
//! only, each with the role its sessions act with), and the sessions a login opens (in SQLite, so a restart logs
//! nobody out; a cookie carries a random id, the database only its hash). Must never log, store or show a token's
//! secret or a session id.

use std::time::Duration;

use outpost_common::clock::unix_ms;
use outpost_common::join::{JoinToken, random_text, sha256_hex};
use outpost_common::roles::Role;

use crate::store::{self, Audit, NewUiToken, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("no login token {0}")]
    NotFound(String),
    #[error("the token lifetime must be 1 s to 90 days")]
    BadTtl,
}

/// Why a login was refused (the page shows one text for all, so that it does not tell which part was wrong).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    Unknown,
    Wrong,
    Expired,
    Revoked,
}

/// A token made for an operator: shown once.
#[derive(Debug)]
pub struct Created {
    pub id: String,
    pub token: String,
    pub expires_at_ms: i64,
    pub role: Role,
}

/// Login tokens and sessions. Cheap to clone.
#[derive(Clone)]
pub struct Logins {
    store: Store,
    session_ttl: Duration,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logins")
    }
}

fn session_hash(id: &str) -> String {
    sha256_hex(&[b"outpost-ui-session:", id.as_bytes()])
}

/// Longest lifetime of a login token.
const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);

impl Logins {
    pub fn new(store: Store, session_ttl: Duration) -> Logins {
        Logins { store, session_ttl }
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }

    /// Makes a login token valid for `ttl`.
    pub async fn create(
        &self,
        ttl: Duration,
        description: &str,
        role: Role,
        created_by: &str,
        audit: Option<Audit>,
    ) -> Result<Created, Error> {
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(Error::BadTtl);
        }
        let token = JoinToken::generate();
        let now = unix_ms();
        let expires_at_ms = now.saturating_add(outpost_common::duration::signed_millis(ttl));
        let record = NewUiToken {
            id: token.id.clone(),
            secret_hash: token.ui_secret_hash(),
            description: description.to_owned(),
            created_by: created_by.to_owned(),
            expires_at_ms,
            role: role.as_str().to_owned(),
        };
        self.store.create_ui_token(&record, now, audit).await?;
        Ok(Created { id: token.id.clone(), token: token.reveal(), expires_at_ms, role })
    }

    /// Revokes a login token; its sessions end at their next request.
    pub async fn revoke(&self, id: &str, audit: Option<Audit>) -> Result<(), Error> {
        match self.store.revoke_ui_token(id, unix_ms(), audit).await? {
            true => Ok(()),
            false => Err(Error::NotFound(id.to_owned())),
        }
    }

    /// Checks a token typed at the login form; on success, opens a session and returns its id (for the cookie).
    pub async fn login(&self, typed: &str) -> Result<Result<String, Refused>, Error> {
        let Ok(token) = JoinToken::parse(typed) else { return Ok(Err(Refused::Malformed)) };
        let role = match self.token_valid(&token.id, Some(&token.ui_secret_hash())).await? {
            Ok(role) => role,
            Err(refused) => return Ok(Err(refused)),
        };
        let id = random_text(40);
        let now = unix_ms();
        let expires_at_ms = now.saturating_add(outpost_common::duration::signed_millis(self.session_ttl));
        self.store.open_ui_session(&session_hash(&id), &token.id, role.as_str(), now, expires_at_ms).await?;
        Ok(Ok(id))
    }

    /// The token's role if it may log in (or keep a session): known, the secret right, not revoked, not expired.
    async fn token_valid(&self, id: &str, secret_hash: Option<&str>) -> Result<Result<Role, Refused>, Error> {
        let Some(stored) = self.store.ui_token(id).await? else { return Ok(Err(Refused::Unknown)) };
        // Digests are compared, not secrets: timing tells nothing about the secret.
        if let Some(hash) = secret_hash
            && hash != stored.secret_hash
        {
            return Ok(Err(Refused::Wrong));
        }
        if stored.revoked_at_ms.is_some() {
            return Ok(Err(Refused::Revoked));
        }
        if stored.expires_at_ms <= unix_ms() {
            return Ok(Err(Refused::Expired));
        }
        // A role this build does not know (a newer controller wrote it) acts as the least one.
        Ok(Ok(stored.role.parse().unwrap_or(Role::Viewer)))
    }

    /// A live session whose token is still valid; `None` otherwise.
    pub async fn session(&self, session_id: &str) -> Result<Option<Session>, Error> {
        let hash = session_hash(session_id);
        let Some((token_id, role, expires_at_ms)) = self.store.ui_session(&hash).await? else { return Ok(None) };
        if expires_at_ms <= unix_ms() || self.token_valid(&token_id, None).await?.is_err() {
            self.store.close_ui_session(&hash).await?;
            return Ok(None);
        }
        let csrf = sha256_hex(&[b"outpost-ui-csrf:", session_id.as_bytes()]);
        Ok(Some(Session { token_id, role: role.parse().unwrap_or(Role::Viewer), csrf }))
    }

    pub async fn logout(&self, session_id: &str) -> Result<(), Error> {
        Ok(self.store.close_ui_session(&session_hash(session_id)).await?)
    }
}

/// A logged-in browser: its login token, the token's role, and the form token its posts must carry.
#[derive(Clone, Debug)]
pub struct Session {
    pub token_id: String,
    pub role: Role,
    /// Bound to the session (derived from its id, which only the browser's HttpOnly cookie holds): a page of
    /// another site cannot know it.
    pub csrf: String,
}

impl Session {
    /// The audit trail's name for it.
    pub fn actor(&self) -> String {
        format!("ui-token/{}", self.token_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_opens_sessions_until_it_is_revoked_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), false).await.unwrap();
        let logins = Logins::new(store, Duration::from_secs(3600));
        let created =
            logins.create(Duration::from_secs(60), "for tests", Role::Operator, "admin/ops", None).await.unwrap();
        assert!(created.token.starts_with(&format!("{}.", created.id)));
        assert_eq!(logins.login("not a token").await.unwrap(), Err(Refused::Malformed));
        let wrong = format!("{}.{}", created.id, "a".repeat(16));
        assert_eq!(logins.login(&wrong).await.unwrap(), Err(Refused::Wrong));
        assert_eq!(logins.login("zzzzzz.aaaaaaaaaaaaaaaa").await.unwrap(), Err(Refused::Unknown));
        let session = logins.login(&created.token).await.unwrap().unwrap();
        assert!(logins.session(&session).await.unwrap().is_some());
        assert_eq!(logins.session(&session).await.unwrap().map(|s| s.role), Some(Role::Operator), "the token's role");
        assert_eq!(created.role, Role::Operator);
        assert!(logins.session("forged-session").await.unwrap().is_none());
        logins.revoke(&created.id, None).await.unwrap();
        assert!(logins.session(&session).await.unwrap().is_none(), "revoking the token ends its sessions");
        assert_eq!(logins.login(&created.token).await.unwrap(), Err(Refused::Revoked));
        assert!(matches!(logins.revoke("nosuch", None).await, Err(Error::NotFound(_))));
        assert!(matches!(logins.create(Duration::ZERO, "", Role::Viewer, "a", None).await, Err(Error::BadTtl)));
    }
}
