//! A seeded nemesis: execution requests flow in over SQS (moto, with duplicate deliveries) and are found in GMS
//! itself (the GMS channel), each claimed at GMS, while a schedule of faults drawn from the seed hits the fleet —
//! connection resets through fault proxies (agent↔controller, controller↔GMS), partitions from GMS and from SQS,
//! GMS 5xx and slow answers, agents SIGKILLed and restarted, the controller crashing at a crash point of the test
//! build or killed and restarted on its file, a KILL signal now and then — and then the whole history is checked
//! (`outpost_integration_tests::history`): one final result per request at GMS and nothing changed after it, no SQS
//! delete before its result was accepted, no stale epoch changing a task; plus no CLI process left behind and no
//! secret in any log. The seed is printed on failure; `NEMESIS_SEED=N` replays one.

use std::time::{Duration, Instant};

use outpost_common::pb;
use outpost_integration_tests::history::{self, History, Recorded, ResultWrite};
use outpost_integration_tests::*;

const CRASH_POINTS: [&str; 5] = [
    "crash::after_sqs_receive",
    "crash::after_grant_commit",
    "crash::after_result_commit",
    "crash::after_gms_write",
    "crash::before_sqs_delete",
];
const TOKEN: &str = "nemesis-gms-token-do-not-log";

