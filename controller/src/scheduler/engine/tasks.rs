//! The life cycle applied: submits, acks, results, losses, cancels and retries are decided by
//! `lifecycle::decide` over the task's facts (its lease, what this turn already decided, or the store) and become
//! changes of the turn plus updates of leases and queues. Nothing here writes on its own or sends before the
//! commit.

use outpost_common::clock::unix_ms;
use outpost_common::ids::{AttemptRef, PoolId, TaskId, WorkerId};
use outpost_common::task::{AttemptState, ResultStatus, TaskState};
use outpost_common::venv::{VenvKey, VenvSpec};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Engine;
use super::sessions::is_silent;
use crate::lifecycle::RetryReason;
use crate::lifecycle::{self, Decision, Event as LifeEvent, Loss, Refusal, TaskFacts};
use crate::scheduler::leases::Lease;
use crate::scheduler::{AgentCommand, AttemptResult, Error, SessionId};
use crate::store::{AttemptEnd, Change, NewTask, TaskChange, TaskRecord};
use outpost_common::task::RunResult;

/// What ended an attempt, for the record.
enum Cause<'a> {
    Result(&'a AttemptResult),
    Loss(Loss),
    CancelTimeout,
}

/// A task as the rules see it, and its pool.
struct Known {
    facts: TaskFacts,
    pool: PoolId,
}

fn refused(attempt: &AttemptRef, refusal: Refusal) -> Error {
    Error::refused(&attempt.task_id, Some(attempt.epoch), refusal)
}

impl Engine {
    pub(super) fn submit(
        &mut self,
        task: NewTask,
        venv: Option<VenvKey>,
        reply: oneshot::Sender<Result<(TaskRecord, bool), Error>>,
    ) {
        // Queued now so the turn that records it can also grant it; the grant is fenced on the task being QUEUED
        // in the store, so a known (finished) task submitted again is never granted.
        if self.leases.get(&task.id).is_none() && !self.queue.contains(&task.id) {
            self.queue.push(task.pool.clone(), task.id.clone(), venv, 0, unix_ms());
        }
        self.plan.submit(task, reply);
    }

    /// The facts about a task: from its lease when held, else as this turn left it, else from the store (a task
    /// submitted in this turn and not stored yet is queued at epoch 0).
    async fn known(&self, task: &TaskId) -> Result<Known, Error> {
        if let Some(lease) = self.leases.get(task) {
            return Ok(Known { facts: lease.facts(), pool: lease.pool.clone() });
        }
        let pending = self.in_flight.as_ref().map(|f| &f.plan);
        if let Some((facts, pool)) = self.plan.facts(task).or_else(|| pending.and_then(|p| p.facts(task))) {
            return Ok(Known { facts: *facts, pool: pool.clone() });
        }
        match self.store.task(task).await? {
            Some((record, _)) => Ok(Known {
                facts: TaskFacts {
                    state: record.state,
                    epoch: record.epoch,
                    attempts: record.attempts,
                    cancel_requested: record.cancel_requested,
                },
                pool: record.request.pool,
            }),
            None => match self.plan.submitted(task).or_else(|| pending.and_then(|p| p.submitted(task))) {
                Some(pool) => Ok(Known {
                    facts: TaskFacts {
                        state: TaskState::Queued,
                        epoch: outpost_common::ids::Epoch(0),
                        attempts: 0,
                        cancel_requested: false,
                    },
                    pool: pool.clone(),
                }),
                None => Err(Self::not_found(task)),
            },
        }
    }

    fn check_holder(&self, worker: &WorkerId, attempt: &AttemptRef) -> Result<(), Error> {
        match self.leases.get(&attempt.task_id) {
            Some(lease) if lease.worker != *worker => Err(refused(attempt, Refusal::NotHeld { state: lease.state })),
            _ => Ok(()),
        }
    }

