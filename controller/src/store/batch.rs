//! Group commit: many task changes (submits, grants, starts, ends) in one transaction, each kind written with a
//! few multi-row statements, so a busy engine turn costs one fsync and a constant number of round trips to
//! SQLite whatever its size. Every change stays fenced (`WHERE epoch = ? AND state …`); a change the fence
//! refuses is reported per item and changes nothing.

use std::collections::{HashMap, HashSet};

use outpost_common::ids::{AttemptRef, TaskId, WorkerId};
use outpost_common::task::TaskState;
use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::attempts::{AttemptEnd, Grant, TaskChange, refusal};
use super::outbox::{OutboxKind, enqueue};
use super::tasks::{NewTask, TaskRecord, TaskRow, load_task};
use super::{Error, Store};

/// Rows per statement (SQLite allows 32,766 bound values; the widest row here binds 8).
const ROWS_PER_STATEMENT: usize = 256;

/// An open group of changes; nothing is durable (or visible to others) until [`Batch::commit`].
pub struct Batch {
    tx: Transaction<'static, Sqlite>,
    store: Store,
    outbox_added: bool,
    finished: bool,
}

impl Store {
    /// Opens a group of changes.
    pub async fn batch(&self) -> Result<Batch, Error> {
        Ok(Batch { tx: self.pool.begin().await?, store: self.clone(), outbox_added: false, finished: false })
    }
}

