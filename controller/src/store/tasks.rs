//! Tasks: submit (idempotent on the execution request id), operator retry and cancel of a queued task (plain
//! functions over the writer's transaction), look-ups and listings (the read pool). Changes about attempts are
//! in `attempts.rs`.

use std::collections::BTreeMap;

use outpost_common::ids::{AspectVersion, Epoch, PoolId, TaskId, WorkerId};
use outpost_common::task::Refusal;
use outpost_common::task::{AttemptState, RunResult, TaskState};
use rusqlite::{Transaction, params};
use sqlx::{FromRow, Sqlite};

use super::row::{Columns, count, narrow};
use super::transaction::Effects;
use super::writer::{execute, writer_error};
use super::{Error, Store, outbox, parse};

/// A task as it enters the system.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub id: TaskId,
    pub task_name: String,
    pub pool: PoolId,
    pub args: BTreeMap<String, String>,
    pub source_type: String,
    pub requested_at_ms: i64,
    /// Claimed at GMS: the version of the request's result aspect the claim wrote (every later write of this
    /// controller is conditional on the latest). `None`: writes are unconditional.
    pub claim: Option<AspectVersion>,
}

/// The recorded terminal result of a task: what its last run produced, and when the task finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    pub run: RunResult,
    pub finished_at_ms: i64,
}

/// A task row, parsed.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    /// The execution request as it came in.
    pub request: NewTask,
    pub state: TaskState,
    pub epoch: Epoch,
    pub attempts: u32,
    pub worker_id: Option<WorkerId>,
    pub not_before_ms: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub result: Option<TaskResult>,
    /// A cancel was requested while an agent held the task (the epoch was bumped then).
    pub cancel_requested: bool,
    /// When the terminal result reached GMS (or was recorded, with reporting off, or GMS refused it for good).
    pub reported_at_ms: Option<i64>,
    /// The latest GMS write of this task that GMS refused for good, and why.
    pub delivery_failure: Option<String>,
    /// Another controller took over the claim on this request at GMS.
    pub claim_lost: bool,
}

/// One attempt row, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub number: u32,
    pub epoch: Epoch,
    pub worker_id: WorkerId,
    pub state: AttemptState,
    pub assigned_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub reason: Option<String>,
    pub last_heartbeat_ms: Option<i64>,
}

/// Which tasks to list.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub pool: Option<PoolId>,
    pub worker: Option<WorkerId>,
    /// Only tasks listed after this one (newest first): its (created_at_ms, id).
    pub after: Option<(i64, TaskId)>,
    pub limit: u32,
}

/// Backlog of one pool, from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolBacklog {
    pub pool: String,
    pub queued: u32,
    pub running: u32,
    /// When the oldest queued task was last queued (0 = none).
    pub oldest_queued_ms: i64,
    pub sqs_in_hand: u32,
}

/// The one query for a task row by id (both connections use it).
pub(super) const TASK_BY_ID: &str = "SELECT * FROM tasks WHERE id = ?";

impl TaskRecord {
    /// The one mapping of a `tasks` row (`SELECT *` or `RETURNING *`), from either connection.
    pub(super) fn from_columns(row: &impl Columns) -> Result<TaskRecord, Error> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| Error::Corrupt(format!("{what}: {e}"));
        let result = match row.opt_int("finished_at_ms")? {
            Some(finished_at_ms) => Some(TaskResult {
                run: RunResult {
                    exit_code: row.opt_int("exit_code")?.map(|c| narrow("exit code", c)).transpose()?,
                    report: row.opt_text("report")?.unwrap_or_default(),
                    structured_report: row.opt_text("structured_report")?.unwrap_or_default(),
                    start_time_ms: row.opt_int("start_time_ms")?.unwrap_or_default(),
                    duration_ms: row.opt_int("duration_ms")?.unwrap_or_default(),
                },
                finished_at_ms,
            }),
            None => None,
        };
        let worker_id = row.opt_text("worker_id")?;
        Ok(TaskRecord {
            request: NewTask {
                id: TaskId::parse(&row.text("id")?).map_err(|e| corrupt("task id", &e))?,
                task_name: row.text("task_name")?,
                pool: PoolId::parse(&row.text("pool")?).map_err(|e| corrupt("pool", &e))?,
                args: serde_json::from_str(&row.text("args_json")?).map_err(|e| corrupt("args", &e))?,
                source_type: row.text("source_type")?,
                requested_at_ms: row.int("requested_at_ms")?,
                claim: row.opt_text("gms_version")?.map(AspectVersion::new),
            },
            state: parse("task state", &row.text("state")?)?,
            epoch: Epoch(narrow("epoch", row.int("epoch")?)?),
            attempts: narrow("attempts", row.int("attempts")?)?,
            worker_id: worker_id.as_deref().map(WorkerId::parse).transpose().map_err(|e| corrupt("worker", &e))?,
            not_before_ms: row.int("not_before_ms")?,
            created_at_ms: row.int("created_at_ms")?,
            updated_at_ms: row.int("updated_at_ms")?,
            result,
            cancel_requested: row.opt_int("cancel_requested_at_ms")?.is_some(),
            reported_at_ms: row.opt_int("reported_at_ms")?,
            delivery_failure: row.opt_text("delivery_failure")?,
            claim_lost: row.opt_int("claim_lost_at_ms")?.is_some(),
        })
    }
}

