//! The GMS outbox: rows written in the same transaction as the state change they report, read and retired by
//! the reporter. Stores which task and what kind of write; the reporter builds the payload from the task row.

use outpost_common::ids::{Epoch, TaskId};
use sqlx::{FromRow, QueryBuilder, Sqlite, Transaction};

use super::{Error, Store};

/// A running attempt a progress report may go to.
#[derive(Clone, Debug)]
pub struct ProgressCandidate {
    pub task_id: TaskId,
    pub epoch: Epoch,
    pub start_time_ms: i64,
}

/// What a row reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxKind {
    /// An attempt started: RUNNING with its start time.
    Running,
    /// The task ended: its terminal status and result.
    Terminal,
}

impl OutboxKind {
    fn as_str(self) -> &'static str {
        match self {
            OutboxKind::Running => "RUNNING",
            OutboxKind::Terminal => "TERMINAL",
        }
    }
}

/// One pending write.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    pub seq: i64,
    pub task_id: TaskId,
    pub kind: OutboxKind,
    pub start_time_ms: i64,
    pub tries: u32,
}

#[derive(FromRow)]
struct OutboxRow {
    seq: i64,
    task_id: String,
    kind: String,
    start_time_ms: i64,
    tries: i64,
}

/// A task ended (inside the transaction that ended it, outside the writer's turns — a cancel of a queued task):
/// its terminal result waits in the outbox for the reporter or, with reporting off, counts as delivered at once.
pub(super) async fn enqueue_terminal(
    store: &Store,
    tx: &mut Transaction<'_, Sqlite>,
    task: &TaskId,
    start_time_ms: i64,
    now_ms: i64,
) -> Result<(), Error> {
    if !store.reporting {
        // Nobody to report to: the result is delivered once it is recorded.
        return mark_reported(tx, std::iter::once(task), now_ms).await;
    }
    sqlx::query("INSERT INTO gms_outbox (task_id, kind, start_time_ms, created_at_ms) VALUES (?, ?, ?, ?)")
        .bind(task.as_str())
        .bind(OutboxKind::Terminal.as_str())
        .bind(start_time_ms)
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks tasks' terminal results delivered (their SQS messages may go).
async fn mark_reported<'a>(
    tx: &mut Transaction<'_, Sqlite>,
    tasks: impl Iterator<Item = &'a TaskId>,
    now_ms: i64,
) -> Result<(), Error> {
    let mut query = QueryBuilder::<Sqlite>::new("UPDATE tasks SET reported_at_ms = ");
    query.push_bind(now_ms).push(" WHERE id IN (");
    let mut ids = query.separated(", ");
    for task in tasks {
        ids.push_bind(task.as_str());
    }
    query.push(")");
    query.build().execute(&mut **tx).await?;
    Ok(())
}

impl Store {
    /// Rows due now, oldest first; the first row of each task only (later rows of a task wait for it).
    pub async fn due_outbox(&self, now_ms: i64, limit: u32) -> Result<Vec<OutboxEntry>, Error> {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT o.seq, o.task_id, o.kind, o.start_time_ms, o.tries FROM gms_outbox o \
             WHERE o.next_try_at_ms <= ? \
             AND o.seq = (SELECT MIN(seq) FROM gms_outbox f WHERE f.task_id = o.task_id) \
             ORDER BY o.seq LIMIT ?",
        )
        .bind(now_ms)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(OutboxEntry {
                    seq: row.seq,
                    task_id: TaskId::parse(&row.task_id).map_err(|e| Error::Corrupt(e.to_string()))?,
                    kind: match row.kind.as_str() {
                        "RUNNING" => OutboxKind::Running,
                        "TERMINAL" => OutboxKind::Terminal,
                        other => return Err(Error::Corrupt(format!("outbox kind {other}"))),
                    },
                    start_time_ms: row.start_time_ms,
                    tries: row.tries as u32,
                })
            })
            .collect()
    }

    /// The earliest time a row becomes due, if any row waits.
    pub async fn next_outbox_due(&self) -> Result<Option<i64>, Error> {
        let next: Option<(i64,)> = sqlx::query_as("SELECT MIN(next_try_at_ms) FROM gms_outbox HAVING COUNT(*) > 0")
            .fetch_optional(&self.pool)
            .await?;
        Ok(next.map(|(at,)| at))
    }

    /// The outcome of a delivery pass, in one transaction: delivered rows go (a terminal one marks its task
    /// reported); failed ones stay, due again at their next try time, with the error.
    pub async fn outbox_settled(
        &self,
        delivered: &[&OutboxEntry],
        failed: &[(&OutboxEntry, String, i64)],
        now_ms: i64,
    ) -> Result<(), Error> {
        if delivered.is_empty() && failed.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if !delivered.is_empty() {
            let mut query = QueryBuilder::<Sqlite>::new("DELETE FROM gms_outbox WHERE seq IN (");
            let mut seqs = query.separated(", ");
            for entry in delivered {
                seqs.push_bind(entry.seq);
            }
            query.push(")");
            query.build().execute(&mut *tx).await?;
        }
        let terminal: Vec<&&OutboxEntry> = delivered.iter().filter(|e| e.kind == OutboxKind::Terminal).collect();
        if !terminal.is_empty() {
            mark_reported(&mut tx, terminal.iter().map(|e| &e.task_id), now_ms).await?;
        }
        for (entry, error, next_try_at_ms) in failed {
            sqlx::query("UPDATE gms_outbox SET tries = tries + 1, next_try_at_ms = ?, last_error = ? WHERE seq = ?")
                .bind(next_try_at_ms)
                .bind(error)
                .bind(entry.seq)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        if !terminal.is_empty() {
            self.announce_reported();
        }
        Ok(())
    }

    /// Rows waiting to be sent.
    pub async fn outbox_depth(&self) -> Result<u64, Error> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM gms_outbox").fetch_one(&self.pool).await?;
        Ok(n as u64)
    }

    /// Running attempts of tasks whose outbox is empty (their RUNNING reached GMS and nothing else waits): the
    /// ones a progress report may go to.
    pub async fn progress_candidates(&self) -> Result<Vec<ProgressCandidate>, Error> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT t.id, t.epoch, a.started_at_ms FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.epoch = t.epoch \
             WHERE t.state = 'RUNNING' AND t.cancel_requested_at_ms IS NULL \
             AND NOT EXISTS (SELECT 1 FROM gms_outbox o WHERE o.task_id = t.id)",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, epoch, started)| {
                Ok(ProgressCandidate {
                    task_id: TaskId::parse(&id).map_err(|e| Error::Corrupt(e.to_string()))?,
                    epoch: Epoch(epoch as u64),
                    start_time_ms: started.unwrap_or_default(),
                })
            })
            .collect()
    }
}
