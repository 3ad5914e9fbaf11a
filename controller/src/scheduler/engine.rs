//! The engine actor: the single owner of sessions, leases and queues. Every decision that changes who runs what
//! is made here, one event at a time, by the pure rules of `lifecycle`, and made durable in the store before it
//! is announced. Events waiting together form a turn whose changes are committed in one transaction (group
//! commit); answers and assignments go out only after that commit. A periodic sweep expires leases, revokes
//! unacknowledged assignments, times out cancels, wakes backed-off tasks and persists heartbeats.

use std::collections::{BTreeMap, HashMap, HashSet};

use outpost_common::clock::unix_ms;
use outpost_common::ids::{AttemptRef, PoolId, TaskId, WorkerId};
use outpost_common::task::TaskState;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::leases::{Lease, Leases};
use super::lifecycle::{self, Decision, Event as LifeEvent, Loss, Refusal, TaskFacts};
use super::policy::{self, Candidate};
use super::queue::Queue;
use super::turn::Plan;
use super::{
    AgentCommand, AgentHello, Assignment, AttemptResult, Config, Error, Event, SessionId, Welcome, WorkerState,
    WorkerView,
};
use crate::metrics::{Metrics, RetryReason};
use crate::store::{self, AttemptEnd, ResultRecord, Store, TaskChange, TaskRecord, WorkerSeen};

/// The most events handled in one turn (one commit).
const MAX_TURN: usize = 1024;

/// One connected agent.
pub(super) struct Session {
    id: SessionId,
    pub(super) hello: AgentHello,
    commands: mpsc::Sender<AgentCommand>,
    kick: CancellationToken,
    pub(super) credits: u32,
    pub(super) draining: bool,
    pub(super) connected_since_ms: i64,
}

/// A queued task chosen for a worker in this turn, not yet granted.
struct Pick {
    task: TaskId,
    worker: WorkerId,
    /// How long it had been ready, and when it was picked (for the dispatch-latency histogram).
    waited: std::time::Duration,
    picked: Instant,
}

/// What ended an attempt, for the record.
enum Cause<'a> {
    Result(&'a AttemptResult),
    Loss(Loss),
    CancelTimeout,
}

pub(super) struct Engine {
    pub(super) store: Store,
    metrics: Metrics,
    config: Config,
    pub(super) sessions: BTreeMap<WorkerId, Session>,
    /// When each worker was last heard from (Instant for expiry, Unix ms for the record). Kept across a
    /// disconnect: that is the reconnect grace.
    pub(super) liveness: HashMap<WorkerId, (Instant, i64)>,
    /// Workers heard from since the last heartbeat commit.
    heard: HashSet<WorkerId>,
    pub(super) leases: Leases,
    pub(super) queue: Queue,
    next_session: u64,
    /// This turn's changes, written by the next `flush`.
    plan: Plan,
}

fn refused(attempt: &AttemptRef, refusal: Refusal) -> Error {
    match refusal {
        Refusal::StaleEpoch { current } => Error::StaleEpoch { attempt: attempt.clone(), current },
        Refusal::NotHeld { .. } => Error::NotHeld { attempt: attempt.clone() },
        Refusal::Terminal { state } => Error::Finished { task: attempt.task_id.clone(), state },
    }
}

fn facts_of(task: &TaskRecord) -> TaskFacts {
    TaskFacts { state: task.state, epoch: task.epoch, attempts: task.attempts, cancel_requested: task.cancel_requested }
}

