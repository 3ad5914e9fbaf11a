//! The last lines of output of running attempts, in memory, fed by the agents' `Log` messages (already masked
//! by the agent) and read for GMS progress reports. Fenced like everything else: a tail is opened for an attempt
//! when it is assigned to a worker (or kept by a reconnecting one), and only that worker's lines of that epoch go
//! in — lines of an older attempt, of another worker or of a task nobody assigned are dropped, so an agent cannot
//! grow this map at will. Must never be persisted: the durable copy is the report in the result.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    opened: Instant,
}

#[derive(Debug, Default)]
struct Tails {
    by_task: HashMap<TaskId, Tail>,
    /// Bytes held by every tail together.
    total: usize,
}

/// Shared, cheap to clone.
#[derive(Clone, Debug)]
pub struct LogTails {
    inner: Arc<Mutex<Tails>>,
    max_bytes: usize,
    max_total_bytes: usize,
}

impl LogTails {
    /// Tails of at most `max_bytes` each and `max_total_bytes` together (past that, a tail keeps its newest lines
    /// and lines that do not fit are dropped, marked as truncated).
    pub fn new(max_bytes: usize, max_total_bytes: usize) -> LogTails {
        LogTails { inner: Arc::default(), max_bytes, max_total_bytes }
    }

    /// Bytes held by every tail together.
    #[cfg(test)]
    pub fn total_bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).total
    }

    /// Opens the (empty) tail of an attempt assigned to `worker`; a newer epoch replaces an older tail, an older
    /// one changes nothing.
    pub fn open(&self, attempt: &AttemptRef, worker: &WorkerId) {
        let mut tails = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if tails.by_task.get(&attempt.task_id).is_some_and(|t| t.epoch >= attempt.epoch) {
            return;
        }
        let tail = Tail {
            epoch: attempt.epoch,
            worker: worker.clone(),
            lines: VecDeque::new(),
            bytes: 0,
            dropped: false,
            opened: Instant::now(),
        };
        if let Some(old) = tails.by_task.insert(attempt.task_id.clone(), tail) {
            tails.total -= old.bytes;
        }
    }

    /// Appends lines `worker` sent about an attempt: only into that attempt's open tail, and only from its worker.
    pub fn append(&self, worker: &WorkerId, attempt: &AttemptRef, lines: Vec<String>) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let tails = &mut *guard;
        let Some(tail) = tails.by_task.get_mut(&attempt.task_id) else { return };
        if tail.epoch != attempt.epoch || tail.worker != *worker {
            return;
        }
        let others = tails.total - tail.bytes;
        // What this tail may hold: its own cap, and what the other tails leave of the total.
        let room = self.max_bytes.min(self.max_total_bytes.saturating_sub(others));
        for line in lines {
            let size = line.len() + 1;
            if size > room {
                tail.dropped = true;
                continue;
            }
            tail.bytes += size;
            tail.lines.push_back(line);
            while tail.bytes > room {
                let Some(old) = tail.lines.pop_front() else { break };
                tail.bytes -= old.len() + 1;
                tail.dropped = true;
            }
        }
        tails.total = others + tail.bytes;
    }

    /// The tail of the attempt at `epoch`, if any lines came.
    pub fn tail(&self, task: &TaskId, epoch: Epoch) -> Option<String> {
        let tails = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let tail = tails.by_task.get(task).filter(|t| t.epoch == epoch)?;
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
        let mut tails = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = tails.by_task.remove(task) {
            tails.total -= old.bytes;
        }
    }

    /// Drops the tails of tasks not in `live` that were opened before `listed` (when `live` was read: a tail
    /// opened since belongs to a task the list may not show yet). Frees what a task that ended without a result
    /// from its agent (its lease lost for good, reporting off) would otherwise hold.
    pub fn retain_live(&self, live: &HashSet<TaskId>, listed: Instant) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let tails = &mut *guard;
        let mut freed = 0;
        tails.by_task.retain(|task, tail| {
            let keep = live.contains(task) || tail.opened >= listed;
            if !keep {
                freed += tail.bytes;
            }
            keep
        });
        tails.total -= freed;
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
        let tails = LogTails::new(12, 1024);
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
        assert_eq!(tails.total_bytes(), 0, "a forgotten tail frees its bytes");
    }

    #[test]
    fn all_tails_together_stay_within_the_total() {
        let tails = LogTails::new(100, 150);
        let w = WorkerId::parse("w").unwrap();
        let (a, b) = (TaskId::parse("a").unwrap(), TaskId::parse("b").unwrap());
        let at = |task: &TaskId| AttemptRef { task_id: task.clone(), epoch: Epoch(1) };
        tails.open(&at(&a), &w);
        tails.open(&at(&b), &w);
        // A hostile agent floods one task: it keeps at most its own cap.
        tails.append(&w, &at(&a), (0..100).map(|i| format!("line {i:03}")).collect());
        assert!(tails.total_bytes() <= 100, "{}", tails.total_bytes());
        // The other task gets only what is left of the total, and says lines were dropped.
        tails.append(&w, &at(&b), (0..100).map(|i| format!("other {i:03}")).collect());
        assert!(tails.total_bytes() <= 150, "{}", tails.total_bytes());
        let b_tail = tails.tail(&b, Epoch(1)).unwrap();
        assert!(b_tail.starts_with(EARLIER) && b_tail.ends_with("other 099\n"), "{b_tail}");
        tails.forget(&a);
        tails.forget(&b);
        assert_eq!(tails.total_bytes(), 0);
    }

    #[test]
    fn tails_of_ended_tasks_are_swept_but_not_those_opened_after_the_list() {
        let tails = LogTails::new(100, 1000);
        let w = WorkerId::parse("w").unwrap();
        let (ended, running) = (TaskId::parse("ended").unwrap(), TaskId::parse("running").unwrap());
        let at = |task: &TaskId| AttemptRef { task_id: task.clone(), epoch: Epoch(1) };
        for task in [&ended, &running] {
            tails.open(&at(task), &w);
            tails.append(&w, &at(task), vec!["a line".into()]);
        }
        let listed = Instant::now();
        let fresh = TaskId::parse("fresh").unwrap();
        tails.open(&at(&fresh), &w);
        tails.append(&w, &at(&fresh), vec!["new".into()]);
        tails.retain_live(&HashSet::from([running.clone()]), listed);
        assert_eq!(tails.tail(&ended, Epoch(1)), None);
        assert_eq!(tails.tail(&running, Epoch(1)).as_deref(), Some("a line\n"));
        assert_eq!(tails.tail(&fresh, Epoch(1)).as_deref(), Some("new\n"), "opened after the list was read");
        assert_eq!(tails.total_bytes(), "a line\n".len() + "new\n".len());
    }
}