impl Batch {
    /// Records new QUEUED tasks; a task whose id is already stored (or appears earlier in `tasks`) comes back
    /// unchanged with `created = false`. Results are in the order of `tasks`.
    pub async fn insert_tasks(&mut self, tasks: &[NewTask], now_ms: i64) -> Result<Vec<(TaskRecord, bool)>, Error> {
        let mut created: HashMap<String, TaskRecord> = HashMap::new();
        for chunk in tasks.chunks(ROWS_PER_STATEMENT) {
            let mut rows = Vec::with_capacity(chunk.len());
            for task in chunk {
                let args = serde_json::to_string(&task.args).map_err(|e| Error::Corrupt(e.to_string()))?;
                rows.push((task, args));
            }
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO tasks (id, task_name, pool, args_json, source_type, requested_at_ms, state, \
                 created_at_ms, updated_at_ms) ",
            );
            query.push_values(&rows, |mut row, (task, args)| {
                row.push_bind(task.id.as_str())
                    .push_bind(task.task_name.as_str())
                    .push_bind(task.pool.as_str())
                    .push_bind(args.as_str())
                    .push_bind(task.source_type.as_str())
                    .push_bind(task.requested_at_ms)
                    .push_bind("QUEUED")
                    .push_bind(now_ms)
                    .push_bind(now_ms);
            });
            query.push(" ON CONFLICT (id) DO NOTHING RETURNING *");
            let inserted: Vec<TaskRow> = query.build_query_as().fetch_all(&mut *self.tx).await?;
            for row in inserted {
                let record: TaskRecord = row.try_into()?;
                created.insert(record.id.as_str().to_owned(), record);
            }
        }
        let known: Vec<&TaskId> = {
            let mut seen = HashSet::new();
            tasks.iter().map(|t| &t.id).filter(|id| !created.contains_key(id.as_str()) && seen.insert(*id)).collect()
        };
        let mut existing: HashMap<String, TaskRecord> = HashMap::new();
        for chunk in known.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new("SELECT * FROM tasks WHERE id IN (");
            let mut ids = query.separated(", ");
            for id in chunk {
                ids.push_bind(id.as_str());
            }
            query.push(")");
            let rows: Vec<TaskRow> = query.build_query_as().fetch_all(&mut *self.tx).await?;
            for row in rows {
                let record: TaskRecord = row.try_into()?;
                existing.insert(record.id.as_str().to_owned(), record);
            }
        }
        tasks
            .iter()
            .map(|task| match created.remove(task.id.as_str()) {
                Some(record) => {
                    existing.insert(task.id.as_str().to_owned(), record.clone());
                    Ok((record, true))
                }
                None => existing
                    .get(task.id.as_str())
                    .map(|record| (record.clone(), false))
                    .ok_or_else(|| Error::NotFound(task.id.clone())),
            })
            .collect()
    }

    /// Grants QUEUED tasks to workers: bumps each epoch and records the attempt. A task no longer QUEUED is left
    /// out of the answer (nothing changes for it).
    pub async fn grant(&mut self, grants: &[(TaskId, WorkerId)], now_ms: i64) -> Result<Vec<Grant>, Error> {
        let mut granted = Vec::with_capacity(grants.len());
        for chunk in grants.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "UPDATE tasks SET state = 'ASSIGNED', epoch = epoch + 1, attempts = attempts + 1, \
                 worker_id = v.column2, updated_at_ms = ",
            );
            query.push_bind(now_ms).push(" FROM (");
            query.push_values(chunk, |mut row, (task, worker)| {
                row.push_bind(task.as_str()).push_bind(worker.as_str());
            });
            query.push(") AS v WHERE tasks.id = v.column1 AND tasks.state = 'QUEUED' RETURNING *");
            let rows: Vec<TaskRow> = query.build_query_as().fetch_all(&mut *self.tx).await?;
            if rows.is_empty() {
                continue;
            }
            let tasks = rows.into_iter().map(TaskRecord::try_from).collect::<Result<Vec<_>, _>>()?;
            let mut insert = QueryBuilder::<Sqlite>::new(
                "INSERT INTO attempts (task_id, number, epoch, worker_id, state, assigned_at_ms) ",
            );
            insert.push_values(&tasks, |mut row, task| {
                row.push_bind(task.id.as_str())
                    .push_bind(task.attempts as i64)
                    .push_bind(task.epoch.0 as i64)
                    .push_bind(task.worker_id.as_ref().map(WorkerId::as_str))
                    .push_bind("ASSIGNED")
                    .push_bind(now_ms);
            });
            insert.build().execute(&mut *self.tx).await?;
            granted.extend(tasks.into_iter().map(|task| Grant { attempt_number: task.attempts, task }));
        }
        Ok(granted)
    }

    /// Agents acknowledged their assignments: ASSIGNED → RUNNING, fenced by epoch, with a RUNNING report queued
    /// for GMS. One answer per attempt, in order; repeating a start is a no-op.
    pub async fn start_attempts(
        &mut self,
        attempts: &[AttemptRef],
        now_ms: i64,
    ) -> Result<Vec<Result<(), Error>>, Error> {
        let mut started: HashSet<String> = HashSet::new();
        for chunk in attempts.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new("UPDATE tasks SET state = 'RUNNING', updated_at_ms = ");
            query.push_bind(now_ms).push(" FROM (");
            query.push_values(chunk, |mut row, attempt| {
                row.push_bind(attempt.task_id.as_str()).push_bind(attempt.epoch.0 as i64);
            });
            query.push(
                ") AS v WHERE tasks.id = v.column1 AND tasks.epoch = v.column2 AND tasks.state = 'ASSIGNED' \
                 RETURNING tasks.id",
            );
            let ids: Vec<(String,)> = query.build_query_as().fetch_all(&mut *self.tx).await?;
            let applied: Vec<&AttemptRef> =
                chunk.iter().filter(|a| ids.iter().any(|(id,)| id == a.task_id.as_str())).collect();
            if applied.is_empty() {
                continue;
            }
            let rows: Vec<(&TaskId, i64)> = applied.iter().map(|a| (&a.task_id, now_ms)).collect();
            self.outbox_added |= enqueue(&self.store, &mut self.tx, OutboxKind::Running, &rows, now_ms).await?;
            let mut query = QueryBuilder::<Sqlite>::new(
                "UPDATE attempts SET state = 'RUNNING', started_at_ms = COALESCE(started_at_ms, ",
            );
            query.push_bind(now_ms).push(") FROM (");
            query.push_values(&applied, |mut row, attempt| {
                row.push_bind(attempt.task_id.as_str()).push_bind(attempt.epoch.0 as i64);
            });
            query.push(
                ") AS v WHERE attempts.task_id = v.column1 AND attempts.epoch = v.column2 \
                 AND attempts.ended_at_ms IS NULL",
            );
            query.build().execute(&mut *self.tx).await?;
            started.extend(applied.iter().map(|a| a.task_id.as_str().to_owned()));
        }
        let mut answers = Vec::with_capacity(attempts.len());
        for attempt in attempts {
            if started.contains(attempt.task_id.as_str()) {
                answers.push(Ok(()));
                continue;
            }
            let task = load_task(&mut self.tx, &attempt.task_id).await?;
            answers.push(if task.epoch == attempt.epoch && task.state == TaskState::Running {
                Ok(())
            } else {
                Err(refusal(&task, attempt.epoch))
            });
        }
        Ok(answers)
    }

    /// Ends attempts and moves their tasks on (back to the queue, or to a terminal state with the result),
    /// fenced by each task's epoch. One answer per end, in order.
    pub async fn end_attempts(&mut self, ends: &[AttemptEnd], now_ms: i64) -> Result<Vec<Result<(), Error>>, Error> {
        let mut applied: HashSet<String> = HashSet::new();
        for chunk in ends.chunks(ROWS_PER_STATEMENT) {
            let requeues: Vec<(&AttemptEnd, i64)> = chunk
                .iter()
                .filter_map(|end| match &end.change {
                    TaskChange::Requeue { not_before_ms } => Some((end, *not_before_ms)),
                    TaskChange::Finish { .. } => None,
                })
                .collect();
            if !requeues.is_empty() {
                let mut query = QueryBuilder::<Sqlite>::new(
                    "UPDATE tasks SET state = 'QUEUED', not_before_ms = v.column3, cancel_requested_at_ms = NULL, \
                     updated_at_ms = ",
                );
                query.push_bind(now_ms).push(" FROM (");
                query.push_values(&requeues, |mut row, (end, not_before_ms)| {
                    row.push_bind(end.task_id.as_str()).push_bind(end.task_epoch.0 as i64).push_bind(*not_before_ms);
                });
                query.push(
                    ") AS v WHERE tasks.id = v.column1 AND tasks.epoch = v.column2 \
                     AND tasks.state IN ('ASSIGNED', 'RUNNING') RETURNING tasks.id",
                );
                let ids: Vec<(String,)> = query.build_query_as().fetch_all(&mut *self.tx).await?;
                applied.extend(ids.into_iter().map(|(id,)| id));
            }
            let finishes: Vec<(&AttemptEnd, TaskState, &super::ResultRecord)> = chunk
                .iter()
                .filter_map(|end| match &end.change {
                    TaskChange::Finish { state, result } => Some((end, *state, result)),
                    TaskChange::Requeue { .. } => None,
                })
                .collect();
            if !finishes.is_empty() {
                let mut query = QueryBuilder::<Sqlite>::new(
                    "UPDATE tasks SET state = v.column3, exit_code = v.column4, report = v.column5, \
                     structured_report = v.column6, start_time_ms = v.column7, duration_ms = v.column8, \
                     cancel_requested_at_ms = NULL, finished_at_ms = ",
                );
                query.push_bind(now_ms).push(", updated_at_ms = ").push_bind(now_ms).push(" FROM (");
                query.push_values(&finishes, |mut row, (end, state, result)| {
                    row.push_bind(end.task_id.as_str())
                        .push_bind(end.task_epoch.0 as i64)
                        .push_bind(state.as_str())
                        .push_bind(result.exit_code)
                        .push_bind(result.report.as_str())
                        .push_bind(result.structured_report.as_str())
                        .push_bind(result.start_time_ms)
                        .push_bind(result.duration_ms);
                });
                query.push(
                    ") AS v WHERE tasks.id = v.column1 AND tasks.epoch = v.column2 \
                     AND tasks.state IN ('ASSIGNED', 'RUNNING') RETURNING tasks.id",
                );
                let ids: Vec<(String,)> = query.build_query_as().fetch_all(&mut *self.tx).await?;
                let finished: HashSet<String> = ids.into_iter().map(|(id,)| id).collect();
                let rows: Vec<(&TaskId, i64)> = finishes
                    .iter()
                    .filter(|(end, ..)| finished.contains(end.task_id.as_str()))
                    .map(|(end, _, result)| (&end.task_id, result.start_time_ms))
                    .collect();
                self.outbox_added |= enqueue(&self.store, &mut self.tx, OutboxKind::Terminal, &rows, now_ms).await?;
                self.finished |= !rows.is_empty();
                applied.extend(finished);
            }
            let ended: Vec<&AttemptEnd> = chunk.iter().filter(|e| applied.contains(e.task_id.as_str())).collect();
            if ended.is_empty() {
                continue;
            }
            let mut query = QueryBuilder::<Sqlite>::new(
                "UPDATE attempts SET state = v.column3, reason = v.column4, ended_at_ms = ",
            );
            query.push_bind(now_ms).push(" FROM (");
            query.push_values(&ended, |mut row, end| {
                row.push_bind(end.task_id.as_str())
                    .push_bind(end.attempt_epoch.0 as i64)
                    .push_bind(end.attempt_state.as_str())
                    .push_bind(end.reason.as_str());
            });
            query.push(
                ") AS v WHERE attempts.task_id = v.column1 AND attempts.epoch = v.column2 \
                 AND attempts.ended_at_ms IS NULL",
            );
            query.build().execute(&mut *self.tx).await?;
        }
        let mut answers = Vec::with_capacity(ends.len());
        for end in ends {
            if applied.contains(end.task_id.as_str()) {
                answers.push(Ok(()));
            } else {
                let task = load_task(&mut self.tx, &end.task_id).await?;
                answers.push(Err(refusal(&task, end.task_epoch)));
            }
        }
        Ok(answers)
    }

    /// Makes every change of the group durable (one fsync), then wakes the reporter and the SQS keeper.
    pub async fn commit(self) -> Result<(), Error> {
        self.tx.commit().await?;
        if self.outbox_added {
            self.store.outbox_added.notify_one();
        }
        if self.finished || self.outbox_added {
            self.store.announce_reported();
        }
        Ok(())
    }
}
