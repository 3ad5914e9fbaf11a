//! Group commit: a turn's changes in one transaction on the writer thread — one fsync and one hand-off between
//! threads per turn, whatever its size. Changes apply in the order they were decided (a cancel after the start
//! it fences, a retry after the end it follows), then the grants. Every change stays fenced (`WHERE epoch = ?
//! AND state …`); one the fence refuses rolls the whole turn back (the engine's memory and the store disagree, so
//! nothing of that turn may stand).

use outpost_common::ids::{AttemptRef, Epoch, TaskId, WorkerId};
use outpost_common::task::Refusal;
use rusqlite::Transaction;

use super::attempts::{self, AttemptEnd, Grant};
use super::audit::{self, Audit, Outcome};
use super::tasks::{self, NewTask, TaskRecord};
use super::transaction::Effects;
use super::workers::{self, WorkerSeen};
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
    /// An operator's change, recorded with it: after the change it audits, in the same transaction.
    Audit(Audit),
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
}

impl Store {
    /// Grants a QUEUED task to a worker (a turn of one).
    pub async fn grant(&self, id: &TaskId, worker: &WorkerId, now_ms: i64) -> Result<Grant, Error> {
        let turn = Turn { grants: vec![(id.clone(), worker.clone())], ..Turn::default() };
        match self.write_turn(turn, now_ms).await?.granted.pop() {
            Some(grant) => Ok(grant),
            None => {
                let task = self.task(id).await?.ok_or_else(|| Error::NotFound(id.clone()))?.0;
                Err(Error::refused(&task, None, Refusal::NotQueued { state: task.state }))
            }
        }
    }

    /// Applies one change on its own (a turn of one).
    pub async fn write(&self, change: Change, now_ms: i64) -> Result<(), Error> {
        self.write_turn(Turn::of(change), now_ms).await.map(|_| ())
    }

    /// Records a new QUEUED task; a task with the same id already stored is returned unchanged
    /// (`created = false`): a second submit of the same execution request is the same task.
    pub async fn insert_task(&self, task: &NewTask, now_ms: i64) -> Result<(TaskRecord, bool), Error> {
        let written = self.write_turn(Turn::of(Change::Submit(task.clone())), now_ms).await?;
        written.submitted.into_iter().next().ok_or_else(|| Error::NotFound(task.id.clone()))
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
            Change::Audit(entry) => audit::insert(tx, entry, Outcome::Done, "", now_ms)?,
        }
    }
    for (task, worker) in &turn.grants {
        if let Some(grant) = attempts::grant(tx, task, worker, now_ms)? {
            written.granted.push(grant);
        }
    }
    Ok(written)
}
