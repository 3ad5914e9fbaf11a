//! The reporter: delivers the GMS outbox (RUNNING when an attempt starts, the terminal result when a task ends)
//! in order per task, and — in a task of its own, so a slow GMS never holds terminal writes behind them — sends
//! RUNNING progress with the log tail every progress interval. Every GMS answer is classified
//! (`gms::Disposition`): outages, timeouts and credentials are retried with capped backoff; "already final" is
//! settled; a payload GMS can never accept is given up, recorded on the task, and stops blocking the task's later
//! writes and its SQS message. It reads the store and the log tails; nothing calls it from a request path.

mod batch;
mod claimed;
pub mod executors;
mod payload;
mod progress;

use std::sync::Arc;
use std::time::Duration;

use outpost_common::clock::unix_ms;
use outpost_common::duration;
use outpost_common::ids::{AspectVersion, TaskId};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use self::claimed::SendError;
use crate::gms::{self, Disposition};
use crate::logs::LogTails;
use crate::metrics::{GmsKind, GmsOutcome, Metrics};
use crate::store::{Delivery, OutboxEntry, OutboxKind, Store, TaskRecord};

/// The reporter's flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "reporter")]
#[command(next_help_heading = "Reporting to GMS")]
pub struct Config {
    /// How often running tasks report RUNNING with their log tail.
    #[arg(long, env = "OUTPOST_PROGRESS_INTERVAL", value_parser = duration::parse, default_value = "5s")]
    pub progress_interval: Duration,
    /// First retry backoff of a failed GMS write (doubled per try, jittered).
    #[arg(id = "gms_retry_backoff", long = "gms-retry-backoff", env = "OUTPOST_GMS_RETRY_BACKOFF",
          value_parser = duration::parse, default_value = "1s")]
    pub retry_backoff: Duration,
    /// Longest retry backoff of a failed GMS write.
    #[arg(id = "gms_retry_backoff_max", long = "gms-retry-backoff-max", env = "OUTPOST_GMS_RETRY_BACKOFF_MAX",
          value_parser = duration::parse, default_value = "60s")]
    pub retry_backoff_max: Duration,
    /// Cap on the report text sent to GMS (longer ones are cut in the middle, with a marker).
    #[arg(id = "gms_max_report_bytes", long = "gms-max-report-bytes", env = "OUTPOST_GMS_MAX_REPORT_BYTES",
          default_value_t = 1024 * 1024)]
    pub max_report_bytes: usize,
    /// Cap on the structured report sent to GMS (a larger one is left out, and the report says so).
    #[arg(id = "gms_max_structured_bytes", long = "gms-max-structured-bytes",
          env = "OUTPOST_GMS_MAX_STRUCTURED_BYTES", default_value_t = 800 * 1000)]
    pub max_structured_bytes: usize,
    /// Memory for the log tails of all running tasks together (each tail is capped at --gms-max-report-bytes).
    #[arg(long, env = "OUTPOST_LOG_TAILS_MAX_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub log_tails_max_bytes: usize,
    /// How often the log tails of tasks that ended without a result from their agent are dropped.
    #[arg(long, env = "OUTPOST_LOG_TAILS_SWEEP_INTERVAL", value_parser = duration::parse, default_value = "30s")]
    pub log_tails_sweep_interval: Duration,
    /// How many GMS writes may be in flight at once, for results and for progress each (writes of one task are
    /// always sent one after another).
    #[arg(id = "gms_concurrency", long = "gms-concurrency", env = "OUTPOST_GMS_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Writes of tasks not claimed at GMS that are due together go in one `ingestProposalBatch` call of up to this
    /// many (1: every write on its own). A batch GMS refuses is sent again write by write.
    #[arg(id = "gms_batch_size", long = "gms-batch-size", env = "OUTPOST_GMS_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: usize,
}

impl Config {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--progress-interval", self.progress_interval)?;
        duration::positive("--gms-retry-backoff", self.retry_backoff)?;
        duration::positive("--log-tails-sweep-interval", self.log_tails_sweep_interval)?;
        if !(1..=1000).contains(&self.batch_size) {
            return Err(duration::Invalid(format!("--gms-batch-size must be 1 to 1000, not {}", self.batch_size)));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(duration::Invalid(format!("--gms-concurrency must be 1 to 256, not {}", self.concurrency)));
        }
        if self.max_report_bytes < 1024 {
            return Err(duration::Invalid("--gms-max-report-bytes must be at least 1024".into()));
        }
        Ok(())
    }
}

/// One write at a time per task, across the delivery and progress tasks: a RUNNING progress write in flight
/// is finished before the task's terminal write goes out (GMS would let a late RUNNING overwrite FAILURE).
type TaskLocks = outpost_common::locks::KeyedLocks<TaskId>;

