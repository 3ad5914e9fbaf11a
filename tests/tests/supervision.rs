//! Supervision: a controller whose critical subsystem stops (a port it cannot bind, a writer that panics) ends
//! with a non-zero exit and a one-line reason, so ECS or Kubernetes restart it; `/readyz` says 503 until gRPC
//! serves.

use std::time::Duration;

use outpost_integration_tests::*;

/// The one line the controller printed about why it stopped.
fn reason_line(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("outpost-controller: ")).collect();
    assert_eq!(lines.len(), 1, "one line says why it stopped:\n{log}");
    lines[0].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_port_in_use_ends_the_controller_with_a_one_line_reason() {
    let cluster = Cluster::new(bins!());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut controller = cluster.controller("outpost.db").args(&["--listen", &addr]).spawn();
    let status = controller.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    let line = reason_line(&controller.log());
    assert!(line.starts_with(&format!("outpost-controller: binding {addr}: ")) && line.contains("in use"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_panics_ends_the_controller_with_a_one_line_reason() {
    let cluster = Cluster::new(bins!());
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let env = [("FAILPOINTS", "store::submit=panic(the disk caught fire)")];
    let mut controller = cluster.controller("outpost.db").args(&["--metrics-listen", &metrics]).env(&env).start().await;
    wait_until("the controller to be ready", Duration::from_secs(30), || async {
        (http_get(&format!("http://{metrics}/readyz")).await.0 == 200).then_some(())
    })
    .await;
    // The submit's turn reaches the writer, whose job panics: the submit is not durable, and the controller stops.
    let submitted = cluster.ctl(&controller, &["submit", "--pool", "default", "--task", "NOOP"]);
    assert!(!submitted.status.success());
    let status = controller.proc.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    assert_eq!(
        reason_line(&controller.proc.log()),
        "outpost-controller: SQLite writer stopped: the SQLite writer thread panicked: the disk caught fire"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_until_grpc_serves() {
    let cluster = Cluster::new(bins!());
    let db = cluster.path("outpost.db");
    // Another process holds the database: the controller cannot open its store until it lets go.
    let mut holder = cluster.python(
        "hold-db",
        &[
            "-c",
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE'); c.execute('CREATE TABLE held (x)')\n\
             print('locked', flush=True); time.sleep(60)",
            db.to_str().unwrap(),
        ],
    );
    wait_until("the database to be locked", Duration::from_secs(30), || {
        let locked = holder.log().contains("locked");
        async move { locked.then_some(()) }
    })
    .await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let _controller = cluster.controller("outpost.db").args(&["--metrics-listen", &metrics]).spawn();
    let readyz = format!("http://{metrics}/readyz");
    let (status, body) = wait_until("the health endpoint to answer", Duration::from_secs(30), || async {
        reqwest::get(&readyz).await.ok()?;
        Some(http_get(&readyz).await)
    })
    .await;
    assert_eq!((status, body.as_str()), (503, "starting: the store is not open yet\n"));
    assert_eq!(http_get(&format!("http://{metrics}/healthz")).await, (200, "ok\n".to_owned()));
    assert!(!cluster.path("outpost.db.addr").exists(), "not serving gRPC yet");
    holder.kill();
    let body = wait_until("the controller to be ready", Duration::from_secs(30), || async {
        let (status, body) = http_get(&readyz).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body, "ready\n");
    assert!(cluster.path("outpost.db.addr").exists(), "serving gRPC once ready");
}
