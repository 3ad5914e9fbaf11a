//! Which `datahub` runs a task: `version: native` (or no `--venv-root`) is the CLI on PATH / `--datahub-cli`; a
//! pinned version gets a cached virtualenv `<venv-root>/<plugin>-<hash(version, requirements, plugins)>` with
//! `acryl-datahub[<plugin>,...]==<version>`, built once (one builder per venv at a time), with `uv` when it is on
//! PATH, else `python -m venv` + pip. A failed build fails the task with the installer's output. With
//! `--venv-max-bytes`, after each build the least recently used venvs that no run is using are deleted until the
//! ready venvs fit (a venv in use is never deleted: each run holds a lease on its venv). A venv root that cannot be
//! written is refused when the agent starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::process::Command;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::metrics::Metrics;

pub use outpost_common::venv::HeldVenv;

/// What a task asks for.
pub use outpost_common::venv::VenvSpec as Request;

/// Why a venv could not be used; the message goes to the task's log (and fails the task) or, for the root, stops
/// the agent at start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the venv root {} cannot be written: {source} (give --venv-root a writable volume)", root.display())]
    RootNotWritable { root: PathBuf, source: std::io::Error },
    #[error("cannot create {}: {source}", dir.display())]
    Create { dir: PathBuf, source: std::io::Error },
    #[error("cannot mark the venv ready: {0}")]
    MarkReady(std::io::Error),
    #[error("cannot run {}: {source}", program.display())]
    Spawn { program: PathBuf, source: std::io::Error },
    /// The installer failed; `tail` is the end of its output.
    #[error("Failed to set up virtual environment: {} exited with {status}:\n{tail}", program.display())]
    Installer { program: PathBuf, status: std::process::ExitStatus, tail: String },
}

/// Chooses (and builds) virtualenvs.
#[derive(Debug)]
pub struct Venvs {
    /// The CLI used for `native`.
    pub native_cli: PathBuf,
    pub root: Option<PathBuf>,
    /// The interpreter new venvs are made from.
    pub python: PathBuf,
    /// Ready venvs are evicted (least recently used first, never one in use) beyond this many bytes.
    pub max_bytes: Option<u64>,
    locks: outpost_common::locks::KeyedLocks<String>,
    /// Runs using each venv now.
    in_use: Arc<Mutex<HashMap<String, usize>>>,
    /// The ready venvs, for the controller (sent in Hello and whenever this changes).
    held: watch::Sender<Vec<HeldVenv>>,
    /// Warm-up builds go one at a time.
    warming: Semaphore,
    metrics: Metrics,
}

/// The CLI a run uses, and its hold on the venv it lives in (released when the run ends).
#[derive(Debug)]
pub struct VenvUse {
    pub cli: PathBuf,
    _lease: Option<Lease>,
}

#[derive(Debug)]
struct Lease {
    name: String,
    in_use: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = in_use.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.name);
            }
        }
    }
}

/// Which `datahub` runs (flags).
#[derive(Clone, Debug, clap::Args)]
#[group(id = "venvs")]
#[command(next_help_heading = "DataHub CLI")]
pub struct Args {
    /// The `datahub` executable (default: `datahub` on PATH).
    #[arg(long, env = "OUTPOST_DATAHUB_CLI", default_value = "datahub")]
    pub datahub_cli: PathBuf,
    /// Where per-version virtualenvs are built and cached; without it every task uses --datahub-cli.
    #[arg(long, env = "OUTPOST_VENV_ROOT")]
    pub venv_root: Option<PathBuf>,
    /// The Python interpreter new virtualenvs are made from.
    #[arg(long, env = "OUTPOST_VENV_PYTHON", default_value = "python3")]
    pub venv_python: PathBuf,
    /// Disk budget of the venvs under --venv-root: beyond it the least recently used ones no run is using are
    /// deleted (0: no budget).
    #[arg(long, env = "OUTPOST_VENV_MAX_BYTES", default_value_t = 0)]
    pub venv_max_bytes: u64,
    /// Venvs to build in the background at start, before work needing them arrives: `VERSION:PLUGIN`
    /// (e.g. `1.7.0.17:mysql`), repeated or comma-separated. Needs --venv-root.
    #[arg(long = "warm", env = "OUTPOST_WARM", value_delimiter = ',', value_parser = Request::parse_pair)]
    pub warm: Vec<Request>,
}

