//! The GMS channel, for open-source DataHub (no Kafka consumer, no SQS): every `--gms-poll-interval`, a pool with
//! free agent slots searches GMS for its execution requests that have no result yet (`listExecutionRequests`,
//! oldest first), re-reads each candidate (the search index lags), claims it at GMS (`claims.rs`) and takes it in;
//! every `--gms-takeover-interval` (and at start) it also lists the pool's requests others hold, and watches those
//! every `--claim-watch-interval` with one cheap batch read of their results, so that a claim nobody renews (its
//! controller died) is taken over within `--claim-ttl` and a watch interval or two, not at the next listing. Takes
//! only what the pool's agents can start (the SQS receiver's demand rule). A source: never decides placement.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{Intake, Metrics};
use outpost_common::duration;
use outpost_common::ids::{PoolId, TaskId};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::claims::{self, Claim, Claims};
use super::sqs::message;
use crate::gms::{self, Listing};
use crate::scheduler::Scheduler;
use crate::store::{NewTask, Store};

/// Why this GMS cannot serve the GMS channel, if it says what it is and that is too old; `None` when it can, or
/// when it cannot be asked (the channel's own polls will then say what fails).
pub fn unsupported(server: &gms::ServerInfo) -> Option<Unsupported> {
    (!server.executor_search).then(|| Unsupported(server.version.clone()))
}

/// This GMS (of this version, if it said) cannot find execution requests by executor ID.
#[derive(Debug, thiserror::Error)]
#[error("{}", unsupported_text(.0))]
pub struct Unsupported(String);

fn unsupported_text(version: &str) -> String {
    format!(
        "the GMS channel (--gms-channel) needs a DataHub whose search indexes executorId (open-source {} or \
         later, or DataHub Cloud); this GMS is {}. Upgrade DataHub, or take requests from an SQS queue (--queue)",
        gms::EXECUTOR_SEARCH_SINCE,
        if version.is_empty() { "of an unknown version" } else { version }
    )
}

/// At start: refuses a GMS that says it cannot serve the channel (see [`unsupported`]).
pub async fn check_server(client: &gms::Client) -> Result<(), Unsupported> {
    match client.server_info().await {
        Ok(server) => unsupported(&server).map_or(Ok(()), Err),
        Err(e) => {
            warn!(error = %e, "cannot read GMS's /config to check that it can serve the GMS channel; going on");
            Ok(())
        }
    }
}

/// The channel's flags (and the claim TTL every channel's claims use).
#[derive(Clone, Debug, clap::Args)]
#[group(id = "gms_channel")]
#[command(next_help_heading = "GMS channel (open-source DataHub) and claims")]
pub struct Config {
    /// A pool (DataHub executor ID) whose execution requests are found in GMS itself, for open-source DataHub;
    /// repeatable. Needs --gms-url.
    #[arg(long = "gms-channel", env = "OUTPOST_GMS_CHANNEL", value_delimiter = ',', value_parser = PoolId::parse)]
    pub pools: Vec<PoolId>,
    /// How often GMS is searched for new requests of those pools (while their agents have free slots).
    #[arg(long, env = "OUTPOST_GMS_POLL_INTERVAL", value_parser = duration::parse, default_value = "500ms")]
    pub gms_poll_interval: Duration,
    /// How often the pool's requests other controllers hold are listed (they are watched from then on).
    #[arg(long, env = "OUTPOST_GMS_TAKEOVER_INTERVAL", value_parser = duration::parse, default_value = "30s")]
    pub gms_takeover_interval: Duration,
    /// How often the results of requests other controllers hold are read again (one batch read), to take over a
    /// claim as soon as it has gone unrenewed for --claim-ttl. Default: a quarter of --claim-ttl.
    #[arg(long, env = "OUTPOST_CLAIM_WATCH_INTERVAL", value_parser = duration::parse)]
    pub claim_watch_interval: Option<Duration>,
    /// Requests claimed beyond the pool's free agent slots.
    #[arg(long, env = "OUTPOST_GMS_PREFETCH", default_value_t = 0)]
    pub gms_prefetch: u32,
    /// A claim at GMS (on any channel) that has not been renewed for this long may be taken over by another
    /// controller. Running requests renew it with every progress write; waiting ones every third of it.
    #[arg(long, env = "OUTPOST_CLAIM_TTL", value_parser = duration::parse, default_value = "2m")]
    pub claim_ttl: Duration,
}

