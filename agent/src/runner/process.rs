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
use outpost_common::task::{RUN_INGEST, ResultStatus, TEST_CONNECTION};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::output::OutputTail;
use super::report::{ExecutionReport, Verdict};

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
    /// The `datahub` executable.
    pub cli: PathBuf,
    /// Per-attempt working directories are made under this one.
    pub work_dir: PathBuf,
    /// SIGTERM → SIGKILL grace on cancel.
    pub cancel_grace: Duration,
    /// How long to keep reading output after the CLI exited (a leftover grandchild may hold the pipe open).
    pub output_drain_timeout: Duration,
    pub max_log_lines: usize,
    pub max_line_chars: usize,
    /// Cap on the whole report text sent to the controller.
    pub max_report_chars: usize,
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
}

/// Live counters the heartbeat reports.
#[derive(Debug, Default)]
pub struct Progress {
    pub log_bytes: AtomicU64,
    pub last_output_ms: AtomicI64,
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub status: ResultStatus,
    pub exit_code: Option<i32>,
    pub report: String,
    pub structured_report: String,
    pub start_time_ms: i64,
    pub duration_ms: i64,
}

/// Runs the attempt to its end. Lines of output (capped) go to `lines` as they come; a full channel drops them
/// (the tail in the report is kept regardless).
pub async fn run(
    config: &ProcessConfig,
    spec: RunSpec,
    stop: oneshot::Receiver<StopReason>,
    lines: mpsc::Sender<Vec<String>>,
    progress: Arc<Progress>,
) -> RunOutcome {
    let start_time_ms = unix_ms();
    let started = Instant::now();
    let mut report = ExecutionReport::default();
    report.info(format!("Starting execution for task with name={}", spec.task_name));
    let mut tail = OutputTail::new(config.max_log_lines, config.max_line_chars);
    let dir = config.work_dir.join(format!("{}-{}", spec.exec_id, spec.attempt_tag));
    let result = execute(config, &spec, &dir, stop, &lines, &progress, &mut tail, &mut report).await;
    let structured = std::fs::read_to_string(dir.join("artifacts").join("ingestion_report.json")).ok();
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(dir = %dir.display(), error = %e, "could not remove the run directory");
    }
    let (status, exit_code) = match result {
        Ok(ended) => ended,
        Err(message) => {
            report.error(&message);
            (ResultStatus::Failed, None)
        }
    };
    let verdict = match status {
        ResultStatus::Succeeded => Verdict::Success,
        ResultStatus::Cancelled => Verdict::Cancelled,
        _ => Verdict::Failure,
    };
    let text = report.render(
        &spec.exec_id,
        &spec.task_name,
        verdict,
        structured.as_deref(),
        &tail.render(),
        config.max_report_chars,
    );
    RunOutcome {
        status,
        exit_code,
        report: text,
        structured_report: structured.unwrap_or_default(),
        start_time_ms,
        duration_ms: started.elapsed().as_millis() as i64,
    }
}

/// A run, ready to start.
struct Prepared {
    /// The JSON envelope the CLI reads on stdin.
    envelope: String,
    argv: Vec<String>,
    /// Variables added to the agent's environment for the CLI.
    env: BTreeMap<String, String>,
}

