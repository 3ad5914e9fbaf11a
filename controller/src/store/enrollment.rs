//! Enrollment: join tokens (hashes only), their uses, the pool each joined worker is bound to, the certificates
//! issued, and revoked workers. A join is checked and counted in one transaction, so a single-use token joins one
//! agent however many ask at once. Knows no cryptography: hashes arrive computed.

use outpost_common::ids::WorkerId;
use rusqlite::{OptionalExtension, Transaction, params};
use sqlx::FromRow;

use super::audit::{self, Audit};
use super::writer::{execute, writer_error};
use super::{Error, Store};

/// A join token as stored (no secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    pub id: String,
    pub pool: String,
    pub expires_at_ms: i64,
    /// `None`: reusable.
    pub uses_left: Option<i64>,
    pub description: String,
    pub created_by: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub uses: Vec<TokenUse>,
}

/// One join made with a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenUse {
    pub worker_id: String,
    pub address: String,
    pub at_ms: i64,
}

/// A new token: its public fields and the hashes of its secret.
#[derive(Clone, Debug)]
pub struct NewToken {
    pub id: String,
    pub secret_hash: String,
    pub bundle_key: String,
    pub pool: String,
    pub expires_at_ms: i64,
    pub uses_left: Option<i64>,
    pub description: String,
    pub created_by: String,
}

/// Why a join was refused (said to the agent as it is: it names no secret).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefused {
    #[error("unknown join token {0}")]
    Unknown(String),
    #[error("join token {0}: the secret does not match")]
    WrongSecret(String),
    #[error("join token {0} expired")]
    Expired(String),
    #[error("join token {0} was revoked")]
    Revoked(String),
    #[error("join token {0} is used up")]
    UsedUp(String),
    #[error("worker {0} is revoked")]
    WorkerRevoked(String),
    #[error("worker {worker} is bound to pool {bound}, not {asked}")]
    OtherPool { worker: String, bound: String, asked: String },
}

#[derive(FromRow)]
struct TokenRow {
    id: String,
    pool: String,
    expires_at_ms: i64,
    uses_left: Option<i64>,
    description: String,
    created_by: String,
    created_at_ms: i64,
    revoked_at_ms: Option<i64>,
}

/// secret_hash, pool, expires_at_ms, uses_left, revoked_at_ms.
type StoredToken = (String, String, i64, Option<i64>, Option<i64>);

