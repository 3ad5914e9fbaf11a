//! The status page in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (`tests/browser/status_page.mjs`) against a controller with agents and four tasks — one succeeded, one failed,
//! one long and writing logs, one waiting with no agent for its pool. Screenshots land in `target/screenshots/`
//! (or `OUTPOST_SCREENSHOTS_DIR`; `docs/screenshots/` holds a set for the README).

use std::process::Command;
use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sees_the_fleet_the_tasks_and_why_one_waits_in_a_real_browser() {
    let cluster = Cluster::new(bins!());
    // An open-source GMS asked for a DataHub Cloud queue: the pool's cloud_credentials channel fails, as the page shows.
    let gms = cluster.gms(&[]).await;
    let gms_url = format!("{}/gms", gms.base);
    let listen = format!("127.0.0.1:{}", free_port());
    let flags = ["--ui-listen", &listen, "--ui-refresh-interval", "1s", "--heartbeat-interval", "1s"];
    let channel = ["--gms-url", &gms_url, "--queue-from-gms", "default", "--sqs-retry-backoff", "200ms"];
    let controller = cluster.controller("outpost.db").args(&[&flags[..], &channel[..]].concat()).start().await;
    let mut admin = cluster.admin(&controller).await;
    let _agents = [cluster.agent("w-1").slots(2).start(&controller), cluster.agent("w-2").start(&controller)];
    wait_workers(&admin, 2).await;
    submit(&mut admin, "page-ok", file_recipe()).await;
    submit(&mut admin, "page-failed", failing_recipe()).await;
    wait_terminal(&admin, "page-ok").await;
    wait_terminal(&admin, "page-failed").await;
    // Held until the browser run is over: its log grows (a line every 0.5 s) while the page is open.
    let long = cluster.held_run("page-long");
    submit_args(&mut admin, "page-long", "RUN_INGEST", &[("recipe", long.recipe()), ("debug_mode", "true".into())])
        .await;
    submit_to(&mut admin, "page-waiting", file_recipe(), "nobody-serves-this").await;
    long.wait_started(1).await;

    let out = cluster.ctl(&controller, &["--json", "ui-tokens", "create", "--ttl", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["token"].as_str().unwrap().to_owned();
    let shots = std::env::var_os("OUTPOST_SCREENSHOTS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let tasks = serde_json::json!({"succeeded": "page-ok", "failed": "page-failed", "long": "page-long",
                                   "waiting": "page-waiting"});
    let shots_dir = shots.clone();
    let driver = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(repo_root().join("tests/browser/status_page.mjs"))
            .env("BASE_URL", format!("http://{listen}"))
            .env("TOKEN", token)
            .env("SHOTS", &shots)
            .env("TASKS", tasks.to_string())
            .output()
            .expect("node runs (scripts/setup-browser.sh installs what it needs)")
    });
    let output = tokio::time::timeout(Duration::from_secs(240), driver).await.expect("the browser run ends").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the browser run failed: {stderr}");
    let seen: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or("{}")).unwrap();
    eprintln!("seen: {seen:#}");

    // Not logged in: the login form, and nothing of the task.
    assert_eq!(seen["anonymousUrl"], "/login");
    assert_eq!(seen["anonymousSeesTask"], false);
    assert!(seen["wrongLogin"].as_str().unwrap().contains("That token is not valid"));
    // The workers with their slots, the long run on one of them.
    let workers = seen["workers"].as_array().unwrap();
    let row = |id: &str| workers.iter().find(|w| w[0] == id).unwrap_or_else(|| panic!("no row for {id}: {workers:?}"));
    assert_eq!(row("w-1")[1], "READY");
    assert!(row("w-2")[3].as_str().unwrap().ends_with("/1"), "{:?}", row("w-2"));
    let running_on: Vec<&serde_json::Value> = workers.iter().filter(|w| w[4] == "page-long").collect();
    assert_eq!(running_on.len(), 1, "{workers:?}");
    assert!(running_on[0][3].as_str().unwrap().starts_with("1/"), "{:?}", running_on[0]);
    let pools = seen["pools"].as_array().unwrap();
    let waiting_pool = pools.iter().find(|p| p[0] == "nobody-serves-this").expect("the waiting task's pool");
    assert_eq!((waiting_pool[1].as_str(), waiting_pool[4].as_str()), (Some("0"), Some("1")), "{waiting_pool:?}");
    // A pool whose channel fails is shown so, with the error in words.
    let default_pool = pools.iter().find(|p| p[0] == "default").expect("the default pool");
    let channels = default_pool[8].as_str().unwrap();
    assert!(channels.starts_with("cloud_credentials: FAILING no call has succeeded yet"), "{channels}");
    assert!(channels.contains("this GMS has no listExecutorConfigs (open-source DataHub?)"), "{channels}");
    assert!(seen["failures"].as_str().unwrap().contains("page-failed"));
    assert!(!seen["failures"].as_str().unwrap().contains("page-ok"));
    // Keyboard and labels.
    assert_eq!(seen["firstTab"], "Skip to content");
    assert_eq!(seen["unlabelledFields"], 0);
    assert!(seen["failedListing"].as_str().unwrap().contains("page-failed"));
    assert!(!seen["failedListing"].as_str().unwrap().contains("page-ok"));
    // The long run's log grew on the page while it stayed loaded.
    assert!(seen["logLater"].as_u64().unwrap() > seen["logAtFirst"].as_u64().unwrap(), "{seen}");
    assert_eq!(seen["reloadsWhileGrowing"], 0);
    // The failed run's error, and why the waiting one waits.
    assert_eq!(seen["failedState"], "FAILED");
    assert!(seen["failedReport"].as_str().unwrap().contains("Exit code\n1"), "{}", seen["failedReport"]);
    assert!(seen["failedReport"].as_str().unwrap().contains("/nonexistent/outpost/missing.json"));
    assert!(seen["waitingWhy"].as_str().unwrap().contains("no connected agent serves the task's pool"));
    // A phone's screen holds the page; logging out ends the session.
    assert!(seen["phoneOverflow"].as_i64().unwrap() <= 0, "{}", seen["phoneOverflow"]);
    assert_eq!(seen["afterLogout"], "/login");
    for shot in ["fleet.png", "task.png", "fleet-phone.png"] {
        assert!(shots_dir.join(shot).metadata().unwrap().len() > 10_000, "{shot}");
    }
    eprintln!(
        "page weight {} bytes, load {} ms, first contentful paint {} ms",
        seen["fleetBytes"], seen["fleetLoadMs"], seen["firstContentfulPaintMs"]
    );
    // The task stays as it was: the page changed nothing.
    let mut admin = admin.clone();
    let task = admin.get_task(pb::GetTaskRequest { id: "page-waiting".into() }).await.unwrap().into_inner();
    assert_eq!(task.state, pb::TaskState::Queued as i32);
    long.release();
}

