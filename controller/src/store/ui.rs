//! Login tokens of the status page: only hashes of their secrets (the sessions they open live in memory).

use rusqlite::params;

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
    pub async fn create_ui_token(&self, token: &NewUiToken, now_ms: i64) -> Result<(), Error> {
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
            )
            .map(|_| ())
        })
        .await
    }

    /// Revokes a login token (its sessions end at their next request); false for an unknown id.
    pub async fn revoke_ui_token(&self, id: &str, now_ms: i64) -> Result<bool, Error> {
        let id = id.to_owned();
        self.transaction(move |tx, _| {
            execute(
                tx,
                "UPDATE ui_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE id = ?",
                params![now_ms, id],
            )
            .map(|n| n > 0)
        })
        .await
    }

    pub async fn ui_token(&self, id: &str) -> Result<Option<UiTokenCheck>, Error> {
        Ok(sqlx::query_as("SELECT secret_hash, expires_at_ms, revoked_at_ms, role FROM ui_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reads)
            .await?)
    }
}
