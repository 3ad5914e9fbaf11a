//! Placement and grants: after a turn's events, ready tasks are matched to agents with credit (the pure
//! `policy::choose`), granted in the turn's commit, and announced (leases, Assigns) only once it is durable.

use std::collections::HashMap;

use outpost_common::clock::unix_ms;
use outpost_common::ids::{AttemptRef, TaskId, WorkerId};
use outpost_common::task::TaskState;
use outpost_common::venv::VenvKey;
use tokio::time::Instant;
use tracing::{debug, info};

use super::Engine;
use crate::scheduler::leases::Lease;
use crate::scheduler::policy::{self, Candidate};
use crate::scheduler::{AgentCommand, Assignment};
use crate::store;

/// A queued task chosen for a worker in this turn, not yet granted.
pub(super) struct Pick {
    pub task: TaskId,
    pub worker: WorkerId,
    venv: Option<VenvKey>,
    /// Whether the worker holds that venv.
    warm: Option<bool>,
    /// How long it had been ready, and when it was picked (for the dispatch-latency histogram).
    waited: std::time::Duration,
    picked: Instant,
}

impl Engine {
    /// Chooses agents for ready tasks until either runs out, taking the tasks off the queue and the credits
    /// off the agents.
    pub(super) fn pick(&mut self) -> Vec<Pick> {
        let mut picks = Vec::new();
        for pool in self.queue.ready_pools() {
            while let Some(front) = self.queue.front(&pool) {
                let venv = self.queue.venv(front);
                let worker = {
                    let candidates: Vec<Candidate<'_>> = self
                        .sessions
                        .values()
                        .map(|s| Candidate {
                            worker_id: &s.hello.worker_id,
                            pools: &s.hello.pools,
                            credits: s.credits,
                            draining: s.draining,
                            warm: venv.is_some_and(|key| s.hello.venvs.iter().any(|v| v.key == *key)),
                        })
                        .collect();
                    match policy::choose(&pool, &candidates) {
                        Some(index) if candidates[index].warm => (candidates[index].worker_id.clone(), Some(true)),
                        Some(_)
                            if policy::wait_for_warm(
                                &pool,
                                &candidates,
                                self.queue.ready_for(front),
                                self.config.warm_wait,
                            ) =>
                        {
                            break; // the pool waits (in order) for the warm agent, within --warm-wait
                        }
                        Some(index) => (candidates[index].worker_id.clone(), venv.map(|_| false)),
                        None => break,
                    }
                };
                let (worker, warm) = worker;
                let Some((task, waited, venv)) = self.queue.pop_front(&pool) else { break };
                if let Some(session) = self.sessions.get_mut(&worker) {
                    session.credits = session.credits.saturating_sub(1);
                }
                picks.push(Pick { task, worker, venv, warm, waited, picked: Instant::now() });
            }
        }
        picks
    }

    /// After the commit: leases for the grants, Assigns on the agents' streams. A pick the store did not grant
    /// (the task was no longer queued) gives its credit back.
    pub(super) fn announce(&mut self, picks: Vec<Pick>, grants: Vec<store::Grant>) {
        let mut grants: HashMap<TaskId, store::Grant> =
            grants.into_iter().map(|g| (g.task.request.id.clone(), g)).collect();
        for pick in picks {
            let Some(grant) = grants.remove(&pick.task) else {
                debug!(task = %pick.task, "queued entry no longer queued; dropped");
                if let Some(session) = self.sessions.get_mut(&pick.worker) {
                    session.credits = session.credits.saturating_add(1);
                }
                continue;
            };
            // Queued → durably granted (the Assign goes out right after).
            self.metrics.granted((pick.waited + pick.picked.elapsed()).as_secs_f64(), pick.warm);
            let task = grant.task;
            let worker = pick.worker;
            self.leases.insert(
                task.request.id.clone(),
                Lease {
                    worker: worker.clone(),
                    pool: task.request.pool.clone(),
                    task_name: task.request.task_name.clone(),
                    epoch: task.epoch,
                    state: TaskState::Assigned,
                    attempts: task.attempts,
                    ack_deadline: Some(Instant::now() + self.config.ack_deadline),
                    cancel_deadline: None,
                    venv: pick.venv,
                    unlisted: 0,
                },
            );
            let attempt = AttemptRef { task_id: task.request.id.clone(), epoch: task.epoch };
            let venv = pick.warm.map(|warm| if warm { "warm" } else { "cold" });
            info!(worker = %worker, attempt = %attempt, number = grant.attempt_number, venv, "task assigned");
            let command = AgentCommand::Assign(Assignment {
                attempt,
                task_name: task.request.task_name,
                args: task.request.args,
                pool: task.request.pool,
                attempt_number: grant.attempt_number,
                deadline_unix_ms: self
                    .config
                    .task_timeout
                    .map(|t| unix_ms().saturating_add(outpost_common::duration::signed_millis(t))),
            });
            self.send(&worker, command);
        }
    }
}
