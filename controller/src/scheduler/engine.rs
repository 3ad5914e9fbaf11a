//! The engine actor: the single owner of sessions and per-pool queues. Every decision that changes who runs
//! what is made here, one event at a time, and made durable in the store before it is announced.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use outpost_common::clock::unix_ms;
use outpost_common::ids::{AttemptRef, PoolId, TaskId, WorkerId};
use outpost_common::task::TaskState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::policy::{self, Candidate};
use super::{AgentCommand, AgentHello, Assignment, Error, Event, SessionId, Welcome, WorkerState, WorkerView};
use crate::store::{self, AttemptOutcome, NewTask, Store, TaskRecord, WorkerSeen};

/// One connected agent.
struct Session {
    id: SessionId,
    hello: AgentHello,
    commands: mpsc::Sender<AgentCommand>,
    kick: CancellationToken,
    credits: u32,
    draining: bool,
    /// Attempts granted to this agent and not yet finished.
    held: HashSet<TaskId>,
    connected_since_ms: i64,
    last_seen_ms: i64,
}

pub(super) struct Engine {
    store: Store,
    sessions: BTreeMap<WorkerId, Session>,
    /// QUEUED tasks per pool, oldest first.
    queues: HashMap<PoolId, VecDeque<TaskId>>,
    next_session: u64,
}

impl Engine {
    pub(super) async fn load(store: Store) -> Result<Engine, Error> {
        store.all_workers_disconnected().await?;
        let mut queues: HashMap<PoolId, VecDeque<TaskId>> = HashMap::new();
        let queued = store.queued_tasks().await?;
        info!(queued = queued.len(), "loaded queued tasks");
        for task in queued {
            queues.entry(task.pool).or_default().push_back(task.id);
        }
        Ok(Engine { store, sessions: BTreeMap::new(), queues, next_session: 1 })
    }

    pub(super) async fn run(mut self, mut events: mpsc::Receiver<Event>, token: CancellationToken) {
        loop {
            let event = tokio::select! {
                _ = token.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            self.handle(event).await;
        }
        for session in self.sessions.values() {
            session.kick.cancel();
        }
        debug!("scheduler stopped");
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Submit { task, reply } => {
                let _ = reply.send(self.submit(task).await);
            }
            Event::Connect { hello, commands, kick, reply } => {
                let _ = reply.send(self.connect(hello, commands, kick).await);
            }
            Event::Credit { worker, session, credits } => {
                if let Some(s) = self.session_mut(&worker, session) {
                    s.credits = s.credits.saturating_add(credits);
                    s.last_seen_ms = unix_ms();
                    self.dispatch().await;
                }
            }
            Event::Ack { worker, session, attempt, reply } => {
                let _ = reply.send(self.ack(&worker, session, &attempt).await);
            }
            Event::Seen { worker, session } => {
                if let Some(s) = self.session_mut(&worker, session) {
                    s.last_seen_ms = unix_ms();
                }
            }
            Event::Result { worker, session, attempt, outcome, reply } => {
                let _ = reply.send(self.finish(&worker, session, &attempt, &outcome).await);
            }
            Event::Draining { worker, session } => {
                if let Some(s) = self.session_mut(&worker, session) {
                    info!(worker = %worker, "agent draining: no new work");
                    s.draining = true;
                }
            }
            Event::Disconnected { worker, session } => self.disconnected(&worker, session).await,
            Event::ListWorkers { reply } => {
                let _ = reply.send(self.list_workers().await);
            }
        }
    }

    fn session_mut(&mut self, worker: &WorkerId, session: SessionId) -> Option<&mut Session> {
        self.sessions.get_mut(worker).filter(|s| s.id == session)
    }

