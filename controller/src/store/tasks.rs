//! Tasks and attempts: submit (idempotent on the execution request id), grant (bumps the epoch), start, finish —
//! every change about an attempt fenced by `WHERE epoch = ?`.

use std::collections::BTreeMap;

use outpost_common::ids::{AttemptRef, Epoch, PoolId, TaskId, WorkerId};
use outpost_common::task::{AttemptState, ResultStatus, TaskState};
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
}

/// A fresh grant: the task (now ASSIGNED at its new epoch) and the attempt number.
#[derive(Clone, Debug)]
pub struct Grant {
    pub task: TaskRecord,
    pub attempt_number: u32,
}

/// What an agent reported at the end of an attempt.
#[derive(Clone, Debug)]
pub struct AttemptOutcome {
    pub status: ResultStatus,
    pub exit_code: Option<i32>,
    pub report: String,
    pub structured_report: String,
    pub start_time_ms: i64,
    pub duration_ms: i64,
}

/// Which tasks to list.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub pool: Option<PoolId>,
    pub limit: u32,
}

#[derive(FromRow)]
struct TaskRow {
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
        })
    }
}

#[derive(FromRow)]
struct AttemptRow {
    number: i64,
    epoch: i64,
    worker_id: String,
    state: String,
    assigned_at_ms: i64,
    started_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    reason: Option<String>,
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
        })
    }
}

async fn load_task(tx: &mut Transaction<'_, Sqlite>, id: &TaskId) -> Result<TaskRecord, Error> {
    let row: Option<TaskRow> =
        sqlx::query_as("SELECT * FROM tasks WHERE id = ?").bind(id.as_str()).fetch_optional(&mut **tx).await?;
    row.ok_or_else(|| Error::NotFound(id.clone()))?.try_into()
}

/// Explains why a fenced update matched no row.
fn refusal(task: &TaskRecord, attempt: &AttemptRef, worker: &WorkerId) -> Error {
    if task.epoch != attempt.epoch {
        Error::StaleEpoch { task: task.id.clone(), presented: attempt.epoch, current: task.epoch }
    } else if task.worker_id.as_ref() != Some(worker) {
        Error::WrongWorker { task: task.id.clone() }
    } else {
        Error::AlreadyFinished { task: task.id.clone(), state: task.state }
    }
}

