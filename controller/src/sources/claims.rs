//! Claims at GMS, as intake makes them: before a request is taken in, this controller writes PENDING to its
//! result aspect with a conditional write (`If-Version-Match`, datahub-protocol.md §2.6) naming itself, so that of
//! several controllers serving a pool exactly one runs it. A request another holder keeps renewing is left alone;
//! one whose result has not changed for `--claim-ttl` (measured on this controller's own clock from when it first
//! saw that version, so clocks need not agree) is taken over with a conditional write on the version it read.
//! Against a GMS without conditional writes it says so once and claims nothing (every request is taken in, as
//! before). Owns the claim decision; never runs or reports a task.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use outpost_common::clock::unix_ms;
use outpost_common::ids::{AspectVersion, PoolId, TaskId};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::gms::{self, ResultState};

/// Statuses of a request someone holds but has not finished.
const HELD: [&str; 2] = ["PENDING", "RUNNING"];

/// What became of a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Ours: take the request in; its writes are conditional on this version (`None`: claims are off).
    Won(Option<AspectVersion>),
    /// GMS has a final status for it: nothing to run.
    Finished(String),
    /// Another controller (or executor) holds it and has renewed it within the claim TTL.
    HeldElsewhere { holder: Option<String> },
    /// Another controller claimed it between our read and our write.
    Lost,
}

/// A request another holder had, as a watch sees it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Watched {
    /// Its holder renews it: keep watching.
    Renewed,
    /// Unrenewed for the claim TTL: try to take it over.
    Unrenewed,
    /// Finished: nothing to run, stop watching.
    Finished,
    /// No holder now, or it is ours: the search finds it (or already has); stop watching.
    Free,
}

/// The claim maker of one controller.
pub struct Claims {
    gms: gms::Client,
    holder: String,
    ttl: Duration,
    conditional: bool,
    /// The result version last seen per request another holder has, and since when (this clock).
    seen: Mutex<HashMap<String, (AspectVersion, Instant)>>,
}

impl Claims {
    /// Asks GMS whether it does conditional writes (once; an unreadable `/config` counts as no, said in the log).
    pub async fn start(gms: gms::Client, holder: String, ttl: Duration) -> Claims {
        let conditional = match gms.server_info().await {
            Ok(server) if server.conditional_writes => {
                info!(version = %server.version, holder = %holder, "claims at GMS: conditional writes");
                true
            }
            Ok(server) => {
                warn!(
                    version = %server.version,
                    "this GMS has no conditional writes (DataHub before v0.14.0): requests are not claimed at GMS, so \
                     two controllers serving one pool could both run a request; run one controller per pool"
                );
                false
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "cannot read GMS's /config to learn whether it does conditional writes: requests are not claimed \
                     at GMS; run one controller per pool"
                );
                false
            }
        };
        Claims { gms, holder, ttl, conditional, seen: Mutex::new(HashMap::new()) }
    }

    /// Whether claims are made at all.
    pub fn active(&self) -> bool {
        self.conditional
    }

    /// How long a claim lasts unrenewed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Claims request `id` of `pool`. `known`: its result as just re-read (`Some(None)`: it has none), else it
    /// is read here.
    pub async fn claim(
        &self,
        id: &TaskId,
        pool: &PoolId,
        known: Option<Option<ResultState>>,
    ) -> Result<Claim, gms::Error> {
        if !self.conditional {
            return Ok(Claim::Won(None));
        }
        let urn = id.urn();
        let current = match known {
            Some(known) => known,
            None => self.gms.read_result(&urn).await?,
        };
        let Some(current) = current else {
            let report =
                format!("Claimed by Outpost controller {} for pool {pool}; waiting for an agent.\n", self.holder);
            return self.write(&urn, &report, AspectVersion::absent()).await;
        };
        if current.holder.as_deref() == Some(self.holder.as_str()) {
            return Ok(Claim::Won(Some(current.version)));
        }
        if !HELD.contains(&current.status.as_str()) {
            return Ok(Claim::Finished(current.status));
        }
        if !self.unrenewed(&urn, &current.version) {
            return Ok(Claim::HeldElsewhere { holder: current.holder });
        }
        let previous = current.holder.as_deref().unwrap_or("an executor that is not Outpost");
        warn!(task = %id, previous, ttl_s = self.ttl.as_secs(), "taking over a claim that was not renewed");
        let report = format!(
            "Claimed by Outpost controller {} for pool {pool}: the previous holder ({previous}) did not renew its \
             claim ({} at version {}) for {}s; waiting for an agent.\n",
            self.holder,
            current.status,
            current.version,
            self.ttl.as_secs()
        );
        let claim = self.write(&urn, &report, current.version).await;
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(&urn);
        claim
    }

    /// Whether another holder's claim on `urn`, at `version` now, has gone unrenewed for the claim TTL (measured on
    /// this clock from when this version was first seen here).
    fn unrenewed(&self, urn: &str, version: &AspectVersion) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Forget what no longer matters (at most a few TTLs old).
        seen.retain(|_, (_, since)| now.duration_since(*since) < self.ttl * 4);
        match seen.get(urn) {
            Some((seen_version, since)) if seen_version == version => now.duration_since(*since) >= self.ttl,
            _ => {
                seen.insert(urn.to_owned(), (version.clone(), now));
                false
            }
        }
    }

    /// What a watched request (one another holder had) looks like now, from its result as just read: whether it
    /// is worth a takeover attempt.
    pub fn watch(&self, urn: &str, current: Option<&ResultState>) -> Watched {
        match current {
            None => Watched::Free,
            Some(current) if current.holder.as_deref() == Some(self.holder.as_str()) => Watched::Free,
            Some(current) if !HELD.contains(&current.status.as_str()) => Watched::Finished,
            Some(current) if self.unrenewed(urn, &current.version) => Watched::Unrenewed,
            Some(_) => Watched::Renewed,
        }
    }

    async fn write(&self, urn: &str, report: &str, expected: AspectVersion) -> Result<Claim, gms::Error> {
        let aspect = gms::requests::pending_result(report);
        match self.gms.ingest_result_if(urn, &aspect, &expected, &self.holder, unix_ms()).await {
            Ok(()) => Ok(Claim::Won(Some(expected.next()))),
            Err(gms::Error::PreconditionFailed { .. }) => Ok(Claim::Lost),
            Err(e) => Err(e),
        }
    }
}
