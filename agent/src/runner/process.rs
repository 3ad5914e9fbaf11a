//! Runs one attempt of `datahub ingest` the way DataHub's executor does: the recipe (with `run_id` set to the
//! execution request id) in a JSON envelope on stdin, `--report-to <file>`, its own process group, stdout and
//! stderr captured line by line. Cancel = SIGTERM to the group, a grace period, SIGKILL. Never builds wire types.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outpost_common::clock::unix_ms;
use outpost_common::task::{ResultStatus, RunResult};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::output::OutputTail;
use super::prepare::{MEMORY_LIMIT_VAR, prepare};
use super::report::{ExecutionReport, Verdict};
use super::verdict;
use crate::secrets::mask::Masker;
use crate::secrets::{self, Resolver};
use crate::venv::Venvs;

/// Why a run could not be set up, started or waited for; the message is the error line of its report (masked).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Cannot create the run directory {}: {source}", dir.display())]
    RunDir { dir: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Prepare(#[from] super::prepare::Invalid),
    #[error("Failed to resolve secrets: {0}")]
    Secrets(#[from] secrets::Error),
    #[error(transparent)]
    Venv(#[from] crate::venv::Error),
    #[error("Failed to start '{}': {source}", cli.display())]
    Start { cli: PathBuf, source: std::io::Error },
    #[error("the CLI's stdin is not piped")]
    NoStdin,
    #[error("Failed waiting for the CLI: {0}")]
    Wait(std::io::Error),
}

/// Why the agent stopped a run before it ended by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The controller asked (admin cancel, KILL signal).
    Cancelled,
    /// The task's deadline passed.
    TimedOut,
    /// The agent is going away (drain timeout); the controller re-queues the task.
    Interrupted,
}

/// How runs are executed; the same for every run of an agent.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// This agent's worker ID (for log spans).
    pub worker_id: String,
    /// Which `datahub` runs a task (native or a cached venv).
    pub venvs: Arc<Venvs>,
    /// Resolves `${NAME}` references at task start.
    pub secrets: Arc<Resolver>,
    /// Per-attempt working directories are made under this one.
    pub work_dir: PathBuf,
    pub limits: Limits,
}

/// The runner's flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "runner")]
#[command(next_help_heading = "Runs")]
pub struct Limits {
    /// On cancel: SIGTERM to the process group, then SIGKILL after this grace.
    #[arg(long, env = "OUTPOST_CANCEL_GRACE", value_parser = outpost_common::duration::parse, default_value = "30s")]
    pub cancel_grace: Duration,
    /// How long to keep reading a run's output after the CLI exited (a leftover grandchild may hold the pipe open).
    #[arg(long, env = "OUTPOST_OUTPUT_DRAIN_TIMEOUT", value_parser = outpost_common::duration::parse,
          default_value = "2s")]
    pub output_drain_timeout: Duration,
    /// Lines of output kept per run for the report.
    #[arg(long, env = "OUTPOST_MAX_LOG_LINES", default_value_t = 2000)]
    pub max_log_lines: usize,
    /// Characters kept per output line.
    #[arg(long, env = "OUTPOST_MAX_LINE_CHARS", default_value_t = 4096)]
    pub max_line_chars: usize,
    /// Cap on the report text of one run, in bytes.
    #[arg(long, env = "OUTPOST_MAX_REPORT_BYTES", default_value_t = 1024 * 1024)]
    pub max_report_bytes: usize,
}

impl Limits {
    pub fn validate(&self) -> Result<(), outpost_common::duration::Invalid> {
        use outpost_common::duration::Invalid;
        if self.max_log_lines == 0 || self.max_line_chars == 0 {
            return Err(Invalid("--max-log-lines and --max-line-chars must be greater than zero".into()));
        }
        if self.max_report_bytes < 1024 {
            return Err(Invalid("--max-report-bytes must be at least 1024".into()));
        }
        Ok(())
    }
}

/// One run to make.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The execution request id (DataHub's exec_id); also the recipe's `run_id`.
    pub exec_id: String,
    /// Distinguishes attempts of the same task in directory names.
    pub attempt_tag: String,
    pub task_name: String,
    pub args: BTreeMap<String, String>,
    /// Stop with TIMED_OUT at this time.
    pub deadline: Option<std::time::SystemTime>,
}

/// Live counters the heartbeat reports.
#[derive(Debug, Default)]
pub struct Progress {
    pub log_bytes: AtomicU64,
    pub last_output_ms: AtomicI64,
}

/// How a run ended, and what it produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub status: ResultStatus,
    pub run: RunResult,
}

impl RunOutcome {
    /// An attempt that never ran (stopped or handed back before its CLI started): `report` says why.
    pub fn without_run(status: ResultStatus, report: String) -> RunOutcome {
        RunOutcome { status, run: RunResult { report, start_time_ms: unix_ms(), ..RunResult::default() } }
    }
}