/// Queues and leases as the store has them. Held tasks get one lease TTL (and an unacknowledged one at least
/// the ack deadline) from now.
async fn rebuild(store: &Store, config: &Config) -> Result<(Queue, Leases), Error> {
    let now = Instant::now();
    let now_ms = unix_ms();
    let mut queue = Queue::default();
    let queued = store.queued_tasks().await?;
    for task in &queued {
        queue.push(task.pool.clone(), task.id.clone(), task.not_before_ms, now_ms);
    }
    let mut leases = Leases::default();
    let held = store.held_tasks().await?;
    for held_task in &held {
        let task = &held_task.task;
        let ack_window = config.ack_deadline.max(config.lease_ttl);
        leases.insert(
            task.id.clone(),
            Lease {
                worker: held_task.worker_id.clone(),
                pool: task.pool.clone(),
                task_name: task.task_name.clone(),
                epoch: task.epoch,
                state: task.state,
                attempts: task.attempts,
                ack_deadline: (task.state == TaskState::Assigned).then(|| now + ack_window),
                cancel_deadline: task.cancel_requested.then(|| now + config.cancel_timeout),
            },
        );
    }
    info!(queued = queued.len(), held = held.len(), "loaded tasks; held tasks wait one lease TTL for their agents");
    Ok((queue, leases))
}

impl Engine {
    /// Rebuilds queues and leases from the store. Every held task gets the reconnect grace (one lease TTL from
    /// now) for its agent to come back and claim it.
    pub(super) async fn load(store: Store, config: Config, metrics: Metrics) -> Result<Engine, Error> {
        store.all_workers_disconnected().await?;
        let (queue, leases) = rebuild(&store, &config).await?;
        let now = (Instant::now(), unix_ms());
        let liveness = leases.iter().map(|(_, lease)| (lease.worker.clone(), now)).collect();
        Ok(Engine {
            store,
            metrics,
            config,
            sessions: BTreeMap::new(),
            liveness,
            heard: HashSet::new(),
            leases,
            queue,
            next_session: 1,
            plan: Plan::default(),
        })
    }

