//! Store tests against a real SQLite file in a temp dir.

use std::collections::BTreeMap;

use outpost_common::ids::{AspectVersion, AttemptRef, Epoch, PoolId, TaskId, WorkerId};
use outpost_common::task::{AttemptState, Refusal, Refused, RunResult, TaskState};

use super::*;

fn new_task(id: &str) -> NewTask {
    NewTask {
        id: TaskId::parse(id).unwrap(),
        task_name: "RUN_INGEST".into(),
        pool: PoolId::parse("default").unwrap(),
        args: BTreeMap::from([("recipe".to_owned(), "{}".to_owned())]),
        source_type: "MANUAL_INGESTION_SOURCE".into(),
        requested_at_ms: 1,
        claim: None,
    }
}

fn id(text: &str) -> TaskId {
    TaskId::parse(text).unwrap()
}

fn worker(text: &str) -> WorkerId {
    WorkerId::parse(text).unwrap()
}

fn attempt(task: &str, epoch: u64) -> AttemptRef {
    AttemptRef { task_id: id(task), epoch: Epoch(epoch) }
}

fn finish(task: &str, epoch: u64, state: TaskState, attempt_state: AttemptState, report: &str) -> AttemptEnd {
    AttemptEnd {
        task_id: id(task),
        task_epoch: Epoch(epoch),
        attempt_epoch: Epoch(epoch),
        attempt_state,
        reason: attempt_state.to_string(),
        change: TaskChange::Finish { state, result: RunResult { report: report.into(), ..RunResult::default() } },
    }
}

/// A new task `task`, granted to `worker` (epoch 1).
async fn granted(store: &Store, task: &str, worker_id: &str) {
    store.insert_task(&new_task(task), 1).await.unwrap();
    store.grant(&id(task), &worker(worker_id), 2).await.unwrap();
}

/// A new task `task`, granted to `worker` (epoch 1) and started.
async fn running(store: &Store, task: &str, worker_id: &str) {
    granted(store, task, worker_id).await;
    store.write(Change::Start(attempt(task, 1)), 3).await.unwrap();
}

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.db"), true).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn submit_is_idempotent_on_the_execution_request_id() {
    let (_dir, store) = open().await;
    let (first, created) = store.insert_task(&new_task("a"), 100).await.unwrap();
    assert!(created);
    assert_eq!(first.state, TaskState::Queued);
    let mut again = new_task("a");
    again.task_name = "TEST_CONNECTION".into();
    let (second, created) = store.insert_task(&again, 200).await.unwrap();
    assert!(!created);
    assert_eq!(second.request.task_name, "RUN_INGEST");
    assert_eq!(second.created_at_ms, 100);
    assert_eq!(store.queued_tasks().await.unwrap().len(), 1);
}

#[tokio::test]
async fn grant_bumps_the_epoch_and_fences_later_changes() {
    let (_dir, store) = open().await;
    store.insert_task(&new_task("a"), 1).await.unwrap();
    let grant = store.grant(&id("a"), &worker("w1"), 2).await.unwrap();
    assert_eq!((grant.task.epoch, grant.attempt_number, grant.task.state), (Epoch(1), 1, TaskState::Assigned));
    assert!(matches!(
        store.grant(&id("a"), &worker("w2"), 3).await,
        Err(Error::Refused(Refused { refusal: Refusal::NotQueued { state: TaskState::Assigned }, .. }))
    ));

    assert!(matches!(
        store.write(Change::Start(attempt("a", 0)), 4).await,
        Err(Error::Refused(Refused {
            presented: Some(Epoch(0)),
            refusal: Refusal::StaleEpoch { current: Epoch(1) },
            ..
        }))
    ));
    store.write(Change::Start(attempt("a", 1)), 4).await.unwrap();
    store.write(Change::Start(attempt("a", 1)), 5).await.unwrap();

    assert!(matches!(
        store.write(Change::End(finish("a", 0, TaskState::Succeeded, AttemptState::Succeeded, "late")), 9).await,
        Err(Error::Refused(Refused { refusal: Refusal::StaleEpoch { .. }, .. }))
    ));
    store.write(Change::End(finish("a", 1, TaskState::Succeeded, AttemptState::Succeeded, "done")), 9).await.unwrap();
    assert!(matches!(
        store.write(Change::End(finish("a", 1, TaskState::Failed, AttemptState::Failed, "again")), 10).await,
        Err(Error::Refused(Refused { refusal: Refusal::Terminal { state: TaskState::Succeeded }, .. }))
    ));
    let (task, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Succeeded);
    assert_eq!(task.result.as_ref().unwrap().run.report, "done");
    assert_eq!(task.result.as_ref().unwrap().finished_at_ms, 9);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, AttemptState::Succeeded);
    assert_eq!((attempts[0].started_at_ms, attempts[0].ended_at_ms), (Some(4), Some(9)));
}

