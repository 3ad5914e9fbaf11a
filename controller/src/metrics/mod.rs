//! The controller's metrics: counters and histograms of the `prometheus-client` crate updated where things
//! happen, plus gauges read from the store at scrape time; exposed as OpenMetrics text on `--metrics-listen` with
//! `/healthz` and `/readyz`. Must never block a hot path: recording is an atomic add.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use outpost_common::metrics::LATENCY_BUCKETS;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::lifecycle::{Loss, RetryReason};
use crate::store::Store;

mod labels;

use labels::{
    CallLabel, ForeignLabels, GmsWriteLabels, LossLabel, PoolChannel, PoolLabel, PoolOutcome, Reload, ReloadLabels,
    RetryLabel, StatePool, VenvLabel, Warmth, WorkerLabel,
};
pub use labels::{ForeignOutcome, ForeignTask, GmsKind, GmsOutcome, Intake, Listener, SqsCall, SqsMessageOutcome};

/// How a pool's channel is doing: its last success, its last error (in words) and the failures since a success.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelHealth {
    pub last_success_ms: i64,
    pub last_error: String,
    pub last_error_ms: i64,
    pub consecutive_failures: u32,
}

/// Shared by every subsystem; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    tasks: Family<StatePool, Gauge>,
    outbox_depth: Gauge,
    sqlite_statements: Counter,
    sqlite_commits: Counter,
    sqlite_counted: Mutex<()>,
    dispatch_latency: Histogram,
    grants: Counter,
    venv_grants: Family<VenvLabel, Counter>,
    lease_losses: Family<LossLabel, Counter>,
    retries: Family<RetryLabel, Counter>,
    aborted: Counter,
    connected_agents: Gauge,
    sqs_calls: Family<CallLabel, Counter>,
    sqs_messages: Family<PoolOutcome, Counter>,
    sqs_idle_polls: Family<PoolLabel, Counter>,
    leases_reclaimed: Counter,
    tls_reloads: Family<ReloadLabels, Counter>,
    gms_writes: Family<GmsWriteLabels, Counter>,
    foreign_work: Family<ForeignLabels, Counter>,
    channel_last_success: Family<PoolChannel, Gauge>,
    channel_failures: Family<PoolChannel, Gauge>,
    channel_errors: Family<PoolChannel, Counter>,
    channels: Mutex<BTreeMap<(String, Intake), ChannelHealth>>,
    pool_agents: Family<PoolLabel, Gauge>,
    /// Every pool that had an agent (its gauge goes to 0, not away, when the last one leaves).
    agent_pools: Mutex<std::collections::BTreeSet<String>>,
    oldest_waiting: Family<PoolLabel, Gauge>,
    agent_cert_expiry: Family<WorkerLabel, Gauge>,
    controller_cert_expiry: Gauge,
    /// The controller's certificate file, read at each scrape for its expiry.
    controller_cert: Mutex<Option<std::path::PathBuf>>,
    ready_gauge: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let inner = Inner {
            tasks: Family::default(),
            outbox_depth: Gauge::default(),
            sqlite_statements: Counter::default(),
            sqlite_commits: Counter::default(),
            sqlite_counted: Mutex::new(()),
            dispatch_latency: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            grants: Counter::default(),
            venv_grants: Family::default(),
            lease_losses: Family::default(),
            retries: Family::default(),
            aborted: Counter::default(),
            connected_agents: Gauge::default(),
            sqs_calls: Family::default(),
            sqs_messages: Family::default(),
            sqs_idle_polls: Family::default(),
            leases_reclaimed: Counter::default(),
            tls_reloads: Family::default(),
            gms_writes: Family::default(),
            foreign_work: Family::default(),
            channel_last_success: Family::default(),
            channel_failures: Family::default(),
            channel_errors: Family::default(),
            channels: Mutex::default(),
            pool_agents: Family::default(),
            agent_pools: Mutex::default(),
            oldest_waiting: Family::default(),
            agent_cert_expiry: Family::default(),
            controller_cert_expiry: Gauge::default(),
            controller_cert: Mutex::default(),
            ready_gauge: Gauge::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register("outpost_tasks", "Tasks by state and pool", inner.tasks.clone());
        registry.register(
            "outpost_dispatch_latency_seconds",
            "Time from a task being ready in the queue to its grant to an agent",
            inner.dispatch_latency.clone(),
        );
        registry.register("outpost_grants", "Tasks granted to agents", inner.grants.clone());
        registry.register(
            "outpost_venv_grants",
            "Grants of tasks needing a pinned-version venv, by whether the agent already held it",
            inner.venv_grants.clone(),
        );
        registry.register(
            "outpost_lease_losses",
            "Attempts whose agent was lost, by reason",
            inner.lease_losses.clone(),
        );
        registry.register("outpost_retries", "Tasks put back in the queue, by reason", inner.retries.clone());
        registry.register("outpost_aborted", "Tasks ABORTED after exhausting their attempts", inner.aborted.clone());
        registry.register("outpost_connected_agents", "Agents with an open session", inner.connected_agents.clone());
        registry.register("outpost_sqs_calls", "SQS API calls, by call", inner.sqs_calls.clone());
        registry.register(
            "outpost_sqs_messages",
            "SQS messages received, by pool and what became of them (taken, adopted, deleted, given_back, \
             quarantined, left)",
            inner.sqs_messages.clone(),
        );
        registry.register(
            "outpost_sqs_idle_polls",
            "Times a pool's SQS intake did not receive because no agent slot was free for it",
            inner.sqs_idle_polls.clone(),
        );
        registry.register(
            "outpost_leases_reclaimed",
            "Attempts an agent still held when it connected (after a controller restart or a reconnect), kept running",
            inner.leases_reclaimed.clone(),
        );
        registry.register(
            "outpost_tls_reloads",
            "Changed TLS files seen by a listener (grpc, join), by outcome (loaded, or failed: the previous \
             certificate stays in use)",
            inner.tls_reloads.clone(),
        );
        registry.register(
            "outpost_channel_last_success_timestamp_seconds",
            "When a pool's channel (sqs, cloud_credentials, gms) last had a call succeed (Unix seconds)",
            inner.channel_last_success.clone(),
        );
        registry.register(
            "outpost_channel_consecutive_failures",
            "Calls of a pool's channel that failed since its last success",
            inner.channel_failures.clone(),
        );
        registry.register("outpost_channel_errors", "Failed calls of a pool's channel", inner.channel_errors.clone());
        registry.register(
            "outpost_pool_agents",
            "Connected agents serving a pool that take new work (draining ones left out)",
            inner.pool_agents.clone(),
        );
        registry.register(
            "outpost_oldest_waiting_seconds",
            "How long a pool's oldest queued task has waited (0 = none waiting)",
            inner.oldest_waiting.clone(),
        );
        registry.register(
            "outpost_agent_cert_expiry_timestamp_seconds",
            "When the certificate the controller last issued to a connected agent expires (Unix seconds)",
            inner.agent_cert_expiry.clone(),
        );
        registry.register(
            "outpost_controller_cert_expiry_timestamp_seconds",
            "When the controller's serving certificate expires (Unix seconds)",
            inner.controller_cert_expiry.clone(),
        );
        registry.register("outpost_ready", "1 while the controller is serving (as /readyz)", inner.ready_gauge.clone());
        registry.register("outpost_gms_writes", "Writes to DataHub GMS, by kind and outcome", inner.gms_writes.clone());
        registry.register(
            "outpost_sqs_foreign_work",
            "SQS messages for work of DataHub's own executor (assertion monitors), by task and outcome",
            inner.foreign_work.clone(),
        );
        registry.register(
            "outpost_gms_outbox_depth",
            "GMS writes waiting in the durable outbox",
            inner.outbox_depth.clone(),
        );
        registry.register(
            "outpost_sqlite_statements",
            "SQL statements the SQLite writer ran (BEGIN and COMMIT left out)",
            inner.sqlite_statements.clone(),
        );
        registry.register(
            "outpost_sqlite_commits",
            "Transactions the SQLite writer committed",
            inner.sqlite_commits.clone(),
        );
        // Every series exists from the start (a scrape shows zeros, not gaps).
        for &venv in Warmth::ALL {
            let _ = inner.venv_grants.get_or_create(&VenvLabel { venv });
        }
        for reason in Loss::ALL {
            let _ = inner.lease_losses.get_or_create(&LossLabel { reason });
        }
        for reason in RetryReason::ALL {
            let _ = inner.retries.get_or_create(&RetryLabel { reason });
        }
        for &call in SqsCall::ALL {
            let _ = inner.sqs_calls.get_or_create(&CallLabel { call });
        }
        for &listener in Listener::ALL {
            for &outcome in Reload::ALL {
                let _ = inner.tls_reloads.get_or_create(&ReloadLabels { listener, outcome });
            }
        }
        for &kind in GmsKind::ALL {
            for &outcome in GmsOutcome::ALL {
                let _ = inner.gms_writes.get_or_create(&GmsWriteLabels { kind, outcome });
            }
        }
        for &task in ForeignTask::ALL {
            for &outcome in ForeignOutcome::ALL {
                let _ = inner.foreign_work.get_or_create(&ForeignLabels { task, outcome });
            }
        }
        Metrics { inner: Arc::new(Inner { registry, ..inner }) }
    }
}