/// Makes a status page login token with `role`: (its id, the token).
fn login_token(cluster: &Cluster, controller: &Controller, role: &str) -> (String, String) {
    let out = cluster.ctl(controller, &["--json", "ui-tokens", "create", "--ttl", "1h", "--role", role]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (created["id"].as_str().unwrap().to_owned(), created["token"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_login_cancels_a_long_run_from_its_page_and_a_viewer_login_cannot() {
    let cluster = Cluster::new(bins!());
    let listen = format!("127.0.0.1:{}", free_port());
    let controller = cluster
        .controller("outpost.db")
        .args(&["--ui-listen", &listen, "--ui-refresh-interval", "500ms"])
        .start()
        .await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").args(&["--cancel-grace", "5s"]).start(&controller);
    wait_workers(&admin, 1).await;
    // Never released: only the cancel ends it.
    let long = cluster.held_run("stuck");
    submit(&mut admin, "stuck", long.recipe()).await;
    long.wait_started(1).await;
    let pgid = wait_until("the CLI to start", Duration::from_secs(30), || {
        let groups = cluster.cli_process_groups("w-1");
        async move { groups.first().copied() }
    })
    .await;
    let (operator_id, operator) = login_token(&cluster, &controller, "operator");
    let (viewer_id, viewer) = login_token(&cluster, &controller, "viewer");

    let driver = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(repo_root().join("tests/browser/operator_actions.mjs"))
            .env("BASE_URL", format!("http://{listen}"))
            .env("OPERATOR", operator)
            .env("VIEWER", viewer)
            .env("TASK", "stuck")
            .output()
            .expect("node runs (scripts/setup-browser.sh installs what it needs)")
    });
    let output = tokio::time::timeout(Duration::from_secs(240), driver).await.expect("the browser run ends").unwrap();
    assert!(output.status.success(), "the browser run failed: {}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).lines().last().unwrap_or("{}")).unwrap();
    eprintln!("seen: {seen:#}");

    // The viewer sees no button and no audit page; its forged post is refused.
    assert_eq!(seen["viewerDrainButtons"], 0);
    assert_eq!(seen["viewerCancelButtons"], 0);
    assert_eq!(seen["viewerNavAudit"], 0);
    assert_eq!(seen["viewerForgedStatus"], 403);
    assert!(seen["viewerForgedText"].as_str().unwrap().contains("the form is stale or forged"), "{seen}");
    assert_eq!(seen["viewerAuditStatus"], 403);
    // The operator's post without the page's form token is refused; its click on Cancel ends the run.
    assert_eq!(seen["operatorNoTokenStatus"], 403);
    assert_eq!(seen["operatorDrainButtons"], 1, "one button per ready worker");
    assert_eq!(seen["stateBefore"], "RUNNING");
    assert_eq!(seen["stateAfter"], "CANCELLED");
    assert_eq!(seen["retryButtons"], 1, "a finished task offers a retry");
    assert_eq!(seen["operatorNavAudit"], 0, "the audit page is for admins");

    let task = admin.get_task(pb::GetTaskRequest { id: "stuck".into() }).await.unwrap().into_inner();
    assert_eq!(task.state, pb::TaskState::Cancelled as i32);
    let report = task.result.unwrap().report;
    assert!(report.contains("Execution was cancelled by request."), "{report}");
    assert_eq!(task.attempts, 1);
    wait_until("the CLI's process group to be gone", Duration::from_secs(30), || {
        let left = processes_in_group(pgid);
        async move { left.is_empty().then_some(()) }
    })
    .await;

    // Each post is in the audit trail: the cancel with its reason, the refusals with why.
    let events = admin
        .list_audit_events(pb::ListAuditEventsRequest { action: "CancelTask".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .events;
    let rows: Vec<(String, String, String, String)> =
        events.iter().map(|e| (e.actor.clone(), e.role.clone(), e.outcome.clone(), e.via.clone())).collect();
    let operator_actor = format!("ui-token/{operator_id}");
    let viewer_actor = format!("ui-token/{viewer_id}");
    assert_eq!(
        rows,
        [
            (operator_actor.clone(), "operator".into(), "done".into(), "page".into()),
            (operator_actor, "operator".into(), "denied".into(), "page".into()),
            (viewer_actor, "viewer".into(), "denied".into(), "page".into()),
        ],
        "newest first: {events:#?}"
    );
    assert_eq!((events[0].target.as_str(), events[0].reason.as_str()), ("stuck", "stuck run"));
    assert!(events[0].peer.starts_with("127.0.0.1:"), "{:?}", events[0].peer);
    assert!(events[2].detail.contains("the form is stale or forged"), "{:?}", events[2].detail);
    long.release();
}
