//! The lease engine's flags: the timings it hands to agents and enforces, and the retry rules. Parsing and
//! checking only; never used to decide anything here.

use std::time::Duration;

use outpost_common::duration;

pub use crate::lifecycle::RetryPolicy;

/// The engine's flags: timings it hands to agents and enforces, and the retry rules.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "scheduler")]
#[command(next_help_heading = "Leases and scheduling")]
pub struct Config {
    /// How often agents heartbeat.
    #[arg(long, env = "OUTPOST_HEARTBEAT_INTERVAL", value_parser = duration::parse, default_value = "5s")]
    pub heartbeat_interval: Duration,
    /// A lease expires when its agent is silent this long; also the reconnect grace after a restart.
    #[arg(long, env = "OUTPOST_LEASE_TTL", value_parser = duration::parse, default_value = "30s")]
    pub lease_ttl: Duration,
    /// Application-level keepalive cadence on agent streams, both ways.
    #[arg(long, env = "OUTPOST_KEEPALIVE_INTERVAL", value_parser = duration::parse, default_value = "15s")]
    pub keepalive_interval: Duration,
    /// An assignment not acknowledged within this time is revoked and re-queued.
    #[arg(long, env = "OUTPOST_ACK_DEADLINE", value_parser = duration::parse, default_value = "10s")]
    pub ack_deadline: Duration,
    /// A cancel the agent never confirms ends CANCELLED after this time.
    #[arg(long, env = "OUTPOST_CANCEL_TIMEOUT", value_parser = duration::parse, default_value = "60s")]
    pub cancel_timeout: Duration,
    /// How often leases, deadlines and backoffs are checked and heartbeats persisted (one transaction each time).
    #[arg(long, env = "OUTPOST_SWEEP_INTERVAL", value_parser = duration::parse, default_value = "500ms")]
    pub sweep_interval: Duration,
    /// Stop a run still going after this long; it ends TIMED_OUT (unset: no limit, as in DataHub).
    #[arg(long, env = "OUTPOST_TASK_TIMEOUT", value_parser = duration::parse)]
    pub task_timeout: Option<Duration>,
    /// How long a task that needs a pinned-version venv may wait for a busy agent that already holds it, instead
    /// of going to a free agent that would build it (0: never wait; a warm free agent is preferred either way).
    #[arg(long, env = "OUTPOST_WARM_WAIT", value_parser = duration::parse, default_value = "0s")]
    pub warm_wait: Duration,
    /// A running attempt its live agent leaves out of this many heartbeats in a row is lost (re-queued): the agent
    /// is not running it.
    #[arg(long, env = "OUTPOST_HEARTBEAT_MISSES", default_value_t = 3)]
    pub heartbeat_misses: u32,
    #[command(flatten)]
    pub retry: RetryPolicy,
}

impl Config {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--heartbeat-interval", self.heartbeat_interval)?;
        duration::positive("--lease-ttl", self.lease_ttl)?;
        duration::positive("--keepalive-interval", self.keepalive_interval)?;
        duration::positive("--ack-deadline", self.ack_deadline)?;
        duration::positive("--cancel-timeout", self.cancel_timeout)?;
        duration::positive("--sweep-interval", self.sweep_interval)?;
        if let Some(timeout) = self.task_timeout {
            duration::positive("--task-timeout", timeout)?;
        }
        duration::shorter("--heartbeat-interval", self.heartbeat_interval, "--lease-ttl", self.lease_ttl)?;
        self.retry.validate()
    }
}
