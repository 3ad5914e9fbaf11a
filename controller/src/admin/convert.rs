//! Domain records → admin API messages.

use outpost_common::pb;
use outpost_common::task::TaskState;
use tonic::Status;

use outpost_common::ids::TaskId;

use crate::metrics::Metrics;
use crate::scheduler::{Explanation, PoolCapacity, Why, WorkerState, WorkerView};
use crate::store::{AttemptRecord, PoolBacklog, Quarantined, TaskRecord};

pub fn task_state(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Received => pb::TaskState::Received,
        TaskState::Queued => pb::TaskState::Queued,
        TaskState::Assigned => pb::TaskState::Assigned,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
        TaskState::TimedOut => pb::TaskState::TimedOut,
        TaskState::Aborted => pb::TaskState::Aborted,
    }
}

/// The state filter of a list request; UNSPECIFIED means "any".
pub fn task_state_filter(value: i32) -> Result<Option<TaskState>, Status> {
    let state =
        pb::TaskState::try_from(value).map_err(|_| Status::invalid_argument(format!("state: {value} is unknown")))?;
    Ok(TaskState::ALL.iter().copied().find(|s| task_state(*s) == state))
}

pub fn task(task: TaskRecord, attempts: Vec<AttemptRecord>) -> pb::Task {
    pb::Task {
        urn: task.request.id.urn(),
        id: task.request.id.to_string(),
        task: task.request.task_name,
        pool: task.request.pool.to_string(),
        state: task_state(task.state) as i32,
        epoch: task.epoch.0,
        attempts: task.attempts,
        worker_id: task.worker_id.map(|w| w.to_string()).unwrap_or_default(),
        args: task.request.args.into_iter().collect(),
        created_unix_ms: task.created_at_ms,
        updated_unix_ms: task.updated_at_ms,
        result: task.result.map(|r| pb::TaskResult {
            exit_code: r.run.exit_code,
            report: r.run.report,
            structured_report: r.run.structured_report,
            start_time_unix_ms: r.run.start_time_ms,
            duration_ms: r.run.duration_ms,
            finished_unix_ms: r.finished_at_ms,
        }),
        attempt_history: attempts
            .into_iter()
            .map(|a| pb::Attempt {
                number: a.number,
                epoch: a.epoch.0,
                worker_id: a.worker_id.to_string(),
                state: a.state.to_string(),
                assigned_unix_ms: a.assigned_at_ms,
                started_unix_ms: a.started_at_ms.unwrap_or_default(),
                ended_unix_ms: a.ended_at_ms.unwrap_or_default(),
                reason: a.reason.unwrap_or_default(),
            })
            .collect(),
        source_type: task.request.source_type,
        reported_unix_ms: task.reported_at_ms.unwrap_or_default(),
        log_tail: String::new(),
        not_before_unix_ms: if task.state == TaskState::Queued { task.not_before_ms } else { 0 },
        delivery_failure: task.delivery_failure.unwrap_or_default(),
    }
}

pub fn stats(
    backlogs: Vec<PoolBacklog>,
    capacity: Vec<PoolCapacity>,
    outbox_backlog: u64,
    metrics: &Metrics,
    now_ms: i64,
) -> pb::Stats {
    let mut pools: std::collections::BTreeMap<String, pb::PoolStats> = std::collections::BTreeMap::new();
    for b in backlogs {
        let entry =
            pools.entry(b.pool.clone()).or_insert_with(|| pb::PoolStats { pool: b.pool.clone(), ..Default::default() });
        entry.queued = b.queued;
        entry.running = b.running;
        entry.oldest_queued_age_ms = if b.oldest_queued_ms > 0 { (now_ms - b.oldest_queued_ms).max(0) } else { 0 };
        entry.sqs_in_hand = b.sqs_in_hand;
    }
    for c in capacity {
        let pool = c.pool.to_string();
        let entry = pools.entry(pool.clone()).or_insert_with(|| pb::PoolStats { pool, ..Default::default() });
        entry.agents = c.agents;
        entry.free_slots = c.free_slots;
    }
    for (pool, channel, health) in metrics.channels() {
        let entry = pools.entry(pool.clone()).or_insert_with(|| pb::PoolStats { pool, ..Default::default() });
        entry.channels.push(pb::ChannelHealth {
            channel: channel.label().to_owned(),
            last_success_unix_ms: health.last_success_ms,
            last_error: health.last_error,
            last_error_unix_ms: health.last_error_ms,
            consecutive_failures: health.consecutive_failures,
        });
    }
    pb::Stats {
        pools: pools.into_values().collect(),
        lease_losses: metrics.lease_losses().into_iter().map(|(k, v)| (k.label().to_owned(), v)).collect(),
        retries: metrics.retries().into_iter().map(|(k, v)| (k.label().to_owned(), v)).collect(),
        outbox_backlog,
    }
}

