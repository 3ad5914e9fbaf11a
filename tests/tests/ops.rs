//! Operating the fleet: grpcurl over mTLS (reflection, health), Prometheus metrics and health endpoints parsed
//! by the reference parser.

use std::process::Command;
use std::time::Duration;

use outpost_integration_tests::*;

fn stdout(output: &std::process::Output) -> String {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_over_mtls() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    wait_workers(&admin, 1).await;
    submit(&mut admin, "via-grpcurl", file_recipe()).await;
    wait_terminal(&admin, "via-grpcurl").await;

    let services: Vec<String> =
        stdout(&cluster.grpcurl(&controller, &["{addr}", "list"])).lines().map(String::from).collect();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "outpost.v1.AdminService",
            "outpost.v1.AgentService",
        ]
    );
    let described = stdout(&cluster.grpcurl(&controller, &["{addr}", "describe", "outpost.v1.AdminService"]));
    assert!(described.starts_with("outpost.v1.AdminService is a service:\n"), "{described}");
    assert!(described.contains("rpc GetTask ( .outpost.v1.GetTaskRequest ) returns ( .outpost.v1.Task );"));
    assert!(described.contains("// Cancels a task."), "proto comments explain the API: {described}");

    let workers: serde_json::Value = serde_json::from_str(&stdout(
        &cluster.grpcurl(&controller, &["-d", "{}", "{addr}", "outpost.v1.AdminService/ListWorkers"]),
    ))
    .unwrap();
    assert_eq!(workers["workers"][0]["workerId"], "w-1");
    assert_eq!(workers["workers"][0]["state"], "WORKER_STATE_READY");
    assert_eq!(workers["workers"][0]["pools"], serde_json::json!(["default"]));
    let task: serde_json::Value = serde_json::from_str(&stdout(
        &cluster.grpcurl(&controller, &["-d", r#"{"id": "via-grpcurl"}"#, "{addr}", "outpost.v1.AdminService/GetTask"]),
    ))
    .unwrap();
    assert_eq!(task["id"], "via-grpcurl");
    assert_eq!(task["state"], "TASK_STATE_SUCCEEDED");
    assert_eq!(task["epoch"], "1", "uint64 travels as a string in JSON");
    assert_eq!(task["attemptHistory"][0]["workerId"], "w-1");
    let health: serde_json::Value = serde_json::from_str(&stdout(&cluster.grpcurl(
        &controller,
        &["-d", r#"{"service": "outpost.v1.AdminService"}"#, "{addr}", "grpc.health.v1.Health/Check"],
    )))
    .unwrap();
    assert_eq!(health["status"], "SERVING");

    // Without a client certificate grpcurl cannot even list.
    let bare = Command::new(repo_root().join(".venv/bin/grpcurl"))
        .arg("-cacert")
        .arg(cluster.certs.join("ca.pem"))
        .arg(controller.addr.to_string())
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(bare.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("Failed to dial target host"),
        "{}",
        String::from_utf8_lossy(&bare.stderr)
    );
    // An agent certificate may not use the admin service.
    let (cert, key) = cluster.agent_cert("w-1");
    let as_agent = Command::new(repo_root().join(".venv/bin/grpcurl"))
        .arg("-cacert")
        .arg(cluster.certs.join("ca.pem"))
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .args(["-d", "{}", &controller.addr.to_string(), "outpost.v1.AdminService/ListWorkers"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&as_agent.stderr);
    assert!(
        stderr.contains("Code: PermissionDenied") && stderr.contains("agent w-1 may not call the admin service"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_parse_with_the_reference_parser() {
    let cluster = Cluster::new(bins!());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let controller = cluster.controller("outpost.db").args(&["--metrics-listen", &listen]).start().await;
    let mut admin = cluster.admin(&controller).await;
    let agent_port = free_port();
    let agent_listen = format!("127.0.0.1:{agent_port}");
    let _agent = cluster.agent("w-1").slots(2).args(&["--metrics-listen", &agent_listen]).start(&controller);
    wait_workers(&admin, 1).await;
    submit(&mut admin, "m-ok", file_recipe()).await;
    submit(&mut admin, "m-fail", failing_recipe()).await;
    wait_terminal(&admin, "m-ok").await;
    wait_terminal(&admin, "m-fail").await;

    let base = format!("http://{listen}");
    assert_eq!(http_get(&format!("{base}/healthz")).await, (200, "ok\n".to_owned()));
    assert_eq!(http_get(&format!("{base}/readyz")).await, (200, "ready\n".to_owned()));
    assert_eq!(http_get(&format!("{base}/nope")).await.0, 404);
    let (status, text) = http_get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&text);
    assert_eq!(metric(&samples, "outpost_tasks", &[("state", "SUCCEEDED"), ("pool", "default")]), Some(1.0));
    assert_eq!(metric(&samples, "outpost_tasks", &[("state", "FAILED"), ("pool", "default")]), Some(1.0));
    assert_eq!(metric(&samples, "outpost_connected_agents", &[]), Some(1.0));
    assert_eq!(metric(&samples, "outpost_grants_total", &[]), Some(2.0));
    assert_eq!(metric(&samples, "outpost_dispatch_latency_seconds_count", &[]), Some(2.0));
    let latency_sum = metric(&samples, "outpost_dispatch_latency_seconds_sum", &[]).unwrap();
    assert!((0.0..5.0).contains(&latency_sum), "plausible dispatch latency: {latency_sum}");
    assert_eq!(metric(&samples, "outpost_retries_total", &[("reason", "lease_expired")]), Some(0.0));
    assert_eq!(metric(&samples, "outpost_lease_losses_total", &[("reason", "no_ack")]), Some(0.0));
    assert_eq!(metric(&samples, "outpost_sqs_calls_total", &[("call", "receive")]), Some(0.0));
    assert_eq!(
        metric(&samples, "outpost_gms_writes_total", &[("kind", "terminal"), ("outcome", "delivered")]),
        Some(0.0)
    );
    assert_eq!(metric(&samples, "outpost_gms_outbox_depth", &[]), Some(0.0));
    // What the SQLite writer ran: at least each task's submit, grant, start and end, each turn one commit.
    let statements = metric(&samples, "outpost_sqlite_statements_total", &[]).unwrap();
    let commits = metric(&samples, "outpost_sqlite_commits_total", &[]).unwrap();
    assert!(statements >= 2.0 * 4.0 && commits >= 1.0 && commits <= statements, "{statements} {commits}");
    // What the alert rules read (deploy/monitoring/outpost-rules.yaml).
    assert_eq!(metric(&samples, "outpost_ready", &[]), Some(1.0));
    assert_eq!(metric(&samples, "outpost_pool_agents", &[("pool", "default")]), Some(1.0));
    assert_eq!(metric(&samples, "outpost_oldest_waiting_seconds", &[("pool", "default")]), Some(0.0), "none waiting");
    let certificate = std::fs::read_to_string(cluster.certs.join("controller.pem")).unwrap();
    let (_, not_after) = outpost_common::identity::pem_validity(&certificate).unwrap();
    let not_after = not_after.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    assert_eq!(metric(&samples, "outpost_controller_cert_expiry_timestamp_seconds", &[]), Some(not_after));

    let agent_base = format!("http://{agent_listen}");
    assert_eq!(http_get(&format!("{agent_base}/readyz")).await, (200, "ready\n".to_owned()));
    let agent_samples = parse_metrics(&http_get(&format!("{agent_base}/metrics")).await.1);
    assert_eq!(metric(&agent_samples, "outpost_agent_runs_total", &[("outcome", "SUCCEEDED")]), Some(1.0));
    assert_eq!(metric(&agent_samples, "outpost_agent_runs_total", &[("outcome", "FAILED")]), Some(1.0));
    assert_eq!(metric(&agent_samples, "outpost_agent_slots", &[("state", "total")]), Some(2.0));
    assert_eq!(metric(&agent_samples, "outpost_agent_slots", &[("state", "used")]), Some(0.0));
    assert_eq!(metric(&agent_samples, "outpost_agent_connected", &[]), Some(1.0));
    assert_eq!(metric(&agent_samples, "outpost_agent_venv_budget_bytes", &[]), Some(0.0), "no budget set");

    // Every metric the alert rules read is one the binaries export (the agents' certificate expiry shows for joined
    // agents: own_trust checks it; channel health shows once a channel is called: sqs checks it).
    let rules = std::fs::read_to_string(repo_root().join("deploy/monitoring/outpost-rules.yaml")).unwrap();
    let exported: Vec<&str> = samples.iter().chain(&agent_samples).filter_map(|s| s["name"].as_str()).collect();
    let mut read: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("outpost_"))
        .collect();
    read.sort();
    read.dedup();
    let elsewhere = ["outpost_agent_cert_expiry_timestamp_seconds", "outpost_channel_consecutive_failures"];
    for name in read.iter().filter(|n| !elsewhere.contains(n)) {
        assert!(exported.contains(name), "the rules read {name}, which nothing exports: {exported:?}");
    }

    // Drained, the pool has no agent taking work: 0, not a vanished series (the alert on waiting work needs it).
    let out = cluster.ctl(&controller, &["drain", "w-1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until("the pool's agents to read 0", Duration::from_secs(30), || async {
        let samples = parse_metrics(&http_get(&format!("{base}/metrics")).await.1);
        (metric(&samples, "outpost_pool_agents", &[("pool", "default")]) == Some(0.0)).then_some(())
    })
    .await;
}
