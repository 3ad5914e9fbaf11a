//! The agent's running work: one tokio task per attempt, each with a stop handle and live progress. Owned by
//! the session loop (no shared state); reports through the event channel it hands out. Never builds wire types.

pub mod output;
pub mod prepare;
pub mod process;
pub mod report;
pub mod verdict;

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
    /// Newer attempts of tasks whose older attempt is still ending here (the controller fenced it out and granted
    /// the task again): each starts as soon as the older one has ended, never alongside it.
    deferred: HashMap<TaskId, Assignment>,
}

impl Runner {
    pub fn new(config: ProcessConfig) -> (Runner, mpsc::Receiver<RunnerEvent>) {
        let (events, receiver) = mpsc::channel(1024);
        (Runner { config: Arc::new(config), events, running: HashMap::new(), deferred: HashMap::new() }, receiver)
    }

    /// How many attempts are running.
    pub fn busy(&self) -> usize {
        self.running.len()
    }

    /// Whether this exact attempt (task and epoch) is running here, or waits to start after an older one.
    pub fn holds(&self, attempt: &AttemptRef) -> bool {
        self.running.get(&attempt.task_id).is_some_and(|r| r.epoch == attempt.epoch)
            || self.deferred.get(&attempt.task_id).is_some_and(|a| a.attempt == *attempt)
    }

    /// Takes an attempt on; false when it is not this agent's to run (a duplicate, or older than the attempt of
    /// the task already here). A newer attempt of a task whose older attempt is still ending here (stopped, or
    /// its end not yet seen by the session) waits for that end and then starts: never two copies, never lost.
    pub fn start(&mut self, assignment: Assignment) -> bool {
        let task = assignment.attempt.task_id.clone();
        if self.deferred.get(&task).is_some_and(|a| a.attempt.epoch >= assignment.attempt.epoch) {
            return false;
        }
        match self.running.get_mut(&task) {
            Some(older) if older.epoch < assignment.attempt.epoch => {
                if let Some(stop) = older.stop.take() {
                    let _ = stop.send(StopReason::Cancelled);
                }
                info!(attempt = %assignment.attempt, older = older.epoch.0, "starting once the older attempt has ended");
                self.deferred.insert(task, assignment);
                true
            }
            Some(_) => false,
            None => {
                self.spawn(assignment);
                true
            }
        }
    }

