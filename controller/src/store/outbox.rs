//! The GMS outbox: rows written in the same transaction as the state change they report (plain functions over
//! the writer's transaction), read and retired by the reporter. Stores which task and what kind of write; the reporter builds the payload from the task row.

use outpost_common::ids::{AspectVersion, Epoch, TaskId};
use rusqlite::{Transaction, params};
use sqlx::FromRow;

use super::row::narrow;
use super::transaction::Effects;
use super::writer::execute;
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
    /// The task's claim at GMS: the version its write must match (`None`: unconditional).
    pub claim: Option<AspectVersion>,
    /// Another controller took the claim over: nothing about the task may be sent.
    pub claim_lost: bool,
}

#[derive(FromRow)]
struct OutboxRow {
    seq: i64,
    task_id: String,
    kind: String,
    start_time_ms: i64,
    tries: i64,
    gms_version: Option<String>,
    claim_lost_at_ms: Option<i64>,
}

fn enqueue(
    tx: &Transaction<'_>,
    task: &TaskId,
    kind: OutboxKind,
    start_time_ms: i64,
    now_ms: i64,
    effects: &mut Effects,
) -> Result<(), Error> {
    let sql = "INSERT INTO gms_outbox (task_id, kind, start_time_ms, created_at_ms) VALUES (?, ?, ?, ?)";
    execute(tx, sql, params![task.as_str(), kind.as_str(), start_time_ms, now_ms])?;
    effects.outbox_added = true;
    Ok(())
}

/// An attempt started (inside the transaction that started it): RUNNING waits in the outbox, if reporting.
pub(super) fn running(tx: &Transaction, task: &TaskId, now_ms: i64, effects: &mut Effects) -> Result<(), Error> {
    match effects.reporting {
        true => enqueue(tx, task, OutboxKind::Running, now_ms, now_ms, effects),
        false => Ok(()),
    }
}

/// A task ends (inside the transaction that ends it): its terminal result waits in the outbox for the reporter
/// or, with reporting off, counts as delivered at once. The one place that rule lives: the statement that ends
/// the task sets its `reported_at_ms` to what this returns (`None`: left as it is, for the reporter).
pub(super) fn terminal_recorded(
    tx: &Transaction<'_>,
    task: &TaskId,
    start_time_ms: i64,
    now_ms: i64,
    effects: &mut Effects,
) -> Result<Option<i64>, Error> {
    match effects.reporting {
        true => enqueue(tx, task, OutboxKind::Terminal, start_time_ms, now_ms, effects).map(|()| None),
        false => {
            // Delivered at once: its SQS messages may go.
            effects.reported = true;
            Ok(Some(now_ms))
        }
    }
}

/// Marks a task's terminal result delivered (its SQS messages may go).
fn mark_reported(tx: &Transaction<'_>, task: &TaskId, now_ms: i64, effects: &mut Effects) -> Result<(), Error> {
    effects.reported = true;
    execute(tx, "UPDATE tasks SET reported_at_ms = ? WHERE id = ?", params![now_ms, task.as_str()])?;
    Ok(())
}

/// What became of one outbox row in a delivery pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// GMS has it (or already had a final status): the row goes; a terminal one marks its task reported.
    Delivered,
    /// GMS accepted the conditional write of a claimed task, whose result aspect is now at `version`: as
    /// `Delivered`, and the claim moves on.
    Claimed { version: AspectVersion },
    /// Another controller holds the request at GMS now: this row and the task's others go unsent (a terminal
    /// one counts as settled), and the task records why.
    ClaimLost { error: String },
    /// Try again at `next_try_at_ms`.
    Retry { error: String, next_try_at_ms: i64 },
    /// GMS can never accept it: the row goes and the task records why; a terminal one counts as reported (its
    /// SQS message may go; the result stays here).
    GaveUp { error: String },
}

