//! What do we store? One SQLite file (WAL), schema in `migrations/`:
//! - `tasks` — one row per execution request (keyed by its id): state, fencing epoch, holder, backoff, the
//!   terminal result, a pending cancel, when the result reached GMS, and the open attempt (`tasks.rs`);
//! - `attempts` — one row per ended attempt, inserted when it ends: epoch, worker, state, reason, last
//!   heartbeat (`attempts.rs`);
//! - `gms_outbox` — writes owed to GMS, added in the transaction of the change they report (`outbox.rs`);
//! - `sqs_messages` and `quarantine` — the messages each task came in on, and unusable ones (`sqs.rs`);
//! - `workers` — what each worker declared when it last connected (`workers.rs`);
//! - claims at GMS: the version of each claimed task's result aspect (columns of `tasks`) and this controller's
//!   identity (`controller_identity`) (`claims.rs`);
//! - `join_tokens` (hashes only), their uses, `worker_bindings`, `issued_certificates`, `revoked_workers`
//!   (`enrollment.rs`);
//! - `audit` — who changed what through the admin API or the status page, written with the change (`audit.rs`).
//!
//! Every change goes through ONE writer: a dedicated connection on its own thread (`writer.rs`) that runs a
//! whole transaction per job — the engine's turns (`turn.rs`) and the few changes from elsewhere (outbox
//! settlement, SQS rows). Each change is a plain function over that transaction in its domain file; each query
//! and each row mapping exists once (`row.rs` reads a row from either connection). Reads use a read-only sqlx
//! pool. This is the only module with SQL or the text forms of states in the database; it must never know about
//! tonic, SQS or GMS.

mod attempts;
mod audit;
mod claims;
mod enrollment;
mod error;
mod outbox;
mod row;
mod sqs;
mod tasks;
#[cfg(test)]
mod tests;
mod transaction;
mod turn;
mod ui;
mod workers;
mod writer;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, SqlitePool};
use tokio::sync::{Notify, watch};

pub use attempts::{AttemptEnd, Grant, TaskChange};
pub use audit::{Audit, AuditEvent, AuditFilter, Outcome as AuditOutcome, Via};
pub use claims::WaitingClaim;
pub use enrollment::{JoinRefused, JoinToken, NewToken};
pub use error::Error;
pub use outbox::{Delivery, OutboxEntry, OutboxKind, ProgressCandidate};
pub use sqs::{HeldMessage, Quarantined};
pub use tasks::{AttemptRecord, NewTask, PoolBacklog, TaskFilter, TaskRecord};
pub use turn::{Change, Turn, TurnWritten};
pub use ui::NewUiToken;
pub use workers::WorkerSeen;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    /// Read-only connections: every write goes through `writer`.
    reads: SqlitePool,
    /// Whether state changes also write GMS outbox rows (GMS reporting is on).
    reporting: bool,
    /// The one writer (its own connection and thread).
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
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // Migrations are the one change made outside the writer: once, before it starts.
        let mut migrating = sqlx::SqliteConnection::connect_with(
            &options.clone().create_if_missing(true).synchronous(SqliteSynchronous::Full),
        )
        .await?;
        MIGRATOR.run(&mut migrating).await?;
        migrating.close().await?;
        let writer = Arc::new(writer::Writer::open(path)?);
        let reads = SqlitePoolOptions::new().max_connections(4).connect_with(options.read_only(true)).await?;
        Ok(Store {
            reads,
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

    /// Notified whenever outbox rows were added (the reporter waits on it).
    pub fn outbox_added(&self) -> Arc<Notify> {
        self.outbox_added.clone()
    }

    /// Statements (transaction control left out) and commits the writer has run since the store opened.
    pub fn write_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.writer.counts.statements.load(Relaxed), self.writer.counts.commits.load(Relaxed))
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        self.writer.run(|_| ()).await
    }

    /// Test-only: makes every grant fail to write (`on = true`) or lets them through again, so a grant — and the
    /// whole transaction it is part of — fails the way a full disk would.
    #[cfg(test)]
    pub async fn refuse_grants(&self, on: bool) {
        let sql = if on {
            "CREATE TRIGGER refuse_grants BEFORE UPDATE OF state ON tasks \
             WHEN OLD.state = 'QUEUED' AND NEW.state = 'ASSIGNED' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        } else {
            "DROP TRIGGER refuse_grants"
        };
        self.writer.run(move |connection| connection.execute_batch(sql).unwrap()).await.unwrap();
    }

    /// Resolves when the writer stops: `Ok` after [`Store::close`], `Err(why)` if it died (a panic in a job).
    pub async fn writer_stopped(&self) -> Result<(), Error> {
        self.writer.ended().await
    }

    /// Closes every connection (the writer's after its pending jobs, and last), checkpointing the WAL.
    pub async fn close(&self) {
        // The writer last: read-only connections cannot checkpoint, so the last one to close must be the writer.
        self.reads.close().await;
        self.writer.close().await;
    }
}

fn parse<T: FromStr>(what: &str, value: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| Error::Corrupt(format!("{what}: {e}")))
}
