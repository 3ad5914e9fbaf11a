//! The agent's running work: one tokio task per attempt, each with a stop handle and live progress. Owned by
//! the session loop (no shared state); reports through the event channel it hands out. Never builds wire types.

pub mod output;
pub mod prepare;
pub mod process;
pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use outpost_common::ids::{AttemptRef, Epoch, TaskId};
use tokio::sync::{mpsc, oneshot};
use tracing::info;

pub use process::{Limits, ProcessConfig, Progress, RunOutcome, StopReason};

/// Work the controller assigned.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub attempt: AttemptRef,
    pub task_name: String,
    pub args: BTreeMap<String, String>,
    pub attempt_number: u32,
    /// Stop with TIMED_OUT at this time (Unix ms).
    pub deadline_unix_ms: Option<i64>,
}

/// What running attempts report.
#[derive(Debug)]
pub enum RunnerEvent {
    Log { attempt: AttemptRef, lines: Vec<String> },
    Finished { attempt: AttemptRef, outcome: RunOutcome },
}

struct Running {
    epoch: Epoch,
    stop: Option<oneshot::Sender<StopReason>>,
    progress: Arc<Progress>,
}

/// Live progress of one attempt, for heartbeats.
#[derive(Clone, Debug)]
pub struct AttemptProgress {
    pub attempt: AttemptRef,
    pub log_bytes: u64,
    pub last_output_ms: i64,
}

pub struct Runner {
    config: Arc<ProcessConfig>,
    events: mpsc::Sender<RunnerEvent>,
    running: HashMap<TaskId, Running>,
}

impl Runner {
    pub fn new(config: ProcessConfig) -> (Runner, mpsc::Receiver<RunnerEvent>) {
        let (events, receiver) = mpsc::channel(1024);
        (Runner { config: Arc::new(config), events, running: HashMap::new() }, receiver)
    }

    /// How many attempts are running.
    pub fn busy(&self) -> usize {
        self.running.len()
    }

    /// Whether this exact attempt (task and epoch) is running here.
    pub fn holds(&self, attempt: &AttemptRef) -> bool {
        self.running.get(&attempt.task_id).is_some_and(|r| r.epoch == attempt.epoch)
    }

    /// Starts an attempt. A second assignment of a task already running here is ignored (never two copies).
    pub fn start(&mut self, assignment: Assignment) -> bool {
        if self.running.contains_key(&assignment.attempt.task_id) {
            return false;
        }
        let (stop_tx, stop_rx) = oneshot::channel();
        let progress = Arc::new(Progress::default());
        self.running.insert(
            assignment.attempt.task_id.clone(),
            Running { epoch: assignment.attempt.epoch, stop: Some(stop_tx), progress: progress.clone() },
        );
        let spec = process::RunSpec {
            exec_id: assignment.attempt.task_id.to_string(),
            attempt_tag: assignment.attempt.epoch.to_string(),
            task_name: assignment.task_name,
            args: assignment.args,
            deadline: assignment
                .deadline_unix_ms
                .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64)),
        };
        let config = self.config.clone();
        let events = self.events.clone();
        let attempt = assignment.attempt;
        // One span per attempt: every line logged while it runs carries the task, epoch and worker.
        let span = tracing::info_span!(
            "attempt",
            task = %attempt.task_id,
            epoch = attempt.epoch.0,
            worker = %config.worker_id,
            number = assignment.attempt_number
        );
        let run = async move {
            let (lines_tx, mut lines_rx) = mpsc::channel::<Vec<String>>(64);
            let forward_events = events.clone();
            let forward_attempt = attempt.clone();
            let forwarder = tokio::spawn(async move {
                while let Some(lines) = lines_rx.recv().await {
                    let _ = forward_events.try_send(RunnerEvent::Log { attempt: forward_attempt.clone(), lines });
                }
            });
            let outcome = process::run(&config, spec, stop_rx, lines_tx, progress).await;
            let _ = forwarder.await;
            info!(attempt = %attempt, status = %outcome.status, exit_code = ?outcome.exit_code, "attempt ended");
            let _ = events.send(RunnerEvent::Finished { attempt, outcome }).await;
        };
        tokio::spawn(tracing::Instrument::instrument(run, span));
        true
    }

    /// Asks a running attempt to stop; false when it is not running here at that epoch.
    pub fn stop(&mut self, attempt: &AttemptRef, reason: StopReason) -> bool {
        match self.running.get_mut(&attempt.task_id) {
            Some(running) if running.epoch == attempt.epoch => {
                if let Some(stop) = running.stop.take() {
                    let _ = stop.send(reason);
                }
                true
            }
            _ => false,
        }
    }

    /// Asks every running attempt to stop.
    pub fn stop_all(&mut self, reason: StopReason) {
        for running in self.running.values_mut() {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(reason);
            }
        }
    }

    /// Forgets a finished attempt.
    pub fn finished(&mut self, attempt: &AttemptRef) {
        if self.holds(attempt) {
            self.running.remove(&attempt.task_id);
        }
    }

    /// The attempts running here (sent in Hello after a reconnect).
    pub fn held(&self) -> Vec<AttemptRef> {
        self.running.iter().map(|(task_id, r)| AttemptRef { task_id: task_id.clone(), epoch: r.epoch }).collect()
    }

    pub fn progress(&self) -> Vec<AttemptProgress> {
        self.running
            .iter()
            .map(|(task_id, r)| AttemptProgress {
                attempt: AttemptRef { task_id: task_id.clone(), epoch: r.epoch },
                log_bytes: r.progress.log_bytes.load(Ordering::Relaxed),
                last_output_ms: r.progress.last_output_ms.load(Ordering::Relaxed),
            })
            .collect()
    }
}
