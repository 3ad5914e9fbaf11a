//! `outpost-bench`: measures the controller with real processes over real mTLS. Run it from `bench/run.sh`
//! (release build). Each benchmark prints one line of results; `bench/RESULTS.md` records them with the machine
//! and date.

mod benches;
mod gms_sink;
mod harness;
mod joins;
mod pickup;
mod pinned;

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Parser, Subcommand};
use outpost_common::pb::{self, agent_message::Msg as Out, controller_message::Msg as In};

use harness::{ControllerProcess, Session, message};

#[derive(Parser)]
#[command(about = "Outpost benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// How many heartbeats per second one controller absorbs: N agent sessions each send M heartbeats, then one
    /// message that needs an answer; when every answer is back, every heartbeat before it was processed.
    Heartbeats {
        #[arg(long, default_value_t = 100)]
        agents: usize,
        #[arg(long, default_value_t = 2000)]
        beats: usize,
        /// Running attempts each heartbeat reports progress for.
        #[arg(long, default_value_t = 4)]
        attempts: usize,
    },
    /// SubmitTask → Assign on an idle agent's stream, one no-op task at a time.
    Dispatch {
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
    },
    /// No-op tasks submitted, run and recorded, as fast as the controller goes.
    Throughput {
        #[arg(long, default_value_t = 10_000)]
        tasks: usize,
        #[arg(long, default_value_t = 10)]
        agents: usize,
        #[arg(long, default_value_t = 8)]
        slots: u32,
        #[arg(long, default_value_t = 64)]
        submitters: usize,
        /// Report every task to a GMS stand-in (bench/src/gms_sink.rs) and count a task done when its SUCCESS
        /// write reached it.
        #[arg(long)]
        gms: bool,
        /// Run real `outpost-agent` processes (NOOP tasks) instead of agent sessions driven in this process.
        #[arg(long)]
        real_agents: bool,
        /// Also count instructions per task (two shorter runs of the controller under valgrind's callgrind).
        #[arg(long)]
        instructions: bool,
    },
    /// Idle agents on one controller: memory, idle CPU, reconnect after a restart.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, value_parser = outpost_common::duration::parse, default_value = "20s")]
        idle: Duration,
    },
    /// The same file → blackhole recipe through Outpost and the bare CLI.
    Overhead {
        #[arg(long, default_value_t = 10)]
        runs: usize,
    },
    /// A pinned-version recipe through Outpost cold and warm, and through DataHub's executor engine.
    Pinned {
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Execution request created in GMS → RUNNING written, over the GMS channel or SQS (claims at GMS on).
    Pickup {
        #[arg(long, default_value_t = 200)]
        requests: usize,
        /// Time between creations (plus up to half as much jitter).
        #[arg(long, value_parser = outpost_common::duration::parse, default_value = "200ms")]
        every: Duration,
        /// How long the stand-in's search index lags writes.
        #[arg(long, default_value_t = 1000)]
        index_lag_ms: u64,
        /// Deliver the requests over SQS (moto) instead of the GMS channel.
        #[arg(long)]
        sqs: bool,
    },
    /// Agents joining with a token (and what renewals cost the controller).
    Joins {
        #[arg(long, default_value_t = 2000)]
        agents: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The agent certificate TTL the renewal cost is worked out for.
        #[arg(long, value_parser = outpost_common::duration::parse, default_value = "24h")]
        cert_ttl: Duration,
    },
    /// A killed agent's task granted again, `trials` times.
    Detection {
        #[arg(long, default_value_t = 10)]
        trials: usize,
        #[arg(long, default_value = "5s")]
        lease_ttl: String,
    },
}

async fn heartbeats(agents: usize, beats: usize, attempts: usize) -> anyhow::Result<()> {
    let controller = ControllerProcess::start(&["--heartbeat-interval", "5s", "--lease-ttl", "60s"])?;
    let mut sessions = Vec::with_capacity(agents);
    for i in 0..agents {
        sessions.push(Session::open(&controller, &format!("hb-{i}"), "bench", 1).await?);
    }
    let progress: Vec<pb::AttemptProgress> = (0..attempts)
        .map(|i| pb::AttemptProgress {
            attempt: Some(pb::AttemptRef { task_id: format!("task-{i}"), epoch: 1 }),
            log_bytes: 1000,
            last_output_unix_ms: 0,
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut session) in sessions.into_iter().enumerate() {
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..beats {
                let beat = pb::Heartbeat { attempts: progress.clone() };
                session.outbound.send(message(Out::Heartbeat(beat))).await?;
            }
            // An ack for an unknown attempt is answered (Refused) only after everything before it was handled.
            let probe = pb::AttemptRef { task_id: format!("probe-{i}"), epoch: 1 };
            session.outbound.send(message(Out::Ack(pb::Ack { attempt: Some(probe) }))).await?;
            loop {
                match session.inbound.message().await?.and_then(|m| m.msg) {
                    Some(In::Refused(_)) => return anyhow::Ok(session),
                    Some(_) => continue,
                    None => bail!("stream ended"),
                }
            }
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        kept.push(task.await??);
    }
    let elapsed = started.elapsed();
    let total = agents * beats;
    println!(
        "heartbeats: {agents} agents x {beats} beats ({attempts} attempts each) = {total} in {:.3} s -> {:.0} heartbeats/s",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    drop(kept);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    outpost_common::tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.bench {
            Bench::Heartbeats { agents, beats, attempts } => heartbeats(agents, beats, attempts).await,
            Bench::Dispatch { tasks } => benches::dispatch(tasks).await,
            Bench::Throughput { tasks, agents, slots, submitters, gms, real_agents, instructions } => {
                benches::throughput(tasks, agents, slots, submitters, gms, real_agents, instructions).await
            }
            Bench::Fleet { agents, idle } => benches::fleet(agents, idle).await,
            Bench::Detection { trials, lease_ttl } => benches::detection(trials, &lease_ttl).await,
            Bench::Overhead { runs } => benches::overhead(runs).await,
            Bench::Pinned { runs } => pinned::pinned(runs).await,
            Bench::Joins { agents, concurrency, cert_ttl } => joins::joins(agents, concurrency, cert_ttl).await,
            Bench::Pickup { requests, every, index_lag_ms, sqs } => {
                pickup::pickup(requests, every, index_lag_ms, sqs).await
            }
        }
    })
}
