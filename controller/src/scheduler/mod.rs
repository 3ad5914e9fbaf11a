//! The lease engine: owns who runs what. Grants tasks to agents that asked for work (bumping the fencing epoch
//! in the same transaction), fences every message about an attempt by its epoch, and records results. One actor
//! task owns the in-memory state (sessions, queues); callers talk to it through [`Scheduler`]. It must never talk
//! to the network or know protobuf types: agents are reached through the [`AgentCommand`] channel their session
//! owns.

mod engine;
mod leases;
pub mod policy;
mod queue;
#[cfg(test)]
mod tests;
mod turn;

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_common::duration;

use outpost_common::ids::{AttemptRef, PoolId, TaskId, WorkerId};
use outpost_common::venv::{VenvKey, VenvSpec};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::lifecycle::RetryPolicy;
use crate::store::{self, AttemptRecord, Audit, NewTask, ResultRecord, Store, TaskFilter, TaskRecord};
use outpost_common::task::{Refusal, Refused, ResultStatus};

/// The engine's flags: timings it hands to agents and enforces, and the retry rules.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "scheduler")]
#[command(next_help_heading = "Leases and scheduling")]
pub struct Config {
    /// How often agents heartbeat.
    #[arg(long, env = "OUTPOST_HEARTBEAT_INTERVAL", value_parser = duration::parse, default_value = "5s")]
    pub heartbeat_interval: Duration,
    /// A lease expires when its agent is silent this long; also the reconnect grace after a restart.
    #[arg(long, env = "OUTPOST_LEASE_TTL", value_parser = duration::parse, default_value = "30s")]
    pub lease_ttl: Duration,
    /// Application-level keepalive cadence on agent streams, both ways.
    #[arg(long, env = "OUTPOST_KEEPALIVE_INTERVAL", value_parser = duration::parse, default_value = "15s")]
    pub keepalive_interval: Duration,
    /// An assignment not acknowledged within this time is revoked and re-queued.
    #[arg(long, env = "OUTPOST_ACK_DEADLINE", value_parser = duration::parse, default_value = "10s")]
    pub ack_deadline: Duration,
    /// A cancel the agent never confirms ends CANCELLED after this time.
    #[arg(long, env = "OUTPOST_CANCEL_TIMEOUT", value_parser = duration::parse, default_value = "60s")]
    pub cancel_timeout: Duration,
    /// How often leases, deadlines and backoffs are checked and heartbeats persisted (one transaction each time).
    #[arg(long, env = "OUTPOST_SWEEP_INTERVAL", value_parser = duration::parse, default_value = "500ms")]
    pub sweep_interval: Duration,
    /// Stop a run still going after this long; it ends TIMED_OUT (unset: no limit, as in DataHub).
    #[arg(long, env = "OUTPOST_TASK_TIMEOUT", value_parser = duration::parse)]
    pub task_timeout: Option<Duration>,
    /// How long a task that needs a pinned-version venv may wait for a busy agent that already holds it, instead
    /// of going to a free agent that would build it (0: never wait; a warm free agent is preferred either way).
    #[arg(long, env = "OUTPOST_WARM_WAIT", value_parser = duration::parse, default_value = "0s")]
    pub warm_wait: Duration,
    /// A running attempt its live agent leaves out of this many heartbeats in a row is lost (re-queued): the agent
    /// is not running it.
    #[arg(long, env = "OUTPOST_HEARTBEAT_MISSES", default_value_t = 3)]
    pub heartbeat_misses: u32,
    #[command(flatten)]
    pub retry: RetryPolicy,
}

impl Config {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--heartbeat-interval", self.heartbeat_interval)?;
        duration::positive("--lease-ttl", self.lease_ttl)?;
        duration::positive("--keepalive-interval", self.keepalive_interval)?;
        duration::positive("--ack-deadline", self.ack_deadline)?;
        duration::positive("--cancel-timeout", self.cancel_timeout)?;
        duration::positive("--sweep-interval", self.sweep_interval)?;
        if let Some(timeout) = self.task_timeout {
            duration::positive("--task-timeout", timeout)?;
        }
        duration::shorter("--heartbeat-interval", self.heartbeat_interval, "--lease-ttl", self.lease_ttl)?;
        self.retry.validate()
    }
}

