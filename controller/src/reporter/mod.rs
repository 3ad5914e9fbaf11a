//! The reporter: delivers the GMS outbox (RUNNING when an attempt starts, the terminal result when a task ends)
//! in order per task, retrying through outages and restarts with backoff and jitter, and sends RUNNING progress
//! with the log tail every progress interval. It reads the store and the log tails; nothing calls it from a
//! request path — it wakes on the store's outbox notification.

mod payload;

use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use outpost_common::clock::unix_ms;
use outpost_common::task::TaskState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::gms;
use crate::logs::LogTails;
use crate::metrics::{GmsOutcome, Metrics};
use crate::store::{OutboxEntry, OutboxKind, Store};

/// The reporter's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub progress_interval: Duration,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub max_report_bytes: usize,
    pub max_structured_bytes: usize,
    /// GMS writes in flight at once (of different tasks).
    pub concurrency: usize,
}

pub struct Reporter {
    store: Store,
    gms: gms::Client,
    logs: LogTails,
    metrics: Metrics,
    config: Config,
}

/// What became of one outbox row.
enum Sent {
    Delivered,
    Retry(String),
}

impl Reporter {
    pub fn new(store: Store, gms: gms::Client, logs: LogTails, metrics: Metrics, config: Config) -> Reporter {
        Reporter { store, gms, logs, metrics, config }
    }

