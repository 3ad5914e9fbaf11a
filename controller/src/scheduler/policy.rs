//! Placement: which connected agent gets the next task of a pool. Pure functions, no I/O, table-tested.

use outpost_common::ids::{PoolId, WorkerId};

/// What placement needs to know about one connected agent.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub worker_id: &'a WorkerId,
    pub pools: &'a [PoolId],
    /// Assignments the agent has asked for and not yet received.
    pub credits: u32,
    pub draining: bool,
}

/// Picks the agent for a task of `pool`: among agents that serve the pool, are not draining and have credit,
/// the one with the most credit left (spreads work across the fleet); ties go to the lowest worker ID so the
/// choice is deterministic. `None` when nobody can take it now.
pub fn choose(pool: &PoolId, candidates: &[Candidate<'_>]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.credits > 0 && !c.draining && c.pools.contains(pool))
        .max_by(|(_, a), (_, b)| a.credits.cmp(&b.credits).then_with(|| b.worker_id.cmp(a.worker_id)))
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Agent {
        worker: WorkerId,
        pools: Vec<PoolId>,
        credits: u32,
        draining: bool,
    }

    fn agent(worker: &str, pools: &[&str], credits: u32, draining: bool) -> Agent {
        Agent {
            worker: WorkerId::parse(worker).unwrap(),
            pools: pools.iter().map(|p| PoolId::parse(p).unwrap()).collect(),
            credits,
            draining,
        }
    }

    /// Runs `choose` for a task of `pool` over `agents` and returns the chosen worker ID.
    fn check(pool: &str, agents: &[Agent]) -> Option<String> {
        let candidates: Vec<Candidate<'_>> = agents
            .iter()
            .map(|a| Candidate { worker_id: &a.worker, pools: &a.pools, credits: a.credits, draining: a.draining })
            .collect();
        choose(&PoolId::parse(pool).unwrap(), &candidates).map(|i| agents[i].worker.to_string())
    }

    #[test]
    fn placement_table() {
        let cases: Vec<(&str, &str, Vec<Agent>, Option<&str>)> = vec![
            ("no agents", "p", vec![], None),
            ("only agent serves another pool", "p", vec![agent("a", &["q"], 3, false)], None),
            ("only agent has no credit", "p", vec![agent("a", &["p"], 0, false)], None),
            ("only agent is draining", "p", vec![agent("a", &["p"], 3, true)], None),
            ("one able agent", "p", vec![agent("a", &["p"], 1, false)], Some("a")),
            (
                "most credit wins",
                "p",
                vec![agent("a", &["p"], 1, false), agent("b", &["p"], 4, false), agent("c", &["p"], 2, false)],
                Some("b"),
            ),
            (
                "tie goes to the lowest worker ID",
                "p",
                vec![agent("b", &["p"], 2, false), agent("a", &["p"], 2, false)],
                Some("a"),
            ),
            (
                "pool filter beats credit",
                "p",
                vec![agent("a", &["q"], 9, false), agent("b", &["q", "p"], 1, false)],
                Some("b"),
            ),
            (
                "draining agent skipped even with most credit",
                "p",
                vec![agent("a", &["p"], 9, true), agent("b", &["p"], 1, false)],
                Some("b"),
            ),
        ];
        for (name, pool, agents, want) in cases {
            assert_eq!(check(pool, &agents).as_deref(), want, "case: {name}");
        }
    }
}
