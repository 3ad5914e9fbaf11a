//! What do we store? Tasks (keyed by execution request id), their attempts with fencing epochs, and the workers
//! we have seen, in one SQLite file (WAL). This is the only module that writes SQL or knows the text forms of
//! states in the database; it must never know about tonic, SQS or GMS.

mod attempts;
mod batch;
mod error;
mod outbox;
mod sqs;
mod tasks;
#[cfg(test)]
mod tests;
mod workers;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::{Notify, watch};

pub use attempts::{AttemptEnd, Grant, HeldTask, ResultRecord, TaskChange};
pub use batch::{Turn, TurnWritten};
pub use error::Error;
pub use outbox::{OutboxEntry, OutboxKind, ProgressCandidate};
pub use sqs::{HeldMessage, Quarantined};
pub use tasks::{AttemptRecord, NewTask, PoolBacklog, TaskFilter, TaskRecord, TaskResult};
pub use workers::{WorkerRecord, WorkerSeen};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// Whether state changes also write GMS outbox rows (GMS reporting is on).
    reporting: bool,
    /// The engine's turns are written here (its own connection and thread).
    writer: Arc<writer::Writer>,
    /// Woken after a transaction added outbox rows.
    outbox_added: Arc<Notify>,
    /// Bumped when a task's terminal result was delivered (its SQS message may go). A watch, not a `Notify`: a
    /// bump while the SQS keeper is busy is seen on its next wait, never lost.
    reported: Arc<watch::Sender<u64>>,
}

impl Store {
    /// Opens (creating if missing) the SQLite file and runs pending migrations. With `reporting`, every attempt
    /// start and task end also writes a GMS outbox row in the same transaction.
    pub async fn open(path: &Path, reporting: bool) -> Result<Store, Error> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Grants and terminal transitions must survive a crash before they are acknowledged.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        MIGRATOR.run(&pool).await?;
        let writer = Arc::new(writer::Writer::open(path)?);
        Ok(Store {
            pool,
            reporting,
            writer,
            outbox_added: Arc::new(Notify::new()),
            reported: Arc::new(watch::Sender::new(0)),
        })
    }

    /// Changes whenever a terminal result was delivered (or recorded, with reporting off).
    pub fn reported(&self) -> watch::Receiver<u64> {
        self.reported.subscribe()
    }

    fn announce_reported(&self) {
        self.reported.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Notified whenever outbox rows were added (the reporter waits on it).
    pub fn outbox_added(&self) -> Arc<Notify> {
        self.outbox_added.clone()
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Test-only: makes every new attempt row fail to insert (`on = true`) or lets them in again, so a grant — and
    /// the whole transaction it is part of — fails the way a full disk would.
    #[cfg(test)]
    pub async fn refuse_attempts(&self, on: bool) {
        let sql = if on {
            "CREATE TRIGGER refuse_attempts BEFORE INSERT ON attempts BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        } else {
            "DROP TRIGGER refuse_attempts"
        };
        sqlx::query(sql).execute(&self.pool).await.unwrap();
    }

    /// Closes every connection (the writer's after its pending jobs), checkpointing the WAL.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

fn parse<T: FromStr>(what: &str, value: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| Error::Corrupt(format!("{what}: {e}")))
}