/// The outcome of a delivery pass, in one transaction.
fn settle(
    tx: &Transaction<'_>,
    rows: &[(i64, TaskId, OutboxKind, Delivery)],
    now_ms: i64,
    effects: &mut Effects,
) -> Result<(), Error> {
    for (seq, task, kind, delivery) in rows {
        match delivery {
            Delivery::Retry { error, next_try_at_ms } => {
                execute(
                    tx,
                    "UPDATE gms_outbox SET tries = tries + 1, next_try_at_ms = ?, last_error = ? WHERE seq = ?",
                    params![next_try_at_ms, error, seq],
                )?;
                continue;
            }
            Delivery::GaveUp { error } => {
                let failure = format!("{} write: {error}", kind.as_str());
                execute(tx, "UPDATE tasks SET delivery_failure = ? WHERE id = ?", params![failure, task.as_str()])?;
            }
            Delivery::Delivered => {}
            Delivery::Claimed { version } => {
                execute(
                    tx,
                    "UPDATE tasks SET gms_version = ?, gms_written_at_ms = ? WHERE id = ? AND claim_lost_at_ms IS NULL",
                    params![version.as_str(), now_ms, task.as_str()],
                )?;
            }
            Delivery::ClaimLost { error } => {
                super::claims::lose(tx, task, error, now_ms, effects)?;
                continue;
            }
        }
        execute(tx, "DELETE FROM gms_outbox WHERE seq = ?", [seq])?;
        if *kind == OutboxKind::Terminal {
            mark_reported(tx, task, now_ms, effects)?;
        }
    }
    Ok(())
}

impl Store {
    /// Rows due now, oldest first; the first row of each task only (later rows of a task wait for it).
    pub async fn due_outbox(&self, now_ms: i64, limit: u32) -> Result<Vec<OutboxEntry>, Error> {
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT o.seq, o.task_id, o.kind, o.start_time_ms, o.tries, t.gms_version, t.claim_lost_at_ms \
             FROM gms_outbox o JOIN tasks t ON t.id = o.task_id WHERE o.next_try_at_ms <= ? \
             AND o.seq = (SELECT MIN(seq) FROM gms_outbox f WHERE f.task_id = o.task_id) \
             ORDER BY o.seq LIMIT ?",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
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
                    tries: narrow("tries", row.tries)?,
                    claim: row.gms_version.map(AspectVersion::new),
                    claim_lost: row.claim_lost_at_ms.is_some(),
                })
            })
            .collect()
    }

    /// The earliest time a row becomes due, if any row waits.
    pub async fn next_outbox_due(&self) -> Result<Option<i64>, Error> {
        let next: Option<(i64,)> = sqlx::query_as("SELECT MIN(next_try_at_ms) FROM gms_outbox HAVING COUNT(*) > 0")
            .fetch_optional(&self.reads)
            .await?;
        Ok(next.map(|(at,)| at))
    }

    /// The outcome of a delivery pass, in one transaction.
    pub async fn outbox_settled(&self, outcomes: &[(&OutboxEntry, Delivery)], now_ms: i64) -> Result<(), Error> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let rows: Vec<_> = outcomes.iter().map(|(e, d)| (e.seq, e.task_id.clone(), e.kind, d.clone())).collect();
        self.transaction(move |tx, effects| settle(tx, &rows, now_ms, effects)).await
    }

    /// Rows waiting to be sent.
    pub async fn outbox_depth(&self) -> Result<u64, Error> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM gms_outbox").fetch_one(&self.reads).await?;
        Ok(n.unsigned_abs())
    }

    /// Running attempts of tasks whose outbox is empty (their RUNNING reached GMS and nothing else waits): the
    /// ones a progress report may go to.
    pub async fn progress_candidates(&self) -> Result<Vec<ProgressCandidate>, Error> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT t.id, t.epoch, t.attempt_started_at_ms FROM tasks t \
             WHERE t.state = 'RUNNING' AND t.cancel_requested_at_ms IS NULL AND t.attempt_epoch = t.epoch \
             AND NOT EXISTS (SELECT 1 FROM gms_outbox o WHERE o.task_id = t.id)",
        )
        .fetch_all(&self.reads)
        .await?;
        rows.into_iter()
            .map(|(id, epoch, started)| {
                Ok(ProgressCandidate {
                    task_id: TaskId::parse(&id).map_err(|e| Error::Corrupt(e.to_string()))?,
                    epoch: Epoch(narrow("epoch", epoch)?),
                    start_time_ms: started.unwrap_or_default(),
                })
            })
            .collect()
    }
}
