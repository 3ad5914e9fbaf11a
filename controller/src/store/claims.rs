//! Claims at GMS: which version of a task's `dataHubExecutionRequestResult` this controller's last accepted write
//! produced (its every later write is conditional on it), claims another controller took over, and this
//! controller's identity at GMS. Knows nothing of GMS itself: versions and holders are opaque text here.

use outpost_common::ids::{AspectVersion, TaskId};
use rusqlite::Transaction;
use rusqlite::types::Value;

use super::transaction::Effects;
use super::writer::execute;

use super::{Error, Store};

/// A claimed task still waiting for an agent (queued or assigned) whose claim was last written at or before a
/// time: its holder renews it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingClaim {
    pub task_id: TaskId,
}

/// The claim on `task` passed to another controller (inside a transaction): its waiting writes go unsent, a
/// finished task counts as settled, and the task records why.
pub(super) fn lose(
    tx: &Transaction<'_>,
    task: &TaskId,
    reason: &str,
    now_ms: i64,
    effects: &mut Effects,
) -> Result<(), Error> {
    let failure = format!("claim lost: {reason}");
    execute(
        tx,
        "UPDATE tasks SET claim_lost_at_ms = COALESCE(claim_lost_at_ms, ?), delivery_failure = ?, \
         reported_at_ms = CASE WHEN finished_at_ms IS NOT NULL THEN COALESCE(reported_at_ms, ?) END WHERE id = ?",
        rusqlite::params![now_ms, failure, now_ms, task.as_str()],
    )?;
    execute(tx, "DELETE FROM gms_outbox WHERE task_id = ?", [task.as_str()])?;
    effects.reported = true;
    Ok(())
}

impl Store {
    /// This controller's identity at GMS: the one stored with the database, or `fresh` on first use.
    pub async fn controller_id(&self, fresh: String) -> Result<String, Error> {
        let sql = "INSERT INTO controller_identity (only, controller_id) VALUES (1, ?) ON CONFLICT (only) DO NOTHING";
        self.execute_alone(sql, vec![Value::from(fresh)]).await?;
        let (id,): (String,) =
            sqlx::query_as("SELECT controller_id FROM controller_identity").fetch_one(&self.reads).await?;
        Ok(id)
    }

    /// GMS accepted a write of the task's result aspect, which is now at `version` (unless the claim was lost
    /// meanwhile).
    pub async fn claim_written(&self, task: &TaskId, version: &AspectVersion, now_ms: i64) -> Result<(), Error> {
        let sql = "UPDATE tasks SET gms_version = ?, gms_written_at_ms = ? WHERE id = ? AND claim_lost_at_ms IS NULL";
        self.execute_alone(
            sql,
            vec![Value::from(version.as_str().to_owned()), Value::from(now_ms), Value::from(task.as_str().to_owned())],
        )
        .await
    }

    /// Another controller holds the task's execution request now: nothing more is sent about it, its waiting
    /// writes are dropped (a terminal one counts as settled), and `lost_claims` lists it until it ends.
    pub async fn claim_lost(&self, task: &TaskId, reason: &str, now_ms: i64) -> Result<(), Error> {
        let (task, reason) = (task.clone(), reason.to_owned());
        self.transaction(move |tx, effects| lose(tx, &task, &reason, now_ms, effects)).await
    }

    /// Unfinished tasks whose claim another controller took over (to be stopped here).
    pub async fn lost_claims(&self) -> Result<Vec<TaskId>, Error> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM tasks WHERE claim_lost_at_ms IS NOT NULL \
             AND state IN ('RECEIVED', 'QUEUED', 'ASSIGNED', 'RUNNING')",
        )
        .fetch_all(&self.reads)
        .await?;
        ids.into_iter().map(|(id,)| TaskId::parse(&id).map_err(|e| Error::Corrupt(e.to_string()))).collect()
    }

    /// Claimed tasks waiting for an agent whose claim was last written at or before `written_before_ms` and that
    /// owe GMS nothing else: their claims are due for renewal.
    pub async fn waiting_claims(&self, written_before_ms: i64) -> Result<Vec<WaitingClaim>, Error> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT t.id FROM tasks t WHERE t.state IN ('QUEUED', 'ASSIGNED') AND t.gms_version IS NOT NULL \
             AND t.claim_lost_at_ms IS NULL AND COALESCE(t.gms_written_at_ms, 0) <= ? \
             AND NOT EXISTS (SELECT 1 FROM gms_outbox o WHERE o.task_id = t.id)",
        )
        .bind(written_before_ms)
        .fetch_all(&self.reads)
        .await?;
        ids.into_iter()
            .map(|(id,)| Ok(WaitingClaim { task_id: TaskId::parse(&id).map_err(|e| Error::Corrupt(e.to_string()))? }))
            .collect()
    }
}
