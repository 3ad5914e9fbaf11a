//! The agent runs recipes as DataHub's executor does: secrets from Secrets Manager (moto), files and the
//! environment, masked everywhere; TEST_CONNECTION; per-version venvs built once; memory limits, deadlines, and
//! drain hand-back.

use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

fn secret_recipe() -> String {
    serde_json::json!({"source": {"type": "file", "config": {"path": "${INPUT_PATH}"}}, "sink": {"type": "blackhole"}})
        .to_string()
}

fn records_written(task: &pb::Task) -> u64 {
    let structured: serde_json::Value = serde_json::from_str(&task.result.as_ref().unwrap().structured_report).unwrap();
    structured["sink"]["report"]["total_records_written"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_from_secrets_manager_is_used_rotated_and_never_leaks() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let first = cluster.path("secret-input-7f3a9c.json");
    let rotated = cluster.path("rotated-input-2b8e41.json");
    write_mcps(&first, 4);
    write_mcps(&rotated, 2);
    let first_value = first.to_string_lossy().into_owned();
    let rotated_value = rotated.to_string_lossy().into_owned();
    moto.secrets.create_secret().name("outpost/input-path").secret_string(&first_value).send().await.unwrap();

    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let agent = cluster
        .agent("w-1")
        .args(&[
            "--secret",
            "INPUT_PATH=outpost/input-path",
            "--secrets-manager-endpoint",
            &moto.endpoint,
            "--secret-cache-ttl",
            "0s",
        ])
        .start(&controller);
    submit_args(&mut admin, "with-secret", "RUN_INGEST", &[("recipe", secret_recipe()), ("debug_mode", "true".into())])
        .await;
    let task = wait_terminal(&admin, "with-secret").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{:?}", task.result);
    assert_eq!(records_written(&task), 4);
    let report = &task.result.as_ref().unwrap().report;
    assert!(report.contains("***REDACTED:INPUT_PATH***"), "the value was in the output, masked: {report}");

    // Rotated in Secrets Manager: the next run uses the new value, no restart.
    moto.secrets.put_secret_value().secret_id("outpost/input-path").secret_string(&rotated_value).send().await.unwrap();
    submit_args(&mut admin, "after-rotation", "RUN_INGEST", &[("recipe", secret_recipe())]).await;
    let rotated_task = wait_terminal(&admin, "after-rotation").await;
    assert_eq!(rotated_task.state, pb::TaskState::Succeeded as i32);
    assert_eq!(records_written(&rotated_task), 2);

    // The values appear nowhere: not in reports, logs, or the controller's database files.
    let reports: Vec<String> = [&task, &rotated_task]
        .iter()
        .flat_map(|t| {
            let r = t.result.as_ref().unwrap();
            [r.report.clone(), r.structured_report.clone()]
        })
        .collect();
    for value in [&first_value, &rotated_value] {
        assert!(reports.iter().all(|r| !r.contains(value.as_str())), "{value} leaked into a report");
        assert!(!agent.log().contains(value.as_str()), "{value} leaked into the agent's log");
        assert!(!controller.proc.log().contains(value.as_str()), "{value} leaked into the controller's log");
        for db in ["outpost.db", "outpost.db-wal", "outpost.db-shm"] {
            assert!(!file_contains(&cluster.path(db), value), "{value} leaked into {db}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_a_directory_and_the_environment_and_a_missing_one_named() {
    let cluster = Cluster::new(bins!());
    let secrets = cluster.path("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    let from_file = cluster.path("from-file-91c2.json");
    write_mcps(&from_file, 3);
    std::fs::write(secrets.join("INPUT_PATH"), format!("{}\n", from_file.display())).unwrap();
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let secrets_dir = secrets.to_string_lossy().into_owned();
    let file_agent = cluster.agent("w-files").args(&["--secrets-dir", &secrets_dir]).start(&controller);
    submit_args(&mut admin, "from-dir", "RUN_INGEST", &[("recipe", secret_recipe())]).await;
    let task = wait_terminal(&admin, "from-dir").await;
    assert_eq!((task.state, records_written(&task)), (pb::TaskState::Succeeded as i32, 3));
    drop(file_agent);
    wait_workers(&admin, 0).await;

    let from_env = cluster.path("from-env-55d0.json");
    write_mcps(&from_env, 1);
    let env_value = from_env.to_string_lossy().into_owned();
    let env_agent = cluster.agent("w-env").env(&[("INPUT_PATH", &env_value)]).start(&controller);
    submit_args(&mut admin, "from-env", "RUN_INGEST", &[("recipe", secret_recipe())]).await;
    let task = wait_terminal(&admin, "from-env").await;
    assert_eq!((task.state, records_written(&task)), (pb::TaskState::Succeeded as i32, 1));
    assert!(!task.result.as_ref().unwrap().report.contains(&env_value));

    let missing =
        serde_json::json!({"source": {"type": "file", "config": {"path": "${NOT_DEFINED_ANYWHERE}"}}}).to_string();
    submit_args(&mut admin, "missing", "RUN_INGEST", &[("recipe", missing)]).await;
    let task = wait_terminal(&admin, "missing").await;
    assert_eq!(task.state, pb::TaskState::Failed as i32);
    assert!(
        task.result.unwrap().report.contains(
            "Failed to resolve secrets: secret NOT_DEFINED_ANYWHERE could not be resolved: not in the environment, \
             the secrets directory or AWS Secrets Manager"
        ),
        "the report names the missing secret"
    );
    drop(env_agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_connection_of_a_good_and_a_bad_recipe() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").slots(2).start(&controller);
    let good = serde_json::json!({"source": {"type": "file", "config": {"path": repo_root().join("examples/sample_mcps.json")}}}).to_string();
    let bad = serde_json::json!({"source": {"type": "no-such-source", "config": {}}}).to_string();
    submit_args(&mut admin, "tc-good", "TEST_CONNECTION", &[("recipe", good)]).await;
    submit_args(&mut admin, "tc-bad", "TEST_CONNECTION", &[("recipe", bad)]).await;
    let good = wait_terminal(&admin, "tc-good").await;
    assert_eq!(good.state, pb::TaskState::Succeeded as i32);
    let result = good.result.unwrap();
    let structured: serde_json::Value = serde_json::from_str(&result.structured_report).unwrap();
    assert_eq!(structured["basic_connectivity"]["capable"], true);
    assert!(
        result.report.starts_with("~~~~ Execution Summary - TEST_CONNECTION ~~~~\nExecution finished successfully!\n")
    );
    assert!(result.report.contains("Successfully executed 'datahub test connection'"));
    let bad = wait_terminal(&admin, "tc-bad").await;
    assert_eq!(bad.state, pb::TaskState::Failed as i32);
    let report = bad.result.unwrap().report;
    assert!(report.contains("Failed to execute 'datahub test connection', exit code 1"), "{report}");
    assert!(report.contains("no-such-source"), "the CLI's error is in the report: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_stops_a_hungry_run_with_the_out_of_memory_message() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").start(&controller);
    let env = serde_json::json!({"EXECUTOR_TASK_MEMORY_LIMIT": "100000000"}).to_string();
    submit_args(&mut admin, "hungry", "RUN_INGEST", &[("recipe", file_recipe()), ("extra_env_vars", env)]).await;
    let task = wait_terminal(&admin, "hungry").await;
    assert_eq!(task.state, pb::TaskState::Failed as i32);
    let report = task.result.unwrap().report;
    assert!(report.contains("Limiting the run's memory to 100000000 bytes (EXECUTOR_TASK_MEMORY_LIMIT)"), "{report}");
    assert!(
        report.contains("The ingestion process ran out of memory (exit code 1): it hit its EXECUTOR_TASK_MEMORY_LIMIT of 100000000 bytes"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_deadline_ends_timed_out_and_its_group_is_gone() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").args(&["--task-timeout", "2s"]).start().await;
    let mut admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").args(&["--cancel-grace", "5s"]).start(&controller);
    // Never released: only the deadline ends it.
    let run = cluster.held_run("slow");
    submit(&mut admin, "slow", run.recipe()).await;
    let task = wait_terminal(&admin, "slow").await;
    assert_eq!(task.state, pb::TaskState::TimedOut as i32, "{task:?}");
    assert_eq!(task.attempt_history[0].state, "TIMED_OUT");
    assert!(task.result.unwrap().report.contains("The ingestion task ran past its deadline and was stopped"));
    assert_eq!(cluster.cli_processes("w-1"), [], "the run's process group is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_an_unfinished_run_back_and_it_reruns_at_once() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let mut leaving = cluster.agent("w-1").args(&["--drain-timeout", "1s"]).start(&controller);
    wait_workers(&admin, 1).await;
    let run = cluster.held_run("handed-back");
    submit(&mut admin, "handed-back", run.recipe()).await;
    run.wait_started(1).await;
    let _staying = cluster.agent("w-2").start(&controller);
    leaving.signal(libc::SIGTERM);
    let status = leaving.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    run.release();
    let task = wait_terminal(&admin, "handed-back").await;
    assert_eq!(task.state, pb::TaskState::Succeeded as i32);
    let (first, second) = (&task.attempt_history[0], &task.attempt_history[1]);
    assert_eq!((first.worker_id.as_str(), first.state.as_str()), ("w-1", "INTERRUPTED"));
    assert_eq!((second.worker_id.as_str(), second.state.as_str()), ("w-2", "SUCCEEDED"));
    // Re-queued at once (lease TTL is 30 s): no lease had to expire.
    assert!(second.assigned_unix_ms - first.ended_unix_ms < 5_000, "{first:?} {second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_version_builds_its_venv_once_for_two_concurrent_tasks() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;
    let venvs = cluster.path("venvs");
    let venv_root = venvs.to_string_lossy().into_owned();
    let python = repo_root().join(".venv/bin/python").to_string_lossy().into_owned();
    // uv with the tests' cache, which scripts/setup-python.sh --warm-venv-cache filled: no download in the test.
    let env = uv_installer_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = ["--venv-root", &venv_root, "--venv-python", &python, "--metrics-listen", &metrics];
    let _agent = cluster.agent("w-1").slots(2).args(&flags).env(&env).start(&controller);
    for id in ["pinned-1", "pinned-2"] {
        submit_args(&mut admin, id, "RUN_INGEST", &[("recipe", file_recipe()), ("version", "1.7.0.17".into())]).await;
    }
    for id in ["pinned-1", "pinned-2"] {
        let task = wait_terminal(&admin, id).await;
        let report = &task.result.as_ref().unwrap().report;
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{report}");
        assert!(report.contains(&venv_root), "ran from the venv: {report}");
    }
    assert_eq!(agent_venv_builds(&metrics).await, 1, "one build for both tasks");
    let built: Vec<_> = std::fs::read_dir(&venvs).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(built.len(), 1, "{built:?}");
    assert!(built[0].to_string_lossy().starts_with("file-"));
}