#[tokio::test]
async fn a_requeued_task_waits_for_its_backoff_and_is_granted_at_a_new_epoch() {
    let (_dir, store) = open().await;
    granted(&store, "a", "w1").await;
    let end = AttemptEnd {
        task_id: id("a"),
        task_epoch: Epoch(1),
        attempt_epoch: Epoch(1),
        attempt_state: AttemptState::Lost,
        reason: "lease expired".into(),
        change: TaskChange::Requeue { not_before_ms: 5000 },
    };
    store.write(Change::End(end), 3).await.unwrap();
    let queued = store.queued_tasks().await.unwrap();
    assert_eq!((queued[0].state, queued[0].not_before_ms), (TaskState::Queued, 5000));
    let grant = store.grant(&id("a"), &worker("w2"), 6000).await.unwrap();
    assert_eq!((grant.task.epoch, grant.attempt_number), (Epoch(2), 2));
    let (_, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(attempts[0].state, AttemptState::Lost);
    assert_eq!(attempts[0].reason.as_deref(), Some("lease expired"));
    assert_eq!(attempts[1].state, AttemptState::Assigned);
}

#[tokio::test]
async fn a_cancel_bumps_the_epoch_and_is_confirmed_for_the_previous_attempt() {
    let (_dir, store) = open().await;
    running(&store, "a", "w1").await;
    store.write(Change::RequestCancel { task: id("a"), epoch: Epoch(1) }, 4).await.unwrap();
    assert_eq!(store.task(&id("a")).await.unwrap().unwrap().0.epoch, Epoch(2));
    // The running attempt is fenced out.
    assert!(matches!(
        store.write(Change::Start(attempt("a", 1)), 5).await,
        Err(Error::Refused(Refused { refusal: Refusal::StaleEpoch { .. }, .. }))
    ));
    assert!(matches!(
        store.write(Change::RequestCancel { task: id("a"), epoch: Epoch(2) }, 5).await,
        Err(Error::Refused(Refused { refusal: Refusal::NotHeld { state: TaskState::Running }, .. }))
    ));
    let held = store.held_tasks().await.unwrap();
    assert!(held[0].task.cancel_requested);
    let confirm = AttemptEnd {
        task_epoch: Epoch(2),
        attempt_epoch: Epoch(1),
        ..finish("a", 2, TaskState::Cancelled, AttemptState::Cancelled, "cancelled")
    };
    store.write(Change::End(confirm), 6).await.unwrap();
    let (task, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!((task.state, task.cancel_requested), (TaskState::Cancelled, false));
    assert_eq!(attempts[0].state, AttemptState::Cancelled);

    store.insert_task(&new_task("b"), 7).await.unwrap();
    store.write(Change::CancelQueued { task: id("b"), report: "cancelled before it ran".into() }, 8).await.unwrap();
    let (task, attempts) = store.task(&id("b")).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Cancelled);
    assert_eq!(task.result.unwrap().run.report, "cancelled before it ran");
    assert!(attempts.is_empty());
    assert!(matches!(
        store.write(Change::CancelQueued { task: id("b"), report: "again".into() }, 9).await,
        Err(Error::Refused(Refused { refusal: Refusal::Terminal { state: TaskState::Cancelled }, .. }))
    ));
}

#[tokio::test]
async fn heartbeats_are_recorded_in_one_batch_for_live_attempts_only() {
    let (_dir, store) = open().await;
    for task in ["a", "b"] {
        granted(&store, task, "w1").await;
    }
    store.write(Change::End(finish("b", 1, TaskState::Succeeded, AttemptState::Succeeded, "done")), 3).await.unwrap();
    store.write(Change::Heartbeats(vec![(attempt("a", 1), 40), (attempt("b", 1), 41)]), 42).await.unwrap();
    let (_, a) = store.task(&id("a")).await.unwrap().unwrap();
    let (_, b) = store.task(&id("b")).await.unwrap().unwrap();
    assert_eq!(a[0].last_heartbeat_ms, Some(40));
    assert_eq!(b[0].last_heartbeat_ms, None);
    let held = store.held_tasks().await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].task.request.id.as_str(), held[0].worker_id.as_str()), ("a", "w1"));
}

