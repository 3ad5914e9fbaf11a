//! Group commit: a turn's task changes (submits, starts, ends, grants) in one transaction on the writer thread —
//! one fsync and one hand-off between threads per turn, whatever its size. Every change stays fenced (`WHERE
//! epoch = ? AND state …`); a start or end the fence refuses rolls the whole turn back (the engine's memory and
//! the store disagree, so nothing of that turn may stand).

use outpost_common::ids::{AttemptRef, TaskId, WorkerId};
use outpost_common::task::TaskState;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};

use super::attempts::{AttemptEnd, Grant, TaskChange, refusal};
use super::tasks::{NewTask, TaskRecord, TaskRow};
use super::writer::writer_error;
use super::{Error, Store};

/// One turn's changes, applied in this order: new tasks, starts, ends, grants (so a task submitted or requeued in
/// the turn can be granted in it).
#[derive(Clone, Debug, Default)]
pub struct Turn {
    pub new_tasks: Vec<NewTask>,
    pub starts: Vec<AttemptRef>,
    pub ends: Vec<AttemptEnd>,
    pub grants: Vec<(TaskId, WorkerId)>,
}

/// What a committed turn did.
#[derive(Debug, Default)]
pub struct TurnWritten {
    /// Per new task, in order: the stored task and whether this turn created it (`false`: the id was known).
    pub submitted: Vec<(TaskRecord, bool)>,
    /// The grants made; a task no longer QUEUED is left out (nothing changed for it).
    pub granted: Vec<Grant>,
}

/// What to wake once the turn is durable.
#[derive(Default)]
struct Woken {
    outbox_added: bool,
    finished: bool,
}

impl Store {
    /// Applies a turn in one transaction and commits it; nothing of it happens if any start or end is refused
    /// (the error is the first refusal) or the database fails.
    pub async fn write_turn(&self, turn: Turn, now_ms: i64) -> Result<TurnWritten, Error> {
        let reporting = self.reporting;
        let (written, woken) = self
            .writer
            .run(move |connection| {
                let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(writer_error)?;
                let mut woken = Woken::default();
                let written = apply(&tx, &turn, now_ms, reporting, &mut woken)?;
                tx.commit().map_err(writer_error)?;
                Ok::<_, Error>((written, woken))
            })
            .await??;
        if woken.outbox_added {
            self.outbox_added.notify_one();
        }
        if woken.finished || woken.outbox_added {
            self.announce_reported();
        }
        Ok(written)
    }
}

fn apply(
    tx: &Transaction<'_>,
    turn: &Turn,
    now_ms: i64,
    reporting: bool,
    woken: &mut Woken,
) -> Result<TurnWritten, Error> {
    let mut written = TurnWritten::default();
    for task in &turn.new_tasks {
        written.submitted.push(insert(tx, task, now_ms)?);
    }
    for attempt in &turn.starts {
        start(tx, attempt, now_ms, reporting, woken)?;
    }
    for end in &turn.ends {
        finish(tx, end, now_ms, reporting, woken)?;
    }
    for (task, worker) in &turn.grants {
        if let Some(grant) = grant(tx, task, worker, now_ms)? {
            written.granted.push(grant);
        }
    }
    Ok(written)
}

fn load(tx: &Transaction<'_>, id: &TaskId) -> Result<TaskRecord, Error> {
    let row = tx
        .prepare_cached("SELECT * FROM tasks WHERE id = ?")
        .and_then(|mut s| s.query_row([id.as_str()], TaskRow::from_rusqlite).optional())
        .map_err(writer_error)?;
    row.ok_or_else(|| Error::NotFound(id.clone()))?.try_into()
}

fn insert(tx: &Transaction<'_>, task: &NewTask, now_ms: i64) -> Result<(TaskRecord, bool), Error> {
    let args = serde_json::to_string(&task.args).map_err(|e| Error::Corrupt(e.to_string()))?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO tasks (id, task_name, pool, args_json, source_type, requested_at_ms, state, created_at_ms, \
             updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, 'QUEUED', ?, ?) ON CONFLICT (id) DO NOTHING RETURNING *",
        )
        .and_then(|mut s| {
            s.query_row(
                params![
                    task.id.as_str(),
                    task.task_name,
                    task.pool.as_str(),
                    args,
                    task.source_type,
                    task.requested_at_ms,
                    now_ms,
                    now_ms
                ],
                TaskRow::from_rusqlite,
            )
            .optional()
        })
        .map_err(writer_error)?;
    match inserted {
        Some(row) => Ok((row.try_into()?, true)),
        None => Ok((load(tx, &task.id)?, false)),
    }
}

fn outbox(tx: &Transaction<'_>, task: &TaskId, kind: &str, start_time_ms: i64, now_ms: i64) -> Result<(), Error> {
    tx.prepare_cached("INSERT INTO gms_outbox (task_id, kind, start_time_ms, created_at_ms) VALUES (?, ?, ?, ?)")
        .and_then(|mut s| s.execute(params![task.as_str(), kind, start_time_ms, now_ms]))
        .map_err(writer_error)?;
    Ok(())
}

