//! A fleet with nothing made by hand: a controller given no certificate files makes its own CA, server certificate
//! and local admin identity beside its database and keeps them across restarts; agents join with the bootstrap
//! token it registers from a file and trust it through that token alone; a second agent cannot take a connected
//! worker's name.

use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

const TOKEN: &str = "boot01.0123456789abcdef";

fn tokens(cluster: &Cluster, controller: &Controller) -> serde_json::Value {
    let out = cluster.ctl_as(controller, &cluster.local_admin_tls(), &["--json", "tokens", "list"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_without_certificate_files_makes_its_own_trust_and_agents_join_with_the_bootstrap_token() {
    let cluster = Cluster::new(bins!());
    let token_file = cluster.path("bootstrap-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (listen, join) = (format!("127.0.0.1:{}", free_port()), free_port());
    let join_listen = format!("127.0.0.1:{join}");
    let join_url = format!("https://127.0.0.1:{join}");
    let token_path = token_file.to_string_lossy().into_owned();
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--listen",
        listen.as_str(),
        "--join-listen",
        join_listen.as_str(),
        "--bootstrap-token-file",
        token_path.as_str(),
        "--tls-san",
        "outpost-controller.outpost.svc",
        "--metrics-listen",
        metrics.as_str(),
    ];
    let mut controller = cluster.controller("outpost.db").own_trust().args(&flags).start().await;
    let trust = cluster.path("trust");
    let keys_mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(trust.join(name)).unwrap().permissions().mode() & 0o777
    };
    for key in ["ca.key", "controller.key", "admin-local.key"] {
        assert_eq!(keys_mode(key), 0o600, "{key}");
    }
    let (ca, server) =
        (std::fs::read(trust.join("ca.pem")).unwrap(), std::fs::read(trust.join("controller.pem")).unwrap());

    // The bootstrap token, reusable, for the default pool; agents given only it join and trust the controller.
    let listed = tokens(&cluster, &controller);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!((listed[0]["id"].as_str(), listed[0]["pool"].as_str()), (Some("boot01"), Some("default")), "{listed}");
    let state = cluster.path("state-w-1");
    let agent_flags = ["--worker-id", "w-1", "--join-url", join_url.as_str()];
    let first = cluster.agent("w-1").joins(Some(TOKEN), &state).args(&agent_flags).start(&controller);
    let mut admin = admin_client(&controller, &cluster.local_admin_tls()).await;
    submit(&mut admin, "own-trust-1", file_recipe()).await;
    // A joined agent's certificate expiry, as the worker list shows it, is exported for the expiry alert.
    wait_workers(&admin, 1).await;
    let listed = admin.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    let expires = listed[0].cert_expires_unix_ms / 1000;
    let samples = parse_metrics(&http_get(&format!("http://{metrics}/metrics")).await.1);
    let exported = metric(&samples, "outpost_agent_cert_expiry_timestamp_seconds", &[("worker", "w-1")]);
    assert_eq!(exported, Some(expires as f64));
    assert_eq!(wait_terminal(&admin, "own-trust-1").await.state, pb::TaskState::Succeeded as i32);

    // Beside the controller, outpostctl needs nothing but its trust directory (as in the controller's container).
    let out = std::process::Command::new(&cluster.bins.ctl)
        .env("OUTPOST_TRUST_DIR", &trust)
        .args(["--controller", &controller.url(), "workers"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("w-1"));

    // A second agent asking for the connected worker's name is refused, and spends no use of the token.
    let twin_state = cluster.path("state-twin");
    let mut twin = cluster.agent("twin").joins(Some(TOKEN), &twin_state).args(&agent_flags).start(&controller);
    let status = twin.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success());
    assert!(twin.log().contains("worker w-1 is connected; a second agent cannot take its name"), "{}", twin.log());

    // A restart on the same files: the same CA and certificate, the agent comes back without joining again.
    controller.proc.kill();
    let controller = cluster.controller("outpost.db").own_trust().args(&flags).start().await;
    assert_eq!(std::fs::read(trust.join("ca.pem")).unwrap(), ca);
    assert_eq!(std::fs::read(trust.join("controller.pem")).unwrap(), server);
    let mut admin = admin_client(&controller, &cluster.local_admin_tls()).await;
    wait_workers(&admin, 1).await;
    submit(&mut admin, "own-trust-2", file_recipe()).await;
    assert_eq!(wait_terminal(&admin, "own-trust-2").await.state, pb::TaskState::Succeeded as i32);
    let uses = tokens(&cluster, &controller)[0]["used"].as_array().unwrap().len();
    assert_eq!(uses, 1, "one join in all: the twin was refused before the token was spent, the restart needed none");

    // Once the worker is gone, its name may join again.
    drop(first);
    wait_workers(&admin, 0).await;
    let again = cluster.path("state-w-1-again");
    let _second = cluster.agent("w-1-again").joins(Some(TOKEN), &again).args(&agent_flags).start(&controller);
    wait_workers(&admin, 1).await;
    let joins: Vec<String> = tokens(&cluster, &controller)[0]["used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["workerId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(joins, ["w-1", "w-1"], "the same name joined again once it was free");

    // A changed file replaces the token: the old one is revoked at the next start.
    std::fs::write(&token_file, "boot02.fedcba9876543210\n").unwrap();
    drop(controller);
    let controller = cluster.controller("outpost.db").own_trust().args(&flags).start().await;
    let listed = tokens(&cluster, &controller);
    let mut revoked: Vec<(&str, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t["revokedUnixMs"].as_i64().unwrap_or(0) > 0))
        .collect();
    revoked.sort();
    assert_eq!(revoked, [("boot01", true), ("boot02", false)], "{listed}");
    let log = controller.proc.log();
    assert!(!log.contains("0123456789abcdef") && !log.contains("fedcba9876543210"), "a token secret reached the log");

    // From the environment instead (ECS hands secrets over so), as the 22 characters a secrets store generates:
    // it replaces the file's token, and an agent given the same 22 characters joins with it.
    drop(controller);
    let generated = "boot03abcdefabcdef0123";
    let without_file: Vec<&str> =
        flags.iter().copied().filter(|f| *f != "--bootstrap-token-file" && *f != token_path).collect();
    let env = [("OUTPOST_BOOTSTRAP_TOKEN", generated)];
    let controller = cluster.controller("outpost.db").own_trust().args(&without_file).env(&env).start().await;
    let listed = tokens(&cluster, &controller);
    let active: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["revokedUnixMs"].as_i64().unwrap_or(0) == 0)
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["boot03"], "{listed}");
    let admin = admin_client(&controller, &cluster.local_admin_tls()).await;
    let generated_state = cluster.path("state-generated");
    let generated_flags = ["--worker-id", "w-generated", "--join-url", join_url.as_str()];
    let _third =
        cluster.agent("w-generated").joins(Some(generated), &generated_state).args(&generated_flags).start(&controller);
    wait_workers(&admin, 2).await; // w-1-again reconnected, w-generated joined
    let listed = tokens(&cluster, &controller);
    let boot03 = listed.as_array().unwrap().iter().find(|t| t["id"] == "boot03").unwrap();
    assert_eq!(boot03["used"][0]["workerId"], "w-generated", "{listed}");
    assert!(!controller.proc.log().contains("abcdefabcdef0123"), "the generated token's secret reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_before_its_controller_keeps_trying_and_joins_once_it_is_up() {
    let cluster = Cluster::new(bins!());
    let token_file = cluster.path("bootstrap-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (grpc, join) = (free_port(), free_port());
    let (listen, join_listen) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{join}"));
    let join_url = format!("https://127.0.0.1:{join}");
    // Something on the join port that is not a controller yet: it takes the agent's first attempt and hangs up.
    let not_yet = tokio::net::TcpListener::bind(&join_listen).await.unwrap();
    let state = cluster.path("state-early");
    let flags = ["--worker-id", "early", "--join-url", join_url.as_str(), "--join-retry-min", "100ms"];
    let mut agent =
        cluster.agent("early").joins(Some(TOKEN), &state).args(&flags).start_at(&format!("https://{listen}"));
    let (attempt, _) = tokio::time::timeout(RUN_TIMEOUT, not_yet.accept()).await.expect("the agent tried").unwrap();
    drop((attempt, not_yet));

    let token_path = token_file.to_string_lossy().into_owned();
    let controller_flags =
        ["--listen", &listen, "--join-listen", &join_listen, "--bootstrap-token-file", token_path.as_str()];
    let controller = cluster.controller("outpost.db").own_trust().args(&controller_flags).start().await;
    let admin = admin_client(&controller, &cluster.local_admin_tls()).await;
    wait_workers(&admin, 1).await;
    assert!(!agent.exited(), "the agent is still running");
    let listed = tokens(&cluster, &controller);
    assert_eq!(listed[0]["used"][0]["workerId"], "early", "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_set_of_certificate_files_is_refused_at_start() {
    let cluster = Cluster::new(bins!());
    let cert = cluster.certs.join("controller.pem").to_string_lossy().into_owned();
    let mut proc = cluster.controller("outpost.db").own_trust().args(&["--tls-cert", &cert]).spawn();
    let status = proc.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1), "refused at start");
    assert!(proc.log().contains("give all of --tls-cert, --tls-key and --tls-ca, or none of them"), "{}", proc.log());
}
