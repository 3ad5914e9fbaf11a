//! Agents coming and going: sessions, credit, drain, liveness and its persistence (heartbeats). Worker rows are
//! changes of the turn; a session opened in a turn that does not commit is closed again.

use std::collections::{HashMap, HashSet};

use outpost_common::clock::unix_ms;
use outpost_common::ids::{AttemptRef, PoolId, WorkerId};
use outpost_common::task::TaskState;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Engine, Session};
use crate::lifecycle::Loss;
use crate::scheduler::{AgentCommand, AgentHello, Error, SessionId, Welcome};
use crate::store::{Change, WorkerSeen};

impl Engine {
    pub(super) async fn connect(
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
        self.plan.change(Change::WorkerConnected(WorkerSeen {
            worker_id: worker.clone(),
            pools: hello.pools.clone(),
            slots: hello.slots,
            version: hello.version.clone(),
            labels: hello.labels.clone(),
        }));
        self.plan.opened.push((worker.clone(), id));
        self.metrics.leases_reclaimed(kept.len());
        info!(
            worker = %worker, session = %id, slots = hello.slots,
            pools = ?hello.pools.iter().map(PoolId::as_str).collect::<Vec<_>>(),
            reclaimed = kept.len(), refused = cancel.len(), "agent connected"
        );
        self.sessions.insert(
            worker,
            Session { id, hello, commands, kick, credits: 0, draining: false, connected_since_ms: now_ms },
        );
        self.publish_fleet();
        Ok(Welcome { session: id, cancel })
    }

    /// More credit from an agent, never beyond its declared slots less what it holds (or is being granted): an
    /// agent cannot talk itself into more work than it said it can run.
    pub(super) fn credit(&mut self, worker: &WorkerId, session: SessionId, credits: u32) {
        let granting =
            self.in_flight.as_ref().map_or(0, |f| f.picks.iter().filter(|pick| &pick.worker == worker).count());
        let held = u32::try_from(self.leases.count_of_worker(worker) + granting).unwrap_or(u32::MAX);
        if let Some(s) = self.current(worker, session) {
            let room = s.hello.slots.saturating_sub(held);
            s.credits = s.credits.saturating_add(credits).min(room);
            self.heard_from(worker);
        }
    }

    /// A heartbeat: the agent is alive, and runs `attempts`. A running attempt (acknowledged, no cancel pending)
    /// that `--heartbeat-misses` heartbeats in a row leave out is lost: the agent is not running it, whatever the
    /// reason, and its liveness must not keep the task's lease forever.
    pub(super) async fn heartbeat(&mut self, worker: &WorkerId, session: SessionId, attempts: &[AttemptRef]) {
        if self.current(worker, session).is_none() {
            return;
        }
        self.heard_from(worker);
        let misses = self.config.heartbeat_misses.max(1);
        let mut unlisted = Vec::new();
        for task in self.leases.of_worker(worker) {
            let Some(lease) = self.leases.get_mut(&task) else { continue };
            if lease.state != TaskState::Running || lease.cancel_deadline.is_some() {
                continue;
            }
            if attempts.iter().any(|a| a.task_id == task && a.epoch == lease.attempt_epoch()) {
                lease.unlisted = 0;
                continue;
            }
            lease.unlisted += 1;
            if lease.unlisted >= misses {
                unlisted.push(task);
            }
        }
        for task in unlisted {
            warn!(worker = %worker, task = %task, misses, "the agent's heartbeats no longer list a running attempt");
            self.lose(&task, Loss::NotRunning).await;
        }
    }

    pub(super) fn draining(&mut self, worker: &WorkerId, session: SessionId) {
        if let Some(s) = self.current(worker, session) {
            info!(worker = %worker, "agent draining: no new work");
            s.draining = true;
            self.heard_from(worker);
            self.publish_fleet();
        }
    }

    pub(super) fn drain(&mut self, worker: &WorkerId) -> Result<(), Error> {
        let session = self.sessions.get_mut(worker).ok_or_else(|| Error::NoSuchWorker(worker.clone()))?;
        session.draining = true;
        self.publish_fleet();
        info!(worker = %worker, "drain requested: no new work for this agent");
        self.send(worker, AgentCommand::Drain { reason: "drain requested by an operator".into() });
        Ok(())
    }

    /// Closes a revoked worker's session and loses what it holds at once (no lease TTL to wait: it may not come
    /// back).
    pub(super) async fn revoke(&mut self, worker: &WorkerId) {
        if let Some(session) = self.sessions.remove(worker) {
            session.kick.cancel();
            self.publish_fleet();
            self.plan.change(Change::WorkerDisconnected(worker.clone()));
        }
        let held = self.leases.of_worker(worker);
        warn!(worker = %worker, held = held.len(), "worker revoked: session closed, its work goes elsewhere");
        for task in held {
            self.lose(&task, Loss::LeaseExpired).await;
        }
    }

    pub(super) fn disconnected(&mut self, worker: &WorkerId, session: SessionId) {
        if self.current(worker, session).is_none() {
            return;
        }
        self.sessions.remove(worker);
        self.publish_fleet();
        info!(
            worker = %worker, session = %session, held = self.leases.count_of_worker(worker),
            "agent disconnected; its leases wait one lease TTL for it to come back"
        );
        self.plan.change(Change::WorkerDisconnected(worker.clone()));
    }

    /// Closes the sessions of agents silent for a lease TTL, and forgets the liveness of workers that neither
    /// are connected nor hold anything.
    pub(super) fn close_silent_sessions(&mut self, now: Instant) {
        let ttl = self.config.lease_ttl;
        let quiet: Vec<WorkerId> =
            self.sessions.keys().filter(|w| is_silent(&self.liveness, w, ttl, now)).cloned().collect();
        for worker in quiet {
            if let Some(session) = self.sessions.remove(&worker) {
                self.publish_fleet();
                warn!(worker = %worker, ttl = ?ttl, "agent silent for a lease TTL: closing its session");
                session.kick.cancel();
                self.plan.change(Change::WorkerDisconnected(worker));
            }
        }
        let leases = &self.leases;
        let sessions = &self.sessions;
        self.liveness.retain(|w, _| sessions.contains_key(w) || leases.count_of_worker(w) > 0);
    }

    /// Group commit of liveness: every live attempt whose agent was heard from since the last one, as one
    /// change of the turn.
    pub(super) fn commit_heartbeats(&mut self) {
        let mut beats = Vec::new();
        for worker in self.heard.drain() {
            let Some((_, at_ms)) = self.liveness.get(&worker) else { continue };
            for task in self.leases.of_worker(&worker) {
                if let Some(lease) = self.leases.get(&task) {
                    beats.push((lease.attempt(&task), *at_ms));
                }
            }
        }
        if !beats.is_empty() {
            self.plan.change(Change::Heartbeats(beats));
        }
    }
}

/// Whether `worker` has been silent for `ttl` at `now`.
pub(super) fn is_silent(
    liveness: &HashMap<WorkerId, (Instant, i64)>,
    worker: &WorkerId,
    ttl: std::time::Duration,
    now: Instant,
) -> bool {
    liveness.get(worker).is_none_or(|(seen, _)| *seen + ttl <= now)
}
