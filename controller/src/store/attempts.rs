//! Attempts: grant (bumps the epoch), start, end, cancel, heartbeats — plain functions over the writer's
//! transaction. Every change about an attempt is fenced by `WHERE epoch = ?` on the task row, so a stale writer
//! changes nothing. The open attempt lives on its task row (`attempt_*` columns); the `attempts` table gets a row
//! once, when the attempt ends — never an update.

use outpost_common::ids::{AttemptRef, Epoch, TaskId, WorkerId};
use outpost_common::task::{AttemptState, RunResult, TaskState};

use outpost_common::task::Refusal;
use rusqlite::{Transaction, params};

use super::outbox;
use super::row::stored;
use super::tasks::{TaskRecord, load, task_records};
use super::transaction::Effects;
use super::writer::{execute, writer_error};
use super::{Error, Store};

/// A fresh grant: the task (now ASSIGNED at its new epoch) and the attempt number.
#[derive(Clone, Debug)]
pub struct Grant {
    pub task: TaskRecord,
    pub attempt_number: u32,
}

/// What the end of an attempt does to its task.
#[derive(Clone, Debug)]
pub enum TaskChange {
    /// Back to the queue, not granted before `not_before_ms`.
    Requeue { not_before_ms: i64 },
    /// The task ends in `state` with `result`.
    Finish { state: TaskState, result: RunResult },
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

/// The agent acknowledged the assignment: ASSIGNED → RUNNING, fenced by epoch (and a RUNNING report queued for
/// GMS). Repeating it is a no-op.
pub(super) fn start(tx: &Transaction, attempt: &AttemptRef, now_ms: i64, effects: &mut Effects) -> Result<(), Error> {
    let epoch = stored("epoch", attempt.epoch.0)?;
    let changed = execute(
        tx,
        "UPDATE tasks SET state = 'RUNNING', updated_at_ms = ?, attempt_started_at_ms = COALESCE(attempt_started_at_ms, ?) \
         WHERE id = ? AND epoch = ? AND state = 'ASSIGNED'",
        params![now_ms, now_ms, attempt.task_id.as_str(), epoch],
    )?;
    if changed == 0 {
        let task = load(tx, &attempt.task_id)?;
        if task.epoch == attempt.epoch && task.state == TaskState::Running {
            return Ok(());
        }
        return Err(Error::fence(&task, Some(attempt.epoch), Refusal::NotHeld { state: task.state }));
    }
    outbox::running(tx, &attempt.task_id, now_ms, effects)
}

/// The columns an ended attempt clears on its task row (no attempt open, no cancel pending).
macro_rules! close {
    () => {
        "attempt_epoch = NULL, attempt_assigned_at_ms = NULL, attempt_started_at_ms = NULL, \
         attempt_heartbeat_ms = NULL, cancel_requested_at_ms = NULL"
    };
}

/// Ends an attempt and moves its task on (back to the queue, or to a terminal state with its result), fenced by
/// the task's epoch: nothing changes unless the task is still held at `task_epoch`.
pub(super) fn end(tx: &Transaction<'_>, end: &AttemptEnd, now_ms: i64, effects: &mut Effects) -> Result<(), Error> {
    let (id, epoch) = (end.task_id.as_str(), stored("epoch", end.task_epoch.0)?);
    let attempt_epoch = stored("epoch", end.attempt_epoch.0)?;
    let reported_at = match &end.change {
        // The outbox row (reporting on) is added first; a refused fence below rolls the whole turn back.
        TaskChange::Finish { result, .. } => {
            outbox::terminal_recorded(tx, &end.task_id, result.start_time_ms, now_ms, effects)?
        }
        TaskChange::Requeue { .. } => None,
    };
    // The ended attempt, from the task row as it stands (fenced by the task's epoch and the attempt's).
    let ended = execute(
        tx,
        "INSERT INTO attempts (task_id, number, epoch, worker_id, state, assigned_at_ms, started_at_ms, ended_at_ms, \
         reason, last_heartbeat_ms) \
         SELECT id, attempts, attempt_epoch, worker_id, ?, attempt_assigned_at_ms, attempt_started_at_ms, ?, ?, \
         attempt_heartbeat_ms FROM tasks \
         WHERE id = ? AND epoch = ? AND attempt_epoch = ? AND state IN ('ASSIGNED', 'RUNNING')",
        params![end.attempt_state.as_str(), now_ms, end.reason, id, epoch, attempt_epoch],
    )?;
    if ended == 0 {
        let task = load(tx, &end.task_id)?;
        return Err(Error::fence(&task, Some(end.task_epoch), Refusal::NotHeld { state: task.state }));
    }
    let changed = match &end.change {
        TaskChange::Requeue { not_before_ms } => execute(
            tx,
            concat!(
                "UPDATE tasks SET state = 'QUEUED', not_before_ms = ?, updated_at_ms = ?, ",
                close!(),
                " WHERE id = ?"
            ),
            params![not_before_ms, now_ms, id],
        )?,
        TaskChange::Finish { state, result } => execute(
            tx,
            concat!(
                "UPDATE tasks SET state = ?, exit_code = ?, report = ?, structured_report = ?, start_time_ms = ?, \
                 duration_ms = ?, finished_at_ms = ?, updated_at_ms = ?, reported_at_ms = COALESCE(?, reported_at_ms), ",
                close!(),
                " WHERE id = ?"
            ),
            params![
                state.as_str(),
                result.exit_code,
                result.report,
                result.structured_report,
                result.start_time_ms,
                result.duration_ms,
                now_ms,
                now_ms,
                reported_at,
                id
            ],
        )?,
    };
    if changed != 1 {
        return Err(Error::Corrupt(format!("task {id} changed {changed} rows at the end of its attempt")));
    }
    Ok(())
}

/// Grants a QUEUED task to a worker: bumps the epoch and records the attempt. A task no longer queued is left
/// alone (`None`).
pub(super) fn grant(tx: &Transaction<'_>, id: &TaskId, worker: &WorkerId, now_ms: i64) -> Result<Option<Grant>, Error> {
    let mut statement = tx
        .prepare_cached(
            "UPDATE tasks SET state = 'ASSIGNED', epoch = epoch + 1, attempts = attempts + 1, worker_id = ?, \
             updated_at_ms = ?, attempt_epoch = epoch + 1, attempt_assigned_at_ms = ?, attempt_started_at_ms = NULL, \
             attempt_heartbeat_ms = NULL WHERE id = ? AND state = 'QUEUED' RETURNING *",
        )
        .map_err(writer_error)?;
    let mut rows = statement.query(params![worker.as_str(), now_ms, now_ms, id.as_str()]).map_err(writer_error)?;
    let Some(row) = rows.next().map_err(writer_error)? else { return Ok(None) };
    let task = TaskRecord::from_columns(row)?;
    Ok(Some(Grant { attempt_number: task.attempts, task }))
}

/// A cancel of a held task: bumps the epoch (fencing the running attempt out) and notes the request.
pub(super) fn request_cancel(tx: &Transaction<'_>, id: &TaskId, epoch: Epoch, now_ms: i64) -> Result<(), Error> {
    let changed = execute(
        tx,
        "UPDATE tasks SET epoch = epoch + 1, cancel_requested_at_ms = ?, updated_at_ms = ? \
             WHERE id = ? AND epoch = ? AND state IN ('ASSIGNED', 'RUNNING') AND cancel_requested_at_ms IS NULL",
        params![now_ms, now_ms, id.as_str(), stored("epoch", epoch.0)?],
    )?;
    if changed == 0 {
        let task = load(tx, id)?;
        return Err(Error::fence(&task, Some(epoch), Refusal::NotHeld { state: task.state }));
    }
    Ok(())
}

/// Records the last heartbeat of live attempts. Rows of attempts that already ended are left alone.
pub(super) fn heartbeats(tx: &Transaction<'_>, beats: &[(AttemptRef, i64)]) -> Result<(), Error> {
    let mut statement = tx
        .prepare_cached("UPDATE tasks SET attempt_heartbeat_ms = ? WHERE id = ? AND attempt_epoch = ?")
        .map_err(writer_error)?;
    for (attempt, at_ms) in beats {
        let epoch = stored("epoch", attempt.epoch.0)?;
        statement.execute(params![at_ms, attempt.task_id.as_str(), epoch]).map_err(writer_error)?;
    }
    Ok(())
}

impl Store {
    /// Every task an agent holds (ASSIGNED or RUNNING), to rebuild the lease table after a restart.
    pub async fn held_tasks(&self) -> Result<Vec<HeldTask>, Error> {
        let rows = sqlx::query("SELECT * FROM tasks WHERE state IN ('ASSIGNED', 'RUNNING') ORDER BY created_at_ms, id")
            .fetch_all(&self.reads)
            .await?;
        let mut held = Vec::with_capacity(rows.len());
        for task in task_records(&rows)? {
            let worker_id = task
                .worker_id
                .clone()
                .ok_or_else(|| Error::Corrupt(format!("held task {} has no worker", task.request.id)))?;
            held.push(HeldTask { task, worker_id });
        }
        Ok(held)
    }
}
