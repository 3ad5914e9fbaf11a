//! The whole path on real parts: controller and agents as processes, real mTLS, the real `datahub` CLI.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use outpost_common::pb::{self, admin_service_client::AdminServiceClient, agent_service_client::AgentServiceClient};
use outpost_integration_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_the_work_and_each_task_runs_once() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let _a1 = cluster.agent("w-1").start(&controller);
    let _a2 = cluster.agent("w-2").start(&controller);
    let mut admin = cluster.admin(&controller).await;
    wait_workers(&admin, 2).await;

    let ids: Vec<String> = (0..4).map(|i| format!("share-{i}")).collect();
    for id in &ids {
        submit(&mut admin, id, file_recipe()).await;
    }
    // A second submit of a known execution request is the same task, not a second run.
    let again = pb::SubmitTaskRequest {
        args: HashMap::from([("recipe".to_owned(), file_recipe())]),
        execution_request_id: "urn:li:dataHubExecutionRequest:share-0".into(),
        ..Default::default()
    };
    assert!(!admin.submit_task(again).await.unwrap().into_inner().created);

    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
        let task = wait_terminal(&admin, id).await;
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "task {id}: {task:?}");
        assert_eq!((task.attempts, task.epoch, task.attempt_history.len()), (1, 1, 1), "{id} ran exactly once");
        let attempt = &task.attempt_history[0];
        assert_eq!(attempt.state, "SUCCEEDED");
        assert_eq!(attempt.worker_id, task.worker_id);
        *per_worker.entry(task.worker_id.clone()).or_default() += 1;
        let result = task.result.expect("a recorded result");
        assert_eq!(result.exit_code, Some(0));
        assert!(
            result.report.starts_with("~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished successfully!\n")
        );
        assert!(result.report.contains("Successfully executed 'datahub ingest'"));
        assert!(result.report.contains("~~~~ Ingestion Report ~~~~"));
        let structured: serde_json::Value = serde_json::from_str(&result.structured_report).expect("report JSON");
        assert_eq!(structured["source"]["type"], "file");
        assert_eq!(structured["sink"]["report"]["total_records_written"], 4);
    }
    assert_eq!(per_worker.keys().map(String::as_str).collect::<Vec<_>>(), ["w-1", "w-2"], "both agents ran work");
    assert_eq!(per_worker.values().sum::<usize>(), 4);
    let listed = admin.list_tasks(pb::ListTasksRequest::default()).await.unwrap().into_inner().tasks;
    assert_eq!(listed.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_recipe_is_recorded_as_failed_with_the_cli_error() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let _agent = cluster.agent("w-1").start(&controller);
    let mut admin = cluster.admin(&controller).await;
    submit(&mut admin, "fails", failing_recipe()).await;
    let task = wait_terminal(&admin, "fails").await;
    assert_eq!(task.state, pb::TaskState::Failed as i32);
    assert_eq!(task.attempt_history[0].reason, "FAILED (exit code 1)");
    let result = task.result.expect("result");
    assert_eq!(result.exit_code, Some(1));
    assert!(result.report.starts_with("~~~~ Execution Summary - RUN_INGEST ~~~~\nExecution finished with errors.\n"));
    assert!(result.report.contains("Failed to execute 'datahub ingest', exit code 1"), "{}", result.report);
    // The CLI's own error is in the log tail.
    assert!(result.report.contains("/nonexistent/outpost/missing.json"), "{}", result.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_the_right_certificate_are_refused() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;

    // No client certificate: the server ends the handshake with an alert.
    let ca = cluster.certs.join("ca.pem");
    assert_eq!(tls_verdict(controller.addr, &ca, None).await, "received fatal alert: CertificateRequired");
    // The admin client fails too.
    let bare = channel_without_client_cert(&controller.url(), &ca).await.unwrap();
    AdminServiceClient::new(bare).list_workers(pb::ListWorkersRequest {}).await.unwrap_err();

    // A certificate from another CA (with the same CA name, so only the signature gives it away).
    let other = cluster.other_ca(&[&["admin", "--name", "ops", "--role", "admin"]]);
    let foreign = (other.path().join("admin-ops.pem"), other.path().join("admin-ops.key"));
    assert_eq!(
        tls_verdict(controller.addr, &ca, Some((&foreign.0, &foreign.1))).await,
        "received fatal alert: DecryptError"
    );
    // The right certificate is accepted (the two refusals above are not the server refusing everyone).
    let own = cluster.admin_tls();
    assert_eq!(tls_verdict(controller.addr, &ca, Some((&own.cert, &own.key))).await, "accepted");

    // An agent certificate whose Hello claims another worker.
    let (cert, key) = cluster.agent_cert("w-1");
    let agent_tls = outpost_common::tls::TlsFiles { cert, key, ca: cluster.certs.join("ca.pem") };
    let agent_channel = channel(&controller.url(), &agent_tls).await.unwrap();
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            worker_id: "w-2".into(),
            pools: vec!["default".into()],
            slots: 1,
            ..Default::default()
        })),
    };
    let status =
        AgentServiceClient::new(agent_channel.clone()).connect(tokio_stream::iter(vec![hello])).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "the certificate identifies worker w-1, but Hello claims worker w-2");

    // The agent program with a mismatched worker ID gives up with the same refusal.
    let mut impostor = cluster.agent("w-2").certificate_of("w-1").start(&controller);
    let exit = impostor.wait_exit(Duration::from_secs(30)).await;
    assert!(!exit.success());
    assert!(
        impostor.log().contains("the certificate identifies worker w-1, but Hello claims worker w-2"),
        "{}",
        impostor.log()
    );

    // An agent certificate on the admin service.
    let status = AdminServiceClient::new(agent_channel).list_workers(pb::ListWorkersRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.message(), "agent w-1 may not call the admin service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_still_knows_every_task() {
    let cluster = Cluster::new(bins!());
    let mut controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    {
        let _agent = cluster.agent("w-1").start(&controller);
        submit(&mut admin, "before-restart", file_recipe()).await;
        assert_eq!(wait_terminal(&admin, "before-restart").await.state, pb::TaskState::Succeeded as i32);
    }
    // With no agent left, this one stays queued; then the controller dies without warning.
    wait_workers(&admin, 0).await;
    submit(&mut admin, "queued-across-restart", file_recipe()).await;
    controller.proc.kill();

    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let done = get(&mut admin, "before-restart").await;
    assert_eq!(done.state, pb::TaskState::Succeeded as i32);
    assert_eq!(done.result.expect("result survived").exit_code, Some(0));
    assert_eq!(done.attempt_history.len(), 1);
    let queued = get(&mut admin, "queued-across-restart").await;
    assert_eq!(queued.state, pb::TaskState::Queued as i32);
    assert_eq!(queued.attempts, 0);
    let workers = admin.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].state, pb::WorkerState::Disconnected as i32);

    // The reloaded queue is served once an agent connects.
    let _agent = cluster.agent("w-2").start(&controller);
    let task = wait_terminal(&admin, "queued-across-restart").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    assert_eq!(task.worker_id, "w-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outpostctl_submits_the_example_recipes_and_shows_the_results() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    let admin = cluster.admin(&controller).await;
    wait_workers(&admin, 1).await;
    let examples = repo_root().join("examples");
    for (recipe, id) in [("mock-data.yml", "example-mock"), ("file-to-blackhole.yml", "example-file")] {
        let recipe = examples.join(recipe);
        let output =
            cluster.ctl(&controller, &["--json", "submit", "--recipe", recipe.to_str().unwrap(), "--id", id, "--wait"]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let task: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON output");
        assert_eq!(task["id"], id);
        assert_eq!(task["state"], "SUCCEEDED", "{task}");
        assert_eq!(task["workerId"], "w-1");
        assert_eq!(task["result"]["exitCode"], 0);
    }

    let output = cluster.ctl(&controller, &["tasks"]);
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID            TASK        POOL     STATE      ATTEMPTS  WORKER  CREATED"), "{table}");
    assert!(lines[1].starts_with("example-file  RUN_INGEST  default  SUCCEEDED  1         w-1"), "{table}");
    assert!(lines[2].starts_with("example-mock  RUN_INGEST  default  SUCCEEDED  1         w-1"), "{table}");

    let output = cluster.ctl(&controller, &["workers"]);
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.lines().nth(1).unwrap().starts_with("w-1     READY  default  0/2"), "{table}");

    let output = cluster.ctl(&controller, &["task", "no-such-task"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "error: NotFound: no task no-such-task\n");
    let output = cluster.ctl(&controller, &["frobnicate"]);
    assert_eq!(output.status.code(), Some(2), "usage errors exit 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noop_task_needs_no_recipe_and_succeeds_at_once() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let _agent = cluster.agent("w-1").start(&controller);
    let output = cluster.ctl(&controller, &["--json", "submit", "--task", "NOOP", "--id", "ping", "--wait"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let task: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((task["state"].as_str(), task["workerId"].as_str()), (Some("SUCCEEDED"), Some("w-1")));
    let output = cluster.ctl(&controller, &["submit", "--task", "RUN_INGEST", "--id", "no-recipe"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: InvalidArgument: invalid args: RUN_INGEST needs a recipe\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_picks_up_rotated_certificate_files_without_a_restart() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let admin = cluster.admin(&controller).await;
    // The agent's files first hold a certificate for its worker ID from another CA: the controller refuses it.
    let (cert, key) = cluster.agent_cert("w-rot");
    let (good_cert, good_key) = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    let other = cluster.other_ca(&[&["agent", "--worker-id", "w-rot"]]);
    std::fs::copy(other.path().join("agent-w-rot.pem"), &cert).unwrap();
    std::fs::copy(other.path().join("agent-w-rot.key"), &key).unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let _agent = cluster.agent("w-rot").args(&["--metrics-listen", &metrics]).start(&controller);
    let failures = || scraped(&metrics, "outpost_agent_connection_failures_total", &[]);
    wait_until("the agent's refused connection attempts", Duration::from_secs(30), || async {
        (failures().await >= 2.0).then_some(())
    })
    .await;
    // Rotation: the right certificate is written to the same files; the running agent uses it on its next try.
    std::fs::write(&key, good_key).unwrap();
    std::fs::write(&cert, good_cert).unwrap();
    wait_workers(&admin, 1).await;
    // The same process: it failed with the old files, then switched to the new ones once.
    let reloads = |outcome: &'static str| {
        let metrics = &metrics;
        async move { scraped(metrics, "outpost_agent_tls_reloads_total", &[("outcome", outcome)]).await }
    };
    assert_eq!((reloads("loaded").await, reloads("failed").await), (1.0, 0.0));
    assert!(failures().await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_picks_up_rotated_certificate_files_without_a_restart() {
    let cluster = Cluster::new(bins!());
    let metrics = format!("127.0.0.1:{}", free_port());
    let controller = cluster
        .controller("outpost.db")
        .args(&["--tls-reload-interval", "200ms", "--metrics-listen", &metrics])
        .start()
        .await;
    let reloads = |outcome: &'static str| {
        let metrics = &metrics;
        async move { scraped(metrics, "outpost_tls_reloads_total", &[("listener", "grpc"), ("outcome", outcome)]).await }
    };
    let old_admin = cluster.admin_tls();
    // Rotation to a new CA: the controller's key, certificate and CA files are replaced in place.
    let other = cluster.other_ca(&[&["admin", "--name", "ops", "--role", "admin"]]);
    for name in ["controller.key", "controller.pem", "ca.pem"] {
        std::fs::copy(other.path().join(name), cluster.certs.join(name)).unwrap();
    }
    let new_admin = outpost_common::tls::TlsFiles {
        cert: other.path().join("admin-ops.pem"),
        key: other.path().join("admin-ops.key"),
        ca: other.path().join("ca.pem"),
    };
    // New connections get the new certificate and must present one from the new CA...
    wait_until("the controller to serve the new certificate", Duration::from_secs(30), || {
        let (url, tls) = (controller.url(), new_admin.clone());
        async move {
            let channel = channel(&url, &tls).await.ok()?;
            AdminServiceClient::new(channel).list_workers(pb::ListWorkersRequest {}).await.ok().map(|_| ())
        }
    })
    .await;
    // ...so the old CA's certificates are refused now (same CA name: only the signature gives them away).
    assert_eq!(
        tls_verdict(controller.addr, &new_admin.ca, Some((&old_admin.cert, &old_admin.key))).await,
        "received fatal alert: DecryptError"
    );
    assert_eq!((reloads("loaded").await, reloads("failed").await), (1.0, 0.0));

    // A rotation gone wrong (an unreadable certificate) keeps the last good one in use.
    std::fs::write(cluster.certs.join("controller.pem"), "not a certificate").unwrap();
    wait_until("the broken files to be noticed", Duration::from_secs(30), || async {
        (reloads("failed").await >= 1.0).then_some(())
    })
    .await;
    let channel = channel(&controller.url(), &new_admin).await.unwrap();
    AdminServiceClient::new(channel).list_workers(pb::ListWorkersRequest {}).await.unwrap();
}
