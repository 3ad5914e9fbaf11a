//! Agent enrollment with real processes and real TLS: join tokens, trust from the token or a pin, certificates
//! renewed on the live stream, revocation that survives restarts, and no secret at rest or in a log.

use std::path::Path;
use std::time::{Duration, Instant};

use outpost_common::pb;
use outpost_integration_tests::*;

/// (The controller is dropped, and so stopped, before the cluster keeps a failed test's logs.)
struct Fleet {
    controller: Controller,
    cluster: Cluster,
    join_url: String,
    join_port: String,
}

async fn fleet(extra: &[&str]) -> Fleet {
    let cluster = Cluster::new(bins!());
    let join_port = free_port().to_string();
    let listen = format!("127.0.0.1:{join_port}");
    let ca_key = cluster.certs.join("ca.key");
    let mut flags = vec!["--join-listen", listen.as_str(), "--ca-key", ca_key.to_str().unwrap()];
    flags.extend(["--heartbeat-interval", "300ms", "--lease-ttl", "3s", "--sweep-interval", "100ms"]);
    flags.extend(extra);
    let controller = cluster.controller("outpost.db").args(&flags).start().await;
    Fleet { join_url: format!("https://127.0.0.1:{join_port}"), join_port, cluster, controller }
}

impl Fleet {
    /// `outpostctl --json tokens create --pool POOL ARGS`: (token, id).
    fn token(&self, pool: &str, args: &[&str]) -> (String, String) {
        let created = self.token_json(pool, args);
        (created["token"].as_str().unwrap().to_owned(), created["id"].as_str().unwrap().to_owned())
    }

    fn token_json(&self, pool: &str, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json", "tokens", "create", "--pool", pool];
        all.extend(args);
        let out = self.cluster.ctl(&self.controller, &all);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn agent(&self, name: &str, pool: &str, token: Option<&str>, extra: &[&str]) -> Proc {
        let state = self.cluster.path(&format!("state-{name}"));
        let mut args = vec!["--worker-id", name, "--join-url", self.join_url.as_str()];
        args.extend(extra);
        self.cluster.agent(name).pool(pool).joins(token, &state).args(&args).start(&self.controller)
    }

    fn state(&self, name: &str) -> std::path::PathBuf {
        self.cluster.path(&format!("state-{name}"))
    }
}

/// Waits for a refused agent to exit and returns its log.
async fn refused(agent: &mut Proc) -> String {
    let status = agent.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "the agent should have been refused");
    agent.log()
}

fn first_cert_der(pem_path: &Path) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(pem_path).unwrap();
    CertificateDer::pem_slice_iter(&pem).next().unwrap().unwrap().to_vec()
}

