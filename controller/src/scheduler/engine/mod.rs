//! The engine actor: the single owner of sessions, leases and queues. Every decision that changes who runs what
//! is made here, one event at a time, by the pure rules of `lifecycle`, and made durable in the store before it
//! is announced. Events waiting together form a turn whose changes are committed in one transaction (group
//! commit); answers, assignments and cancels go out only after that commit. A periodic sweep expires leases,
//! revokes unacknowledged assignments, times out cancels, wakes backed-off tasks and persists heartbeats.
//!
//! The concerns live in their own files: `sessions.rs` (agents coming and going, liveness), `tasks.rs` (the life
//! cycle applied: acks, results, losses, cancels, retries), `dispatch.rs` (placement and grants), `venvs.rs` (warm-up requests), `views.rs`
//! (read models for the admin API and intake). This file holds the loop, the turn and its commit.

mod dispatch;
mod sessions;
mod tasks;
mod venvs;
mod views;

use std::collections::{BTreeMap, HashMap, HashSet};

use outpost_common::clock::unix_ms;
use outpost_common::ids::{TaskId, WorkerId};
use outpost_common::task::TaskState;
use outpost_common::venv::VenvSpec;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::handle::Event;
use super::leases::{Lease, Leases};
use super::queue::Queue;
use super::turn::Plan;
use super::{AgentCommand, AgentHello, Config, Error, SessionId};
use crate::metrics::Metrics;
use crate::store::{self, Store};

/// The most events handled in one go before the engine looks at its commit and timers again.
const MAX_TURN: usize = 1024;

/// The commit in flight, awaited (only polled while there is one).
async fn committed(in_flight: &mut Option<InFlight>) -> Result<store::TurnWritten, store::Error> {
    match in_flight.as_mut() {
        Some(in_flight) => (&mut in_flight.commit).await,
        None => std::future::pending().await,
    }
}

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
    /// This turn's changes, handed to the writer by the next `start_commit`.
    plan: Plan,
    /// The turn being committed (at most one at a time).
    in_flight: Option<InFlight>,
}

/// A turn handed to the writer: resolves once it committed or failed.
type Commit =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<store::TurnWritten, store::Error>> + Send + Sync>>;

/// A turn being committed: the writer's answer to come, and what waits for it — the turn's answers and commands,
/// and the picks it grants.
struct InFlight {
    commit: Commit,
    plan: Plan,
    picks: Vec<dispatch::Pick>,
}

/// Queues and leases as the store has them. Held tasks get one lease TTL (and an unacknowledged one at least
/// the ack deadline) from now.
async fn rebuild(store: &Store, config: &Config) -> Result<(Queue, Leases), Error> {
    let now = Instant::now();
    let now_ms = unix_ms();
    let mut queue = Queue::default();
    let queued = store.queued_tasks().await?;
    for task in &queued {
        let venv = VenvSpec::key_of_task(&task.request.args);
        queue.push(task.request.pool.clone(), task.request.id.clone(), venv, task.not_before_ms, now_ms);
    }
    let mut leases = Leases::default();
    let held = store.held_tasks().await?;
    for held_task in &held {
        let task = &held_task.task;
        let ack_window = config.ack_deadline.max(config.lease_ttl);
        leases.insert(
            task.request.id.clone(),
            Lease {
                worker: held_task.worker_id.clone(),
                pool: task.request.pool.clone(),
                task_name: task.request.task_name.clone(),
                epoch: task.epoch,
                state: task.state,
                attempts: task.attempts,
                ack_deadline: (task.state == TaskState::Assigned).then(|| now + ack_window),
                cancel_deadline: task.cancel_requested.then(|| now + config.cancel_timeout),
                venv: VenvSpec::key_of_task(&task.request.args),
                unlisted: 0,
            },
        );
    }
    info!(queued = queued.len(), held = held.len(), "loaded tasks; held tasks wait one lease TTL for their agents");
    Ok((queue, leases))
}

