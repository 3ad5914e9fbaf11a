//! The last lines of output of running attempts, in memory, fed by the agents' `Log` messages (already masked
//! by the agent) and read for GMS progress reports. Fenced like everything else: lines of an older attempt never
//! mix into a newer one's tail. Must never be persisted: the durable copy is the report in the result.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use outpost_common::ids::{AttemptRef, Epoch, TaskId};

/// Marker put before a tail that lost its oldest lines.
const EARLIER: &str = "[earlier logs truncated...]\n";

#[derive(Debug)]
struct Tail {
    epoch: Epoch,
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

    /// Appends lines of an attempt. A newer epoch replaces the tail; lines of an older one are ignored.
    pub fn append(&self, attempt: &AttemptRef, lines: Vec<String>) {
        let mut tails = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let tail = tails.entry(attempt.task_id.clone()).or_insert_with(|| Tail {
            epoch: attempt.epoch,
            lines: VecDeque::new(),
            bytes: 0,
            dropped: false,
        });
        if attempt.epoch < tail.epoch {
            return;
        }
        if attempt.epoch > tail.epoch {
            *tail = Tail { epoch: attempt.epoch, lines: VecDeque::new(), bytes: 0, dropped: false };
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
    fn tails_are_fenced_by_epoch_and_capped() {
        let tails = LogTails::new(12);
        let task = TaskId::parse("t").unwrap();
        tails.append(&attempt(2), vec!["one".into(), "two".into()]);
        tails.append(&attempt(1), vec!["stale".into()]);
        assert_eq!(tails.tail(&task, Epoch(2)).as_deref(), Some("one\ntwo\n"));
        assert_eq!(tails.tail(&task, Epoch(1)), None);
        tails.append(&attempt(2), vec!["three".into()]);
        assert_eq!(tails.tail(&task, Epoch(2)).as_deref(), Some("[earlier logs truncated...]\ntwo\nthree\n"));
        tails.append(&attempt(3), vec!["fresh".into()]);
        assert_eq!(tails.tail(&task, Epoch(3)).as_deref(), Some("fresh\n"));
        tails.forget(&task);
        assert_eq!(tails.tail(&task, Epoch(3)), None);
    }
}