    /// Delivers until `token` is cancelled; then makes one last delivery pass and returns.
    pub async fn run(self, token: CancellationToken) {
        let added = self.store.outbox_added();
        let mut progress = tokio::time::interval(self.config.progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await;
        loop {
            let wait = self.deliver_due().await;
            tokio::select! {
                _ = token.cancelled() => break,
                _ = added.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = progress.tick() => self.send_progress().await,
            }
        }
        self.deliver_due().await;
        debug!("reporter stopped");
    }

    fn backoff(&self, tries: u32) -> Duration {
        let ceiling = outpost_common::backoff::ceiling(self.config.retry_backoff, self.config.retry_backoff_max, tries);
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// Sends every due row, in order per task (a read returns only the oldest row of each task, so the rows of
    /// one read are of different tasks and go out concurrently); then retires them in one transaction. Returns
    /// how long until the next row is due (at most a second, so rows added by another process are never
    /// missed for long).
    async fn deliver_due(&self) -> Duration {
        loop {
            let now = unix_ms();
            let due = match self.store.due_outbox(now, 100).await {
                Ok(due) => due,
                Err(e) => {
                    error!(error = %e, "cannot read the GMS outbox");
                    return Duration::from_secs(1);
                }
            };
            if due.is_empty() {
                break;
            }
            let mut sent = Vec::with_capacity(due.len());
            let mut in_flight = FuturesUnordered::new();
            let mut rows = due.iter();
            loop {
                while in_flight.len() < self.config.concurrency.max(1) {
                    let Some(entry) = rows.next() else { break };
                    in_flight.push(self.send_row(entry));
                }
                match in_flight.next().await {
                    Some(outcome) => sent.push(outcome),
                    None => break,
                }
            }
            let mut delivered = Vec::new();
            let mut failed = Vec::new();
            for (entry, outcome) in sent {
                match outcome {
                    Sent::Delivered => delivered.push(entry),
                    Sent::Retry(reason) => {
                        let next = unix_ms() + self.backoff(entry.tries).as_millis() as i64;
                        failed.push((entry, reason, next));
                    }
                }
            }
            if let Err(e) = self.store.outbox_settled(&delivered, &failed, unix_ms()).await {
                error!(error = %e, count = due.len(), "cannot retire GMS outbox rows; they will be sent again");
                return Duration::from_secs(1);
            }
            if delivered.is_empty() {
                break;
            }
        }
        match self.store.next_outbox_due().await {
            Ok(Some(at)) => Duration::from_millis((at - unix_ms()).clamp(0, 1_000) as u64),
            _ => Duration::from_secs(1),
        }
    }

    async fn send_row<'a>(&self, entry: &'a OutboxEntry) -> (&'a OutboxEntry, Sent) {
        (entry, self.send(entry).await)
    }

    async fn send(&self, entry: &OutboxEntry) -> Sent {
        let urn = entry.task_id.urn();
        let aspect = match entry.kind {
            OutboxKind::Running => payload::running(entry.start_time_ms, None, self.config.max_report_bytes),
            OutboxKind::Terminal => match self.store.task(&entry.task_id).await {
                Ok(Some((task, _))) => {
                    let (Some(status), Some(result)) = (task.state.gms_status(), task.result.as_ref()) else {
                        error!(task = %task.id, state = %task.state, "a terminal outbox row for an unfinished task");
                        return Sent::Retry(format!("task is {}", task.state));
                    };
                    payload::terminal(
                        &payload::Terminal {
                            status,
                            task_name: &task.task_name,
                            start_time_ms: result.start_time_ms,
                            duration_ms: result.duration_ms,
                            report: &result.report,
                            structured_report: &result.structured_report,
                        },
                        self.config.max_report_bytes,
                        self.config.max_structured_bytes,
                    )
                }
                Ok(None) => return Sent::Delivered,
                Err(e) => return Sent::Retry(e.to_string()),
            },
        };
        let kind = match entry.kind {
            OutboxKind::Running => "RUNNING",
            OutboxKind::Terminal => "terminal",
        };
        let metric_kind = match entry.kind {
            OutboxKind::Running => "running",
            OutboxKind::Terminal => "terminal",
        };
        let result = self.gms.ingest_result(&urn, &aspect).await;
        self.metrics.gms_write(
            metric_kind,
            match &result {
                Ok(()) => GmsOutcome::Delivered,
                Err(gms::Error::Rejected(_)) => GmsOutcome::Rejected,
                Err(gms::Error::Unauthorized { .. }) => GmsOutcome::Unauthorized,
                Err(_) => GmsOutcome::Failed,
            },
        );
        match result {
            Ok(()) => {
                info!(task = %entry.task_id, kind, status = %aspect["status"], "reported to GMS");
                if entry.kind == OutboxKind::Terminal {
                    self.logs.forget(&entry.task_id);
                }
                Sent::Delivered
            }
            Err(gms::Error::Rejected(body)) => {
                // GMS refuses changes to a finished request: it already has a terminal status.
                warn!(task = %entry.task_id, kind, body = %body, "GMS says the request is already finished; not retrying");
                Sent::Delivered
            }
            Err(e @ gms::Error::Unauthorized { .. }) => {
                error!(task = %entry.task_id, kind, error = %e, tries = entry.tries + 1, "GMS write refused; will retry");
                Sent::Retry(e.to_string())
            }
            Err(e) => {
                warn!(task = %entry.task_id, kind, error = %e, tries = entry.tries + 1, "GMS write failed; will retry");
                Sent::Retry(e.to_string())
            }
        }
    }

    /// RUNNING with the log tail for every running task whose earlier writes all reached GMS. Failures are
    /// only logged: the next interval sends a fresher tail.
    async fn send_progress(&self) {
        let candidates = match self.store.progress_candidates().await {
            Ok(candidates) => candidates,
            Err(e) => {
                warn!(error = %e, "cannot list running tasks for progress");
                return;
            }
        };
        for candidate in candidates {
            let tail = self.logs.tail(&candidate.task_id, candidate.epoch);
            let report = tail.as_deref().unwrap_or("No logs yet\n");
            let aspect = payload::running(candidate.start_time_ms, Some(report), self.config.max_report_bytes);
            // The task may have ended since the listing; never send RUNNING after a terminal status.
            match self.store.task(&candidate.task_id).await {
                Ok(Some((task, _))) if task.state == TaskState::Running && task.epoch == candidate.epoch => {}
                _ => continue,
            }
            match self.gms.ingest_result(&candidate.task_id.urn(), &aspect).await {
                Ok(()) => self.metrics.gms_write("progress", GmsOutcome::Delivered),
                Err(e) => {
                    self.metrics.gms_write("progress", GmsOutcome::Failed);
                    warn!(task = %candidate.task_id, error = %e, "progress report failed");
                }
            }
        }
    }
}
