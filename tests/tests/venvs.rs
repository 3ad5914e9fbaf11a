//! Pinned-version runs with the real installer (uv from PyPI, acryl-datahub of the version the suite already
//! uses, a shared uv cache so repeated builds take seconds): placement prefers the agent that holds a run's venv,
//! warm-up (`--warm` and `outpostctl venvs warm`) builds ahead of need, a disk budget evicts the least recently
//! used venv no run is using, and an unwritable venv root is refused at start.

use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

const VERSION: &str = "1.7.0.17";

type Admin = pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>;

/// An agent and where its metrics are served.
struct VenvAgent {
    proc: Proc,
    metrics: String,
}

/// An agent of pool `default` with its own venv root, building with uv.
fn venv_agent(cluster: &Cluster, controller: &Controller, worker: &str, slots: u32, extra: &[&str]) -> VenvAgent {
    let root = cluster.path(&format!("venvs-{worker}")).to_string_lossy().into_owned();
    let python = repo_root().join(".venv/bin/python").to_string_lossy().into_owned();
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut flags = vec!["--venv-root", &root, "--venv-python", &python, "--metrics-listen", &metrics];
    flags.extend(extra);
    let env = uv_installer_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proc = cluster.agent(worker).slots(slots).args(&flags).env(&env).start(controller);
    VenvAgent { proc, metrics }
}

async fn run_pinned(admin: &mut Admin, id: &str, extra: &[(&str, String)]) -> pb::Task {
    let mut args = vec![("recipe", file_recipe()), ("version", VERSION.to_owned())];
    args.extend(extra.iter().cloned());
    submit_args(admin, id, "RUN_INGEST", &args).await;
    let task = wait_terminal(admin, id).await;
    let report = &task.result.as_ref().unwrap().report;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{id}: {report}");
    task
}

fn report(task: &pb::Task) -> &str {
    &task.result.as_ref().unwrap().report
}

fn ran_on(task: &pb::Task) -> &str {
    &task.attempt_history.last().unwrap().worker_id
}

async fn workers(admin: &Admin) -> Vec<pb::Worker> {
    admin.clone().list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner().workers
}

/// Waits until `worker` says it holds exactly the venvs with these keys.
async fn wait_held(admin: &Admin, worker: &str, keys: &[&str]) -> Vec<pb::Venv> {
    // A build from the warmed cache takes seconds (2.3 s measured); the bound is a run's.
    wait_until(&format!("{worker} to hold {keys:?}"), RUN_TIMEOUT, || async {
        let found = workers(admin).await.into_iter().find(|w| w.worker_id == worker)?;
        let held: Vec<&str> = found.venvs.iter().map(|v| v.key.as_str()).collect();
        (held == keys).then_some(found.venvs)
    })
    .await
}

