//! The admin API and outpostctl: ExplainTask in each situation, RetryTask, GetStats, GetWorker, pagination, and
//! `task --follow`.

use std::collections::HashMap;

use outpost_common::pb;
use outpost_integration_tests::*;

async fn submit_to(admin: &mut tonic_admin::Client, id: &str, pool: &str) {
    let request = pb::SubmitTaskRequest {
        task: "RUN_INGEST".into(),
        args: HashMap::from([("recipe".to_owned(), file_recipe())]),
        pool: pool.into(),
        execution_request_id: id.into(),
        source_type: String::new(),
    };
    admin.submit_task(request).await.unwrap();
}

mod tonic_admin {
    pub type Client = outpost_common::pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>;
}

async fn explain(admin: &mut tonic_admin::Client, id: &str) -> (String, String, String) {
    let e = admin.explain_task(pb::ExplainTaskRequest { id: id.into() }).await.unwrap().into_inner();
    let reason = pb::Reason::try_from(e.reason).unwrap().as_str_name().to_owned();
    (reason, e.message, e.worker_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_task_says_why_in_each_situation() {
    let cluster = Cluster::new(bins!());
    let flags = merge_flags(
        &[("--heartbeat-interval", "300ms"), ("--lease-ttl", "2s"), ("--sweep-interval", "100ms")],
        &[("--retry-backoff", "60s"), ("--retry-backoff-max", "60s"), ("--cancel-timeout", "60s")],
    );
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = cluster.controller("outpost.db").args(&flags).start().await;
    let mut admin = cluster.admin(&controller).await;

    submit_to(&mut admin, "lonely", "nobody-serves-this").await;
    assert_eq!(explain(&mut admin, "lonely").await.0, "REASON_NO_AGENT_FOR_POOL");

    let mut busy = Ghost::connect_alive(&cluster, &controller, "busy", "default", 1).await;
    submit_to(&mut admin, "granted", "default").await;
    let assign = busy.next_assign().await;
    assert_eq!(
        explain(&mut admin, "granted").await,
        ("REASON_ASSIGNED".into(), "granted to busy, waiting for its ack".into(), "busy".into())
    );
    submit_to(&mut admin, "waiting", "default").await;
    assert_eq!(explain(&mut admin, "waiting").await.0, "REASON_ALL_SLOTS_BUSY");
    busy.ack(&assign).await;
    wait_running(&admin, "granted").await;
    assert_eq!(
        explain(&mut admin, "granted").await,
        ("REASON_RUNNING".into(), "running on busy".into(), "busy".into())
    );
    admin.cancel_task(pb::CancelTaskRequest { id: "granted".into(), reason: String::new() }).await.unwrap();
    assert_eq!(explain(&mut admin, "granted").await.0, "REASON_CANCELLING");

    let _drained = Ghost::connect_alive(&cluster, &controller, "drained", "drainy", 1).await;
    admin.drain_worker(pb::DrainWorkerRequest { worker_id: "drained".into() }).await.unwrap();
    submit_to(&mut admin, "behind-drain", "drainy").await;
    assert_eq!(explain(&mut admin, "behind-drain").await.0, "REASON_AGENTS_DRAINING");
    // The same through outpostctl (ghosts are silent: checked before their lease TTL ends their sessions).
    let output = cluster.ctl(&controller, &["explain", "behind-drain"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "behind-drain is QUEUED: every agent serving the pool is draining (AGENTS_DRAINING)\n"
    );
    let output = cluster.ctl(&controller, &["--json", "explain", "waiting"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((json["reason"].as_str(), json["state"].as_str()), (Some("ALL_SLOTS_BUSY"), Some("QUEUED")));

    {
        let mut flaky = Ghost::connect(&cluster, &controller, "flaky", "flaky-pool", 1).await;
        submit_to(&mut admin, "backing-off", "flaky-pool").await;
        let assign = flaky.next_assign().await;
        flaky.ack(&assign).await;
        wait_running(&admin, "backing-off").await;
    }
    wait_task(&admin, "backing-off", "queued after its lease expired", |t| t.state == pb::TaskState::Queued as i32)
        .await;
    let (reason, message, _) = explain(&mut admin, "backing-off").await;
    assert_eq!(reason, "REASON_BACKOFF");
    assert!(message.starts_with("waiting out a retry backoff until "), "{message}");
    let task = get(&mut admin, "backing-off").await;
    assert!(task.not_before_unix_ms > task.updated_unix_ms, "{task:?}");

    admin.cancel_task(pb::CancelTaskRequest { id: "lonely".into(), reason: String::new() }).await.unwrap();
    assert_eq!(
        explain(&mut admin, "lonely").await,
        ("REASON_FINISHED".into(), "finished as CANCELLED".into(), String::new())
    );
    let missing = admin.explain_task(pb::ExplainTaskRequest { id: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_stats_workers_pages_and_follow() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    wait_workers(&admin, 1).await;
    for id in ["p1", "p2", "p3"] {
        submit(&mut admin, id, file_recipe()).await;
        wait_terminal(&admin, id).await;
    }

    // Retry a finished task: a new attempt at a new epoch.
    let output = cluster.ctl(&controller, &["--json", "retry", "p1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let retried = wait_task(&admin, "p1", "the second run to finish", |t| t.attempts == 2 && t.result.is_some()).await;
    assert_eq!((retried.state, retried.epoch), (pb::TaskState::Succeeded as i32, 2));
    let output = cluster.ctl(&controller, &["retry", "no-such"]);
    assert_eq!(String::from_utf8_lossy(&output.stderr), "error: NotFound: no task no-such\n");

    // Pages, newest first.
    let first: serde_json::Value =
        serde_json::from_slice(&cluster.ctl(&controller, &["--json", "tasks", "--limit", "2"]).stdout).unwrap();
    let ids: Vec<&str> = first["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["p3", "p2"]);
    let token = first["nextPageToken"].as_str().unwrap().to_owned();
    assert!(!token.is_empty());
    let second: serde_json::Value = serde_json::from_slice(
        &cluster.ctl(&controller, &["--json", "tasks", "--limit", "2", "--page-token", &token]).stdout,
    )
    .unwrap();
    let ids: Vec<&str> = second["tasks"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!((ids, second["nextPageToken"].as_str()), (vec!["p1"], Some("")));
    let by_worker = admin
        .list_tasks(pb::ListTasksRequest { worker_id: "w-1".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_worker.tasks.len(), 3);
    let table = String::from_utf8(cluster.ctl(&controller, &["tasks", "--limit", "1"]).stdout).unwrap();
    assert!(table.lines().last().unwrap().starts_with("more: --page-token "), "{table}");

    // Stats and one worker.
    let stats: serde_json::Value =
        serde_json::from_slice(&cluster.ctl(&controller, &["--json", "stats"]).stdout).unwrap();
    let pool = &stats["pools"][0];
    assert_eq!(
        (pool["pool"].as_str(), pool["agents"].as_u64(), pool["freeSlots"].as_u64()),
        (Some("default"), Some(1), Some(2))
    );
    assert_eq!((pool["queued"].as_u64(), pool["running"].as_u64()), (Some(0), Some(0)));
    assert_eq!(stats["leaseLosses"]["lease_expired"], 0);
    let table = String::from_utf8(cluster.ctl(&controller, &["stats"]).stdout).unwrap();
    assert!(table.starts_with("POOL     QUEUED  RUNNING  OLDEST QUEUED  AGENTS  FREE SLOTS  SQS IN HAND\ndefault  0       0        0.0s           1       2           0\n"), "{table}");
    let worker = admin.get_worker(pb::GetWorkerRequest { worker_id: "w-1".into() }).await.unwrap().into_inner();
    assert_eq!((worker.slots, worker.state), (2, pb::WorkerState::Ready as i32));
    let missing = admin.get_worker(pb::GetWorkerRequest { worker_id: "w-9".into() }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    // Follow a run's log until it ends.
    // At least 3 s, a log line every 0.5 s: the follower sees the log grow.
    submit(&mut admin, "followed", timed_recipe(3.0)).await;
    let output = cluster.ctl(&controller, &["task", "followed", "--follow", "--poll-interval", "200ms"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("STATE     SUCCEEDED"), "{text}");
    let log_lines = text.split("ID        followed").next().unwrap();
    assert!(log_lines.lines().count() > 5, "the log was printed as it grew: {text}");
}
