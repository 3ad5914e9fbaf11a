//! Progress: RUNNING with the log tail for every running task whose earlier writes all reached GMS, every
//! progress interval, in a task of its own (up to `concurrency` writes at once); for claimed tasks still waiting
//! for an agent, PENDING again once their claim is a third of the claim TTL old (a claim is renewed by every
//! write). Failures are only logged: the next interval sends a fresher tail. Never sends RUNNING or PENDING after a
//! task's terminal write; stops (and records it) when the claim passed to another controller.

use futures::StreamExt;
use futures::stream;
use outpost_common::task::TaskState;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use outpost_common::clock::unix_ms;

use super::claimed::SendError;
use super::{Reporter, payload};
use crate::gms::Disposition;
use crate::metrics::{GmsKind, GmsOutcome};
use crate::store::{ProgressCandidate, WaitingClaim};

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
        let (running, waiting) = match (
            self.store.progress_candidates().await,
            self.store
                .waiting_claims(unix_ms().saturating_sub(outpost_common::duration::signed_millis(self.renew_after)))
                .await,
        ) {
            (Ok(running), Ok(waiting)) => (running, waiting),
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "cannot list tasks for progress");
                return;
            }
        };
        let writes = running.into_iter().map(Write::Running).chain(waiting.into_iter().map(Write::Waiting));
        stream::iter(writes).for_each_concurrent(self.config.concurrency.max(1), |write| self.progress(write)).await;
    }

    async fn progress(&self, write: Write) {
        let task_id = match &write {
            Write::Running(candidate) => candidate.task_id.clone(),
            Write::Waiting(waiting) => waiting.task_id.clone(),
        };
        let lock = self.locks.of(&task_id);
        // A terminal write of this task is in flight: progress has nothing left to say.
        let Ok(_one_at_a_time) = lock.try_lock() else { return };
        // The task may have ended since the listing; never send RUNNING or PENDING after a terminal status.
        let task = match self.store.task(&task_id).await {
            Ok(Some((task, _))) if !task.claim_lost => task,
            _ => return,
        };
        let aspect = match &write {
            Write::Running(candidate) if task.state == TaskState::Running && task.epoch == candidate.epoch => {
                let tail = self.logs.tail(&candidate.task_id, candidate.epoch);
                let report = tail.as_deref().unwrap_or("No logs yet\n");
                let mut aspect = payload::running(candidate.start_time_ms, Some(report), self.config.max_report_bytes);
                if task.request.claim.is_some() {
                    // A claim is renewed only by a write that changes the aspect (GMS keeps the version of an
                    // identical one): a claimed run says how long it has been running.
                    aspect["durationMs"] = (unix_ms() - candidate.start_time_ms).max(0).into();
                }
                aspect
            }
            Write::Waiting(_) if matches!(task.state, TaskState::Queued | TaskState::Assigned) => {
                let report = format!(
                    "Claimed by Outpost controller {} for pool {}; waiting for an agent (attempt {}, claim renewed at \
                     {} ms).\n",
                    self.holder,
                    task.request.pool,
                    task.attempts + 1,
                    unix_ms()
                );
                crate::gms::requests::pending_result(&report)
            }
            _ => return,
        };
        match self.send_result(&task_id, &aspect, task.request.claim.as_ref()).await {
            Ok(claim) => {
                self.metrics.gms_write(GmsKind::Progress, GmsOutcome::Delivered);
                if let Some(version) = claim
                    && let Err(e) = self.store.claim_written(&task_id, &version, unix_ms()).await
                {
                    warn!(task = %task_id, error = %e, "cannot record the claim's new version");
                }
            }
            Err(SendError::ClaimLost(reason)) => {
                self.metrics.gms_write(GmsKind::Progress, GmsOutcome::ClaimLost);
                warn!(task = %task_id, reason = %reason, "the claim passed to another controller; stopping here");
                if let Err(e) = self.store.claim_lost(&task_id, &reason, unix_ms()).await {
                    warn!(task = %task_id, error = %e, "cannot record the lost claim");
                }
            }
            Err(SendError::Gms(e)) => {
                let outcome = match e.disposition() {
                    Disposition::Settled => GmsOutcome::AlreadyTerminal,
                    Disposition::GiveUp => GmsOutcome::Refused,
                    Disposition::Retry => GmsOutcome::Failed,
                };
                self.metrics.gms_write(GmsKind::Progress, outcome);
                warn!(task = %task_id, error = %e, "progress report failed");
            }
        }
    }
}

/// One progress write to make.
enum Write {
    /// RUNNING with the log tail.
    Running(ProgressCandidate),
    /// PENDING again: the claim of a waiting task renewed.
    Waiting(WaitingClaim),
}
