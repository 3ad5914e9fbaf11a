//! The benchmarks. Each prints one result line; `bench/RESULTS.md` records them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use outpost_common::pb::{self, agent_message::Msg as Out, controller_message::Msg as In};
use tokio::task::JoinSet;

use crate::harness::{ControllerProcess, Session, noop, percentile_ms};

/// Task queued (SubmitTask sent) → Assign on an idle agent's stream, one task at a time.
pub async fn dispatch(tasks: usize) -> anyhow::Result<()> {
    let controller = ControllerProcess::start(&[])?;
    let mut admin = controller.admin().await?;
    let mut agent = Session::open(&controller, "idle", "bench", 1).await?;
    agent.send(Out::Credit(pb::Credit { credits: 1 })).await?;
    let mut latencies = Vec::with_capacity(tasks);
    for i in 0..tasks {
        let started = Instant::now();
        admin.submit_task(noop(format!("d{i}"), "bench")).await?;
        let assign = agent.next_assign().await?;
        latencies.push(started.elapsed());
        agent.complete_accepted(&assign.attempt).await?;
        agent.send(Out::Credit(pb::Credit { credits: 1 })).await?;
    }
    latencies.sort();
    let metrics = controller.metrics().await?;
    let internal_sum: f64 = metric(&metrics, "outpost_dispatch_latency_seconds_sum");
    let internal_count: f64 = metric(&metrics, "outpost_dispatch_latency_seconds_count");
    // The disk under the controller's database, in the same run: what one durable append costs here.
    let disk = append_fsync(controller.dir.path(), 1000)?;
    println!(
        "dispatch: {tasks} tasks, SubmitTask sent -> Assign received: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms; \
         controller-internal queued -> granted mean {:.3} ms; this disk's 4 KiB append + fdatasync median {:.3} ms",
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 90.0),
        percentile_ms(&latencies, 99.0),
        percentile_ms(&latencies, 100.0),
        internal_sum / internal_count.max(1.0) * 1000.0,
        disk,
    );
    Ok(())
}

/// The median time (ms) of `n` 4 KiB appends to a file in `dir`, each followed by `fdatasync`.
fn append_fsync(dir: &std::path::Path, n: usize) -> anyhow::Result<f64> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("fsync-probe"))?;
    let block = [7u8; 4096];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(percentile_ms(&times, 50.0))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// No-op tasks submitted by `submitters` concurrent clients, run by `agents` sessions with `slots` each; from the
/// first submit to the last result accepted (durable in SQLite), or with `gms` to the last SUCCESS write
/// received by a GMS stand-in. Prints, per task: controller CPU, SQL statements and commits (the writer's,
/// from `/metrics`), GMS HTTP requests; with `instructions`, instructions per task from two shorter runs under
/// callgrind (`perf stat` cannot count instructions on these VMs).
pub async fn throughput(
    tasks: usize,
    agents: usize,
    slots: u32,
    submitters: usize,
    gms: bool,
    real_agents: bool,
    instructions: bool,
) -> anyhow::Result<()> {
    let load = Load { tasks, agents, slots, submitters, gms, real_agents };
    let (controller, sink) = start(gms, &[]).await?;
    let run = drive(&controller, &load, sink.as_ref().map(|(_, counts)| counts.clone())).await?;
    let per_task = |n: f64| n / tasks as f64;
    println!(
        "throughput: {tasks} no-op tasks, {agents} {} x {slots} slots, {submitters} submitters{}: {:.2} s -> {:.0} tasks/s; \
         controller CPU {:.2} s ({:.0}% of one core), peak RSS {:.1} MiB",
        if real_agents { "outpost-agent processes" } else { "agent sessions" },
        match &sink {
            Some((_, counts)) =>
                format!(", reported to a GMS stand-in ({} writes)", counts.proposals.load(Ordering::Relaxed)),
            None => String::new(),
        },
        run.elapsed.as_secs_f64(),
        tasks as f64 / run.elapsed.as_secs_f64(),
        run.cpu,
        run.cpu / run.elapsed.as_secs_f64() * 100.0,
        run.peak_rss as f64 / 1048576.0
    );
    println!(
        "per task: controller CPU {:.0} us, SQL statements {:.2}, commits {:.3}, GMS HTTP requests {:.2}",
        per_task(run.cpu * 1e6),
        per_task(run.statements),
        per_task(run.commits),
        per_task(sink.as_ref().map_or(0, |(_, c)| c.requests.load(Ordering::Relaxed)) as f64),
    );
    if instructions {
        let per_task = instructions_per_task(&load).await?;
        println!("per task: {per_task:.0} instructions (callgrind, the difference of two shorter runs)");
    }
    Ok(())
}