#[tokio::test]
async fn list_filters_by_state_and_pool_newest_first() {
    let (_dir, store) = open().await;
    for (i, task) in ["a", "b", "c"].iter().enumerate() {
        store.insert_task(&new_task(task), i64::try_from(i).unwrap()).await.unwrap();
    }
    store.grant(&id("b"), &worker("w"), 5).await.unwrap();
    let queued =
        store.list_tasks(&TaskFilter { state: Some(TaskState::Queued), ..TaskFilter::default() }).await.unwrap();
    let ids: Vec<_> = queued.iter().map(|t| t.request.id.as_str()).collect();
    assert_eq!(ids, ["c", "a"]);
    let other_pool = TaskFilter { pool: Some(PoolId::parse("other").unwrap()), ..TaskFilter::default() };
    assert!(store.list_tasks(&other_pool).await.unwrap().is_empty());
}

#[tokio::test]
async fn held_messages_adopt_new_receipts_and_turn_done_when_reported() {
    let (_dir, store) = open().await;
    store.insert_task(&new_task("a"), 1).await.unwrap();
    store.hold_message(&id("a"), "q", "m1", "r1", 2).await.unwrap();
    store.hold_message(&id("a"), "q", "m1", "r2", 3).await.unwrap();
    store.hold_message(&id("a"), "q", "m2", "r3", 4).await.unwrap();
    let held = store.held_messages("q").await.unwrap();
    let handles: Vec<(&str, &str, bool)> =
        held.iter().map(|m| (m.message_id.as_str(), m.receipt_handle.as_str(), m.done)).collect();
    assert_eq!(handles, [("m1", "r2", false), ("m2", "r3", false)], "a re-delivery adopts its new handle");
    assert_eq!(held[0].first_received_at_ms, 2);
    assert!(store.held_messages("other").await.unwrap().is_empty());

    store.grant(&id("a"), &worker("w"), 5).await.unwrap();
    store.write(Change::End(finish("a", 1, TaskState::Succeeded, AttemptState::Succeeded, "done")), 6).await.unwrap();
    let outbox = store.due_outbox(10, 10).await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert!(!store.held_messages("q").await.unwrap()[0].done, "not done before GMS has the result");
    store.outbox_settled(&[(&outbox[0], Delivery::Delivered)], 7).await.unwrap();
    assert!(store.held_messages("q").await.unwrap().iter().all(|m| m.done));

    store.release_message("m1", "r1").await.unwrap();
    assert_eq!(store.held_messages("q").await.unwrap().len(), 2, "a stale handle does not release the message");
    store.release_message("m1", "r2").await.unwrap();
    store.release_message("m2", "r3").await.unwrap();
    assert!(store.held_messages("q").await.unwrap().is_empty());
}

