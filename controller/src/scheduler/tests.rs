//! Engine tests in-process against a real store: group commit, what a failed commit leaves behind, and the
//! sweep's deadlines (ack, lease, cancel) with sub-second timings. Paused tokio time does not mix with the
//! store's I/O threads (the clock auto-advances while the writer works), so the deadlines are short and real.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_common::ids::{PoolId, TaskId, WorkerId};
use outpost_common::task::TaskState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::lifecycle::RetryPolicy;
use crate::metrics::Metrics;
use crate::store::{AttemptRecord, NewTask, Store, TaskRecord};
use outpost_common::task::ResultStatus;
use outpost_common::task::RunResult;
use outpost_common::venv::VenvSpec;

fn config() -> Config {
    Config {
        heartbeat_interval: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(30),
        keepalive_interval: Duration::from_secs(15),
        ack_deadline: Duration::from_secs(30),
        cancel_timeout: Duration::from_secs(30),
        sweep_interval: Duration::from_secs(60),
        task_timeout: None,
        warm_wait: Duration::ZERO,
        heartbeat_misses: 3,
        retry: RetryPolicy {
            max_attempts: 3,
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            retry_task_failures: false,
        },
    }
}

fn task(id: &str) -> NewTask {
    NewTask {
        id: TaskId::parse(id).unwrap(),
        task_name: "NOOP".into(),
        pool: PoolId::parse("p").unwrap(),
        args: BTreeMap::new(),
        source_type: "MANUAL_INGESTION_SOURCE".into(),
        requested_at_ms: 1,
        claim: None,
    }
}

/// A run that exited 0.
fn succeeded() -> AttemptResult {
    AttemptResult {
        status: ResultStatus::Succeeded,
        record: RunResult { exit_code: Some(0), report: "ok".into(), ..RunResult::default() },
    }
}

async fn start() -> (tempfile::TempDir, Store, Scheduler, CancellationToken) {
    start_with(config()).await
}

async fn start_with(config: Config) -> (tempfile::TempDir, Store, Scheduler, CancellationToken) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db"), false).await.unwrap();
    let token = CancellationToken::new();
    let (scheduler, _) = Scheduler::start(store.clone(), config, Metrics::default(), token.clone()).await.unwrap();
    (dir, store, scheduler, token)
}

fn id(text: &str) -> TaskId {
    TaskId::parse(text).unwrap()
}