/// Written into a venv once its build finished.
const READY_MARKER: &str = ".outpost-ready";

impl Venvs {
    pub fn new(args: Args, metrics: Metrics) -> Venvs {
        metrics.set_venv_budget(args.venv_max_bytes);
        Venvs {
            native_cli: args.datahub_cli,
            root: args.venv_root,
            python: args.venv_python,
            max_bytes: (args.venv_max_bytes > 0).then_some(args.venv_max_bytes),
            locks: Default::default(),
            in_use: Arc::default(),
            held: watch::Sender::new(Vec::new()),
            warming: Semaphore::new(1),
            metrics,
        }
    }

    /// The ready venvs now and from now on.
    pub fn subscribe(&self) -> watch::Receiver<Vec<HeldVenv>> {
        self.held.subscribe()
    }

    /// Reads which venvs are ready (and their sizes) from the disk and publishes them.
    pub async fn refresh(&self) {
        self.rescan(false).await;
    }

    /// One read of the disk: the ready venvs; with `evict` and a budget, the least recently used ones no run uses
    /// are deleted until the rest fit. Publishes what is left; returns the names deleted.
    async fn rescan(&self, evict: bool) -> Vec<String> {
        let Some(root) = self.root.clone() else { return Vec::new() };
        let budget = if evict { self.max_bytes } else { None };
        let in_use: Vec<String> = self.in_use.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        let (held, deleted) = tokio::task::spawn_blocking(move || {
            let mut held = scan_blocking(&root);
            let deleted = budget.map_or_else(Vec::new, |max| evict_blocking(&root, max, &in_use, &mut held));
            (held, deleted)
        })
        .await
        .unwrap_or_default();
        self.metrics.set_venv_bytes(held.iter().map(|v| v.bytes).sum());
        self.held.send_if_modified(|current| {
            let changed = *current != held;
            *current = held;
            changed
        });
        deleted
    }

