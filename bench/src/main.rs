//! `outpost-bench`: measures the controller with real processes over real mTLS. Run it from `bench/run.sh`
//! (release build). Each benchmark prints one line of results; `bench/RESULTS.md` records them with the machine
//! and date.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use outpost_common::pb::{self, agent_message::Msg as Out, controller_message::Msg as In};
use outpost_common::tls::TlsFiles;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

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
}

/// A controller process (the release binary next to this one) in a temp dir with fresh certificates.
struct ControllerProcess {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no exe dir")?.join(name);
    if !path.exists() {
        bail!("{} is missing: build with `cargo build --release --workspace`", path.display());
    }
    Ok(path)
}

fn start_controller(extra: &[&str]) -> anyhow::Result<ControllerProcess> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    outpost_controller::certs::init(&certs, &[])?;
    let addr_file = dir.path().join("addr");
    let log = std::fs::File::create(dir.path().join("controller.log"))?;
    let child = Command::new(sibling("outpost-controller")?)
        .args(["run", "--listen", "127.0.0.1:0"])
        .arg("--listen-addr-file")
        .arg(&addr_file)
        .arg("--db")
        .arg(dir.path().join("bench.db"))
        .arg("--tls-cert")
        .arg(certs.join("controller.pem"))
        .arg("--tls-key")
        .arg(certs.join("controller.key"))
        .arg("--tls-ca")
        .arg(certs.join("ca.pem"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        if let Ok(addr) = std::fs::read_to_string(&addr_file) {
            break addr;
        }
        if Instant::now() > deadline {
            bail!("the controller did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(ControllerProcess { child, addr, dir })
}

async fn agent_channel(certs: &Path, worker: &str, addr: &str) -> anyhow::Result<Channel> {
    outpost_controller::certs::agent(certs, worker, "outpost")?;
    let tls = TlsFiles {
        cert: certs.join(format!("agent-{worker}.pem")),
        key: certs.join(format!("agent-{worker}.key")),
        ca: certs.join("ca.pem"),
    }
    .load()?;
    Ok(Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls.client_config("127.0.0.1"))?.connect().await?)
}

fn message(msg: Out) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

/// One agent session driven by the benchmark.
struct Session {
    outbound: mpsc::Sender<pb::AgentMessage>,
    inbound: tonic::Streaming<pb::ControllerMessage>,
}

async fn open_session(channel: Channel, worker: &str) -> anyhow::Result<Session> {
    let (outbound, rx) = mpsc::channel(1024);
    let hello = pb::Hello { worker_id: worker.into(), pools: vec!["bench".into()], slots: 1, ..Default::default() };
    outbound.send(message(Out::Hello(hello))).await?;
    let mut inbound =
        pb::agent_service_client::AgentServiceClient::new(channel).connect(ReceiverStream::new(rx)).await?.into_inner();
    match inbound.message().await?.and_then(|m| m.msg) {
        Some(In::Welcome(_)) => Ok(Session { outbound, inbound }),
        other => bail!("expected Welcome, got {other:?}"),
    }
}

async fn heartbeats(agents: usize, beats: usize, attempts: usize) -> anyhow::Result<()> {
    let controller = start_controller(&["--heartbeat-interval", "5s", "--lease-ttl", "60s"])?;
    let certs = controller.dir.path().join("certs");
    let mut sessions = Vec::with_capacity(agents);
    for i in 0..agents {
        let worker = format!("hb-{i}");
        let channel = agent_channel(&certs, &worker, &controller.addr).await?;
        sessions.push(open_session(channel, &worker).await?);
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
        }
    })
}
