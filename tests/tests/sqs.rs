//! The SQS bridge against a real SQS API (moto server) with the real AWS SDK: the three message shapes, messages
//! held until the result is recorded/in GMS, visibility renewal, redelivery after a crash, duplicates,
//! quarantine, demand-driven receive, and SQS calls per task.

use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

/// A controller with fast SQS timings against `moto`, serving `queue` for the pool `default` (none when empty).
async fn controller(cluster: &Cluster, moto: &Moto, queue: &str, overrides: &[(&str, &str)]) -> Controller {
    controller_with(cluster, moto, queue, overrides, "outpost.db", &[], &[]).await
}

/// The same over the database `db`, with flags that take no value (`switches`) and extra environment (`env`).
async fn controller_with(
    cluster: &Cluster,
    moto: &Moto,
    queue: &str,
    overrides: &[(&str, &str)],
    db: &str,
    switches: &[&str],
    env: &[(&str, &str)],
) -> Controller {
    let queue_flag = format!("default={queue}");
    let mut base = vec![
        ("--heartbeat-interval", "300ms"),
        ("--lease-ttl", "3s"),
        ("--sweep-interval", "100ms"),
        ("--sqs-wait", "1s"),
        ("--sqs-visibility-timeout", "3s"),
        ("--sqs-keep-interval", "1s"),
        ("--sqs-idle-poll", "100ms"),
        ("--sqs-retry-backoff", "100ms"),
        ("--sqs-retry-backoff-max", "500ms"),
        ("--sqs-endpoint", moto.endpoint.as_str()),
    ];
    if !queue.is_empty() {
        base.push(("--queue", queue_flag.as_str()));
    }
    let mut flags = merge_flags(&base, overrides);
    flags.extend(switches.iter().map(|s| s.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cluster.controller(db).args(&flags).env(env).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_all_three_shapes_run_and_are_deleted_only_after_their_results_reached_gms() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let gms = cluster.gms(&[]).await;
    let queue = moto.queue("executor-default").await;
    let input = messages::input(&file_recipe(), "default");
    gms.input("urn:li:dataHubExecutionRequest:via-celery", input.clone()).await;
    moto.send(&queue, &messages::mcl_input("via-mcl", &input)).await;
    moto.send(&queue, &messages::celery("via-celery", "default")).await;
    moto.send(&queue, &messages::plain("via-plain", &input)).await;

    // GMS refuses every terminal result for now (503, worth retrying): the runs finish, their results wait.
    gms.fail_matching(503, 1000, "\\\"SUCCESS\\\"").await;
    let gms_url = format!("{}/gms", gms.base);
    let controller =
        controller(&cluster, &moto, &queue, &[("--gms-url", &gms_url), ("--progress-interval", "1s")]).await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(3).start(&controller);
    let ids = ["via-mcl", "via-celery", "via-plain"];
    for id in ids {
        let task = wait_task(&admin, id, "finished", |t| is_terminal(t.state)).await;
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{id}: {task:?}");
        assert_eq!(
            (task.task.as_str(), task.pool.as_str(), task.source_type.as_str()),
            ("RUN_INGEST", "default", "SCHEDULED_INGESTION_SOURCE")
        );
        assert_eq!(task.attempts, 1);
        let urn = format!("urn:li:dataHubExecutionRequest:{id}");
        wait_until(&format!("GMS to refuse {id}'s result"), Duration::from_secs(30), || async {
            let writes = gms.result_writes(&urn).await;
            writes.iter().any(|(code, w)| *code == 503 && w["status"] == "SUCCESS").then_some(())
        })
        .await;
    }
    // Finished, but their results are not in GMS: every message is still held (in flight), none deleted.
    for id in ids {
        assert_eq!(get(&mut admin.clone(), id).await.reported_unix_ms, 0, "{id} is not reported yet");
    }
    assert_eq!(moto.counts(&queue).await, (0, 3), "(visible, in flight): kept while the results wait");
    gms.heal().await;
    for id in ids {
        wait_task(&admin, id, "reported to GMS", |t| t.reported_unix_ms > 0).await;
    }
    moto.wait_empty(&queue).await;
    assert!(gms.invalid().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_visibility_timeout_keeps_its_message_and_runs_once() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("long").await;
    let run = cluster.held_run("long-run");
    moto.send(&queue, &messages::mcl_input("long-run", &messages::input(&run.recipe(), "default"))).await;
    let controller =
        controller(&cluster, &moto, &queue, &[("--sqs-visibility-timeout", "2s"), ("--sqs-keep-interval", "500ms")])
            .await;
    let admin = cluster.admin(&controller).await;
    let _a1 = cluster.agent("w-1").start(&controller);
    let _a2 = cluster.agent("w-2").start(&controller);
    let started = wait_task(&admin, "long-run", "running", |t| t.state == pb::TaskState::Running as i32).await;
    run.wait_started(1).await;
    let begun = std::time::Instant::now();
    // Over three visibility timeouts (2 s) the message never becomes visible again while the run holds.
    while begun.elapsed() < Duration::from_secs(6) {
        // Sample the queue, then check the task still ran after the sample.
        let counts = moto.counts(&queue).await;
        assert_eq!(get(&mut admin.clone(), "long-run").await.state, pb::TaskState::Running as i32);
        assert_eq!(counts, (0, 1), "held invisible while it runs");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    run.release();
    let task = wait_terminal(&admin, "long-run").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    assert_eq!((task.attempts, task.worker_id.as_str()), (1, started.worker_id.as_str()), "it ran once");
    moto.wait_empty(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_controller_crash_the_message_comes_back_and_the_task_completes() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("crash").await;
    // Held until the restarted controller has received the message again and adopted it.
    let run = cluster.held_run("crash-run");
    moto.send(&queue, &messages::mcl_input("crash-run", &messages::input(&run.recipe(), "default"))).await;
    let mut first = controller(&cluster, &moto, &queue, &[("--lease-ttl", "30s")]).await;
    let port = first.addr.to_string();
    let _agent = cluster.agent("w-1").start(&first);
    run.wait_started(1).await;
    first.proc.kill();
    wait_until("the message to be visible again", Duration::from_secs(30), || async {
        (moto.counts(&queue).await.0 == 1).then_some(())
    })
    .await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [("--lease-ttl", "30s"), ("--listen", &port), ("--metrics-listen", &metrics)];
    let controller = controller(&cluster, &moto, &queue, &flags).await;
    let admin = cluster.admin(&controller).await;
    let messages = |outcome| sqs_messages(&metrics, "default", outcome);
    wait_until("the re-delivered message to be adopted", Duration::from_secs(30), || async {
        (messages("adopted").await >= 1.0).then_some(())
    })
    .await;
    run.release();
    let task = wait_task(&admin, "crash-run", "recorded", |t| t.reported_unix_ms > 0).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    assert_eq!(task.attempts, 1, "the agent kept running it and reclaimed it");
    assert_eq!(messages("taken").await, 0.0, "the restarted controller knew the task: never taken in anew");
    moto.wait_empty(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_runs_once() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("dupes").await;
    // Held until both deliveries were received, so the second arrives while the first runs.
    let run = cluster.held_run("twice");
    let body = messages::mcl_input("twice", &messages::input(&run.recipe(), "default"));
    moto.send(&queue, &body).await;
    moto.send(&queue, &body).await;
    let controller = controller(&cluster, &moto, &queue, &[]).await;
    let admin = cluster.admin(&controller).await;
    let _a1 = cluster.agent("w-1").slots(2).start(&controller);
    let _a2 = cluster.agent("w-2").slots(2).start(&controller);
    run.wait_started(1).await;
    wait_until("both deliveries to be received", Duration::from_secs(30), || async {
        (moto.counts(&queue).await.0 == 0).then_some(())
    })
    .await;
    run.release();
    let task = wait_task(&admin, "twice", "recorded", |t| t.reported_unix_ms > 0).await;
    assert_eq!(run.started(), 1, "one CLI ran it");
    assert_eq!((task.state, task.attempts, task.epoch), (pb::TaskState::Succeeded as i32, 1, 1));
    moto.wait_empty(&queue).await;
    let listed = admin.clone().list_tasks(pb::ListTasksRequest::default()).await.unwrap().into_inner().tasks;
    assert_eq!(listed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_messages_are_quarantined_with_their_reason_and_the_bridge_goes_on() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("mixed").await;
    let dlq = moto.queue("mixed-dlq").await;
    let wrong_aspect = messages::mcl_input("x", &messages::input(&file_recipe(), "default"))
        .replace("dataHubExecutionRequestInput", "dataHubIngestionSourceInfo");
    let oversized = messages::plain("big", &messages::input(&"x".repeat(5000), "default"));
    for body in [
        "garbage that is not json",
        "{\"entityUrn\": \"urn:li:dataHubExecutionRequest:cut\", \"aspect",
        &wrong_aspect,
        &oversized,
    ] {
        moto.send(&queue, body).await;
    }
    moto.send(&queue, &messages::plain("fine", &messages::input(&file_recipe(), "default"))).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [("--sqs-max-message-bytes", "4000"), ("--dead-letter-queue", &dlq), ("--metrics-listen", &metrics)];
    let controller = controller(&cluster, &moto, &queue, &flags).await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    let fine = wait_task(&admin, "fine", "recorded", |t| t.reported_unix_ms > 0).await;
    assert_eq!(fine.state, pb::TaskState::Succeeded as i32);
    moto.wait_empty(&queue).await;
    assert_eq!(moto.counts(&dlq).await.0, 4, "every unusable message was copied to the dead-letter queue");
    let received = |outcome| sqs_messages(&metrics, "default", outcome);
    assert_eq!((received("quarantined").await, received("taken").await), (4.0, 1.0));

    let quarantined = admin.clone().list_quarantined(pb::ListQuarantinedRequest::default()).await.unwrap();
    let quarantined = quarantined.into_inner().messages;
    let mut reasons: Vec<String> = quarantined.iter().map(|q| q.reason.clone()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "aspect \"dataHubIngestionSourceInfo\" is neither dataHubExecutionRequestInput nor dataHubExecutionRequestSignal",
            "the body is 5344 bytes, over the 4000 byte limit",
            "the body is neither JSON (EOF while parsing a string at line 1 column 59) nor base64",
            "the body is neither JSON (expected value at line 1 column 1) nor base64",
        ]
    );

    // Replayable later: the oversized one is whole and parses; the garbage is still garbage.
    let oversized = quarantined.iter().find(|q| q.reason.starts_with("the body is 5344 bytes")).unwrap();
    let replayed = admin.clone().replay_quarantined(pb::ReplayQuarantinedRequest { id: oversized.id }).await.unwrap();
    assert_eq!(replayed.into_inner().task_id, "big");
    let big = wait_terminal(&admin, "big").await;
    assert_eq!(big.state, pb::TaskState::Failed as i32, "its recipe is not JSON: the agent fails it");
    assert!(big.result.unwrap().report.contains("The recipe is not valid JSON"));
    let garbage = quarantined.iter().find(|q| q.body == "garbage that is not json").unwrap();
    let output = cluster.ctl(&controller, &["quarantine", "replay", &garbage.id.to_string()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: FailedPrecondition: the body is neither JSON (expected value at line 1 column 1) nor base64\n"
    );
    let listing = String::from_utf8(cluster.ctl(&controller, &["quarantine"]).stdout).unwrap();
    assert!(listing.starts_with("ID  RECEIVED"), "{listing}");
    assert_eq!(listing.lines().count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_follows_demand_no_agent_nothing_taken_two_slots_at_most_three_in_hand() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("demand").await;
    for i in 0..6 {
        moto.send(&queue, &messages::plain(&format!("d{i}"), &messages::input(&timed_recipe(2.0), "default"))).await;
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let controller =
        controller(&cluster, &moto, &queue, &[("--sqs-prefetch", "1"), ("--metrics-listen", &metrics)]).await;
    wait_until("three idle demand checks", Duration::from_secs(30), || async {
        (scraped(&metrics, "outpost_sqs_idle_polls_total", &[("pool", "default")]).await >= 3.0).then_some(())
    })
    .await;
    assert_eq!(moto.counts(&queue).await, (6, 0), "no agent: nothing received");

    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    let mut seen_max = 0;
    let mut finished = 0;
    while finished < 6 {
        // Taken in and not finished: what the bridge holds for runs. (Moto's in-flight count also has the messages
        // of finished runs whose delete is still on its way, so it is not the measure.)
        let tasks = admin.clone().list_tasks(pb::ListTasksRequest::default()).await.unwrap().into_inner().tasks;
        let in_hand = tasks.iter().filter(|t| !is_terminal(t.state)).count();
        seen_max = seen_max.max(in_hand);
        assert!(in_hand <= 3, "at most 2 slots + 1 prefetch in hand, saw {in_hand}: {tasks:?}");
        finished = tasks.iter().filter(|t| t.reported_unix_ms > 0).count();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen_max >= 2, "work was taken as slots freed: max in hand {seen_max}");
    moto.wait_empty(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_api_calls_per_task() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("calls").await;
    let tasks = 20;
    for i in 0..tasks {
        moto.send(&queue, &messages::plain(&format!("c{i}"), &messages::input(&file_recipe(), "default"))).await;
    }
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [
        ("--sqs-wait", "20s"),
        ("--sqs-visibility-timeout", "60s"),
        ("--sqs-keep-interval", "20s"),
        ("--metrics-listen", metrics.as_str()),
    ];
    let controller = controller(&cluster, &moto, &queue, &flags).await;
    let admin = cluster.admin(&controller).await;
    let _a1 = cluster.agent("w-1").slots(4).start(&controller);
    let _a2 = cluster.agent("w-2").slots(4).start(&controller);
    for i in 0..tasks {
        wait_task(&admin, &format!("c{i}"), "recorded", |t| t.reported_unix_ms > 0).await;
    }
    moto.wait_empty(&queue).await;
    let samples = parse_metrics(&http_get(&format!("http://{metrics}/metrics")).await.1);
    let calls: Vec<(&str, f64)> = ["receive", "change_visibility", "delete", "send"]
        .into_iter()
        .map(|call| (call, metric(&samples, "outpost_sqs_calls_total", &[("call", call)]).unwrap()))
        .collect();
    let per_task = calls.iter().map(|(_, n)| n).sum::<f64>() / tasks as f64;
    eprintln!("sqs api calls for {tasks} tasks: {calls:?} -> {per_task:.2} per task");
    assert!(per_task <= 3.0, "{per_task:.2} calls per task: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_signal_on_sqs_cancels_the_running_task() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("kills").await;
    // Never released: only the KILL ends it.
    let run = cluster.held_run("doomed");
    moto.send(&queue, &messages::mcl_input("doomed", &messages::input(&run.recipe(), "default"))).await;
    let controller = controller(&cluster, &moto, &queue, &[]).await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").args(&["--cancel-grace", "5s"]).start(&controller);
    run.wait_started(1).await;
    moto.send(&queue, &messages::mcl_kill("doomed")).await;
    let task = wait_terminal(&admin, "doomed").await;
    assert_eq!(task.state, pb::TaskState::Cancelled as i32);
    assert!(task.result.unwrap().report.contains("Execution was cancelled by request."));
    moto.wait_empty(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_pool_not_served_here_is_given_back_not_run() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("shared").await;
    moto.send(&queue, &messages::plain("elsewhere", &messages::input(&file_recipe(), "other-pool"))).await;
    moto.send(&queue, &messages::plain("ours", &messages::input(&file_recipe(), "default"))).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [("--sqs-foreign-visibility", "60s"), ("--metrics-listen", &metrics)];
    let controller = controller(&cluster, &moto, &queue, &flags).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    wait_task(&admin, "ours", "recorded", |t| t.reported_unix_ms > 0).await;
    wait_until("the foreign message to be given back", Duration::from_secs(30), || async {
        (moto.counts(&queue).await == (0, 1)).then_some(())
    })
    .await;
    let status = admin.get_task(pb::GetTaskRequest { id: "elsewhere".into() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "never taken in");
    let messages = |outcome| sqs_messages(&metrics, "default", outcome);
    assert_eq!((messages("given_back").await, messages("taken").await), (1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_backs_off_through_an_sqs_outage_and_recovers() {
    let cluster = Cluster::new(bins!());
    let mut moto = cluster.moto().await;
    let port: u16 = moto.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let queue = moto.queue("flaky").await;
    let controller = controller(&cluster, &moto, &queue, &[]).await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    wait_workers(&admin, 1).await;

    let healthy = wait_channel(&admin, "default", "sqs", "a receive succeeded", |c| c.last_success_unix_ms > 0).await;
    assert_eq!(healthy.consecutive_failures, 0);
    moto.proc.kill();
    let failing = wait_channel(&admin, "default", "sqs", "two receives failed", |c| c.consecutive_failures >= 2).await;
    assert!(failing.last_error.starts_with(&format!("receive from {queue} failed: ")), "{failing:?}");
    assert_eq!(failing.last_success_unix_ms, healthy.last_success_unix_ms, "no success while moto is down");
    let moto = cluster.moto_on(port).await;
    assert_eq!(moto.queue("flaky").await, queue, "the same queue URL again");
    moto.send(&queue, &messages::plain("after-outage", &messages::input(&file_recipe(), "default"))).await;
    let task = wait_task(&admin, "after-outage", "recorded", |t| t.reported_unix_ms > 0).await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    moto.wait_empty(&queue).await;
    let recovered = wait_channel(&admin, "default", "sqs", "healthy again", |c| c.consecutive_failures == 0).await;
    assert!(recovered.last_success_unix_ms > failing.last_error_unix_ms, "{recovered:?}");
    // The last error stays on record (moto may have answered QueueDoesNotExist between its restart and the queue's).
    assert!(recovered.last_error.starts_with(&format!("receive from {queue} failed: ")), "{recovered:?}");
    assert!(recovered.last_error_unix_ms >= failing.last_error_unix_ms, "{recovered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datahub_cloud_pool_takes_its_queue_and_refreshed_credentials_from_gms() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let gms = cluster.gms(&[]).await;
    let queue = moto.queue("re-default").await;
    // DataHub Cloud hands out the queue and credentials that expire 3 s after each answer.
    let entry = serde_json::json!({"region": "us-east-1", "executorId": "default", "queueUrl": queue,
        "accessKeyId": "ASIACLOUDTEST", "secretKeyId": "cloud-secret-value", "sessionToken": "cloud-session-token"});
    let other = serde_json::json!({"region": "us-east-1", "executorId": "other-pool", "queueUrl": "http://127.0.0.1:1/x",
        "accessKeyId": "ASIAOTHER", "secretKeyId": "other-secret", "sessionToken": "other-token"});
    gms.executor_configs(serde_json::json!([other, entry]), Duration::from_secs(3)).await;
    let run = cluster.held_run("cloud-run");
    moto.send(&queue, &messages::mcl_input("cloud-run", &messages::input(&run.recipe(), "default"))).await;

    let gms_url = format!("{}/gms", gms.base);
    let flags = [
        ("--gms-url", gms_url.as_str()),
        ("--queue-from-gms", "default"),
        ("--sqs-credentials-refresh-ahead", "2s"),
        ("--progress-interval", "1s"),
        ("--executor-status-interval", "1s"),
    ];
    let mut controller = controller(&cluster, &moto, "", &flags).await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    run.wait_started(1).await;
    // The run outlives the credentials: they are fetched again about every second (3 s minus 2 s ahead).
    let before = gms.graphql_calls().await;
    wait_until("three credential refreshes during the run", Duration::from_secs(30), || async {
        (gms.graphql_calls().await >= before + 3).then_some(())
    })
    .await;
    run.release();
    let task = wait_task(&admin, "cloud-run", "reported to GMS", |t| t.reported_unix_ms > 0).await;
    assert_eq!((task.state, task.attempts), (pb::TaskState::Succeeded as i32, 1));
    moto.wait_empty(&queue).await;
    // The pool's queue and credentials came from DataHub GMS: its cloud_credentials channel is healthy.
    let stats = admin.clone().get_stats(pb::GetStatsRequest {}).await.unwrap().into_inner();
    let pool = stats.pools.iter().find(|p| p.pool == "default").expect("the pool's stats");
    let cloud = pool.channels.iter().find(|c| c.channel == "cloud_credentials").expect("a cloud_credentials channel");
    assert!(cloud.last_success_unix_ms > 0 && cloud.consecutive_failures == 0, "{cloud:?}");
    let log = controller.proc.log();
    for secret in ["cloud-secret-value", "cloud-session-token", "other-secret"] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
    // The controller shows in DataHub as an executor of the pool, and says so when it stops.
    let statuses = gms.executor_statuses().await;
    assert!(statuses.len() >= 2, "{statuses:?}");
    let (id, first) = &statuses[0];
    assert!(id.ends_with(".default.127.0.0.1"), "{id}");
    assert_eq!((first["executorPoolId"].as_str(), first["executorStopped"].as_bool()), (Some("default"), Some(false)));
    controller.proc.signal(libc::SIGTERM);
    assert!(controller.proc.wait_exit(Duration::from_secs(30)).await.success());
    let statuses = gms.executor_statuses().await;
    let (last_id, last) = statuses.last().unwrap();
    assert_eq!((last_id, last["executorStopped"].as_bool()), (id, Some(true)));
    assert!(gms.invalid().await.is_empty(), "{:?}", gms.invalid().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_source_gms_has_no_pool_queues_and_the_controller_says_so() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    let gms_url = format!("{}/gms", gms.base);
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--gms-url",
        &gms_url,
        "--queue-from-gms",
        "default",
        "--sqs-retry-backoff",
        "100ms",
        "--metrics-listen",
        &metrics,
    ];
    let controller = cluster.controller("outpost.db").args(&flags).start().await;
    // It keeps serving (other pools, the admin API) and says why this pool has no queue, where operators look.
    let mut admin = cluster.admin(&controller).await;
    let failing =
        wait_channel(&admin, "default", "cloud_credentials", "failing", |c| c.consecutive_failures >= 1).await;
    assert!(failing.last_error.contains("this GMS has no listExecutorConfigs (open-source DataHub?)"), "{failing:?}");
    assert!(failing.last_error.contains("name the pool's queue with --queue instead"), "{failing:?}");
    assert_eq!(failing.last_success_unix_ms, 0);
    let out = cluster.ctl(&controller, &["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("cloud_credentials") && text.contains("FAILING"), "{text}");
    assert!(admin.list_workers(pb::ListWorkersRequest::default()).await.is_ok());
    let samples = parse_metrics(&http_get(&format!("http://{metrics}/metrics")).await.1);
    let channel = [("pool", "default"), ("channel", "cloud_credentials")];
    assert!(metric(&samples, "outpost_channel_consecutive_failures", &channel).unwrap() >= 1.0);
    assert!(metric(&samples, "outpost_channel_errors_total", &channel).unwrap() >= 1.0);
    wait_until("a second try", Duration::from_secs(30), || async { (gms.graphql_calls().await >= 2).then_some(()) })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datahub_monitor_work_is_quarantined_or_left_to_datahubs_executor_never_dropped() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("re-monitors").await;
    let assertion = messages::celery_task("assertion_request", "urn:li:assertion:a1", "default");
    moto.send(&queue, &assertion).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let controller = controller(&cluster, &moto, &queue, &[("--metrics-listen", &metrics)]).await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    // Alone on the queue: quarantined with the reason (and gone from SQS), counted.
    moto.wait_empty(&queue).await;
    let quarantined = admin.clone().list_quarantined(pb::ListQuarantinedRequest::default()).await.unwrap();
    let reasons: Vec<String> = quarantined.into_inner().messages.iter().map(|q| q.reason.clone()).collect();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].starts_with("Celery task assertion_request is work of DataHub's own executor"), "{reasons:?}");
    let samples = parse_metrics(&http_get(&format!("http://{metrics}/metrics")).await.1);
    let labels = [("task", "assertion_request"), ("outcome", "quarantined")];
    assert_eq!(metric(&samples, "outpost_sqs_foreign_work_total", &labels), Some(1.0));
    drop(controller);

    // Sharing the queue with DataHub's executor: the message is left to it (invisible for a while, then back).
    let training = messages::celery_task("monitor_training_request", "urn:li:monitor:m1", "default");
    moto.send(&queue, &training).await;
    let flags = [("--metrics-listen", metrics.as_str()), ("--sqs-foreign-visibility", "60s")];
    let switches = ["--sqs-shared-with-datahub-executor"];
    let shared = controller_with(&cluster, &moto, &queue, &flags, "outpost-shared.db", &switches, &[]).await;
    let _agent = cluster.agent("w-2").start(&shared);
    let labels = [("task", "monitor_training_request"), ("outcome", "given_back")];
    wait_until("the message to be given back", Duration::from_secs(30), || async {
        let samples = parse_metrics(&http_get(&format!("http://{metrics}/metrics")).await.1);
        (metric(&samples, "outpost_sqs_foreign_work_total", &labels) == Some(1.0)).then_some(())
    })
    .await;
    // It waits in SQS, invisible for --sqs-foreign-visibility, for DataHub's executor: not taken, not quarantined.
    assert_eq!(moto.counts(&queue).await, (0, 1));
    let admin = cluster.admin(&shared).await;
    let quarantined = admin.clone().list_quarantined(pb::ListQuarantinedRequest::default()).await.unwrap();
    assert!(quarantined.into_inner().messages.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_keeps_failing_does_not_make_the_keeper_spin() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let queue = moto.queue("failing-store").await;
    let env = [("FAILPOINTS", "store::held_messages=return")];
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [("--metrics-listen", metrics.as_str())];
    let _controller = controller_with(&cluster, &moto, &queue, &flags, "outpost.db", &[], &env).await;
    // Each failed read counts as a failure of the pool's SQS channel (receiving works: only the keeper fails).
    let failures = || scraped(&metrics, "outpost_channel_errors_total", &[("pool", "default"), ("channel", "sqs")]);
    wait_until("the keeper to meet the failing store", Duration::from_secs(30), || async {
        (failures().await >= 3.0).then_some(())
    })
    .await;
    // It backs off (100 ms doubling to 500 ms) instead of asking again at once.
    let seen = failures().await;
    assert!(seen <= 10.0, "the keeper asked {seen} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_run_outlives_two_key_rotations_while_moto_refuses_the_replaced_keys() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let gms = cluster.gms(&[]).await;
    let queue = moto.queue("re-rotating").await;
    let run = cluster.held_run("rotated");
    moto.send(&queue, &messages::mcl_input("rotated", &messages::input(&run.recipe(), "default"))).await;
    // From here on moto checks every request's signature against the keys IAM knows, and its policy.
    let admin = moto.iam(None, &["admin"]);
    let mut key = moto.iam(None, &["user", "executor"]);
    moto.iam(None, &["enforce"]);
    let refused = moto.sqs.get_queue_attributes().queue_url(&queue).send().await;
    assert!(refused.is_err(), "moto enforces authentication: unknown keys are refused");
    let entry = |key: &serde_json::Value| {
        serde_json::json!([{"region": "us-east-1", "executorId": "default", "queueUrl": queue,
            "accessKeyId": key["AccessKeyId"], "secretKeyId": key["SecretAccessKey"], "sessionToken": ""}])
    };
    gms.executor_configs(entry(&key), Duration::from_secs(3)).await;
    let gms_url = format!("{}/gms", gms.base);
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [
        ("--gms-url", gms_url.as_str()),
        ("--queue-from-gms", "default"),
        ("--sqs-credentials-refresh-ahead", "2s"),
        ("--progress-interval", "1s"),
        ("--metrics-listen", &metrics),
    ];
    let controller = controller(&cluster, &moto, "", &flags).await;
    let admin_api = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    run.wait_started(1).await;

    for _ in 0..2 {
        // A new key is handed out by GMS; once the controller has fetched it, the old one is deleted.
        let next = moto.iam(Some(&admin), &["key", "executor"]);
        gms.executor_configs(entry(&next), Duration::from_secs(3)).await;
        let before = gms.graphql_calls().await;
        wait_until("the controller to fetch the new key", Duration::from_secs(30), || async {
            (gms.graphql_calls().await >= before + 2).then_some(())
        })
        .await;
        let old = key["AccessKeyId"].as_str().unwrap().to_owned();
        moto.iam(Some(&admin), &["delete", "executor", &old]);
        let tried = moto.iam(None, &["try", &old, key["SecretAccessKey"].as_str().unwrap(), &queue]);
        assert!(tried["error"].is_string(), "moto refuses a deleted key: {tried}");
        key = next;
    }
    let running = admin_api.clone().get_task(pb::GetTaskRequest { id: "rotated".into() }).await.unwrap().into_inner();
    assert_eq!(running.state, pb::TaskState::Running as i32, "the run outlived both rotations");
    run.release();

    let task = wait_task(&admin_api, "rotated", "reported to GMS", |t| t.reported_unix_ms > 0).await;
    assert_eq!((task.state, task.attempts), (pb::TaskState::Succeeded as i32, 1));
    wait_until("the message to be deleted", Duration::from_secs(60), || async {
        let counts = moto.iam(Some(&admin), &["count", &queue]);
        (counts["visible"] == 0 && counts["in_flight"] == 0).then_some(())
    })
    .await;
    let received = |outcome| sqs_messages(&metrics, "default", outcome);
    assert_eq!((received("taken").await, received("adopted").await), (1.0, 0.0), "the message was received once");
    let log = controller.proc.log();
    let secret = key["SecretAccessKey"].as_str().unwrap();
    assert!(!log.contains(secret), "a secret reached the log");
    let writes = gms.result_writes("urn:li:dataHubExecutionRequest:rotated").await;
    assert_eq!(writes.iter().filter(|(code, a)| *code == 200 && a["status"] == "SUCCESS").count(), 1, "{writes:?}");
}

/// `outpost_sqs_messages_total` of `pool` with `outcome`, scraped from the controller's `/metrics` at `addr` now.
async fn sqs_messages(addr: &str, pool: &str, outcome: &str) -> f64 {
    scraped(addr, "outpost_sqs_messages_total", &[("pool", pool), ("outcome", outcome)]).await
}
