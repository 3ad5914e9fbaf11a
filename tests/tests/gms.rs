//! Reporting to DataHub's GMS: exact aspects validated by DataHub's own schema classes (the stand-in), the durable
//! outbox through outages and restarts, progress, KILL signals, size caps, credentials, input fetch.

use std::time::{Duration, Instant};

use outpost_common::pb;
use outpost_integration_tests::*;
use serde_json::json;

/// Fast timings plus GMS reporting to `gms` (with its `/gms` path suffix, as DataHub Cloud URLs have).
fn flags(gms: &Gms, extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--heartbeat-interval",
        "300ms",
        "--lease-ttl",
        "3s",
        "--sweep-interval",
        "100ms",
        "--progress-interval",
        "500ms",
        "--signal-poll-interval",
        "500ms",
        "--gms-retry-backoff",
        "100ms",
        "--gms-retry-backoff-max",
        "300ms",
        "--gms-token",
        "test-token",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.push("--gms-url".into());
    flags.push(format!("{}/gms", gms.base));
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

async fn controller(cluster: &Cluster, gms: &Gms, extra: &[&str]) -> Controller {
    let flags = flags(gms, extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cluster.controller("outpost.db").args(&flags).start().await
}

async fn wait_reported(admin: &tonic_client::Admin, id: &str) -> pb::Task {
    wait_task(admin, id, "reported to GMS", |t| t.reported_unix_ms > 0).await
}

mod tonic_client {
    pub type Admin = outpost_common::pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>;
}

fn statuses(writes: &[(u16, serde_json::Value)]) -> Vec<(u16, String)> {
    writes.iter().map(|(code, a)| (*code, a["status"].as_str().unwrap_or("?").to_owned())).collect()
}

/// Every write of the stand-in passed DataHub's validation, and no RUNNING came after a terminal status.
async fn assert_clean(gms: &Gms) {
    let invalid = gms.invalid().await;
    assert!(invalid.is_empty(), "payloads DataHub's schema classes refused: {invalid:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reports_running_progress_and_success_as_datahub_does() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    gms.accept_token(Some("test-token")).await;
    let controller = controller(&cluster, &gms, &[]).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    // A run of at least 3 s: progress writes (every 500 ms) carry its growing log.
    submit(&mut admin, "reported", timed_recipe(3.0)).await;
    let task = wait_reported(&admin, "reported").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);

    let writes = gms.result_writes("urn:li:dataHubExecutionRequest:reported").await;
    let seen = statuses(&writes);
    assert!(seen.iter().all(|(code, _)| *code == 200), "{seen:?}");
    assert_eq!(seen.first().map(|s| s.1.as_str()), Some("RUNNING"));
    assert_eq!(seen.last().map(|s| s.1.as_str()), Some("SUCCESS"));
    assert_eq!(seen.iter().filter(|s| s.1 == "SUCCESS").count(), 1, "one terminal write: {seen:?}");
    let kickoff = &writes[0].1;
    assert!(kickoff["startTimeMs"].as_i64().unwrap() > 0);
    assert!(kickoff.get("report").is_none(), "the kickoff has no report: {kickoff}");
    let progress: Vec<&serde_json::Value> = writes[1..writes.len() - 1].iter().map(|w| &w.1).collect();
    assert!(!progress.is_empty(), "progress was reported every 500 ms during a multi-second run: {seen:?}");
    assert!(progress.iter().all(|p| p["status"] == "RUNNING" && p["startTimeMs"] == kickoff["startTimeMs"]));
    assert!(
        progress.iter().any(|p| p["report"].as_str().is_some_and(|r| r.contains("outpost test source: still holding"))),
        "{progress:#?}"
    );
    let done = &writes.last().unwrap().1;
    assert_eq!(done["startTimeMs"], task.result.as_ref().unwrap().start_time_unix_ms);
    assert!(done["durationMs"].as_i64().unwrap() > 0);
    assert!(
        done["report"]
            .as_str()
            .unwrap()
            .starts_with("~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished successfully!\n")
    );
    let structured = &done["structuredReport"];
    assert_eq!(
        (structured["type"].as_str(), structured["contentType"].as_str()),
        (Some("RUN_INGEST"), Some("application/json"))
    );
    let cli_report: serde_json::Value = serde_json::from_str(structured["serializedValue"].as_str().unwrap()).unwrap();
    assert_eq!(cli_report["source"]["type"], "outpost_test_source.HeldSource");

    // The wire details GMS needs.
    let requests = gms.requests().await;
    let write =
        requests.iter().find(|r| r["path"] == "/gms/aspects?action=ingestProposal").expect("the /gms prefix is kept");
    assert_eq!(write["headers"]["x-restli-protocol-version"], "2.0.0");
    assert_eq!(write["headers"]["authorization"], "Bearer test-token");
    let body: serde_json::Value = serde_json::from_str(write["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["async"], "false");
    assert_eq!(body["proposal"]["changeType"], "UPSERT");
    assert_eq!(body["proposal"]["aspectName"], "dataHubExecutionRequestResult");
    assert_clean(&gms).await;
    assert!(!controller.proc.log().contains("test-token"), "the token never reaches the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_gms_outage_and_a_controller_restart_every_result_arrives_once_in_order() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    let mut first = controller(&cluster, &gms, &[]).await;
    let mut admin = cluster.admin(&first).await;
    let agent = cluster.agent("w-1").slots(2).start(&first);
    wait_workers(&admin, 1).await;

    // GMS answers 503 for a while: both runs finish meanwhile.
    gms.fail(503, 8, "aspects").await;
    submit(&mut admin, "outage-a", file_recipe()).await;
    submit(&mut admin, "outage-b", failing_recipe()).await;
    wait_reported(&admin, "outage-a").await;
    wait_reported(&admin, "outage-b").await;

    // GMS down for good; a run finishes; the controller dies before it could report it.
    gms.fail(503, 100_000, "aspects").await;
    submit(&mut admin, "across-restart", file_recipe()).await;
    let finished = wait_terminal(&admin, "across-restart").await;
    assert_eq!((finished.state, finished.reported_unix_ms), (pb::TaskState::Succeeded as i32, 0));
    first.proc.kill();
    drop(agent);
    gms.heal().await;
    let controller = controller(&cluster, &gms, &[]).await;
    let admin = cluster.admin(&controller).await;
    wait_reported(&admin, "across-restart").await;

    for (id, terminal) in [("outage-a", "SUCCESS"), ("outage-b", "FAILURE"), ("across-restart", "SUCCESS")] {
        let writes = gms.result_writes(&format!("urn:li:dataHubExecutionRequest:{id}")).await;
        let accepted: Vec<String> = statuses(&writes).into_iter().filter(|(c, _)| *c == 200).map(|(_, s)| s).collect();
        let (last, before) = accepted.split_last().expect("writes reached GMS");
        assert_eq!(last, terminal, "{id}: the terminal status comes last: {accepted:?}");
        assert!(
            !before.is_empty() && before.iter().all(|s| s == "RUNNING"),
            "{id}: RUNNING (and progress) first, the terminal once: {accepted:?}"
        );
        assert!(writes.iter().any(|(code, _)| *code == 503), "{id} went through the outage");
    }
    assert_clean(&gms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_signal_in_gms_cancels_the_run_and_its_process_group() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    let controller = controller(&cluster, &gms, &[]).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").args(&["--cancel-grace", "5s"]).start(&controller);
    // Never released: only the KILL ends it.
    let run = cluster.held_run("killed");
    submit(&mut admin, "killed", run.recipe()).await;
    run.wait_started(1).await;
    let pgid = wait_until("the CLI to start", Duration::from_secs(30), || {
        let groups = cluster.cli_process_groups("w-1");
        async move { groups.first().copied() }
    })
    .await;

    let signalled = Instant::now();
    gms.signal("urn:li:dataHubExecutionRequest:killed").await;
    let task = wait_reported(&admin, "killed").await;
    let elapsed = signalled.elapsed();
    assert_eq!(task.state, pb::TaskState::Cancelled as i32);
    assert_eq!(processes_in_group(pgid), Vec::<i32>::new(), "the CLI's process group is gone");
    let writes = gms.result_writes("urn:li:dataHubExecutionRequest:killed").await;
    let last = &writes.last().unwrap().1;
    assert_eq!(last["status"], "CANCELLED");
    assert!(last["report"].as_str().unwrap().contains("Execution was cancelled by request."));
    // Measured, not asserted tightly (bench/RESULTS.md has the figure): poll interval 500 ms + 1 s.
    eprintln!("KILL set in GMS -> CANCELLED reported: {} ms", elapsed.as_millis());
    assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    assert_clean(&gms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_over_the_cap_are_cut_with_a_marker_not_refused() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&["--max-payload", "6000"]).await;
    let controller =
        controller(&cluster, &gms, &["--gms-max-report-bytes", "3000", "--gms-max-structured-bytes", "1000"]).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    submit(&mut admin, "big", file_recipe()).await;
    let task = wait_reported(&admin, "big").await;
    let recorded = task.result.unwrap();
    assert!(recorded.report.len() + recorded.structured_report.len() > 6000, "the uncut result would be refused");
    let writes = gms.result_writes("urn:li:dataHubExecutionRequest:big").await;
    assert!(writes.iter().all(|(code, _)| *code == 200), "{:?}", statuses(&writes));
    let done = &writes.last().unwrap().1;
    let report = done["report"].as_str().unwrap();
    assert!(report.len() <= 3000, "{}", report.len());
    assert!(report.starts_with("WARNING: the structured ingestion report ("), "{report}");
    assert!(report.contains("bytes of this report were cut here to keep it under 3000 bytes"), "{report}");
    assert!(done.get("structuredReport").is_none());
    assert_clean(&gms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_keeps_results_until_it_is_fixed() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    gms.accept_token(Some("another-token")).await;
    let controller = controller(&cluster, &gms, &[]).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    submit(&mut admin, "unauthorized", file_recipe()).await;
    wait_terminal(&admin, "unauthorized").await;
    wait_until("GMS to answer a result write with 401", Duration::from_secs(30), || async {
        let writes = gms.result_writes("urn:li:dataHubExecutionRequest:unauthorized").await;
        writes.iter().any(|(code, _)| *code == 401).then_some(())
    })
    .await;
    assert_eq!(get(&mut admin, "unauthorized").await.reported_unix_ms, 0, "kept, not dropped");
    gms.accept_token(Some("test-token")).await;
    wait_reported(&admin, "unauthorized").await;
    let writes = gms.result_writes("urn:li:dataHubExecutionRequest:unauthorized").await;
    let accepted: Vec<String> = statuses(&writes).into_iter().filter(|(c, _)| *c == 200).map(|(_, s)| s).collect();
    assert_eq!(accepted.last().map(String::as_str), Some("SUCCESS"));
    assert_eq!(accepted.iter().filter(|s| *s == "SUCCESS").count(), 1);
    assert!(!controller.proc.log().contains("test-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_read_again_when_it_is_replaced() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    gms.accept_token(Some("file-token-one")).await;
    let file = cluster.path("gms-token");
    std::fs::write(&file, "file-token-one\n").unwrap();
    let path = file.to_string_lossy().into_owned();
    // The file wins over DATAHUB_GMS_TOKEN (test-token, which GMS would refuse).
    let controller = controller(&cluster, &gms, &["--gms-token-file", &path]).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    submit(&mut admin, "first-token", file_recipe()).await;
    wait_reported(&admin, "first-token").await;

    // Rotated as a Secret volume does it: a new file renamed over the old one.
    gms.accept_token(Some("file-token-two")).await;
    let next = cluster.path("gms-token.new");
    std::fs::write(&next, "file-token-two\n").unwrap();
    std::fs::rename(&next, &file).unwrap();
    submit(&mut admin, "second-token", file_recipe()).await;
    wait_reported(&admin, "second-token").await;
    for id in ["first-token", "second-token"] {
        let writes = gms.result_writes(&format!("urn:li:dataHubExecutionRequest:{id}")).await;
        assert!(writes.iter().all(|(code, _)| *code == 200), "{id}: {:?}", statuses(&writes));
    }
    assert!(!controller.proc.log().contains("file-token-"), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execution_request_inputs_are_read_from_gms() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    let input = json!({
        "task": "RUN_INGEST",
        "args": {"recipe": file_recipe(), "version": "native"},
        "executorId": "default",
        "source": {"type": "MANUAL_INGESTION_SOURCE"},
        "requestedAt": 1732550000000i64,
    });
    gms.input("urn:li:dataHubExecutionRequest:from-gms", input.clone()).await;
    let client =
        outpost_controller::gms::Client::new(&format!("{}/gms", gms.base), Default::default(), Duration::from_secs(5))
            .unwrap();
    let urns =
        vec!["urn:li:dataHubExecutionRequest:from-gms".to_owned(), "urn:li:dataHubExecutionRequest:absent".to_owned()];
    let found = client.batch_get(&urns, &["dataHubExecutionRequestInput"]).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found["urn:li:dataHubExecutionRequest:from-gms"]["dataHubExecutionRequestInput"], input);
    let request = gms.requests().await.pop().unwrap();
    assert_eq!(request["path"], "/gms/openapi/v2/entity/batch/dataHubExecutionRequest");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(request["body"].as_str().unwrap()).unwrap(),
        json!({"urns": urns, "aspectNames": ["dataHubExecutionRequestInput"], "withSystemMetadata": false})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_gms_refuses_for_good_is_recorded_and_holds_up_nothing() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    // Every write about this one request is refused as malformed.
    gms.fail_matching(400, 1000, "urn:li:dataHubExecutionRequest:refused").await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let controller = controller(&cluster, &gms, &["--metrics-listen", &metrics]).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    wait_workers(&admin, 1).await;
    submit(&mut admin, "refused", file_recipe()).await;
    submit(&mut admin, "fine", file_recipe()).await;

    // The other task's result reaches GMS; the refused one is settled too (its SQS message could go) and says why.
    let fine = wait_reported(&admin, "fine").await;
    assert_eq!(fine.state, pb::TaskState::Succeeded as i32);
    assert_eq!(fine.delivery_failure, "");
    let refused = wait_reported(&admin, "refused").await;
    assert_eq!(refused.state, pb::TaskState::Succeeded as i32);
    assert!(
        refused.delivery_failure.starts_with("TERMINAL write: GMS refused the write (HTTP 400): "),
        "{}",
        refused.delivery_failure
    );
    // Each outbox write was tried once on its own: a payload GMS refuses for good is not sent again. (Due beside the
    // other task's write, it may first have gone in a batch GMS refused as a whole; then it went alone, once.)
    let writes = gms.single_result_writes("urn:li:dataHubExecutionRequest:refused").await;
    let batched = gms.result_writes("urn:li:dataHubExecutionRequest:refused").await.len() - writes.len();
    assert!(batched <= 2, "at most its two writes went in refused batches first: {batched}");
    let kickoffs = writes.iter().filter(|(_, a)| a["status"] == "RUNNING" && a.get("report").is_none()).count();
    let terminal: Vec<u16> = writes.iter().filter(|(_, a)| a["status"] == "SUCCESS").map(|(code, _)| *code).collect();
    assert_eq!((kickoffs, terminal), (1, vec![400]));
    let shown = cluster.ctl(&controller, &["task", "refused"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("GMS       refused for good: TERMINAL write: GMS refused the write (HTTP 400)"), "{shown}");
    let samples = parse_metrics(&http_get(&format!("http://{metrics}/metrics")).await.1);
    assert_eq!(
        metric(&samples, "outpost_gms_writes_total", &[("kind", "terminal"), ("outcome", "refused")]),
        Some(1.0)
    );
    assert_eq!(metric(&samples, "outpost_gms_writes_total", &[("kind", "running"), ("outcome", "refused")]), Some(1.0));
    assert_eq!(
        metric(&samples, "outpost_gms_writes_total", &[("kind", "terminal"), ("outcome", "delivered")]),
        Some(1.0)
    );
    assert_eq!(metric(&samples, "outpost_gms_outbox_depth", &[]), Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_gms_never_holds_a_result_behind_progress_writes() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    // Every write about the long run takes 5 s to answer.
    gms.delay_matching(Duration::from_secs(5), 1000, "urn:li:dataHubExecutionRequest:long").await;
    let controller = controller(&cluster, &gms, &[]).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    wait_workers(&admin, 1).await;
    let long = cluster.held_run("long");
    submit(&mut admin, "long", long.recipe()).await;
    // Once the long run's progress writes flow (one after another, each 5 s), a short run finishes.
    wait_until("a progress write of the long run", Duration::from_secs(60), || async {
        let writes = gms.result_writes("urn:li:dataHubExecutionRequest:long").await;
        writes.iter().any(|(_, a)| a["status"] == "RUNNING" && a.get("report").is_some()).then_some(())
    })
    .await;
    submit(&mut admin, "short", file_recipe()).await;
    wait_reported(&admin, "short").await;
    let short = gms.timed_result_writes("urn:li:dataHubExecutionRequest:short").await;
    let terminal = short.iter().find(|w| w.aspect["status"] == "SUCCESS").expect("the short run's result");
    // Its result arrived while a progress write of the long run was still waiting for its answer.
    let progress = wait_until("the progress write in flight to be answered", Duration::from_secs(30), || async {
        let long = gms.timed_result_writes("urn:li:dataHubExecutionRequest:long").await;
        long.into_iter().find(|w| {
            w.aspect.get("report").is_some()
                && w.arrived_ms <= terminal.arrived_ms
                && terminal.arrived_ms < w.answered_ms
        })
    })
    .await;
    assert_eq!(progress.aspect["status"], "RUNNING");
    long.release();
    assert_clean(&gms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_refuses_executor_statuses_datahub_cloud_would_refuse() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    let post = |status: serde_json::Value| {
        let url = format!("{}/aspects?action=ingestProposal", gms.base);
        async move {
            let body = json!({"proposal": {"entityType": "dataHubRemoteExecutor",
                "entityKeyAspect": {"value": "{\"id\": \"abcd1234-k3j4h5g6.p.gms\"}", "contentType": "application/json"},
                "changeType": "UPSERT", "aspectName": "dataHubRemoteExecutorStatus",
                "aspect": {"value": status.to_string(), "contentType": "application/json"}}, "async": "false"});
            let client = reqwest::Client::new();
            let response = client.post(url).header("X-RestLi-Protocol-Version", "2.0.0").json(&body).send().await;
            response.unwrap().status().as_u16()
        }
    };
    let good = json!({"executorPoolId": "p", "executorReleaseVersion": "0.1.0", "executorAddress": "10.0.0.5:7443",
        "executorHostname": "c-0", "executorUptime": 1.5, "executorStopped": false, "reportedAt": 1733080000000_i64});
    // An open-source GMS has no such entity.
    assert_eq!(post(good.clone()).await, 422);
    gms.executor_configs(json!([]), Duration::from_secs(60)).await;
    assert_eq!(post(good.clone()).await, 200);
    let mut without_time = good.clone();
    without_time.as_object_mut().unwrap().remove("reportedAt");
    let mut time_as_text = good.clone();
    time_as_text["reportedAt"] = json!("1733080000000");
    let mut unknown = good.clone();
    unknown["poolName"] = json!("p");
    let mut stopped_as_number = good.clone();
    stopped_as_number["executorStopped"] = json!(1);
    for bad in [without_time, time_as_text, unknown, stopped_as_number] {
        assert_eq!(post(bad.clone()).await, 422, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_due_together_go_in_one_batch_and_a_refused_batch_goes_write_by_write() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    // GMS is down while twenty no-op tasks run: their writes pile up in the outbox.
    gms.fail(503, 10_000, "aspects").await;
    let controller = controller(&cluster, &gms, &["--gms-batch-size", "50"]).await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(4).start(&controller);
    let ids: Vec<String> = (0..20).map(|i| format!("batched-{i}")).collect();
    for id in &ids {
        submit_args(&mut admin, id, "NOOP", &[]).await;
    }
    for id in &ids {
        wait_terminal(&admin, id).await;
    }
    // The first batch after GMS is back is refused once: its writes go again one by one, and arrive.
    let healed_ms = outpost_common::clock::unix_ms();
    gms.heal_then_fail(503, 1, "ingestProposalBatch").await;
    for id in &ids {
        wait_reported(&admin, id).await;
    }
    let requests = gms.requests().await;
    let batches: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/aspects?action=ingestProposalBatch")))
        .filter(|r| r["time_ms"].as_i64().unwrap_or_default() >= healed_ms)
        .collect();
    let sizes: Vec<usize> = batches
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            body["proposals"].as_array().unwrap().len()
        })
        .collect();
    let refused = batches.iter().filter(|r| r["status"] == 503).count();
    assert!(refused >= 1 && batches.last().is_some_and(|r| r["status"] == 200), "{batches:#?}");
    assert!(sizes.iter().any(|n| *n >= 2), "writes due together went in one call: {sizes:?}");
    // Each task's result reached GMS, accepted once, after its RUNNING; every write passed DataHub's classes.
    for id in &ids {
        let accepted: Vec<String> = gms
            .result_writes(&format!("urn:li:dataHubExecutionRequest:{id}"))
            .await
            .into_iter()
            .filter(|(code, _)| *code == 200)
            .map(|(_, aspect)| aspect["status"].as_str().unwrap_or("?").to_owned())
            .collect();
        assert_eq!(accepted, ["RUNNING", "SUCCESS"], "{id}");
    }
    let accepted_calls = requests
        .iter()
        .filter(|r| r["status"] == 200 && r["path"].as_str().is_some_and(|p| p.contains("ingestProposal")))
        .count();
    assert!(accepted_calls < 2 * ids.len(), "fewer calls than writes: {accepted_calls} for {}", 2 * ids.len());
    assert_clean(&gms).await;
}