    pub(super) async fn ack(
        &mut self,
        worker: &WorkerId,
        session: SessionId,
        attempt: &AttemptRef,
    ) -> Result<(), Error> {
        if self.current(worker, session).is_none() {
            return Err(Error::SessionGone);
        }
        self.heard_from(worker);
        self.check_holder(worker, attempt)?;
        let facts = self.known(&attempt.task_id).await?.facts;
        match lifecycle::decide(facts, LifeEvent::Ack { epoch: attempt.epoch }, &self.config.retry, 1.0) {
            Ok(Decision::Start) if facts.state == TaskState::Assigned => {
                if self.leases.get(&attempt.task_id).is_none() {
                    // Nobody holds it (its end is already decided): nothing to start.
                    return Err(refused(attempt, Refusal::NotHeld { state: facts.state }));
                }
                self.start(attempt);
                debug!(worker = %worker, attempt = %attempt, "attempt running");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(refusal) => Err(refused(attempt, refusal)),
        }
    }

    /// A held attempt runs: ASSIGNED → RUNNING in memory now, in the store with the turn's commit.
    pub(super) fn start(&mut self, attempt: &AttemptRef) {
        if let Some(lease) = self.leases.get_mut(&attempt.task_id) {
            lease.state = TaskState::Running;
            lease.ack_deadline = None;
            self.plan.change(Change::Start(attempt.clone()));
        }
    }

    pub(super) async fn result(
        &mut self,
        worker: &WorkerId,
        session: SessionId,
        attempt: &AttemptRef,
        outcome: &AttemptResult,
    ) -> Result<(), Error> {
        if self.current(worker, session).is_some() {
            self.heard_from(worker);
        }
        self.check_holder(worker, attempt)?;
        let facts = self.known(&attempt.task_id).await?.facts;
        let event = LifeEvent::Result { epoch: attempt.epoch, status: outcome.status };
        let decision = lifecycle::decide(facts, event, &self.config.retry, fastrand::f64())
            .map_err(|refusal| refused(attempt, refusal))?;
        info!(worker = %worker, attempt = %attempt, status = %outcome.status, decision = ?decision, "attempt result");
        self.apply(&attempt.task_id, decision, Cause::Result(outcome)).await
    }

    /// Applies a loss to a held task (lease expiry, no ack, agent restart).
    pub(super) async fn lose(&mut self, task: &TaskId, loss: Loss) {
        let Some(lease) = self.leases.get(task) else { return };
        let event = LifeEvent::Lost { epoch: lease.attempt_epoch(), loss };
        match lifecycle::decide(lease.facts(), event, &self.config.retry, fastrand::f64()) {
            Ok(decision) => {
                self.metrics.lease_lost(loss);
                warn!(task = %task, worker = %lease.worker, loss = loss.describe(), decision = ?decision, "attempt lost");
                if let Err(e) = self.apply(task, decision, Cause::Loss(loss)).await {
                    warn!(task = %task, error = %e, "could not record the loss");
                }
            }
            Err(refusal) => warn!(task = %task, refusal = ?refusal, "loss refused"),
        }
    }

    /// Leases whose cancel, ack or liveness deadline passed at `now`.
    pub(super) async fn expire_leases(&mut self, now: Instant) {
        let ttl = self.config.lease_ttl;
        let mut due = Vec::new();
        for (task, lease) in self.leases.iter() {
            if lease.cancel_deadline.is_some_and(|d| d <= now) {
                due.push((task.clone(), None));
            } else if lease.ack_deadline.is_some_and(|d| d <= now) {
                due.push((task.clone(), Some(Loss::NoAck)));
            } else if is_silent(&self.liveness, &lease.worker, ttl, now) {
                due.push((task.clone(), Some(Loss::LeaseExpired)));
            }
        }
        for (task, loss) in due {
            match loss {
                Some(loss) => self.lose(&task, loss).await,
                None => self.cancel_timed_out(&task).await,
            }
        }
    }

    async fn cancel_timed_out(&mut self, task: &TaskId) {
        let Some(lease) = self.leases.get(task) else { return };
        match lifecycle::decide(lease.facts(), LifeEvent::CancelTimeout, &self.config.retry, 1.0) {
            Ok(decision) => {
                warn!(task = %task, worker = %lease.worker, "cancel not confirmed in time");
                if let Err(e) = self.apply(task, decision, Cause::CancelTimeout).await {
                    warn!(task = %task, error = %e, "could not record the cancel timeout");
                }
            }
            Err(refusal) => warn!(task = %task, refusal = ?refusal, "cancel timeout refused"),
        }
    }

    /// Makes a decision about a held task part of the turn, and updates leases and queues.
    async fn apply(&mut self, task: &TaskId, decision: Decision, cause: Cause<'_>) -> Result<(), Error> {
        let Some(lease) = self.leases.get(task).cloned() else {
            // Not held: only duplicates (Nothing) get here.
            return Ok(());
        };
        let now_ms = unix_ms();
        let reason = match &cause {
            Cause::Result(outcome) => match outcome.record.exit_code {
                Some(code) => format!("{} (exit code {code})", outcome.status),
                None => outcome.status.to_string(),
            },
            Cause::Loss(loss) => loss.describe().to_owned(),
            Cause::CancelTimeout => "the agent did not confirm the cancel in time".to_owned(),
        };
        let (attempt_state, change) = match decision {
            Decision::Nothing
            | Decision::Start
            | Decision::CancelQueued
            | Decision::RequestCancel
            | Decision::Retry => return Ok(()),
            Decision::Finish { task: state, attempt } => {
                let record = match &cause {
                    Cause::Result(outcome) => outcome.record.clone(),
                    _ => RunResult::default(),
                };
                (attempt, TaskChange::Finish { state, result: record })
            }
            Decision::Requeue { attempt, delay } => {
                self.metrics.retried(match &cause {
                    Cause::Loss(loss) => RetryReason::from(*loss),
                    Cause::Result(outcome) if outcome.status == ResultStatus::Interrupted => RetryReason::Interrupted,
                    _ => RetryReason::TaskFailed,
                });
                (
                    attempt,
                    TaskChange::Requeue {
                        not_before_ms: now_ms.saturating_add(outpost_common::duration::signed_millis(delay)),
                    },
                )
            }
            Decision::Abort { attempt } => {
                self.metrics.aborted();
                let report = self.abort_report(task, &lease, &reason).await?;
                let record = RunResult { report, start_time_ms: now_ms, ..RunResult::default() };
                (attempt, TaskChange::Finish { state: TaskState::Aborted, result: record })
            }
            Decision::ConfirmCancel { keep_report } => {
                let record = match &cause {
                    Cause::Result(outcome) if keep_report => outcome.record.clone(),
                    _ => RunResult {
                        report: format!(
                            "~~~~ Execution Summary - {} ~~~~\nExecution was cancelled by request.\n{reason}\n",
                            lease.task_name
                        ),
                        start_time_ms: now_ms,
                        ..RunResult::default()
                    },
                };
                (AttemptState::Cancelled, TaskChange::Finish { state: TaskState::Cancelled, result: record })
            }
        };
        let end = AttemptEnd {
            task_id: task.clone(),
            task_epoch: lease.epoch,
            attempt_epoch: lease.attempt_epoch(),
            attempt_state,
            reason,
            change,
        };
        self.leases.remove(task);
        let state = match &end.change {
            TaskChange::Requeue { not_before_ms } => {
                self.queue.push(lease.pool.clone(), task.clone(), lease.venv.clone(), *not_before_ms, now_ms);
                TaskState::Queued
            }
            TaskChange::Finish { state, .. } => {
                info!(task = %task, state = %state, "task finished");
                *state
            }
        };
        let facts = TaskFacts { state, epoch: lease.epoch, attempts: lease.attempts, cancel_requested: false };
        self.plan.decided(task, facts, &lease.pool);
        self.plan.change(Change::End(end));
        Ok(())
    }

    async fn abort_report(&self, task: &TaskId, lease: &Lease, last_reason: &str) -> Result<String, Error> {
        let (_, attempts) = self.store.task(task).await?.ok_or_else(|| Self::not_found(task))?;
        let mut report = format!(
            "~~~~ Execution Summary - {} ~~~~\nExecution finished with errors.\n\
             Outpost gave up after {} attempts (the limit is {}); none could finish for reasons outside the task:\n",
            lease.task_name, lease.attempts, self.config.retry.max_attempts
        );
        for attempt in attempts {
            let (state, reason) = if attempt.epoch == lease.attempt_epoch() {
                (lifecycle::Loss::LeaseExpired.attempt_state().to_string(), last_reason.to_owned())
            } else {
                (attempt.state.to_string(), attempt.reason.unwrap_or_default())
            };
            report.push_str(&format!(
                "  attempt {} (epoch {}) on {}: {state}: {reason}\n",
                attempt.number, attempt.epoch, attempt.worker_id
            ));
        }
        Ok(report)
    }

    /// Cancels a task: a queued one ends at once; a held one is fenced out (epoch + 1) and its agent is told to
    /// stop once that is committed.
    pub(super) async fn cancel(&mut self, task: &TaskId, reason: &str) -> Result<(), Error> {
        let known = self.known(task).await?;
        match lifecycle::decide(known.facts, LifeEvent::Cancel, &self.config.retry, 1.0) {
            Ok(Decision::CancelQueued) => {
                self.queue.remove(task);
                let report = format!("Execution was cancelled by request before it ran: {reason}\n");
                self.plan.change(Change::CancelQueued { task: task.clone(), report });
                let facts = TaskFacts { state: TaskState::Cancelled, ..known.facts };
                self.plan.decided(task, facts, &known.pool);
                info!(task = %task, "queued task cancelled");
                Ok(())
            }
            Ok(Decision::RequestCancel) => {
                let Some(lease) = self.leases.get_mut(task) else { return Err(Self::not_found(task)) };
                self.plan.change(Change::RequestCancel { task: task.clone(), epoch: lease.epoch });
                let running = lease.attempt(task);
                lease.epoch.0 += 1;
                lease.cancel_deadline = Some(Instant::now() + self.config.cancel_timeout);
                let worker = lease.worker.clone();
                info!(task = %task, attempt = %running, worker = %worker, "cancel requested");
                self.plan.command(&worker, AgentCommand::Cancel { attempt: running, reason: reason.to_owned() });
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(refusal) => Err(Error::refused(task, None, refusal)),
        }
    }

    /// Runs a finished task again.
    pub(super) async fn retry(&mut self, task: &TaskId) -> Result<(), Error> {
        let known = self.known(task).await?;
        match lifecycle::decide(known.facts, LifeEvent::Retry, &self.config.retry, 1.0) {
            Ok(Decision::Retry) => {
                self.plan.change(Change::Retry { task: task.clone() });
                let facts = TaskFacts { state: TaskState::Queued, ..known.facts };
                self.plan.decided(task, facts, &known.pool);
                // An operator's retry is rare: the venv it needs is read from its stored args.
                let stored = self.store.task(task).await.ok().flatten();
                let venv = stored.and_then(|(record, _)| VenvSpec::key_of_task(&record.request.args));
                self.queue.push(known.pool, task.clone(), venv, 0, unix_ms());
                info!(task = %task, "finished task queued again by an operator");
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(refusal) => Err(Error::refused(task, None, refusal)),
        }
    }
}