    pub(super) async fn run(mut self, mut events: mpsc::Receiver<Event>, token: CancellationToken) {
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => self.turn(event, &mut events).await,
                    None => break,
                },
                _ = sweep.tick() => {
                    self.sweep().await;
                    self.flush().await;
                }
            }
        }
        self.flush().await;
        self.commit_heartbeats().await;
        for session in self.sessions.values() {
            session.kick.cancel();
        }
        debug!("scheduler stopped");
    }

    /// Handles `first` and every event already waiting behind it (up to `MAX_TURN`), then commits their
    /// changes together. Events that touch the store on their own are fenced by commits before and after.
    async fn turn(&mut self, first: Event, events: &mut mpsc::Receiver<Event>) {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(event) = next.take() {
            if event.is_barrier() {
                self.flush().await;
                self.handle(event).await;
                self.flush().await;
            } else {
                self.handle(event).await;
            }
            handled += 1;
            if handled < MAX_TURN {
                next = events.try_recv().ok();
            }
        }
        self.flush().await;
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Submit { task, reply } => {
                // Queued now so the turn that records it can also grant it; the grant is fenced on the task
                // being QUEUED in the store, so a known (finished) task submitted again is never granted.
                if self.leases.get(&task.id).is_none() && !self.queue.contains(&task.id) {
                    self.queue.push(task.pool.clone(), task.id.clone(), 0, unix_ms());
                }
                self.plan.submit(task, reply);
            }
            Event::Connect { hello, commands, kick, reply } => {
                let welcome = self.connect(hello, commands, kick).await;
                self.plan.answer(reply, welcome);
            }
            Event::Credit { worker, session, credits } => {
                if let Some(s) = self.current(&worker, session) {
                    s.credits = s.credits.saturating_add(credits);
                    self.heard_from(&worker);
                }
            }
            Event::Ack { worker, session, attempt, reply } => {
                let acked = self.ack(&worker, session, &attempt).await;
                self.plan.answer(reply, acked);
            }
            Event::Seen { worker, session } => {
                if self.current(&worker, session).is_some() {
                    self.heard_from(&worker);
                }
            }
            Event::Result { worker, session, attempt, outcome, reply } => {
                let recorded = self.result(&worker, session, &attempt, &outcome).await;
                self.plan.answer(reply, recorded);
            }
            Event::Draining { worker, session } => {
                if let Some(s) = self.current(&worker, session) {
                    info!(worker = %worker, "agent draining: no new work");
                    s.draining = true;
                    self.heard_from(&worker);
                }
            }
            Event::Disconnected { worker, session } => self.disconnected(&worker, session).await,
            Event::ListWorkers { reply } => {
                let _ = reply.send(self.list_workers().await);
            }
            Event::Cancel { task, reason, reply } => {
                let _ = reply.send(self.cancel(&task, &reason).await);
            }
            Event::Drain { worker, reply } => {
                let _ = reply.send(self.drain(&worker));
            }
            Event::Retry { task, reply } => {
                let _ = reply.send(self.retry(&task).await);
            }
            Event::Explain { task, reply } => {
                let _ = reply.send(self.explain(&task).await);
            }
            Event::Capacity { reply } => {
                let mut pools: BTreeMap<PoolId, super::PoolCapacity> = BTreeMap::new();
                for session in self.sessions.values() {
                    for pool in &session.hello.pools {
                        let entry = pools.entry(pool.clone()).or_insert_with(|| super::PoolCapacity {
                            pool: pool.clone(),
                            agents: 0,
                            draining: 0,
                            free_slots: 0,
                        });
                        if session.draining {
                            entry.draining += 1;
                        } else {
                            entry.agents += 1;
                            entry.free_slots += session.credits;
                        }
                    }
                }
                let _ = reply.send(Ok(pools.into_values().collect()));
            }
            Event::Demand { pool, reply } => {
                let serving = self.sessions.values().filter(|s| !s.draining && s.hello.pools.contains(&pool));
                let (agents, free_slots) = serving.fold((0, 0), |(n, free), s| (n + 1, free + s.credits));
                let queued = self.queue.ready_len(&pool) as u32;
                let _ = reply.send(Ok(super::Demand { agents, free_slots, queued }));
            }
        }
    }

    fn current(&mut self, worker: &WorkerId, session: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(worker).filter(|s| s.id == session)
    }

    fn heard_from(&mut self, worker: &WorkerId) {
        self.liveness.insert(worker.clone(), (Instant::now(), unix_ms()));
        self.heard.insert(worker.clone());
    }

    fn send(&self, worker: &WorkerId, command: AgentCommand) {
        let Some(session) = self.sessions.get(worker) else { return };
        if session.commands.try_send(command).is_err() {
            // The session is closing or hopelessly behind; deadlines and lease expiry take over.
            warn!(worker = %worker, "could not hand a command to the session");
        }
    }

    async fn connect(
        &mut self,
        hello: AgentHello,
        commands: mpsc::Sender<AgentCommand>,
        kick: CancellationToken,
    ) -> Result<Welcome, Error> {
        let now_ms = unix_ms();
        let worker = hello.worker_id.clone();
        let id = SessionId(self.next_session);
        self.next_session += 1;
        if let Some(old) = self.sessions.remove(&worker) {
            info!(worker = %worker, old_session = %old.id, "a newer session replaces the old one");
            old.kick.cancel();
        }
        self.heard_from(&worker);
        // Keep the held attempts whose epoch is current; tell the agent to stop the others.
        let mut kept = HashSet::new();
        let mut cancel = Vec::new();
        for attempt in &hello.held {
            match self.leases.get(&attempt.task_id) {
                Some(lease) if lease.worker == worker && lease.attempt_epoch() == attempt.epoch => {
                    if lease.cancel_deadline.is_some() {
                        cancel.push(attempt.clone());
                    }
                    kept.insert(attempt.task_id.clone());
                }
                _ => cancel.push(attempt.clone()),
            }
        }
        // What we think it holds but it does not: it restarted and lost that work. What it holds and we still
        // think is only assigned, it has acknowledged (the ack may have been lost with the old connection).
        for task in self.leases.of_worker(&worker) {
            if !kept.contains(&task) {
                self.lose(&task, Loss::AgentRestarted).await;
            } else if let Some(lease) = self.leases.get(&task).filter(|l| l.state == TaskState::Assigned) {
                let attempt = lease.attempt(&task);
                self.start(&attempt);
            }
        }
        self.store
            .worker_connected(
                &WorkerSeen {
                    worker_id: worker.clone(),
                    pools: hello.pools.clone(),
                    slots: hello.slots,
                    version: hello.version.clone(),
                    labels: hello.labels.clone(),
                },
                now_ms,
            )
            .await?;
        info!(
            worker = %worker, session = %id, slots = hello.slots,
            pools = ?hello.pools.iter().map(PoolId::as_str).collect::<Vec<_>>(),
            reclaimed = kept.len(), refused = cancel.len(), "agent connected"
        );
        self.sessions.insert(
            worker,
            Session { id, hello, commands, kick, credits: 0, draining: false, connected_since_ms: now_ms },
        );
        self.metrics.set_connected_agents(self.sessions.len());
        Ok(Welcome { session: id, cancel })
    }

    /// The facts about a task: from its lease when held, else from the store.
    async fn facts(&self, task: &TaskId) -> Result<TaskFacts, Error> {
        if let Some(lease) = self.leases.get(task) {
            return Ok(lease.facts());
        }
        let (record, _) = self.store.task(task).await?.ok_or_else(|| Error::NotFound(task.clone()))?;
        Ok(facts_of(&record))
    }

    fn check_holder(&self, worker: &WorkerId, attempt: &AttemptRef) -> Result<(), Error> {
        match self.leases.get(&attempt.task_id) {
            Some(lease) if lease.worker != *worker => Err(Error::NotHeld { attempt: attempt.clone() }),
            _ => Ok(()),
        }
    }

    async fn ack(&mut self, worker: &WorkerId, session: SessionId, attempt: &AttemptRef) -> Result<(), Error> {
        if self.current(worker, session).is_none() {
            return Err(Error::SessionGone);
        }
        self.heard_from(worker);
        self.check_holder(worker, attempt)?;
        let facts = self.facts(&attempt.task_id).await?;
        match lifecycle::decide(facts, LifeEvent::Ack { epoch: attempt.epoch }, &self.config.retry, 1.0) {
            Ok(Decision::Start) if facts.state == TaskState::Assigned => {
                if self.leases.get(&attempt.task_id).is_none() {
                    // Nobody holds it (its end is already decided): nothing to start.
                    return Err(Error::NotHeld { attempt: attempt.clone() });
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
    fn start(&mut self, attempt: &AttemptRef) {
        if let Some(lease) = self.leases.get_mut(&attempt.task_id) {
            lease.state = TaskState::Running;
            lease.ack_deadline = None;
            self.plan.starts.push(attempt.clone());
        }
    }

    async fn result(
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
        let facts = self.facts(&attempt.task_id).await?;
        let event = LifeEvent::Result { epoch: attempt.epoch, status: outcome.status };
        let decision = lifecycle::decide(facts, event, &self.config.retry, fastrand::f64())
            .map_err(|refusal| refused(attempt, refusal))?;
        info!(worker = %worker, attempt = %attempt, status = %outcome.status, decision = ?decision, "attempt result");
        self.apply(&attempt.task_id, decision, Cause::Result(outcome)).await
    }

    /// Applies a loss to a held task (lease expiry, no ack, agent restart).
    async fn lose(&mut self, task: &TaskId, loss: Loss) {
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

    /// Makes a decision about a held task durable, then updates leases and queues.
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
            Decision::Nothing | Decision::Start | Decision::CancelQueued | Decision::RequestCancel => return Ok(()),
            Decision::Finish { task: state, attempt } => {
                let record = match &cause {
                    Cause::Result(outcome) => outcome.record.clone(),
                    _ => ResultRecord::default(),
                };
                (attempt, TaskChange::Finish { state, result: record })
            }
            Decision::Requeue { attempt, delay } => {
                self.metrics.retried(match &cause {
                    Cause::Loss(loss) => RetryReason::from(*loss),
                    Cause::Result(outcome) if outcome.status == outpost_common::task::ResultStatus::Interrupted => {
                        RetryReason::Interrupted
                    }
                    _ => RetryReason::TaskFailed,
                });
                (attempt, TaskChange::Requeue { not_before_ms: now_ms + delay.as_millis() as i64 })
            }
            Decision::Abort { attempt } => {
                self.metrics.aborted();
                let report = self.abort_report(task, &lease, &reason).await?;
                let record = ResultRecord { report, start_time_ms: now_ms, ..ResultRecord::default() };
                (attempt, TaskChange::Finish { state: TaskState::Aborted, result: record })
            }
            Decision::ConfirmCancel { keep_report } => {
                let record = match &cause {
                    Cause::Result(outcome) if keep_report => outcome.record.clone(),
                    _ => ResultRecord {
                        report: format!(
                            "~~~~ Execution Summary - {} ~~~~\nExecution was cancelled by request.\n{reason}\n",
                            lease.task_name
                        ),
                        start_time_ms: now_ms,
                        ..ResultRecord::default()
                    },
                };
                (
                    outpost_common::task::AttemptState::Cancelled,
                    TaskChange::Finish { state: TaskState::Cancelled, result: record },
                )
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
        match &end.change {
            TaskChange::Requeue { not_before_ms } => {
                self.queue.push(lease.pool.clone(), task.clone(), *not_before_ms, now_ms);
            }
            TaskChange::Finish { state, .. } => info!(task = %task, state = %state, "task finished"),
        }
        self.plan.ends.push(end);
        Ok(())
    }

    async fn abort_report(&self, task: &TaskId, lease: &Lease, last_reason: &str) -> Result<String, Error> {
        let (_, attempts) = self.store.task(task).await?.ok_or_else(|| Error::NotFound(task.clone()))?;
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

    async fn cancel(&mut self, task: &TaskId, reason: &str) -> Result<(), Error> {
        let facts = self.facts(task).await?;
        match lifecycle::decide(facts, LifeEvent::Cancel, &self.config.retry, 1.0) {
            Ok(Decision::CancelQueued) => {
                self.queue.remove(task);
                let report = format!("Execution was cancelled by request before it ran: {reason}\n");
                self.store.cancel_queued(task, &report, unix_ms()).await?;
                info!(task = %task, "queued task cancelled");
                Ok(())
            }
            Ok(Decision::RequestCancel) => {
                let Some(lease) = self.leases.get(task).cloned() else { return Err(Error::NotFound(task.clone())) };
                let epoch = self.store.request_cancel(task, lease.epoch, unix_ms()).await?;
                let running = lease.attempt(task);
                if let Some(lease) = self.leases.get_mut(task) {
                    lease.epoch = epoch;
                    lease.cancel_deadline = Some(Instant::now() + self.config.cancel_timeout);
                }
                info!(task = %task, attempt = %running, worker = %lease.worker, "cancel requested");
                self.send(&lease.worker, AgentCommand::Cancel { attempt: running, reason: reason.to_owned() });
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(Refusal::Terminal { state }) => Err(Error::Finished { task: task.clone(), state }),
            Err(refusal) => Err(refused(&AttemptRef { task_id: task.clone(), epoch: facts.epoch }, refusal)),
        }
    }

    async fn retry(&mut self, task: &TaskId) -> Result<(), Error> {
        let record = self.store.requeue_finished(task, unix_ms()).await.map_err(|e| match e {
            store::Error::NotQueued { task, state } => Error::NotFinished { task, state },
            store::Error::NotFound(task) => Error::NotFound(task),
            other => Error::Store(other),
        })?;
        info!(task = %task, "finished task queued again by an operator");
        self.queue.push(record.pool, record.id, 0, unix_ms());
        Ok(())
    }

    async fn explain(&self, task: &TaskId) -> Result<super::Explanation, Error> {
        use super::Why;
        if let Some(lease) = self.leases.get(task) {
            let worker = lease.worker.clone();
            let why = if lease.cancel_deadline.is_some() {
                Why::Cancelling { worker }
            } else if lease.state == TaskState::Assigned {
                Why::Assigned { worker }
            } else {
                Why::Running { worker }
            };
            return Ok(super::Explanation { state: lease.state, why });
        }
        let (record, _) = self.store.task(task).await?.ok_or_else(|| Error::NotFound(task.clone()))?;
        let why = match self.queue.waiting(task) {
            Some(Some(not_before_ms)) => Why::Backoff { not_before_ms },
            Some(None) => {
                let serving: Vec<&Session> =
                    self.sessions.values().filter(|s| s.hello.pools.contains(&record.pool)).collect();
                if serving.is_empty() {
                    Why::NoAgentForPool
                } else if serving.iter().all(|s| s.draining) {
                    Why::AgentsDraining
                } else if serving.iter().all(|s| s.draining || s.credits == 0) {
                    Why::AllSlotsBusy
                } else {
                    Why::WaitingItsTurn
                }
            }
            None if record.state.is_terminal() => Why::Finished,
            None => Why::WaitingItsTurn,
        };
        Ok(super::Explanation { state: record.state, why })
    }

    fn drain(&mut self, worker: &WorkerId) -> Result<(), Error> {
        let session = self.sessions.get_mut(worker).ok_or_else(|| Error::NoSuchWorker(worker.clone()))?;
        session.draining = true;
        info!(worker = %worker, "drain requested: no new work for this agent");
        self.send(worker, AgentCommand::Drain { reason: "drain requested by an operator".into() });
        Ok(())
    }

    async fn disconnected(&mut self, worker: &WorkerId, session: SessionId) {
        if self.current(worker, session).is_none() {
            return;
        }
        self.sessions.remove(worker);
        self.metrics.set_connected_agents(self.sessions.len());
        info!(
            worker = %worker, session = %session, held = self.leases.count_of_worker(worker),
            "agent disconnected; its leases wait one lease TTL for it to come back"
        );
        if let Err(e) = self.store.worker_disconnected(worker, unix_ms()).await {
            warn!(worker = %worker, error = %e, "could not record the disconnect");
        }
    }

    /// Expires leases and deadlines, closes silent sessions, wakes backed-off tasks, persists heartbeats.
    async fn sweep(&mut self) {
        let now = Instant::now();
        let ttl = self.config.lease_ttl;
        let silent = |liveness: &HashMap<WorkerId, (Instant, i64)>, worker: &WorkerId| {
            liveness.get(worker).is_none_or(|(seen, _)| *seen + ttl <= now)
        };
        let mut due = Vec::new();
        for (task, lease) in self.leases.iter() {
            if lease.cancel_deadline.is_some_and(|d| d <= now) {
                due.push((task.clone(), None));
            } else if lease.ack_deadline.is_some_and(|d| d <= now) {
                due.push((task.clone(), Some(Loss::NoAck)));
            } else if silent(&self.liveness, &lease.worker) {
                due.push((task.clone(), Some(Loss::LeaseExpired)));
            }
        }
        for (task, loss) in due {
            match loss {
                Some(loss) => self.lose(&task, loss).await,
                None => self.cancel_timed_out(&task).await,
            }
        }
        let quiet: Vec<WorkerId> = self.sessions.keys().filter(|w| silent(&self.liveness, w)).cloned().collect();
        for worker in quiet {
            if let Some(session) = self.sessions.remove(&worker) {
                self.metrics.set_connected_agents(self.sessions.len());
                warn!(worker = %worker, ttl = ?ttl, "agent silent for a lease TTL: closing its session");
                session.kick.cancel();
                let _ = self.store.worker_disconnected(&worker, unix_ms()).await;
            }
        }
        let leases = &self.leases;
        let sessions = &self.sessions;
        self.liveness.retain(|w, _| sessions.contains_key(w) || leases.count_of_worker(w) > 0);
        self.queue.promote_due(unix_ms());
        self.commit_heartbeats().await;
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

    /// Group commit: one transaction for every live attempt whose agent was heard from since the last commit.
    async fn commit_heartbeats(&mut self) {
        let mut beats = Vec::new();
        for worker in self.heard.drain() {
            let Some((_, at_ms)) = self.liveness.get(&worker) else { continue };
            for task in self.leases.of_worker(&worker) {
                if let Some(lease) = self.leases.get(&task) {
                    beats.push((lease.attempt(&task), *at_ms));
                }
            }
        }
        if let Err(e) = self.store.record_heartbeats(&beats).await {
            warn!(error = %e, count = beats.len(), "could not persist heartbeats");
        }
    }

    /// Commits the turn: records submitted tasks, starts and ends attempts, grants queued tasks to agents with
    /// credit — all in one transaction — then answers, and sends the assignments. If the commit fails nothing
    /// of the turn happened: every answer says so, and queues and leases are reloaded from the store.
    async fn flush(&mut self) {
        let mut plan = std::mem::take(&mut self.plan);
        let picks = self.pick();
        if !plan.has_writes() && picks.is_empty() {
            plan.settle(Vec::new(), None);
            return;
        }
        let turn = store::Turn {
            new_tasks: std::mem::take(&mut plan.new_tasks),
            starts: std::mem::take(&mut plan.starts),
            ends: std::mem::take(&mut plan.ends),
            grants: picks.iter().map(|p| (p.task.clone(), p.worker.clone())).collect(),
        };
        match self.store.write_turn(turn, unix_ms()).await {
            Ok(written) => {
                for (record, created) in &written.submitted {
                    if *created {
                        info!(task = %record.id, pool = %record.pool, task_name = %record.task_name, "task queued");
                    } else {
                        info!(task = %record.id, state = %record.state, "duplicate submit of a known task ignored");
                        if record.state != TaskState::Queued {
                            // Queued here when it was submitted; the store already had it, finished.
                            self.queue.remove(&record.id);
                        }
                    }
                }
                plan.settle(written.submitted, None);
                self.announce(picks, written.granted);
            }
            Err(e) => {
                error!(error = %e, "could not commit the turn; reloading queues and leases from the store");
                for pick in &picks {
                    if let Some(session) = self.sessions.get_mut(&pick.worker) {
                        session.credits = session.credits.saturating_add(1);
                    }
                }
                plan.settle(Vec::new(), Some(&e.to_string()));
                self.resync().await;
            }
        }
    }

    /// Chooses agents for ready tasks until either runs out, taking the tasks off the queue and the credits
    /// off the agents.
    fn pick(&mut self) -> Vec<Pick> {
        let mut picks = Vec::new();
        for pool in self.queue.ready_pools() {
            while self.queue.front(&pool).is_some() {
                let worker = {
                    let candidates: Vec<Candidate<'_>> = self
                        .sessions
                        .values()
                        .map(|s| Candidate {
                            worker_id: &s.hello.worker_id,
                            pools: &s.hello.pools,
                            credits: s.credits,
                            draining: s.draining,
                        })
                        .collect();
                    match policy::choose(&pool, &candidates) {
                        Some(index) => candidates[index].worker_id.clone(),
                        None => break,
                    }
                };
                let Some((task, waited)) = self.queue.pop_front(&pool) else { break };
                if let Some(session) = self.sessions.get_mut(&worker) {
                    session.credits = session.credits.saturating_sub(1);
                }
                picks.push(Pick { task, worker, waited, picked: Instant::now() });
            }
        }
        picks
    }

    /// After the commit: leases for the grants, Assigns on the agents' streams. A pick the store did not grant
    /// (the task was no longer queued) gives its credit back.
    fn announce(&mut self, picks: Vec<Pick>, grants: Vec<store::Grant>) {
        let mut grants: HashMap<TaskId, store::Grant> = grants.into_iter().map(|g| (g.task.id.clone(), g)).collect();
        for pick in picks {
            let Some(grant) = grants.remove(&pick.task) else {
                debug!(task = %pick.task, "queued entry no longer queued; dropped");
                if let Some(session) = self.sessions.get_mut(&pick.worker) {
                    session.credits = session.credits.saturating_add(1);
                }
                continue;
            };
            // Queued → durably granted (the Assign goes out right after).
            self.metrics.granted((pick.waited + pick.picked.elapsed()).as_secs_f64());
            let task = grant.task;
            let worker = pick.worker;
            self.leases.insert(
                task.id.clone(),
                Lease {
                    worker: worker.clone(),
                    pool: task.pool.clone(),
                    task_name: task.task_name.clone(),
                    epoch: task.epoch,
                    state: TaskState::Assigned,
                    attempts: task.attempts,
                    ack_deadline: Some(Instant::now() + self.config.ack_deadline),
                    cancel_deadline: None,
                },
            );
            let attempt = AttemptRef { task_id: task.id.clone(), epoch: task.epoch };
            info!(worker = %worker, attempt = %attempt, number = grant.attempt_number, "task assigned");
            let command = AgentCommand::Assign(Assignment {
                attempt,
                task_name: task.task_name,
                args: task.args,
                pool: task.pool,
                attempt_number: grant.attempt_number,
                deadline_unix_ms: self.config.task_timeout.map(|t| unix_ms() + t.as_millis() as i64),
            });
            self.send(&worker, command);
        }
    }

    /// After a failed commit: the store is the truth again. Held tasks keep (or get) the reconnect grace.
    async fn resync(&mut self) {
        match rebuild(&self.store, &self.config).await {
            Ok((queue, leases)) => {
                let now = (Instant::now(), unix_ms());
                for (_, lease) in leases.iter() {
                    self.liveness.entry(lease.worker.clone()).or_insert(now);
                }
                self.queue = queue;
                self.leases = leases;
            }
            Err(e) => error!(error = %e, "could not reload from the store; the next turn tries again"),
        }
    }

    async fn list_workers(&self) -> Result<Vec<WorkerView>, Error> {
        let stored = self.store.workers().await?;
        Ok(stored
            .into_iter()
            .map(|record| {
                let used = self.leases.count_of_worker(&record.seen.worker_id) as u32;
                match self.sessions.get(&record.seen.worker_id) {
                    Some(s) => WorkerView {
                        worker_id: s.hello.worker_id.clone(),
                        pools: s.hello.pools.clone(),
                        slots: s.hello.slots,
                        slots_used: used,
                        version: s.hello.version.clone(),
                        state: if s.draining { WorkerState::Draining } else { WorkerState::Ready },
                        connected_since_ms: Some(s.connected_since_ms),
                        last_seen_ms: self.liveness.get(&s.hello.worker_id).map_or(record.last_seen_ms, |l| l.1),
                        labels: s.hello.labels.clone(),
                    },
                    None => WorkerView {
                        worker_id: record.seen.worker_id,
                        pools: record.seen.pools,
                        slots: record.seen.slots,
                        slots_used: used,
                        version: record.seen.version,
                        state: WorkerState::Disconnected,
                        connected_since_ms: None,
                        last_seen_ms: record.last_seen_ms,
                        labels: record.seen.labels,
                    },
                }
            })
            .collect())
    }
}