    /// Builds the venvs asked for ahead of need (at start with --warm, and when the controller asks), each as its
    /// own build; stops taking requests when `token` is cancelled or every sender is gone, then waits for the
    /// builds under way (the supervisor bounds that wait).
    pub async fn warm_ups(
        self: Arc<Self>,
        mut asked: tokio::sync::mpsc::UnboundedReceiver<Request>,
        token: tokio_util::sync::CancellationToken,
    ) {
        let mut building = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                spec = asked.recv() => match spec {
                    Some(spec) => {
                        let venvs = self.clone();
                        building.spawn(async move { venvs.warm(spec).await });
                    }
                    None => break,
                },
                Some(_) = building.join_next(), if !building.is_empty() => {}
            }
        }
        while building.join_next().await.is_some() {}
    }

    /// Builds a venv ahead of need (at start with --warm, or when the controller asks), one such build at a
    /// time; a venv already ready only has its use time renewed.
    pub async fn warm(&self, spec: Request) {
        if self.root.is_none() {
            warn!(requirement = %spec.datahub_requirement(), "cannot warm a venv without --venv-root");
            return;
        }
        let _one_at_a_time = self.warming.acquire().await;
        info!(venv = %spec.key(), requirement = %spec.datahub_requirement(), "warming a venv");
        let mut note = |line: String| tracing::debug!(line, "warm-up");
        match self.cli_for(&spec, &mut note).await {
            Ok(_) => info!(venv = %spec.key(), "venv warm"),
            Err(e) => warn!(venv = %spec.key(), error = %e, "warming a venv failed"),
        }
    }

    /// The venv `name` was just used: its last use moves on (what the controller shows).
    fn touched(&self, name: &str) {
        self.held.send_if_modified(|held| match held.iter_mut().find(|v| v.key.as_str() == name) {
            Some(venv) => {
                venv.last_used_ms = outpost_common::clock::unix_ms();
                true
            }
            None => false,
        });
    }

    /// Refuses a venv root that cannot be written (at start, with the reason), creating it if missing.
    pub fn check_root(&self) -> Result<(), Error> {
        let Some(root) = &self.root else { return Ok(()) };
        let probe = root.join(".outpost-write-probe");
        std::fs::create_dir_all(root)
            .and_then(|()| std::fs::write(&probe, b"ok"))
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|source| Error::RootNotWritable { root: root.clone(), source })
    }

    fn lease(&self, name: &str) -> Lease {
        *self.in_use.lock().unwrap_or_else(|e| e.into_inner()).entry(name.to_owned()).or_default() += 1;
        Lease { name: name.to_owned(), in_use: self.in_use.clone() }
    }

    /// Deletes least recently used ready venvs that no run uses until the rest fit in the budget, and publishes
    /// what is left. Returns the names deleted.
    pub async fn evict(&self) -> Vec<String> {
        self.rescan(true).await
    }

    /// The `datahub` executable for a request, building its venv if needed. `note` receives progress lines for
    /// the task's log; the error is the installer's output.
    pub async fn cli_for(&self, request: &Request, note: &mut (dyn FnMut(String) + Send)) -> Result<VenvUse, Error> {
        let native = VenvUse { cli: self.native_cli.clone(), _lease: None };
        let Some(root) = &self.root else { return Ok(native) };
        if request.is_native() {
            return Ok(native);
        }
        let name = request.key().to_string();
        // Held from before the build, so an eviction never takes a venv a run is about to use.
        let lease = self.lease(&name);
        let dir = root.join(&name);
        let cli = dir.join("bin").join("datahub");
        let lock = self.locks.of(&name);
        let _building = lock.lock().await;
        // Built in place (venv scripts hold absolute paths); the marker says the build finished.
        let ready = dir.join(READY_MARKER);
        if tokio::fs::try_exists(&ready).await.unwrap_or(false) {
            note(format!("Using the cached venv {name} for plugin '{}'", request.plugin));
            // Rewritten so its time says when it was last used (the eviction order).
            let _ = tokio::fs::write(&ready, request.datahub_requirement()).await;
            self.metrics.venv_cache(true);
            self.touched(&name);
            return Ok(VenvUse { cli, _lease: Some(lease) });
        }
        note(format!(
            "Setting up venv for plugin '{}' with version '{}' in {}",
            request.plugin,
            request.version.as_deref().unwrap_or("latest"),
            dir.display()
        ));
        info!(venv = %dir.display(), requirement = %request.datahub_requirement(), "building virtualenv");
        let _ = tokio::fs::remove_dir_all(&dir).await;
        tokio::fs::create_dir_all(root).await.map_err(|source| Error::Create { dir: root.clone(), source })?;
        self.metrics.venv_cache(false);
        let started = std::time::Instant::now();
        let built = self.build(request, &dir, note).await;
        self.metrics.venv_built(started.elapsed().as_secs_f64(), built.is_ok());
        if let Err(e) = built {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(e);
        }
        tokio::fs::write(&ready, request.datahub_requirement()).await.map_err(Error::MarkReady)?;
        note(format!("Venv ready at: {}", dir.display()));
        for evicted in self.evict().await {
            note(format!("Deleted the least recently used venv {evicted} (over --venv-max-bytes)"));
        }
        Ok(VenvUse { cli, _lease: Some(lease) })
    }

    async fn build(&self, request: &Request, dir: &Path, note: &mut (dyn FnMut(String) + Send)) -> Result<(), Error> {
        let uv = which("uv");
        let python_in_venv = dir.join("bin").join("python");
        let mut install: Vec<String> = vec![request.datahub_requirement()];
        install.extend(request.extra_requirements.iter().cloned());
        match &uv {
            Some(uv) => {
                let venv_args = vec!["venv".to_owned(), "--python".to_owned(), path_text(&self.python), path_text(dir)];
                run(uv, &venv_args, note).await?;
                let mut args =
                    vec!["pip".to_owned(), "install".to_owned(), "--python".to_owned(), path_text(&python_in_venv)];
                args.extend(install);
                run(uv, &args, note).await
            }
            None => {
                let venv_args = vec!["-m".to_owned(), "venv".to_owned(), path_text(dir)];
                run(&self.python, &venv_args, note).await?;
                let mut args = vec![
                    "-m".to_owned(),
                    "pip".to_owned(),
                    "install".to_owned(),
                    "--quiet".to_owned(),
                    "--disable-pip-version-check".to_owned(),
                ];
                args.extend(install);
                run(&python_in_venv, &args, note).await
            }
        }
    }
}

