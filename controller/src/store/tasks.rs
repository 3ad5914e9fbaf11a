//! Tasks: submit (idempotent on the execution request id), look-ups and listings. Changes about attempts are in
//! `attempts.rs`.

use std::collections::BTreeMap;

use outpost_common::ids::{Epoch, PoolId, TaskId, WorkerId};
use outpost_common::task::{AttemptState, TaskState};
use sqlx::{FromRow, Sqlite, Transaction};

use super::{Error, Store, parse};

/// A task as it enters the system.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub id: TaskId,
    pub task_name: String,
    pub pool: PoolId,
    pub args: BTreeMap<String, String>,
    pub source_type: String,
    pub requested_at_ms: i64,
}

/// The recorded terminal result of a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskResult {
    pub exit_code: Option<i32>,
    pub report: String,
    pub structured_report: String,
    pub start_time_ms: i64,
    pub duration_ms: i64,
    pub finished_at_ms: i64,
}

/// A task row, parsed.
#[derive(Clone, Debug)]
pub struct TaskRecord {
    pub id: TaskId,
    pub task_name: String,
    pub pool: PoolId,
    pub args: BTreeMap<String, String>,
    pub source_type: String,
    pub requested_at_ms: i64,
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
    /// When the terminal result reached GMS (or was recorded, with reporting off).
    pub reported_at_ms: Option<i64>,
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

#[derive(FromRow)]
pub(super) struct TaskRow {
    id: String,
    task_name: String,
    pool: String,
    args_json: String,
    source_type: String,
    requested_at_ms: i64,
    state: String,
    epoch: i64,
    attempts: i64,
    worker_id: Option<String>,
    not_before_ms: i64,
    created_at_ms: i64,
    updated_at_ms: i64,
    exit_code: Option<i64>,
    report: Option<String>,
    structured_report: Option<String>,
    start_time_ms: Option<i64>,
    duration_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    cancel_requested_at_ms: Option<i64>,
    reported_at_ms: Option<i64>,
}

impl TaskRow {
    /// The same row read through the writer's connection (`SELECT *` or `RETURNING *`).
    pub(super) fn from_rusqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
        Ok(TaskRow {
            id: row.get("id")?,
            task_name: row.get("task_name")?,
            pool: row.get("pool")?,
            args_json: row.get("args_json")?,
            source_type: row.get("source_type")?,
            requested_at_ms: row.get("requested_at_ms")?,
            state: row.get("state")?,
            epoch: row.get("epoch")?,
            attempts: row.get("attempts")?,
            worker_id: row.get("worker_id")?,
            not_before_ms: row.get("not_before_ms")?,
            created_at_ms: row.get("created_at_ms")?,
            updated_at_ms: row.get("updated_at_ms")?,
            exit_code: row.get("exit_code")?,
            report: row.get("report")?,
            structured_report: row.get("structured_report")?,
            start_time_ms: row.get("start_time_ms")?,
            duration_ms: row.get("duration_ms")?,
            finished_at_ms: row.get("finished_at_ms")?,
            cancel_requested_at_ms: row.get("cancel_requested_at_ms")?,
            reported_at_ms: row.get("reported_at_ms")?,
        })
    }
}

impl TryFrom<TaskRow> for TaskRecord {
    type Error = Error;
    fn try_from(row: TaskRow) -> Result<Self, Error> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| Error::Corrupt(format!("{what}: {e}"));
        let result = row.finished_at_ms.map(|finished_at_ms| TaskResult {
            exit_code: row.exit_code.map(|c| c as i32),
            report: row.report.clone().unwrap_or_default(),
            structured_report: row.structured_report.clone().unwrap_or_default(),
            start_time_ms: row.start_time_ms.unwrap_or_default(),
            duration_ms: row.duration_ms.unwrap_or_default(),
            finished_at_ms,
        });
        Ok(TaskRecord {
            id: TaskId::parse(&row.id).map_err(|e| corrupt("task id", &e))?,
            task_name: row.task_name,
            pool: PoolId::parse(&row.pool).map_err(|e| corrupt("pool", &e))?,
            args: serde_json::from_str(&row.args_json).map_err(|e| corrupt("args", &e))?,
            source_type: row.source_type,
            requested_at_ms: row.requested_at_ms,
            state: parse("task state", &row.state)?,
            epoch: Epoch(row.epoch as u64),
            attempts: row.attempts as u32,
            worker_id: row.worker_id.as_deref().map(WorkerId::parse).transpose().map_err(|e| corrupt("worker", &e))?,
            not_before_ms: row.not_before_ms,
            created_at_ms: row.created_at_ms,
            updated_at_ms: row.updated_at_ms,
            result,
            cancel_requested: row.cancel_requested_at_ms.is_some(),
            reported_at_ms: row.reported_at_ms,
        })
    }
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
            number: row.number as u32,
            epoch: Epoch(row.epoch as u64),
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