/// Tells the engine every 100 ms that `worker` is alive, until aborted.
fn keep_alive(scheduler: &Scheduler, worker: &WorkerId, session: SessionId) -> tokio::task::JoinHandle<()> {
    let (scheduler, worker) = (scheduler.clone(), worker.clone());
    tokio::spawn(async move {
        loop {
            scheduler.seen(&worker, session).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Waits until the stored task satisfies `done` (polling, at most 10 s).
async fn stored_until(store: &Store, task: &str, done: impl Fn(&TaskRecord, &[AttemptRecord]) -> bool) -> TaskRecord {
    for _ in 0..1000 {
        if let Some((record, attempts)) = store.task(&id(task)).await.unwrap()
            && done(&record, &attempts)
        {
            return record;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("task {task} never got there: {:?}", store.task(&id(task)).await.unwrap());
}

async fn agent(scheduler: &Scheduler, worker: &str, credits: u32) -> (SessionId, mpsc::Receiver<AgentCommand>) {
    let (session, received, _) = agent_kicked_by(scheduler, worker, credits).await;
    (session, received)
}

/// An agent session and the token the engine cancels to close it.
async fn agent_kicked_by(
    scheduler: &Scheduler,
    worker: &str,
    credits: u32,
) -> (SessionId, mpsc::Receiver<AgentCommand>, CancellationToken) {
    agent_holding(scheduler, worker, credits, &[]).await
}

/// An agent session whose Hello says it holds `venvs`.
async fn agent_holding(
    scheduler: &Scheduler,
    worker: &str,
    credits: u32,
    venvs: &[&VenvSpec],
) -> (SessionId, mpsc::Receiver<AgentCommand>, CancellationToken) {
    let (commands, received) = mpsc::channel(64);
    let kick = CancellationToken::new();
    let hello = AgentHello {
        worker_id: WorkerId::parse(worker).unwrap(),
        pools: vec![PoolId::parse("p").unwrap()],
        slots: credits,
        version: "test".into(),
        labels: BTreeMap::new(),
        held: Vec::new(),
        venvs: venvs
            .iter()
            .map(|spec| HeldVenv {
                key: spec.key(),
                requirement: spec.datahub_requirement(),
                bytes: 1,
                last_used_ms: 0,
            })
            .collect(),
    };
    let welcome = scheduler.connect(hello, commands, kick.clone()).await.unwrap();
    scheduler.credit(&WorkerId::parse(worker).unwrap(), welcome.session, credits).await;
    (welcome.session, received, kick)
}

async fn assigned(received: &mut mpsc::Receiver<AgentCommand>) -> Assignment {
    match tokio::time::timeout(Duration::from_secs(10), received.recv()).await {
        Ok(Some(AgentCommand::Assign(assignment))) => assignment,
        other => panic!("expected an Assign, got {other:?}"),
    }
}

#[tokio::test]
async fn a_failed_commit_answers_not_durable_and_leaves_nothing_behind() {
    let (_dir, store, scheduler, token) = start().await;
    let (_, mut commands) = agent(&scheduler, "w1", 1).await;
    store.refuse_grants(true).await;

    // The submit and its grant share one transaction; the grant fails, so the submit did not happen either.
    let refused = scheduler.submit(task("a")).await;
    assert!(matches!(&refused, Err(Error::NotDurable(why)) if why.contains("disk full")), "{refused:?}");
    assert!(store.task(&TaskId::parse("a").unwrap()).await.unwrap().is_none());
    assert!(commands.try_recv().is_err(), "nothing is announced from a turn that did not commit");

    // The agent's credit came back: once the store takes writes again, the retried submit runs on it.
    store.refuse_grants(false).await;
    let (record, created) = scheduler.submit(task("a")).await.unwrap();
    assert!(created);
    assert_eq!(record.state, TaskState::Queued);
    let assignment = assigned(&mut commands).await;
    assert_eq!((assignment.attempt.task_id.as_str(), assignment.attempt.epoch.0), ("a", 1));
    let (stored, attempts) = store.task(&TaskId::parse("a").unwrap()).await.unwrap().unwrap();
    assert_eq!((stored.state, attempts.len()), (TaskState::Assigned, 1));
    token.cancel();
}

#[tokio::test]
async fn many_events_in_flight_from_one_session_are_all_answered_and_recorded() {
    let (_dir, store, scheduler, token) = start().await;
    let (session, mut commands) = agent(&scheduler, "w1", 8).await;
    let worker = WorkerId::parse("w1").unwrap();
    // 8 submits handed to the engine before any answer is awaited.
    let mut answers = Vec::new();
    for i in 0..8 {
        let scheduler = scheduler.clone();
        answers.push(tokio::spawn(async move { scheduler.submit(task(&format!("t{i}"))).await }));
    }
    for answer in answers {
        assert!(answer.await.unwrap().unwrap().1);
    }
    let mut acks = Vec::new();
    let mut results = Vec::new();
    for _ in 0..8 {
        let assignment = assigned(&mut commands).await;
        acks.push(scheduler.ack(&worker, session, assignment.attempt.clone()).await);
        results.push(scheduler.result(&worker, session, assignment.attempt, succeeded()).await);
    }
    for answer in acks.into_iter().chain(results) {
        answer.get().await.unwrap();
    }
    let succeeded = store.task_counts().await.unwrap();
    assert_eq!(succeeded, [(TaskState::Succeeded, PoolId::parse("p").unwrap(), 8)]);
    token.cancel();
}

#[tokio::test]
async fn a_finished_task_submitted_again_is_not_run_and_its_slot_goes_to_the_next_task() {
    let (_dir, store, scheduler, token) = start().await;
    let (session, mut commands) = agent(&scheduler, "w1", 1).await;
    let worker = WorkerId::parse("w1").unwrap();
    scheduler.submit(task("a")).await.unwrap();
    let first = assigned(&mut commands).await;
    scheduler.ack(&worker, session, first.attempt.clone()).await.get().await.unwrap();
    scheduler.result(&worker, session, first.attempt, succeeded()).await.get().await.unwrap();
    scheduler.credit(&worker, session, 1).await;

    // The same execution request again: known and finished, so it is answered as such and never granted.
    let (again, created) = scheduler.submit(task("a")).await.unwrap();
    assert_eq!((again.state, created), (TaskState::Succeeded, false));
    // The slot it was offered (if any) is free again: the next new task takes it.
    scheduler.submit(task("b")).await.unwrap();
    let next = assigned(&mut commands).await;
    assert_eq!((next.attempt.task_id.as_str(), next.attempt.epoch.0), ("b", 1));
    let (a, attempts) = store.task(&TaskId::parse("a").unwrap()).await.unwrap().unwrap();
    assert_eq!((a.state, a.epoch.0, attempts.len()), (TaskState::Succeeded, 1, 1));
    token.cancel();
}

#[tokio::test]
async fn a_failed_turn_fails_only_its_own_changes_and_no_unrelated_agent_is_disconnected() {
    let (_dir, store, scheduler, token) = start().await;
    // w2 runs b; w1 waits with a free slot.
    let (w2_session, mut w2_commands, w2_kick) = agent_kicked_by(&scheduler, "w2", 1).await;
    let w2 = WorkerId::parse("w2").unwrap();
    scheduler.submit(task("b")).await.unwrap();
    let b = assigned(&mut w2_commands).await;
    scheduler.ack(&w2, w2_session, b.attempt.clone()).await.get().await.unwrap();
    let (_, mut w1_commands, w1_kick) = agent_kicked_by(&scheduler, "w1", 1).await;

    // The store fails one turn (the grant of a to w1 cannot be written).
    store.refuse_grants(true).await;
    let refused = scheduler.submit(task("a")).await;
    assert!(matches!(&refused, Err(Error::NotDurable(why)) if why.contains("disk full")), "{refused:?}");
    store.refuse_grants(false).await;

    // Nobody was disconnected, and both sessions go on: w2's result is recorded, w1 gets the resubmitted task.
    assert!(!w1_kick.is_cancelled() && !w2_kick.is_cancelled());
    scheduler.result(&w2, w2_session, b.attempt, succeeded()).await.get().await.unwrap();
    assert_eq!(store.task(&id("b")).await.unwrap().unwrap().0.state, TaskState::Succeeded);
    scheduler.submit(task("a")).await.unwrap();
    let a = assigned(&mut w1_commands).await;
    assert_eq!((a.attempt.task_id.as_str(), a.attempt.epoch.0), ("a", 1));
    assert!(w1_commands.try_recv().is_err() && w2_commands.try_recv().is_err());
    let workers = scheduler.list_workers().await.unwrap();
    assert!(workers.iter().all(|w| w.state == WorkerState::Ready), "{workers:?}");
    token.cancel();
}

#[tokio::test]
async fn an_assignment_not_acknowledged_in_time_is_revoked_and_granted_again() {
    let config =
        Config { ack_deadline: Duration::from_millis(300), sweep_interval: Duration::from_millis(50), ..config() };
    let (_dir, store, scheduler, token) = start_with(config).await;
    let (_, mut commands) = agent(&scheduler, "w1", 2).await;
    scheduler.submit(task("a")).await.unwrap();
    let first = assigned(&mut commands).await;
    assert_eq!(first.attempt.epoch.0, 1);
    // No ack: after the deadline (and the retry backoff) the task is granted again, at a new epoch.
    let second = assigned(&mut commands).await;
    assert_eq!((second.attempt.task_id.as_str(), second.attempt.epoch.0), ("a", 2));
    let (_, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(attempts[0].state, outpost_common::task::AttemptState::Revoked);
    assert_eq!(attempts[0].reason.as_deref(), Some("the agent did not acknowledge the assignment in time"));
    token.cancel();
}

#[tokio::test]
async fn a_silent_agent_loses_its_lease_after_the_ttl_and_the_task_runs_elsewhere() {
    let config = Config {
        heartbeat_interval: Duration::from_millis(100),
        lease_ttl: Duration::from_millis(600),
        sweep_interval: Duration::from_millis(50),
        ..config()
    };
    let (_dir, store, scheduler, token) = start_with(config).await;
    let (session, mut commands, kick) = agent_kicked_by(&scheduler, "w1", 1).await;
    let w1 = WorkerId::parse("w1").unwrap();
    scheduler.submit(task("a")).await.unwrap();
    let first = assigned(&mut commands).await;
    scheduler.ack(&w1, session, first.attempt).await.get().await.unwrap();
    // w1 goes silent; w2 keeps talking.
    let (w2_session, mut w2_commands) = agent(&scheduler, "w2", 1).await;
    let w2 = WorkerId::parse("w2").unwrap();
    let beating = keep_alive(&scheduler, &w2, w2_session);
    let second = assigned(&mut w2_commands).await;
    assert_eq!((second.attempt.task_id.as_str(), second.attempt.epoch.0), ("a", 2));
    assert!(kick.is_cancelled(), "the silent agent's session was closed");
    let (_, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(attempts[0].state, outpost_common::task::AttemptState::Lost);
    beating.abort();
    token.cancel();
}

#[tokio::test]
async fn a_cancel_the_agent_never_confirms_ends_cancelled_after_the_timeout() {
    let config =
        Config { cancel_timeout: Duration::from_millis(500), sweep_interval: Duration::from_millis(50), ..config() };
    let (_dir, store, scheduler, token) = start_with(config).await;
    let (session, mut commands) = agent(&scheduler, "w1", 1).await;
    let w1 = WorkerId::parse("w1").unwrap();
    let beating = keep_alive(&scheduler, &w1, session);
    scheduler.submit(task("a")).await.unwrap();
    let first = assigned(&mut commands).await;
    scheduler.ack(&w1, session, first.attempt.clone()).await.get().await.unwrap();
    scheduler.cancel(&id("a"), "stop it", None).await.unwrap();
    match commands.recv().await {
        Some(AgentCommand::Cancel { attempt, .. }) => assert_eq!(attempt, first.attempt),
        other => panic!("expected a Cancel, got {other:?}"),
    }
    // The stored epoch moved on at once: a late result of the cancelled attempt cannot finish the task.
    assert_eq!(store.task(&id("a")).await.unwrap().unwrap().0.epoch.0, 2);
    let cancelled = stored_until(&store, "a", |t, _| t.state == TaskState::Cancelled).await;
    assert!(cancelled.result.unwrap().run.report.contains("the agent did not confirm the cancel in time"));
    beating.abort();
    token.cancel();
}

#[tokio::test]
async fn a_cancel_and_a_retry_in_one_turn_apply_in_the_order_they_were_asked() {
    let (_dir, store, scheduler, token) = start().await;
    scheduler.submit(task("a")).await.unwrap();
    // No agent: a stays queued. Cancel it, retry it and cancel it again, all handed in before any answer.
    let a = id("a");
    let (first, again, last) = tokio::join!(
        scheduler.cancel(&a, "first", None),
        scheduler.retry(&a, None),
        scheduler.cancel(&a, "second", None)
    );
    first.unwrap();
    again.unwrap();
    last.unwrap();
    let (record, _) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(record.state, TaskState::Cancelled);
    assert!(record.result.unwrap().run.report.contains("second"));
    // A retry of a queued task is refused with the life cycle's own reason.
    scheduler.retry(&id("a"), None).await.unwrap();
    let refused = scheduler.retry(&id("a"), None).await.unwrap_err();
    assert_eq!(refused.to_string(), "task a is QUEUED: only a finished task can be retried");
    token.cancel();
}

#[tokio::test]
async fn an_agent_cannot_take_more_work_than_its_slots_whatever_credit_it_sends() {
    let (_dir, _store, scheduler, token) = start().await;
    let (session, mut commands) = agent(&scheduler, "w1", 2).await;
    let w1 = WorkerId::parse("w1").unwrap();
    scheduler.credit(&w1, session, 100).await;
    for i in 0..5 {
        scheduler.submit(task(&format!("t{i}"))).await.unwrap();
    }
    let first = assigned(&mut commands).await;
    assigned(&mut commands).await;
    // A read of the store waits for every commit: whatever was granted has been announced by now.
    scheduler.list_workers().await.unwrap();
    assert!(commands.try_recv().is_err(), "a third task went to a 2-slot agent");
    // A slot freed by a result makes room for exactly one more.
    scheduler.ack(&w1, session, first.attempt.clone()).await.get().await.unwrap();
    scheduler.result(&w1, session, first.attempt, succeeded()).await.get().await.unwrap();
    scheduler.credit(&w1, session, 100).await;
    assigned(&mut commands).await;
    scheduler.list_workers().await.unwrap();
    assert!(commands.try_recv().is_err());
    token.cancel();
}

/// A task that needs `spec`'s venv (a pinned version of the `file` source).
fn pinned_task(id: &str, spec: &VenvSpec) -> NewTask {
    let mut task = task(id);
    task.task_name = "RUN_INGEST".into();
    task.args.insert("recipe".into(), format!(r#"{{"source": {{"type": "{}", "config": {{}}}}}}"#, spec.plugin));
    task.args.insert("version".into(), spec.version.clone().unwrap());
    task
}

#[tokio::test]
async fn a_task_goes_to_the_free_agent_holding_its_venv_and_otherwise_to_the_one_with_most_credit() {
    let (_dir, _store, scheduler, token) = start().await;
    let spec = VenvSpec::pinned("1.7.0.17", "file").unwrap();
    let other = VenvSpec::pinned("1.7.0.16", "file").unwrap();
    let (_, mut roomy) = agent(&scheduler, "a-roomy", 4).await;
    let (_, mut warm, _) = agent_holding(&scheduler, "b-warm", 1, &[&spec]).await;
    scheduler.submit(pinned_task("warm-1", &spec)).await.unwrap();
    assert_eq!(assigned(&mut warm).await.attempt.task_id.as_str(), "warm-1", "the warm agent despite less credit");
    let explained = scheduler.explain(&id("warm-1")).await.unwrap();
    assert_eq!(explained.venv, Some(spec.key()));
    assert_eq!(explained.warm_on, [WorkerId::parse("b-warm").unwrap()]);
    // Another version: nobody holds it, the most credit wins; and with the warm agent busy (no credit left, the
    // warm wait 0), a second task of the same venv goes to the cold agent at once.
    scheduler.submit(pinned_task("cold-1", &other)).await.unwrap();
    assert_eq!(assigned(&mut roomy).await.attempt.task_id.as_str(), "cold-1");
    scheduler.submit(pinned_task("warm-2", &spec)).await.unwrap();
    assert_eq!(assigned(&mut roomy).await.attempt.task_id.as_str(), "warm-2", "never waits by default");
    // Warm-up asks agents of the pool that do not hold it yet, the least busy first.
    let asked = scheduler.warm(&PoolId::parse("p").unwrap(), spec.clone(), 0, None).await.unwrap();
    assert_eq!(asked, [WorkerId::parse("a-roomy").unwrap()]);
    match roomy.recv().await {
        Some(AgentCommand::Warm(asked_for)) => assert_eq!(asked_for, spec),
        other => panic!("expected a warm-up request, got {other:?}"),
    }
    token.cancel();
}

#[tokio::test]
async fn with_a_warm_wait_a_task_waits_for_its_busy_warm_agent_and_then_goes_cold() {
    let config =
        Config { warm_wait: Duration::from_millis(600), sweep_interval: Duration::from_millis(50), ..config() };
    let (_dir, _store, scheduler, token) = start_with(config).await;
    let spec = VenvSpec::pinned("1.7.0.17", "file").unwrap();
    let (warm_session, mut warm, _) = agent_holding(&scheduler, "b-warm", 1, &[&spec]).await;
    let (_, mut cold) = agent(&scheduler, "a-cold", 4).await;
    scheduler.submit(pinned_task("first", &spec)).await.unwrap();
    let first = assigned(&mut warm).await;
    scheduler.submit(pinned_task("second", &spec)).await.unwrap();
    // The warm agent finishes within the wait: the second task goes to it, not to the free cold agent.
    let worker = WorkerId::parse("b-warm").unwrap();
    scheduler.ack(&worker, warm_session, first.attempt.clone()).await.get().await.unwrap();
    scheduler.result(&worker, warm_session, first.attempt, succeeded()).await.get().await.unwrap();
    scheduler.credit(&worker, warm_session, 1).await;
    assert_eq!(assigned(&mut warm).await.attempt.task_id.as_str(), "second");
    assert!(cold.try_recv().is_err());
    // A third waits out the warm wait while the warm agent stays busy, then goes to the cold agent.
    let asked = std::time::Instant::now();
    scheduler.submit(pinned_task("third", &spec)).await.unwrap();
    assert_eq!(assigned(&mut cold).await.attempt.task_id.as_str(), "third");
    assert!(asked.elapsed() >= Duration::from_millis(600), "it waited for the warm agent first");
    token.cancel();
}

#[tokio::test]
async fn a_running_attempt_its_live_agent_stops_listing_is_lost_and_runs_again() {
    let (_dir, store, scheduler, token) = start().await;
    let (session, mut commands) = agent(&scheduler, "w1", 2).await;
    let w1 = WorkerId::parse("w1").unwrap();
    scheduler.submit(task("listed")).await.unwrap();
    scheduler.submit(task("forgotten")).await.unwrap();
    let (a, b) = (assigned(&mut commands).await, assigned(&mut commands).await);
    let (listed, forgotten) = if a.attempt.task_id.as_str() == "listed" { (a, b) } else { (b, a) };
    for attempt in [&listed.attempt, &forgotten.attempt] {
        scheduler.ack(&w1, session, attempt.clone()).await.get().await.unwrap();
    }
    // Two heartbeats without it: not yet (a result may be on its way); the third loses it.
    for _ in 0..2 {
        scheduler.heartbeat(&w1, session, vec![listed.attempt.clone()]).await;
    }
    scheduler.explain(&id("forgotten")).await.unwrap(); // the engine has handled the heartbeats
    assert_eq!(store.task(&id("forgotten")).await.unwrap().unwrap().0.state, TaskState::Running);
    scheduler.heartbeat(&w1, session, vec![listed.attempt.clone()]).await;
    // Back in the queue (granted again at a new epoch once an agent has a free slot).
    stored_until(&store, "forgotten", |t, _| t.state == TaskState::Queued).await;
    let (_, attempts) = store.task(&id("forgotten")).await.unwrap().unwrap();
    assert_eq!(attempts[0].state, outpost_common::task::AttemptState::Lost);
    assert_eq!(
        attempts[0].reason.as_deref(),
        Some("the agent's heartbeats stopped listing it (it was not running there)")
    );
    assert_eq!(store.task(&id("listed")).await.unwrap().unwrap().0.state, TaskState::Running, "the listed one runs on");
    token.cancel();
}
