//! The queue of tasks waiting for an agent: FIFO per pool, plus tasks waiting out a retry backoff until their
//! not-before time. In memory only; the store holds the same facts (state QUEUED, not_before_ms).

use std::collections::{BTreeSet, HashMap, VecDeque};

use outpost_common::ids::{PoolId, TaskId};
use outpost_common::venv::VenvKey;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct Queue {
    ready: HashMap<PoolId, VecDeque<TaskId>>,
    /// (not before, task) → waiting out a backoff.
    delayed: BTreeSet<(i64, TaskId)>,
    delayed_pool: HashMap<TaskId, PoolId>,
    /// When each ready task became ready (for the dispatch-latency histogram).
    ready_since: HashMap<TaskId, Instant>,
    /// The pinned-version venv each waiting task needs (placement prefers agents holding it).
    venvs: HashMap<TaskId, VenvKey>,
}

impl Queue {
    /// Adds a task at the back of its pool's queue, or to the delayed set if `not_before_ms` is in the future.
    pub fn push(&mut self, pool: PoolId, task: TaskId, venv: Option<VenvKey>, not_before_ms: i64, now_ms: i64) {
        if let Some(venv) = venv {
            self.venvs.insert(task.clone(), venv);
        }
        if not_before_ms > now_ms {
            self.delayed.insert((not_before_ms, task.clone()));
            self.delayed_pool.insert(task, pool);
        } else {
            self.ready_since.insert(task.clone(), Instant::now());
            self.ready.entry(pool).or_default().push_back(task);
        }
    }

    /// Moves every delayed task whose time has come to the back of its pool's queue. Returns how many moved.
    pub fn promote_due(&mut self, now_ms: i64) -> usize {
        let mut moved = 0;
        while let Some((at, _)) = self.delayed.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, task)) = self.delayed.pop_first() else { break };
            if let Some(pool) = self.delayed_pool.remove(&task) {
                self.ready_since.insert(task.clone(), Instant::now());
                self.ready.entry(pool).or_default().push_back(task);
                moved += 1;
            }
        }
        moved
    }

    /// Pools that have a ready task.
    pub fn ready_pools(&self) -> Vec<PoolId> {
        self.ready.iter().filter(|(_, q)| !q.is_empty()).map(|(p, _)| p.clone()).collect()
    }

    pub fn front(&self, pool: &PoolId) -> Option<&TaskId> {
        self.ready.get(pool).and_then(|q| q.front())
    }

    /// The venv a waiting task needs, if any.
    pub fn venv(&self, task: &TaskId) -> Option<&VenvKey> {
        self.venvs.get(task)
    }

    /// How long a ready task has been ready.
    pub fn ready_for(&self, task: &TaskId) -> std::time::Duration {
        self.ready_since.get(task).map(Instant::elapsed).unwrap_or_default()
    }

    /// The oldest ready task of a pool, how long it waited, and the venv it needs.
    pub fn pop_front(&mut self, pool: &PoolId) -> Option<(TaskId, std::time::Duration, Option<VenvKey>)> {
        let task = self.ready.get_mut(pool).and_then(|q| q.pop_front())?;
        let waited = self.ready_since.remove(&task).map(|since| since.elapsed()).unwrap_or_default();
        let venv = self.venvs.remove(&task);
        Some((task, waited, venv))
    }

    /// Where a task waits: `Some(None)` ready, `Some(Some(t))` backing off until t, `None` not queued here.
    pub fn waiting(&self, task: &TaskId) -> Option<Option<i64>> {
        if self.delayed_pool.contains_key(task) {
            return self.delayed.iter().find(|(_, t)| t == task).map(|(at, _)| Some(*at));
        }
        self.ready.values().any(|q| q.contains(task)).then_some(None)
    }

    /// Whether the task waits here (ready or backing off).
    pub fn contains(&self, task: &TaskId) -> bool {
        self.ready_since.contains_key(task) || self.delayed_pool.contains_key(task)
    }

    /// Ready tasks of a pool.
    pub fn ready_len(&self, pool: &PoolId) -> usize {
        self.ready.get(pool).map_or(0, VecDeque::len)
    }

    /// Removes a task wherever it waits; false when it is not queued here.
    pub fn remove(&mut self, task: &TaskId) -> bool {
        self.venvs.remove(task);
        if self.delayed_pool.remove(task).is_some() {
            self.delayed.retain(|(_, t)| t != task);
            return true;
        }
        for queue in self.ready.values_mut() {
            if let Some(index) = queue.iter().position(|t| t == task) {
                queue.remove(index);
                self.ready_since.remove(task);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(p: &str) -> PoolId {
        PoolId::parse(p).unwrap()
    }
    fn task(t: &str) -> TaskId {
        TaskId::parse(t).unwrap()
    }

    #[test]
    fn fifo_per_pool_with_delayed_tasks_promoted_in_time_order() {
        let mut queue = Queue::default();
        queue.push(pool("p"), task("a"), None, 0, 100);
        queue.push(pool("p"), task("late"), None, 300, 100);
        queue.push(pool("p"), task("later"), None, 500, 100);
        queue.push(pool("q"), task("b"), None, 100, 100);
        assert_eq!(queue.ready_len(&pool("p")), 1);
        assert_eq!(queue.ready_len(&pool("q")), 1);
        assert_eq!(queue.promote_due(299), 0);
        assert_eq!(queue.promote_due(300), 1);
        assert_eq!(queue.pop_front(&pool("p")).map(|(t, _, _)| t), Some(task("a")));
        assert_eq!(queue.pop_front(&pool("p")).map(|(t, _, _)| t), Some(task("late")));
        assert_eq!(queue.pop_front(&pool("p")), None);
        assert_eq!(queue.front(&pool("q")), Some(&task("b")));
        let mut pools = queue.ready_pools();
        pools.sort();
        assert_eq!(pools, [pool("q")]);
    }

    #[test]
    fn remove_finds_ready_and_delayed_tasks() {
        let mut queue = Queue::default();
        queue.push(pool("p"), task("a"), None, 0, 0);
        queue.push(pool("p"), task("b"), None, 50, 0);
        assert!(queue.remove(&task("b")));
        assert!(queue.remove(&task("a")));
        assert!(!queue.remove(&task("a")));
        assert_eq!(queue.promote_due(100), 0);
    }
}
