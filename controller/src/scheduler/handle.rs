//! The handle every edge uses to talk to the engine (`Scheduler`), and the events it sends. Each method hands one
//! event over and awaits (or returns) its answer; it never decides anything itself.

use outpost_common::ids::{AttemptRef, PoolId, TaskId, WorkerId};
use outpost_common::venv::{VenvKey, VenvSpec};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{
    AgentCommand, AgentHello, AttemptResult, Config, Demand, Error, Explanation, HeldVenv, PoolCapacity, SessionId,
    Welcome, WorkerView, engine,
};
use crate::store::{Audit, NewTask, Store, TaskRecord};

/// Messages from the handle to the engine.
pub(super) enum Event {
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
        Ok((Scheduler { events, config }, handle))
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

    pub async fn list_workers(&self) -> Result<Vec<WorkerView>, Error> {
        self.call(|reply| Event::ListWorkers { reply }).await
    }
}