/// The outcome of an attempt stopped before it started.
pub fn not_started(reason: StopReason) -> RunOutcome {
    let (status, why) = match reason {
        StopReason::Cancelled => (ResultStatus::Cancelled, "Ingestion task was cancelled before it started"),
        StopReason::TimedOut => (ResultStatus::TimedOut, "The ingestion task's deadline passed before it started"),
        StopReason::Interrupted => (ResultStatus::Interrupted, "The agent shut down before the ingestion started"),
    };
    RunOutcome::without_run(status, format!("{why}\n"))
}

/// Runs the attempt to its end. Lines of output (masked, capped) go to `lines` as they come; a full channel drops
/// them (the tail in the report is kept regardless).
pub async fn run(
    config: &ProcessConfig,
    spec: RunSpec,
    stop: oneshot::Receiver<StopReason>,
    lines: mpsc::Sender<Vec<String>>,
    progress: Arc<Progress>,
) -> RunOutcome {
    let start_time_ms = unix_ms();
    let started = Instant::now();
    if spec.task_name == outpost_common::task::NOOP {
        let report = format!("~~~~ Execution Summary - {} ~~~~\nExecution finished successfully!\n", spec.task_name);
        let duration_ms = outpost_common::duration::signed_millis(started.elapsed());
        let run =
            RunResult { exit_code: Some(0), report, structured_report: String::new(), start_time_ms, duration_ms };
        return RunOutcome { status: ResultStatus::Succeeded, run };
    }
    let dir = config.work_dir.join(format!("{}-{}", spec.exec_id, spec.attempt_tag));
    let mut run = Run {
        config,
        lines: &lines,
        progress: &progress,
        tail: OutputTail::new(config.limits.max_log_lines, config.limits.max_line_chars),
        masker: Masker::default(),
        report: ExecutionReport::default(),
    };
    run.report.info(format!("Starting execution for task with name={}", spec.task_name));
    let result = run.execute(&spec, &dir, stop).await;
    let structured = tokio::fs::read_to_string(dir.join("artifacts").join("ingestion_report.json")).await.ok();
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), error = %e, "could not remove the run directory");
    }
    let (status, exit_code) = match result {
        Ok(ended) => ended,
        Err(error) => {
            run.report.error(run.masker.mask(&error.to_string()));
            (ResultStatus::Failed, None)
        }
    };
    let verdict = match status {
        ResultStatus::Succeeded => Verdict::Success,
        ResultStatus::Cancelled => Verdict::Cancelled,
        _ => Verdict::Failure,
    };
    let structured = structured.map(|s| run.masker.mask(&s));
    let text = run.report.render(
        &spec.exec_id,
        &spec.task_name,
        verdict,
        structured.as_deref(),
        &run.tail.render(),
        config.limits.max_report_bytes,
    );
    let run = RunResult {
        exit_code,
        report: run.masker.mask(&text),
        structured_report: structured.unwrap_or_default(),
        start_time_ms,
        duration_ms: outpost_common::duration::signed_millis(started.elapsed()),
    };
    RunOutcome { status, run }
}

/// The state of one run while it executes.
struct Run<'a> {
    config: &'a ProcessConfig,
    lines: &'a mpsc::Sender<Vec<String>>,
    progress: &'a Progress,
    tail: OutputTail,
    masker: Masker,
    report: ExecutionReport,
}