#[tokio::test]
async fn quarantine_keeps_the_reason_and_a_capped_body() {
    let (_dir, store) = open().await;
    let first = store.quarantine("q", "m1", "the body is neither JSON nor base64", "garbage", 100, 1).await.unwrap();
    let second = store.quarantine("q", "m2", "too big", &"é".repeat(10), 5, 2).await.unwrap();
    let listed = store.quarantined(10).await.unwrap();
    assert_eq!(listed.iter().map(|q| q.id).collect::<Vec<_>>(), [second, first], "newest first");
    assert_eq!((listed[0].body.as_str(), listed[0].body_bytes), ("éé", 20), "cut on a character boundary");
    assert_eq!(listed[1].reason, "the body is neither JSON nor base64");
    store.mark_replayed(first, 9, None).await.unwrap();
    assert_eq!(store.quarantined_message(first).await.unwrap().unwrap().replayed_at_ms, Some(9));
    assert_eq!(store.quarantined_message(999).await.unwrap(), None);
}

#[tokio::test]
async fn one_turn_makes_many_changes_of_each_kind_in_one_commit() {
    let (_dir, store) = open().await;
    // Held before the turn: a and b granted, a running; c queued.
    for task in ["a", "b", "c"] {
        store.insert_task(&new_task(task), 1).await.unwrap();
    }
    store.grant(&id("a"), &worker("w1"), 2).await.unwrap();
    store.grant(&id("b"), &worker("w1"), 2).await.unwrap();
    store.write(Change::Start(attempt("a", 1)), 3).await.unwrap();

    let turn = Turn {
        changes: vec![
            // New tasks, one already known and one named twice in the same turn.
            Change::Submit(new_task("d")),
            Change::Submit(new_task("a")),
            Change::Submit(new_task("e")),
            Change::Submit(new_task("d")),
            // b starts; a repeated start of a running attempt is fine.
            Change::Start(attempt("b", 1)),
            Change::Start(attempt("a", 1)),
            // a finishes, b goes back to the queue (after starting in the same turn).
            Change::End(finish("a", 1, TaskState::Failed, AttemptState::Failed, "exit 1")),
            Change::End(AttemptEnd {
                change: TaskChange::Requeue { not_before_ms: 0 },
                ..finish("b", 1, TaskState::Queued, AttemptState::Lost, "")
            }),
        ],
        // The requeued b (a new epoch), the new d, c, and a which is finished (left out).
        grants: vec![
            (id("b"), worker("w2")),
            (id("d"), worker("w2")),
            (id("a"), worker("w2")),
            (id("c"), worker("w3")),
        ],
    };
    let written = store.write_turn(turn, 12).await.unwrap();
    let created: Vec<(&str, bool, TaskState)> =
        written.submitted.iter().map(|(t, created)| (t.request.id.as_str(), *created, t.state)).collect();
    assert_eq!(
        created,
        [
            ("d", true, TaskState::Queued),
            ("a", false, TaskState::Running),
            ("e", true, TaskState::Queued),
            ("d", false, TaskState::Queued)
        ]
    );
    let granted: Vec<(&str, Epoch, u32)> =
        written.granted.iter().map(|g| (g.task.request.id.as_str(), g.task.epoch, g.attempt_number)).collect();
    assert_eq!(granted, [("b", Epoch(2), 2), ("d", Epoch(1), 1), ("c", Epoch(1), 1)]);

    let (a, a_attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!((a.state, a.result.unwrap().run.report.as_str()), (TaskState::Failed, "exit 1"));
    assert_eq!((a_attempts[0].state, a_attempts[0].ended_at_ms), (AttemptState::Failed, Some(12)));
    let (b, b_attempts) = store.task(&id("b")).await.unwrap().unwrap();
    assert_eq!((b.state, b.epoch, b.worker_id.unwrap().as_str()), (TaskState::Assigned, Epoch(2), "w2"));
    let states: Vec<_> = b_attempts.iter().map(|a| (a.state, a.started_at_ms)).collect();
    assert_eq!(states, [(AttemptState::Lost, Some(12)), (AttemptState::Assigned, None)]);
    assert_eq!(store.task(&id("e")).await.unwrap().unwrap().0.state, TaskState::Queued);
    // Outbox: RUNNING for a (before) and b, TERMINAL for a.
    let kinds: Vec<(String, OutboxKind)> =
        store.due_outbox(100, 10).await.unwrap().iter().map(|e| (e.task_id.to_string(), e.kind)).collect();
    assert_eq!(kinds, [("a".to_owned(), OutboxKind::Running), ("b".to_owned(), OutboxKind::Running)]);
    assert_eq!(store.outbox_depth().await.unwrap(), 3);
}

#[tokio::test]
async fn a_refused_change_rolls_the_whole_turn_back() {
    let (_dir, store) = open().await;
    store.insert_task(&new_task("a"), 1).await.unwrap();
    store.insert_task(&new_task("c"), 1).await.unwrap();
    let turn = Turn {
        changes: vec![
            Change::Submit(new_task("b")),
            Change::End(finish("c", 3, TaskState::Succeeded, AttemptState::Succeeded, "late")),
        ],
        grants: vec![(id("a"), worker("w"))],
    };
    let refused = store.write_turn(turn, 3).await;
    assert!(
        matches!(
            refused,
            Err(Error::Refused(Refused {
                presented: Some(Epoch(3)),
                refusal: Refusal::StaleEpoch { current: Epoch(0) },
                ..
            }))
        ),
        "{refused:?}"
    );
    assert!(store.task(&id("b")).await.unwrap().is_none());
    let (a, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!((a.state, a.epoch, attempts.len()), (TaskState::Queued, Epoch(0), 0));
}

#[tokio::test]
async fn a_delivery_pass_retires_and_reschedules_its_rows_in_one_go() {
    let (_dir, store) = open().await;
    for task in ["a", "b"] {
        granted(&store, task, "w").await;
        store
            .write(Change::End(finish(task, 1, TaskState::Succeeded, AttemptState::Succeeded, "done")), 3)
            .await
            .unwrap();
    }
    let due = store.due_outbox(10, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    let retry = Delivery::Retry { error: "503 from GMS".to_owned(), next_try_at_ms: 500 };
    store.outbox_settled(&[(&due[0], Delivery::Delivered), (&due[1], retry)], 7).await.unwrap();
    let (a, _) = store.task(&due[0].task_id).await.unwrap().unwrap();
    let (b, _) = store.task(&due[1].task_id).await.unwrap().unwrap();
    assert_eq!((a.reported_at_ms, b.reported_at_ms), (Some(7), None));
    assert!(store.due_outbox(499, 10).await.unwrap().is_empty(), "the failed row waits for its next try");
    let again = store.due_outbox(500, 10).await.unwrap();
    assert_eq!((again.len(), again[0].tries, &again[0].task_id), (1, 1, &due[1].task_id));
}

#[tokio::test]
async fn close_waits_for_the_writer_and_leaves_a_checkpointed_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let store = Store::open(&path, false).await.unwrap();
    store.insert_task(&new_task("a"), 1).await.unwrap();
    store.close().await;
    let refused = store.insert_task(&new_task("b"), 2).await;
    assert!(matches!(&refused, Err(Error::Writer(why)) if why == "the writer is closed"), "{refused:?}");
    // Every connection is closed: SQLite folded the WAL into the database file and removed it.
    assert!(!dir.path().join("t.db-wal").exists());
    let reopened = Store::open(&path, false).await.unwrap();
    assert_eq!(reopened.queued_tasks().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_write_gms_refuses_for_good_leaves_the_outbox_and_is_recorded_on_the_task() {
    let (_dir, store) = open().await;
    running(&store, "a", "w").await;
    store.write(Change::End(finish("a", 1, TaskState::Failed, AttemptState::Failed, "exit 1")), 4).await.unwrap();
    // RUNNING first (in order per task): GMS refuses it for good; the terminal row is due next.
    let running = store.due_outbox(10, 10).await.unwrap();
    assert_eq!(running.iter().map(|e| e.kind).collect::<Vec<_>>(), [OutboxKind::Running]);
    let refused = Delivery::GaveUp { error: "GMS refused the write (HTTP 400): bad".into() };
    store.outbox_settled(&[(&running[0], refused)], 5).await.unwrap();
    let (task, _) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(task.delivery_failure.as_deref(), Some("RUNNING write: GMS refused the write (HTTP 400): bad"));
    assert_eq!(task.reported_at_ms, None, "a refused RUNNING write does not settle the result");
    let terminal = store.due_outbox(10, 10).await.unwrap();
    assert_eq!(terminal.iter().map(|e| e.kind).collect::<Vec<_>>(), [OutboxKind::Terminal]);
    // The terminal write refused for good: the result counts as settled (its SQS message may go).
    let reported = store.reported();
    let refused = Delivery::GaveUp { error: "GMS refused the payload as too large (HTTP 413): big".into() };
    store.outbox_settled(&[(&terminal[0], refused)], 6).await.unwrap();
    assert!(reported.has_changed().unwrap());
    let (task, _) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(
        (task.reported_at_ms, task.delivery_failure.as_deref()),
        (Some(6), Some("TERMINAL write: GMS refused the payload as too large (HTTP 413): big"))
    );
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
}

#[tokio::test]
async fn the_read_pool_cannot_write() {
    let (_dir, store) = open().await;
    let refused = sqlx::query("DELETE FROM tasks").execute(&store.reads).await;
    let message = refused.unwrap_err().to_string();
    assert!(message.contains("readonly"), "{message}");
}

#[tokio::test]
async fn a_claim_moves_on_with_each_write_is_renewed_while_waiting_and_once_lost_sends_nothing() {
    let (_dir, store) = open().await;
    assert_eq!(store.controller_id("c-first".into()).await.unwrap(), "c-first");
    assert_eq!(store.controller_id("c-second".into()).await.unwrap(), "c-first", "made once per database");

    let claimed = NewTask { claim: Some(AspectVersion::new("1")), ..new_task("claimed") };
    store.insert_task(&claimed, 10).await.unwrap();
    store.insert_task(&new_task("plain"), 10).await.unwrap();
    // Waiting claimed tasks whose claim was written at or before the cut are due for renewal; plain ones never.
    let due = |at| {
        let store = store.clone();
        async move { store.waiting_claims(at).await.unwrap().into_iter().map(|w| w.task_id).collect::<Vec<_>>() }
    };
    assert_eq!(due(9).await, Vec::<TaskId>::new());
    assert_eq!(due(10).await, vec![id("claimed")]);
    store.claim_written(&id("claimed"), &AspectVersion::new("2"), 20).await.unwrap();
    assert_eq!(due(10).await, Vec::<TaskId>::new(), "renewed at 20");
    let (task, _) = store.task(&id("claimed")).await.unwrap().unwrap();
    assert_eq!(task.request.claim, Some(AspectVersion::new("2")));

    // Its RUNNING write is conditional on the claim's version; once settled the claim moves on.
    store.grant(&id("claimed"), &worker("w-1"), 30).await.unwrap();
    store.write(Change::Start(attempt("claimed", 1)), 31).await.unwrap();
    let due_rows = store.due_outbox(40, 10).await.unwrap();
    assert_eq!((due_rows[0].claim.clone(), due_rows[0].claim_lost), (Some(AspectVersion::new("2")), false));
    store.outbox_settled(&[(&due_rows[0], Delivery::Claimed { version: AspectVersion::new("3") })], 41).await.unwrap();
    assert_eq!(store.task(&id("claimed")).await.unwrap().unwrap().0.request.claim, Some(AspectVersion::new("3")));

    // Lost: listed until it ends, its end is not sent, its result counts as settled, its version stays put.
    store.claim_lost(&id("claimed"), "controller c-other holds it", 50).await.unwrap();
    assert_eq!(store.lost_claims().await.unwrap(), vec![id("claimed")]);
    store.claim_written(&id("claimed"), &AspectVersion::new("9"), 51).await.unwrap();
    let end = finish("claimed", 1, TaskState::Cancelled, AttemptState::Cancelled, "stopped");
    store.write(Change::End(end), 60).await.unwrap();
    assert_eq!(store.lost_claims().await.unwrap(), Vec::<TaskId>::new());
    let rows = store.due_outbox(70, 10).await.unwrap();
    assert!(rows[0].claim_lost, "the terminal row is marked: {rows:?}");
    store.outbox_settled(&[(&rows[0], Delivery::ClaimLost { error: "not sent".into() })], 71).await.unwrap();
    let (task, _) = store.task(&id("claimed")).await.unwrap().unwrap();
    assert!(task.claim_lost && task.reported_at_ms.is_some(), "{task:?}");
    assert_eq!(task.request.claim, Some(AspectVersion::new("3")));
    assert!(task.delivery_failure.unwrap().starts_with("claim lost"));
    assert!(store.due_outbox(80, 10).await.unwrap().is_empty());
}

fn audit(action: &'static str, target: &str) -> Audit {
    Audit {
        actor: "ops".into(),
        role: Some(outpost_common::roles::Role::Operator),
        via: Via::Api,
        peer: "127.0.0.1:5000".into(),
        action,
        target: target.into(),
        reason: "because".into(),
    }
}

#[tokio::test]
async fn an_audit_row_stands_or_falls_with_the_change_it_records() {
    let (_dir, store) = open().await;
    let all = AuditFilter { limit: 100, ..AuditFilter::default() };
    // Written in the turn of the change: both are there.
    let turn = Turn {
        changes: vec![Change::Submit(new_task("a")), Change::Audit(audit("SubmitTask", "a"))],
        ..Turn::default()
    };
    store.write_turn(turn, 10).await.unwrap();
    let events = store.audit_events(&all).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].action.as_str(), events[0].outcome, events[0].at_ms), ("SubmitTask", AuditOutcome::Done, 10));

    // A turn the fence refuses (a retry of a task that is not finished) leaves neither its change nor its row.
    let turn = Turn {
        changes: vec![Change::Retry { task: id("a") }, Change::Audit(audit("RetryTask", "a"))],
        ..Turn::default()
    };
    assert!(store.write_turn(turn, 11).await.is_err());
    assert_eq!(store.audit_events(&all).await.unwrap().len(), 1, "the refused turn's row rolled back with it");

    // A change that finds nothing to change records nothing; a failure is recorded alone.
    assert!(!store.revoke_token("nosuch", 12, Some(audit("RevokeJoinToken", "nosuch"))).await.unwrap());
    store
        .audit(audit("RevokeJoinToken", "nosuch"), AuditOutcome::Failed, "no join token nosuch".into(), 12)
        .await
        .unwrap();
    let events = store.audit_events(&all).await.unwrap();
    assert_eq!(
        events.iter().map(|e| (e.action.as_str(), e.outcome)).collect::<Vec<_>>(),
        [("RevokeJoinToken", AuditOutcome::Failed), ("SubmitTask", AuditOutcome::Done)]
    );
    assert_eq!(events[0].detail, "no join token nosuch");

    // Filters, and retention.
    let by_action = AuditFilter { action: Some("SubmitTask".into()), ..all.clone() };
    assert_eq!(store.audit_events(&by_action).await.unwrap().len(), 1);
    let since = AuditFilter { since_ms: Some(11), ..all.clone() };
    assert_eq!(store.audit_events(&since).await.unwrap().len(), 1);
    let other = AuditFilter { actor: Some("someone".into()), ..all.clone() };
    assert!(store.audit_events(&other).await.unwrap().is_empty());
    assert_eq!(store.prune_audit(11).await.unwrap(), 1);
    assert_eq!(store.audit_events(&all).await.unwrap().len(), 1);
}

/// Statements the writer runs for one task, submit apart, then from the grant through its recorded result
/// (issue "cost per task" aims at four with reporting off); one commit per turn.
#[tokio::test]
async fn statements_per_task_from_the_grant_through_the_result() {
    for (reporting, expected) in [(false, (1, 4)), (true, (1, 6))] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("t.db"), reporting).await.unwrap();
        let before = store.write_counts();
        store.insert_task(&new_task("a"), 1).await.unwrap();
        let submitted = store.write_counts();
        store.grant(&id("a"), &worker("w"), 2).await.unwrap();
        store.write(Change::Start(attempt("a", 1)), 3).await.unwrap();
        let end = finish("a", 1, TaskState::Succeeded, AttemptState::Succeeded, "ok");
        store.write(Change::End(end), 4).await.unwrap();
        let after = store.write_counts();
        let counted = (submitted.0 - before.0, after.0 - submitted.0);
        assert_eq!(counted, expected, "reporting {reporting}: (submit, grant through result)");
        assert_eq!(after.1 - before.1, 4, "one commit per turn");
    }
}