impl Config {
    /// --claim-watch-interval, or a quarter of --claim-ttl.
    pub fn watch_interval(&self) -> Duration {
        self.claim_watch_interval.unwrap_or(self.claim_ttl / 4)
    }
}

impl Config {
    pub fn validate(&self, progress_interval: Duration) -> Result<(), duration::Invalid> {
        duration::positive("--gms-poll-interval", self.gms_poll_interval)?;
        duration::positive("--gms-takeover-interval", self.gms_takeover_interval)?;
        if let Some(every) = self.claim_watch_interval {
            duration::positive("--claim-watch-interval", every)?;
            if every >= self.claim_ttl {
                return Err(duration::Invalid(format!(
                    "--claim-watch-interval ({every:?}) must be shorter than --claim-ttl ({:?})",
                    self.claim_ttl
                )));
            }
        }
        if self.claim_ttl < progress_interval * 3 {
            return Err(duration::Invalid(format!(
                "--claim-ttl ({:?}) must be at least three --progress-interval ({:?}): running requests renew their \
                 claims with progress writes",
                self.claim_ttl, progress_interval
            )));
        }
        Ok(())
    }
}

/// Search hits asked for per poll, at most.
const MAX_PAGE: u32 = 100;

/// Requests watched per pool, at most (the oldest are dropped; the next listing finds them again).
const MAX_WATCHED: usize = 1000;

/// The requests another controller holds that this pool's channel watches, oldest first.
#[derive(Default)]
struct Watchlist {
    ids: Vec<TaskId>,
}

impl Watchlist {
    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn add(&mut self, id: &TaskId) {
        if !self.ids.contains(id) {
            if self.ids.len() >= MAX_WATCHED {
                self.ids.remove(0);
            }
            self.ids.push(id.clone());
        }
    }
}

#[derive(Clone)]
struct Channel {
    pool: PoolId,
    config: Config,
    gms: gms::Client,
    claims: Arc<Claims>,
    scheduler: Scheduler,
    store: Store,
    metrics: Metrics,
}

/// Runs one poller per pool until `token` is cancelled.
pub async fn run(
    config: Config,
    gms: gms::Client,
    claims: Arc<Claims>,
    scheduler: Scheduler,
    store: Store,
    metrics: Metrics,
    token: CancellationToken,
) {
    let mut pollers = JoinSet::new();
    for pool in &config.pools {
        info!(pool = %pool, "GMS channel: looking for this pool's execution requests in GMS");
        let channel = Channel {
            pool: pool.clone(),
            config: config.clone(),
            gms: gms.clone(),
            claims: claims.clone(),
            scheduler: scheduler.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
        };
        pollers.spawn(channel.poll_loop(token.clone()));
    }
    while pollers.join_next().await.is_some() {}
}

impl Channel {
    async fn poll_loop(self, token: CancellationToken) {
        let mut tick = tokio::time::interval(self.config.gms_poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = tokio::time::interval(self.config.watch_interval());
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first look at held requests is at once: a controller started to take over finds them now.
        let mut next_takeover = Instant::now();
        let mut watched = Watchlist::default();
        loop {
            let watching = tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => false,
                _ = watch.tick(), if !watched.is_empty() => true,
            };
            let want = match self.scheduler.demand(&self.pool).await {
                Ok(demand) if demand.agents == 0 => 0,
                Ok(demand) => (demand.free_slots + self.config.gms_prefetch).saturating_sub(demand.queued),
                Err(_) => break,
            };
            if want == 0 {
                continue;
            }
            if watching {
                tokio::select! {
                    _ = token.cancelled() => break,
                    () = self.watch(&mut watched, want) => {}
                }
                continue;
            }
            let takeover = Instant::now() >= next_takeover;
            if takeover {
                next_takeover = Instant::now() + self.config.gms_takeover_interval;
            }
            let listing = if takeover { Listing::Held } else { Listing::Unclaimed };
            let polled = tokio::select! {
                _ = token.cancelled() => break,
                polled = self.poll(listing, want, &mut watched) => polled,
            };
            let now = outpost_common::clock::unix_ms();
            match polled {
                Ok(()) => self.metrics.channel_ok(self.pool.as_str(), Intake::GmsChannel, now),
                Err(e) => {
                    warn!(pool = %self.pool, error = %e, "GMS channel: cannot search GMS for execution requests");
                    let error = format!("cannot search GMS for execution requests: {e}");
                    self.metrics.channel_failed(self.pool.as_str(), Intake::GmsChannel, &error, now);
                }
            }
        }
    }

