//! The agent's metrics (slots, runs by outcome, connection) as Prometheus text on `--metrics-listen`, with
//! `/healthz` and `/readyz` (connected to the controller). Recording is an atomic store or add.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_common::metrics::{family, sample};
use outpost_common::task::ResultStatus;

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: AtomicU64,
    busy: AtomicU64,
    connected: AtomicU64,
    runs: [AtomicU64; 5],
    /// Venv look-ups: found ready, had to build.
    venv_cache: [AtomicU64; 2],
    /// Venv builds by outcome (ok, failed), and their total time in milliseconds.
    venv_builds: [AtomicU64; 2],
    venv_build_ms: AtomicU64,
    venv_bytes: AtomicU64,
}

impl Metrics {
    pub fn set_slots(&self, slots: u32) {
        self.inner.slots.store(u64::from(slots), Ordering::Relaxed);
    }

    pub fn set_busy(&self, busy: usize) {
        self.inner.busy.store(busy as u64, Ordering::Relaxed);
    }

    pub fn set_connected(&self, connected: bool) {
        self.inner.connected.store(u64::from(connected), Ordering::Relaxed);
    }

    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed) == 1
    }

    pub fn run_ended(&self, status: ResultStatus) {
        let index = ResultStatus::ALL.iter().position(|s| *s == status).unwrap_or(0);
        self.inner.runs[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn venv_cache(&self, hit: bool) {
        self.inner.venv_cache[usize::from(!hit)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn venv_built(&self, seconds: f64, ok: bool) {
        self.inner.venv_builds[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        self.inner.venv_build_ms.fetch_add((seconds * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn set_venv_bytes(&self, bytes: u64) {
        self.inner.venv_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let inner = &self.inner;
        let mut out = String::new();
        family(&mut out, "outpost_agent_slots", "gauge", "Task slots of this agent, used and total.");
        sample(&mut out, "outpost_agent_slots", &[("state", "used")], inner.busy.load(Ordering::Relaxed) as f64);
        sample(&mut out, "outpost_agent_slots", &[("state", "total")], inner.slots.load(Ordering::Relaxed) as f64);
        family(&mut out, "outpost_agent_runs_total", "counter", "Runs finished, by outcome.");
        for (status, n) in ResultStatus::ALL.iter().zip(&inner.runs) {
            sample(
                &mut out,
                "outpost_agent_runs_total",
                &[("outcome", status.as_str())],
                n.load(Ordering::Relaxed) as f64,
            );
        }
        let help = "Venv look-ups of pinned-version runs and warm-ups: found ready (hit) or built (miss).";
        family(&mut out, "outpost_agent_venv_cache_total", "counter", help);
        for (result, n) in ["hit", "miss"].iter().zip(&inner.venv_cache) {
            let value = n.load(Ordering::Relaxed) as f64;
            sample(&mut out, "outpost_agent_venv_cache_total", &[("result", result)], value);
        }
        family(&mut out, "outpost_agent_venv_builds_total", "counter", "Venv builds, by outcome.");
        for (outcome, n) in ["ok", "failed"].iter().zip(&inner.venv_builds) {
            let value = n.load(Ordering::Relaxed) as f64;
            sample(&mut out, "outpost_agent_venv_builds_total", &[("outcome", outcome)], value);
        }
        let help = "Time spent building venvs, in seconds (with outpost_agent_venv_builds_total: the mean).";
        family(&mut out, "outpost_agent_venv_build_seconds_total", "counter", help);
        let seconds = inner.venv_build_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        sample(&mut out, "outpost_agent_venv_build_seconds_total", &[], seconds);
        family(&mut out, "outpost_agent_venv_bytes", "gauge", "Bytes held by the ready venvs under --venv-root.");
        sample(&mut out, "outpost_agent_venv_bytes", &[], inner.venv_bytes.load(Ordering::Relaxed) as f64);
        family(&mut out, "outpost_agent_connected", "gauge", "1 while a session with the controller is open.");
        sample(&mut out, "outpost_agent_connected", &[], inner.connected.load(Ordering::Relaxed) as f64);
        out
    }

    /// Answers `/metrics`, `/healthz` and `/readyz`.
    pub fn answer(&self, path: &str) -> outpost_common::metrics::Answer {
        match path {
            "/metrics" => (200, outpost_common::metrics::PROMETHEUS_TEXT, self.render()),
            "/healthz" => (200, "text/plain", "ok\n".to_owned()),
            "/readyz" if self.is_connected() => (200, "text/plain", "ready\n".to_owned()),
            "/readyz" => (503, "text/plain", "not connected\n".to_owned()),
            _ => (404, "text/plain", "not found\n".to_owned()),
        }
    }
}
