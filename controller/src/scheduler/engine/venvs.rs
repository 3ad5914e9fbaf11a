//! Warm-up: asking agents of a pool to build a venv before work needing it arrives. What agents hold is part of
//! their session (`Hello`, then `VenvsHeld`); placement reads it in `dispatch.rs`.

use outpost_common::ids::{PoolId, WorkerId};
use outpost_common::venv::VenvSpec;
use tracing::info;

use super::Engine;
use crate::scheduler::AgentCommand;

impl Engine {
    /// Asks up to `agents` (0: every) connected, non-draining agents of `pool` that do not hold the venv yet —
    /// the least busy first — to build it. Returns the workers asked.
    pub(super) fn warm(&mut self, pool: &PoolId, spec: VenvSpec, agents: u32) -> Vec<WorkerId> {
        let key = spec.key();
        let mut cold: Vec<(u32, WorkerId)> = self
            .sessions
            .values()
            .filter(|s| !s.draining && s.hello.pools.contains(pool))
            .filter(|s| !s.hello.venvs.iter().any(|v| v.key == key))
            .map(|s| (s.credits, s.hello.worker_id.clone()))
            .collect();
        // Most free slots first, then by worker ID.
        cold.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        if agents > 0 {
            cold.truncate(agents as usize);
        }
        let asked: Vec<WorkerId> = cold.into_iter().map(|(_, worker)| worker).collect();
        for worker in &asked {
            info!(worker = %worker, venv = %key, requirement = %spec.datahub_requirement(), "asking for a warm venv");
            self.send(worker, AgentCommand::Warm(spec.clone()));
        }
        asked
    }
}
