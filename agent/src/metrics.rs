//! The agent's metrics (slots, runs by outcome, connection, venvs) with the `prometheus-client` crate, exposed as
//! OpenMetrics text on `--metrics-listen` with `/healthz` and `/readyz` (connected to the controller). Recording
//! is an atomic store or add.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use outpost_common::label_enum;
use outpost_common::task::ResultStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

label_enum! {
    /// Which count of slots.
    enum SlotCount {
        Used => "used",
        Total => "total",
    }
}

label_enum! {
    /// A venv look-up found it ready (hit) or had to build it (miss).
    enum Lookup {
        Hit => "hit",
        Miss => "miss",
    }
}

label_enum! {
    /// How a venv build went.
    enum BuildOutcome {
        Ok => "ok",
        Failed => "failed",
    }
}

label_enum! {
    /// What a look at changed certificate files did.
    enum Reload {
        Loaded => "loaded",
        /// The last good files stay in use.
        Failed => "failed",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabel {
    state: SlotCount,
}

/// `outcome`: a result status's wire name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupLabel {
    result: Lookup,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    outcome: BuildOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabel {
    outcome: Reload,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    slots: Family<SlotLabel, Gauge>,
    connected: Gauge,
    runs: Family<RunLabel, Counter>,
    /// Venv look-ups: found ready (hit), had to build (miss).
    venv_cache: Family<LookupLabel, Counter>,
    venv_builds: Family<BuildLabel, Counter>,
    venv_build_seconds: Counter<f64, AtomicU64>,
    venv_bytes: Gauge,
    venv_budget: Gauge,
    connection_failures: Counter,
    tls_reloads: Family<ReloadLabel, Counter>,
    attempts_disowned: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let inner = Inner {
            registry: Registry::default(),
            slots: Family::default(),
            connected: Gauge::default(),
            runs: Family::default(),
            venv_cache: Family::default(),
            venv_builds: Family::default(),
            venv_build_seconds: Counter::default(),
            venv_bytes: Gauge::default(),
            venv_budget: Gauge::default(),
            connection_failures: Counter::default(),
            tls_reloads: Family::default(),
            attempts_disowned: Counter::default(),
        };
        registry.register("outpost_agent_slots", "Task slots of this agent, used and total", inner.slots.clone());
        registry.register("outpost_agent_runs", "Runs finished, by outcome", inner.runs.clone());
        registry.register(
            "outpost_agent_connected",
            "1 while a session with the controller is open",
            inner.connected.clone(),
        );
        registry.register(
            "outpost_agent_venv_cache",
            "Venv look-ups of pinned-version runs and warm-ups: found ready (hit) or built (miss)",
            inner.venv_cache.clone(),
        );
        registry.register("outpost_agent_venv_builds", "Venv builds, by outcome", inner.venv_builds.clone());
        registry.register(
            "outpost_agent_venv_build_seconds",
            "Time spent building venvs, in seconds (with outpost_agent_venv_builds_total: the mean)",
            inner.venv_build_seconds.clone(),
        );
        registry.register(
            "outpost_agent_venv_bytes",
            "Bytes held by the ready venvs under --venv-root",
            inner.venv_bytes.clone(),
        );
        registry.register(
            "outpost_agent_venv_budget_bytes",
            "The venvs' disk budget (--venv-max-bytes; 0 = none)",
            inner.venv_budget.clone(),
        );
        registry.register(
            "outpost_agent_connection_failures",
            "Sessions with the controller that failed to open or were lost (each is followed by a reconnect)",
            inner.connection_failures.clone(),
        );
        registry.register(
            "outpost_agent_tls_reloads",
            "Changed certificate files seen before a connection, by outcome (loaded, or failed: the last good \
             ones stay in use)",
            inner.tls_reloads.clone(),
        );
        registry.register(
            "outpost_agent_attempts_disowned",
            "Attempts the controller said were no longer this agent's (reassigned or refused), stopped",
            inner.attempts_disowned.clone(),
        );
        // Every series exists from the start (a scrape shows zeros, not gaps).
        for &outcome in Reload::ALL {
            let _ = inner.tls_reloads.get_or_create(&ReloadLabel { outcome });
        }
        for &state in SlotCount::ALL {
            let _ = inner.slots.get_or_create(&SlotLabel { state });
        }
        for status in ResultStatus::ALL {
            let _ = inner.runs.get_or_create(&RunLabel { outcome: status.as_str() });
        }
        for &result in Lookup::ALL {
            let _ = inner.venv_cache.get_or_create(&LookupLabel { result });
        }
        for &outcome in BuildOutcome::ALL {
            let _ = inner.venv_builds.get_or_create(&BuildLabel { outcome });
        }
        Metrics { inner: Arc::new(Inner { registry, ..inner }) }
    }
}

impl Metrics {
    pub fn set_slots(&self, slots: u32) {
        self.inner.slots.get_or_create(&SlotLabel { state: SlotCount::Total }).set(i64::from(slots));
    }

    pub fn set_busy(&self, busy: usize) {
        let busy = i64::try_from(busy).unwrap_or(i64::MAX);
        self.inner.slots.get_or_create(&SlotLabel { state: SlotCount::Used }).set(busy);
    }

    pub fn set_connected(&self, connected: bool) {
        self.inner.connected.set(i64::from(connected));
    }

    pub fn is_connected(&self) -> bool {
        self.inner.connected.get() == 1
    }

    pub fn run_ended(&self, status: ResultStatus) {
        self.inner.runs.get_or_create(&RunLabel { outcome: status.as_str() }).inc();
    }

    pub fn connection_failed(&self) {
        self.inner.connection_failures.inc();
    }

    /// Changed certificate files were loaded (`true`) or could not be (the last good ones stay).
    pub fn tls_reloaded(&self, loaded: bool) {
        let outcome = if loaded { Reload::Loaded } else { Reload::Failed };
        self.inner.tls_reloads.get_or_create(&ReloadLabel { outcome }).inc();
    }

    pub fn attempt_disowned(&self) {
        self.inner.attempts_disowned.inc();
    }

    pub fn venv_cache(&self, hit: bool) {
        let result = if hit { Lookup::Hit } else { Lookup::Miss };
        self.inner.venv_cache.get_or_create(&LookupLabel { result }).inc();
    }

    pub fn venv_built(&self, seconds: f64, ok: bool) {
        let outcome = if ok { BuildOutcome::Ok } else { BuildOutcome::Failed };
        self.inner.venv_builds.get_or_create(&BuildLabel { outcome }).inc();
        self.inner.venv_build_seconds.inc_by(seconds);
    }

    pub fn set_venv_budget(&self, bytes: u64) {
        self.inner.venv_budget.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn set_venv_bytes(&self, bytes: u64) {
        self.inner.venv_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn render(&self) -> String {
        outpost_common::metrics::encode(&self.inner.registry)
    }

    /// `/metrics`, `/healthz`, and `/readyz` (ready while connected to the controller).
    pub fn probes(&self) -> outpost_common::metrics::Probes {
        let (scraped, probed) = (self.clone(), self.clone());
        outpost_common::metrics::Probes {
            exposition: Arc::new(move || {
                let text = scraped.render();
                Box::pin(async move { text })
            }),
            ready: Arc::new(move || {
                let ready = probed.is_connected();
                Box::pin(async move { (ready, if ready { "ready" } else { "not connected" }.to_owned()) })
            }),
        }
    }
}
