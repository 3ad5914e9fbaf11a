//! The store's error type: database failures, and the refusals the fencing rules produce.

use outpost_common::ids::{Epoch, TaskId};
use outpost_common::task::TaskState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("no task {0}")]
    NotFound(TaskId),
    #[error("task {task} is at epoch {current}, not {presented}")]
    StaleEpoch { task: TaskId, presented: Epoch, current: Epoch },
    #[error("task {task} is {state}, not QUEUED")]
    NotQueued { task: TaskId, state: TaskState },
    #[error("task {task} already finished as {state}")]
    AlreadyFinished { task: TaskId, state: TaskState },
    #[error("stored row is unreadable: {0}")]
    Corrupt(String),
    #[error("database error (writer): {0}")]
    Writer(String),
}
