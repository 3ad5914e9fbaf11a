//! Pinned-version runs: a file → blackhole recipe pinning the acryl-datahub version the suite uses, through
//! Outpost (the first run builds the venv on the agent, the next ones find it) and through DataHub's own executor
//! engine (which builds the venv in each run's temporary directory). Both build with uv from the same uv cache.
//! The version is 1.7.0.12, not the suite's 1.7.0.17: DataHub's engine installs under the constraints.txt inside
//! acryl-datahub, which pins every dependency exactly, and the newer releases pin versions the package index here
//! does not serve (pip 26.2.2 for 1.7.0.17, certifi 2026.10.19 for 1.7.0.16), so the engine cannot build them.

use std::process::Command;
use std::time::Duration;

use outpost_common::pb;

use crate::harness::{ControllerProcess, agent_process_with, percentile_ms, repo_root};

const VERSION: &str = "1.7.0.12";

pub async fn pinned(runs: usize) -> anyhow::Result<()> {
    let root = repo_root()?;
    let sample = root.join("examples/sample_mcps.json");
    let venvs = tempfile::tempdir()?;
    let path = format!("{}:{}", root.join(".venv/bin").display(), std::env::var("PATH").unwrap_or_default());
    let controller = ControllerProcess::start(&[])?;
    let extra = [
        "--venv-root".to_owned(),
        venvs.path().to_string_lossy().into_owned(),
        "--venv-python".to_owned(),
        root.join(".venv/bin/python").to_string_lossy().into_owned(),
    ];
    let _agent =
        agent_process_with(&controller, "bench-agent", "default", 1, &extra, &[("PATH".into(), path.clone())])?;
    let mut admin = controller.admin().await?;
    let recipe =
        serde_json::json!({"source": {"type": "file", "config": {"path": sample}}, "sink": {"type": "blackhole"}})
            .to_string();
    let mut times = Vec::new();
    for i in 0..=runs {
        let id = format!("pinned-{i}");
        let submitted_ms = outpost_common::clock::unix_ms();
        admin
            .submit_task(pb::SubmitTaskRequest {
                task: "RUN_INGEST".into(),
                args: [("recipe".to_owned(), recipe.clone()), ("version".to_owned(), VERSION.to_owned())].into(),
                pool: "default".into(),
                execution_request_id: id.clone(),
                source_type: String::new(),
            })
            .await?;
        let finished_ms = loop {
            let task = admin.get_task(pb::GetTaskRequest { id: id.clone() }).await?.into_inner();
            if let Some(result) = task.result {
                anyhow::ensure!(task.state == pb::TaskState::Succeeded as i32, "{id} failed: {}", result.report);
                break result.finished_unix_ms;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let took = Duration::from_millis((finished_ms - submitted_ms).max(0) as u64);
        eprintln!("outpost run {i} ({}): {took:?}", if i == 0 { "cold" } else { "warm" });
        times.push(took);
    }
    let cold = times.remove(0);
    times.sort();
    let warm = percentile_ms(&times, 50.0);
    // DataHub's executor engine, the same pinned recipe, a venv built per run: with the uv cache warm (as on a
    // long-lived executor), and with no usable uv cache (a fresh container, or a read-only root filesystem).
    let mut engine_ms = Vec::new();
    for (label, no_cache) in [("uv cache warm", false), ("no uv cache", true)] {
        let mut command = Command::new(root.join(".venv/bin/python"));
        command
            .arg(root.join("bench/datahub_executor_run.py"))
            .arg(&sample)
            .arg(runs.to_string())
            .arg(VERSION)
            .env("PATH", &path)
            .env("DATAHUB_TELEMETRY_ENABLED", "false");
        if no_cache {
            command.env("UV_NO_CACHE", "1");
        }
        let engine = command.output()?;
        anyhow::ensure!(
            engine.status.success(),
            "DataHub's executor run failed: {}",
            String::from_utf8_lossy(&engine.stderr)
        );
        for line in String::from_utf8_lossy(&engine.stderr).lines().filter(|l| l.starts_with("run ")) {
            eprintln!("DataHub executor ({label}) {line}");
        }
        // The summary is the JSON line (the engine may log to stdout as well).
        let stdout = String::from_utf8_lossy(&engine.stdout);
        let summary = stdout.lines().rev().find(|l| l.starts_with("{\"runs\"")).unwrap_or("{}");
        let engine: serde_json::Value = serde_json::from_str(summary)?;
        engine_ms.push((label, engine["median_s"].as_f64().unwrap_or_default() * 1000.0));
    }
    let engines: Vec<String> = engine_ms
        .iter()
        .map(|(label, d)| format!("{label}: median {d:.0} ms, warm Outpost / DataHub = {:.2}", warm / d))
        .collect();
    println!(
        "pinned {VERSION} file -> blackhole, {runs} runs: Outpost cold (venv built, uv cache warm) {:.0} ms, warm median \
         {warm:.0} ms; DataHub's executor engine (venv built per run) {}",
        cold.as_secs_f64() * 1000.0,
        engines.join("; ")
    );
    Ok(())
}
