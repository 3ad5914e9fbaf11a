//! Outpost's alert rules and dashboard against a real Prometheus (Debian's, scraping every second, the rules'
//! `for:` shortened to 2 s): a fleet with nothing made by hand (a controller that made its own trust, two agents
//! joined with its bootstrap token) serving an open-source GMS over the GMS channel. Every query of the dashboard
//! returns series while the fleet runs; with every agent of the pool stopped and work waiting, the "no agents" alert
//! fires and clears when an agent returns; with GMS refusing the token, the channel alert fires.

use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

const TOKEN: &str = "promet.0123456789abcdef";
const POOL: &str = "oss";

async fn submit_noop(admin: &mut pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>, id: &str) {
    let request = pb::SubmitTaskRequest {
        task: "NOOP".into(),
        pool: POOL.into(),
        execution_request_id: id.into(),
        ..Default::default()
    };
    admin.submit_task(request).await.expect("submit NOOP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_fire_and_clear_and_every_dashboard_query_answers_in_a_real_prometheus() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    gms.accept_token(Some("right-token")).await;
    let token_file = cluster.path("bootstrap-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (grpc, join, metrics) = (free_port(), free_port(), free_port());
    let (listen, join_listen, metrics_listen) =
        (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{join}"), format!("127.0.0.1:{metrics}"));
    let token_path = token_file.to_string_lossy().into_owned();
    let flags = [
        "--listen",
        &listen,
        "--join-listen",
        &join_listen,
        "--metrics-listen",
        &metrics_listen,
        "--bootstrap-token-file",
        &token_path,
        "--bootstrap-token-pool",
        POOL,
        "--gms-url",
        &gms.base,
        "--gms-channel",
        POOL,
        "--gms-poll-interval",
        "200ms",
        "--gms-retry-backoff",
        "100ms",
        "--gms-retry-backoff-max",
        "300ms",
    ];
    let controller = cluster
        .controller("outpost.db")
        .own_trust()
        .args(&flags)
        .env(&[("DATAHUB_GMS_TOKEN", "right-token")])
        .start()
        .await;
    let mut admin = admin_client(&controller, &cluster.local_admin_tls()).await;
    let join_url = format!("https://{join_listen}");
    let agent = |name: &str, metrics: &str| {
        let state = cluster.path(&format!("state-{name}"));
        let flags = ["--worker-id", name, "--join-url", join_url.as_str(), "--metrics-listen", metrics];
        cluster.agent(name).pool(POOL).joins(Some(TOKEN), &state).args(&flags).start_at(&format!("https://{listen}"))
    };
    let agent_metrics = [format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())];
    let mut agents = vec![agent("w-1", &agent_metrics[0]), agent("w-2", &agent_metrics[1])];
    wait_workers(&admin, 2).await;

    let prometheus = cluster
        .prometheus(&[("outpost", vec![metrics_listen.clone()]), ("outpost-agents", agent_metrics.to_vec())], "2s")
        .await;
    prometheus.wait_targets_up(3).await;
    // Some work through the fleet, so every panel has something to show.
    submit_noop(&mut admin, "warm-up").await;
    wait_task(&admin, "warm-up", "finished", |t| t.state == pb::TaskState::Succeeded as i32).await;

    // Every query of the dashboard is valid and answers with series while the fleet runs.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/monitoring/outpost-dashboard.json")).unwrap(),
    )
    .unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| target["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    for expr in &queries {
        wait_until(&format!("the dashboard query {expr} to answer with series"), Duration::from_secs(60), || async {
            match prometheus.query(expr).await {
                Ok(series) if !series.is_empty() => Some(()),
                Ok(_) => None,
                Err(e) => panic!("Prometheus refused the dashboard query {expr}: {e}"),
            }
        })
        .await;
    }

    // Every agent of the pool gone and work waiting: the "no agents" alert fires, and clears once an agent returns.
    for agent in &mut agents {
        agent.kill();
    }
    wait_workers(&admin, 0).await;
    submit_noop(&mut admin, "waiting-1").await;
    submit_noop(&mut admin, "waiting-2").await;
    prometheus.wait_alert("OutpostPoolWithoutAgents", &[("pool", POOL)], true).await;
    let _back = agent("w-3", &agent_metrics[0]);
    for id in ["waiting-1", "waiting-2"] {
        wait_task(&admin, id, "finished", |t| t.state == pb::TaskState::Succeeded as i32).await;
    }
    prometheus.wait_alert("OutpostPoolWithoutAgents", &[("pool", POOL)], false).await;

    // GMS refuses the controller's token: its search for the pool's requests fails, and the channel alert fires.
    gms.accept_token(Some("another-token")).await;
    prometheus.wait_alert("OutpostChannelFailing", &[("pool", POOL), ("channel", "gms")], true).await;
}