#[derive(Clone)]
pub struct Reporter {
    store: Store,
    gms: gms::Client,
    logs: LogTails,
    metrics: Metrics,
    config: Config,
    locks: TaskLocks,
    /// This controller's name at GMS (the holder its conditional writes name).
    holder: String,
    /// Claims of waiting tasks are renewed when they are this old.
    renew_after: Duration,
    /// Writes go in batches (until GMS shows it has no batch call).
    batching: Arc<std::sync::atomic::AtomicBool>,
}

/// Where the reporter writes and as whom.
pub struct Destination {
    pub gms: gms::Client,
    /// This controller's name at GMS.
    pub holder: String,
    /// How long a claim lasts unrenewed (waiting tasks' claims are renewed every third of it).
    pub claim_ttl: Duration,
}

impl Reporter {
    pub fn new(store: Store, to: Destination, logs: LogTails, metrics: Metrics, config: Config) -> Reporter {
        Reporter {
            store,
            gms: to.gms,
            logs,
            metrics,
            config,
            locks: TaskLocks::default(),
            holder: to.holder,
            renew_after: to.claim_ttl / 3,
            batching: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Delivers (and sends progress) until `token` is cancelled; then makes one last delivery pass and returns.
    pub async fn run(self, token: CancellationToken) {
        let progress = tokio::spawn(self.clone().progress_loop(token.clone()));
        let added = self.store.outbox_added();
        loop {
            let wait = self.deliver_due().await;
            tokio::select! {
                _ = token.cancelled() => break,
                _ = added.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        let _ = progress.await;
        self.deliver_due().await;
        debug!("reporter stopped");
    }

    fn backoff(&self, tries: u32) -> Duration {
        outpost_common::backoff::equal_jitter(self.config.retry_backoff, self.config.retry_backoff_max, tries)
    }

    /// Sends every due row, in order per task (a read returns only the oldest row of each task, so the rows of
    /// one read are of different tasks and go out concurrently); then settles them in one transaction. Returns
    /// how long until the next row is due (at most a second, so rows added by another process are never
    /// missed for long).
    async fn deliver_due(&self) -> Duration {
        loop {
            let due = match self.store.due_outbox(unix_ms(), 100).await {
                Ok(due) => due,
                Err(e) => {
                    error!(error = %e, "cannot read the GMS outbox");
                    return Duration::from_secs(1);
                }
            };
            if due.is_empty() {
                break;
            }
            let (batched, alone): (Vec<&OutboxEntry>, Vec<&OutboxEntry>) =
                due.iter().partition(|entry| self.batchable(entry));
            let (mut outcomes, rest) = match batched.len() {
                0 | 1 => (Vec::with_capacity(due.len()), due.iter().collect::<Vec<_>>()),
                _ => (self.deliver_batched(&batched).await, alone),
            };
            outcomes.extend(self.one_by_one(&rest).await);
            let progressed = outcomes.iter().any(|(_, d)| !matches!(d, Delivery::Retry { .. }));
            if let Err(e) = self.store.outbox_settled(&outcomes, unix_ms()).await {
                error!(error = %e, count = due.len(), "cannot settle GMS outbox rows; they will be sent again");
                return Duration::from_secs(1);
            }
            if !progressed {
                break;
            }
        }
        match self.store.next_outbox_due().await {
            Ok(Some(at)) => Duration::from_millis((at - unix_ms()).clamp(0, 1_000).unsigned_abs()),
            _ => Duration::from_secs(1),
        }
    }

    /// Sends one row (after any progress write of its task in flight) and says what became of it.
    async fn deliver(&self, entry: &OutboxEntry) -> Delivery {
        let lock = self.locks.of(&entry.task_id);
        let _one_at_a_time = lock.lock().await;
        if entry.claim_lost {
            return Delivery::ClaimLost { error: "not sent: another controller holds the request at GMS".into() };
        }
        let (kind, metric_kind) = match entry.kind {
            OutboxKind::Running => ("RUNNING", GmsKind::Running),
            OutboxKind::Terminal => ("terminal", GmsKind::Terminal),
        };
        // Read under the task's lock: a progress write that just finished may have moved the claim on.
        let current = match (entry.kind, &entry.claim) {
            (OutboxKind::Running, None) => None,
            _ => match self.store.task(&entry.task_id).await {
                Ok(Some((task, _))) => Some(task),
                Ok(None) => return Delivery::Delivered,
                Err(e) => return self.retry(entry, e.to_string()),
            },
        };
        let entry = &OutboxEntry {
            claim: current.as_ref().map_or(entry.claim.clone(), |t| t.request.claim.clone()),
            claim_lost: current.as_ref().is_some_and(|t| t.claim_lost),
            ..entry.clone()
        };
        if entry.claim_lost {
            return Delivery::ClaimLost { error: "not sent: another controller holds the request at GMS".into() };
        }
        let task = match entry.kind {
            OutboxKind::Running => None,
            OutboxKind::Terminal => current,
        };
        let mut result = self.write(entry, task.as_ref(), false).await;
        if let (Err(SendError::Gms(gms::Error::TooLarge(_))), Some(_)) = (&result, &task) {
            warn!(task = %entry.task_id, "GMS refused the result as too large; sending it again with a shorter report");
            result = self.write(entry, task.as_ref(), true).await;
        }
        let error = match result {
            Ok((aspect, claim)) => {
                if entry.kind == OutboxKind::Terminal {
                    // GMS has the result; the outbox does not know yet.
                    crate::crash_point!("crash::after_gms_write");
                }
                self.metrics.gms_write(metric_kind, GmsOutcome::Delivered);
                info!(task = %entry.task_id, kind, status = %aspect["status"], "reported to GMS");
                if entry.kind == OutboxKind::Terminal {
                    self.logs.forget(&entry.task_id);
                }
                return match claim {
                    Some(version) => Delivery::Claimed { version },
                    None => Delivery::Delivered,
                };
            }
            Err(SendError::ClaimLost(error)) => {
                self.metrics.gms_write(metric_kind, GmsOutcome::ClaimLost);
                warn!(task = %entry.task_id, kind, error = %error, "the claim passed to another controller; stopping here");
                return Delivery::ClaimLost { error };
            }
            Err(SendError::Gms(e)) => e,
        };
        match error.disposition() {
            Disposition::Settled => {
                self.metrics.gms_write(metric_kind, GmsOutcome::AlreadyTerminal);
                warn!(task = %entry.task_id, kind, error = %error, "GMS already has a final status; not retrying");
                Delivery::Delivered
            }
            Disposition::GiveUp => {
                self.metrics.gms_write(metric_kind, GmsOutcome::Refused);
                error!(
                    task = %entry.task_id, kind, error = %error,
                    "GMS refused this write for good; recorded as a delivery failure on the task, not retried"
                );
                Delivery::GaveUp { error: error.to_string() }
            }
            Disposition::Retry => {
                let outcome = match error {
                    gms::Error::Unauthorized { .. } => GmsOutcome::Unauthorized,
                    _ => GmsOutcome::Failed,
                };
                self.metrics.gms_write(metric_kind, outcome);
                warn!(task = %entry.task_id, kind, error = %error, tries = entry.tries + 1, "GMS write failed; will retry");
                self.retry(entry, error.to_string())
            }
        }
    }

    fn retry(&self, entry: &OutboxEntry, error: String) -> Delivery {
        Delivery::Retry {
            error,
            next_try_at_ms: unix_ms()
                .saturating_add(outpost_common::duration::signed_millis(self.backoff(entry.tries))),
        }
    }

    /// Builds and sends a row's aspect (`shrunk`: with the report cut to a sixteenth and no structured report,
    /// after GMS said the full one was too large). Returns what was sent.
    async fn write(
        &self,
        entry: &OutboxEntry,
        task: Option<&TaskRecord>,
        shrunk: bool,
    ) -> Result<(Value, Option<AspectVersion>), SendError> {
        let aspect = self.aspect(entry, task, shrunk)?;
        let claim = self.send_result(&entry.task_id, &aspect, entry.claim.as_ref()).await?;
        Ok((aspect, claim))
    }

    /// A row's aspect: RUNNING, or the task's result (`task`, for a terminal row).
    fn aspect(&self, entry: &OutboxEntry, task: Option<&TaskRecord>, shrunk: bool) -> Result<Value, SendError> {
        Ok(match task {
            None => payload::running(entry.start_time_ms, None, self.config.max_report_bytes),
            Some(task) => {
                let (Some(status), Some(result)) = (task.state.gms_status(), task.result.as_ref()) else {
                    error!(task = %task.request.id, state = %task.state, "a terminal outbox row for an unfinished task");
                    let body = format!("task is {}", task.state);
                    return Err(SendError::Gms(gms::Error::Invalid { status: 0, body }));
                };
                let (max_report, max_structured) = if shrunk {
                    ((self.config.max_report_bytes / 16).max(16 * 1024), 0)
                } else {
                    (self.config.max_report_bytes, self.config.max_structured_bytes)
                };
                payload::terminal(
                    &payload::Terminal {
                        status,
                        task_name: &task.request.task_name,
                        start_time_ms: result.run.start_time_ms,
                        duration_ms: result.run.duration_ms,
                        report: &result.run.report,
                        structured_report: &result.run.structured_report,
                    },
                    max_report,
                    max_structured,
                )
            }
        })
    }
}
