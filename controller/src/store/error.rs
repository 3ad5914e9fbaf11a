//! The store's error type: database failures, and the refusals the fencing rules produce.

use outpost_common::ids::{Epoch, TaskId};
use outpost_common::task::{Refusal, Refused};

use super::tasks::TaskRecord;

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
}

impl Error {
    pub(super) fn refused(task: &TaskRecord, presented: Option<Epoch>, refusal: Refusal) -> Error {
        Error::Refused(Refused { task: task.request.id.clone(), presented, refusal })
    }

    /// Explains why a change fenced by `presented` (and by state) matched no row: a newer epoch, a finished task,
    /// else `otherwise`.
    pub(super) fn fence(task: &TaskRecord, presented: Option<Epoch>, otherwise: Refusal) -> Error {
        let refusal = match presented {
            Some(epoch) if epoch != task.epoch => Refusal::StaleEpoch { current: task.epoch },
            _ if task.state.is_terminal() => Refusal::Terminal { state: task.state },
            _ => otherwise,
        };
        Error::refused(task, presented, refusal)
    }
}
