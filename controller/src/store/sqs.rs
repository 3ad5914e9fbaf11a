//! SQS bookkeeping: which message (and receipt handle) each task came in on, and the quarantine of unusable
//! messages. Knows nothing of the AWS SDK: handles are opaque strings here.

use outpost_common::ids::TaskId;
use rusqlite::params;
use rusqlite::types::Value;
use sqlx::FromRow;

use super::audit::{self, Audit};
use super::writer::{execute, writer_error};
use super::{Error, Store};

/// The message a task came in on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldMessage {
    pub task_id: TaskId,
    pub message_id: String,
    pub receipt_handle: String,
    pub first_received_at_ms: i64,
    /// The task's result reached GMS (or was recorded, with reporting off): the message may go.
    pub done: bool,
    /// Another controller took over the request's claim at GMS: the message is its business now (let go of,
    /// never deleted here).
    pub claim_lost: bool,
}

/// A message that could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub id: i64,
    pub queue_url: String,
    pub message_id: String,
    pub reason: String,
    pub body: String,
    pub body_bytes: u64,
    pub received_at_ms: i64,
    pub replayed_at_ms: Option<i64>,
}

#[derive(FromRow)]
struct HeldRow {
    task_id: String,
    message_id: String,
    receipt_handle: String,
    first_received_at_ms: i64,
    reported_at_ms: Option<i64>,
    claim_lost_at_ms: Option<i64>,
}

#[derive(FromRow)]
struct QuarantineRow {
    id: i64,
    queue_url: String,
    message_id: String,
    reason: String,
    body: String,
    body_bytes: i64,
    received_at_ms: i64,
    replayed_at_ms: Option<i64>,
}

impl From<QuarantineRow> for Quarantined {
    fn from(row: QuarantineRow) -> Quarantined {
        Quarantined {
            id: row.id,
            queue_url: row.queue_url,
            message_id: row.message_id,
            reason: row.reason,
            body: row.body,
            body_bytes: row.body_bytes.unsigned_abs(),
            received_at_ms: row.received_at_ms,
            replayed_at_ms: row.replayed_at_ms,
        }
    }
}

impl Store {
    /// Binds a task to a message it came in on; a re-delivery of the message adopts its new receipt handle.
    pub async fn hold_message(
        &self,
        task: &TaskId,
        queue_url: &str,
        message_id: &str,
        receipt_handle: &str,
        now_ms: i64,
    ) -> Result<(), Error> {
        let sql = "INSERT INTO sqs_messages (task_id, queue_url, message_id, receipt_handle, first_received_at_ms, \
                   received_at_ms) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO UPDATE SET \
                   task_id = excluded.task_id, queue_url = excluded.queue_url, \
                   receipt_handle = excluded.receipt_handle, received_at_ms = excluded.received_at_ms";
        let values = [task.as_str(), queue_url, message_id, receipt_handle].map(|text| Value::from(text.to_owned()));
        self.execute_alone(sql, values.into_iter().chain([Value::from(now_ms), Value::from(now_ms)]).collect()).await
    }

    /// Every message held for a queue, with whether its task is done.
    pub async fn held_messages(&self, queue_url: &str) -> Result<Vec<HeldMessage>, Error> {
        fail::fail_point!("store::held_messages", |_| Err(Error::Corrupt("injected by a fail point".into())));
        let rows: Vec<HeldRow> = sqlx::query_as(
            "SELECT m.task_id, m.message_id, m.receipt_handle, m.first_received_at_ms, t.reported_at_ms, t.claim_lost_at_ms \
             FROM sqs_messages m JOIN tasks t ON t.id = m.task_id WHERE m.queue_url = ? ORDER BY m.received_at_ms",
        )
        .bind(queue_url)
        .fetch_all(&self.reads)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(HeldMessage {
                    task_id: TaskId::parse(&row.task_id).map_err(|e| Error::Corrupt(e.to_string()))?,
                    message_id: row.message_id,
                    receipt_handle: row.receipt_handle,
                    first_received_at_ms: row.first_received_at_ms,
                    done: row.reported_at_ms.is_some(),
                    claim_lost: row.claim_lost_at_ms.is_some(),
                })
            })
            .collect()
    }

    /// The message was deleted from SQS (unless it was received again meanwhile, with a new handle).
    pub async fn release_message(&self, message_id: &str, receipt_handle: &str) -> Result<(), Error> {
        let values = vec![Value::from(message_id.to_owned()), Value::from(receipt_handle.to_owned())];
        self.execute_alone("DELETE FROM sqs_messages WHERE message_id = ? AND receipt_handle = ?", values).await
    }

    /// Stores an unusable message (its body cut at `max_body_bytes`).
    pub async fn quarantine(
        &self,
        queue_url: &str,
        message_id: &str,
        reason: &str,
        body: &str,
        max_body_bytes: usize,
        now_ms: i64,
    ) -> Result<i64, Error> {
        let mut cut = body.len().min(max_body_bytes);
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        let row = (queue_url.to_owned(), message_id.to_owned(), reason.to_owned(), body[..cut].to_owned());
        let body_bytes = i64::try_from(body.len()).unwrap_or(i64::MAX);
        self.transaction(move |tx, _| {
            let (queue_url, message_id, reason, body) = row;
            tx.prepare_cached(
                "INSERT INTO quarantine (queue_url, message_id, reason, body, body_bytes, received_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .and_then(|mut s| {
                s.query_row(params![queue_url, message_id, reason, body, body_bytes, now_ms], |r| r.get::<_, i64>(0))
            })
            .map_err(writer_error)
        })
        .await
    }

    /// Quarantined messages, newest first.
    pub async fn quarantined(&self, limit: u32) -> Result<Vec<Quarantined>, Error> {
        let rows: Vec<QuarantineRow> = sqlx::query_as("SELECT * FROM quarantine ORDER BY id DESC LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn quarantined_message(&self, id: i64) -> Result<Option<Quarantined>, Error> {
        let row: Option<QuarantineRow> =
            sqlx::query_as("SELECT * FROM quarantine WHERE id = ?").bind(id).fetch_optional(&self.reads).await?;
        Ok(row.map(Into::into))
    }

    /// Marks a quarantined message replayed.
    pub async fn mark_replayed(&self, id: i64, now_ms: i64, audit: Option<Audit>) -> Result<(), Error> {
        self.transaction(move |tx, _| {
            execute(tx, "UPDATE quarantine SET replayed_at_ms = ? WHERE id = ?", params![now_ms, id])?;
            audit::insert_done(tx, audit.as_ref(), now_ms)
        })
        .await
    }
}