/// Bytes under a directory (symlinks not followed).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// Every ready venv under `root`, by key.
fn scan_blocking(root: &Path) -> Vec<HeldVenv> {
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    let mut held: Vec<HeldVenv> = entries
        .flatten()
        .filter_map(|entry| {
            let marker = entry.path().join(READY_MARKER);
            let used = marker.metadata().ok()?.modified().ok()?;
            // Venvs are named by their key; anything else under the root is not one of ours.
            let key = outpost_common::venv::VenvKey::parse(&entry.file_name().to_string_lossy()).ok()?;
            Some(HeldVenv {
                key,
                requirement: std::fs::read_to_string(&marker).unwrap_or_default().trim().to_owned(),
                bytes: dir_bytes(&entry.path()),
                last_used_ms: used
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, outpost_common::duration::signed_millis),
            })
        })
        .collect();
    held.sort_by(|a, b| a.key.cmp(&b.key));
    held
}

/// Deletes from `ready` (and the disk) the least recently used venvs not `in_use` until the rest fit in `max`.
fn evict_blocking(root: &Path, max: u64, in_use: &[String], ready: &mut Vec<HeldVenv>) -> Vec<String> {
    let mut total: u64 = ready.iter().map(|v| v.bytes).sum();
    let mut oldest_first: Vec<&HeldVenv> = ready.iter().collect();
    oldest_first.sort_by(|a, b| a.last_used_ms.cmp(&b.last_used_ms).then_with(|| a.key.cmp(&b.key)));
    let mut deleted = Vec::new();
    for venv in oldest_first {
        if total <= max {
            break;
        }
        if in_use.iter().any(|name| name == venv.key.as_str()) {
            continue;
        }
        if std::fs::remove_dir_all(root.join(venv.key.as_str())).is_ok() {
            info!(venv = %venv.key, bytes = venv.bytes, "venv evicted: over the disk budget");
            total -= venv.bytes;
            deleted.push(venv.key.to_string());
        }
    }
    ready.retain(|v| !deleted.iter().any(|name| name == v.key.as_str()));
    deleted
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// An executable on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(name)).find(|p| p.is_file())
}