/// A join (inside one transaction): checks the token and counts the use, binds the worker to the token's pool.
fn join(
    tx: &Transaction<'_>,
    id: &str,
    secret_hash: &str,
    worker: &str,
    address: &str,
    now_ms: i64,
) -> Result<Result<String, JoinRefused>, Error> {
    let row: Option<StoredToken> = tx
        .query_row(
            "SELECT secret_hash, pool, expires_at_ms, uses_left, revoked_at_ms FROM join_tokens WHERE id = ?",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .map_err(writer_error)?;
    let Some((stored_hash, pool, expires_at_ms, uses_left, revoked_at_ms)) = row else {
        return Ok(Err(JoinRefused::Unknown(id.to_owned())));
    };
    // Both are hex digests of fixed length: comparing them leaks nothing about the secret.
    if stored_hash != secret_hash {
        return Ok(Err(JoinRefused::WrongSecret(id.to_owned())));
    }
    if revoked_at_ms.is_some() {
        return Ok(Err(JoinRefused::Revoked(id.to_owned())));
    }
    if expires_at_ms <= now_ms {
        return Ok(Err(JoinRefused::Expired(id.to_owned())));
    }
    if uses_left.is_some_and(|n| n <= 0) {
        return Ok(Err(JoinRefused::UsedUp(id.to_owned())));
    }
    let revoked: Option<i64> = tx
        .query_row("SELECT revoked_at_ms FROM revoked_workers WHERE worker_id = ?", [worker], |r| r.get(0))
        .optional()
        .map_err(writer_error)?;
    if revoked.is_some() {
        return Ok(Err(JoinRefused::WorkerRevoked(worker.to_owned())));
    }
    let bound: Option<String> = tx
        .query_row("SELECT pool FROM worker_bindings WHERE worker_id = ?", [worker], |r| r.get(0))
        .optional()
        .map_err(writer_error)?;
    if let Some(bound) = bound.filter(|b| *b != pool) {
        return Ok(Err(JoinRefused::OtherPool { worker: worker.to_owned(), bound, asked: pool }));
    }
    execute(tx, "UPDATE join_tokens SET uses_left = uses_left - 1 WHERE id = ? AND uses_left IS NOT NULL", [id])?;
    execute(
        tx,
        "INSERT INTO join_token_uses (token_id, worker_id, address, used_at_ms) VALUES (?, ?, ?, ?)",
        params![id, worker, address, now_ms],
    )?;
    execute(
        tx,
        "INSERT INTO worker_bindings (worker_id, pool, token_id) VALUES (?, ?, ?) \
         ON CONFLICT (worker_id) DO UPDATE SET token_id = excluded.token_id",
        params![worker, pool, id],
    )?;
    Ok(Ok(pool))
}

/// Inserts `token` made at `now_ms`, with `on_conflict` (SQL, or empty) after the insert.
fn insert_token(tx: &Transaction<'_>, token: &NewToken, now_ms: i64, on_conflict: &str) -> Result<(), Error> {
    let sql = format!(
        "INSERT INTO join_tokens (id, secret_hash, bundle_key, pool, expires_at_ms, uses_left, description, \
         created_by, created_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?){on_conflict}"
    );
    execute(
        tx,
        &sql,
        params![
            token.id,
            token.secret_hash,
            token.bundle_key,
            token.pool,
            token.expires_at_ms,
            token.uses_left,
            token.description,
            token.created_by,
            now_ms
        ],
    )
    .map(|_| ())
}

impl Store {
    pub async fn create_token(&self, token: &NewToken, now_ms: i64, audit: Option<Audit>) -> Result<(), Error> {
        let token = token.clone();
        self.transaction(move |tx, _| {
            insert_token(tx, &token, now_ms, "")?;
            audit::insert_done(tx, audit.as_ref(), now_ms)
        })
        .await
    }

    /// Registers the token of a bootstrap file: `token` (reusable, with no end) replaces any other token made by
    /// `token.created_by`, which is revoked; the same token again is refreshed in place (pool, secret) and
    /// un-revoked. Returns the ids it revoked.
    pub async fn bootstrap_token(&self, token: &NewToken, now_ms: i64) -> Result<Vec<String>, Error> {
        let token = token.clone();
        self.transaction(move |tx, _| {
            let revoked: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM join_tokens WHERE created_by = ? AND id <> ? AND revoked_at_ms IS NULL ORDER BY id",
                )
                .and_then(|mut stale| stale.query_map(params![token.created_by, token.id], |row| row.get(0))?.collect())
                .map_err(writer_error)?;
            for id in &revoked {
                execute(tx, "UPDATE join_tokens SET revoked_at_ms = ? WHERE id = ?", params![now_ms, id])?;
            }
            let refresh = " ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, \
                           bundle_key = excluded.bundle_key, pool = excluded.pool, \
                           expires_at_ms = excluded.expires_at_ms, uses_left = excluded.uses_left, \
                           description = excluded.description, created_by = excluded.created_by, revoked_at_ms = NULL";
            insert_token(tx, &token, now_ms, refresh)?;
            Ok(revoked)
        })
        .await
    }

    /// Checks a join and, when it is allowed, counts it: the pool the worker is bound to, or why not.
    pub async fn join(
        &self,
        token_id: &str,
        secret_hash: &str,
        worker: &WorkerId,
        address: &str,
        now_ms: i64,
    ) -> Result<Result<String, JoinRefused>, Error> {
        let (id, hash, worker, address) =
            (token_id.to_owned(), secret_hash.to_owned(), worker.as_str().to_owned(), address.to_owned());
        self.transaction(move |tx, _| join(tx, &id, &hash, &worker, &address, now_ms)).await
    }

    /// Revokes a join token; false for an unknown id (nothing is changed or audited then).
    pub async fn revoke_token(&self, id: &str, now_ms: i64, audit: Option<Audit>) -> Result<bool, Error> {
        let id = id.to_owned();
        self.transaction(move |tx, _| {
            let found = execute(
                tx,
                "UPDATE join_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?) WHERE id = ?",
                params![now_ms, id],
            )? > 0;
            if found {
                audit::insert_done(tx, audit.as_ref(), now_ms)?;
            }
            Ok(found)
        })
        .await
    }

    /// The key that signs the CA bundle for holders of token `id` (none for an unknown one). An expired or revoked
    /// token still gets the bundle (it is public; the join then says why the token is refused).
    pub async fn token_bundle_key(&self, id: &str) -> Result<Option<String>, Error> {
        let key: Option<(String,)> = sqlx::query_as("SELECT bundle_key FROM join_tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.reads)
            .await?;
        Ok(key.map(|(k,)| k))
    }

    pub async fn tokens(&self) -> Result<Vec<JoinToken>, Error> {
        let rows: Vec<TokenRow> = sqlx::query_as(
            "SELECT id, pool, expires_at_ms, uses_left, description, created_by, created_at_ms, revoked_at_ms \
             FROM join_tokens ORDER BY created_at_ms DESC",
        )
        .fetch_all(&self.reads)
        .await?;
        let uses: Vec<(String, String, String, i64)> =
            sqlx::query_as("SELECT token_id, worker_id, address, used_at_ms FROM join_token_uses ORDER BY used_at_ms")
                .fetch_all(&self.reads)
                .await?;
        Ok(rows
            .into_iter()
            .map(|row| JoinToken {
                uses: uses
                    .iter()
                    .filter(|u| u.0 == row.id)
                    .map(|u| TokenUse { worker_id: u.1.clone(), address: u.2.clone(), at_ms: u.3 })
                    .collect(),
                id: row.id,
                pool: row.pool,
                expires_at_ms: row.expires_at_ms,
                uses_left: row.uses_left,
                description: row.description,
                created_by: row.created_by,
                created_at_ms: row.created_at_ms,
                revoked_at_ms: row.revoked_at_ms,
            })
            .collect())
    }

    /// The pool a joined worker is bound to (`None`: it did not join with a token).
    pub async fn worker_binding(&self, worker: &WorkerId) -> Result<Option<String>, Error> {
        let pool: Option<(String,)> = sqlx::query_as("SELECT pool FROM worker_bindings WHERE worker_id = ?")
            .bind(worker.as_str())
            .fetch_optional(&self.reads)
            .await?;
        Ok(pool.map(|(p,)| p))
    }

    pub async fn certificate_issued(
        &self,
        serial: &str,
        worker: &WorkerId,
        expires_at_ms: i64,
        ca: &str,
        now_ms: i64,
    ) -> Result<(), Error> {
        let (serial, worker, ca) = (serial.to_owned(), worker.as_str().to_owned(), ca.to_owned());
        self.transaction(move |tx, _| {
            execute(
                tx,
                "INSERT INTO issued_certificates (serial, worker_id, issued_at_ms, expires_at_ms, ca) \
                 VALUES (?, ?, ?, ?, ?)",
                params![serial, worker, now_ms, expires_at_ms, ca],
            )
            .map(|_| ())
        })
        .await
    }

    /// The latest certificate issued to each worker: (worker, expires at, serial).
    pub async fn certificate_expiries(&self) -> Result<Vec<(String, i64, String)>, Error> {
        Ok(sqlx::query_as(
            "SELECT worker_id, expires_at_ms, serial FROM issued_certificates c WHERE expires_at_ms = \
             (SELECT MAX(expires_at_ms) FROM issued_certificates d WHERE d.worker_id = c.worker_id)",
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// The CA (fingerprint) of the latest certificate issued to each worker: (worker, CA).
    pub async fn certificate_cas(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(sqlx::query_as(
            "SELECT worker_id, ca FROM issued_certificates c WHERE expires_at_ms = \
             (SELECT MAX(expires_at_ms) FROM issued_certificates d WHERE d.worker_id = c.worker_id)",
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// Revokes one certificate; returns the worker it was issued to, when this controller issued it.
    pub async fn revoke_certificate(
        &self,
        serial: &str,
        reason: &str,
        now_ms: i64,
        audit: Option<Audit>,
    ) -> Result<Option<String>, Error> {
        let (serial, reason) = (serial.to_owned(), reason.to_owned());
        self.transaction(move |tx, _| {
            let worker: Option<String> = tx
                .query_row("SELECT worker_id FROM issued_certificates WHERE serial = ?", [&serial], |r| r.get(0))
                .optional()
                .map_err(writer_error)?;
            execute(
                tx,
                "INSERT INTO revoked_certificates (serial, worker_id, revoked_at_ms, reason) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (serial) DO NOTHING",
                params![serial, worker, now_ms, reason],
            )?;
            audit::insert_done(tx, audit.as_ref(), now_ms)?;
            Ok(worker)
        })
        .await
    }

    pub async fn certificate_revoked(&self, serial: &str) -> Result<bool, Error> {
        let found: Option<(i64,)> = sqlx::query_as("SELECT revoked_at_ms FROM revoked_certificates WHERE serial = ?")
            .bind(serial)
            .fetch_optional(&self.reads)
            .await?;
        Ok(found.is_some())
    }

    pub async fn revoke_worker(
        &self,
        worker: &WorkerId,
        reason: &str,
        now_ms: i64,
        audit: Option<Audit>,
    ) -> Result<(), Error> {
        let (worker, reason) = (worker.as_str().to_owned(), reason.to_owned());
        self.transaction(move |tx, _| {
            execute(
                tx,
                "INSERT INTO revoked_workers (worker_id, revoked_at_ms, reason) VALUES (?, ?, ?) \
                 ON CONFLICT (worker_id) DO NOTHING",
                params![worker, now_ms, reason],
            )?;
            audit::insert_done(tx, audit.as_ref(), now_ms)
        })
        .await
    }

    /// Whether `worker` is revoked (a point look-up: it is asked on every agent connection).
    pub async fn worker_revoked(&self, worker: &WorkerId) -> Result<bool, Error> {
        let found: Option<(i64,)> = sqlx::query_as("SELECT revoked_at_ms FROM revoked_workers WHERE worker_id = ?")
            .bind(worker.as_str())
            .fetch_optional(&self.reads)
            .await?;
        Ok(found.is_some())
    }

    /// Every revoked worker and when.
    pub async fn revoked_workers(&self) -> Result<Vec<(String, i64)>, Error> {
        Ok(sqlx::query_as("SELECT worker_id, revoked_at_ms FROM revoked_workers").fetch_all(&self.reads).await?)
    }
}