/// A controller (under `wrapper`, if any), reporting to a GMS sink when `gms`.
async fn start(
    gms: bool,
    wrapper: &[String],
) -> anyhow::Result<(ControllerProcess, Option<(String, Arc<crate::gms_sink::Counts>)>)> {
    let sink = if gms { Some(crate::gms_sink::start().await?) } else { None };
    let flags: Vec<&str> = match &sink {
        Some((url, _)) => vec!["--gms-url", url.as_str()],
        None => Vec::new(),
    };
    Ok((ControllerProcess::start_wrapped(wrapper, &flags)?, sink))
}

/// What a load is.
struct Load {
    tasks: usize,
    agents: usize,
    slots: u32,
    submitters: usize,
    gms: bool,
    real_agents: bool,
}

/// What a run measured.
struct Run {
    elapsed: Duration,
    cpu: f64,
    peak_rss: u64,
    statements: f64,
    commits: f64,
}

/// Runs `load` against `controller` until every task finished (or reached the GMS sink).
async fn drive(
    controller: &ControllerProcess,
    load: &Load,
    reported: Option<Arc<crate::gms_sink::Counts>>,
) -> anyhow::Result<Run> {
    let Load { tasks, agents, slots, submitters, real_agents, .. } = *load;
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    let mut processes = Vec::new();
    if real_agents {
        for a in 0..agents {
            processes.push(crate::harness::agent_process(controller, &format!("t{a}"), "bench", slots)?);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(&controller.metrics().await?, "outpost_connected_agents") < agents as f64 {
            anyhow::ensure!(Instant::now() < deadline, "the agents did not all connect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for a in 0..if real_agents { 0 } else { agents } {
        let mut session = Session::open(controller, &format!("t{a}"), "bench", slots).await?;
        session.send(Out::Credit(pb::Credit { credits: slots })).await?;
        let done = done.clone();
        workers.spawn(async move {
            loop {
                match session.next().await? {
                    In::Assign(assign) => {
                        session.complete(&assign.attempt).await?;
                        // As the real agent does: the slot is free once the run ended and its result is sent.
                        session.send(Out::Credit(pb::Credit { credits: 1 })).await?;
                    }
                    In::ResultAccepted(_) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        });
    }
    let counts =
        |text: &str| (metric(text, "outpost_sqlite_statements_total"), metric(text, "outpost_sqlite_commits_total"));
    let written_before = counts(&controller.metrics().await?);
    let (cpu_before, _) = controller.usage();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut submits = JoinSet::new();
    for _ in 0..submitters {
        let mut admin = controller.admin().await?;
        let next = next.clone();
        submits.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= tasks {
                    break;
                }
                admin.submit_task(noop(format!("t{i}"), "bench")).await?;
            }
            anyhow::Ok(())
        });
    }
    let mut peak_rss = 0;
    loop {
        let finished = match &reported {
            Some(counts) => counts.succeeded.load(Ordering::Relaxed),
            None if real_agents => {
                metric(&controller.metrics().await?, "outpost_tasks{state=\"SUCCEEDED\",pool=\"bench\"}") as usize
            }
            None => done.load(Ordering::Relaxed),
        };
        if finished >= tasks {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        peak_rss = peak_rss.max(controller.usage().1);
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("only {finished} of {tasks} tasks finished in 30 minutes");
        }
    }
    let elapsed = started.elapsed();
    while let Some(r) = submits.join_next().await {
        r??;
    }
    let (cpu_after, _) = controller.usage();
    let written_after = counts(&controller.metrics().await?);
    workers.abort_all();
    drop(processes);
    Ok(Run {
        elapsed,
        cpu: cpu_after - cpu_before,
        peak_rss,
        statements: written_after.0 - written_before.0,
        commits: written_after.1 - written_before.1,
    })
}

/// Instructions the controller executes per task: two runs of the same load (fewer tasks) under callgrind, 200
/// and 600 tasks; their difference over 400 tasks leaves start-up and shutdown out.
async fn instructions_per_task(load: &Load) -> anyhow::Result<f64> {
    let mut totals = Vec::new();
    for tasks in [200, 600] {
        let out = tempfile::NamedTempFile::new()?;
        let wrapper = vec![
            "valgrind".to_owned(),
            "--tool=callgrind".to_owned(),
            format!("--callgrind-out-file={}", out.path().display()),
        ];
        let (mut controller, sink) = start(load.gms, &wrapper).await?;
        let short = Load { tasks, submitters: load.submitters.min(16), real_agents: false, ..*load };
        drive(&controller, &short, sink.as_ref().map(|(_, c)| c.clone())).await?;
        controller.stop()?;
        let text = std::fs::read_to_string(out.path())?;
        let total: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no instruction total in the callgrind output"))?;
        totals.push(total);
    }
    Ok((totals[1] - totals[0]) / 400.0)
}

/// `agents` idle sessions (each with its own certificate) on one controller: memory per agent, CPU while idle
/// (heartbeats every `heartbeat` and keepalives), and the time for all to reconnect after a controller restart.
pub async fn fleet(agents: usize, idle: Duration) -> anyhow::Result<()> {
    let flags = ["--heartbeat-interval", "5s", "--keepalive-interval", "15s"];
    let mut controller = ControllerProcess::start(&flags)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_before) = controller.usage();
    let connected = Instant::now();
    let mut beats = JoinSet::new();
    // 32 connects (each issuing a certificate first) at a time.
    let mut opening = futures::stream::iter(0..agents)
        .map(|a| {
            let controller = &controller;
            async move { Session::open(controller, &format!("f{a}"), "bench", 1).await }
        })
        .buffer_unordered(32);
    while let Some(session) = opening.next().await {
        beats.spawn(idle_agent(session?));
    }
    drop(opening);
    let connect_time = connected.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_before, rss_after) = controller.usage();
    tokio::time::sleep(idle).await;
    let (cpu_after, _) = controller.usage();
    let per_agent = (rss_after.saturating_sub(rss_before)) as f64 / agents as f64 / 1024.0;
    println!(
        "fleet: {agents} idle agents connected in {:.1} s; controller RSS {:.1} MiB -> {:.1} MiB ({per_agent:.1} KiB per agent); \
         idle CPU {:.1}% of one core over {} s (heartbeat 5 s, keepalive 15 s)",
        connect_time.as_secs_f64(),
        rss_before as f64 / 1048576.0,
        rss_after as f64 / 1048576.0,
        (cpu_after - cpu_before) / idle.as_secs_f64() * 100.0,
        idle.as_secs()
    );
    // Restart: every agent reconnects with full-jitter backoff (as the agent does, 200 ms .. 30 s).
    beats.abort_all();
    controller.restart(&flags)?;
    let restarted = Instant::now();
    let reconnected = Arc::new(AtomicUsize::new(0));
    let mut reconnects = JoinSet::new();
    let controller = Arc::new(controller);
    for a in 0..agents {
        let (controller, reconnected) = (controller.clone(), reconnected.clone());
        reconnects.spawn(async move {
            let mut ceiling = Duration::from_millis(200);
            loop {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=ceiling.as_millis() as u64))).await;
                if Session::open(&controller, &format!("f{a}"), "bench", 1).await.is_ok() {
                    reconnected.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                ceiling = (ceiling * 2).min(Duration::from_secs(30));
            }
        });
    }
    while reconnects.join_next().await.is_some() {}
    println!(
        "fleet: after a controller restart all {agents} agents reconnected in {:.1} s (jittered backoff)",
        restarted.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn idle_agent(session: Session) -> anyhow::Result<()> {
    let Session { outbound, mut inbound } = session;
    // Spread heartbeats over the interval like a real fleet.
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..5000))).await;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                outbound.send(crate::harness::message(Out::Heartbeat(pb::Heartbeat { attempts: vec![] }))).await?;
            }
            message = inbound.message() => {
                if message?.is_none() {
                    return Ok(());
                }
            }
        }
    }
}