/// Parses the args into the stdin envelope and the CLI's argv. Errors are report lines.
fn prepare(spec: &RunSpec, report_file: &Path) -> Result<Prepared, String> {
    let test_connection = match spec.task_name.as_str() {
        RUN_INGEST => false,
        TEST_CONNECTION => true,
        other => return Err(format!("Failed to find task with name={other}")),
    };
    let recipe_text = spec.args.get("recipe").ok_or("The task has no recipe argument")?;
    let mut recipe: serde_json::Value =
        serde_json::from_str(recipe_text).map_err(|e| format!("The recipe is not valid JSON: {e}"))?;
    let Some(object) = recipe.as_object_mut() else { return Err("The recipe must be a JSON object".into()) };
    if !test_connection {
        object.insert("run_id".into(), serde_json::Value::String(spec.exec_id.clone()));
    }
    let debug = spec.args.get("debug_mode").or_else(|| spec.args.get("debugMode")).is_some_and(|v| v == "true");
    let extra_env = match spec.args.get("extra_env_vars").map(String::as_str) {
        None | Some("") => BTreeMap::new(),
        Some(text) => {
            let map: BTreeMap<String, serde_json::Value> =
                serde_json::from_str(text).map_err(|e| format!("extra_env_vars is not a JSON object: {e}"))?;
            map.into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::String(s) if s.is_empty() => None,
                    serde_json::Value::String(s) => Some((k, s)),
                    serde_json::Value::Null => None,
                    other => Some((k, other.to_string())),
                })
                .collect()
        }
    };
    let report_path = report_file.to_string_lossy().into_owned();
    // JSON is YAML: the recipe travels as its JSON text in __recipe_yaml__.
    let envelope = serde_json::json!({
        "__recipe_yaml__": recipe.to_string(),
        "__secrets__": {},
        "__report_out_file__": report_path,
        "__debug_mode__": if debug { "true" } else { "false" },
    })
    .to_string();
    let mut argv = Vec::new();
    if debug && !test_connection {
        argv.push("--debug".to_owned());
    }
    if test_connection {
        argv.extend(["ingest", "-c", "-", "--test-source-connection", "--report-to"].map(String::from));
    } else {
        argv.extend(["ingest", "run", "-c", "-", "--report-to"].map(String::from));
    }
    argv.push(report_path);
    let mut env = extra_env;
    env.insert("DATAHUB_DEBUG".into(), if debug { "true" } else { "false" }.into());
    Ok(Prepared { envelope, argv, env })
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    config: &ProcessConfig,
    spec: &RunSpec,
    dir: &Path,
    mut stop: oneshot::Receiver<StopReason>,
    lines: &mpsc::Sender<Vec<String>>,
    progress: &Progress,
    tail: &mut OutputTail,
    report: &mut ExecutionReport,
) -> Result<(ResultStatus, Option<i32>), String> {
    let artifacts = dir.join("artifacts");
    let tmp = dir.join("tmp");
    for d in [&artifacts, &tmp] {
        std::fs::create_dir_all(d).map_err(|e| format!("Cannot create the run directory {}: {e}", d.display()))?;
    }
    let Prepared { envelope, argv, env } = prepare(spec, &artifacts.join("ingestion_report.json"))?;
    let mut command = Command::new(&config.cli);
    command
        .args(&argv)
        .envs(&env)
        .env("INGESTION_ARTIFACT_DIR", &artifacts)
        .env("TMPDIR", &tmp)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| format!("Failed to start '{}': {e}", config.cli.display()))?;
    let pgid = child.id().map(|id| id as i32);
    info!(exec_id = %spec.exec_id, pid = ?pgid, "datahub CLI started");
    report.info(format!("Executing: {} {}", config.cli.display(), argv.join(" ")));

    let mut stdin = child.stdin.take().ok_or("the CLI's stdin is not piped")?;
    let (line_tx, mut line_rx) = mpsc::channel::<String>(1024);
    let cap = config.max_line_chars.saturating_mul(4).max(16);
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

    let mut stopped: Option<StopReason> = None;
    let mut output_open = true;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            reason = &mut stop, if stopped.is_none() => {
                let reason = reason.unwrap_or(StopReason::Cancelled);
                stopped = Some(reason);
                info!(exec_id = %spec.exec_id, reason = ?reason, "stopping the CLI's process group");
                break terminate_group(&mut child, pgid, config.cancel_grace).await;
            }
            line = line_rx.recv(), if output_open => match line {
                Some(line) => take_lines(line, &mut line_rx, tail, lines, progress),
                None => output_open = false,
            },
        }
    };
    writer.abort();
    // Whatever the CLI printed last is still in the pipes.
    let drain = tokio::time::sleep(config.output_drain_timeout);
    tokio::pin!(drain);
    while output_open {
        tokio::select! {
            line = line_rx.recv() => match line {
                Some(line) => take_lines(line, &mut line_rx, tail, lines, progress),
                None => output_open = false,
            },
            _ = &mut drain => break,
        }
    }
    if stopped.is_some() {
        // Nothing of the group may outlive a cancel.
        kill_group(pgid, libc::SIGKILL);
    }
    let status = status.map_err(|e| format!("Failed waiting for the CLI: {e}"))?;
    let exit_code = status.code().or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        status.signal().map(|s| -s)
    });
    Ok(match stopped {
        Some(StopReason::Cancelled) => {
            report.info("Ingestion task was cancelled");
            (ResultStatus::Cancelled, exit_code)
        }
        Some(StopReason::TimedOut) => {
            report.error("The ingestion task ran past its deadline and was stopped");
            (ResultStatus::TimedOut, exit_code)
        }
        Some(StopReason::Interrupted) => {
            report.error("The agent shut down before the ingestion finished; the task will run again");
            (ResultStatus::Interrupted, exit_code)
        }
        None => {
            match exit_code {
                Some(0) => report.info("Successfully executed 'datahub ingest'"),
                Some(code) if code < 0 => report.error(format!(
                    "The ingestion process was killed by signal {} likely because it ran out of memory. \
                     You can resolve this issue by allocating more memory to the agent.",
                    signal_name(-code)
                )),
                Some(137) => report.error(
                    "The ingestion process was terminated with exit code 137, likely because it ran out of memory. \
                     You can resolve this issue by allocating more memory to the agent.",
                ),
                Some(code) => report.info(format!("Failed to execute 'datahub ingest', exit code {code}")),
                None => report.error("The ingestion process ended without an exit status"),
            }
            (if exit_code == Some(0) { ResultStatus::Succeeded } else { ResultStatus::Failed }, exit_code)
        }
    })
}