/// Maps every row of a read.
pub(super) fn task_records(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<TaskRecord>, Error> {
    rows.iter().map(TaskRecord::from_columns).collect()
}

#[derive(FromRow)]
pub(super) struct AttemptRow {
    number: i64,
    epoch: i64,
    worker_id: String,
    state: String,
    assigned_at_ms: i64,
    started_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    reason: Option<String>,
    last_heartbeat_ms: Option<i64>,
}

impl TryFrom<AttemptRow> for AttemptRecord {
    type Error = Error;
    fn try_from(row: AttemptRow) -> Result<Self, Error> {
        Ok(AttemptRecord {
            number: narrow("attempt number", row.number)?,
            epoch: Epoch(narrow("epoch", row.epoch)?),
            worker_id: WorkerId::parse(&row.worker_id).map_err(|e| Error::Corrupt(format!("worker: {e}")))?,
            state: parse("attempt state", &row.state)?,
            assigned_at_ms: row.assigned_at_ms,
            started_at_ms: row.started_at_ms,
            ended_at_ms: row.ended_at_ms,
            reason: row.reason,
            last_heartbeat_ms: row.last_heartbeat_ms,
        })
    }
}

/// The task row as the writer's transaction sees it.
pub(super) fn load(tx: &Transaction<'_>, id: &TaskId) -> Result<TaskRecord, Error> {
    let mut statement = tx.prepare_cached(TASK_BY_ID).map_err(writer_error)?;
    let mut rows = statement.query([id.as_str()]).map_err(writer_error)?;
    match rows.next().map_err(writer_error)? {
        Some(row) => TaskRecord::from_columns(row),
        None => Err(Error::NotFound(id.clone())),
    }
}

/// Records a new QUEUED task; a known id is left as it is (`false`): a second submit is the same task.
pub(super) fn insert(tx: &Transaction<'_>, task: &NewTask, now_ms: i64) -> Result<(TaskRecord, bool), Error> {
    fail::fail_point!("store::submit");
    let args = serde_json::to_string(&task.args).map_err(|e| Error::Corrupt(e.to_string()))?;
    let mut statement = tx
        .prepare_cached(
            "INSERT INTO tasks (id, task_name, pool, args_json, source_type, requested_at_ms, state, created_at_ms, \
             updated_at_ms, gms_version, gms_written_at_ms) VALUES (?, ?, ?, ?, ?, ?, 'QUEUED', ?, ?, ?, ?) \
             ON CONFLICT (id) DO NOTHING RETURNING *",
        )
        .map_err(writer_error)?;
    let mut rows = statement
        .query(params![
            task.id.as_str(),
            task.task_name,
            task.pool.as_str(),
            args,
            task.source_type,
            task.requested_at_ms,
            now_ms,
            now_ms,
            task.claim.as_ref().map(AspectVersion::as_str),
            task.claim.as_ref().map(|_| now_ms)
        ])
        .map_err(writer_error)?;
    match rows.next().map_err(writer_error)? {
        Some(row) => Ok((TaskRecord::from_columns(row)?, true)),
        None => Ok((load(tx, &task.id)?, false)),
    }
}

/// Puts a finished task back in the queue for another run (its attempts and epoch go on).
pub(super) fn requeue_finished(tx: &Transaction<'_>, id: &TaskId, now_ms: i64) -> Result<(), Error> {
    let changed = execute(
        tx,
        "UPDATE tasks SET state = 'QUEUED', not_before_ms = 0, exit_code = NULL, report = NULL, \
             structured_report = NULL, start_time_ms = NULL, duration_ms = NULL, finished_at_ms = NULL, \
             reported_at_ms = NULL, delivery_failure = NULL, updated_at_ms = ? \
             WHERE id = ? AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT', 'ABORTED')",
        params![now_ms, id.as_str()],
    )?;
    if changed == 0 {
        let task = load(tx, id)?;
        return Err(Error::refused(&task, None, Refusal::NotFinished { state: task.state }));
    }
    Ok(())
}

/// Cancels a task nobody holds (QUEUED): it ends CANCELLED at once with `report`.
pub(super) fn cancel_queued(
    tx: &Transaction<'_>,
    id: &TaskId,
    report: &str,
    now_ms: i64,
    effects: &mut Effects,
) -> Result<(), Error> {
    // The outbox row (reporting on) first; a refused fence below rolls the whole turn back.
    let reported_at = outbox::terminal_recorded(tx, id, now_ms, now_ms, effects)?;
    let changed = execute(
        tx,
        "UPDATE tasks SET state = 'CANCELLED', report = ?, structured_report = '', start_time_ms = ?, \
             duration_ms = 0, finished_at_ms = ?, updated_at_ms = ?, reported_at_ms = COALESCE(?, reported_at_ms) \
             WHERE id = ? AND state IN ('RECEIVED', 'QUEUED')",
        params![report, now_ms, now_ms, now_ms, reported_at, id.as_str()],
    )?;
    if changed == 0 {
        let task = load(tx, id)?;
        return Err(Error::fence(&task, None, Refusal::NotQueued { state: task.state }));
    }
    Ok(())
}

impl Store {
    /// Every QUEUED task, oldest first (to rebuild the in-memory queues at start-up).
    pub async fn queued_tasks(&self) -> Result<Vec<TaskRecord>, Error> {
        let rows = sqlx::query("SELECT * FROM tasks WHERE state = 'QUEUED' ORDER BY created_at_ms, id")
            .fetch_all(&self.reads)
            .await?;
        task_records(&rows)
    }

    /// The task rows of `ids` (unknown ids left out), in one read.
    pub async fn task_rows(&self, ids: &[TaskId]) -> Result<Vec<TaskRecord>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::Value::from(ids.iter().map(TaskId::as_str).collect::<Vec<_>>()).to_string();
        let rows = sqlx::query("SELECT * FROM tasks WHERE id IN (SELECT value FROM json_each(?))")
            .bind(ids)
            .fetch_all(&self.reads)
            .await?;
        task_records(&rows)
    }

    /// One task and its attempts (oldest first; the open one, if any, from the task row), or `None`.
    pub async fn task(&self, id: &TaskId) -> Result<Option<(TaskRecord, Vec<AttemptRecord>)>, Error> {
        let row = sqlx::query(TASK_BY_ID).bind(id.as_str()).fetch_optional(&self.reads).await?;
        let Some(row) = row else { return Ok(None) };
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT number, epoch, worker_id, state, assigned_at_ms, started_at_ms, ended_at_ms, reason, last_heartbeat_ms \
             FROM attempts WHERE task_id = ?1 \
             UNION ALL \
             SELECT attempts, attempt_epoch, worker_id, \
             CASE WHEN attempt_started_at_ms IS NULL THEN 'ASSIGNED' ELSE 'RUNNING' END, attempt_assigned_at_ms, \
             attempt_started_at_ms, NULL, NULL, attempt_heartbeat_ms FROM tasks WHERE id = ?1 AND attempt_epoch IS NOT NULL \
             ORDER BY number",
        )
        .bind(id.as_str())
        .fetch_all(&self.reads)
        .await?;
        let attempts = attempts.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
        Ok(Some((TaskRecord::from_columns(&row)?, attempts)))
    }

    /// Queued and running tasks, the oldest queued, and SQS messages held, per pool.
    pub async fn pool_backlogs(&self) -> Result<Vec<PoolBacklog>, Error> {
        let rows: Vec<(String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT pool, SUM(state = 'QUEUED'), SUM(state IN ('ASSIGNED', 'RUNNING')), \
             MIN(CASE WHEN state = 'QUEUED' THEN updated_at_ms END) FROM tasks \
             WHERE state IN ('QUEUED', 'ASSIGNED', 'RUNNING') GROUP BY pool ORDER BY pool",
        )
        .fetch_all(&self.reads)
        .await?;
        let held: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.pool, COUNT(*) FROM sqs_messages m JOIN tasks t ON t.id = m.task_id GROUP BY t.pool",
        )
        .fetch_all(&self.reads)
        .await?;
        let mut backlogs: Vec<PoolBacklog> = rows
            .into_iter()
            .map(|(pool, queued, running, oldest)| PoolBacklog {
                pool,
                queued: count(queued),
                running: count(running),
                oldest_queued_ms: oldest.unwrap_or_default(),
                sqs_in_hand: 0,
            })
            .collect();
        for (pool, n) in held {
            match backlogs.iter_mut().find(|b| b.pool == pool) {
                Some(backlog) => backlog.sqs_in_hand = count(n),
                None => backlogs.push(PoolBacklog { pool, sqs_in_hand: count(n), ..PoolBacklog::default() }),
            }
        }
        Ok(backlogs)
    }

    /// How many tasks are in each (state, pool).
    pub async fn task_counts(&self) -> Result<Vec<(TaskState, PoolId, u64)>, Error> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT state, pool, COUNT(*) FROM tasks GROUP BY state, pool ORDER BY state, pool")
                .fetch_all(&self.reads)
                .await?;
        rows.into_iter()
            .map(|(state, pool, n)| {
                Ok((
                    parse("task state", &state)?,
                    PoolId::parse(&pool).map_err(|e| Error::Corrupt(e.to_string()))?,
                    n.unsigned_abs(),
                ))
            })
            .collect()
    }

    /// Ids of every task not yet finished.
    pub async fn live_task_ids(&self) -> Result<Vec<TaskId>, Error> {
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM tasks WHERE state IN ('RECEIVED', 'QUEUED', 'ASSIGNED', 'RUNNING')")
                .fetch_all(&self.reads)
                .await?;
        ids.into_iter().map(|(id,)| TaskId::parse(&id).map_err(|e| Error::Corrupt(e.to_string()))).collect()
    }

    /// Tasks matching the filter, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, Error> {
        let mut query = sqlx::QueryBuilder::<Sqlite>::new("SELECT * FROM tasks WHERE 1 = 1");
        if let Some(state) = filter.state {
            query.push(" AND state = ").push_bind(state.as_str());
        }
        if let Some(pool) = &filter.pool {
            query.push(" AND pool = ").push_bind(pool.as_str().to_owned());
        }
        if let Some(worker) = &filter.worker {
            query.push(" AND worker_id = ").push_bind(worker.as_str().to_owned());
        }
        if let Some((created, id)) = &filter.after {
            query.push(" AND (created_at_ms < ").push_bind(*created);
            query.push(" OR (created_at_ms = ").push_bind(*created);
            query.push(" AND id < ").push_bind(id.as_str().to_owned()).push("))");
        }
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        query.push(" ORDER BY created_at_ms DESC, id DESC LIMIT ").push_bind(i64::from(limit));
        let rows = query.build().fetch_all(&self.reads).await?;
        task_records(&rows)
    }
}

/// Refusals, from the task's row.
impl Error {
    pub(super) fn refused(task: &TaskRecord, presented: Option<Epoch>, refusal: Refusal) -> Error {
        Error::Refused(outpost_common::task::Refused { task: task.request.id.clone(), presented, refusal })
    }

    /// Explains why a change fenced by `presented` (and by state) matched no row: a newer epoch, a finished task,
    /// else `otherwise`.
    pub(super) fn fence(task: &TaskRecord, presented: Option<Epoch>, otherwise: Refusal) -> Error {
        let refusal = match presented {
            Some(epoch) if epoch != task.epoch => Refusal::StaleEpoch { current: task.epoch },
            _ if task.state.is_terminal() => Refusal::Terminal { state: task.state },
            _ => otherwise,
        };
        Error::refused(task, presented, refusal)
    }
}