/// A database from before the open attempt moved onto its task row: the open attempt (and its heartbeat) is
/// moved, ended attempts stay, and the moved attempt ends as any other.
#[tokio::test]
async fn the_open_attempt_of_an_older_database_moves_onto_its_task_row() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
    let mut old = sqlx::SqliteConnection::connect_with(&options).await.unwrap();
    MIGRATOR.run_to(13, &mut old).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO tasks (id, task_name, pool, args_json, source_type, requested_at_ms, state, epoch, attempts, \
         worker_id, created_at_ms, updated_at_ms) VALUES ('a', 'RUN_INGEST', 'default', '{}', 'MANUAL', 1, \
         'RUNNING', 2, 2, 'w2', 1, 5); \
         INSERT INTO attempts (task_id, number, epoch, worker_id, state, assigned_at_ms, started_at_ms, ended_at_ms, \
         reason) VALUES ('a', 1, 1, 'w1', 'LOST', 2, 3, 4, 'lease expired'); \
         INSERT INTO attempts (task_id, number, epoch, worker_id, state, assigned_at_ms, started_at_ms, \
         last_heartbeat_ms) VALUES ('a', 2, 2, 'w2', 'RUNNING', 5, 6, 7);",
    )
    .execute(&mut old)
    .await
    .unwrap();
    old.close().await.unwrap();

    let store = Store::open(&path, false).await.unwrap();
    let (_, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    let open = AttemptRecord {
        number: 2,
        epoch: Epoch(2),
        worker_id: worker("w2"),
        state: AttemptState::Running,
        assigned_at_ms: 5,
        started_at_ms: Some(6),
        ended_at_ms: None,
        reason: None,
        last_heartbeat_ms: Some(7),
    };
    assert_eq!(attempts.len(), 2);
    assert_eq!((attempts[0].number, attempts[0].state, attempts[0].ended_at_ms), (1, AttemptState::Lost, Some(4)));
    assert_eq!(attempts[1], open);
    store.write(Change::End(finish("a", 2, TaskState::Succeeded, AttemptState::Succeeded, "ok")), 9).await.unwrap();
    let (task, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(task.state, TaskState::Succeeded);
    let ended = AttemptRecord {
        state: AttemptState::Succeeded,
        ended_at_ms: Some(9),
        reason: Some("SUCCEEDED".into()),
        ..open
    };
    assert_eq!(attempts[1], ended);
    assert_eq!(attempts.len(), 2);
}

/// The open attempt is read from its task row: ASSIGNED until started, then RUNNING with its heartbeat; a stale
/// end (the wrong attempt epoch) is refused and changes nothing.
#[tokio::test]
async fn the_open_attempt_reads_as_assigned_then_running_and_a_stale_end_is_refused() {
    let (_dir, store) = open().await;
    granted(&store, "a", "w1").await;
    let (_, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!((attempts.len(), attempts[0].state, attempts[0].started_at_ms), (1, AttemptState::Assigned, None));
    store.write(Change::Start(attempt("a", 1)), 3).await.unwrap();
    store.write(Change::Heartbeats(vec![(attempt("a", 1), 4), (attempt("a", 0), 99)]), 4).await.unwrap();
    let (_, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!(
        (attempts[0].state, attempts[0].started_at_ms, attempts[0].last_heartbeat_ms),
        (AttemptState::Running, Some(3), Some(4))
    );
    let mut stale = finish("a", 1, TaskState::Failed, AttemptState::Failed, "no");
    stale.attempt_epoch = Epoch(0);
    let refused = store.write(Change::End(stale), 5).await.unwrap_err();
    assert!(matches!(refused, Error::Refused(_)), "{refused:?}");
    let (task, attempts) = store.task(&id("a")).await.unwrap().unwrap();
    assert_eq!((task.state, attempts.len(), attempts[0].state), (TaskState::Running, 1, AttemptState::Running));
}