impl Run<'_> {
    /// A line for the task's log (setup steps): recorded and forwarded like the CLI's output.
    fn note(&mut self, line: String) {
        take_lines(line, None, &mut self.tail, &self.masker, self.lines, self.progress);
    }

    /// Sets the run up, starts the CLI, watches it to its end and gives the verdict.
    async fn execute(
        &mut self,
        spec: &RunSpec,
        dir: &Path,
        stop: oneshot::Receiver<StopReason>,
    ) -> Result<(ResultStatus, Option<i32>), Error> {
        let ready = self.set_up(spec, dir).await?;
        let cli = ready.venv.cli.clone();
        let mut command = self.command(&cli, &ready, dir);
        let mut child = command.spawn().map_err(|source| Error::Start { cli: cli.clone(), source })?;
        // The CLI leads its own process group: its pid is the group's id.
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        info!(exec_id = %spec.exec_id, pid = pgid.unwrap_or_default(), "datahub CLI started");
        self.report.info(format!("Executing: {} {}", cli.display(), ready.prepared.argv.join(" ")));
        let watched = self.watch(spec, &mut child, pgid, stop, ready.envelope).await?;
        let status = watched.status.map_err(Error::Wait)?;
        let exit_code = status.code().or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            status.signal().map(|s| -s)
        });
        let ending = verdict::Ending {
            stopped: watched.stopped,
            exit_code,
            memory_error: watched.memory_error,
            memory_limit: ready.prepared.memory_limit,
            memory_limit_var: MEMORY_LIMIT_VAR,
            what: if ready.prepared.test_connection { "datahub test connection" } else { "datahub ingest" },
        };
        let (status, line) = verdict::verdict(ending, signal_name);
        match line {
            verdict::Line::Info(text) => self.report.info(text),
            verdict::Line::Error(text) => self.report.error(text),
        }
        Ok((status, exit_code))
    }

    /// The run's directories, its prepared args, its secrets (from here on masked in everything it reports) and
    /// the venv it runs in (held until the run ends, so it is not evicted meanwhile).
    async fn set_up(&mut self, spec: &RunSpec, dir: &Path) -> Result<Ready, Error> {
        let artifacts = dir.join("artifacts");
        for d in [artifacts.clone(), dir.join("tmp")] {
            tokio::fs::create_dir_all(&d).await.map_err(|source| Error::RunDir { dir: d.clone(), source })?;
        }
        let prepared = prepare(&spec.exec_id, &spec.task_name, &spec.args, &artifacts.join("ingestion_report.json"))?;
        let secrets = self.config.secrets.resolve(&secrets::references(&prepared.recipe)).await?;
        self.masker = Masker::new(&secrets);
        let mut notes = Vec::new();
        let venv = self.config.venvs.cli_for(&prepared.venv, &mut |line| notes.push(line)).await;
        for line in notes {
            self.note(line);
        }
        let venv = venv?;
        let envelope = prepared.envelope(&secrets);
        Ok(Ready { prepared, envelope, venv })
    }

    /// The CLI's command: its own process group, piped stdio, the run's directories, the memory limit.
    fn command(&mut self, cli: &Path, ready: &Ready, dir: &Path) -> Command {
        let mut command = Command::new(cli);
        command
            .args(&ready.prepared.argv)
            .envs(&ready.prepared.env)
            .env("INGESTION_ARTIFACT_DIR", dir.join("artifacts"))
            .env("TMPDIR", dir.join("tmp"))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(limit) = ready.prepared.memory_limit {
            // SAFETY: the closure runs in the forked child before exec and only calls setrlimit, which is
            // async-signal-safe; it allocates nothing and touches no locks.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit { rlim_cur: limit as libc::rlim_t, rlim_max: limit as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_AS, &rlimit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            self.report.info(format!("Limiting the run's memory to {limit} bytes ({MEMORY_LIMIT_VAR})"));
        }
        command
    }

    /// Feeds the envelope to the CLI and takes its output until it exits, is stopped (cancel, drain) or passes
    /// its deadline; then reads what is left in the pipes for a short while. A stopped run's group is killed.
    async fn watch(
        &mut self,
        spec: &RunSpec,
        child: &mut tokio::process::Child,
        pgid: Option<i32>,
        mut stop: oneshot::Receiver<StopReason>,
        envelope: String,
    ) -> Result<Watched, Error> {
        let limits = &self.config.limits;
        let mut stdin = child.stdin.take().ok_or(Error::NoStdin)?;
        let (line_tx, mut line_rx) = mpsc::channel::<String>(1024);
        let cap = limits.max_line_chars.saturating_mul(4).max(16);
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(BufReader::new(stdout), cap, line_tx.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(BufReader::new(stderr), cap, line_tx.clone()));
        }
        drop(line_tx);
        // The CLI reads the whole envelope before it starts; write it and close stdin.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(envelope.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
        let deadline = spec.deadline.map(|at| {
            let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let mut stopped: Option<StopReason> = None;
        let mut output_open = true;
        let mut memory_error = false;
        let status = loop {
            tokio::select! {
                status = child.wait() => break status,
                reason = &mut stop, if stopped.is_none() => {
                    let reason = reason.unwrap_or(StopReason::Cancelled);
                    stopped = Some(reason);
                    info!(exec_id = %spec.exec_id, reason = ?reason, "stopping the CLI's process group");
                    break terminate_group(child, pgid, limits.cancel_grace).await;
                }
                _ = sleep_until(deadline), if stopped.is_none() => {
                    stopped = Some(StopReason::TimedOut);
                    info!(exec_id = %spec.exec_id, "the task's deadline passed: stopping the CLI's process group");
                    break terminate_group(child, pgid, limits.cancel_grace).await;
                }
                line = line_rx.recv(), if output_open => match line {
                    Some(line) => memory_error |= self.take(line, &mut line_rx),
                    None => output_open = false,
                },
            }
        };
        writer.abort();
        // Whatever the CLI printed last is still in the pipes.
        let drain = tokio::time::sleep(limits.output_drain_timeout);
        tokio::pin!(drain);
        while output_open {
            tokio::select! {
                line = line_rx.recv() => match line {
                    Some(line) => memory_error |= self.take(line, &mut line_rx),
                    None => output_open = false,
                },
                _ = &mut drain => break,
            }
        }
        if stopped.is_some() {
            // Nothing of the group may outlive a cancel.
            kill_group(pgid, libc::SIGKILL);
        }
        Ok(Watched { status, stopped, memory_error })
    }

    /// Takes a line of the CLI's output and whatever else is already queued; true if one was a memory error.
    fn take(&mut self, line: String, more: &mut mpsc::Receiver<String>) -> bool {
        take_lines(line, Some(more), &mut self.tail, &self.masker, self.lines, self.progress)
    }
}