pub(super) async fn load_task(tx: &mut Transaction<'_, Sqlite>, id: &TaskId) -> Result<TaskRecord, Error> {
    let row: Option<TaskRow> =
        sqlx::query_as("SELECT * FROM tasks WHERE id = ?").bind(id.as_str()).fetch_optional(&mut **tx).await?;
    row.ok_or_else(|| Error::NotFound(id.clone()))?.try_into()
}

impl Store {
    /// Records a new QUEUED task; a task with the same id already stored is returned unchanged
    /// (`created = false`): a second submit of the same execution request is the same task.
    pub async fn insert_task(&self, task: &NewTask, now_ms: i64) -> Result<(TaskRecord, bool), Error> {
        let turn = super::Turn { new_tasks: vec![task.clone()], ..super::Turn::default() };
        self.write_turn(turn, now_ms).await?.submitted.pop().ok_or_else(|| Error::NotFound(task.id.clone()))
    }

    /// Every QUEUED task, oldest first (to rebuild the in-memory queues at start-up).
    pub async fn queued_tasks(&self) -> Result<Vec<TaskRecord>, Error> {
        let rows: Vec<TaskRow> =
            sqlx::query_as("SELECT * FROM tasks WHERE state = 'QUEUED' ORDER BY created_at_ms, id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// One task and its attempts (oldest first), or `None`.
    pub async fn task(&self, id: &TaskId) -> Result<Option<(TaskRecord, Vec<AttemptRecord>)>, Error> {
        let row: Option<TaskRow> =
            sqlx::query_as("SELECT * FROM tasks WHERE id = ?").bind(id.as_str()).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT number, epoch, worker_id, state, assigned_at_ms, started_at_ms, ended_at_ms, reason, last_heartbeat_ms \
             FROM attempts WHERE task_id = ? ORDER BY number",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let attempts = attempts.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
        Ok(Some((row.try_into()?, attempts)))
    }

    /// Puts a finished task back in the queue for another run (its attempts and epoch go on).
    pub async fn requeue_finished(&self, id: &TaskId, now_ms: i64) -> Result<TaskRecord, Error> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE tasks SET state = 'QUEUED', not_before_ms = 0, exit_code = NULL, report = NULL, \
             structured_report = NULL, start_time_ms = NULL, duration_ms = NULL, finished_at_ms = NULL, \
             reported_at_ms = NULL, updated_at_ms = ? \
             WHERE id = ? AND state IN ('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT', 'ABORTED')",
        )
        .bind(now_ms)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let task = load_task(&mut tx, id).await?;
        if updated == 0 {
            return Err(Error::NotQueued { task: id.clone(), state: task.state });
        }
        tx.commit().await?;
        Ok(task)
    }

    /// Queued and running tasks, the oldest queued, and SQS messages held, per pool.
    pub async fn pool_backlogs(&self) -> Result<Vec<PoolBacklog>, Error> {
        let rows: Vec<(String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT pool, SUM(state = 'QUEUED'), SUM(state IN ('ASSIGNED', 'RUNNING')), \
             MIN(CASE WHEN state = 'QUEUED' THEN updated_at_ms END) FROM tasks \
             WHERE state IN ('QUEUED', 'ASSIGNED', 'RUNNING') GROUP BY pool ORDER BY pool",
        )
        .fetch_all(&self.pool)
        .await?;
        let held: Vec<(String, i64)> = sqlx::query_as(
            "SELECT t.pool, COUNT(*) FROM sqs_messages m JOIN tasks t ON t.id = m.task_id GROUP BY t.pool",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut backlogs: Vec<PoolBacklog> = rows
            .into_iter()
            .map(|(pool, queued, running, oldest)| PoolBacklog {
                pool,
                queued: queued as u32,
                running: running as u32,
                oldest_queued_ms: oldest.unwrap_or_default(),
                sqs_in_hand: 0,
            })
            .collect();
        for (pool, n) in held {
            match backlogs.iter_mut().find(|b| b.pool == pool) {
                Some(backlog) => backlog.sqs_in_hand = n as u32,
                None => backlogs.push(PoolBacklog { pool, sqs_in_hand: n as u32, ..PoolBacklog::default() }),
            }
        }
        Ok(backlogs)
    }

    /// How many tasks are in each (state, pool).
    pub async fn task_counts(&self) -> Result<Vec<(TaskState, PoolId, u64)>, Error> {
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT state, pool, COUNT(*) FROM tasks GROUP BY state, pool ORDER BY state, pool")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(state, pool, n)| {
                Ok((
                    parse("task state", &state)?,
                    PoolId::parse(&pool).map_err(|e| Error::Corrupt(e.to_string()))?,
                    n as u64,
                ))
            })
            .collect()
    }

    /// Ids of every task not yet finished.
    pub async fn live_task_ids(&self) -> Result<Vec<TaskId>, Error> {
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM tasks WHERE state IN ('RECEIVED', 'QUEUED', 'ASSIGNED', 'RUNNING')")
                .fetch_all(&self.pool)
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
        query.push(" ORDER BY created_at_ms DESC, id DESC LIMIT ").push_bind(limit as i64);
        let rows: Vec<TaskRow> = query.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }
}