pub fn explanation(id: &TaskId, explanation: Explanation) -> pb::Explanation {
    let message = explanation.describe();
    let (mut worker_id, mut not_before_unix_ms) = (String::new(), 0);
    let reason = match &explanation.why {
        Why::NoAgentForPool => pb::Reason::NoAgentForPool,
        Why::AgentsDraining => pb::Reason::AgentsDraining,
        Why::AllSlotsBusy => pb::Reason::AllSlotsBusy,
        Why::Backoff { not_before_ms } => {
            not_before_unix_ms = *not_before_ms;
            pb::Reason::Backoff
        }
        Why::WaitingItsTurn => pb::Reason::WaitingItsTurn,
        Why::Assigned { worker } | Why::Running { worker } | Why::Cancelling { worker } => {
            worker_id = worker.to_string();
            match &explanation.why {
                Why::Assigned { .. } => pb::Reason::Assigned,
                Why::Running { .. } => pb::Reason::Running,
                _ => pb::Reason::Cancelling,
            }
        }
        Why::Finished => pb::Reason::Finished,
    };
    pb::Explanation {
        id: id.to_string(),
        state: task_state(explanation.state) as i32,
        reason: reason as i32,
        message,
        not_before_unix_ms,
        worker_id,
        venv_key: explanation.venv.map(|k| k.to_string()).unwrap_or_default(),
        warm_workers: explanation.warm_on.iter().map(ToString::to_string).collect(),
    }
}

pub fn quarantined(q: Quarantined) -> pb::QuarantinedMessage {
    pb::QuarantinedMessage {
        id: q.id,
        queue_url: q.queue_url,
        message_id: q.message_id,
        reason: q.reason,
        body: q.body,
        body_bytes: q.body_bytes,
        received_unix_ms: q.received_at_ms,
        replayed_unix_ms: q.replayed_at_ms.unwrap_or_default(),
    }
}

pub fn worker(worker: WorkerView) -> pb::Worker {
    pb::Worker {
        worker_id: worker.worker_id.to_string(),
        pools: worker.pools.iter().map(ToString::to_string).collect(),
        slots: worker.slots,
        slots_used: worker.slots_used,
        version: worker.version,
        state: match worker.state {
            WorkerState::Ready => pb::WorkerState::Ready,
            WorkerState::Draining => pb::WorkerState::Draining,
            WorkerState::Disconnected => pb::WorkerState::Disconnected,
        } as i32,
        connected_since_unix_ms: worker.connected_since_ms.unwrap_or_default(),
        last_seen_unix_ms: worker.last_seen_ms,
        labels: worker.labels.into_iter().collect(),
        cert_expires_unix_ms: 0,
        revoked_unix_ms: 0,
        cert_serial: String::new(),
        venvs: worker.venvs.iter().map(pb::Venv::from).collect(),
    }
}

pub fn join_token(token: crate::store::JoinToken) -> pb::JoinToken {
    pb::JoinToken {
        id: token.id,
        pool: token.pool,
        expires_unix_ms: token.expires_at_ms,
        uses_left: token.uses_left.unwrap_or(-1),
        description: token.description,
        created_by: token.created_by,
        created_unix_ms: token.created_at_ms,
        revoked_unix_ms: token.revoked_at_ms.unwrap_or_default(),
        used: token
            .uses
            .into_iter()
            .map(|u| pb::JoinTokenUse { worker_id: u.worker_id, address: u.address, unix_ms: u.at_ms })
            .collect(),
    }
}

pub fn ca_status(status: crate::enroll::CaStatus) -> pb::CaStatus {
    use crate::trust::Phase;
    let ms = |at: std::time::SystemTime| {
        at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    };
    let info = |ca: Option<crate::enroll::CaInfo>| {
        ca.map(|c| pb::CaInfo { fingerprint: c.fingerprint, subject: c.subject, expires_unix_ms: c.expires_at_ms })
    };
    pb::CaStatus {
        phase: status.phase.name().to_owned(),
        phase_since_unix_ms: match status.phase {
            Phase::Steady => 0,
            Phase::Prepared { since } | Phase::Activated { since } => ms(since),
        },
        activates_at_unix_ms: status.activates_at.map_or(0, ms),
        signing: info(status.signing),
        next: info(status.next),
        previous: info(status.previous),
        agents: status
            .agents
            .into_iter()
            .map(|a| pb::CaAgent { worker_id: a.worker, ca_fingerprint: a.ca, on_signing_ca: a.on_signing_ca })
            .collect(),
    }
}
