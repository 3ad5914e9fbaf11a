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
    /// It holds the venv the task needs (always false for a task that needs none).
    pub warm: bool,
}

/// Picks the agent for a task of `pool`: among agents that serve the pool, are not draining and have credit,
/// one that holds the task's venv first (it starts without building), then the one with the most credit left
/// (spreads work across the fleet); ties go to the lowest worker ID so the choice is deterministic. `None` when
/// nobody can take it now.
pub fn choose(pool: &PoolId, candidates: &[Candidate<'_>]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| able(pool, c))
        .max_by(|(_, a), (_, b)| {
            a.warm.cmp(&b.warm).then(a.credits.cmp(&b.credits)).then_with(|| b.worker_id.cmp(a.worker_id))
        })
        .map(|(index, _)| index)
}

fn able(pool: &PoolId, candidate: &Candidate<'_>) -> bool {
    candidate.credits > 0 && !candidate.draining && candidate.pools.contains(pool)
}

/// Whether a task that would go to a cold agent should rather wait for a busy warm one: only within
/// `--warm-wait` of becoming ready, and only while an agent of its pool that is not draining holds its venv.
pub fn wait_for_warm(
    pool: &PoolId,
    candidates: &[Candidate<'_>],
    ready_for: std::time::Duration,
    warm_wait: std::time::Duration,
) -> bool {
    ready_for < warm_wait && candidates.iter().any(|c| c.warm && !c.draining && c.pools.contains(pool))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Agent {
        worker: WorkerId,
        pools: Vec<PoolId>,
        credits: u32,
        draining: bool,
        warm: bool,
    }

    fn agent(worker: &str, pools: &[&str], credits: u32, draining: bool) -> Agent {
        Agent {
            worker: WorkerId::parse(worker).unwrap(),
            pools: pools.iter().map(|p| PoolId::parse(p).unwrap()).collect(),
            credits,
            draining,
            warm: false,
        }
    }

    /// An agent that holds the task's venv.
    fn warm(agent: Agent) -> Agent {
        Agent { warm: true, ..agent }
    }

    fn candidates(agents: &[Agent]) -> Vec<Candidate<'_>> {
        agents
            .iter()
            .map(|a| Candidate {
                worker_id: &a.worker,
                pools: &a.pools,
                credits: a.credits,
                draining: a.draining,
                warm: a.warm,
            })
            .collect()
    }

    /// Runs `choose` for a task of `pool` over `agents` and returns the chosen worker ID.
    fn check(pool: &str, agents: &[Agent]) -> Option<String> {
        choose(&PoolId::parse(pool).unwrap(), &candidates(agents)).map(|i| agents[i].worker.to_string())
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
            (
                "the agent holding the venv beats more credit",
                "p",
                vec![agent("a", &["p"], 4, false), warm(agent("b", &["p"], 1, false)), agent("c", &["p"], 3, false)],
                Some("b"),
            ),
            (
                "a warm agent without credit is skipped",
                "p",
                vec![warm(agent("a", &["p"], 0, false)), agent("b", &["p"], 1, false)],
                Some("b"),
            ),
            (
                "a warm draining agent is skipped",
                "p",
                vec![warm(agent("a", &["p"], 5, true)), agent("b", &["p"], 1, false)],
                Some("b"),
            ),
            (
                "among warm agents the most credit wins",
                "p",
                vec![warm(agent("a", &["p"], 1, false)), warm(agent("b", &["p"], 2, false))],
                Some("b"),
            ),
        ];
        for (name, pool, agents, want) in cases {
            assert_eq!(check(pool, &agents).as_deref(), want, "case: {name}");
        }
    }

    #[test]
    fn a_task_waits_for_a_busy_warm_agent_only_within_the_warm_wait() {
        use std::time::Duration;
        let p = PoolId::parse("p").unwrap();
        let busy_warm = [warm(agent("a", &["p"], 0, false)), agent("b", &["p"], 2, false)];
        let (second, five) = (Duration::from_secs(1), Duration::from_secs(5));
        assert!(wait_for_warm(&p, &candidates(&busy_warm), second, five));
        assert!(!wait_for_warm(&p, &candidates(&busy_warm), five, five), "waited long enough");
        assert!(!wait_for_warm(&p, &candidates(&busy_warm), Duration::ZERO, Duration::ZERO), "the default: never");
        let draining_warm = [warm(agent("a", &["p"], 0, true)), agent("b", &["p"], 2, false)];
        assert!(!wait_for_warm(&p, &candidates(&draining_warm), second, five), "a draining agent takes nothing");
        let other_pool = [warm(agent("a", &["q"], 0, false)), agent("b", &["p"], 2, false)];
        assert!(!wait_for_warm(&p, &candidates(&other_pool), second, five));
    }
}