/// What an agent reported at the end of an attempt.
#[derive(Clone, Debug)]
pub struct AttemptResult {
    pub status: ResultStatus,
    pub record: ResultRecord,
}

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

/// Identifies one agent session (a worker may reconnect; events of an old session are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// An agent's Hello, parsed and identity-checked.
#[derive(Clone, Debug)]
pub struct AgentHello {
    pub worker_id: WorkerId,
    pub pools: Vec<PoolId>,
    pub slots: u32,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub held: Vec<AttemptRef>,
    /// The ready venvs it holds.
    pub venvs: Vec<HeldVenv>,
}

/// A ready venv an agent holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldVenv {
    pub key: VenvKey,
    pub requirement: String,
    pub bytes: u64,
    pub last_used_ms: i64,
}

/// The engine's answer to a Hello.
#[derive(Clone, Debug)]
pub struct Welcome {
    pub session: SessionId,
    /// Held attempts the agent must stop (no longer its to run).
    pub cancel: Vec<AttemptRef>,
}

/// Work for an agent.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub attempt: AttemptRef,
    pub task_name: String,
    pub args: BTreeMap<String, String>,
    pub pool: PoolId,
    pub attempt_number: u32,
    /// Stop with TIMED_OUT at this time (Unix ms).
    pub deadline_unix_ms: Option<i64>,
}

/// What the engine asks of a connected agent.
#[derive(Clone, Debug)]
pub enum AgentCommand {
    Assign(Assignment),
    Cancel {
        attempt: AttemptRef,
        reason: String,
    },
    Drain {
        reason: String,
    },
    /// Build this venv in idle time.
    Warm(VenvSpec),
}

/// How much work a pool could start now, for demand-driven intake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Connected, non-draining agents serving the pool.
    pub agents: u32,
    /// Credits of connected, non-draining agents serving the pool.
    pub free_slots: u32,
    /// Tasks of the pool waiting in the queue (ready now).
    pub queued: u32,
}

/// Why a task is where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    NoAgentForPool,
    AgentsDraining,
    AllSlotsBusy,
    Backoff { not_before_ms: i64 },
    WaitingItsTurn,
    Assigned { worker: WorkerId },
    Running { worker: WorkerId },
    Cancelling { worker: WorkerId },
    Finished,
}

/// A task's state and why it is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub state: outpost_common::task::TaskState,
    pub why: Why,
    /// The pinned-version venv the task needs, and the connected agents of its pool that hold it now.
    pub venv: Option<VenvKey>,
    pub warm_on: Vec<WorkerId>,
}

impl Explanation {
    /// The explanation in words, as the admin API and the status page show it.
    pub fn describe(&self) -> String {
        let mut text = match &self.why {
            Why::NoAgentForPool => "no connected agent serves the task's pool".to_owned(),
            Why::AgentsDraining => "every agent serving the pool is draining".to_owned(),
            Why::AllSlotsBusy => "every agent serving the pool is busy (no free slot)".to_owned(),
            Why::Backoff { not_before_ms } => format!("waiting out a retry backoff until {not_before_ms} (Unix ms)"),
            Why::WaitingItsTurn => "queued behind older tasks of its pool".to_owned(),
            Why::Assigned { worker } => format!("granted to {worker}, waiting for its ack"),
            Why::Running { worker } => format!("running on {worker}"),
            Why::Cancelling { worker } => format!("cancel requested; waiting for {worker} to confirm"),
            Why::Finished => format!("finished as {}", self.state),
        };
        if let Some(key) = &self.venv {
            let holders: Vec<String> = self.warm_on.iter().map(ToString::to_string).collect();
            if holders.is_empty() {
                text.push_str(&format!("; needs venv {key}, which no connected agent of its pool holds yet"));
            } else {
                text.push_str(&format!("; needs venv {key}, held by {}", holders.join(", ")));
            }
        }
        text
    }
}

