//! The task life cycle as pure functions: given where a task is and what happened, what must change. No I/O,
//! no clocks (time comes in as arguments); the engine applies the decision through the store, which fences it
//! again by epoch. Every transition and every refusal is in the table test below. Owns the names of why work
//! is lost or retried (their metric labels too), so the metrics and the engine both read them from here.

use std::time::Duration;

use outpost_common::ids::Epoch;
use outpost_common::task::{AttemptState, ResultStatus, TaskState};

/// Retry rules (flags of the engine's group).
#[derive(Clone, Debug, clap::Args)]
#[group(id = "retry")]
#[command(next_help_heading = "Retries")]
pub struct RetryPolicy {
    /// Attempts a task may make; after that an infrastructure failure ends it ABORTED.
    #[arg(long, env = "OUTPOST_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Backoff before a retry: this, doubled per attempt (base·2^(n-1)), capped, with full jitter.
    #[arg(id = "retry_backoff", long = "retry-backoff", env = "OUTPOST_RETRY_BACKOFF",
          value_parser = outpost_common::duration::parse, default_value = "1s")]
    pub backoff_base: Duration,
    /// The longest retry backoff.
    #[arg(id = "retry_backoff_max", long = "retry-backoff-max", env = "OUTPOST_RETRY_BACKOFF_MAX",
          value_parser = outpost_common::duration::parse, default_value = "60s")]
    pub backoff_max: Duration,
    /// Also retry runs that failed on their own (CLI exit code not 0); by default they end FAILED.
    #[arg(long, env = "OUTPOST_RETRY_TASK_FAILURES")]
    pub retry_task_failures: bool,
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), outpost_common::duration::Invalid> {
        if self.max_attempts == 0 {
            return Err(outpost_common::duration::Invalid("--max-attempts must be greater than zero".into()));
        }
        Ok(())
    }
}

/// Why an attempt lost its agent (infrastructure failures).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Loss {
    /// No heartbeat for the lease TTL (agent dead, paused or cut off).
    LeaseExpired,
    /// The assignment was not acknowledged within the ack deadline.
    NoAck,
    /// The agent reconnected without it (it restarted and lost its work).
    AgentRestarted,
    /// The agent is alive but its heartbeats stopped listing the attempt (it is not running there).
    NotRunning,
}

impl Loss {
    pub const ALL: [Loss; 4] = [Loss::LeaseExpired, Loss::NoAck, Loss::AgentRestarted, Loss::NotRunning];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Loss::LeaseExpired => "lease_expired",
            Loss::NoAck => "no_ack",
            Loss::AgentRestarted => "agent_restarted",
            Loss::NotRunning => "not_running",
        }
    }

    pub fn attempt_state(self) -> AttemptState {
        match self {
            Loss::LeaseExpired | Loss::AgentRestarted | Loss::NotRunning => AttemptState::Lost,
            Loss::NoAck => AttemptState::Revoked,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Loss::LeaseExpired => "lease expired: the agent stopped heartbeating",
            Loss::NoAck => "the agent did not acknowledge the assignment in time",
            Loss::AgentRestarted => "the agent reconnected without it (it restarted)",
            Loss::NotRunning => "the agent's heartbeats stopped listing it (it was not running there)",
        }
    }
}

/// Why a task went back to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetryReason {
    LeaseExpired,
    NoAck,
    AgentRestarted,
    NotRunning,
    Interrupted,
    TaskFailed,
}

impl RetryReason {
    pub const ALL: [RetryReason; 6] = [
        RetryReason::LeaseExpired,
        RetryReason::NoAck,
        RetryReason::AgentRestarted,
        RetryReason::NotRunning,
        RetryReason::Interrupted,
        RetryReason::TaskFailed,
    ];

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::LeaseExpired => "lease_expired",
            RetryReason::NoAck => "no_ack",
            RetryReason::AgentRestarted => "agent_restarted",
            RetryReason::NotRunning => "not_running",
            RetryReason::Interrupted => "interrupted",
            RetryReason::TaskFailed => "task_failed",
        }
    }
}

impl From<Loss> for RetryReason {
    fn from(loss: Loss) -> RetryReason {
        match loss {
            Loss::LeaseExpired => RetryReason::LeaseExpired,
            Loss::NoAck => RetryReason::NoAck,
            Loss::AgentRestarted => RetryReason::AgentRestarted,
            Loss::NotRunning => RetryReason::NotRunning,
        }
    }
}

/// Something that happened to a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The agent holding `epoch` acknowledged it.
    Ack { epoch: Epoch },
    /// The agent holding `epoch` reported how it ended.
    Result { epoch: Epoch, status: ResultStatus },
    /// The attempt at `epoch` lost its agent.
    Lost { epoch: Epoch, loss: Loss },
    /// An operator (or a KILL signal) asked to cancel.
    Cancel,
    /// A requested cancel was not confirmed in time.
    CancelTimeout,
    /// An operator asked to run the task again.
    Retry,
}