    async fn submit(&mut self, task: NewTask) -> Result<(TaskRecord, bool), Error> {
        let (record, created) = self.store.insert_task(&task, unix_ms()).await?;
        if created {
            info!(task = %record.id, pool = %record.pool, task_name = %record.task_name, "task queued");
            self.queues.entry(record.pool.clone()).or_default().push_back(record.id.clone());
            self.dispatch().await;
        } else {
            info!(task = %record.id, state = %record.state, "duplicate submit of a known task ignored");
        }
        Ok((record, created))
    }

    async fn connect(
        &mut self,
        hello: AgentHello,
        commands: mpsc::Sender<AgentCommand>,
        kick: CancellationToken,
    ) -> Result<Welcome, Error> {
        let now = unix_ms();
        let id = SessionId(self.next_session);
        self.next_session += 1;
        if let Some(old) = self.sessions.remove(&hello.worker_id) {
            info!(worker = %hello.worker_id, old_session = %old.id, "a newer session replaces the old one");
            old.kick.cancel();
        }
        // Re-claim held attempts whose epoch is still current and still this worker's.
        let mut held = HashSet::new();
        let mut cancel = Vec::new();
        for attempt in &hello.held {
            let keep = match self.store.task(&attempt.task_id).await? {
                Some((task, _)) => {
                    task.epoch == attempt.epoch
                        && task.worker_id.as_ref() == Some(&hello.worker_id)
                        && matches!(task.state, TaskState::Assigned | TaskState::Running)
                }
                None => false,
            };
            if keep {
                held.insert(attempt.task_id.clone());
            } else {
                cancel.push(attempt.clone());
            }
        }
        self.store
            .worker_connected(
                &WorkerSeen {
                    worker_id: hello.worker_id.clone(),
                    pools: hello.pools.clone(),
                    slots: hello.slots,
                    version: hello.version.clone(),
                    labels: hello.labels.clone(),
                },
                now,
            )
            .await?;
        info!(
            worker = %hello.worker_id, session = %id, slots = hello.slots,
            pools = ?hello.pools.iter().map(PoolId::as_str).collect::<Vec<_>>(),
            reclaimed = held.len(), refused = cancel.len(), "agent connected"
        );
        let worker = hello.worker_id.clone();
        self.sessions.insert(
            worker,
            Session {
                id,
                hello,
                commands,
                kick,
                credits: 0,
                draining: false,
                held,
                connected_since_ms: now,
                last_seen_ms: now,
            },
        );
        Ok(Welcome { session: id, cancel })
    }

    async fn ack(&mut self, worker: &WorkerId, session: SessionId, attempt: &AttemptRef) -> Result<(), Error> {
        if self.session_mut(worker, session).is_none() {
            return Err(Error::SessionGone);
        }
        self.store.start_attempt(attempt, worker, unix_ms()).await.map_err(|e| refusal(attempt, e))?;
        debug!(worker = %worker, attempt = %attempt, "attempt running");
        Ok(())
    }

    async fn finish(
        &mut self,
        worker: &WorkerId,
        session: SessionId,
        attempt: &AttemptRef,
        outcome: &AttemptOutcome,
    ) -> Result<(), Error> {
        let state = match self.store.finish_attempt(attempt, worker, outcome, unix_ms()).await {
            Ok(state) => state,
            // The same result sent again (e.g. after a reconnect): it is already recorded.
            Err(store::Error::AlreadyFinished { .. }) => return Ok(()),
            Err(e) => return Err(refusal(attempt, e)),
        };
        info!(worker = %worker, attempt = %attempt, status = %outcome.status, state = %state, "attempt finished");
        if let Some(s) = self.session_mut(worker, session) {
            s.held.remove(&attempt.task_id);
        }
        if state == TaskState::Queued {
            let (task, _) =
                self.store.task(&attempt.task_id).await?.ok_or_else(|| Error::NotFound(attempt.task_id.clone()))?;
            self.queues.entry(task.pool).or_default().push_front(task.id);
            self.dispatch().await;
        }
        Ok(())
    }

