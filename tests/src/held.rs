//! Runs whose length the test decides (issue 23): recipes for the tests' own DataHub source
//! (`tests/datahub_plugin/outpost_test_source.py`, loaded by the real `datahub` CLI), which emits a few records
//! and then holds until the test releases it, or for a set time. Never a data size chosen for how long the CPU
//! takes over it.

use std::path::PathBuf;
use std::time::Duration;

use super::{Cluster, wait_until};

/// Records every held run emits before it holds (the sink's `total_records_written`).
pub const HELD_RECORDS: u64 = 3;

/// How long a `datahub` CLI may take to start and reach its source on a loaded 2-core machine (measured: 3 s idle,
/// 15 s beside a CPU hog and another test). Bounds a process start, not a data size.
pub const CLI_START: Duration = Duration::from_secs(60);

/// A run that holds until [`HeldRun::release`]: every attempt of it, on any agent, waits for the same release.
pub struct HeldRun {
    dir: PathBuf,
}

impl HeldRun {
    /// The recipe (DataHub's `recipe` arg) of this run.
    pub fn recipe(&self) -> String {
        serde_json::json!({
            "source": {"type": "outpost_test_source.HeldSource",
                       "config": {"records": HELD_RECORDS,
                                  "release_file": self.dir.join("release"),
                                  "started_dir": self.dir.join("started")}},
            "sink": {"type": "blackhole"}
        })
        .to_string()
    }

    /// Lets every attempt (running or still to come) finish.
    pub fn release(&self) {
        std::fs::write(self.dir.join("release"), b"released\n").expect("write the release file");
    }

    /// How many attempts' CLIs have reached the hold (the source marks each with its pid).
    pub fn started(&self) -> usize {
        std::fs::read_dir(self.dir.join("started")).map(|d| d.count()).unwrap_or(0)
    }

    /// Waits until `n` attempts' CLIs hold: the CLI started, loaded the source and emitted its records.
    pub async fn wait_started(&self, n: usize) {
        wait_until(&format!("{n} attempt(s) of the held run to hold"), CLI_START, || {
            let started = self.started();
            async move { (started >= n).then_some(()) }
        })
        .await;
    }
}

impl Cluster {
    /// A new run that holds until released; `name` keeps runs of one test apart.
    pub fn held_run(&self, name: &str) -> HeldRun {
        let dir = self.path(&format!("held-{name}"));
        std::fs::create_dir_all(&dir).expect("create the held run's dir");
        HeldRun { dir }
    }
}

/// A recipe for a run that holds for `seconds` after emitting its records, then ends by itself: for runs that
/// must last at least that long and need no signal from the test.
pub fn timed_recipe(seconds: f64) -> String {
    serde_json::json!({
        "source": {"type": "outpost_test_source.HeldSource",
                   "config": {"records": HELD_RECORDS, "hold_seconds": seconds}},
        "sink": {"type": "blackhole"}
    })
    .to_string()
}

/// The uv cache the venv tests give agents: the one `scripts/setup-python.sh --warm-venv-cache` fills before
/// the suite starts (`OUTPOST_TEST_UV_CACHE`, else `$XDG_CACHE_HOME` or `~/.cache`, then `outpost-tests/uv`).
pub fn uv_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OUTPOST_TEST_UV_CACHE") {
        return dir.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
    base.join("outpost-tests/uv")
}

/// An agent's environment for pinned-version builds with the real installer: the venv's `uv` on PATH and the
/// warmed cache shared by every agent of every test (as a volume would be).
pub fn uv_installer_env() -> Vec<(String, String)> {
    let path =
        format!("{}:{}", super::repo_root().join(".venv/bin").display(), std::env::var("PATH").unwrap_or_default());
    let cache = uv_cache_dir();
    std::fs::create_dir_all(&cache).expect("create the uv cache dir");
    vec![("PATH".into(), path), ("UV_CACHE_DIR".into(), cache.to_string_lossy().into_owned())]
}
