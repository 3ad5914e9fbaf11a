//! The controller's metrics: counters and histograms updated where things happen (lock-free atomics), plus
//! gauges read from the store at scrape time; rendered as Prometheus text on `--metrics-listen` with `/healthz`
//! and `/readyz`. Must never block a hot path: recording is an atomic add.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use outpost_common::metrics::{Histogram, LATENCY_BUCKETS, family, sample};
use outpost_common::task::TaskState;

use crate::scheduler::lifecycle::Loss;
use crate::store::Store;

/// Why a task went back to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    LeaseExpired,
    NoAck,
    AgentRestarted,
    Interrupted,
    TaskFailed,
}

impl RetryReason {
    const ALL: [RetryReason; 5] = [
        RetryReason::LeaseExpired,
        RetryReason::NoAck,
        RetryReason::AgentRestarted,
        RetryReason::Interrupted,
        RetryReason::TaskFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            RetryReason::LeaseExpired => "lease_expired",
            RetryReason::NoAck => "no_ack",
            RetryReason::AgentRestarted => "agent_restarted",
            RetryReason::Interrupted => "interrupted",
            RetryReason::TaskFailed => "task_failed",
        }
    }
}

impl From<Loss> for RetryReason {
    fn from(loss: Loss) -> RetryReason {
        match loss {
            Loss::LeaseExpired => RetryReason::LeaseExpired,
            Loss::NoAck => RetryReason::NoAck,
            Loss::AgentRestarted => RetryReason::AgentRestarted,
        }
    }
}

/// The outcome of one GMS write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GmsOutcome {
    Delivered,
    /// 422 "immutable state": GMS already has a final status (settled, not retried).
    AlreadyTerminal,
    /// GMS refused the payload for good (400, 413, another 422): recorded on the task as a delivery failure.
    Refused,
    Unauthorized,
    /// Retried later (outage, timeout, 404).
    Failed,
    /// A conditional write refused because another controller holds the request now.
    ClaimLost,
}

impl GmsOutcome {
    const ALL: [GmsOutcome; 6] = [
        GmsOutcome::Delivered,
        GmsOutcome::AlreadyTerminal,
        GmsOutcome::Refused,
        GmsOutcome::Unauthorized,
        GmsOutcome::Failed,
        GmsOutcome::ClaimLost,
    ];

    fn label(self) -> &'static str {
        match self {
            GmsOutcome::Delivered => "delivered",
            GmsOutcome::AlreadyTerminal => "already_terminal",
            GmsOutcome::Refused => "refused",
            GmsOutcome::Unauthorized => "unauthorized",
            GmsOutcome::Failed => "failed",
            GmsOutcome::ClaimLost => "claim_lost",
        }
    }
}

/// What became of a message for work Outpost does not run (DataHub Cloud's monitors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForeignOutcome {
    /// Left for DataHub's own executor sharing the queue.
    GivenBack,
    Quarantined,
}

/// The Celery tasks of DataHub Cloud's own executor that the bridge recognises.
pub const FOREIGN_TASKS: [&str; 2] = ["assertion_request", "monitor_training_request"];

/// SQS API calls by kind.
pub const SQS_CALLS: [&str; 4] = ["receive", "change_visibility", "delete", "send"];
/// GMS write kinds.
pub const GMS_KINDS: [&str; 3] = ["running", "progress", "terminal"];

