//! The lease engine: owns who runs what. Grants tasks to agents that asked for work (bumping the fencing epoch
//! in the same transaction), fences every message about an attempt by its epoch, and records results. One actor
//! task owns the in-memory state (sessions, queues); callers talk to it through [`Scheduler`]. It must never talk
//! to the network or know protobuf types: agents are reached through the [`AgentCommand`] channel their session
//! owns.

mod agents;
mod answers;
mod config;
mod engine;
mod handle;
mod leases;
pub mod policy;
mod queue;
#[cfg(test)]
mod tests;
mod turn;

use outpost_common::ids::{TaskId, WorkerId};
use outpost_common::task::{Refusal, Refused};

pub use agents::{AgentCommand, AgentHello, Assignment, AttemptResult, HeldVenv, SessionId, Welcome};
pub use answers::{Demand, Explanation, PoolCapacity, Why, WorkerState, WorkerView};
pub use config::Config;
pub use handle::Scheduler;

use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(store::Error),
    /// The rules (or the store's fences, which enforce the same rules) refused the change; nothing changed.
    #[error(transparent)]
    Refused(Refused),
    #[error("no task {0}")]
    NotFound(TaskId),
    #[error("no connected worker {0}")]
    NoSuchWorker(WorkerId),
    #[error("the session was replaced or closed")]
    SessionGone,
    #[error("the controller is shutting down")]
    ShuttingDown,
    /// The turn this change belonged to could not be committed; nothing of it happened. Try again.
    #[error("the change could not be made durable: {0}")]
    NotDurable(String),
}

impl From<store::Error> for Error {
    fn from(error: store::Error) -> Error {
        match error {
            store::Error::Refused(refused) => Error::Refused(refused),
            store::Error::NotFound(task) => Error::NotFound(task),
            other => Error::Store(other),
        }
    }
}

impl Error {
    /// A refusal of a change about `task` (with the epoch an agent presented, if any).
    pub fn refused(task: &TaskId, presented: Option<outpost_common::ids::Epoch>, refusal: Refusal) -> Error {
        Error::Refused(Refused { task: task.clone(), presented, refusal })
    }

    /// The task had already finished.
    pub fn is_finished(&self) -> bool {
        matches!(self, Error::Refused(Refused { refusal: Refusal::Terminal { .. }, .. }))
    }
}
