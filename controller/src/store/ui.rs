//! Login tokens of the status page and the sessions they open: only hashes of their secrets and of session ids.

use rusqlite::params;

use super::audit::{self, Audit};
use super::writer::execute;
use super::{Error, Store};

/// A login token to record.
#[derive(Clone, Debug)]
pub struct NewUiToken {
    pub id: String,
    pub secret_hash: String,
    pub description: String,
    pub created_by: String,
    pub expires_at_ms: i64,
    /// viewer, operator or admin.
    pub role: String,
}

/// What checking a login needs.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UiTokenCheck {
    pub secret_hash: String,
    pub expires_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub role: String,
}

impl Store {
    pub async fn create_ui_token(&self, token: &NewUiToken, now_ms: i64, audit: Option<Audit>) -> Result<(), Error> {
        let token = token.clone();
        self.transaction(move |tx, _| {
            execute(
                tx,
                "INSERT INTO ui_tokens (id, secret_hash, description, created_by, created_at_ms, expires_at_ms, role) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
                params![
                    token.id,
                    token.secret_hash,
                    token.description,
                    token.created_by,
                    now_ms,
                    token.expires_at_ms,
                    token.role
                ],
            )?;
            audit::insert_done(tx, audit.as_ref(), now_ms)
        })
        .await
    }

    /// Revokes a login token (its sessions end at their next request); false for an unknown id.
    pub async fn revoke_ui_token(&self, id: &str, now_ms: i64, audit: Option<Audit>) -> Result<bool, Error> {
        let id = id.to_owned();
        self.transaction(move |tx, _| {
            let found = execute(
                tx,
                "UPDATE ui_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE id = ?",
                params![now_ms, id],
            )? > 0;
            if found {
                audit::insert_done(tx, audit.as_ref(), now_ms)?;
            }
            Ok(found)
        })
        .await
    }

    /// Records a session (by the hash of its id) and forgets the expired ones.
    pub async fn open_ui_session(
        &self,
        hash: &str,
        token_id: &str,
        role: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<(), Error> {
        let (hash, token_id, role) = (hash.to_owned(), token_id.to_owned(), role.to_owned());
        self.transaction(move |tx, _| {
            execute(tx, "DELETE FROM ui_sessions WHERE expires_at_ms <= ?", params![now_ms])?;
            execute(
                tx,
                "INSERT INTO ui_sessions (hash, token_id, role, created_at_ms, expires_at_ms) VALUES (?, ?, ?, ?, ?)",
                params![hash, token_id, role, now_ms, expires_at_ms],
            )
            .map(|_| ())
        })
        .await
    }

    /// (token id, role, expiry) of the session with this hash.
    pub async fn ui_session(&self, hash: &str) -> Result<Option<(String, String, i64)>, Error> {
        Ok(sqlx::query_as("SELECT token_id, role, expires_at_ms FROM ui_sessions WHERE hash = ?")
            .bind(hash)
            .fetch_optional(&self.reads)
            .await?)
    }

    pub async fn close_ui_session(&self, hash: &str) -> Result<(), Error> {
        let hash = hash.to_owned();
        self.transaction(move |tx, _| execute(tx, "DELETE FROM ui_sessions WHERE hash = ?", params![hash]).map(|_| ()))
            .await
    }

    pub async fn ui_token(&self, id: &str) -> Result<Option<UiTokenCheck>, Error> {
        Ok(sqlx::query_as("SELECT secret_hash, expires_at_ms, revoked_at_ms, role FROM ui_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reads)
            .await?)
    }
}
