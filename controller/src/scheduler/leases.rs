//! The lease table: which agent holds which task at which epoch, with its deadlines, indexed by worker. In
//! memory; the store holds the same facts (state ASSIGNED/RUNNING, epoch, worker, cancel request).

use std::collections::{HashMap, HashSet};

use outpost_common::ids::{AttemptRef, Epoch, PoolId, TaskId, WorkerId};
use outpost_common::task::TaskState;
use outpost_common::venv::VenvKey;
use tokio::time::Instant;

use crate::lifecycle::TaskFacts;

/// One task held by an agent.
#[derive(Clone, Debug)]
pub struct Lease {
    pub worker: WorkerId,
    pub pool: PoolId,
    pub task_name: String,
    /// The task's current epoch (one past the running attempt's while a cancel is pending).
    pub epoch: Epoch,
    /// ASSIGNED or RUNNING.
    pub state: TaskState,
    pub attempts: u32,
    /// Until an ack arrives.
    pub ack_deadline: Option<Instant>,
    /// While a cancel is pending.
    pub cancel_deadline: Option<Instant>,
    /// The pinned-version venv the task needs (kept for its retries' placement).
    pub venv: Option<VenvKey>,
    /// Heartbeats in a row of its (live) agent that did not list this running attempt.
    pub unlisted: u32,
}

impl Lease {
    pub fn facts(&self) -> TaskFacts {
        TaskFacts {
            state: self.state,
            epoch: self.epoch,
            attempts: self.attempts,
            cancel_requested: self.cancel_deadline.is_some(),
        }
    }

    /// The epoch of the attempt the agent runs.
    pub fn attempt_epoch(&self) -> Epoch {
        if self.cancel_deadline.is_some() { Epoch(self.epoch.0.saturating_sub(1)) } else { self.epoch }
    }

    pub fn attempt(&self, task: &TaskId) -> AttemptRef {
        AttemptRef { task_id: task.clone(), epoch: self.attempt_epoch() }
    }
}

#[derive(Debug, Default)]
pub struct Leases {
    by_task: HashMap<TaskId, Lease>,
    by_worker: HashMap<WorkerId, HashSet<TaskId>>,
}

impl Leases {
    pub fn insert(&mut self, task: TaskId, lease: Lease) {
        self.by_worker.entry(lease.worker.clone()).or_default().insert(task.clone());
        if let Some(old) = self.by_task.insert(task.clone(), lease) {
            self.unindex(&old.worker, &task);
        }
    }

    pub fn remove(&mut self, task: &TaskId) -> Option<Lease> {
        let lease = self.by_task.remove(task)?;
        self.unindex(&lease.worker, task);
        Some(lease)
    }

    fn unindex(&mut self, worker: &WorkerId, task: &TaskId) {
        if let Some(tasks) = self.by_worker.get_mut(worker) {
            tasks.remove(task);
            if tasks.is_empty() {
                self.by_worker.remove(worker);
            }
        }
    }

    pub fn get(&self, task: &TaskId) -> Option<&Lease> {
        self.by_task.get(task)
    }

    pub fn get_mut(&mut self, task: &TaskId) -> Option<&mut Lease> {
        self.by_task.get_mut(task)
    }

    /// Tasks a worker holds.
    pub fn of_worker(&self, worker: &WorkerId) -> Vec<TaskId> {
        self.by_worker.get(worker).map(|t| t.iter().cloned().collect()).unwrap_or_default()
    }

    pub fn count_of_worker(&self, worker: &WorkerId) -> usize {
        self.by_worker.get(worker).map_or(0, HashSet::len)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TaskId, &Lease)> {
        self.by_task.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(worker: &str) -> Lease {
        Lease {
            worker: WorkerId::parse(worker).unwrap(),
            pool: PoolId::parse("p").unwrap(),
            task_name: "RUN_INGEST".into(),
            epoch: Epoch(3),
            state: TaskState::Running,
            attempts: 2,
            ack_deadline: None,
            cancel_deadline: None,
            venv: None,
            unlisted: 0,
        }
    }

    #[test]
    fn the_worker_index_follows_inserts_and_removals() {
        let mut leases = Leases::default();
        let (a, b) = (TaskId::parse("a").unwrap(), TaskId::parse("b").unwrap());
        let w1 = WorkerId::parse("w1").unwrap();
        let w2 = WorkerId::parse("w2").unwrap();
        leases.insert(a.clone(), lease("w1"));
        leases.insert(b.clone(), lease("w1"));
        assert_eq!(leases.count_of_worker(&w1), 2);
        leases.insert(a.clone(), lease("w2"));
        assert_eq!((leases.count_of_worker(&w1), leases.count_of_worker(&w2)), (1, 1));
        leases.remove(&b);
        assert_eq!((leases.count_of_worker(&w1), leases.count_of_worker(&w2)), (0, 1));
        assert_eq!(leases.iter().count(), 1);
    }

    #[test]
    fn a_pending_cancel_points_at_the_previous_epoch() {
        let mut l = lease("w1");
        let task = TaskId::parse("a").unwrap();
        assert_eq!(l.attempt(&task).epoch, Epoch(3));
        l.cancel_deadline = Some(Instant::now());
        assert_eq!(l.attempt(&task).epoch, Epoch(2));
        assert!(l.facts().cancel_requested);
    }
}