fn start(
    tx: &Transaction<'_>,
    attempt: &AttemptRef,
    now_ms: i64,
    reporting: bool,
    woken: &mut Woken,
) -> Result<(), Error> {
    let epoch = attempt.epoch.0 as i64;
    let changed = tx
        .prepare_cached(
            "UPDATE tasks SET state = 'RUNNING', updated_at_ms = ? WHERE id = ? AND epoch = ? AND state = 'ASSIGNED'",
        )
        .and_then(|mut s| s.execute(params![now_ms, attempt.task_id.as_str(), epoch]))
        .map_err(writer_error)?;
    if changed == 0 {
        let task = load(tx, &attempt.task_id)?;
        if task.epoch == attempt.epoch && task.state == TaskState::Running {
            return Ok(());
        }
        return Err(refusal(&task, attempt.epoch));
    }
    if reporting {
        outbox(tx, &attempt.task_id, "RUNNING", now_ms, now_ms)?;
        woken.outbox_added = true;
    }
    tx.prepare_cached(
        "UPDATE attempts SET state = 'RUNNING', started_at_ms = COALESCE(started_at_ms, ?) \
         WHERE task_id = ? AND epoch = ? AND ended_at_ms IS NULL",
    )
    .and_then(|mut s| s.execute(params![now_ms, attempt.task_id.as_str(), epoch]))
    .map_err(writer_error)?;
    Ok(())
}

fn finish(
    tx: &Transaction<'_>,
    end: &AttemptEnd,
    now_ms: i64,
    reporting: bool,
    woken: &mut Woken,
) -> Result<(), Error> {
    let (id, epoch) = (end.task_id.as_str(), end.task_epoch.0 as i64);
    let changed = match &end.change {
        TaskChange::Requeue { not_before_ms } => tx
            .prepare_cached(
                "UPDATE tasks SET state = 'QUEUED', not_before_ms = ?, cancel_requested_at_ms = NULL, updated_at_ms = ? \
                 WHERE id = ? AND epoch = ? AND state IN ('ASSIGNED', 'RUNNING')",
            )
            .and_then(|mut s| s.execute(params![not_before_ms, now_ms, id, epoch])),
        TaskChange::Finish { state, result } => tx
            .prepare_cached(
                "UPDATE tasks SET state = ?, exit_code = ?, report = ?, structured_report = ?, start_time_ms = ?, \
                 duration_ms = ?, finished_at_ms = ?, cancel_requested_at_ms = NULL, updated_at_ms = ?, \
                 reported_at_ms = ? WHERE id = ? AND epoch = ? AND state IN ('ASSIGNED', 'RUNNING')",
            )
            .and_then(|mut s| {
                // With nobody to report to, the result is delivered once it is recorded.
                let reported_at_ms = (!reporting).then_some(now_ms);
                s.execute(params![
                    state.as_str(),
                    result.exit_code,
                    result.report,
                    result.structured_report,
                    result.start_time_ms,
                    result.duration_ms,
                    now_ms,
                    now_ms,
                    reported_at_ms,
                    id,
                    epoch
                ])
            }),
    }
    .map_err(writer_error)?;
    if changed == 0 {
        let task = load(tx, &end.task_id)?;
        return Err(refusal(&task, end.task_epoch));
    }
    tx.prepare_cached(
        "UPDATE attempts SET state = ?, ended_at_ms = ?, reason = ? WHERE task_id = ? AND epoch = ? AND ended_at_ms IS NULL",
    )
    .and_then(|mut s| {
        s.execute(params![end.attempt_state.as_str(), now_ms, end.reason, id, end.attempt_epoch.0 as i64])
    })
    .map_err(writer_error)?;
    if let TaskChange::Finish { result, .. } = &end.change {
        woken.finished = true;
        if reporting {
            outbox(tx, &end.task_id, "TERMINAL", result.start_time_ms, now_ms)?;
            woken.outbox_added = true;
        }
    }
    Ok(())
}

fn grant(tx: &Transaction<'_>, id: &TaskId, worker: &WorkerId, now_ms: i64) -> Result<Option<Grant>, Error> {
    let updated = tx
        .prepare_cached(
            "UPDATE tasks SET state = 'ASSIGNED', epoch = epoch + 1, attempts = attempts + 1, worker_id = ?, \
             updated_at_ms = ? WHERE id = ? AND state = 'QUEUED' RETURNING *",
        )
        .and_then(|mut s| s.query_row(params![worker.as_str(), now_ms, id.as_str()], TaskRow::from_rusqlite).optional())
        .map_err(writer_error)?;
    let Some(row) = updated else { return Ok(None) };
    let task: TaskRecord = row.try_into()?;
    tx.prepare_cached(
        "INSERT INTO attempts (task_id, number, epoch, worker_id, state, assigned_at_ms) VALUES (?, ?, ?, ?, 'ASSIGNED', ?)",
    )
    .and_then(|mut s| s.execute(params![id.as_str(), task.attempts as i64, task.epoch.0 as i64, worker.as_str(), now_ms]))
    .map_err(writer_error)?;
    Ok(Some(Grant { attempt_number: task.attempts, task }))
}
