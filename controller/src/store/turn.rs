//! Group commit: a turn's changes in one transaction on the writer thread — one fsync and one hand-off between
//! threads per turn, whatever its size. Changes apply in the order they were decided (a cancel after the start
//! it fences, a retry after the end it follows), then the grants. Every change stays fenced (`WHERE epoch = ?
//! AND state …`); one the fence refuses rolls the whole turn back (the engine's memory and the store disagree, so
//! nothing of that turn may stand).

use outpost_common::ids::{AttemptRef, Epoch, TaskId, WorkerId};
use rusqlite::{Transaction, TransactionBehavior};

use super::attempts::{self, AttemptEnd, Grant};
use super::tasks::{self, NewTask, TaskRecord};
use super::workers::{self, WorkerSeen};
use super::writer::{execute, writer_error};
use super::{Error, Store};

/// One durable change the engine decided.
#[derive(Clone, Debug)]
pub enum Change {
    /// A new task (a known id is left as it is).
    Submit(NewTask),
    /// The agent acknowledged: ASSIGNED → RUNNING (a repeat is a no-op).
    Start(AttemptRef),
    /// An attempt ended; its task is requeued or finished.
    End(AttemptEnd),
    /// Cancel of a held task: the epoch goes from `epoch` to `epoch + 1`, fencing the running attempt out.
    RequestCancel { task: TaskId, epoch: Epoch },
    /// Cancel of a queued task: it ends CANCELLED with `report`.
    CancelQueued { task: TaskId, report: String },
    /// An operator runs a finished task again.
    Retry { task: TaskId },
    /// Last heartbeats of live attempts (rows of ended attempts are left alone).
    Heartbeats(Vec<(AttemptRef, i64)>),
    /// A worker connected with this declaration.
    WorkerConnected(WorkerSeen),
    /// A worker's session ended.
    WorkerDisconnected(WorkerId),
}

/// One turn: its changes in order, then grants of queued tasks to workers.
#[derive(Clone, Debug, Default)]
pub struct Turn {
    pub changes: Vec<Change>,
    pub grants: Vec<(TaskId, WorkerId)>,
}

impl Turn {
    /// A turn of one change.
    pub fn of(change: Change) -> Turn {
        Turn { changes: vec![change], grants: Vec::new() }
    }
}

/// What a committed turn did.
#[derive(Debug, Default)]
pub struct TurnWritten {
    /// Per submit, in order: the stored task and whether this turn created it (`false`: the id was known).
    pub submitted: Vec<(TaskRecord, bool)>,
    /// The grants made; a task no longer QUEUED is left out (nothing changed for it).
    pub granted: Vec<Grant>,
}

/// What a transaction did beyond its rows, to announce once it is durable; and whether results are reported.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// GMS reporting is on: state changes write outbox rows.
    pub reporting: bool,
    pub outbox_added: bool,
    /// A terminal result was delivered (or recorded, with reporting off): SQS messages may go.
    pub reported: bool,
}

impl Store {
    /// Applies a turn in one transaction and commits it; nothing of it happens if any change is refused (the
    /// error is the first refusal) or the database fails.
    pub async fn write_turn(&self, turn: Turn, now_ms: i64) -> Result<TurnWritten, Error> {
        self.start_turn(turn, now_ms).await
    }

    /// The same, handed to the writer at once: the caller may decide the next turn while this one commits.
    pub fn start_turn(
        &self,
        turn: Turn,
        now_ms: i64,
    ) -> impl Future<Output = Result<TurnWritten, Error>> + Send + Sync + 'static {
        let has_grants = !turn.grants.is_empty();
        let has_results = turn.changes.iter().any(|c| matches!(c, Change::End(_)));
        let committed = self.start_transaction(move |tx, effects| apply(tx, &turn, now_ms, effects));
        async move {
            let written = committed.await?;
            // Crash points of the test build: the turn is durable, nothing of it announced yet.
            if has_grants {
                crate::crash_point!("crash::after_grant_commit");
            }
            if has_results {
                crate::crash_point!("crash::after_result_commit");
            }
            Ok(written)
        }
    }

    /// Runs `job` in one write transaction on the writer (all or nothing), then announces what it did.
    pub(super) async fn transaction<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Transaction<'_>, &mut Effects) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.start_transaction(job).await
    }

    /// Hands a transaction to the writer now; the future resolves once it committed (and what it did was
    /// announced, from the writer thread) or failed.
    fn start_transaction<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Transaction<'_>, &mut Effects) -> Result<T, Error> + Send + 'static,
    ) -> impl Future<Output = Result<T, Error>> + Send + Sync + 'static {
        let reporting = self.reporting;
        let (outbox_added, reported) = (self.outbox_added.clone(), self.reported.clone());
        let committed = self.writer.submit(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(writer_error)?;
            let mut effects = Effects { reporting, ..Effects::default() };
            let value = job(&tx, &mut effects)?;
            tx.commit().map_err(writer_error)?;
            if effects.outbox_added {
                outbox_added.notify_one();
            }
            if effects.reported {
                reported.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok::<_, Error>(value)
        });
        async move { committed.await? }
    }
}

impl Store {
    /// One statement in a transaction of its own (bookkeeping outside the engine's turns).
    pub(super) async fn execute_alone(
        &self,
        sql: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<(), Error> {
        self.transaction(move |tx, _| execute(tx, sql, rusqlite::params_from_iter(values)).map(|_| ())).await
    }
}

fn apply(tx: &Transaction<'_>, turn: &Turn, now_ms: i64, effects: &mut Effects) -> Result<TurnWritten, Error> {
    let mut written = TurnWritten::default();
    for change in &turn.changes {
        match change {
            Change::Submit(task) => written.submitted.push(tasks::insert(tx, task, now_ms)?),
            Change::Start(attempt) => attempts::start(tx, attempt, now_ms, effects)?,
            Change::End(end) => attempts::end(tx, end, now_ms, effects)?,
            Change::RequestCancel { task, epoch } => attempts::request_cancel(tx, task, *epoch, now_ms)?,
            Change::CancelQueued { task, report } => tasks::cancel_queued(tx, task, report, now_ms, effects)?,
            Change::Retry { task } => tasks::requeue_finished(tx, task, now_ms)?,
            Change::Heartbeats(beats) => attempts::heartbeats(tx, beats)?,
            Change::WorkerConnected(seen) => workers::connected(tx, seen, now_ms)?,
            Change::WorkerDisconnected(worker) => workers::disconnected(tx, worker, now_ms)?,
        }
    }
    for (task, worker) in &turn.grants {
        if let Some(grant) = attempts::grant(tx, task, worker, now_ms)? {
            written.granted.push(grant);
        }
    }
    Ok(written)
}