/// An agent holding a task vanishes: time until its task is granted to another agent (`trials` times).
pub async fn detection(trials: usize, lease_ttl: &str) -> anyhow::Result<()> {
    let controller = ControllerProcess::start(&[
        "--lease-ttl",
        lease_ttl,
        "--heartbeat-interval",
        "1s",
        "--retry-backoff",
        "10ms",
        "--retry-backoff-max",
        "10ms",
    ])?;
    let mut admin = controller.admin().await?;
    let mut standby = Session::open(&controller, "standby", "bench", 1).await?;
    // The standby stays alive: it heartbeats every 500 ms.
    let beating = standby.outbound.clone();
    let heartbeat = tokio::spawn(async move {
        loop {
            let beat = crate::harness::message(Out::Heartbeat(pb::Heartbeat { attempts: vec![] }));
            if beating.send(beat).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut delays = Vec::new();
    for trial in 0..trials {
        let doomed = Session::open(&controller, &format!("doomed-{trial}"), "bench", 1).await?;
        doomed.send(Out::Credit(pb::Credit { credits: 1 })).await?;
        admin.submit_task(noop(format!("x{trial}"), "bench")).await?;
        let Session { outbound, mut inbound } = doomed;
        let assign = loop {
            if let Some(In::Assign(a)) = inbound.message().await?.and_then(|m| m.msg) {
                break a;
            }
        };
        outbound.send(crate::harness::message(Out::Ack(pb::Ack { attempt: assign.attempt.clone() }))).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The agent dies: its connection closes, nothing more is heard from it.
        drop((outbound, inbound));
        let died = Instant::now();
        standby.send(Out::Credit(pb::Credit { credits: 1 })).await?;
        let regrant = standby.next_assign().await?;
        delays.push(died.elapsed());
        standby.complete_accepted(&regrant.attempt).await?;
    }
    heartbeat.abort();
    delays.sort();
    println!(
        "detection: lease TTL {lease_ttl}, {trials} agents killed mid-run -> task granted again after p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        percentile_ms(&delays, 50.0),
        percentile_ms(&delays, 90.0),
        percentile_ms(&delays, 100.0)
    );
    Ok(())
}

/// The same file → blackhole recipe through Outpost (controller + a real agent + the GMS stand-in): SubmitTask →
/// SUCCESS at the stand-in, `runs` times; and the bare CLI for comparison.
pub async fn overhead(runs: usize) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};

    use crate::harness::{Guard, agent_process, http_get, repo_root};
    let root = repo_root()?;
    let python = root.join(".venv/bin/python");
    let datahub = root.join(".venv/bin/datahub");
    let sample = root.join("examples/sample_mcps.json");
    let dir = tempfile::tempdir()?;
    let port_file = dir.path().join("gms.port");
    let _gms = Guard(
        Command::new(&python)
            .arg(root.join("tests/gms_standin.py"))
            .arg("--port-file")
            .arg(&port_file)
            .stderr(Stdio::null())
            .spawn()?,
    );
    let port = loop {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            break port.trim().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gms = format!("127.0.0.1:{port}");
    let gms_url = format!("http://{gms}");
    let controller = ControllerProcess::start(&["--gms-url", &gms_url, "--progress-interval", "5s"])?;
    let _agent = agent_process(&controller, "bench-agent", "default", 1)?;
    let mut admin = controller.admin().await?;
    let recipe =
        serde_json::json!({"source": {"type": "file", "config": {"path": sample}}, "sink": {"type": "blackhole"}})
            .to_string();
    let mut outpost = Vec::new();
    let mut cli_under_agent = Vec::new();
    let mut bare = Vec::new();
    let recipe_file = dir.path().join("recipe.json");
    std::fs::write(&recipe_file, &recipe)?;
    // Outpost and the bare CLI take turns, so drift on the machine (caches, the CLI's version check) hits both.
    for i in 0..runs + 1 {
        let id = format!("overhead-{i}");
        let urn = format!("urn:li:dataHubExecutionRequest:{id}");
        let submitted_ms = outpost_common::clock::unix_ms();
        admin
            .submit_task(pb::SubmitTaskRequest {
                task: "RUN_INGEST".into(),
                args: [("recipe".to_owned(), recipe.clone())].into(),
                pool: "default".into(),
                execution_request_id: id,
                source_type: String::new(),
            })
            .await?;
        // Polled slowly (a busy poll of the Python stand-in would take CPU from the CLI); the time is the
        // stand-in's own record of when the SUCCESS write arrived.
        let run_ms = loop {
            let results: serde_json::Value = serde_json::from_str(&http_get(&gms, "/__control/results").await?)?;
            if results[&urn]["status"] == "SUCCESS" {
                // The agent's own measure of the CLI process, from spawn to exit.
                break results[&urn]["durationMs"].as_u64().unwrap_or_default();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let arrived_ms = success_arrival_ms(&http_get(&gms, "/__control/requests").await?, &urn)?;
        // The first run warms the agent's connection; it is not counted.
        if i == 0 {
            continue;
        }
        outpost.push(Duration::from_millis((arrived_ms - submitted_ms).max(0) as u64));
        cli_under_agent.push(Duration::from_millis(run_ms));
        let started = Instant::now();
        let status = Command::new(&datahub)
            .args(["ingest", "run", "-c"])
            .arg(&recipe_file)
            .env("DATAHUB_TELEMETRY_ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "the bare CLI failed");
        bare.push(started.elapsed());
    }
    outpost.sort();
    bare.sort();
    cli_under_agent.sort();
    // DataHub's own executor engine, same recipe, same runs (its MCPs are captured in process: no HTTP at all).
    let engine = Command::new(&python)
        .arg(root.join("bench/datahub_executor_run.py"))
        .arg(&sample)
        .arg(runs.to_string())
        .env("DATAHUB_TELEMETRY_ENABLED", "false")
        .stderr(Stdio::null())
        .output()?;
    anyhow::ensure!(engine.status.success(), "DataHub's executor run failed");
    let engine: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&engine.stdout).lines().last().unwrap_or("{}"))?;
    let d = engine["median_s"].as_f64().unwrap_or_default() * 1000.0;
    let (o, b, c) = (percentile_ms(&outpost, 50.0), percentile_ms(&bare, 50.0), percentile_ms(&cli_under_agent, 50.0));
    println!(
        "overhead: file -> blackhole, {runs} runs: Outpost SubmitTask -> SUCCESS at GMS median {o:.0} ms; bare CLI median {b:.0} ms; \
         Outpost overhead {:.0} ms (the CLI under the agent, spawn to exit: {c:.0} ms; everything else: {:.0} ms); \
         DataHub's executor engine dispatch -> SUCCESS median {d:.0} ms; Outpost / DataHub executor = {:.2}",
        o - b,
        o - c,
        o / d
    );
    Ok(())
}

/// When the stand-in received the SUCCESS result of `urn` (its `time_ms`, Unix ms).
fn success_arrival_ms(requests: &str, urn: &str) -> anyhow::Result<i64> {
    let requests: serde_json::Value = serde_json::from_str(requests)?;
    for request in requests.as_array().into_iter().flatten() {
        if !request["path"].as_str().is_some_and(|p| p.ends_with("ingestProposal")) || request["valid"] != true {
            continue;
        }
        let Ok(body) = serde_json::from_str::<serde_json::Value>(request["body"].as_str().unwrap_or_default()) else {
            continue;
        };
        let proposal = &body["proposal"];
        let aspect: serde_json::Value =
            serde_json::from_str(proposal["aspect"]["value"].as_str().unwrap_or("null")).unwrap_or_default();
        if proposal["entityUrn"] == urn && aspect["status"] == "SUCCESS" {
            return request["time_ms"].as_i64().ok_or_else(|| anyhow::anyhow!("a request without time_ms"));
        }
    }
    anyhow::bail!("no SUCCESS write for {urn} among the stand-in's requests")
}