/// Takes `first` and every other line already waiting, records them, and forwards them as one chunk.
fn take_lines(
    first: String,
    line_rx: &mut mpsc::Receiver<String>,
    tail: &mut OutputTail,
    lines: &mpsc::Sender<Vec<String>>,
    progress: &Progress,
) {
    let mut chunk = vec![tail.cap_line(&first)];
    while chunk.len() < 256 {
        match line_rx.try_recv() {
            Ok(line) => chunk.push(tail.cap_line(&line)),
            Err(_) => break,
        }
    }
    for line in &chunk {
        tail.push(line.clone());
    }
    progress.log_bytes.store(tail.bytes(), Ordering::Relaxed);
    progress.last_output_ms.store(unix_ms(), Ordering::Relaxed);
    let _ = lines.try_send(chunk);
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

    fn spec(task: &str, args: &[(&str, &str)]) -> RunSpec {
        RunSpec {
            exec_id: "abc".into(),
            attempt_tag: "1".into(),
            task_name: task.into(),
            args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn envelope_carries_the_recipe_with_run_id_and_the_report_path() {
        let Prepared { envelope, argv, env } = prepare(
            &spec(
                "RUN_INGEST",
                &[("recipe", "{\"source\":{\"type\":\"file\"}}"), ("extra_env_vars", "{\"A\":\"1\",\"B\":\"\"}")],
            ),
            Path::new("/r/report.json"),
        )
        .unwrap();
        let envelope: serde_json::Value = serde_json::from_str(&envelope).unwrap();
        let recipe: serde_json::Value = serde_json::from_str(envelope["__recipe_yaml__"].as_str().unwrap()).unwrap();
        assert_eq!(recipe["run_id"], "abc");
        assert_eq!(recipe["source"]["type"], "file");
        assert_eq!(envelope["__report_out_file__"], "/r/report.json");
        assert_eq!(envelope["__debug_mode__"], "false");
        assert_eq!(argv, ["ingest", "run", "-c", "-", "--report-to", "/r/report.json"]);
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert!(!env.contains_key("B"), "empty values are dropped");
    }

    #[test]
    fn test_connection_and_debug_mode_shape_the_command() {
        let Prepared { argv, .. } = prepare(&spec("TEST_CONNECTION", &[("recipe", "{}")]), Path::new("/r")).unwrap();
        assert_eq!(argv, ["ingest", "-c", "-", "--test-source-connection", "--report-to", "/r"]);
        let Prepared { argv, env, .. } =
            prepare(&spec("RUN_INGEST", &[("recipe", "{}"), ("debug_mode", "true")]), Path::new("/r")).unwrap();
        assert_eq!(argv[0], "--debug");
        assert_eq!(env["DATAHUB_DEBUG"], "true");
    }

    #[test]
    fn bad_args_are_named() {
        let cases = [
            (spec("RUN_SOMETHING", &[("recipe", "{}")]), "Failed to find task with name=RUN_SOMETHING"),
            (spec("RUN_INGEST", &[]), "The task has no recipe argument"),
            (spec("RUN_INGEST", &[("recipe", "[]")]), "The recipe must be a JSON object"),
            (
                spec("RUN_INGEST", &[("recipe", "{}"), ("extra_env_vars", "x")]),
                "extra_env_vars is not a JSON object: expected value at line 1 column 1",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(prepare(&input, Path::new("/r")).err().as_deref(), Some(want));
        }
    }

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