impl Event {
    /// Events that read the store: the engine commits what is pending before them, so they see it.
    fn reads_store(&self) -> bool {
        matches!(self, Event::ListWorkers { .. } | Event::Explain { .. })
    }
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
            in_flight: None,
        })
    }

    /// The loop: events form turns, and turn n+1 is decided while turn n commits (one commit in flight; the
    /// next starts as soon as it is done, with everything decided meanwhile).
    pub(super) async fn run(mut self, mut events: mpsc::Receiver<Event>, token: CancellationToken) {
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                written = committed(&mut self.in_flight), if self.in_flight.is_some() => {
                    self.settle_commit(written).await;
                }
                event = events.recv() => match event {
                    Some(event) => self.turn(event, &mut events).await,
                    None => break,
                },
                _ = sweep.tick() => self.sweep().await,
            }
            if self.in_flight.is_none() {
                self.start_commit();
            }
        }
        self.commit_heartbeats();
        self.flush().await;
        for session in self.sessions.values() {
            session.kick.cancel();
        }
        debug!("scheduler stopped");
    }

    /// Handles `first` and every event already waiting behind it (up to `MAX_TURN`); their changes join the
    /// plan the next commit writes. An event that reads the store is preceded by a commit of all decided so far.
    async fn turn(&mut self, first: Event, events: &mut mpsc::Receiver<Event>) {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(event) = next.take() {
            if event.reads_store() {
                self.flush().await;
            }
            self.handle(event).await;
            handled += 1;
            if handled < MAX_TURN {
                next = events.try_recv().ok();
            }
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Submit { task, venv, audit, reply } => {
                self.submit(task, venv, reply);
                self.plan.audit(audit, &Ok::<_, Error>(()));
            }
            Event::Connect { hello, commands, kick, reply } => {
                let welcome = self.connect(hello, commands, kick).await;
                self.plan.answer(reply, welcome);
            }
            Event::Credit { worker, session, credits } => self.credit(&worker, session, credits),
            Event::Ack { worker, session, attempt, reply } => {
                let acked = self.ack(&worker, session, &attempt).await;
                self.plan.answer(reply, acked);
            }
            Event::Seen { worker, session } => {
                if self.current(&worker, session).is_some() {
                    self.heard_from(&worker);
                }
            }
            Event::Heartbeat { worker, session, attempts } => self.heartbeat(&worker, session, &attempts).await,
            Event::Result { worker, session, attempt, outcome, reply } => {
                let recorded = self.result(&worker, session, &attempt, &outcome).await;
                self.plan.answer(reply, recorded);
            }
            Event::Draining { worker, session } => self.draining(&worker, session),
            Event::Disconnected { worker, session } => self.disconnected(&worker, session),
            Event::VenvsHeld { worker, session, venvs } => {
                if let Some(current) = self.current(&worker, session) {
                    current.hello.venvs = venvs;
                }
            }
            Event::Warm { pool, spec, agents, audit, reply } => {
                let asked = Ok(self.warm(&pool, spec, agents));
                self.plan.audit(audit, &asked);
                self.plan.answer(reply, asked);
            }
            Event::ListWorkers { reply } => {
                let _ = reply.send(self.list_workers().await);
            }
            Event::Cancel { task, reason, audit, reply } => {
                let cancelled = self.cancel(&task, &reason).await;
                self.plan.audit(audit, &cancelled);
                self.plan.answer(reply, cancelled);
            }
            Event::Drain { worker, audit, reply } => {
                let drained = self.drain(&worker);
                self.plan.audit(audit, &drained);
                self.plan.answer(reply, drained);
            }
            Event::Revoke { worker, reply } => {
                self.revoke(&worker).await;
                let _ = reply.send(Ok(()));
            }
            Event::Retry { task, audit, reply } => {
                let retried = self.retry(&task).await;
                self.plan.audit(audit, &retried);
                self.plan.answer(reply, retried);
            }
            Event::Explain { task, reply } => {
                let _ = reply.send(self.explain(&task).await);
            }
            Event::Capacity { reply } => {
                let _ = reply.send(Ok(self.capacity()));
            }
            Event::Demand { pool, reply } => {
                let _ = reply.send(Ok(self.demand(&pool)));
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

    /// Hands a command to a session now (only for what needs no commit: drains, and sends after a commit).
    fn send(&self, worker: &WorkerId, command: AgentCommand) {
        let Some(session) = self.sessions.get(worker) else { return };
        if session.commands.try_send(command).is_err() {
            // The session is closing or hopelessly behind; deadlines and lease expiry take over.
            warn!(worker = %worker, "could not hand a command to the session");
        }
    }

    /// Expires leases and deadlines, closes silent sessions, wakes backed-off tasks, persists heartbeats — all
    /// as parts of the turn the next flush commits.
    async fn sweep(&mut self) {
        let now = Instant::now();
        self.expire_leases(now).await;
        self.close_silent_sessions(now);
        self.queue.promote_due(unix_ms());
        self.commit_heartbeats();
    }

    /// Hands the turn to the writer: its changes in order and grants of queued tasks to agents with credit, all
    /// in one transaction. Answers, commands and assignments wait for `settle_commit`.
    fn start_commit(&mut self) {
        debug_assert!(self.in_flight.is_none(), "one commit at a time");
        let picks = self.pick();
        let mut plan = std::mem::take(&mut self.plan);
        let changes = plan.take_changes();
        if changes.is_empty() && picks.is_empty() {
            self.settle(plan, Vec::new());
            return;
        }
        let turn = store::Turn { changes, grants: picks.iter().map(|p| (p.task.clone(), p.worker.clone())).collect() };
        let commit = Box::pin(self.store.start_turn(turn, unix_ms()));
        self.in_flight = Some(InFlight { commit, plan, picks });
    }

    /// Commits everything decided so far and waits for it (before a read of the store, and at shutdown).
    async fn flush(&mut self) {
        for _ in 0..2 {
            if self.in_flight.is_none() {
                self.start_commit();
            }
            if self.in_flight.is_some() {
                let written = committed(&mut self.in_flight).await;
                self.settle_commit(written).await;
            }
        }
    }

    /// After a commit: answers, commands and assignments. If it failed, nothing of it happened — and nothing
    /// decided since either (that was decided on top of it): every answer of both says so, sessions opened in
    /// them are closed, and queues and leases are reloaded from the store. Agents with nothing in them are not
    /// touched.
    async fn settle_commit(&mut self, written: Result<store::TurnWritten, store::Error>) {
        let Some(InFlight { plan, picks, .. }) = self.in_flight.take() else { return };
        match written {
            Ok(written) => {
                for (record, created) in &written.submitted {
                    let task = &record.request;
                    if *created {
                        info!(task = %task.id, pool = %task.pool, task_name = %task.task_name, "task queued");
                    } else {
                        info!(task = %task.id, state = %record.state, "duplicate submit of a known task ignored");
                        if record.state != TaskState::Queued {
                            // Queued here when it was submitted; the store already had it, finished.
                            self.queue.remove(&task.id);
                        }
                    }
                }
                self.settle(plan, written.submitted);
                self.announce(picks, written.granted);
            }
            Err(e) => {
                error!(error = %e, "could not commit the turn; reloading queues and leases from the store");
                for pick in &picks {
                    if let Some(session) = self.sessions.get_mut(&pick.worker) {
                        session.credits = session.credits.saturating_add(1);
                    }
                }
                let failure = e.to_string();
                let undecided = std::mem::take(&mut self.plan);
                for mut failed in [plan, undecided] {
                    for (worker, id) in std::mem::take(&mut failed.opened) {
                        if self.sessions.get(&worker).is_some_and(|s| s.id == id)
                            && let Some(session) = self.sessions.remove(&worker)
                        {
                            session.kick.cancel();
                        }
                    }
                    failed.settle(Vec::new(), Some(&failure));
                }
                self.publish_fleet();
                self.resync().await;
            }
        }
    }

    /// After a commit: the answers, then the commands that waited for it.
    fn settle(&mut self, mut plan: Plan, submitted: Vec<(store::TaskRecord, bool)>) {
        let commands = plan.take_commands();
        plan.settle(submitted, None);
        for (worker, command) in commands {
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

    /// A task a caller asked about is unknown.
    fn not_found(task: &TaskId) -> Error {
        Error::NotFound(task.clone())
    }
}