async fn builds(agents: &[&VenvAgent]) -> usize {
    let mut total = 0;
    for agent in agents {
        total += agent_venv_builds(&agent.metrics).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_pinned_run_lands_on_the_agent_that_built_its_venv_and_starts_without_building() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    // The builder has the fewest slots: placement by free slots alone would send the second run elsewhere.
    let builder = venv_agent(&cluster, &controller, "w-3", 1, &[]);
    wait_workers(&admin, 1).await;
    let first = run_pinned(&mut admin, "pinned-first", &[]).await;
    assert_eq!(ran_on(&first), "w-3");
    assert!(report(&first).contains("Setting up venv for plugin 'file'"), "{}", report(&first));
    let key = outpost_common::venv::VenvSpec::pinned(VERSION, "file").unwrap().key().to_string();
    let held = wait_held(&admin, "w-3", &[&key]).await;
    assert_eq!(held[0].requirement, format!("acryl-datahub[file]=={VERSION}"));
    assert!(held[0].bytes > 1_000_000, "a real venv: {} bytes", held[0].bytes);

    let roomy = [venv_agent(&cluster, &controller, "w-1", 4, &[]), venv_agent(&cluster, &controller, "w-2", 4, &[])];
    wait_workers(&admin, 3).await;
    let second = run_pinned(&mut admin, "pinned-second", &[]).await;
    assert_eq!(ran_on(&second), "w-3", "the agent holding the venv, over two with more free slots");
    assert!(report(&second).contains(&format!("Using the cached venv {key}")), "{}", report(&second));
    assert!(!report(&second).contains("Setting up venv"), "{}", report(&second));
    assert_eq!(builds(&[&builder, &roomy[0], &roomy[1]]).await, 1, "built once in the fleet");
    let explained =
        admin.explain_task(pb::ExplainTaskRequest { id: "pinned-second".into() }).await.unwrap().into_inner();
    assert_eq!(
        (explained.venv_key.as_str(), explained.warm_workers.as_slice()),
        (key.as_str(), &["w-3".to_owned()][..])
    );
    for w in workers(&admin).await.iter().filter(|w| w.worker_id != "w-3") {
        assert!(w.venvs.is_empty(), "{} holds {:?}", w.worker_id, w.venvs);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_builds_ahead_of_need_and_the_first_run_starts_warm() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let key = outpost_common::venv::VenvSpec::pinned(VERSION, "file").unwrap().key().to_string();
    let warm_flag = format!("{VERSION}:file");
    let warmed = venv_agent(&cluster, &controller, "w-1", 1, &["--warm", &warm_flag]);
    let cold = venv_agent(&cluster, &controller, "w-2", 4, &[]);
    wait_held(&admin, "w-1", &[&key]).await;
    let first = run_pinned(&mut admin, "first-run", &[]).await;
    assert_eq!(ran_on(&first), "w-1");
    assert!(report(&first).contains(&format!("Using the cached venv {key}")), "{}", report(&first));

    // Asked through the admin API, the agent that lacks it builds it; the one holding it is not asked.
    let out =
        cluster.ctl(&controller, &["venvs", "warm", "--pool", "default", "--version", VERSION, "--plugin", "file"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.trim(), format!("venv {key}: asked w-2 to build it"));
    wait_held(&admin, "w-2", &[&key]).await;
    let listed = cluster.ctl(&controller, &["venvs", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["workerId"].as_str().unwrap(), v["key"].as_str().unwrap()))
        .collect();
    assert_eq!(rows, [("w-1", key.as_str()), ("w-2", key.as_str())]);
    assert_eq!(builds(&[&warmed, &cold]).await, 2, "one build on each agent, none in the run");
    // Everyone holds it now: nobody is asked again.
    let out =
        cluster.ctl(&controller, &["venvs", "warm", "--pool", "default", "--version", VERSION, "--plugin", "file"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no agent asked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_budget_evicts_the_older_unused_venv_and_never_the_one_in_use() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let mut agent = venv_agent(&cluster, &controller, "w-1", 1, &[]);
    wait_workers(&admin, 1).await;
    run_pinned(&mut admin, "older", &[]).await;
    let older_key = outpost_common::venv::VenvSpec::pinned(VERSION, "file").unwrap().key().to_string();
    let held = wait_held(&admin, "w-1", &[&older_key]).await;
    // A budget of half a venv: after the next build the older one must go, and the new one (in use) must stay.
    agent.proc.kill();
    let budget = (held[0].bytes / 2).to_string();
    let _agent = venv_agent(&cluster, &controller, "w-1", 1, &["--venv-max-bytes", &budget]);
    wait_workers(&admin, 1).await;
    // Another venv of the same version: one more requirement (already among acryl-datahub's dependencies).
    let newer = run_pinned(&mut admin, "newer", &[("extra_pip_requirements", r#"["six"]"#.to_owned())]).await;
    assert!(
        report(&newer).contains(&format!("Deleted the least recently used venv {older_key}")),
        "{}",
        report(&newer)
    );
    let venvs = cluster.path("venvs-w-1");
    let left: Vec<String> =
        std::fs::read_dir(&venvs).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0], older_key);
    wait_held(&admin, "w-1", &[&left[0]]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_venv_root_it_cannot_write_refuses_to_start() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut agent = cluster.agent("w-1").args(&["--venv-root", "/proc/outpost-venvs"]).start(&controller);
    let status = agent.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    assert!(agent.log().contains("the venv root /proc/outpost-venvs cannot be written"), "{}", agent.log());
}