    fn spawn(&mut self, assignment: Assignment) {
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
            deadline: assignment.deadline_unix_ms.map(outpost_common::clock::system_time),
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
            info!(attempt = %attempt, status = %outcome.status, exit_code = ?outcome.run.exit_code, "attempt ended");
            let _ = events.send(RunnerEvent::Finished { attempt, outcome }).await;
        };
        tokio::spawn(tracing::Instrument::instrument(run, span));
    }

    /// Whether an older attempt of this attempt's task is here (a newer one would replace it, not take a slot).
    pub fn replaces(&self, attempt: &AttemptRef) -> bool {
        self.running.get(&attempt.task_id).is_some_and(|r| r.epoch < attempt.epoch)
    }

    /// Asks a running attempt to stop; false when it is not running here at that epoch. One still waiting for an
    /// older attempt to end never starts: it ends at once with the stop's status.
    pub fn stop(&mut self, attempt: &AttemptRef, reason: StopReason) -> bool {
        if self.deferred.get(&attempt.task_id).is_some_and(|a| a.attempt == *attempt) {
            self.deferred.remove(&attempt.task_id);
            let outcome = process::not_started(reason);
            let _ = self.events.try_send(RunnerEvent::Finished { attempt: attempt.clone(), outcome });
            return true;
        }
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

    /// Asks every running attempt to stop (and ends those still waiting to start).
    pub fn stop_all(&mut self, reason: StopReason) {
        for (_, waiting) in std::mem::take(&mut self.deferred) {
            let outcome = process::not_started(reason);
            let _ = self.events.try_send(RunnerEvent::Finished { attempt: waiting.attempt, outcome });
        }
        for running in self.running.values_mut() {
            if let Some(stop) = running.stop.take() {
                let _ = stop.send(reason);
            }
        }
    }

    /// Forgets a finished attempt, and starts the newer attempt of its task that waited for it.
    pub fn finished(&mut self, attempt: &AttemptRef) {
        if self.running.get(&attempt.task_id).is_some_and(|r| r.epoch == attempt.epoch) {
            self.running.remove(&attempt.task_id);
            if let Some(next) = self.deferred.remove(&attempt.task_id) {
                self.spawn(next);
            }
        }
    }

    /// The attempts this agent holds (sent in Hello after a reconnect): for a task whose newer attempt waits, that
    /// one (the older is being stopped).
    pub fn held(&self) -> Vec<AttemptRef> {
        self.running
            .iter()
            .map(|(task_id, r)| match self.deferred.get(task_id) {
                Some(waiting) => waiting.attempt.clone(),
                None => AttemptRef { task_id: task_id.clone(), epoch: r.epoch },
            })
            .collect()
    }

    /// Every attempt held, for heartbeats (the controller loses a running attempt its heartbeats stop listing): a
    /// newer attempt waiting for an older one to end is listed, with no output yet.
    pub fn progress(&self) -> Vec<AttemptProgress> {
        self.running
            .iter()
            .map(|(task_id, r)| match self.deferred.get(task_id) {
                Some(waiting) => AttemptProgress { attempt: waiting.attempt.clone(), log_bytes: 0, last_output_ms: 0 },
                None => AttemptProgress {
                    attempt: AttemptRef { task_id: task_id.clone(), epoch: r.epoch },
                    log_bytes: r.progress.log_bytes.load(Ordering::Relaxed),
                    last_output_ms: r.progress.last_output_ms.load(Ordering::Relaxed),
                },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A runner whose `datahub` is a shell script sleeping `seconds` (and logging each start with its arguments,
    /// which name the attempt's work directory `t-<epoch>`).
    fn runner(dir: &std::path::Path, seconds: &str) -> (Runner, mpsc::Receiver<RunnerEvent>) {
        use std::os::unix::fs::PermissionsExt;
        let cli = dir.join("datahub");
        let starts = dir.join("starts");
        std::fs::write(&cli, format!("#!/bin/sh\necho \"$@\" >> {}\nsleep {seconds}\n", starts.display())).unwrap();
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
        let venvs = crate::venv::Venvs::new(
            crate::venv::Args {
                datahub_cli: cli,
                venv_root: None,
                venv_python: "python3".into(),
                venv_max_bytes: 0,
                warm: Vec::new(),
            },
            crate::metrics::Metrics::default(),
        );
        Runner::new(ProcessConfig {
            worker_id: "w".into(),
            venvs: Arc::new(venvs),
            secrets: Arc::new(crate::secrets::Resolver::new(crate::secrets::Config::default(), None)),
            work_dir: dir.join("work"),
            limits: Limits {
                cancel_grace: Duration::from_secs(5),
                output_drain_timeout: Duration::from_secs(1),
                max_log_lines: 100,
                max_line_chars: 1000,
                max_report_bytes: 100_000,
            },
        })
    }

    fn assignment(epoch: u64) -> Assignment {
        Assignment {
            attempt: AttemptRef { task_id: TaskId::parse("t").unwrap(), epoch: Epoch(epoch) },
            task_name: "RUN_INGEST".into(),
            args: [("recipe".to_owned(), r#"{"source": {"type": "file", "config": {}}}"#.to_owned())].into(),
            attempt_number: 1,
            deadline_unix_ms: None,
        }
    }

    async fn finished(events: &mut mpsc::Receiver<RunnerEvent>) -> (AttemptRef, RunOutcome) {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("an attempt ends") {
                Some(RunnerEvent::Finished { attempt, outcome }) => return (attempt, outcome),
                Some(RunnerEvent::Log { .. }) => continue,
                None => panic!("the runner went away"),
            }
        }
    }

    #[tokio::test]
    async fn a_newer_attempt_assigned_while_the_older_one_ends_starts_after_it_and_is_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (mut runner, mut events) = runner(dir.path(), "30");
        assert!(runner.start(assignment(1)));
        assert!(!runner.start(assignment(1)), "never two copies");
        // The controller fenced epoch 1 out and granted epoch 2 before the session saw epoch 1 end.
        assert!(runner.replaces(&assignment(2).attempt));
        assert!(runner.start(assignment(2)));
        assert!(runner.holds(&assignment(2).attempt));
        assert_eq!(runner.held(), [assignment(2).attempt], "a reconnect's Hello names the newer attempt");
        assert_eq!(runner.busy(), 1, "one slot for the task");
        let (ended, outcome) = finished(&mut events).await;
        assert_eq!((ended.epoch, outcome.status), (Epoch(1), outpost_common::task::ResultStatus::Cancelled));
        runner.finished(&ended);
        // Epoch 2 runs now (its CLI starts), and stopping it ends it as a real run.
        let starts = dir.path().join("starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !std::fs::read_to_string(&starts).unwrap_or_default().contains("/t-2/") {
            assert!(std::time::Instant::now() < deadline, "epoch 2 never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!runner.start(assignment(1)), "an older assignment arriving late is not taken");
        assert!(runner.stop(&assignment(2).attempt, StopReason::Cancelled));
        let (ended, outcome) = finished(&mut events).await;
        assert_eq!((ended.epoch, outcome.status), (Epoch(2), outpost_common::task::ResultStatus::Cancelled));
        runner.finished(&ended);
        let started = std::fs::read_to_string(&starts).unwrap();
        assert_eq!(started.matches("/t-2/").count(), 1, "epoch 2 started once: {started}");
    }

    #[tokio::test]
    async fn a_waiting_attempt_that_is_cancelled_never_starts() {
        let dir = tempfile::tempdir().unwrap();
        let (mut runner, mut events) = runner(dir.path(), "30");
        assert!(runner.start(assignment(1)));
        assert!(runner.start(assignment(2)));
        assert!(runner.stop(&assignment(2).attempt, StopReason::Cancelled));
        let mut ended = Vec::new();
        for _ in 0..2 {
            let (attempt, outcome) = finished(&mut events).await;
            runner.finished(&attempt);
            ended.push((attempt.epoch.0, outcome.status));
        }
        ended.sort_by_key(|(epoch, _)| *epoch);
        use outpost_common::task::ResultStatus::Cancelled;
        assert_eq!(ended, [(1, Cancelled), (2, Cancelled)]);
        assert_eq!(runner.busy(), 0);
        let starts = std::fs::read_to_string(dir.path().join("starts")).unwrap_or_default();
        assert!(!starts.contains("/t-2/"), "epoch 2 never started: {starts}");
    }
}
