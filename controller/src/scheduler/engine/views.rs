//! Read models: why a task is where it is, the workers as operators see them, capacity and demand per pool.
//! Reads only — from memory and the store; never changes anything.

use std::collections::BTreeMap;

use outpost_common::ids::{PoolId, TaskId, WorkerId};
use outpost_common::task::TaskState;
use outpost_common::venv::{VenvKey, VenvSpec};

use super::{Engine, Session};
use crate::scheduler::{Demand, Error, Explanation, PoolCapacity, Why, WorkerState, WorkerView};

impl Engine {
    pub(super) async fn explain(&self, task: &TaskId) -> Result<Explanation, Error> {
        if let Some(lease) = self.leases.get(task) {
            let worker = lease.worker.clone();
            let why = if lease.cancel_deadline.is_some() {
                Why::Cancelling { worker }
            } else if lease.state == TaskState::Assigned {
                Why::Assigned { worker }
            } else {
                Why::Running { worker }
            };
            let venv = lease.venv.clone();
            let warm_on = self.warm_on(&lease.pool, venv.as_ref());
            return Ok(Explanation { state: lease.state, why, venv, warm_on });
        }
        let (record, _) = self.store.task(task).await?.ok_or_else(|| Self::not_found(task))?;
        let why = match self.queue.waiting(task) {
            Some(Some(not_before_ms)) => Why::Backoff { not_before_ms },
            Some(None) => {
                let serving: Vec<&Session> =
                    self.sessions.values().filter(|s| s.hello.pools.contains(&record.request.pool)).collect();
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
        let venv = match self.queue.venv(task) {
            Some(key) => Some(key.clone()),
            None => VenvSpec::key_of_task(&record.request.args),
        };
        let warm_on = self.warm_on(&record.request.pool, venv.as_ref());
        Ok(Explanation { state: record.state, why, venv, warm_on })
    }

    /// Connected agents of `pool` that hold `venv`.
    fn warm_on(&self, pool: &PoolId, venv: Option<&VenvKey>) -> Vec<WorkerId> {
        let Some(key) = venv else { return Vec::new() };
        self.sessions
            .values()
            .filter(|s| s.hello.pools.contains(pool) && s.hello.venvs.iter().any(|v| v.key == *key))
            .map(|s| s.hello.worker_id.clone())
            .collect()
    }

    pub(super) async fn list_workers(&self) -> Result<Vec<WorkerView>, Error> {
        let stored = self.store.workers().await?;
        Ok(stored
            .into_iter()
            .map(|record| {
                let used = u32::try_from(self.leases.count_of_worker(&record.seen.worker_id)).unwrap_or(u32::MAX);
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
                        venvs: s.hello.venvs.clone(),
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
                        venvs: Vec::new(),
                    },
                }
            })
            .collect())
    }

    /// Connected agents and free slots per pool.
    /// The connected agents, in all and per pool (non-draining), as metrics.
    pub(super) fn publish_fleet(&self) {
        self.metrics.set_connected_agents(self.sessions.len());
        let pools: Vec<(String, u32)> = self.capacity().into_iter().map(|c| (c.pool.to_string(), c.agents)).collect();
        self.metrics.set_pool_agents(&pools);
    }

    pub(super) fn capacity(&self) -> Vec<PoolCapacity> {
        let mut pools: BTreeMap<PoolId, PoolCapacity> = BTreeMap::new();
        for session in self.sessions.values() {
            for pool in &session.hello.pools {
                let entry = pools.entry(pool.clone()).or_insert_with(|| PoolCapacity {
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
        pools.into_values().collect()
    }

    /// Free slots of the pool's agents and its ready tasks, for demand-driven intake.
    pub(super) fn demand(&self, pool: &PoolId) -> Demand {
        let serving = self.sessions.values().filter(|s| !s.draining && s.hello.pools.contains(pool));
        let (agents, free_slots) = serving.fold((0, 0), |(n, free), s| (n + 1, free + s.credits));
        let queued = u32::try_from(self.queue.ready_len(pool)).unwrap_or(u32::MAX);
        Demand { agents, free_slots, queued }
    }
}
