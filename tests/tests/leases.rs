//! The lease engine on real processes: dead, paused and restarting agents, a dying controller, agents that
//! never ack or keep vanishing, drain and cancel.

use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

/// Short timings so failures are detected in seconds.
const FAST: &[(&str, &str)] = &[
    ("--heartbeat-interval", "300ms"),
    ("--lease-ttl", "2s"),
    ("--keepalive-interval", "1s"),
    ("--retry-backoff", "100ms"),
    ("--retry-backoff-max", "200ms"),
    ("--sweep-interval", "100ms"),
];

async fn controller(cluster: &Cluster, overrides: &[(&str, &str)]) -> Controller {
    let flags = merge_flags(FAST, overrides);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cluster.controller("outpost.db").args(&flags).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_loses_its_task_to_the_other_agent_within_the_lease_ttl() {
    let cluster = Cluster::new(bins!());
    let controller = controller(&cluster, &[]).await;
    let mut admin = cluster.admin(&controller).await;
    let mut first = cluster.agent("w-1").start(&controller);
    wait_workers(&admin, 1).await;
    let run = cluster.held_run("survivor");
    submit(&mut admin, "survivor", run.recipe()).await;
    assert_eq!(wait_running(&admin, "survivor").await, "w-1");
    run.wait_started(1).await;
    let _second = cluster.agent("w-2").start(&controller);
    wait_workers(&admin, 2).await;

    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).await;
    cluster.kill_cli_processes("w-1");
    run.release();
    let task = wait_terminal(&admin, "survivor").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!((task.attempts, task.epoch, task.worker_id.as_str()), (2, 2, "w-2"));
    let (lost, won) = (&task.attempt_history[0], &task.attempt_history[1]);
    assert_eq!((lost.worker_id.as_str(), lost.state.as_str()), ("w-1", "LOST"));
    assert_eq!(lost.reason, "lease expired: the agent stopped heartbeating");
    assert_eq!((won.worker_id.as_str(), won.state.as_str()), ("w-2", "SUCCEEDED"));
    // Re-granted once the lease TTL (2 s) ran out after the last heartbeat, give or take a sweep and a backoff.
    let detection_ms = won.assigned_unix_ms - lost.ended_unix_ms;
    assert!((0..=1_000).contains(&detection_ms), "re-granted {detection_ms} ms after the loss");
    assert!(lost.ended_unix_ms - lost.started_unix_ms >= 2_000, "the lease ran its TTL: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agents_late_result_is_refused_and_the_rerun_is_recorded() {
    let cluster = Cluster::new(bins!());
    let controller = controller(&cluster, &[]).await;
    let mut admin = cluster.admin(&controller).await;
    let paused_metrics = format!("127.0.0.1:{}", free_port());
    let paused = cluster.agent("w-1").args(&["--metrics-listen", &paused_metrics]).start(&controller);
    wait_workers(&admin, 1).await;
    let run = cluster.held_run("paused");
    submit(&mut admin, "paused", run.recipe()).await;
    assert_eq!(wait_running(&admin, "paused").await, "w-1");
    run.wait_started(1).await;

    paused.signal(libc::SIGSTOP);
    let _other = cluster.agent("w-2").start(&controller);
    // Both CLIs finish once the second holds: the paused agent's own CLI (its process group is not stopped) ends
    // while its agent cannot say so.
    run.wait_started(2).await;
    run.release();
    let task = wait_terminal(&admin, "paused").await;
    paused.signal(libc::SIGCONT);
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!((task.worker_id.as_str(), task.epoch), ("w-2", 2));
    assert_eq!(task.attempt_history[0].state, "LOST");

    // Once it wakes up, the paused agent is told its attempt is no longer its own; nothing it says changes the
    // task.
    wait_until("the woken agent to hear its attempt is gone", Duration::from_secs(30), || async {
        (scraped(&paused_metrics, "outpost_agent_attempts_disowned_total", &[]).await >= 1.0).then_some(())
    })
    .await;
    let after = get(&mut admin, "paused").await;
    assert_eq!((after.state, after.epoch, after.attempts), (task.state, 2, 2));
    assert_eq!(after.result.unwrap().finished_unix_ms, task.result.unwrap().finished_unix_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_mid_run_loses_nothing() {
    let cluster = Cluster::new(bins!());
    let mut first = controller(&cluster, &[("--lease-ttl", "10s")]).await;
    let port = first.addr.to_string();
    let mut admin = cluster.admin(&first).await;
    let _agent = cluster.agent("w-1").start(&first);
    wait_workers(&admin, 1).await;
    let run = cluster.held_run("across-crash");
    submit(&mut admin, "across-crash", run.recipe()).await;
    submit(&mut admin, "queued-across-crash", file_recipe()).await;
    run.wait_started(1).await;

    first.proc.kill();
    let metrics = format!("127.0.0.1:{}", free_port());
    let controller =
        controller(&cluster, &[("--lease-ttl", "10s"), ("--listen", &port), ("--metrics-listen", &metrics)]).await;
    let admin = cluster.admin(&controller).await;
    wait_workers(&admin, 1).await;
    run.release();
    let task = wait_terminal(&admin, "across-crash").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert_eq!((task.attempts, task.epoch, task.worker_id.as_str()), (1, 1, "w-1"), "the agent kept its lease");
    let queued = wait_terminal(&admin, "queued-across-crash").await;
    assert_eq!(queued.state, pb::TaskState::Succeeded as i32);
    assert_eq!(queued.attempts, 1);
    assert_eq!(scraped(&metrics, "outpost_leases_reclaimed_total", &[]).await, 1.0, "the running attempt was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assignment_without_an_ack_is_revoked_and_runs_elsewhere() {
    let cluster = Cluster::new(bins!());
    let controller = controller(&cluster, &[("--ack-deadline", "1s"), ("--lease-ttl", "30s")]).await;
    let mut admin = cluster.admin(&controller).await;
    let mut ghost = Ghost::connect(&cluster, &controller, "ghost", "default", 1).await;
    submit(&mut admin, "unacked", file_recipe()).await;
    let assign = ghost.next_assign().await;
    assert_eq!(assign.attempt.as_ref().map(|a| (a.task_id.as_str(), a.epoch)), Some(("unacked", 1)));
    let _real = cluster.agent("w-1").start(&controller);
    let task = wait_terminal(&admin, "unacked").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    assert_eq!(task.attempt_history.len(), 2);
    let revoked = &task.attempt_history[0];
    assert_eq!((revoked.worker_id.as_str(), revoked.state.as_str()), ("ghost", "REVOKED"));
    assert_eq!(revoked.reason, "the agent did not acknowledge the assignment in time");
    assert_eq!(task.attempt_history[1].worker_id, "w-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_end_aborted_with_every_reason() {
    let cluster = Cluster::new(bins!());
    let controller = controller(&cluster, &[("--max-attempts", "2")]).await;
    let mut admin = cluster.admin(&controller).await;
    {
        let mut ghost = Ghost::connect(&cluster, &controller, "ghost-1", "default", 1).await;
        submit(&mut admin, "doomed", file_recipe()).await;
        let assign = ghost.next_assign().await;
        ghost.ack(&assign).await;
        wait_running(&admin, "doomed").await;
    } // ghost-1 vanishes mid-run
    wait_task(&admin, "doomed", "queued again", |t| t.state == pb::TaskState::Queued as i32).await;
    let mut ghost = Ghost::connect(&cluster, &controller, "ghost-2", "default", 1).await;
    let assign = ghost.next_assign().await;
    assert_eq!(assign.attempt_number, 2);
    ghost.ack(&assign).await;
    // ghost-2 stays connected but silent: no heartbeats.
    let task = wait_terminal(&admin, "doomed").await;
    assert_eq!(task.state, pb::TaskState::Aborted as i32, "{task:?}");
    let states: Vec<(&str, &str)> =
        task.attempt_history.iter().map(|a| (a.worker_id.as_str(), a.state.as_str())).collect();
    assert_eq!(states, [("ghost-1", "LOST"), ("ghost-2", "LOST")]);
    let report = task.result.expect("an ABORTED result").report;
    assert!(report.starts_with("~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished with errors.\n"));
    assert!(report.contains("Outpost gave up after 2 attempts (the limit is 2)"), "{report}");
    assert!(
        report.contains("attempt 1 (epoch 1) on ghost-1: LOST: lease expired: the agent stopped heartbeating"),
        "{report}"
    );
    assert!(
        report.contains("attempt 2 (epoch 2) on ghost-2: LOST: lease expired: the agent stopped heartbeating"),
        "{report}"
    );
    drop(ghost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_finishes_its_work_and_takes_no_more() {
    let cluster = Cluster::new(bins!());
    let controller = controller(&cluster, &[]).await;
    let mut admin = cluster.admin(&controller).await;
    let mut agent = cluster.agent("w-1").slots(2).start(&controller);
    wait_workers(&admin, 1).await;
    let run = cluster.held_run("finishing");
    submit(&mut admin, "finishing", run.recipe()).await;
    run.wait_started(1).await;

    agent.signal(libc::SIGTERM);
    wait_until("the agent to be draining", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let workers = admin.list_workers(pb::ListWorkersRequest {}).await.ok()?.into_inner().workers;
            (workers[0].state == pb::WorkerState::Draining as i32).then_some(())
        }
    })
    .await;
    submit(&mut admin, "waiting", file_recipe()).await;
    run.release();
    let finished = wait_terminal(&admin, "finishing").await;
    assert_eq!(finished.state, pb::TaskState::Succeeded as i32);
    assert_eq!(finished.attempts, 1);
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "a drained agent exits cleanly: {status:?}");
    let waiting = get(&mut admin, "waiting").await;
    assert_eq!((waiting.state, waiting.attempts), (pb::TaskState::Queued as i32, 0));

    // An operator drain: the new agent takes nothing while draining.
    let _next = cluster.agent("w-2").start(&controller);
    let task = wait_terminal(&admin, "waiting").await;
    assert_eq!(task.worker_id, "w-2");
    let output = cluster.ctl(&controller, &["drain", "w-2"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    submit(&mut admin, "after-drain", file_recipe()).await;
    let workers = admin.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    let w2 = workers.iter().find(|w| w.worker_id == "w-2").unwrap();
    assert_eq!(w2.state, pb::WorkerState::Draining as i32);
    let queued = get(&mut admin, "after-drain").await;
    assert_eq!((queued.state, queued.attempts), (pb::TaskState::Queued as i32, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_ingest_kills_its_process_group() {
    let cluster = Cluster::new(bins!());
    let controller = controller(&cluster, &[]).await;
    let mut admin = cluster.admin(&controller).await;
    let agent = cluster.agent("w-1").args(&["--cancel-grace", "5s"]).start(&controller);
    wait_workers(&admin, 1).await;
    // Never released: only the cancel ends it.
    let run = cluster.held_run("to-cancel");
    submit(&mut admin, "to-cancel", run.recipe()).await;
    run.wait_started(1).await;
    let pgid = wait_until("the CLI to start", Duration::from_secs(30), || {
        let groups = cluster.cli_process_groups("w-1");
        async move { groups.first().copied() }
    })
    .await;
    assert!(!processes_in_group(pgid).is_empty(), "the CLI runs");

    let request = pb::CancelTaskRequest { id: "to-cancel".into(), reason: "test cancel".into() };
    let cancelling = admin.cancel_task(request).await.unwrap().into_inner();
    assert_eq!(cancelling.epoch, 2, "a cancel fences the running attempt out at once");
    let task = wait_terminal(&admin, "to-cancel").await;
    assert_eq!(task.state, pb::TaskState::Cancelled as i32, "{task:?}");
    assert_eq!(task.attempt_history[0].state, "CANCELLED");
    let report = task.result.unwrap().report;
    assert!(report.contains("Execution was cancelled by request."), "{report}");
    assert!(report.contains("Ingestion task was cancelled"), "the agent's own report is kept: {report}");
    assert_eq!(processes_in_group(pgid), Vec::<i32>::new(), "nothing of the CLI's process group is left");

    // A finished task cannot be cancelled; a queued one is cancelled at once.
    let again = admin.cancel_task(pb::CancelTaskRequest { id: "to-cancel".into(), reason: String::new() }).await;
    let status = again.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "task to-cancel already finished as CANCELLED");
    drop(agent);
    wait_workers(&admin, 0).await;
    submit(&mut admin, "never-ran", file_recipe()).await;
    let cancelled =
        admin.cancel_task(pb::CancelTaskRequest { id: "never-ran".into(), reason: "not needed".into() }).await;
    let cancelled = cancelled.unwrap().into_inner();
    assert_eq!((cancelled.state, cancelled.attempts), (pb::TaskState::Cancelled as i32, 0));
    assert_eq!(cancelled.result.unwrap().report, "Execution was cancelled by request before it ran: not needed\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_the_agent_never_confirms_ends_cancelled_after_the_cancel_timeout() {
    let cluster = Cluster::new(bins!());
    let controller = controller(&cluster, &[("--cancel-timeout", "1s"), ("--lease-ttl", "30s")]).await;
    let mut admin = cluster.admin(&controller).await;
    let mut ghost = Ghost::connect(&cluster, &controller, "deaf", "default", 1).await;
    submit(&mut admin, "unconfirmed", file_recipe()).await;
    let assign = ghost.next_assign().await;
    ghost.ack(&assign).await;
    wait_running(&admin, "unconfirmed").await;
    admin.cancel_task(pb::CancelTaskRequest { id: "unconfirmed".into(), reason: "stop".into() }).await.unwrap();
    let task = wait_terminal(&admin, "unconfirmed").await;
    assert_eq!(task.state, pb::TaskState::Cancelled as i32);
    assert_eq!(task.attempt_history[0].reason, "the agent did not confirm the cancel in time");
    assert!(task.result.unwrap().report.contains("Execution was cancelled by request."));
    drop(ghost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_leases_nobody_reclaims_expire_and_rerun() {
    let cluster = Cluster::new(bins!());
    let mut first = controller(&cluster, &[]).await;
    let mut admin = cluster.admin(&first).await;
    {
        let mut ghost = Ghost::connect(&cluster, &first, "gone", "default", 1).await;
        submit(&mut admin, "orphan", file_recipe()).await;
        let assign = ghost.next_assign().await;
        ghost.ack(&assign).await;
        wait_running(&admin, "orphan").await;
        first.proc.kill();
    } // the agent is gone for good
    let controller = controller(&cluster, &[]).await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    let task = wait_terminal(&admin, "orphan").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    let states: Vec<(&str, &str)> =
        task.attempt_history.iter().map(|a| (a.worker_id.as_str(), a.state.as_str())).collect();
    assert_eq!(states, [("gone", "LOST"), ("w-1", "SUCCEEDED")]);
}