/// A run set up and ready to start.
struct Ready {
    prepared: super::prepare::Prepared,
    /// The stdin envelope (holds the resolved secrets).
    envelope: String,
    venv: crate::venv::VenvUse,
}

/// How the CLI's process ended, as watched.
struct Watched {
    status: std::io::Result<std::process::ExitStatus>,
    stopped: Option<StopReason>,
    memory_error: bool,
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Output that means an allocation failed (CPython's `MemoryError`, or the C-level failures it sometimes turns
/// into under RLIMIT_AS).
const OUT_OF_MEMORY_SIGNS: &[&str] =
    &["MemoryError", "Cannot allocate memory", "out of memory", "std::bad_alloc", "error return without exception set"];

/// Takes `first` and every other line already waiting, masks and records them, and forwards them as one chunk.
/// Returns whether one of them reports a failed allocation.
fn take_lines(
    first: String,
    more: Option<&mut mpsc::Receiver<String>>,
    tail: &mut OutputTail,
    masker: &Masker,
    lines: &mpsc::Sender<Vec<String>>,
    progress: &Progress,
) -> bool {
    let mut chunk = vec![tail.cap_line(&masker.mask(&first))];
    if let Some(more) = more {
        while chunk.len() < 256 {
            match more.try_recv() {
                Ok(line) => chunk.push(tail.cap_line(&masker.mask(&line))),
                Err(_) => break,
            }
        }
    }
    let memory_error = chunk.iter().any(|l| OUT_OF_MEMORY_SIGNS.iter().any(|sign| l.contains(sign)));
    for line in &chunk {
        tail.push(line.clone());
    }
    progress.log_bytes.store(tail.bytes(), Ordering::Relaxed);
    progress.last_output_ms.store(unix_ms(), Ordering::Relaxed);
    let _ = lines.try_send(chunk);
    memory_error
}

/// SIGTERM to the group, wait up to `grace`, then SIGKILL.
async fn terminate_group(
    child: &mut tokio::process::Child,
    pgid: Option<i32>,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    kill_group(pgid, libc::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            kill_group(pgid, libc::SIGKILL);
            child.wait().await
        }
    }
}

fn kill_group(pgid: Option<i32>, signal: i32) {
    if let Some(pgid) = pgid.filter(|p| *p > 0) {
        // SAFETY: killpg has no memory-safety preconditions; a vanished group yields ESRCH, which is fine.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

fn signal_name(signal: i32) -> String {
    match signal {
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGINT => "SIGINT".into(),
        libc::SIGBUS => "SIGBUS".into(),
        other => other.to_string(),
    }
}

/// Reads lines (each capped at `cap` bytes; the rest of an over-long line is dropped) and forwards them.
async fn forward_lines<R: AsyncBufRead + Unpin>(mut reader: R, cap: usize, out: mpsc::Sender<String>) {
    loop {
        let mut line = Vec::new();
        let mut saw_any = false;
        loop {
            let buf = match reader.fill_buf().await {
                Ok(buf) => buf,
                Err(_) => return,
            };
            if buf.is_empty() {
                if saw_any && out.send(String::from_utf8_lossy(&line).into_owned()).await.is_err() {
                    return;
                }
                return;
            }
            saw_any = true;
            let (take, used, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (&buf[..i], i + 1, true),
                None => (buf, buf.len(), false),
            };
            let room = cap.saturating_sub(line.len());
            line.extend_from_slice(&take[..take.len().min(room)]);
            reader.consume(used);
            if done {
                break;
            }
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if out.send(String::from_utf8_lossy(&line).into_owned()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forward_lines_caps_long_lines_and_keeps_the_last_partial_line() {
        let input: &[u8] = b"short\r\nlooooooooong\nlast";
        let (tx, mut rx) = mpsc::channel(10);
        forward_lines(BufReader::new(input), 4, tx).await;
        let mut got = Vec::new();
        while let Some(line) = rx.recv().await {
            got.push(line);
        }
        assert_eq!(got, ["shor", "looo", "last"]);
    }
}
