//! Typed task, attempt and result states shared by controller and agent. Text forms exist only for the store
//! and for display; core code compares enums, never strings.

use std::fmt;
use std::str::FromStr;

/// What a run produced, as DataHub's result aspect records it: the CLI's exit code, the report, the structured
/// report, when it started and how long it took. The one record on both sides: an agent's outcome carries it, the
/// controller stores it with the task.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunResult {
    pub exit_code: Option<i32>,
    pub report: String,
    pub structured_report: String,
    pub start_time_ms: i64,
    pub duration_ms: i64,
}

/// A string that is not one of an enum's text forms.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown {what} {value:?}")]
pub struct UnknownVariant {
    pub what: &'static str,
    pub value: String,
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { what: $what, value: value.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(
    /// Where a task is in its life (DESIGN §1).
    TaskState, "task state" {
        /// Taken in, not yet routable (e.g. waiting for its input from GMS).
        Received = "RECEIVED",
        /// Waiting for an agent.
        Queued = "QUEUED",
        /// Granted to an agent that has not acknowledged yet.
        Assigned = "ASSIGNED",
        /// Running on an agent.
        Running = "RUNNING",
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
        TimedOut = "TIMED_OUT",
        /// Infrastructure retries exhausted.
        Aborted = "ABORTED",
    }
);

impl TaskState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::TimedOut | TaskState::Aborted
        )
    }

    /// The `dataHubExecutionRequestResult.status` string GMS expects for this state, where one exists.
    pub fn gms_status(self) -> Option<&'static str> {
        match self {
            TaskState::Assigned | TaskState::Running => Some("RUNNING"),
            TaskState::Succeeded => Some("SUCCESS"),
            TaskState::Failed => Some("FAILURE"),
            TaskState::Cancelled => Some("CANCELLED"),
            TaskState::TimedOut => Some("TIMEOUT"),
            TaskState::Aborted => Some("ABORTED"),
            TaskState::Received | TaskState::Queued => None,
        }
    }
}

text_enum!(
    /// How an attempt ended, as the agent reports it.
    ResultStatus, "result status" {
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
        TimedOut = "TIMED_OUT",
        /// Stopped by the agent itself (drain timeout); the task goes back to the queue at once.
        Interrupted = "INTERRUPTED",
    }
);

impl ResultStatus {
    /// The task state an attempt with this result leads to, or `None` when the task goes back to the queue.
    pub fn terminal_task_state(self) -> Option<TaskState> {
        match self {
            ResultStatus::Succeeded => Some(TaskState::Succeeded),
            ResultStatus::Failed => Some(TaskState::Failed),
            ResultStatus::Cancelled => Some(TaskState::Cancelled),
            ResultStatus::TimedOut => Some(TaskState::TimedOut),
            ResultStatus::Interrupted => None,
        }
    }
}

text_enum!(
    /// Where one attempt is in its life.
    AttemptState, "attempt state" {
        Assigned = "ASSIGNED",
        Running = "RUNNING",
        Succeeded = "SUCCEEDED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
        TimedOut = "TIMED_OUT",
        Interrupted = "INTERRUPTED",
        /// The lease expired (agent dead, paused or cut off).
        Lost = "LOST",
        /// Never acknowledged, or handed back unstarted.
        Revoked = "REVOKED",
    }
);

impl From<ResultStatus> for AttemptState {
    fn from(status: ResultStatus) -> Self {
        match status {
            ResultStatus::Succeeded => AttemptState::Succeeded,
            ResultStatus::Failed => AttemptState::Failed,
            ResultStatus::Cancelled => AttemptState::Cancelled,
            ResultStatus::TimedOut => AttemptState::TimedOut,
            ResultStatus::Interrupted => AttemptState::Interrupted,
        }
    }
}

/// Why a change about a task was refused. One type from the life-cycle rules through the store's fences to the
/// gRPC status: a refusal changes nothing and is never an internal error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The change is about an older attempt: the task is now at epoch `current`.
    StaleEpoch { current: crate::ids::Epoch },
    /// The task is not held by an agent (queued), or by another one.
    NotHeld { state: TaskState },
    /// The task already finished.
    Terminal { state: TaskState },
    /// Only a finished task can be run again.
    NotFinished { state: TaskState },
    /// The change needs a task waiting in the queue (a grant, the cancel of a queued task).
    NotQueued { state: TaskState },
}

/// A refusal with what it was about: the task and, for an agent's message, the epoch it presented.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    pub task: crate::ids::TaskId,
    pub presented: Option<crate::ids::Epoch>,
    pub refusal: Refusal,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let task = &self.task;
        match (self.refusal, self.presented) {
            (Refusal::StaleEpoch { current }, Some(epoch)) => {
                write!(f, "attempt {task}@{epoch} is stale: the task is now at epoch {current}")
            }
            (Refusal::StaleEpoch { current }, None) => write!(f, "task {task} is now at epoch {current}"),
            (Refusal::NotHeld { .. }, Some(epoch)) => write!(f, "attempt {task}@{epoch} is not held by this worker"),
            (Refusal::NotHeld { state }, None) => write!(f, "task {task} is {state}, not held by an agent"),
            (Refusal::NotQueued { state }, _) => write!(f, "task {task} is {state}, not QUEUED"),
            (Refusal::Terminal { state }, _) => write!(f, "task {task} already finished as {state}"),
            (Refusal::NotFinished { state }, _) => {
                write!(f, "task {task} is {state}: only a finished task can be retried")
            }
        }
    }
}

/// Task names the agent knows how to run.
pub const RUN_INGEST: &str = "RUN_INGEST";
pub const TEST_CONNECTION: &str = "TEST_CONNECTION";
/// A built-in task that does nothing and succeeds at once: for diagnostics (is the fleet taking work?) and
/// benchmarks of the controller.
pub const NOOP: &str = "NOOP";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        for state in TaskState::ALL {
            assert_eq!(state.as_str().parse::<TaskState>().unwrap(), *state);
        }
        for state in AttemptState::ALL {
            assert_eq!(state.as_str().parse::<AttemptState>().unwrap(), *state);
        }
        assert_eq!("running".parse::<TaskState>(), Err(UnknownVariant { what: "task state", value: "running".into() }));
    }

    #[test]
    fn terminal_states_map_to_gms_statuses() {
        let table = [
            (TaskState::Succeeded, "SUCCESS"),
            (TaskState::Failed, "FAILURE"),
            (TaskState::Cancelled, "CANCELLED"),
            (TaskState::TimedOut, "TIMEOUT"),
            (TaskState::Aborted, "ABORTED"),
        ];
        for (state, gms) in table {
            assert!(state.is_terminal());
            assert_eq!(state.gms_status(), Some(gms));
        }
        assert!(!TaskState::Running.is_terminal());
        assert_eq!(ResultStatus::Interrupted.terminal_task_state(), None);
    }
}