    /// Reads the results of the watched requests in one go and tries to take over those unrenewed for the claim
    /// TTL (up to `want`); stops watching what finished or is free.
    async fn watch(&self, watched: &mut Watchlist, want: u32) {
        let urns: Vec<String> = watched.ids.iter().map(TaskId::urn).collect();
        let results = match self.gms.read_results(&urns).await {
            Ok(results) => results,
            Err(e) => {
                warn!(pool = %self.pool, error = %e, "GMS channel: cannot read the results of requests others hold");
                return;
            }
        };
        let mut taken = 0;
        for id in std::mem::take(&mut watched.ids) {
            match self.claims.watch(&id.urn(), results.get(&id.urn())) {
                claims::Watched::Renewed => watched.ids.push(id),
                claims::Watched::Unrenewed if taken < want => match self.take(&id, watched).await {
                    Ok(true) => taken += 1,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(task = %id, error = %e, "GMS channel: cannot take over the request; will try again");
                        watched.ids.push(id);
                    }
                },
                claims::Watched::Unrenewed => watched.ids.push(id),
                claims::Watched::Finished | claims::Watched::Free => {}
            }
        }
    }

    /// Takes in up to `want` requests of the listing.
    async fn poll(&self, listing: Listing, want: u32, watched: &mut Watchlist) -> Result<(), gms::Error> {
        let page = (want * 2 + 4).min(MAX_PAGE);
        let hits = self.gms.list_execution_requests(self.pool.as_str(), listing, page).await?;
        let mut taken = 0;
        for hit in hits {
            if taken >= want {
                break;
            }
            let Ok(id) = TaskId::parse_id_or_urn(&hit.urn) else {
                debug!(urn = %hit.urn, "GMS channel: not an execution request URN");
                continue;
            };
            match self.store.task(&id).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    warn!(task = %id, error = %e, "GMS channel: cannot look the request up; skipped");
                    continue;
                }
            }
            match self.take(&id, watched).await {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(e) => warn!(task = %id, error = %e, "GMS channel: cannot claim the request; will try again"),
            }
        }
        Ok(())
    }

    /// Re-reads, claims and takes in one request; `false` when it is not (or no longer) for us to run. One another
    /// controller holds is watched from now on.
    async fn take(&self, id: &TaskId, watched: &mut Watchlist) -> Result<bool, gms::Error> {
        let Some(request) = self.gms.read_request(&id.urn()).await? else { return Ok(false) };
        let Some(input) = request.input.as_ref() else { return Ok(false) };
        let input = match message::parse_input(input) {
            Ok(input) => input,
            Err(reason) => {
                warn!(task = %id, reason = %reason, "GMS channel: an execution request we cannot run; left alone");
                return Ok(false);
            }
        };
        if input.executor_id != self.pool.as_str() {
            return Ok(false);
        }
        let version = match self.claims.claim(id, &self.pool, Some(request.result)).await? {
            Claim::Won(version) => version,
            Claim::Finished(status) => {
                debug!(task = %id, status, "GMS channel: already finished");
                return Ok(false);
            }
            Claim::HeldElsewhere { holder } => {
                debug!(task = %id, holder = holder.as_deref().unwrap_or("?"), "GMS channel: held by another");
                watched.add(id);
                return Ok(false);
            }
            Claim::Lost => {
                info!(task = %id, "GMS channel: another controller claimed it first");
                return Ok(false);
            }
        };
        let task = NewTask {
            id: id.clone(),
            task_name: input.task,
            pool: self.pool.clone(),
            args: input.args,
            source_type: input.source_type,
            requested_at_ms: input.requested_at_ms,
            claim: version,
        };
        match self.scheduler.submit(task).await {
            Ok(_) => {
                info!(task = %id, pool = %self.pool, "GMS channel: claimed and taken in");
                Ok(true)
            }
            Err(e) => {
                // The claim stays ours at GMS; the next takeover look finds it (its holder is us) and takes it in.
                warn!(task = %id, error = %e, "GMS channel: claimed but not taken in; will try again");
                Ok(false)
            }
        }
    }
}
