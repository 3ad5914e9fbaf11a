//! The engine's side of the conversation with an agent: its Hello, the session it gets, the work and commands
//! it is sent, and the results it reports — typed, never protobuf (the gRPC edge converts).

use std::collections::BTreeMap;

use outpost_common::ids::{AttemptRef, PoolId, WorkerId};
use outpost_common::task::ResultStatus;
use outpost_common::venv::VenvSpec;

use outpost_common::task::RunResult;

/// What an agent reported at the end of an attempt.
#[derive(Clone, Debug)]
pub struct AttemptResult {
    pub status: ResultStatus,
    pub record: RunResult,
}

/// Identifies one agent session (a worker may reconnect; events of an old session are ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// An agent's Hello, parsed and identity-checked.
#[derive(Clone, Debug)]
pub struct AgentHello {
    pub worker_id: WorkerId,
    pub pools: Vec<PoolId>,
    pub slots: u32,
    pub version: String,
    pub labels: BTreeMap<String, String>,
    pub held: Vec<AttemptRef>,
    /// The ready venvs it holds.
    pub venvs: Vec<HeldVenv>,
}

pub use outpost_common::venv::HeldVenv;

/// The engine's answer to a Hello.
#[derive(Clone, Debug)]
pub struct Welcome {
    pub session: SessionId,
    /// Held attempts the agent must stop (no longer its to run).
    pub cancel: Vec<AttemptRef>,
}

/// Work for an agent.
#[derive(Clone, Debug)]
pub struct Assignment {
    pub attempt: AttemptRef,
    pub task_name: String,
    pub args: BTreeMap<String, String>,
    pub pool: PoolId,
    pub attempt_number: u32,
    /// Stop with TIMED_OUT at this time (Unix ms).
    pub deadline_unix_ms: Option<i64>,
}

/// What the engine asks of a connected agent.
#[derive(Clone, Debug)]
pub enum AgentCommand {
    Assign(Assignment),
    Cancel {
        attempt: AttemptRef,
        reason: String,
    },
    Drain {
        reason: String,
    },
    /// Build this venv in idle time.
    Warm(VenvSpec),
}
