//! The last lines of output of running attempts, in memory, fed by the agents' `Log` messages (already masked
//! by the agent) and read for GMS progress reports. Fenced like everything else: a tail is opened for an attempt
//! when it is assigned to a worker (or kept by a reconnecting one), and only that worker's lines of that epoch go
//! in — lines of an older attempt, of another worker or of a task nobody assigned are dropped, so an agent cannot
//! grow this map at will. Must never be persisted: the durable copy is the report in the result.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use outpost_common::ids::{AttemptRef, Epoch, TaskId, WorkerId};

/// Marker put before a tail that lost its oldest lines.
const EARLIER: &str = "[earlier logs truncated...]\n";

#[derive(Debug)]
struct Tail {
    epoch: Epoch,
    worker: WorkerId,
    lines: VecDeque<String>,
    bytes: usize,
    dropped: bool,
}

/// Shared, cheap to clone.
#[derive(Clone, Debug)]
pub struct LogTails {
    inner: Arc<Mutex<HashMap<TaskId, Tail>>>,
    max_bytes: usize,
}

impl LogTails {
    /// Tails of at most `max_bytes` each.
    pub fn new(max_bytes: usize) -> LogTails {
        LogTails { inner: Arc::default(), max_bytes }
    }

    /// Opens the (empty) tail of an attempt assigned to `worker`; a newer epoch replaces an older tail, an older
    /// one changes nothing.
    pub fn open(&self, attempt: &AttemptRef, worker: &WorkerId) {
        let mut tails = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if tails.get(&attempt.task_id).is_some_and(|t| t.epoch >= attempt.epoch) {
            return;
        }
        let tail =
            Tail { epoch: attempt.epoch, worker: worker.clone(), lines: VecDeque::new(), bytes: 0, dropped: false };
        tails.insert(attempt.task_id.clone(), tail);
    }

    /// Appends lines `worker` sent about an attempt: only into that attempt's open tail, and only from its worker.
    pub fn append(&self, worker: &WorkerId, attempt: &AttemptRef, lines: Vec<String>) {
        let mut tails = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tail) = tails.get_mut(&attempt.task_id) else { return };
        if tail.epoch != attempt.epoch || tail.worker != *worker {
            return;
        }
        for line in lines {
            tail.bytes += line.len() + 1;
            tail.lines.push_back(line);
        }
        while tail.bytes > self.max_bytes {
            let Some(old) = tail.lines.pop_front() else { break };
            tail.bytes -= old.len() + 1;
            tail.dropped = true;
        }
    }

    /// The tail of the attempt at `epoch`, if any lines came.
    pub fn tail(&self, task: &TaskId, epoch: Epoch) -> Option<String> {
        let tails = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let tail = tails.get(task).filter(|t| t.epoch == epoch)?;
        let mut text = String::with_capacity(tail.bytes + EARLIER.len());
        if tail.dropped {
            text.push_str(EARLIER);
        }
        for line in &tail.lines {
            text.push_str(line);
            text.push('\n');
        }
        Some(text)
    }

    /// Drops a task's tail (its result carries the final report).
    pub fn forget(&self, task: &TaskId) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).remove(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(epoch: u64) -> AttemptRef {
        AttemptRef { task_id: TaskId::parse("t").unwrap(), epoch: Epoch(epoch) }
    }

    #[test]
    fn tails_are_fenced_by_epoch_and_worker_and_capped() {
        let tails = LogTails::new(12);
        let task = TaskId::parse("t").unwrap();
        let (w1, w2) = (WorkerId::parse("w1").unwrap(), WorkerId::parse("w2").unwrap());
        // Nobody assigned it: nothing is kept.
        tails.append(&w1, &attempt(2), vec!["unasked".into()]);
        assert_eq!(tails.tail(&task, Epoch(2)), None);
        tails.open(&attempt(2), &w1);
        tails.append(&w1, &attempt(2), vec!["one".into(), "two".into()]);
        tails.append(&w1, &attempt(1), vec!["stale".into()]);
        tails.append(&w2, &attempt(2), vec!["not yours".into()]);
        assert_eq!(tails.tail(&task, Epoch(2)).as_deref(), Some("one\ntwo\n"));
        assert_eq!(tails.tail(&task, Epoch(1)), None);
        tails.append(&w1, &attempt(2), vec!["three".into()]);
        assert_eq!(tails.tail(&task, Epoch(2)).as_deref(), Some("[earlier logs truncated...]\ntwo\nthree\n"));
        // An older assignment arriving late changes nothing; a newer one starts afresh on its worker.
        tails.open(&attempt(1), &w2);
        assert!(tails.tail(&task, Epoch(2)).is_some());
        tails.open(&attempt(3), &w2);
        tails.append(&w2, &attempt(3), vec!["fresh".into()]);
        assert_eq!(tails.tail(&task, Epoch(3)).as_deref(), Some("fresh\n"));
        tails.forget(&task);
        assert_eq!(tails.tail(&task, Epoch(3)), None);
    }
}
