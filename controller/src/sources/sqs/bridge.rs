//! One queue's receiver and keeper. The receiver takes messages only when the pool can start them and turns
//! them into tasks (or cancels, or quarantines them); the keeper renews the visibility of messages whose tasks
//! live and deletes those whose results reached GMS.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message};
use outpost_common::clock::unix_ms;
use outpost_common::ids::{AspectVersion, PoolId, TaskId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Config;
use super::message::{self, ExecutionInput, Request};
use crate::gms;
use crate::metrics::{ForeignOutcome, ForeignTask, Intake, Metrics, SqsCall, SqsMessageOutcome};
use crate::scheduler::{self, Scheduler};
use crate::sources::claims::{Claim, Claims};
use crate::store::{Audit, NewTask, Store};

/// SQS batch calls take at most 10 entries.
const BATCH: usize = 10;
/// The same for `ReceiveMessage`'s parameter.
const BATCH_I32: i32 = 10;

#[derive(Clone)]
pub(super) struct Queue {
    pub pool: PoolId,
    pub url: String,
    /// Pools this controller serves (a message for another is given back).
    pub served: Vec<PoolId>,
    pub config: Config,
    pub sqs: aws_sdk_sqs::Client,
    pub store: Store,
    pub scheduler: Scheduler,
    pub gms: Option<gms::Client>,
    pub metrics: Metrics,
    /// For a DataHub Cloud pool: where its credentials come from (to refresh them when SQS refuses them).
    pub credentials: Option<super::cloud::GmsCredentials>,
    /// Claims at GMS (with reporting on).
    pub claims: Option<Arc<Claims>>,
}

/// How a received message ends up.
enum Outcome {
    /// Bound to a task (`adopted`: one already known, whose earlier receipt this one replaces); the keeper owns it
    /// now.
    Held { adopted: bool },
    /// Done with: delete it.
    Delete,
    /// Unusable: quarantine, then dead-letter and delete.
    Quarantine(String),
    /// Not ours: give it back, visible again after this long.
    GiveBack(Duration),
    /// Could not be handled now (e.g. GMS down): leave it; it returns after its visibility timeout.
    Leave,
}

/// A duration as SQS takes it: whole seconds in an `i32` (the flags are validated far below its range).
fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// How long to wait after `failures` SQS (or store) failures in a row.
pub(super) fn backoff(config: &Config, failures: u32) -> Duration {
    outpost_common::backoff::equal_jitter(config.retry_backoff, config.retry_backoff_max, failures)
}

/// An SDK error with its service code and cause, readable in one line.
impl Queue {
    /// An SQS error in words; one that says the credentials from GMS no longer work makes the next call fetch
    /// new ones.
    fn sdk_error<E: std::error::Error + ProvideErrorMetadata + 'static>(&self, error: &E) -> String {
        if let Some(credentials) = &self.credentials
            && super::cloud::is_credentials_error(error.code())
        {
            credentials.invalidate();
        }
        outpost_common::errors::chain(error)
    }

    pub async fn receive_loop(self, token: CancellationToken) {
        let mut failures = 0u32;
        while !token.is_cancelled() {
            let want = match self.scheduler.demand(&self.pool).await {
                // Without an agent for the pool nothing is taken; with one, its free slots and a small prefetch.
                Ok(demand) if demand.agents == 0 => 0,
                Ok(demand) => (demand.free_slots + self.config.prefetch).saturating_sub(demand.queued),
                Err(_) => break,
            };
            if want == 0 {
                debug!(pool = %self.pool, "sqs: no demand for pool");
                self.metrics.sqs_idle_poll(self.pool.as_str());
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tokio::time::sleep(self.config.idle_poll) => continue,
                }
            }
            self.metrics.sqs_call(SqsCall::Receive);
            let receive = self
                .sqs
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(i32::try_from(want).unwrap_or(i32::MAX).min(BATCH_I32))
                .wait_time_seconds(seconds(self.config.wait))
                .visibility_timeout(seconds(self.config.visibility_timeout))
                .send();
            let received = tokio::select! {
                _ = token.cancelled() => break,
                received = receive => received,
            };
            let now = outpost_common::clock::unix_ms();
            match received {
                Ok(output) => {
                    failures = 0;
                    self.metrics.channel_ok(self.pool.as_str(), Intake::Sqs, now);
                    if output.messages.as_ref().is_some_and(|m| !m.is_empty()) {
                        crate::crash_point!("crash::after_sqs_receive");
                    }
                    for message in output.messages.unwrap_or_default() {
                        self.handle(message).await;
                    }
                }
                Err(e) => {
                    let delay = backoff(&self.config, failures);
                    failures += 1;
                    let error = self.sdk_error(&e);
                    warn!(queue = %self.url, error = %error, retry_in_ms = outpost_common::duration::millis(delay), "sqs receive failed");
                    self.metrics.channel_failed(
                        self.pool.as_str(),
                        Intake::Sqs,
                        &format!("receive from {} failed: {error}", self.url),
                        now,
                    );
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn handle(&self, message: Message) {
        let body = message.body().unwrap_or_default();
        let message_id = message.message_id().unwrap_or_default().to_owned();
        let Some(receipt) = message.receipt_handle().map(str::to_owned) else { return };
        let outcome = if body.len() > self.config.max_message_bytes {
            Outcome::Quarantine(format!(
                "the body is {} bytes, over the {} byte limit",
                body.len(),
                self.config.max_message_bytes
            ))
        } else {
            match message::parse(body) {
                Ok(request) => self.act(request, &message_id, &receipt).await,
                Err(reason) => Outcome::Quarantine(reason),
            }
        };
        // What became of the message, counted once its fate is settled.
        let became = match outcome {
            Outcome::Held { adopted: false } => SqsMessageOutcome::Taken,
            Outcome::Held { adopted: true } => SqsMessageOutcome::Adopted,
            Outcome::Leave => SqsMessageOutcome::Left,
            Outcome::Delete => {
                self.delete(&message_id, &receipt).await;
                SqsMessageOutcome::Deleted
            }
            Outcome::GiveBack(after) => {
                self.metrics.sqs_call(SqsCall::ChangeVisibility);
                // SQS takes whole seconds, at most 12 hours.
                let seconds = seconds(after.min(Duration::from_secs(12 * 3600)));
                let result = self
                    .sqs
                    .change_message_visibility()
                    .queue_url(&self.url)
                    .receipt_handle(&receipt)
                    .visibility_timeout(seconds)
                    .send()
                    .await;
                if let Err(e) = result {
                    warn!(message = %message_id, error = %self.sdk_error(&e), "could not give a message back");
                }
                SqsMessageOutcome::GivenBack
            }
            Outcome::Quarantine(reason) => self.quarantine(&message_id, &receipt, &reason, body).await,
        };
        self.metrics.sqs_message(self.pool.as_str(), became);
    }

    /// Quarantines an unusable message (a copy to the dead-letter queue if one is set), then deletes it; one that
    /// cannot be stored is left in SQS rather than lost.
    async fn quarantine(&self, message_id: &str, receipt: &str, reason: &str, body: &str) -> SqsMessageOutcome {
        warn!(queue = %self.url, message = %message_id, reason = %reason, "message quarantined");
        let stored = self
            .store
            .quarantine(&self.url, message_id, reason, body, self.config.quarantine_max_body_bytes, unix_ms())
            .await;
        if let Err(e) = stored {
            warn!(message = %message_id, error = %e, "could not quarantine; leaving the message in SQS");
            return SqsMessageOutcome::Left;
        }
        if let Some(dlq) = &self.config.dead_letter_queue {
            self.metrics.sqs_call(SqsCall::Send);
            if let Err(e) = self.sqs.send_message().queue_url(dlq).message_body(body).send().await {
                warn!(message = %message_id, error = %self.sdk_error(&e), "could not copy to the dead-letter queue");
            }
        }
        self.delete(message_id, receipt).await;
        SqsMessageOutcome::Quarantined
    }

    async fn act(&self, request: Request, message_id: &str, receipt: &str) -> Outcome {
        match request {
            Request::Run { id, input } => self.run(id, input, message_id, receipt).await,
            Request::FetchAndRun { id } => {
                let Some(gms) = &self.gms else {
                    return Outcome::Quarantine(
                        "a Celery message carries only the execution request URN; reading its input needs --gms-url"
                            .into(),
                    );
                };
                let urn = id.urn();
                match gms.batch_get(std::slice::from_ref(&urn), &["dataHubExecutionRequestInput"]).await {
                    Ok(found) => match found.get(&urn).and_then(|a| a.get("dataHubExecutionRequestInput")) {
                        Some(input) => match message::parse_input(input) {
                            Ok(input) => self.run(id, input, message_id, receipt).await,
                            Err(reason) => Outcome::Quarantine(format!("the input GMS holds for {urn}: {reason}")),
                        },
                        None => Outcome::Quarantine(format!("GMS has no dataHubExecutionRequestInput for {urn}")),
                    },
                    Err(e) => {
                        warn!(task = %id, error = %e, "cannot read the input from GMS; the message will come back");
                        Outcome::Leave
                    }
                }
            }
            Request::NotOurs { task } => {
                if self.config.shared_with_datahub_executor {
                    self.metrics.foreign_work(task, ForeignOutcome::GivenBack);
                    debug!(queue = %self.url, task = %task, "work for DataHub's own executor: given back");
                    return Outcome::GiveBack(self.config.foreign_visibility);
                }
                self.metrics.foreign_work(task, ForeignOutcome::Quarantined);
                Outcome::Quarantine(format!(
                    "Celery task {task} is work of DataHub's own executor (assertion monitors), which Outpost does not \
                     run: run DataHub's executor in this pool too, and start Outpost with \
                     --sqs-shared-with-datahub-executor to leave such messages to it"
                ))
            }
            Request::Kill { id } => {
                match self.scheduler.cancel(&id, "KILL signal from DataHub", None).await {
                    Ok(()) => info!(task = %id, "KILL signal (SQS): cancelling"),
                    Err(e) if e.is_finished() || matches!(e, scheduler::Error::NotFound(_)) => {
                        debug!(task = %id, "KILL signal for a task not running here")
                    }
                    Err(e) => {
                        warn!(task = %id, error = %e, "KILL signal: cancel failed; the message will come back");
                        return Outcome::Leave;
                    }
                }
                Outcome::Delete
            }
        }
    }

    async fn run(&self, id: TaskId, input: ExecutionInput, message_id: &str, receipt: &str) -> Outcome {
        let pool = match PoolId::parse(&input.executor_id) {
            Ok(pool) => pool,
            Err(e) => return Outcome::Quarantine(format!("executorId: {e}")),
        };
        if !self.served.contains(&pool) {
            debug!(task = %id, pool = %pool, "a request for a pool this controller does not serve: given back");
            return Outcome::GiveBack(self.config.foreign_visibility);
        }
        let claim = match self.claim(&id, &pool).await {
            Ok(claim) => claim,
            Err(outcome) => return outcome,
        };
        let task = NewTask {
            id: id.clone(),
            task_name: input.task,
            pool,
            args: input.args,
            source_type: input.source_type,
            requested_at_ms: input.requested_at_ms,
            claim,
        };
        let (record, created) = match self.scheduler.submit(task).await {
            Ok(submitted) => submitted,
            Err(e) => {
                warn!(task = %id, error = %e, "cannot take the task in; the message will come back");
                return Outcome::Leave;
            }
        };
        if !created && record.reported_at_ms.is_some() {
            info!(task = %id, state = %record.state, "a re-delivery of a finished task: deleted");
            return Outcome::Delete;
        }
        if let Err(e) = self.store.hold_message(&id, &self.url, message_id, receipt, unix_ms()).await {
            warn!(task = %id, error = %e, "cannot record the message; it will come back and be recognised");
            return Outcome::Leave;
        }
        if !created {
            info!(task = %id, state = %record.state, "a re-delivery of a known task: its new receipt handle adopted");
        }
        Outcome::Held { adopted: !created }
    }

    /// Claims a request this controller does not know yet at GMS (`Ok`: ours, with the claim's version when
    /// claims are on); a request another controller holds is given back to return after the claim TTL (by
    /// then its holder has finished it or renewed its claim, or it is taken over).
    async fn claim(&self, id: &TaskId, pool: &PoolId) -> Result<Option<AspectVersion>, Outcome> {
        let Some(claims) = self.claims.as_ref().filter(|c| c.active()) else { return Ok(None) };
        match self.store.task(id).await {
            Ok(Some(known)) => return Ok(known.0.request.claim),
            Ok(None) => {}
            Err(e) => {
                warn!(task = %id, error = %e, "cannot look the task up; the message will come back");
                return Err(Outcome::Leave);
            }
        }
        match claims.claim(id, pool, None).await {
            Ok(Claim::Won(version)) => Ok(version),
            Ok(Claim::Finished(status)) => {
                info!(task = %id, status, "GMS already has a final status for this request: message deleted");
                Err(Outcome::Delete)
            }
            Ok(Claim::HeldElsewhere { holder }) => {
                info!(task = %id, holder = holder.as_deref().unwrap_or("?"), "another controller holds this request: given back");
                Err(Outcome::GiveBack(claims.ttl()))
            }
            Ok(Claim::Lost) => {
                info!(task = %id, "another controller claimed this request first: given back");
                Err(Outcome::GiveBack(claims.ttl()))
            }
            Err(e) => {
                warn!(task = %id, error = %e, "cannot claim the request at GMS; the message will come back");
                Err(Outcome::Leave)
            }
        }
    }

    async fn delete(&self, message_id: &str, receipt: &str) {
        self.metrics.sqs_call(SqsCall::Delete);
        if let Err(e) = self.sqs.delete_message().queue_url(&self.url).receipt_handle(receipt).send().await {
            warn!(message = %message_id, error = %self.sdk_error(&e), "could not delete a message");
        }
    }

    /// Renews the visibility of held messages every keep interval and deletes those whose tasks are done,
    /// promptly after a result is delivered.
    pub async fn keep_loop(self, token: CancellationToken) {
        let mut reported = self.store.reported();
        let mut last_extension = Instant::now();
        let mut failures = 0u32;
        loop {
            let next_extension = last_extension + self.config.keep_interval;
            tokio::select! {
                _ = token.cancelled() => break,
                _ = reported.changed() => {}
                _ = tokio::time::sleep_until(next_extension) => {}
            }
            let held = match self.store.held_messages(&self.url).await {
                Ok(held) => held,
                Err(e) => {
                    // Wait before asking again (a store that keeps failing must not make this loop spin).
                    failures += 1;
                    let delay = backoff(&self.config, failures);
                    let error = format!("cannot read held messages: {e}");
                    self.metrics.channel_failed(self.pool.as_str(), Intake::Sqs, &error, unix_ms());
                    warn!(error = %e, retry_in_ms = outpost_common::duration::millis(delay), "cannot read held messages");
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            let (lost, held): (Vec<_>, Vec<_>) = held.into_iter().partition(|m| m.claim_lost);
            for message in lost {
                // Another controller holds the request now (and receives this message again): let go, never delete.
                match self.store.release_message(&message.message_id, &message.receipt_handle).await {
                    Ok(()) => info!(task = %message.task_id, "claim lost: the message is left to its new holder"),
                    Err(e) => warn!(task = %message.task_id, error = %e, "cannot let go of a message"),
                }
            }
            // A deliberately broken test build (`bug::delete_early`) deletes messages before their results reach
            // GMS, to show the fault tests' history checker catching exactly that.
            #[cfg(feature = "failpoints")]
            let early = fail::eval("bug::delete_early", |_| true).unwrap_or(false);
            #[cfg(not(feature = "failpoints"))]
            let early = false;
            let (done, live): (Vec<_>, Vec<_>) = held.into_iter().partition(|m| m.done || early);
            for chunk in done.chunks(BATCH) {
                self.delete_batch(chunk).await;
            }
            if Instant::now() >= next_extension {
                last_extension = Instant::now();
                let mut ok = true;
                for chunk in live.chunks(BATCH) {
                    ok &= self.extend_batch(chunk).await;
                }
                failures = if ok { 0 } else { failures + 1 };
                if !ok {
                    // Retry sooner than a full interval, with backoff.
                    last_extension = Instant::now() + backoff(&self.config, failures) - self.config.keep_interval;
                }
            }
        }
    }

    async fn delete_batch(&self, messages: &[crate::store::HeldMessage]) {
        crate::crash_point!("crash::before_sqs_delete");
        let tasks: Vec<&str> = messages.iter().map(|m| m.task_id.as_str()).collect();
        // The history checker of the fault tests reads this line: no delete may start before GMS has the result.
        debug!(tasks = %tasks.join(","), "sqs delete: sending");
        let entries: Vec<DeleteMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&m.receipt_handle)
                    .build()
                    .ok()
            })
            .collect();
        self.metrics.sqs_call(SqsCall::Delete);
        let output = match self.sqs.delete_message_batch().queue_url(&self.url).set_entries(Some(entries)).send().await
        {
            Ok(output) => output,
            Err(e) => {
                warn!(queue = %self.url, error = %self.sdk_error(&e), "sqs delete failed; will retry");
                return;
            }
        };
        let failed: Vec<(String, String)> = output.failed.iter().map(|f| (f.id.clone(), f.code.clone())).collect();
        for (i, held) in messages.iter().enumerate() {
            let failure = failed.iter().find(|(id, _)| *id == i.to_string());
            // An invalid handle means the message is gone or was received again (then it is recognised).
            if failure.is_none_or(|(_, code)| code == "ReceiptHandleIsInvalid") {
                if let Err(e) = self.store.release_message(&held.message_id, &held.receipt_handle).await {
                    warn!(task = %held.task_id, error = %e, "cannot forget a deleted message");
                } else {
                    debug!(task = %held.task_id, "sqs message deleted: the result reached GMS");
                }
            } else if let Some((_, code)) = failure {
                warn!(task = %held.task_id, code = %code, "sqs delete of one message failed; will retry");
            }
        }
    }

    async fn extend_batch(&self, messages: &[crate::store::HeldMessage]) -> bool {
        let seconds = seconds(self.config.visibility_timeout);
        let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&m.receipt_handle)
                    .visibility_timeout(seconds)
                    .build()
                    .ok()
            })
            .collect();
        self.metrics.sqs_call(SqsCall::ChangeVisibility);
        match self.sqs.change_message_visibility_batch().queue_url(&self.url).set_entries(Some(entries)).send().await {
            Ok(output) => {
                for failure in &output.failed {
                    // Past SQS's 12-hour cap the message comes back; its URN is recognised and the run goes on.
                    warn!(queue = %self.url, code = %failure.code, "sqs visibility renewal of one message failed");
                }
                true
            }
            Err(e) => {
                warn!(queue = %self.url, error = %self.sdk_error(&e), "sqs visibility renewal failed; will retry");
                false
            }
        }
    }
}

