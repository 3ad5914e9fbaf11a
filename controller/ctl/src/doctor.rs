//! `outpostctl doctor`: what a running controller says about its fleet, as checks — each pool with waiting work has
//! connected agents, every agent runs this release, no agent certificate is about to expire. Only reads, through
//! the admin API.

use outpost_common::doctor::{Check, Verdict, check};
use outpost_common::pb;

const WEEK_MS: i64 = 7 * 86_400_000;

/// The checks for what the controller answered, at `now_ms`, for an outpostctl of `release`.
pub fn checks(stats: &pb::Stats, workers: &[pb::Worker], now_ms: i64, release: &str) -> Vec<Check> {
    let mut checks = vec![check(Verdict::Ok, "controller", "the admin API answers")];
    for pool in &stats.pools {
        let what = format!("pool {}", pool.pool);
        checks.push(match (pool.agents, pool.queued) {
            (0, 0) => check(Verdict::Warn, what, "no agent connected (nothing is waiting)"),
            (0, queued) => check(
                Verdict::Fail,
                what,
                format!("{queued} task(s) waiting and no agent connected: start agents for this pool, or see `outpostctl workers`"),
            ),
            (agents, queued) => check(
                Verdict::Ok,
                what,
                format!("{agents} agent(s), {} free slot(s), {queued} waiting", pool.free_slots),
            ),
        });
    }
    let connected: Vec<&pb::Worker> =
        workers.iter().filter(|w| w.state != pb::WorkerState::Disconnected as i32 && w.revoked_unix_ms == 0).collect();
    let other: Vec<String> = connected
        .iter()
        .filter(|w| !w.version.is_empty() && w.version != release)
        .map(|w| format!("{} ({})", w.worker_id, w.version))
        .collect();
    checks.push(match other.is_empty() {
        true => check(Verdict::Ok, "agent versions", format!("{} connected agent(s) on {release}", connected.len())),
        false => check(
            Verdict::Warn,
            "agent versions",
            format!("not on {release}: {}; roll them to one release", other.join(", ")),
        ),
    });
    for worker in connected.iter().filter(|w| w.cert_expires_unix_ms > 0) {
        let left = worker.cert_expires_unix_ms - now_ms;
        if left < WEEK_MS {
            let what = format!("certificate of {}", worker.worker_id);
            checks.push(match left <= 0 {
                true => check(Verdict::Fail, what, "expired: the agent must join again with a token"),
                false => check(
                    Verdict::Warn,
                    what,
                    format!("expires in {} h; agents renew at half-life, so renewal is failing", left / 3_600_000),
                ),
            });
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, version: &str, expires: i64) -> pb::Worker {
        pb::Worker {
            worker_id: id.into(),
            version: version.into(),
            state: pb::WorkerState::Ready as i32,
            cert_expires_unix_ms: expires,
            ..Default::default()
        }
    }

    #[test]
    fn waiting_work_without_agents_fails_and_stale_agents_are_named() {
        let stats = pb::Stats {
            pools: vec![
                pb::PoolStats { pool: "remote".into(), queued: 3, agents: 0, ..Default::default() },
                pb::PoolStats { pool: "default".into(), queued: 1, agents: 2, free_slots: 5, ..Default::default() },
            ],
            ..Default::default()
        };
        let now = 1_000 * WEEK_MS;
        let workers = [worker("w-1", "0.1.0", now + 2 * WEEK_MS), worker("w-2", "0.0.9", now + 3_600_000)];
        let found: Vec<(Verdict, String)> = checks(&stats, &workers, now, "0.1.0")
            .into_iter()
            .map(|c| (c.verdict, format!("{}: {}", c.what, c.detail)))
            .collect();
        assert_eq!(
            found,
            [
                (Verdict::Ok, "controller: the admin API answers".to_owned()),
                (
                    Verdict::Fail,
                    "pool remote: 3 task(s) waiting and no agent connected: start agents for this pool, or see \
                     `outpostctl workers`"
                        .to_owned()
                ),
                (Verdict::Ok, "pool default: 2 agent(s), 5 free slot(s), 1 waiting".to_owned()),
                (Verdict::Warn, "agent versions: not on 0.1.0: w-2 (0.0.9); roll them to one release".to_owned()),
                (
                    Verdict::Warn,
                    "certificate of w-2: expires in 1 h; agents renew at half-life, so renewal is failing".to_owned()
                ),
            ]
        );
    }
}