/// Every byte of the database files (main, WAL) and every log of the test.
fn everything_at_rest(cluster: &Cluster) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(cluster.path("")).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("outpost.db") || name.ends_with(".log") {
            bytes.extend(std::fs::read(entry.path()).unwrap_or_default());
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_only_a_token_joins_runs_a_recipe_and_tokens_are_spent_expire_and_are_revoked() {
    let fleet = fleet(&[]).await;
    let (token, token_id) = fleet.token("join-pool", &["--description", "first agent"]);
    let _joined = fleet.agent("joiner", "join-pool", Some(&token), &[]);
    let mut admin = fleet.cluster.admin(&fleet.controller).await;
    wait_workers(&admin, 1).await;
    submit_to(&mut admin, "joined-run", file_recipe(), "join-pool").await;
    let task = wait_terminal(&admin, "joined-run").await;
    assert_eq!((task.state, task.worker_id.as_str()), (pb::TaskState::Succeeded as i32, "joiner"));
    // Its certificate carries its identity; key and certificate are one private file in its state directory.
    let identity_file = fleet.state("joiner").join("agent.pem");
    let identity = outpost_common::identity::from_certificate("outpost", &first_cert_der(&identity_file)).unwrap();
    let joiner = outpost_common::ids::WorkerId::parse("joiner").unwrap();
    assert_eq!(identity, outpost_common::identity::Identity::Agent(joiner));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&identity_file).unwrap().permissions().mode() & 0o777, 0o600);

    // The single-use token is spent.
    let mut second = fleet.agent("second", "join-pool", Some(&token), &[]);
    let log = refused(&mut second).await;
    assert!(log.contains(&format!("join token {token_id} is used up")), "{log}");
    // An expired token, a revoked token, a token for another pool.
    let short_json = fleet.token_json("join-pool", &["--ttl", "1s"]);
    let (short, short_id) =
        (short_json["token"].as_str().unwrap().to_owned(), short_json["id"].as_str().unwrap().to_owned());
    let expires = short_json["expiresUnixMs"].as_i64().unwrap();
    wait_until("the short token to expire", Duration::from_secs(10), || async {
        (outpost_common::clock::unix_ms() > expires).then_some(())
    })
    .await;
    let mut late = fleet.agent("late", "join-pool", Some(&short), &[]);
    assert!(refused(&mut late).await.contains(&format!("join token {short_id} expired")));
    let (revoked, revoked_id) = fleet.token("join-pool", &[]);
    let out = fleet.cluster.ctl(&fleet.controller, &["tokens", "revoke", &revoked_id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut denied = fleet.agent("denied", "join-pool", Some(&revoked), &[]);
    assert!(refused(&mut denied).await.contains(&format!("join token {revoked_id} was revoked")));
    let (other_pool, _) = fleet.token("pool-b", &[]);
    let mut wrong = fleet.agent("wrong", "join-pool", Some(&other_pool), &[]);
    assert!(refused(&mut wrong).await.contains("the join token is for pool pool-b"));

    // The list shows who joined with what, never a secret.
    let out = fleet.cluster.ctl(&fleet.controller, &["--json", "tokens", "list"]);
    let tokens: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = tokens.as_array().unwrap().iter().find(|t| t["id"] == token_id.as_str()).unwrap();
    assert_eq!((first["usesLeft"].as_i64(), first["used"][0]["workerId"].as_str()), (Some(0), Some("joiner")));
    assert_eq!(first["description"], "first agent");

    // No token secret and no private key at rest or in any log.
    let key_pem = std::fs::read_to_string(&identity_file).unwrap();
    let key_body: String = key_pem.split("PRIVATE KEY-----").nth(1).unwrap().lines().nth(1).unwrap().to_owned();
    let rest = everything_at_rest(&fleet.cluster);
    for (secret, what) in [(&token[7..], "token secret"), (&short[7..], "token secret"), (key_body.as_str(), "key")] {
        assert!(!contains(&rest, secret), "a {what} reached SQLite or a log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_comes_from_the_token_or_a_pin_and_a_mismatch_is_refused_with_its_cause() {
    let fleet = fleet(&[]).await;
    let pin = outpost_common::join::ca_pin(&first_cert_der(&fleet.cluster.certs.join("ca.pem"))).unwrap();
    let (token, _) = fleet.token("p", &["--uses", "3"]);
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let mut pinned_wrong = fleet.agent("pinned-wrong", "p", Some(&token), &["--ca-pin", &wrong_pin]);
    let log = refused(&mut pinned_wrong).await;
    assert!(log.contains("the controller's CA does not match --ca-pin"), "{log}");
    // Another controller (same address book, its own tokens) does not know the token: nothing to trust.
    let other_port = free_port().to_string();
    let other_listen = format!("127.0.0.1:{other_port}");
    let ca_key = fleet.cluster.certs.join("ca.key");
    let other = fleet
        .cluster
        .controller("other.db")
        .args(&["--join-listen", &other_listen, "--ca-key", ca_key.to_str().unwrap()])
        .start()
        .await;
    let other_url = format!("https://127.0.0.1:{other_port}");
    let state = fleet.cluster.path("state-stranger");
    let mut stranger = fleet
        .cluster
        .agent("stranger")
        .pool("p")
        .joins(Some(&token), &state)
        .args(&["--join-url", &other_url])
        .start(&other);
    let log = refused(&mut stranger).await;
    assert!(log.contains("the join listener has no CA bundle for this token"), "{log}");

    let _pinned = fleet.agent("pinned", "p", Some(&token), &["--ca-pin", &pin]);
    let admin = fleet.cluster.admin(&fleet.controller).await;
    wait_workers(&admin, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_outlives_two_certificate_renewals_on_one_stream() {
    let fleet = fleet(&["--agent-cert-ttl", "20s"]).await;
    let (token, _) = fleet.token("renew-pool", &[]);
    let mut agent = fleet.agent("renewer", "renew-pool", Some(&token), &[]);
    let mut admin = fleet.cluster.admin(&fleet.controller).await;
    wait_workers(&admin, 1).await;
    let first = worker_json(&fleet, "renewer");
    let (first_expiry, connected_since) =
        (first["certExpiresUnixMs"].as_i64().unwrap(), first["connectedSinceUnixMs"].as_i64().unwrap());
    let run = fleet.cluster.held_run("long-run");
    submit_to(&mut admin, "long-run", run.recipe(), "renew-pool").await;
    run.wait_started(1).await;
    let started = Instant::now();
    // The run holds until two renewals went through its stream (two certificates issued after the first, as the
    // worker list shows them): each comes at about half of the 20 s certificate life (±10 %), so two take at most
    // 2 × 11 s; the rest is room for a loaded machine.
    let mut serials = vec![first["certSerial"].as_str().unwrap().to_owned()];
    wait_until("two certificate renewals during the run", Duration::from_secs(2 * 11 + 30), || {
        let serial = worker_json(&fleet, "renewer")["certSerial"].as_str().unwrap().to_owned();
        if !serials.contains(&serial) {
            serials.push(serial);
        }
        let renewed = serials.len() - 1;
        async move { (renewed >= 2).then_some(()) }
    })
    .await;
    assert_eq!(run.started(), 1, "still the first attempt");
    run.release();
    let task = wait_terminal(&admin, "long-run").await;
    eprintln!("run of {:?}, {} renewals", started.elapsed(), serials.len() - 1);
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{task:?}");
    assert!(task.attempts == 1, "one attempt: {task:?}");
    let now = worker_json(&fleet, "renewer");
    assert_eq!(now["connectedSinceUnixMs"].as_i64().unwrap(), connected_since, "the stream was never re-established");
    assert!(
        now["certExpiresUnixMs"].as_i64().unwrap() > first_expiry,
        "the worker list shows the current certificate's expiry"
    );
    assert!(!agent.exited(), "the same agent process throughout");
}

fn worker_json(fleet: &Fleet, worker: &str) -> serde_json::Value {
    let out = fleet.cluster.ctl(&fleet.controller, &["--json", "workers"]);
    let workers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    workers.as_array().unwrap().iter().find(|w| w["workerId"] == worker).cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_worker_is_cut_off_at_once_its_task_runs_elsewhere_and_it_stays_refused_after_a_restart() {
    let mut fleet = fleet(&[]).await;
    let (token, _) = fleet.token("default", &[]);
    let mut victim = fleet.agent("victim", "default", Some(&token), &[]);
    let mut admin = fleet.cluster.admin(&fleet.controller).await;
    wait_workers(&admin, 1).await;
    let run = fleet.cluster.held_run("moved");
    submit_to(&mut admin, "moved", run.recipe(), "default").await;
    run.wait_started(1).await;
    let _standby = fleet.cluster.agent("standby").start(&fleet.controller);
    wait_workers(&admin, 2).await;

    let revoked_at = Instant::now();
    let out = fleet.cluster.ctl(&fleet.controller, &["workers", "revoke", "victim", "--reason", "compromised host"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = refused(&mut victim).await;
    eprintln!("revoked -> the agent cut off and refused on reconnect: {:?}", revoked_at.elapsed());
    assert!(log.contains("worker victim is revoked"), "{log}");
    run.release();
    let task = wait_terminal(&admin, "moved").await;
    assert_eq!((task.state, task.worker_id.as_str(), task.attempts), (pb::TaskState::Succeeded as i32, "standby", 2));
    assert!(worker_json(&fleet, "victim")["revokedUnixMs"].as_i64().unwrap() > 0);

    // Still refused after a controller restart, with the certificate it still holds.
    fleet.controller.proc.kill();
    let addr = fleet.controller.addr.to_string();
    let listen = format!("127.0.0.1:{}", fleet.join_port);
    let ca_key = fleet.cluster.certs.join("ca.key");
    fleet.controller = fleet
        .cluster
        .controller("outpost.db")
        .args(&["--listen", &addr, "--join-listen", &listen, "--ca-key", ca_key.to_str().unwrap()])
        .start()
        .await;
    let mut again = fleet.agent("victim", "default", None, &[]);
    let log = refused(&mut again).await;
    assert!(log.contains("using the certificate from an earlier join"), "{log}");
    assert!(log.contains("worker victim is revoked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_key_can_come_from_aws_secrets_manager_and_a_token_binds_its_pool() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let key_pem = std::fs::read_to_string(cluster.certs.join("ca.key")).unwrap();
    let arn = moto.secrets.create_secret().name("outpost/ca-key").secret_string(&key_pem).send().await.unwrap();
    let arn = arn.arn.unwrap();
    let join_port = free_port().to_string();
    let listen = format!("127.0.0.1:{join_port}");
    let env = [("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.endpoint.as_str())];
    let controller =
        cluster.controller("outpost.db").args(&["--join-listen", &listen, "--ca-key", &arn]).env(&env).start().await;
    let fleet = Fleet { join_url: format!("https://127.0.0.1:{join_port}"), join_port, cluster, controller };
    let (token, _) = fleet.token("pool-a", &[]);
    let mut joined = fleet.agent("bound", "pool-a", Some(&token), &[]);
    let admin = fleet.cluster.admin(&fleet.controller).await;
    wait_workers(&admin, 1).await;
    assert!(!contains(&everything_at_rest(&fleet.cluster), key_pem.lines().nth(1).unwrap()), "the CA key leaked");
    // Restarted for another pool with the certificate it holds: the controller refuses the Hello.
    joined.kill();
    let mut elsewhere = fleet.agent("bound", "pool-b", None, &[]);
    let log = refused(&mut elsewhere).await;
    assert!(log.contains("worker bound joined with a token for pool pool-a and may serve only that pool"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_while_its_worker_may_join_again() {
    let fleet = fleet(&[]).await;
    let (token, _) = fleet.token("default", &["--uses", "2"]);
    let mut first = fleet.agent("serial-test", "default", Some(&token), &[]);
    let admin = fleet.cluster.admin(&fleet.controller).await;
    wait_workers(&admin, 1).await;
    let serial = worker_json(&fleet, "serial-test")["certSerial"].as_str().unwrap().to_owned();
    let der = first_cert_der(&fleet.state("serial-test").join("agent.pem"));
    assert_eq!(
        outpost_common::identity::serial_of(&der).as_deref(),
        Some(serial.as_str()),
        "the listed serial is the agent's"
    );
    let out = fleet.cluster.ctl(&fleet.controller, &["workers", "revoke", "--serial", &serial]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = refused(&mut first).await;
    assert!(log.contains(&format!("certificate {serial} is revoked")), "{log}");
    assert_eq!(worker_json(&fleet, "serial-test")["revokedUnixMs"].as_i64(), Some(0), "the worker is not revoked");
    // With its state wiped it joins again (a new key, a new certificate) and connects.
    std::fs::remove_dir_all(fleet.state("serial-test")).unwrap();
    let _again = fleet.agent("serial-test", "default", Some(&token), &[]);
    wait_until("the worker to connect with its new certificate", Duration::from_secs(30), || async {
        let worker = worker_json(&fleet, "serial-test");
        (worker["state"] == "READY" && worker["certSerial"].as_str() != Some(serial.as_str())).then_some(())
    })
    .await;
}