/// Why a quarantined message cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no quarantined message {0}")]
    NotFound(i64),
    #[error("only {kept} of the body's {bytes} bytes were kept")]
    Cut { kept: usize, bytes: u64 },
    /// The body is still unusable: why, as the quarantine said.
    #[error("{0}")]
    Unusable(message::Refusal),
    #[error("a Celery message: its input must be read from GMS")]
    FetchAndRun,
    #[error("Celery task {0} is work of DataHub's own executor")]
    NotOurs(ForeignTask),
    #[error("executorId: {0}")]
    Pool(outpost_common::ids::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error(transparent)]
    Scheduler(#[from] scheduler::Error),
}

/// Replays a quarantined message: parses its stored body again and takes the task in (no SQS message is held
/// for it). Fails with the reason when the body is still unusable (or was cut when it was stored).
/// `audit` is recorded with the replay.
pub async fn replay_quarantined(
    scheduler: &Scheduler,
    store: &Store,
    id: i64,
    audit: Option<Audit>,
) -> Result<TaskId, ReplayError> {
    let entry = store.quarantined_message(id).await?.ok_or(ReplayError::NotFound(id))?;
    if entry.body.len() as u64 != entry.body_bytes {
        return Err(ReplayError::Cut { kept: entry.body.len(), bytes: entry.body_bytes });
    }
    let (task_id, input) = match message::parse(&entry.body).map_err(ReplayError::Unusable)? {
        Request::Run { id, input } => (id, input),
        Request::FetchAndRun { .. } => return Err(ReplayError::FetchAndRun),
        Request::NotOurs { task } => return Err(ReplayError::NotOurs(task)),
        Request::Kill { id } => {
            scheduler.cancel(&id, "KILL signal from DataHub (replayed)", None).await?;
            store.mark_replayed(entry.id, unix_ms(), audit).await?;
            return Ok(id);
        }
    };
    let task = NewTask {
        id: task_id.clone(),
        task_name: input.task,
        pool: PoolId::parse(&input.executor_id).map_err(ReplayError::Pool)?,
        args: input.args,
        source_type: input.source_type,
        requested_at_ms: input.requested_at_ms,
        claim: None,
    };
    scheduler.submit(task).await?;
    store.mark_replayed(id, unix_ms(), audit).await?;
    Ok(task_id)
}