/// Variables the installer may see: where to find things, how to reach the package index, its own settings.
/// Nothing else of the agent's environment (which may hold secrets for recipes) reaches it.
fn installer_may_see(name: &str) -> bool {
    const EXACT: [&str; 16] = [
        "PATH",
        "HOME",
        "USER",
        "LANG",
        "TMPDIR",
        "TEMP",
        "TMP",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "XDG_CACHE_HOME",
        "SOURCE_DATE_EPOCH",
    ];
    const PREFIXES: [&str; 3] = ["UV_", "PIP_", "LC_"];
    EXACT.contains(&name)
        || EXACT.iter().any(|e| e.ends_with("PROXY") && name == e.to_ascii_lowercase())
        || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Runs an installer step with only the variables it may see; on failure the error is the tail of its output.
async fn run(program: &Path, args: &[String], note: &mut (dyn FnMut(String) + Send)) -> Result<(), Error> {
    note(format!("Running: {} {}", program.display(), args.join(" ")));
    let output = Command::new(program)
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| name.to_str().is_some_and(installer_may_see)))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|source| Error::Spawn { program: program.to_owned(), source })?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    for line in text.lines() {
        note(line.to_owned());
    }
    if output.status.success() {
        return Ok(());
    }
    let tail: Vec<&str> = text.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
    Err(Error::Installer { program: program.to_owned(), status: output.status, tail: tail.join("\n") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cli: &str, root: &str, max_bytes: u64) -> Args {
        Args {
            datahub_cli: cli.into(),
            venv_root: Some(root.into()),
            venv_python: "python3".into(),
            venv_max_bytes: max_bytes,
            warm: Vec::new(),
        }
    }

    #[tokio::test]
    async fn native_needs_no_build() {
        let venvs = Venvs::new(args("/opt/datahub", "/nonexistent", 0), Metrics::default());
        let mut notes = Vec::new();
        let used = venvs
            .cli_for(
                &Request { version: Some("native".into()), ..Request::pinned("1.0", "mysql").unwrap() },
                &mut |line| notes.push(line),
            )
            .await
            .unwrap();
        assert_eq!(used.cli, PathBuf::from("/opt/datahub"));
        assert!(notes.is_empty());
    }

    /// A ready venv of `bytes` bytes, last used `age` seconds ago.
    fn fake_venv(root: &Path, name: &str, bytes: usize, age: u64) {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("lib").join("payload"), vec![0u8; bytes]).unwrap();
        let marker = dir.join(READY_MARKER);
        std::fs::write(&marker, "acryl-datahub").unwrap();
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
        std::fs::File::options().write(true).open(&marker).unwrap().set_modified(when).unwrap();
    }

    #[tokio::test]
    async fn the_least_recently_used_venvs_no_run_uses_go_first_until_the_rest_fit() {
        let root = tempfile::tempdir().unwrap();
        let mut venvs = Venvs::new(args("datahub", root.path().to_str().unwrap(), 2500), Metrics::default());
        venvs.check_root().unwrap();
        fake_venv(root.path(), "oldest", 1000, 300);
        fake_venv(root.path(), "older-in-use", 1000, 200);
        fake_venv(root.path(), "recent", 1000, 10);
        std::fs::create_dir_all(root.path().join("half-built")).unwrap(); // no marker: not a ready venv
        let lease = venvs.lease("older-in-use");
        // 3,000+ bytes over 2,500: the oldest unused one goes; the one in use stays although it is older.
        assert_eq!(venvs.evict().await, ["oldest"]);
        assert!(root.path().join("older-in-use").exists() && root.path().join("recent").exists());
        venvs.max_bytes = Some(1500);
        assert_eq!(venvs.evict().await, ["recent"], "in use beats recently used");
        drop(lease);
        venvs.max_bytes = Some(10);
        assert_eq!(venvs.evict().await, ["older-in-use"], "released, it may go");
        assert!(root.path().join("half-built").exists(), "a venv being built is not touched");
    }

    #[test]
    fn an_unwritable_venv_root_is_refused_with_the_reason() {
        let venvs = Venvs::new(args("datahub", "/proc/outpost-venvs", 0), Metrics::default());
        let error = venvs.check_root().unwrap_err().to_string();
        assert!(error.starts_with("the venv root /proc/outpost-venvs cannot be written:"), "{error}");
    }

    #[tokio::test]
    async fn the_installer_sees_its_settings_and_never_the_agents_other_variables() {
        // SAFETY: set before anything else of this test reads the environment; no other test reads these names.
        unsafe {
            std::env::set_var("OUTPOST_TEST_RECIPE_PASSWORD", "hunter2-secret");
            std::env::set_var("UV_TEST_SETTING", "kept");
        }
        let mut lines = Vec::new();
        run(Path::new("/usr/bin/env"), &[], &mut |line| lines.push(line)).await.unwrap();
        let text = lines.join("\n");
        assert!(text.contains("UV_TEST_SETTING=kept") && text.contains("PATH="), "{text}");
        assert!(!text.contains("hunter2-secret"), "{text}");
        assert!(
            installer_may_see("https_proxy")
                && installer_may_see("PIP_INDEX_URL")
                && !installer_may_see("AWS_SECRET_ACCESS_KEY")
        );
    }
}