    async fn disconnected(&mut self, worker: &WorkerId, session: SessionId) {
        if self.session_mut(worker, session).is_none() {
            return;
        }
        let Some(gone) = self.sessions.remove(worker) else { return };
        info!(worker = %worker, session = %session, held = gone.held.len(), "agent disconnected");
        if let Err(e) = self.store.worker_disconnected(worker, unix_ms()).await {
            warn!(worker = %worker, error = %e, "could not record the disconnect");
        }
    }

    /// Grants queued tasks to agents with credit until either runs out.
    async fn dispatch(&mut self) {
        let pools: Vec<PoolId> = self.queues.iter().filter(|(_, q)| !q.is_empty()).map(|(p, _)| p.clone()).collect();
        for pool in pools {
            while let Some(task_id) = self.queues.get(&pool).and_then(|q| q.front()).cloned() {
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
                if let Some(queue) = self.queues.get_mut(&pool) {
                    queue.pop_front();
                }
                match self.store.grant(&task_id, &worker, unix_ms()).await {
                    Ok(grant) => self.announce(&worker, grant),
                    Err(store::Error::NotQueued { task, state }) => {
                        debug!(task = %task, state = %state, "queued entry no longer queued; dropped");
                    }
                    Err(e) => {
                        warn!(task = %task_id, error = %e, "grant failed; the task stays queued");
                        self.queues.entry(pool.clone()).or_default().push_front(task_id);
                        break;
                    }
                }
            }
        }
    }

    fn announce(&mut self, worker: &WorkerId, grant: store::Grant) {
        let Some(session) = self.sessions.get_mut(worker) else { return };
        session.credits -= 1;
        session.held.insert(grant.task.id.clone());
        let attempt = AttemptRef { task_id: grant.task.id.clone(), epoch: grant.task.epoch };
        info!(worker = %worker, attempt = %attempt, number = grant.attempt_number, "task assigned");
        let command = AgentCommand::Assign(Assignment {
            attempt,
            task_name: grant.task.task_name,
            args: grant.task.args,
            pool: grant.task.pool,
            attempt_number: grant.attempt_number,
        });
        if session.commands.try_send(command).is_err() {
            // The session's channel is closed or full: the agent is going away. The lease engine's expiry
            // takes the attempt back.
            warn!(worker = %worker, "could not hand the assignment to the session");
        }
    }

    async fn list_workers(&self) -> Result<Vec<WorkerView>, Error> {
        let stored = self.store.workers().await?;
        Ok(stored
            .into_iter()
            .map(|record| match self.sessions.get(&record.seen.worker_id) {
                Some(s) => WorkerView {
                    worker_id: s.hello.worker_id.clone(),
                    pools: s.hello.pools.clone(),
                    slots: s.hello.slots,
                    slots_used: s.held.len() as u32,
                    version: s.hello.version.clone(),
                    state: if s.draining { WorkerState::Draining } else { WorkerState::Ready },
                    connected_since_ms: Some(s.connected_since_ms),
                    last_seen_ms: s.last_seen_ms,
                    labels: s.hello.labels.clone(),
                },
                None => WorkerView {
                    worker_id: record.seen.worker_id,
                    pools: record.seen.pools,
                    slots: record.seen.slots,
                    slots_used: 0,
                    version: record.seen.version,
                    state: WorkerState::Disconnected,
                    connected_since_ms: None,
                    last_seen_ms: record.last_seen_ms,
                    labels: record.seen.labels,
                },
            })
            .collect())
    }
}

/// Turns a store refusal about an attempt into the engine's words.
fn refusal(attempt: &AttemptRef, error: store::Error) -> Error {
    match error {
        store::Error::StaleEpoch { current, .. } => Error::StaleEpoch { attempt: attempt.clone(), current },
        store::Error::WrongWorker { .. } | store::Error::AlreadyFinished { .. } => {
            Error::NotHeld { attempt: attempt.clone() }
        }
        store::Error::NotFound(task) => Error::NotFound(task),
        other => Error::Store(other),
    }
}
