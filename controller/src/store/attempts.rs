//! Attempts: grant (bumps the epoch), start, end, cancel, heartbeats. Every change about an attempt is fenced by
//! `WHERE epoch = ?` on the task row, so a stale writer changes nothing.

use outpost_common::ids::{AttemptRef, Epoch, TaskId, WorkerId};
use outpost_common::task::{AttemptState, TaskState};

use super::outbox::enqueue_terminal;
use super::tasks::{TaskRecord, load_task};
use super::{Error, Store};

/// A fresh grant: the task (now ASSIGNED at its new epoch) and the attempt number.
#[derive(Clone, Debug)]
pub struct Grant {
    pub task: TaskRecord,
    pub attempt_number: u32,
}

/// The result recorded with a terminal task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResultRecord {
    pub exit_code: Option<i32>,
    pub report: String,
    pub structured_report: String,
    pub start_time_ms: i64,
    pub duration_ms: i64,
}

/// What the end of an attempt does to its task.
#[derive(Clone, Debug)]
pub enum TaskChange {
    /// Back to the queue, not granted before `not_before_ms`.
    Requeue { not_before_ms: i64 },
    /// The task ends in `state` with `result`.
    Finish { state: TaskState, result: ResultRecord },
}

/// The end of one attempt.
#[derive(Clone, Debug)]
pub struct AttemptEnd {
    pub task_id: TaskId,
    /// The task's current epoch (the fence).
    pub task_epoch: Epoch,
    /// The epoch of the attempt that ends (one less than the task's while a cancel is pending).
    pub attempt_epoch: Epoch,
    pub attempt_state: AttemptState,
    /// Why it ended, in words (shown per attempt).
    pub reason: String,
    pub change: TaskChange,
}

/// A task held by an agent, as the store knows it (to rebuild leases after a restart).
#[derive(Clone, Debug)]
pub struct HeldTask {
    pub task: TaskRecord,
    pub worker_id: WorkerId,
}

/// Explains why a fenced update matched no row.
pub(super) fn refusal(task: &TaskRecord, presented: Epoch) -> Error {
    if task.epoch != presented {
        Error::StaleEpoch { task: task.id.clone(), presented, current: task.epoch }
    } else if task.state.is_terminal() {
        Error::AlreadyFinished { task: task.id.clone(), state: task.state }
    } else {
        Error::NotQueued { task: task.id.clone(), state: task.state }
    }
}

impl Store {
    /// Grants a QUEUED task to a worker: bumps the epoch and records the attempt, in one transaction.
    pub async fn grant(&self, id: &TaskId, worker: &WorkerId, now_ms: i64) -> Result<Grant, Error> {
        let turn = super::Turn { grants: vec![(id.clone(), worker.clone())], ..super::Turn::default() };
        match self.write_turn(turn, now_ms).await?.granted.pop() {
            Some(grant) => Ok(grant),
            None => {
                let task = self.task(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?.0;
                Err(Error::NotQueued { task: id.clone(), state: task.state })
            }
        }
    }

    /// The agent acknowledged the assignment: ASSIGNED → RUNNING, fenced by epoch (and a RUNNING report queued
    /// for GMS). Repeating it is a no-op.
    pub async fn start_attempt(&self, attempt: &AttemptRef, now_ms: i64) -> Result<(), Error> {
        self.write_turn(super::Turn { starts: vec![attempt.clone()], ..super::Turn::default() }, now_ms).await?;
        Ok(())
    }

    /// Ends an attempt and moves its task on (back to the queue, or to a terminal state with its result), fenced
    /// by the task's epoch: nothing changes unless the task is still held at `task_epoch`.
    pub async fn end_attempt(&self, end: &AttemptEnd, now_ms: i64) -> Result<(), Error> {
        self.write_turn(super::Turn { ends: vec![end.clone()], ..super::Turn::default() }, now_ms).await?;
        Ok(())
    }

    /// A cancel of a held task: bumps the epoch (fencing the running attempt out) and notes the request.
    /// Returns the new epoch.
    pub async fn request_cancel(&self, id: &TaskId, epoch: Epoch, now_ms: i64) -> Result<Epoch, Error> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE tasks SET epoch = epoch + 1, cancel_requested_at_ms = ?, updated_at_ms = ? \
             WHERE id = ? AND epoch = ? AND state IN ('ASSIGNED', 'RUNNING') AND cancel_requested_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(now_ms)
        .bind(id.as_str())
        .bind(epoch.0 as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let task = load_task(&mut tx, id).await?;
        if updated == 0 {
            return Err(refusal(&task, epoch));
        }
        tx.commit().await?;
        Ok(task.epoch)
    }

    /// Cancels a task nobody holds (QUEUED): it ends CANCELLED at once with `report`.
    pub async fn cancel_queued(&self, id: &TaskId, report: &str, now_ms: i64) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE tasks SET state = 'CANCELLED', report = ?, structured_report = '', start_time_ms = ?, \
             duration_ms = 0, finished_at_ms = ?, updated_at_ms = ? WHERE id = ? AND state IN ('RECEIVED', 'QUEUED')",
        )
        .bind(report)
        .bind(now_ms)
        .bind(now_ms)
        .bind(now_ms)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let task = load_task(&mut tx, id).await?;
            return Err(refusal(&task, task.epoch));
        }
        enqueue_terminal(self, &mut tx, id, now_ms, now_ms).await?;
        tx.commit().await?;
        self.outbox_added.notify_one();
        self.announce_reported();
        Ok(())
    }

    /// Records the last heartbeat of live attempts, all in one transaction (group commit: one fsync per batch,
    /// not per heartbeat). Rows of attempts that already ended are left alone.
    pub async fn record_heartbeats(&self, beats: &[(AttemptRef, i64)]) -> Result<(), Error> {
        if beats.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (attempt, at_ms) in beats {
            sqlx::query(
                "UPDATE attempts SET last_heartbeat_ms = ? WHERE task_id = ? AND epoch = ? AND ended_at_ms IS NULL",
            )
            .bind(*at_ms)
            .bind(attempt.task_id.as_str())
            .bind(attempt.epoch.0 as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every task an agent holds (ASSIGNED or RUNNING), to rebuild the lease table after a restart.
    pub async fn held_tasks(&self) -> Result<Vec<HeldTask>, Error> {
        let rows: Vec<super::tasks::TaskRow> =
            sqlx::query_as("SELECT * FROM tasks WHERE state IN ('ASSIGNED', 'RUNNING') ORDER BY created_at_ms, id")
                .fetch_all(&self.pool)
                .await?;
        let mut held = Vec::with_capacity(rows.len());
        for row in rows {
            let task: TaskRecord = row.try_into()?;
            let worker_id =
                task.worker_id.clone().ok_or_else(|| Error::Corrupt(format!("held task {} has no worker", task.id)))?;
            held.push(HeldTask { task, worker_id });
        }
        Ok(held)
    }
}