/// Connected agents of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolCapacity {
    pub pool: PoolId,
    /// Connected, not draining.
    pub agents: u32,
    pub draining: u32,
    pub free_slots: u32,
}

/// Where a worker is, as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    Ready,
    Draining,
    Disconnected,
}

/// One worker as the admin API shows it.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub worker_id: WorkerId,
    pub pools: Vec<PoolId>,
    pub slots: u32,
    pub slots_used: u32,
    pub version: String,
    pub state: WorkerState,
    pub connected_since_ms: Option<i64>,
    pub last_seen_ms: i64,
    pub labels: BTreeMap<String, String>,
    /// Ready venvs it holds (connected workers only).
    pub venvs: Vec<HeldVenv>,
}

/// Messages from the handle to the engine.
enum Event {
    Submit {
        task: NewTask,
        venv: Option<VenvKey>,
        audit: Option<Audit>,
        reply: oneshot::Sender<Result<(TaskRecord, bool), Error>>,
    },
    Connect {
        hello: AgentHello,
        commands: mpsc::Sender<AgentCommand>,
        kick: CancellationToken,
        reply: oneshot::Sender<Result<Welcome, Error>>,
    },
    Credit {
        worker: WorkerId,
        session: SessionId,
        credits: u32,
    },
    Ack {
        worker: WorkerId,
        session: SessionId,
        attempt: AttemptRef,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Seen {
        worker: WorkerId,
        session: SessionId,
    },
    Heartbeat {
        worker: WorkerId,
        session: SessionId,
        attempts: Vec<AttemptRef>,
    },
    Result {
        worker: WorkerId,
        session: SessionId,
        attempt: AttemptRef,
        outcome: AttemptResult,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Draining {
        worker: WorkerId,
        session: SessionId,
    },
    Disconnected {
        worker: WorkerId,
        session: SessionId,
    },
    VenvsHeld {
        worker: WorkerId,
        session: SessionId,
        venvs: Vec<HeldVenv>,
    },
    Warm {
        pool: PoolId,
        spec: VenvSpec,
        agents: u32,
        audit: Option<Audit>,
        reply: oneshot::Sender<Result<Vec<WorkerId>, Error>>,
    },
    ListWorkers {
        reply: oneshot::Sender<Result<Vec<WorkerView>, Error>>,
    },
    Cancel {
        task: TaskId,
        reason: String,
        audit: Option<Audit>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Drain {
        worker: WorkerId,
        audit: Option<Audit>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Revoke {
        worker: WorkerId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Demand {
        pool: PoolId,
        reply: oneshot::Sender<Result<Demand, Error>>,
    },
    Retry {
        task: TaskId,
        audit: Option<Audit>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Explain {
        task: TaskId,
        reply: oneshot::Sender<Result<Explanation, Error>>,
    },
    Capacity {
        reply: oneshot::Sender<Result<Vec<PoolCapacity>, Error>>,
    },
}

/// The engine's answer to an event it has been handed; await it with [`Answer::get`].
#[derive(Debug)]
pub struct Answer<T>(Option<oneshot::Receiver<Result<T, Error>>>);

impl<T> Answer<T> {
    pub async fn get(self) -> Result<T, Error> {
        match self.0 {
            Some(answer) => answer.await.map_err(|_| Error::ShuttingDown)?,
            None => Err(Error::ShuttingDown),
        }
    }
}

/// The handle every edge uses. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Scheduler {
    events: mpsc::Sender<Event>,
    store: Store,
    config: Config,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Event")
    }
}

impl Scheduler {
    /// Loads the queue from the store and starts the engine; it stops when `token` is cancelled.
    pub async fn start(
        store: Store,
        config: Config,
        metrics: crate::metrics::Metrics,
        token: CancellationToken,
    ) -> Result<(Scheduler, JoinHandle<()>), Error> {
        let (events, receiver) = mpsc::channel(4096);
        let engine = engine::Engine::load(store.clone(), config.clone(), metrics).await?;
        let handle = tokio::spawn(engine.run(receiver, token));
        Ok((Scheduler { events, store, config }, handle))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Hands an event to the engine now (so events of one caller keep their order) and returns its answer to
    /// await later: a caller can have many answers outstanding.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Event) -> Answer<T> {
        let (reply, answer) = oneshot::channel();
        match self.events.send(make(reply)).await {
            Ok(()) => Answer(Some(answer)),
            Err(_) => Answer(None),
        }
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Event) -> Result<T, Error> {
        self.ask(make).await.get().await
    }

    async fn tell(&self, event: Event) {
        // A closed engine means shutdown; the event no longer matters.
        let _ = self.events.send(event).await;
    }

    /// Takes a task in (idempotent on its id) and dispatches it when an agent can take it.
    pub async fn submit(&self, task: NewTask) -> Result<(TaskRecord, bool), Error> {
        self.submit_audited(task, None).await
    }

    /// The same for an operator: `audit` is recorded in the turn that records the task.
    pub async fn submit_audited(&self, task: NewTask, audit: Option<Audit>) -> Result<(TaskRecord, bool), Error> {
        // The venv the task needs is read from its recipe here, in the caller's task, not in the engine's turn.
        let venv = VenvSpec::key_of_task(&task.args);
        self.call(|reply| Event::Submit { task, venv, audit, reply }).await
    }

    /// Opens a session for an identity-checked agent. `commands` receives its work; `kick` is cancelled when the
    /// session is replaced by a newer one of the same worker.
    pub async fn connect(
        &self,
        hello: AgentHello,
        commands: mpsc::Sender<AgentCommand>,
        kick: CancellationToken,
    ) -> Result<Welcome, Error> {
        self.call(|reply| Event::Connect { hello, commands, kick, reply }).await
    }

    pub async fn credit(&self, worker: &WorkerId, session: SessionId, credits: u32) {
        self.tell(Event::Credit { worker: worker.clone(), session, credits }).await
    }

    /// The agent started an attempt. Returns once the engine has the event; the answer comes with its commit.
    pub async fn ack(&self, worker: &WorkerId, session: SessionId, attempt: AttemptRef) -> Answer<()> {
        self.ask(|reply| Event::Ack { worker: worker.clone(), session, attempt, reply }).await
    }

    /// The agent is alive (keepalive).
    pub async fn seen(&self, worker: &WorkerId, session: SessionId) {
        self.tell(Event::Seen { worker: worker.clone(), session }).await
    }

    /// The agent is alive and runs these attempts (a running attempt it stops listing is lost after
    /// `--heartbeat-misses` heartbeats).
    pub async fn heartbeat(&self, worker: &WorkerId, session: SessionId, attempts: Vec<AttemptRef>) {
        self.tell(Event::Heartbeat { worker: worker.clone(), session, attempts }).await
    }

    /// An attempt's result. Returns once the engine has the event; the answer comes when it is durable.
    pub async fn result(
        &self,
        worker: &WorkerId,
        session: SessionId,
        attempt: AttemptRef,
        outcome: AttemptResult,
    ) -> Answer<()> {
        self.ask(|reply| Event::Result { worker: worker.clone(), session, attempt, outcome, reply }).await
    }

    pub async fn draining(&self, worker: &WorkerId, session: SessionId) {
        self.tell(Event::Draining { worker: worker.clone(), session }).await
    }

    pub async fn disconnected(&self, worker: &WorkerId, session: SessionId) {
        self.tell(Event::Disconnected { worker: worker.clone(), session }).await
    }

    /// The ready venvs an agent holds now.
    pub async fn venvs_held(&self, worker: &WorkerId, session: SessionId, venvs: Vec<HeldVenv>) {
        self.tell(Event::VenvsHeld { worker: worker.clone(), session, venvs }).await
    }

    /// Asks up to `agents` (0: every) connected, non-draining agents of `pool` that do not hold the venv yet to
    /// build it in idle time; returns the workers asked.
    pub async fn warm(
        &self,
        pool: &PoolId,
        spec: VenvSpec,
        agents: u32,
        audit: Option<Audit>,
    ) -> Result<Vec<WorkerId>, Error> {
        self.call(|reply| Event::Warm { pool: pool.clone(), spec, agents, audit, reply }).await
    }

    /// Cancels a task: a queued one at once; a running one is fenced out (epoch bump) and its agent told to stop.
    /// An operator's cancel is recorded with `audit` in the same turn.
    pub async fn cancel(&self, task: &TaskId, reason: &str, audit: Option<Audit>) -> Result<(), Error> {
        self.call(|reply| Event::Cancel { task: task.clone(), reason: reason.to_owned(), audit, reply }).await
    }

    /// Stops granting work to a connected worker and tells it to drain; its running work finishes.
    pub async fn drain(&self, worker: &WorkerId, audit: Option<Audit>) -> Result<(), Error> {
        self.call(|reply| Event::Drain { worker: worker.clone(), audit, reply }).await
    }

    /// A revoked worker: its session (if any) is closed at once and everything it holds is lost now, as with an
    /// agent that died (retried elsewhere under the retry policy).
    pub async fn revoke(&self, worker: &WorkerId) -> Result<(), Error> {
        self.call(|reply| Event::Revoke { worker: worker.clone(), reply }).await
    }

    /// Free agent slots and waiting tasks of a pool.
    pub async fn demand(&self, pool: &PoolId) -> Result<Demand, Error> {
        self.call(|reply| Event::Demand { pool: pool.clone(), reply }).await
    }

    /// Runs a finished task again.
    pub async fn retry(&self, task: &TaskId, audit: Option<Audit>) -> Result<(), Error> {
        self.call(|reply| Event::Retry { task: task.clone(), audit, reply }).await
    }

    /// Why a task is where it is.
    pub async fn explain(&self, task: &TaskId) -> Result<Explanation, Error> {
        self.call(|reply| Event::Explain { task: task.clone(), reply }).await
    }

    /// Connected agents and free slots per pool.
    pub async fn capacity(&self) -> Result<Vec<PoolCapacity>, Error> {
        self.call(|reply| Event::Capacity { reply }).await
    }

    /// Queued/running tasks and SQS messages in hand per pool.
    pub async fn backlogs(&self) -> Result<Vec<store::PoolBacklog>, Error> {
        Ok(self.store.pool_backlogs().await?)
    }

    /// GMS writes waiting.
    pub async fn outbox_depth(&self) -> Result<u64, Error> {
        Ok(self.store.outbox_depth().await?)
    }

    pub async fn list_workers(&self) -> Result<Vec<WorkerView>, Error> {
        self.call(|reply| Event::ListWorkers { reply }).await
    }

    /// One task and its attempts.
    pub async fn task(&self, id: &TaskId) -> Result<(TaskRecord, Vec<AttemptRecord>), Error> {
        self.store.task(id).await?.ok_or_else(|| Error::NotFound(id.clone()))
    }

    /// Quarantined SQS messages, newest first.
    pub async fn quarantined(&self, limit: u32) -> Result<Vec<store::Quarantined>, Error> {
        Ok(self.store.quarantined(limit).await?)
    }

    /// One quarantined message.
    pub async fn quarantined_message(&self, id: i64) -> Result<Option<store::Quarantined>, Error> {
        Ok(self.store.quarantined_message(id).await?)
    }

    /// Notes that a quarantined message was replayed.
    pub async fn mark_replayed(&self, id: i64, audit: Option<Audit>) -> Result<(), Error> {
        Ok(self.store.mark_replayed(id, outpost_common::clock::unix_ms(), audit).await?)
    }

    /// Ids of tasks not yet finished.
    pub async fn live_task_ids(&self) -> Result<Vec<TaskId>, Error> {
        Ok(self.store.live_task_ids().await?)
    }

    /// Unfinished tasks whose claim at GMS passed to another controller.
    pub async fn lost_claims(&self) -> Result<Vec<TaskId>, Error> {
        Ok(self.store.lost_claims().await?)
    }

    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, Error> {
        Ok(self.store.list_tasks(filter).await?)
    }
}