fn seed(default: u64) -> u64 {
    std::env::var("NEMESIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

async fn result_writes(gms: &Gms) -> Vec<ResultWrite> {
    gms.requests()
        .await
        .into_iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.contains("/aspects?action=ingestProposal")))
        .flat_map(|r| {
            let body: serde_json::Value =
                r["body"].as_str().and_then(|b| serde_json::from_str(b).ok()).unwrap_or_default();
            // A single write, or each write of a batch.
            let proposals = body["proposals"].as_array().cloned().unwrap_or_else(|| vec![body["proposal"].clone()]);
            proposals
                .into_iter()
                .filter_map(|proposal| {
                    let urn = proposal["entityUrn"].as_str()?;
                    let aspect: serde_json::Value = serde_json::from_str(proposal["aspect"]["value"].as_str()?).ok()?;
                    Some(ResultWrite {
                        task: urn.rsplit(':').next()?.to_owned(),
                        status: aspect["status"].as_str()?.to_owned(),
                        http: r["status"].as_u64()? as u16,
                        answered_ms: r["done_ms"].as_i64()?,
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn nemesis(seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let gms = cluster.gms(&["--index-lag-ms", "300"]).await;
    gms.accept_token(Some(TOKEN)).await;
    gms.serve_version("v1.2.0").await; // conditional writes: every request is claimed at GMS
    let queue = moto.queue(&format!("nemesis-{seed}")).await;
    // The controller reaches GMS and SQS through fault proxies too.
    // SQS calls are recorded behind the fault proxy: the deletes that reached SQS, and when.
    let sqs_calls = SqsRecorder::before(&moto.endpoint).await;
    let (gms_proxy, sqs_proxy) = (Proxy::before(&gms.base).await, Proxy::before(&sqs_calls.http_url()).await);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut owned = moto.bridge_flags("default", &queue, "3s");
    let endpoint = owned.iter().position(|f| f == "--sqs-endpoint").unwrap() + 1;
    owned[endpoint] = sqs_proxy.http_url();
    owned.extend(["--listen", &listen, "--gms-url", &gms_proxy.http_url(), "--gms-token", TOKEN].map(String::from));
    let mut flags = vec!["--heartbeat-interval", "300ms", "--lease-ttl", "3s", "--sweep-interval", "100ms"];
    flags.extend(owned.iter().map(String::as_str));
    flags.extend(["--gms-retry-backoff", "100ms", "--gms-retry-backoff-max", "500ms", "--progress-interval", "500ms"]);
    flags.extend(["--signal-poll-interval", "500ms", "--retry-backoff", "200ms"]);
    // Open-source DataHub's way in as well: requests of the pool `oss` are found in GMS itself.
    flags.extend(["--gms-channel", "oss", "--gms-poll-interval", "200ms", "--gms-takeover-interval", "500ms"]);
    flags.extend(["--claim-ttl", "3s", "--log-tails-sweep-interval", "500ms"]);
    let crash = CRASH_POINTS[rng.usize(..CRASH_POINTS.len())];
    let failpoints = format!("{crash}=1*return");
    eprintln!("nemesis seed {seed}: crash point {crash}");
    let mut controller =
        cluster.controller("outpost.db").args(&flags).env(&[("FAILPOINTS", failpoints.as_str())]).start().await;
    let proxy = Proxy::start(controller.addr).await;
    const WORKERS: [(&str, &str); 3] = [("w-1", "default"), ("w-2", "default"), ("w-3", "oss")];
    let agent = |n: usize| {
        let (worker, pool) = WORKERS[n];
        cluster.agent(worker).pool(pool).slots(2).start_at(&proxy.url())
    };
    let mut agents = [agent(0), agent(1), agent(2)];

    let sqs_ids: Vec<String> = (0..8).map(|i| format!("nem-{seed}-{i}")).collect();
    let killed = &sqs_ids[rng.usize(..sqs_ids.len())];
    // The run the KILL signal is for holds until it is killed (or, if the faults never let it report RUNNING,
    // until it is released after them).
    let held = cluster.held_run("killed");
    for id in &sqs_ids {
        let recipe = if id == killed { held.recipe() } else { file_recipe() };
        let body = messages::mcl_input(id, &messages::input(&recipe, "default"));
        moto.send(&queue, &body).await;
        if rng.bool() {
            moto.send(&queue, &body).await; // a duplicate delivery
        }
    }
    let gms_ids: Vec<String> = (0..4).map(|i| format!("nem-{seed}-oss-{i}")).collect();
    for id in &gms_ids {
        let urn = format!("urn:li:dataHubExecutionRequest:{id}");
        gms.create_request(&urn, messages::input(&file_recipe(), "oss")).await;
    }
    let ids: Vec<String> = sqs_ids.iter().chain(&gms_ids).cloned().collect();

    let urns: Vec<String> = ids.iter().map(|id| format!("urn:li:dataHubExecutionRequest:{id}")).collect();
    let mut signalled = false;
    let mut faults = Vec::new();
    let started = Instant::now();
    for _ in 0..8 {
        // Each fault waits for the fleet to make some progress at GMS first (or a few seconds).
        let before = gms.requests().await.len();
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while gms.requests().await.len() <= before + 2 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if !signalled && gms.results().await.get(&format!("urn:li:dataHubExecutionRequest:{killed}")).is_some() {
            gms.signal(&format!("urn:li:dataHubExecutionRequest:{killed}")).await;
            signalled = true;
            faults.push("KILL signal".to_owned());
        }
        let fault = rng.usize(..9);
        match fault {
            0 => proxy.reset(),
            1 => gms.fail(503, 3, "aspects").await,
            2 => gms.delay_matching(Duration::from_millis(1500), 2, "").await,
            3 => {
                let n = rng.usize(..agents.len());
                cluster.kill_cli_processes(WORKERS[n].0);
                agents[n].kill();
                agents[n] = agent(n);
            }
            4 => {
                controller.proc.kill();
                controller = cluster.controller("outpost.db").args(&flags).start().await;
            }
            5 => {
                // Frozen past its lease: the controller gives its work away; then it wakes up with stale epochs.
                let n = rng.usize(..agents.len());
                agents[n].signal(libc::SIGSTOP);
                let worker = WORKERS[n].0;
                // (A controller that just crashed at its crash point has no admin API: then the agent thaws at once.)
                let admin = channel(&controller.url(), &cluster.admin_tls()).await;
                let _ = tokio::time::timeout(Duration::from_secs(15), async {
                    let Ok(channel) = admin else { return };
                    let mut admin = pb::admin_service_client::AdminServiceClient::new(channel);
                    loop {
                        let workers = admin.list_workers(pb::ListWorkersRequest {}).await.map(|r| r.into_inner());
                        let gone = workers.is_ok_and(|w| {
                            w.workers.iter().any(|w| w.worker_id == worker && w.state != pb::WorkerState::Ready as i32)
                        });
                        if gone {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
                .await;
                agents[n].signal(libc::SIGCONT);
            }
            6 => gms_proxy.reset(),
            // Partitions: the fault lasts a fixed time (it is the fault, not a wait for something).
            7 => {
                gms_proxy.partition(true);
                tokio::time::sleep(Duration::from_secs(2)).await;
                gms_proxy.partition(false);
            }
            _ => {
                sqs_proxy.partition(true);
                tokio::time::sleep(Duration::from_secs(2)).await;
                sqs_proxy.partition(false);
            }
        }
        faults.push(
            [
                "reset",
                "gms 503",
                "gms slow",
                "agent killed",
                "controller killed",
                "agent frozen past its lease",
                "gms connections reset",
                "gms partitioned 2s",
                "sqs partitioned 2s",
            ][fault]
                .to_owned(),
        );
        if controller.proc.exited() {
            faults.push(format!("controller crashed at {crash}"));
            controller = cluster.controller("outpost.db").args(&flags).start().await;
        }
    }
    gms.heal().await;
    if !signalled {
        held.release();
    }
    eprintln!("nemesis seed {seed}: faults {faults:?} in {:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if controller.proc.exited() {
            controller = cluster.controller("outpost.db").args(&flags).start().await;
        }
        let results = gms.results().await;
        let done = urns.iter().all(|u| {
            results.get(u).is_some_and(|r| !matches!(r["status"].as_str(), Some("RUNNING") | Some("PENDING")))
        });
        if done && moto.counts(&queue).await == (0, 0) {
            break;
        }
        assert!(Instant::now() < deadline, "seed {seed}: requests unfinished after the faults {faults:?}: {results:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut admin = cluster.admin(&controller).await;
    let mut recorded = Vec::new();
    for id in &ids {
        let task = admin.get_task(pb::GetTaskRequest { id: id.clone() }).await.unwrap().into_inner();
        recorded.push(Recorded {
            task: id.clone(),
            state: pb::TaskState::try_from(task.state).map(|s| s.as_str_name().to_owned()).unwrap_or_default(),
            epoch: task.epoch,
            attempts: task.attempt_history.iter().map(|a| (a.epoch, a.state.clone())).collect(),
        });
    }
    let deletes = sqs_calls.deletes(messages::request_id);
    let history = History { sent: ids.clone(), writes: result_writes(&gms).await, deletes, recorded };
    // Every SQS request's message was deleted through the keeper, after its result.
    for id in &sqs_ids {
        assert!(history.deletes.iter().any(|d| d.task == *id), "seed {seed}: no delete of {id} reached SQS");
    }
    let violations = history::check(&history);
    assert!(violations.is_empty(), "seed {seed} (replay: NEMESIS_SEED={seed}), faults {faults:?}: {violations:#?}");
    for (worker, _) in WORKERS {
        assert_eq!(cluster.cli_processes(worker), [], "seed {seed}: a CLI process of {worker} was left behind");
    }
    for entry in std::fs::read_dir(cluster.path("")).unwrap().flatten() {
        let text = std::fs::read(entry.path()).unwrap_or_default();
        assert!(
            !text.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "seed {seed}: the GMS token reached {:?}",
            entry.path()
        );
    }
}

/// The checker catches a real broken build: with `bug::delete_early` the keeper deletes SQS messages while their
/// runs go on, and the history shows deletes that started before GMS accepted the results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_checker_catches_a_build_that_deletes_messages_early() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let gms = cluster.gms(&[]).await;
    let queue = moto.queue("broken-build").await;
    let id = "early-delete";
    let run = cluster.held_run(id);
    moto.send(&queue, &messages::mcl_input(id, &messages::input(&run.recipe(), "default"))).await;
    let sqs_calls = SqsRecorder::before(&moto.endpoint).await;
    let mut owned = moto.bridge_flags("default", &queue, "3s");
    let endpoint = owned.iter().position(|f| f == "--sqs-endpoint").unwrap() + 1;
    owned[endpoint] = sqs_calls.http_url();
    owned.extend(["--gms-url", &gms.base].map(String::from));
    let flags: Vec<&str> = owned.iter().map(String::as_str).collect();
    let controller =
        cluster.controller("outpost.db").args(&flags).env(&[("FAILPOINTS", "bug::delete_early=return")]).start().await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    run.wait_started(1).await;
    // The broken keeper deletes at its first keep-alive of the message (a third of the 3 s visibility timeout).
    wait_until("the broken build to delete the message while the run goes on", Duration::from_secs(30), || {
        let deleted = sqs_calls.deletes(messages::request_id).iter().any(|d| d.task == id);
        async move { deleted.then_some(()) }
    })
    .await;
    run.release();
    wait_task(&admin, id, "reported", |t| t.reported_unix_ms > 0).await;
    let history = History {
        sent: vec![id.into()],
        writes: result_writes(&gms).await,
        deletes: sqs_calls.deletes(messages::request_id),
        recorded: vec![],
    };
    let violations = history::check(&history);
    assert!(
        violations
            .iter()
            .any(|v| v.contains("its SQS message was being deleted at") && v.contains("before GMS accepted")),
        "the checker missed the early delete: {violations:?} in {history:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_seed_a() {
    nemesis(seed(20261201)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_seed_b() {
    nemesis(seed(424242)).await;
}