impl Store {
    /// Records a new QUEUED task; a task with the same id already stored is returned unchanged
    /// (`created = false`): a second submit of the same execution request is the same task.
    pub async fn insert_task(&self, task: &NewTask, now_ms: i64) -> Result<(TaskRecord, bool), Error> {
        let args_json = serde_json::to_string(&task.args).map_err(|e| Error::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO tasks (id, task_name, pool, args_json, source_type, requested_at_ms, state, \
             created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, 'QUEUED', ?, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(task.id.as_str())
        .bind(&task.task_name)
        .bind(task.pool.as_str())
        .bind(args_json)
        .bind(&task.source_type)
        .bind(task.requested_at_ms)
        .bind(now_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let record = load_task(&mut tx, &task.id).await?;
        tx.commit().await?;
        Ok((record, inserted))
    }

    /// Every QUEUED task, oldest first (to rebuild the in-memory queues at start-up).
    pub async fn queued_tasks(&self) -> Result<Vec<TaskRecord>, Error> {
        let rows: Vec<TaskRow> =
            sqlx::query_as("SELECT * FROM tasks WHERE state = 'QUEUED' ORDER BY created_at_ms, id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Grants a QUEUED task to a worker: bumps the epoch and records the attempt, in one transaction.
    pub async fn grant(&self, id: &TaskId, worker: &WorkerId, now_ms: i64) -> Result<Grant, Error> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE tasks SET state = 'ASSIGNED', epoch = epoch + 1, attempts = attempts + 1, worker_id = ?, \
             updated_at_ms = ? WHERE id = ? AND state = 'QUEUED'",
        )
        .bind(worker.as_str())
        .bind(now_ms)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let task = load_task(&mut tx, id).await?;
        if updated == 0 {
            return Err(Error::NotQueued { task: id.clone(), state: task.state });
        }
        sqlx::query(
            "INSERT INTO attempts (task_id, number, epoch, worker_id, state, assigned_at_ms) \
             VALUES (?, ?, ?, ?, 'ASSIGNED', ?)",
        )
        .bind(id.as_str())
        .bind(task.attempts as i64)
        .bind(task.epoch.0 as i64)
        .bind(worker.as_str())
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Grant { attempt_number: task.attempts, task })
    }

    /// The agent acknowledged the assignment and started it: ASSIGNED → RUNNING, fenced by epoch and worker.
    /// Acknowledging a RUNNING attempt again is a no-op.
    pub async fn start_attempt(&self, attempt: &AttemptRef, worker: &WorkerId, now_ms: i64) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE tasks SET state = 'RUNNING', updated_at_ms = ? \
             WHERE id = ? AND epoch = ? AND worker_id = ? AND state IN ('ASSIGNED', 'RUNNING')",
        )
        .bind(now_ms)
        .bind(attempt.task_id.as_str())
        .bind(attempt.epoch.0 as i64)
        .bind(worker.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let task = load_task(&mut tx, &attempt.task_id).await?;
            return Err(refusal(&task, attempt, worker));
        }
        sqlx::query(
            "UPDATE attempts SET state = 'RUNNING', started_at_ms = COALESCE(started_at_ms, ?) \
             WHERE task_id = ? AND epoch = ?",
        )
        .bind(now_ms)
        .bind(attempt.task_id.as_str())
        .bind(attempt.epoch.0 as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records an attempt's end, fenced by epoch and worker. A terminal result makes the task terminal; an
    /// interrupted attempt puts the task back in the queue. Returns the task's new state.
    pub async fn finish_attempt(
        &self,
        attempt: &AttemptRef,
        worker: &WorkerId,
        outcome: &AttemptOutcome,
        now_ms: i64,
    ) -> Result<TaskState, Error> {
        let mut tx = self.pool.begin().await?;
        let new_state = outcome.status.terminal_task_state().unwrap_or(TaskState::Queued);
        let updated = if new_state.is_terminal() {
            sqlx::query(
                "UPDATE tasks SET state = ?, updated_at_ms = ?, exit_code = ?, report = ?, structured_report = ?, \
                 start_time_ms = ?, duration_ms = ?, finished_at_ms = ? \
                 WHERE id = ? AND epoch = ? AND worker_id = ? AND state IN ('ASSIGNED', 'RUNNING')",
            )
            .bind(new_state.as_str())
            .bind(now_ms)
            .bind(outcome.exit_code)
            .bind(&outcome.report)
            .bind(&outcome.structured_report)
            .bind(outcome.start_time_ms)
            .bind(outcome.duration_ms)
            .bind(now_ms)
        } else {
            sqlx::query(
                "UPDATE tasks SET state = ?, updated_at_ms = ? \
                 WHERE id = ? AND epoch = ? AND worker_id = ? AND state IN ('ASSIGNED', 'RUNNING')",
            )
            .bind(new_state.as_str())
            .bind(now_ms)
        }
        .bind(attempt.task_id.as_str())
        .bind(attempt.epoch.0 as i64)
        .bind(worker.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            let task = load_task(&mut tx, &attempt.task_id).await?;
            return Err(refusal(&task, attempt, worker));
        }
        let reason = match outcome.exit_code {
            Some(code) => format!("{} (exit code {code})", outcome.status),
            None => outcome.status.to_string(),
        };
        sqlx::query("UPDATE attempts SET state = ?, ended_at_ms = ?, reason = ? WHERE task_id = ? AND epoch = ?")
            .bind(AttemptState::from(outcome.status).as_str())
            .bind(now_ms)
            .bind(reason)
            .bind(attempt.task_id.as_str())
            .bind(attempt.epoch.0 as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(new_state)
    }

    /// One task and its attempts (oldest first), or `None`.
    pub async fn task(&self, id: &TaskId) -> Result<Option<(TaskRecord, Vec<AttemptRecord>)>, Error> {
        let row: Option<TaskRow> =
            sqlx::query_as("SELECT * FROM tasks WHERE id = ?").bind(id.as_str()).fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT number, epoch, worker_id, state, assigned_at_ms, started_at_ms, ended_at_ms, reason \
             FROM attempts WHERE task_id = ? ORDER BY number",
        )
        .bind(id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let attempts = attempts.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?;
        Ok(Some((row.try_into()?, attempts)))
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
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        query.push(" ORDER BY created_at_ms DESC, id DESC LIMIT ").push_bind(limit as i64);
        let rows: Vec<TaskRow> = query.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_task(id: &str) -> NewTask {
        NewTask {
            id: TaskId::parse(id).unwrap(),
            task_name: "RUN_INGEST".into(),
            pool: PoolId::parse("default").unwrap(),
            args: BTreeMap::from([("recipe".to_owned(), "{}".to_owned())]),
            source_type: "MANUAL_INGESTION_SOURCE".into(),
            requested_at_ms: 1,
        }
    }

    fn outcome(status: ResultStatus) -> AttemptOutcome {
        AttemptOutcome {
            status,
            exit_code: Some(0),
            report: "done".into(),
            structured_report: "{}".into(),
            start_time_ms: 10,
            duration_ms: 5,
        }
    }

    async fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db")).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn submit_is_idempotent_on_the_execution_request_id() {
        let (_dir, store) = open().await;
        let (first, created) = store.insert_task(&new_task("a"), 100).await.unwrap();
        assert!(created);
        assert_eq!(first.state, TaskState::Queued);
        let mut again = new_task("a");
        again.task_name = "TEST_CONNECTION".into();
        let (second, created) = store.insert_task(&again, 200).await.unwrap();
        assert!(!created);
        assert_eq!(second.task_name, "RUN_INGEST");
        assert_eq!(second.created_at_ms, 100);
        assert_eq!(store.queued_tasks().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn grant_bumps_the_epoch_and_fences_later_messages() {
        let (_dir, store) = open().await;
        let w1 = WorkerId::parse("w1").unwrap();
        let w2 = WorkerId::parse("w2").unwrap();
        let id = TaskId::parse("a").unwrap();
        store.insert_task(&new_task("a"), 1).await.unwrap();
        let grant = store.grant(&id, &w1, 2).await.unwrap();
        assert_eq!((grant.task.epoch, grant.attempt_number, grant.task.state), (Epoch(1), 1, TaskState::Assigned));
        assert!(matches!(store.grant(&id, &w2, 3).await, Err(Error::NotQueued { state: TaskState::Assigned, .. })));

        let current = AttemptRef { task_id: id.clone(), epoch: Epoch(1) };
        let stale = AttemptRef { task_id: id.clone(), epoch: Epoch(0) };
        assert!(matches!(
            store.start_attempt(&stale, &w1, 4).await,
            Err(Error::StaleEpoch { presented: Epoch(0), current: Epoch(1), .. })
        ));
        assert!(matches!(store.start_attempt(&current, &w2, 4).await, Err(Error::WrongWorker { .. })));
        store.start_attempt(&current, &w1, 4).await.unwrap();
        store.start_attempt(&current, &w1, 5).await.unwrap();

        let state = store.finish_attempt(&current, &w1, &outcome(ResultStatus::Succeeded), 9).await.unwrap();
        assert_eq!(state, TaskState::Succeeded);
        assert!(matches!(
            store.finish_attempt(&current, &w1, &outcome(ResultStatus::Failed), 10).await,
            Err(Error::AlreadyFinished { state: TaskState::Succeeded, .. })
        ));
        let (task, attempts) = store.task(&id).await.unwrap().unwrap();
        assert_eq!(task.state, TaskState::Succeeded);
        assert_eq!(task.result.as_ref().unwrap().report, "done");
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].state, AttemptState::Succeeded);
        assert_eq!(attempts[0].started_at_ms, Some(4));
    }

    #[tokio::test]
    async fn an_interrupted_attempt_requeues_the_task() {
        let (_dir, store) = open().await;
        let w1 = WorkerId::parse("w1").unwrap();
        let id = TaskId::parse("a").unwrap();
        store.insert_task(&new_task("a"), 1).await.unwrap();
        store.grant(&id, &w1, 2).await.unwrap();
        let attempt = AttemptRef { task_id: id.clone(), epoch: Epoch(1) };
        let state = store.finish_attempt(&attempt, &w1, &outcome(ResultStatus::Interrupted), 3).await.unwrap();
        assert_eq!(state, TaskState::Queued);
        let grant = store.grant(&id, &w1, 4).await.unwrap();
        assert_eq!((grant.task.epoch, grant.attempt_number), (Epoch(2), 2));
    }

    #[tokio::test]
    async fn list_filters_by_state_and_pool_newest_first() {
        let (_dir, store) = open().await;
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            store.insert_task(&new_task(id), i as i64).await.unwrap();
        }
        store.grant(&TaskId::parse("b").unwrap(), &WorkerId::parse("w").unwrap(), 5).await.unwrap();
        let queued =
            store.list_tasks(&TaskFilter { state: Some(TaskState::Queued), ..TaskFilter::default() }).await.unwrap();
        let ids: Vec<_> = queued.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["c", "a"]);
        let other_pool = TaskFilter { pool: Some(PoolId::parse("other").unwrap()), ..TaskFilter::default() };
        assert!(store.list_tasks(&other_pool).await.unwrap().is_empty());
    }
}