/// The facts about a task the rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskFacts {
    pub state: TaskState,
    pub epoch: Epoch,
    pub attempts: u32,
    /// A cancel was requested (and the epoch bumped) while the task was held by an agent.
    pub cancel_requested: bool,
}

/// What must change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// ASSIGNED → RUNNING (or a repeated ack: nothing changes).
    Start,
    /// The task ends in `task`; its attempt in `attempt`.
    Finish { task: TaskState, attempt: AttemptState },
    /// The attempt ends in `attempt`; the task goes back to the queue after `delay`.
    Requeue { attempt: AttemptState, delay: Duration },
    /// Infrastructure attempts are exhausted: the attempt ends in `attempt`, the task is ABORTED.
    Abort { attempt: AttemptState },
    /// A queued task is cancelled at once.
    CancelQueued,
    /// A held task: bump the epoch (fencing the running attempt out) and ask its agent to stop.
    RequestCancel,
    /// The agent's answer ended a requested cancel: the task is CANCELLED, the attempt CANCELLED. The agent's
    /// report is kept when it reported CANCELLED itself.
    ConfirmCancel { keep_report: bool },
    /// A finished task goes back to the queue for another run (attempts and epoch go on).
    Retry,
    /// Nothing to do (a duplicate).
    Nothing,
}

/// Why an event is refused (shared with the store's fences and the gRPC edge). A refusal changes nothing.
pub use outpost_common::task::Refusal;

/// Backoff before the next attempt: base·2^(attempts-1) capped at max, scaled by `jitter` ∈ [0, 1] (full jitter).
pub fn backoff(policy: &RetryPolicy, attempts: u32, jitter: f64) -> Duration {
    let ceiling = outpost_common::backoff::ceiling(policy.backoff_base, policy.backoff_max, attempts.saturating_sub(1));
    ceiling.mul_f64(jitter.clamp(0.0, 1.0))
}