impl Metrics {
    /// A task was granted after waiting `seconds` in the queue; `warm`: whether the agent holds the venv it
    /// needs (`None`: it needs none).
    pub fn granted(&self, seconds: f64, warm: Option<bool>) {
        self.inner.grants.inc();
        if let Some(warm) = warm {
            let venv = if warm { Warmth::Warm } else { Warmth::Cold };
            self.inner.venv_grants.get_or_create(&VenvLabel { venv }).inc();
        }
        self.inner.dispatch_latency.observe(seconds);
    }

    pub fn lease_lost(&self, loss: Loss) {
        self.inner.lease_losses.get_or_create(&LossLabel { reason: loss }).inc();
    }

    pub fn retried(&self, reason: RetryReason) {
        self.inner.retries.get_or_create(&RetryLabel { reason }).inc();
    }

    /// A message for work of DataHub's own executor.
    pub fn foreign_work(&self, task: ForeignTask, outcome: ForeignOutcome) {
        self.inner.foreign_work.get_or_create(&ForeignLabels { task, outcome }).inc();
    }

    pub fn aborted(&self) {
        self.inner.aborted.inc();
    }

    pub fn set_connected_agents(&self, n: usize) {
        self.inner.connected_agents.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn sqs_call(&self, call: SqsCall) {
        self.inner.sqs_calls.get_or_create(&CallLabel { call }).inc();
    }

    /// `pool`'s SQS intake started: its message and idle-poll series exist from now on (a scrape shows zeros).
    pub fn sqs_pool(&self, pool: &str) {
        for &outcome in SqsMessageOutcome::ALL {
            let _ = self.inner.sqs_messages.get_or_create(&PoolOutcome { pool: pool.to_owned(), outcome });
        }
        let _ = self.inner.sqs_idle_polls.get_or_create(&PoolLabel { pool: pool.to_owned() });
    }

    /// A message received from `pool`'s queue, and what became of it.
    pub fn sqs_message(&self, pool: &str, outcome: SqsMessageOutcome) {
        self.inner.sqs_messages.get_or_create(&PoolOutcome { pool: pool.to_owned(), outcome }).inc();
    }

    /// `pool`'s SQS intake skipped a receive: no agent slot was free for it.
    pub fn sqs_idle_poll(&self, pool: &str) {
        self.inner.sqs_idle_polls.get_or_create(&PoolLabel { pool: pool.to_owned() }).inc();
    }

    /// An agent connected still holding `n` attempts, kept running.
    pub fn leases_reclaimed(&self, n: usize) {
        self.inner.leases_reclaimed.inc_by(n as u64);
    }

    /// `listener` (grpc or join) saw changed TLS files and loaded them (`loaded`) or kept the previous ones.
    pub fn tls_reloaded(&self, listener: Listener, loaded: bool) {
        let outcome = if loaded { Reload::Loaded } else { Reload::Failed };
        self.inner.tls_reloads.get_or_create(&ReloadLabels { listener, outcome }).inc();
    }

    /// SQS calls so far, by call.
    pub fn sqs_calls(&self) -> Vec<(SqsCall, u64)> {
        SqsCall::ALL.iter().map(|&call| (call, self.inner.sqs_calls.get_or_create(&CallLabel { call }).get())).collect()
    }

    /// Lease losses by reason.
    pub fn lease_losses(&self) -> Vec<(Loss, u64)> {
        Loss::ALL
            .iter()
            .map(|&reason| (reason, self.inner.lease_losses.get_or_create(&LossLabel { reason }).get()))
            .collect()
    }

    /// Retries by reason.
    pub fn retries(&self) -> Vec<(RetryReason, u64)> {
        RetryReason::ALL
            .iter()
            .map(|&reason| (reason, self.inner.retries.get_or_create(&RetryLabel { reason }).get()))
            .collect()
    }

    pub fn gms_write(&self, kind: GmsKind, outcome: GmsOutcome) {
        self.inner.gms_writes.get_or_create(&GmsWriteLabels { kind, outcome }).inc();
    }

    /// A call of `pool`'s `channel` succeeded at `now_ms`.
    pub fn channel_ok(&self, pool: &str, channel: Intake, now_ms: i64) {
        let key = PoolChannel { pool: pool.to_owned(), channel };
        self.inner.channel_last_success.get_or_create(&key).set(now_ms / 1000);
        self.inner.channel_failures.get_or_create(&key).set(0);
        let mut channels = self.inner.channels.lock().unwrap_or_else(|e| e.into_inner());
        let health = channels.entry((pool.to_owned(), channel)).or_default();
        health.last_success_ms = now_ms;
        health.consecutive_failures = 0;
    }

    /// A call of `pool`'s `channel` failed at `now_ms` with `error` (words an operator can act on; never a secret).
    pub fn channel_failed(&self, pool: &str, channel: Intake, error: &str, now_ms: i64) {
        let key = PoolChannel { pool: pool.to_owned(), channel };
        self.inner.channel_errors.get_or_create(&key).inc();
        let mut channels = self.inner.channels.lock().unwrap_or_else(|e| e.into_inner());
        let health = channels.entry((pool.to_owned(), channel)).or_default();
        health.last_error = error.to_owned();
        health.last_error_ms = now_ms;
        health.consecutive_failures = health.consecutive_failures.saturating_add(1);
        self.inner.channel_failures.get_or_create(&key).set(i64::from(health.consecutive_failures));
    }

    /// Every pool's channels, by pool then channel.
    pub fn channels(&self) -> Vec<(String, Intake, ChannelHealth)> {
        let channels = self.inner.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.iter().map(|((pool, channel), health)| (pool.clone(), *channel, health.clone())).collect()
    }

    /// Connected, non-draining agents per pool; a pool seen before and now without agents shows 0.
    pub fn set_pool_agents(&self, pools: &[(String, u32)]) {
        let mut known = self.inner.agent_pools.lock().unwrap_or_else(|e| e.into_inner());
        known.extend(pools.iter().map(|(pool, _)| pool.clone()));
        for pool in known.iter() {
            let agents = pools.iter().find(|(p, _)| p == pool).map_or(0, |(_, n)| *n);
            self.inner.pool_agents.get_or_create(&PoolLabel { pool: pool.clone() }).set(i64::from(agents));
        }
    }

    /// The certificate file whose expiry `outpost_controller_cert_expiry_timestamp_seconds` shows (read at scrapes).
    pub fn watch_controller_certificate(&self, path: std::path::PathBuf) {
        *self.inner.controller_cert.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// The controller is serving (store open, gRPC bound).
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready_gauge.set(i64::from(ready));
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// The whole exposition: recorded series plus gauges read from the store now (left out when it cannot be
    /// read).
    pub async fn render(&self, store: &Store) -> String {
        let inner = &self.inner;
        inner.tasks.clear();
        inner.oldest_waiting.clear();
        if let Ok(counts) = store.task_counts().await {
            // Every state of every pool with tasks, 0 where none is in it: a graph shows 0, not a gap.
            for (_, pool, _) in &counts {
                for state in outpost_common::task::TaskState::ALL {
                    inner.tasks.get_or_create(&StatePool { state: state.as_str(), pool: pool.to_string() }).set(0);
                }
            }
            for (state, pool, n) in counts {
                inner
                    .tasks
                    .get_or_create(&StatePool { state: state.as_str(), pool: pool.to_string() })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
                // Every pool with tasks shows how long its oldest waits (0 below when none waits).
                inner.oldest_waiting.get_or_create(&PoolLabel { pool: pool.to_string() }).set(0);
            }
        }
        if let Ok(depth) = store.outbox_depth().await {
            inner.outbox_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        {
            // The writer's totals as counters: one scrape at a time turns them into increments.
            let _one = inner.sqlite_counted.lock().unwrap_or_else(|e| e.into_inner());
            let (statements, commits) = store.write_counts();
            inner.sqlite_statements.inc_by(statements.saturating_sub(inner.sqlite_statements.get()));
            inner.sqlite_commits.inc_by(commits.saturating_sub(inner.sqlite_commits.get()));
        }
        let now_ms = outpost_common::clock::unix_ms();
        if let Ok(backlogs) = store.pool_backlogs().await {
            for b in backlogs {
                let waited = if b.oldest_queued_ms > 0 { (now_ms - b.oldest_queued_ms).max(0) / 1000 } else { 0 };
                inner.oldest_waiting.get_or_create(&PoolLabel { pool: b.pool.to_string() }).set(waited);
            }
        }
        // Certificates of connected agents only: a worker long gone is not an expiring certificate.
        inner.agent_cert_expiry.clear();
        if let (Ok(workers), Ok(expiries)) = (store.workers().await, store.certificate_expiries().await) {
            let connected: std::collections::HashSet<&str> =
                workers.iter().filter(|w| w.connected_since_ms.is_some()).map(|w| w.seen.worker_id.as_str()).collect();
            for (worker, expires_ms, _) in expiries {
                if connected.contains(worker.as_str()) {
                    inner
                        .agent_cert_expiry
                        .get_or_create(&WorkerLabel { worker: worker.to_string() })
                        .set(expires_ms / 1000);
                }
            }
        }
        let cert = inner.controller_cert.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some((_, not_after)) = cert
            .and_then(|path| std::fs::read_to_string(path).ok())
            .and_then(|pem| outpost_common::identity::pem_validity(&pem))
        {
            let seconds = not_after.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            inner.controller_cert_expiry.set(i64::try_from(seconds).unwrap_or(i64::MAX));
        }
        outpost_common::metrics::encode(&inner.registry)
    }
}
