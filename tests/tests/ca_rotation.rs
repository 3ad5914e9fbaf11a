//! CA rotation of a controller that made its own CA, with runs in flight: prepare → activate → retire while two
//! long recipes run on two agents. The runs succeed on attempt 1, no agent joins again with a token, `ca status`
//! shows every agent on the new CA, agents reconnect to a restarted controller on the new CA alone, and an agent
//! stopped through the whole overlap is refused with the message that it needs a token (and joins with one). The
//! overlap timer activates a prepared CA by itself.

use std::path::Path;

use outpost_common::pb;
use outpost_integration_tests::*;

const TOKEN: &str = "rotate.0123456789abcdef";

fn ctl_json(cluster: &Cluster, controller: &Controller, args: &[&str]) -> serde_json::Value {
    let out = cluster.ctl_as(controller, &cluster.local_admin_tls(), &[&["--json"][..], args].concat());
    assert!(out.status.success(), "outpostctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cas_in(path: &Path) -> usize {
    std::fs::read_to_string(path).unwrap_or_default().matches("BEGIN CERTIFICATE").count()
}

fn joins(cluster: &Cluster, controller: &Controller) -> usize {
    let listed = ctl_json(cluster, controller, &["tokens", "list"]);
    listed.as_array().unwrap().iter().map(|t| t["used"].as_array().unwrap().len()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_rotates_under_running_work_without_agents_joining_again() {
    let cluster = Cluster::new(bins!());
    let token_file = cluster.path("bootstrap-token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let token_path = token_file.to_string_lossy().into_owned();
    let (listen, join) = (format!("127.0.0.1:{}", free_port()), free_port());
    let join_listen = format!("127.0.0.1:{join}");
    let join_url = format!("https://127.0.0.1:{join}");
    let flags = [
        "--listen",
        listen.as_str(),
        "--join-listen",
        join_listen.as_str(),
        "--bootstrap-token-file",
        token_path.as_str(),
        "--ca-overlap",
        "1h",
        "--ca-check-interval",
        "100ms",
    ];
    let mut controller = cluster.controller("outpost.db").own_trust().args(&flags).start().await;
    let mut admin = admin_client(&controller, &cluster.local_admin_tls()).await;
    let url = controller.url();
    let agent = |name: &str, token: Option<&str>| {
        let flags = ["--worker-id", name, "--join-url", join_url.as_str()];
        cluster.agent(name).joins(token, &cluster.path(&format!("state-{name}"))).args(&flags).start_at(&url)
    };
    let _w1 = agent("w-1", Some(TOKEN));
    let _w2 = agent("w-2", Some(TOKEN));
    let mut away = agent("w-away", Some(TOKEN));
    wait_workers(&admin, 3).await;
    // One agent is stopped through the whole rotation.
    away.signal(libc::SIGTERM);
    away.wait_exit(RUN_TIMEOUT).await;
    wait_workers(&admin, 2).await;
    let (long1, long2) = (cluster.held_run("long-1"), cluster.held_run("long-2"));
    submit(&mut admin, "long-1", long1.recipe()).await;
    submit(&mut admin, "long-2", long2.recipe()).await;
    long1.wait_started(1).await;
    long2.wait_started(1).await;
    let trust = cluster.path("trust");
    let old_server = std::fs::read(trust.join("controller.pem")).unwrap();
    let steady = ctl_json(&cluster, &controller, &["ca", "status"]);
    assert_eq!(steady["phase"], "steady");
    let old_ca = steady["signing"]["fingerprint"].as_str().unwrap().to_owned();

    // Prepare: a new CA, trusted beside the old one, sent to both connected agents over their streams.
    let prepared = ctl_json(&cluster, &controller, &["ca", "rotate", "--reason", "yearly"]);
    assert_eq!(prepared["phase"], "prepared");
    assert_eq!(prepared["signing"]["fingerprint"], old_ca.as_str(), "the old CA still signs");
    let new_ca = prepared["next"]["fingerprint"].as_str().unwrap().to_owned();
    assert_ne!(new_ca, old_ca);
    assert!(prepared["activatesAtUnixMs"].as_i64().unwrap() > prepared["phaseSinceUnixMs"].as_i64().unwrap());
    for name in ["w-1", "w-2"] {
        let ca = cluster.path(&format!("state-{name}/ca.pem"));
        wait_until(&format!("{name} to trust both CAs"), RUN_TIMEOUT, || {
            let n = cas_in(&ca);
            async move { (n == 2).then_some(()) }
        })
        .await;
    }
    // Retiring before activating is refused.
    let out = cluster.ctl_as(&controller, &cluster.local_admin_tls(), &["ca", "retire"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("there is no previous CA to retire (the rotation is prepared)")
    );

    // Activate: the new CA signs; the controller's certificate is made again under it; agents renew at once.
    let activated = ctl_json(&cluster, &controller, &["ca", "activate"]);
    assert_eq!(activated["phase"], "activated");
    assert_eq!(
        (activated["signing"]["fingerprint"].as_str(), activated["previous"]["fingerprint"].as_str()),
        (Some(new_ca.as_str()), Some(old_ca.as_str()))
    );
    assert_ne!(std::fs::read(trust.join("controller.pem")).unwrap(), old_server);
    let on_new = wait_until("both agents to hold a certificate from the new CA", RUN_TIMEOUT, || {
        let status = ctl_json(&cluster, &controller, &["ca", "status"]);
        async move {
            let agents = status["agents"].as_array().unwrap().clone();
            (agents.len() == 2 && agents.iter().all(|a| a["onSigningCa"] == true)).then_some(agents)
        }
    })
    .await;
    assert!(on_new.iter().all(|a| a["caFingerprint"] == new_ca.as_str()), "{on_new:?}");

    // Retire: only the new CA is trusted; the agents are sent that too.
    let retired = ctl_json(&cluster, &controller, &["ca", "retire"]);
    assert_eq!(retired["phase"], "steady");
    assert_eq!(retired["signing"]["fingerprint"], new_ca.as_str());
    assert!(retired["previous"].is_null());
    assert_eq!(cas_in(&trust.join("ca.pem")), 1);
    for name in ["w-1", "w-2"] {
        let ca = cluster.path(&format!("state-{name}/ca.pem"));
        wait_until(&format!("{name} to trust the new CA alone"), RUN_TIMEOUT, || {
            let n = cas_in(&ca);
            async move { (n == 1).then_some(()) }
        })
        .await;
    }

    // The runs went on through it all and succeed on their first attempt.
    long1.release();
    long2.release();
    for id in ["long-1", "long-2"] {
        let task = wait_terminal(&admin, id).await;
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{id}");
        assert_eq!(task.attempts, 1, "{id}");
    }
    assert_eq!(joins(&cluster, &controller), 3, "no agent joined again with the token");

    // A restarted controller serves the new CA alone; the agents come back on their new certificates, no token.
    controller.proc.kill();
    controller = cluster.controller("outpost.db").own_trust().args(&flags).start().await;
    admin = admin_client(&controller, &cluster.local_admin_tls()).await;
    wait_workers(&admin, 2).await;
    submit(&mut admin, "after-rotation", file_recipe()).await;
    assert_eq!(wait_terminal(&admin, "after-rotation").await.state, pb::TaskState::Succeeded as i32);
    assert_eq!(joins(&cluster, &controller), 3);

    // The agent that was away all along trusts only the old CA: refused, saying it needs a token; with one it joins.
    let mut back = agent("w-away", None);
    let status = back.wait_exit(RUN_TIMEOUT).await;
    assert_eq!(status.code(), Some(1));
    assert!(back.log().contains("The agent needs a join token again"), "{}", back.log());
    let _back = agent("w-away", Some(TOKEN));
    wait_workers(&admin, 3).await;
    assert_eq!(joins(&cluster, &controller), 4);

    // Each phase is in the audit trail.
    let audit = ctl_json(&cluster, &controller, &["audit"]);
    let phases: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().ends_with("Ca"))
        .map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        phases,
        [("RetireCa", "done"), ("ActivateCa", "done"), ("RetireCa", "failed"), ("RotateCa", "done")],
        "newest first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_ca_signs_by_itself_once_the_overlap_is_up() {
    let cluster = Cluster::new(bins!());
    let flags = ["--ca-overlap", "1s", "--ca-check-interval", "100ms"];
    let controller = cluster.controller("outpost.db").own_trust().args(&flags).start().await;
    let prepared = ctl_json(&cluster, &controller, &["ca", "rotate"]);
    let next = prepared["next"]["fingerprint"].as_str().unwrap().to_owned();
    wait_until("the overlap to activate the new CA", RUN_TIMEOUT, || {
        let status = ctl_json(&cluster, &controller, &["ca", "status"]);
        async move { (status["phase"] == "activated").then_some(()) }
    })
    .await;
    let status = ctl_json(&cluster, &controller, &["ca", "status"]);
    assert_eq!(status["signing"]["fingerprint"], next.as_str());
    let audit = ctl_json(&cluster, &controller, &["audit", "--action", "ActivateCa"]);
    assert_eq!(audit[0]["actor"], "controller");
    assert_eq!(audit[0]["via"], "controller");
    assert_eq!(audit[0]["reason"], "--ca-overlap 1s is up");
}
