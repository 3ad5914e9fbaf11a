//! The audit trail: who changed what through the admin API or the status page, when, from where, and how it
//! ended. A change's row is written by the transaction of the change ([`insert`], called by the domain files and
//! the turn); a refusal or a failure is written alone. Holds ids and names only, never a secret; reads are not
//! recorded.

use std::fmt;

use outpost_common::roles::Role;
use rusqlite::params;

use super::row::Columns;
use super::writer::execute;
use super::{Error, Store};

/// Where a change was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The gRPC admin API (`outpostctl`, grpcurl): the actor is an admin certificate's name.
    Api,
    /// The status page: the actor is `ui-token/<id>` of the login.
    Page,
    /// The controller itself (a CA activated when --ca-overlap was up).
    Controller,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Page => "page",
            Via::Controller => "controller",
        }
    }
}

/// How an audited call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The caller's role may not do it.
    Denied,
    /// Allowed, but it could not be done (no such task, a finished task cancelled, …).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asked for a change, and which: written with the change (outcome `done`) or alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Audit {
    pub actor: String,
    /// `None`: a caller with no role (an agent, an old admin certificate nobody mapped).
    pub role: Option<Role>,
    pub via: Via,
    pub peer: String,
    /// The admin RPC's name (`CancelTask`); page actions use the same names.
    pub action: &'static str,
    pub target: String,
    /// The reason the caller gave.
    pub reason: String,
}

/// A recorded audit row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub role: Option<Role>,
    pub via: Via,
    pub peer: String,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    pub reason: String,
    pub detail: String,
}

/// Which rows to list, newest first.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub since_ms: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub limit: u32,
}

/// Writes `audit`'s row in the transaction `tx` (so it stands or falls with the change it records).
pub(super) fn insert(
    tx: &rusqlite::Transaction<'_>,
    audit: &Audit,
    outcome: Outcome,
    detail: &str,
    now_ms: i64,
) -> Result<(), Error> {
    execute(
        tx,
        "INSERT INTO audit (at_ms, actor, role, via, peer, action, target, outcome, reason, detail) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            now_ms,
            audit.actor,
            audit.role.map_or("", Role::as_str),
            audit.via.as_str(),
            audit.peer,
            audit.action,
            audit.target,
            outcome.as_str(),
            audit.reason,
            detail
        ],
    )
    .map(|_| ())
}

/// Writes the row when an audit is given (a change made by the controller itself has none).
pub(super) fn insert_done(tx: &rusqlite::Transaction<'_>, audit: Option<&Audit>, now_ms: i64) -> Result<(), Error> {
    audit.map_or(Ok(()), |audit| insert(tx, audit, Outcome::Done, "", now_ms))
}

fn event(row: &impl Columns) -> Result<AuditEvent, Error> {
    let role = row.text("role")?;
    let corrupt = |what: &str, value: &str| Error::Corrupt(format!("audit {what} {value:?}"));
    let via = match row.text("via")?.as_str() {
        "api" => Via::Api,
        "page" => Via::Page,
        "controller" => Via::Controller,
        other => return Err(corrupt("via", other)),
    };
    let outcome = match row.text("outcome")?.as_str() {
        "done" => Outcome::Done,
        "denied" => Outcome::Denied,
        "failed" => Outcome::Failed,
        other => return Err(corrupt("outcome", other)),
    };
    Ok(AuditEvent {
        id: row.int("id")?,
        at_ms: row.int("at_ms")?,
        actor: row.text("actor")?,
        role: if role.is_empty() { None } else { Some(role.parse().map_err(|_| corrupt("role", &role))?) },
        via,
        peer: row.text("peer")?,
        action: row.text("action")?,
        target: row.text("target")?,
        outcome,
        reason: row.text("reason")?,
        detail: row.text("detail")?,
    })
}

impl Store {
    /// Records a refusal or a failure (or a change that touched no table) in a transaction of its own.
    pub async fn audit(&self, audit: Audit, outcome: Outcome, detail: String, now_ms: i64) -> Result<(), Error> {
        self.transaction(move |tx, _| insert(tx, &audit, outcome, &detail, now_ms)).await
    }

    /// Audit rows, newest first.
    pub async fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>, Error> {
        let rows = sqlx::query(
            "SELECT * FROM audit WHERE at_ms >= ? AND (? IS NULL OR actor = ?) AND (? IS NULL OR action = ?) \
             ORDER BY id DESC LIMIT ?",
        )
        .bind(filter.since_ms.unwrap_or(0))
        .bind(&filter.actor)
        .bind(&filter.actor)
        .bind(&filter.action)
        .bind(&filter.action)
        .bind(i64::from(filter.limit))
        .fetch_all(&self.reads)
        .await?;
        rows.iter().map(event).collect()
    }

    /// Forgets rows older than `before_ms`; returns how many.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<usize, Error> {
        self.transaction(move |tx, _| execute(tx, "DELETE FROM audit WHERE at_ms < ?", params![before_ms])).await
    }
}