/// Decides what `event` does to a task described by `facts`. `jitter` ∈ [0, 1] scales the retry backoff.
pub fn decide(facts: TaskFacts, event: Event, policy: &RetryPolicy, jitter: f64) -> Result<Decision, Refusal> {
    let held = matches!(facts.state, TaskState::Assigned | TaskState::Running);
    let retry_or_abort = |attempt: AttemptState, delay: Duration| {
        if facts.attempts >= policy.max_attempts {
            Decision::Abort { attempt }
        } else {
            Decision::Requeue { attempt, delay }
        }
    };
    match event {
        Event::Cancel => match facts.state {
            TaskState::Received | TaskState::Queued => Ok(Decision::CancelQueued),
            TaskState::Assigned | TaskState::Running if facts.cancel_requested => Ok(Decision::Nothing),
            TaskState::Assigned | TaskState::Running => Ok(Decision::RequestCancel),
            state => Err(Refusal::Terminal { state }),
        },
        Event::Retry if facts.state.is_terminal() => Ok(Decision::Retry),
        Event::Retry => Err(Refusal::NotFinished { state: facts.state }),
        Event::CancelTimeout => {
            if held && facts.cancel_requested {
                Ok(Decision::ConfirmCancel { keep_report: false })
            } else {
                Ok(Decision::Nothing)
            }
        }
        Event::Ack { epoch } | Event::Result { epoch, .. } | Event::Lost { epoch, .. } => {
            if facts.state.is_terminal() {
                // A repeated result of the attempt that finished the task is harmless; anything else is late.
                return if epoch == facts.epoch && matches!(event, Event::Result { .. }) {
                    Ok(Decision::Nothing)
                } else if epoch == facts.epoch {
                    Err(Refusal::Terminal { state: facts.state })
                } else {
                    Err(Refusal::StaleEpoch { current: facts.epoch })
                };
            }
            // While a cancel is pending the epoch was bumped once: the running attempt is the one before.
            if facts.cancel_requested && held && epoch.0 + 1 == facts.epoch.0 {
                return match event {
                    Event::Result { status, .. } => {
                        Ok(Decision::ConfirmCancel { keep_report: status == ResultStatus::Cancelled })
                    }
                    Event::Lost { .. } => Ok(Decision::ConfirmCancel { keep_report: false }),
                    _ => Err(Refusal::StaleEpoch { current: facts.epoch }),
                };
            }
            if epoch != facts.epoch {
                return Err(Refusal::StaleEpoch { current: facts.epoch });
            }
            if !held {
                return Err(Refusal::NotHeld { state: facts.state });
            }
            match event {
                Event::Ack { .. } => Ok(Decision::Start),
                Event::Result { status, .. } => Ok(match status {
                    ResultStatus::Interrupted => retry_or_abort(AttemptState::Interrupted, Duration::ZERO),
                    ResultStatus::Failed if policy.retry_task_failures && facts.attempts < policy.max_attempts => {
                        Decision::Requeue {
                            attempt: AttemptState::Failed,
                            delay: backoff(policy, facts.attempts, jitter),
                        }
                    }
                    status => Decision::Finish {
                        task: status.terminal_task_state().unwrap_or(TaskState::Failed),
                        attempt: AttemptState::from(status),
                    },
                }),
                Event::Lost { loss, .. } => {
                    Ok(retry_or_abort(loss.attempt_state(), backoff(policy, facts.attempts, jitter)))
                }
                Event::Cancel | Event::CancelTimeout | Event::Retry => unreachable!("handled above"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use TaskState::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(10),
            retry_task_failures: false,
        }
    }

    fn facts(state: TaskState, epoch: u64, attempts: u32, cancel_requested: bool) -> TaskFacts {
        TaskFacts { state, epoch: Epoch(epoch), attempts, cancel_requested }
    }

    /// Decides with full jitter (1.0), so backoffs are their ceilings.
    fn check(facts: TaskFacts, event: Event) -> Result<Decision, Refusal> {
        decide(facts, event, &policy(), 1.0)
    }

    const E1: Epoch = Epoch(1);
    const E2: Epoch = Epoch(2);
    fn result(epoch: Epoch, status: ResultStatus) -> Event {
        Event::Result { epoch, status }
    }
    fn lost(epoch: Epoch, loss: Loss) -> Event {
        Event::Lost { epoch, loss }
    }
    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn transitions_and_refusals() {
        use ResultStatus as R;
        let table: Vec<(&str, TaskFacts, Event, Result<Decision, Refusal>)> = vec![
            // Ack.
            ("ack starts an assignment", facts(Assigned, 1, 1, false), Event::Ack { epoch: E1 }, Ok(Start)),
            ("a repeated ack is harmless", facts(Running, 1, 1, false), Event::Ack { epoch: E1 }, Ok(Start)),
            (
                "stale ack",
                facts(Assigned, 2, 2, false),
                Event::Ack { epoch: E1 },
                Err(Refusal::StaleEpoch { current: E2 }),
            ),
            (
                "ack of a queued task",
                facts(Queued, 1, 1, false),
                Event::Ack { epoch: E1 },
                Err(Refusal::NotHeld { state: Queued }),
            ),
            (
                "ack after the end",
                facts(Succeeded, 1, 1, false),
                Event::Ack { epoch: E1 },
                Err(Refusal::Terminal { state: Succeeded }),
            ),
            // Results.
            (
                "success",
                facts(Running, 1, 1, false),
                result(E1, R::Succeeded),
                Ok(Finish { task: Succeeded, attempt: AttemptState::Succeeded }),
            ),
            (
                "a result straight from ASSIGNED",
                facts(Assigned, 1, 1, false),
                result(E1, R::Failed),
                Ok(Finish { task: Failed, attempt: AttemptState::Failed }),
            ),
            (
                "the run's own failure is not retried",
                facts(Running, 1, 1, false),
                result(E1, R::Failed),
                Ok(Finish { task: Failed, attempt: AttemptState::Failed }),
            ),
            (
                "timed out",
                facts(Running, 1, 1, false),
                result(E1, R::TimedOut),
                Ok(Finish { task: TimedOut, attempt: AttemptState::TimedOut }),
            ),
            (
                "cancelled by the agent",
                facts(Running, 1, 1, false),
                result(E1, R::Cancelled),
                Ok(Finish { task: Cancelled, attempt: AttemptState::Cancelled }),
            ),
            (
                "interrupted goes back at once",
                facts(Running, 1, 1, false),
                result(E1, R::Interrupted),
                Ok(Requeue { attempt: AttemptState::Interrupted, delay: Duration::ZERO }),
            ),
            (
                "interrupted on the last attempt aborts",
                facts(Running, 3, 3, false),
                result(Epoch(3), R::Interrupted),
                Ok(Abort { attempt: AttemptState::Interrupted }),
            ),
            (
                "stale result",
                facts(Running, 2, 2, false),
                result(E1, R::Succeeded),
                Err(Refusal::StaleEpoch { current: E2 }),
            ),
            (
                "late result after a re-run finished",
                facts(Succeeded, 2, 2, false),
                result(E1, R::Succeeded),
                Err(Refusal::StaleEpoch { current: E2 }),
            ),
            ("the same result again", facts(Succeeded, 1, 1, false), result(E1, R::Succeeded), Ok(Nothing)),
            (
                "result of a queued task",
                facts(Queued, 1, 1, false),
                result(E1, R::Succeeded),
                Err(Refusal::NotHeld { state: Queued }),
            ),
            // Losses.
            (
                "lease expiry retries with backoff",
                facts(Running, 1, 1, false),
                lost(E1, Loss::LeaseExpired),
                Ok(Requeue { attempt: AttemptState::Lost, delay: secs(1) }),
            ),
            (
                "backoff doubles",
                facts(Running, 2, 2, false),
                lost(E2, Loss::LeaseExpired),
                Ok(Requeue { attempt: AttemptState::Lost, delay: secs(2) }),
            ),
            (
                "no ack revokes",
                facts(Assigned, 1, 1, false),
                lost(E1, Loss::NoAck),
                Ok(Requeue { attempt: AttemptState::Revoked, delay: secs(1) }),
            ),
            (
                "attempts exhausted",
                facts(Running, 3, 3, false),
                lost(Epoch(3), Loss::LeaseExpired),
                Ok(Abort { attempt: AttemptState::Lost }),
            ),
            (
                "stale loss",
                facts(Running, 2, 2, false),
                lost(E1, Loss::LeaseExpired),
                Err(Refusal::StaleEpoch { current: E2 }),
            ),
            (
                "loss after the end",
                facts(Failed, 1, 1, false),
                lost(E1, Loss::LeaseExpired),
                Err(Refusal::Terminal { state: Failed }),
            ),
            // Cancel.
            ("cancel a queued task", facts(Queued, 0, 0, false), Event::Cancel, Ok(CancelQueued)),
            ("cancel a running task", facts(Running, 1, 1, false), Event::Cancel, Ok(RequestCancel)),
            ("cancel an assigned task", facts(Assigned, 1, 1, false), Event::Cancel, Ok(RequestCancel)),
            ("cancel twice", facts(Running, 2, 1, true), Event::Cancel, Ok(Nothing)),
            (
                "cancel a finished task",
                facts(Succeeded, 1, 1, false),
                Event::Cancel,
                Err(Refusal::Terminal { state: Succeeded }),
            ),
            (
                "the agent confirms the cancel",
                facts(Running, 2, 1, true),
                result(E1, R::Cancelled),
                Ok(ConfirmCancel { keep_report: true }),
            ),
            (
                "the run ended anyway: still cancelled",
                facts(Running, 2, 1, true),
                result(E1, R::Succeeded),
                Ok(ConfirmCancel { keep_report: false }),
            ),
            (
                "the agent died while cancelling",
                facts(Running, 2, 1, true),
                lost(E1, Loss::LeaseExpired),
                Ok(ConfirmCancel { keep_report: false }),
            ),
            (
                "an ack of the cancelled attempt",
                facts(Assigned, 2, 1, true),
                Event::Ack { epoch: E1 },
                Err(Refusal::StaleEpoch { current: E2 }),
            ),
            (
                "unconfirmed cancel times out",
                facts(Running, 2, 1, true),
                Event::CancelTimeout,
                Ok(ConfirmCancel { keep_report: false }),
            ),
            ("timeout after confirmation", facts(Cancelled, 2, 1, false), Event::CancelTimeout, Ok(Nothing)),
            // Operator retry.
            ("a finished task runs again", facts(Failed, 1, 1, false), Event::Retry, Ok(Retry)),
            ("an aborted task runs again", facts(Aborted, 3, 3, false), Event::Retry, Ok(Retry)),
            (
                "a running task is not retried",
                facts(Running, 1, 1, false),
                Event::Retry,
                Err(Refusal::NotFinished { state: Running }),
            ),
            (
                "a queued task is not retried",
                facts(Queued, 0, 0, false),
                Event::Retry,
                Err(Refusal::NotFinished { state: Queued }),
            ),
        ];
        for (name, facts, event, want) in table {
            assert_eq!(check(facts, event), want, "case: {name}");
        }
    }

    #[test]
    fn task_failures_retry_only_when_configured() {
        let retrying = RetryPolicy { retry_task_failures: true, ..policy() };
        let run = |attempts: u64| {
            decide(
                facts(Running, attempts, u32::try_from(attempts).unwrap(), false),
                result(Epoch(attempts), ResultStatus::Failed),
                &retrying,
                0.5,
            )
        };
        assert_eq!(run(1), Ok(Requeue { attempt: AttemptState::Failed, delay: Duration::from_millis(500) }));
        assert_eq!(run(3), Ok(Finish { task: Failed, attempt: AttemptState::Failed }));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 1.0), secs(1));
        assert_eq!(backoff(&p, 4, 1.0), secs(8));
        assert_eq!(backoff(&p, 5, 1.0), secs(10));
        assert_eq!(backoff(&p, 40, 1.0), secs(10));
        assert_eq!(backoff(&p, 4, 0.25), secs(2));
        assert_eq!(backoff(&p, 4, 0.0), Duration::ZERO);
    }
}