/// Shared by every subsystem; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dispatch_latency: Histogram,
    lease_losses: [AtomicU64; 3],
    retries: [AtomicU64; 5],
    aborted: AtomicU64,
    grants: AtomicU64,
    /// Grants of tasks needing a pinned-version venv: to an agent holding it, to one that builds it.
    venv_grants: [AtomicU64; 2],
    connected_agents: AtomicU64,
    sqs_calls: [AtomicU64; 4],
    gms_writes: [[AtomicU64; 6]; 3],
    /// By task (FOREIGN_TASKS) and outcome (given back, quarantined).
    foreign_work: [[AtomicU64; 2]; 2],
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            inner: Arc::new(Inner {
                dispatch_latency: Histogram::new(LATENCY_BUCKETS),
                lease_losses: Default::default(),
                retries: Default::default(),
                aborted: AtomicU64::new(0),
                grants: AtomicU64::new(0),
                venv_grants: Default::default(),
                connected_agents: AtomicU64::new(0),
                sqs_calls: Default::default(),
                gms_writes: Default::default(),
                foreign_work: Default::default(),
                ready: AtomicBool::new(false),
            }),
        }
    }
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// A task was granted after waiting `seconds` in the queue; `warm`: whether the agent holds the venv it
    /// needs (`None`: it needs none).
    pub fn granted(&self, seconds: f64, warm: Option<bool>) {
        add(&self.inner.grants);
        if let Some(warm) = warm {
            add(&self.inner.venv_grants[usize::from(!warm)]);
        }
        self.inner.dispatch_latency.observe(seconds);
    }

    pub fn lease_lost(&self, loss: Loss) {
        let index = match loss {
            Loss::LeaseExpired => 0,
            Loss::NoAck => 1,
            Loss::AgentRestarted => 2,
        };
        add(&self.inner.lease_losses[index]);
    }

    pub fn retried(&self, reason: RetryReason) {
        add(&self.inner.retries[RetryReason::ALL.iter().position(|r| *r == reason).unwrap_or(0)]);
    }

    /// A message for work of DataHub's own executor (`task` is one of [`FOREIGN_TASKS`]).
    pub fn foreign_work(&self, task: &str, outcome: ForeignOutcome) {
        let Some(t) = FOREIGN_TASKS.iter().position(|f| *f == task) else { return };
        add(&self.inner.foreign_work[t][outcome as usize]);
    }

    pub fn aborted(&self) {
        add(&self.inner.aborted);
    }

    pub fn set_connected_agents(&self, n: usize) {
        self.inner.connected_agents.store(n as u64, Ordering::Relaxed);
    }

    /// `call` is one of [`SQS_CALLS`].
    pub fn sqs_call(&self, call: &str) {
        if let Some(index) = SQS_CALLS.iter().position(|c| *c == call) {
            add(&self.inner.sqs_calls[index]);
        }
    }

    pub fn sqs_calls(&self) -> Vec<(&'static str, u64)> {
        SQS_CALLS.iter().zip(&self.inner.sqs_calls).map(|(c, n)| (*c, n.load(Ordering::Relaxed))).collect()
    }

    /// Lease losses by reason label.
    pub fn lease_losses(&self) -> Vec<(&'static str, u64)> {
        ["lease_expired", "no_ack", "agent_restarted"]
            .into_iter()
            .zip(&self.inner.lease_losses)
            .map(|(label, n)| (label, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Retries by reason label.
    pub fn retries(&self) -> Vec<(&'static str, u64)> {
        RetryReason::ALL.iter().zip(&self.inner.retries).map(|(r, n)| (r.label(), n.load(Ordering::Relaxed))).collect()
    }

    /// `kind` is one of [`GMS_KINDS`].
    pub fn gms_write(&self, kind: &str, outcome: GmsOutcome) {
        let Some(k) = GMS_KINDS.iter().position(|c| *c == kind) else { return };
        let o = GmsOutcome::ALL.iter().position(|x| *x == outcome).unwrap_or(0);
        add(&self.inner.gms_writes[k][o]);
    }

    /// The controller is serving (store open, gRPC bound).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// The whole exposition: recorded series plus gauges read from the store now.
    pub async fn render(&self, store: &Store) -> String {
        let inner = &self.inner;
        let mut out = String::new();
        family(&mut out, "outpost_tasks", "gauge", "Tasks by state and pool.");
        match store.task_counts().await {
            Ok(counts) => {
                for (state, pool, n) in counts {
                    sample(&mut out, "outpost_tasks", &[("state", state.as_str()), ("pool", pool.as_str())], n as f64);
                }
            }
            Err(_) => {
                sample(&mut out, "outpost_tasks", &[("state", TaskState::Queued.as_str()), ("pool", "")], f64::NAN)
            }
        }
        inner.dispatch_latency.render(
            &mut out,
            "outpost_dispatch_latency_seconds",
            "Time from a task being ready in the queue to its grant to an agent.",
        );
        family(&mut out, "outpost_grants_total", "counter", "Tasks granted to agents.");
        sample(&mut out, "outpost_grants_total", &[], inner.grants.load(Ordering::Relaxed) as f64);
        let help = "Grants of tasks needing a pinned-version venv, by whether the agent already held it.";
        family(&mut out, "outpost_venv_grants_total", "counter", help);
        for (venv, n) in ["warm", "cold"].iter().zip(&inner.venv_grants) {
            sample(&mut out, "outpost_venv_grants_total", &[("venv", venv)], n.load(Ordering::Relaxed) as f64);
        }
        family(&mut out, "outpost_lease_losses_total", "counter", "Attempts whose agent was lost, by reason.");
        for (reason, n) in ["lease_expired", "no_ack", "agent_restarted"].iter().zip(&inner.lease_losses) {
            sample(&mut out, "outpost_lease_losses_total", &[("reason", reason)], n.load(Ordering::Relaxed) as f64);
        }
        family(&mut out, "outpost_retries_total", "counter", "Tasks put back in the queue, by reason.");
        for (reason, n) in RetryReason::ALL.iter().zip(&inner.retries) {
            sample(&mut out, "outpost_retries_total", &[("reason", reason.label())], n.load(Ordering::Relaxed) as f64);
        }
        family(&mut out, "outpost_aborted_total", "counter", "Tasks ABORTED after exhausting their attempts.");
        sample(&mut out, "outpost_aborted_total", &[], inner.aborted.load(Ordering::Relaxed) as f64);
        family(&mut out, "outpost_connected_agents", "gauge", "Agents with an open session.");
        sample(&mut out, "outpost_connected_agents", &[], inner.connected_agents.load(Ordering::Relaxed) as f64);
        family(&mut out, "outpost_sqs_calls_total", "counter", "SQS API calls, by call.");
        for (call, n) in self.sqs_calls() {
            sample(&mut out, "outpost_sqs_calls_total", &[("call", call)], n as f64);
        }
        family(&mut out, "outpost_gms_writes_total", "counter", "Writes to DataHub GMS, by kind and outcome.");
        for (kind, outcomes) in GMS_KINDS.iter().zip(&inner.gms_writes) {
            for (outcome, n) in GmsOutcome::ALL.iter().zip(outcomes) {
                let labels = [("kind", *kind), ("outcome", outcome.label())];
                sample(&mut out, "outpost_gms_writes_total", &labels, n.load(Ordering::Relaxed) as f64);
            }
        }
        family(
            &mut out,
            "outpost_sqs_foreign_work_total",
            "counter",
            "SQS messages for work of DataHub's own executor (assertion monitors), by task and outcome.",
        );
        for (task, outcomes) in FOREIGN_TASKS.iter().zip(&inner.foreign_work) {
            for (outcome, n) in ["given_back", "quarantined"].iter().zip(outcomes) {
                let labels = [("task", *task), ("outcome", *outcome)];
                sample(&mut out, "outpost_sqs_foreign_work_total", &labels, n.load(Ordering::Relaxed) as f64);
            }
        }
        family(&mut out, "outpost_gms_outbox_depth", "gauge", "GMS writes waiting in the durable outbox.");
        let depth = store.outbox_depth().await.map(|d| d as f64).unwrap_or(f64::NAN);
        sample(&mut out, "outpost_gms_outbox_depth", &[], depth);
        out
    }
}
