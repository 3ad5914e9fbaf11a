//! What the engine answers about the fleet: a pool's demand and capacity, why a task is where it is (and its
//! wording, shared by the admin API and the status page), and workers as operators see them. Plain data; the
//! engine fills it in (`engine/views.rs`).

use std::collections::BTreeMap;

use outpost_common::ids::{PoolId, WorkerId};
use outpost_common::venv::VenvKey;

use super::HeldVenv;

/// How much work a pool could start now, for demand-driven intake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    /// Connected, non-draining agents serving the pool.
    pub agents: u32,
    /// Credits of connected, non-draining agents serving the pool.
    pub free_slots: u32,
    /// Tasks of the pool waiting in the queue (ready now).
    pub queued: u32,
}

/// Why a task is where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    NoAgentForPool,
    AgentsDraining,
    AllSlotsBusy,
    Backoff { not_before_ms: i64 },
    WaitingItsTurn,
    Assigned { worker: WorkerId },
    Running { worker: WorkerId },
    Cancelling { worker: WorkerId },
    Finished,
}

/// A task's state and why it is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub state: outpost_common::task::TaskState,
    pub why: Why,
    /// The pinned-version venv the task needs, and the connected agents of its pool that hold it now.
    pub venv: Option<VenvKey>,
    pub warm_on: Vec<WorkerId>,
}

impl Explanation {
    /// The explanation in words, as the admin API and the status page show it.
    pub fn describe(&self) -> String {
        let mut text = match &self.why {
            Why::NoAgentForPool => "no connected agent serves the task's pool".to_owned(),
            Why::AgentsDraining => "every agent serving the pool is draining".to_owned(),
            Why::AllSlotsBusy => "every agent serving the pool is busy (no free slot)".to_owned(),
            Why::Backoff { not_before_ms } => format!("waiting out a retry backoff until {not_before_ms} (Unix ms)"),
            Why::WaitingItsTurn => "queued behind older tasks of its pool".to_owned(),
            Why::Assigned { worker } => format!("granted to {worker}, waiting for its ack"),
            Why::Running { worker } => format!("running on {worker}"),
            Why::Cancelling { worker } => format!("cancel requested; waiting for {worker} to confirm"),
            Why::Finished => format!("finished as {}", self.state),
        };
        if let Some(key) = &self.venv {
            let holders: Vec<String> = self.warm_on.iter().map(ToString::to_string).collect();
            if holders.is_empty() {
                text.push_str(&format!("; needs venv {key}, which no connected agent of its pool holds yet"));
            } else {
                text.push_str(&format!("; needs venv {key}, held by {}", holders.join(", ")));
            }
        }
        text
    }
}

/// Connected agents of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolCapacity {
    pub pool: PoolId,
    /// Connected, not draining.
    pub agents: u32,
    pub draining: u32,
    pub free_slots: u32,
}

/// Where a worker is, as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    Ready,
    Draining,
    Disconnected,
}

/// One worker as the admin API shows it.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub worker_id: WorkerId,
    pub pools: Vec<PoolId>,
    pub slots: u32,
    pub slots_used: u32,
    pub version: String,
    pub state: WorkerState,
    pub connected_since_ms: Option<i64>,
    pub last_seen_ms: i64,
    pub labels: BTreeMap<String, String>,
    /// Ready venvs it holds (connected workers only).
    pub venvs: Vec<HeldVenv>,
}
