//! Progress: RUNNING with the log tail for every running task whose earlier writes all reached GMS, every
//! progress interval, in a task of its own (up to `concurrency` writes at once). Failures are only logged: the
//! next interval sends a fresher tail. Never sends RUNNING after a task's terminal write.

use futures::StreamExt;
use futures::stream;
use outpost_common::task::TaskState;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Reporter, payload};
use crate::gms::Disposition;
use crate::metrics::GmsOutcome;
use crate::store::ProgressCandidate;

impl Reporter {
    pub(super) async fn progress_loop(self, token: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.progress_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = interval.tick() => {}
            }
            tokio::select! {
                _ = token.cancelled() => break,
                _ = self.send_progress() => {}
            }
        }
    }

    async fn send_progress(&self) {
        let candidates = match self.store.progress_candidates().await {
            Ok(candidates) => candidates,
            Err(e) => {
                warn!(error = %e, "cannot list running tasks for progress");
                return;
            }
        };
        stream::iter(candidates)
            .for_each_concurrent(self.config.concurrency.max(1), |candidate| self.progress(candidate))
            .await;
    }

    async fn progress(&self, candidate: ProgressCandidate) {
        let lock = self.locks.of(&candidate.task_id);
        // A terminal write of this task is in flight: progress has nothing left to say.
        let Ok(_one_at_a_time) = lock.try_lock() else { return };
        // The task may have ended since the listing; never send RUNNING after a terminal status.
        match self.store.task(&candidate.task_id).await {
            Ok(Some((task, _))) if task.state == TaskState::Running && task.epoch == candidate.epoch => {}
            _ => return,
        }
        let tail = self.logs.tail(&candidate.task_id, candidate.epoch);
        let report = tail.as_deref().unwrap_or("No logs yet\n");
        let aspect = payload::running(candidate.start_time_ms, Some(report), self.config.max_report_bytes);
        match self.gms.ingest_result(&candidate.task_id.urn(), &aspect).await {
            Ok(()) => self.metrics.gms_write("progress", GmsOutcome::Delivered),
            Err(e) => {
                let outcome = match e.disposition() {
                    Disposition::Settled => GmsOutcome::AlreadyTerminal,
                    Disposition::GiveUp => GmsOutcome::Refused,
                    Disposition::Retry => GmsOutcome::Failed,
                };
                self.metrics.gms_write("progress", outcome);
                warn!(task = %candidate.task_id, error = %e, "progress report failed");
            }
        }
    }
}
