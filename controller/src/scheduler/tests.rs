//! Engine tests against a real store: group commit and what a failed commit leaves behind.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_common::ids::{PoolId, TaskId, WorkerId};
use outpost_common::task::TaskState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::metrics::Metrics;

fn config() -> Config {
    Config {
        heartbeat_interval: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(30),
        keepalive_interval: Duration::from_secs(15),
        ack_deadline: Duration::from_secs(30),
        cancel_timeout: Duration::from_secs(30),
        sweep_interval: Duration::from_secs(60),
        task_timeout: None,
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
    }
}

/// A run that exited 0.
fn succeeded() -> AttemptResult {
    AttemptResult {
        status: ResultStatus::Succeeded,
        record: ResultRecord { exit_code: Some(0), report: "ok".into(), ..ResultRecord::default() },
    }
}

async fn start() -> (tempfile::TempDir, Store, Scheduler, CancellationToken) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.db"), false).await.unwrap();
    let token = CancellationToken::new();
    let (scheduler, _) = Scheduler::start(store.clone(), config(), Metrics::default(), token.clone()).await.unwrap();
    (dir, store, scheduler, token)
}

async fn agent(scheduler: &Scheduler, worker: &str, credits: u32) -> (SessionId, mpsc::Receiver<AgentCommand>) {
    let (commands, received) = mpsc::channel(64);
    let hello = AgentHello {
        worker_id: WorkerId::parse(worker).unwrap(),
        pools: vec![PoolId::parse("p").unwrap()],
        slots: credits,
        version: "test".into(),
        labels: BTreeMap::new(),
        held: Vec::new(),
    };
    let welcome = scheduler.connect(hello, commands, CancellationToken::new()).await.unwrap();
    scheduler.credit(&WorkerId::parse(worker).unwrap(), welcome.session, credits).await;
    (welcome.session, received)
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
    store.refuse_attempts(true).await;

    // The submit and its grant share one transaction; the grant fails, so the submit did not happen either.
    let refused = scheduler.submit(task("a")).await;
    assert!(matches!(&refused, Err(Error::NotDurable(why)) if why.contains("disk full")), "{refused:?}");
    assert!(store.task(&TaskId::parse("a").unwrap()).await.unwrap().is_none());
    assert!(commands.try_recv().is_err(), "nothing is announced from a turn that did not commit");

    // The agent's credit came back: once the store takes writes again, the retried submit runs on it.
    store.refuse_attempts(false).await;
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
