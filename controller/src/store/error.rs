//! The store's error type: database failures, and the refusals the fencing rules produce (built from a task's
//! row in `tasks.rs`, which knows the row).

use outpost_common::ids::TaskId;
use outpost_common::task::Refused;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no task {0}")]
    NotFound(TaskId),
    /// A fenced change matched no row: why, in the life cycle's own terms.
    #[error(transparent)]
    Refused(Refused),
    #[error("stored row is unreadable: {0}")]
    Corrupt(String),
    #[error("database error (writer): {0}")]
    Writer(String),
    /// A job panicked on the writer thread; the thread is gone.
    #[error("the SQLite writer thread panicked: {0}")]
    WriterPanicked(String),
    #[error("the SQLite writer thread is gone")]
    WriterGone,
}
