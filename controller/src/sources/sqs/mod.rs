//! The SQS bridge: DataHub's execution requests arrive on SQS queues, one per pool. Receives only as many
//! messages as the pool's agents can start (plus a small prefetch), keeps each message invisible while its task
//! lives, deletes it only once the task's result reached GMS, and quarantines what it cannot use. A source: it
//! turns messages into scheduler calls and store bookkeeping; it never decides placement.

mod bridge;
pub mod cloud;
pub mod message;

use std::time::Duration;

use outpost_common::duration;
use outpost_common::ids::PoolId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use bridge::replay_quarantined;

/// The bridge's flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "sqs")]
#[command(next_help_heading = "SQS intake")]
pub struct Config {
    /// An SQS queue and the pool (DataHub executor ID) its requests are for, as POOL=URL; repeatable.
    #[arg(long = "queue", env = "OUTPOST_QUEUES", value_delimiter = ',', value_parser = parse_queue)]
    pub queues: Vec<(PoolId, String)>,
    /// The SQS queue of the pool named by --pool-id (DataHub's single-queue style).
    #[arg(long, env = "OUTPOST_QUEUE_URL", requires = "pool_id")]
    pub queue_url: Option<String>,
    /// The pool of --queue-url.
    #[arg(long, env = "DATAHUB_EXECUTOR_POOL_ID", value_parser = PoolId::parse)]
    pub pool_id: Option<PoolId>,
    /// A pool whose SQS queue and temporary credentials come from DataHub Cloud's GMS (`listExecutorConfigs`);
    /// repeatable. Needs --gms-url. Default, when no queue is named at all: DATAHUB_EXECUTOR_POOL_ID, as DataHub's
    /// own chart sets it.
    #[arg(long = "queue-from-gms", env = "OUTPOST_QUEUE_FROM_GMS", value_delimiter = ',', value_parser = PoolId::parse)]
    pub from_gms: Vec<PoolId>,
    /// Credentials from GMS are fetched again this long before they expire.
    #[arg(id = "sqs_credentials_refresh_ahead", long = "sqs-credentials-refresh-ahead",
          env = "OUTPOST_SQS_CREDENTIALS_REFRESH_AHEAD", value_parser = duration::parse, default_value = "5m")]
    pub credentials_refresh_ahead: Duration,
    /// SQS endpoint override (e.g. a local SQS API); otherwise the AWS default chain decides.
    #[arg(id = "sqs_endpoint", long = "sqs-endpoint", env = "OUTPOST_SQS_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Unusable messages are copied here before they are deleted (they are always quarantined in SQLite).
    #[arg(long, env = "OUTPOST_DEAD_LETTER_QUEUE")]
    pub dead_letter_queue: Option<String>,
    /// Long-poll wait of an SQS receive (whole seconds, at most 20).
    #[arg(id = "sqs_wait", long = "sqs-wait", env = "OUTPOST_SQS_WAIT", value_parser = duration::parse,
          default_value = "20s")]
    pub wait: Duration,
    /// Visibility timeout set on receive and renewed while a task lives (whole seconds).
    #[arg(id = "sqs_visibility_timeout", long = "sqs-visibility-timeout", env = "OUTPOST_SQS_VISIBILITY_TIMEOUT",
          value_parser = duration::parse, default_value = "60s")]
    pub visibility_timeout: Duration,
    /// How often held messages' visibility is renewed (under the visibility timeout).
    #[arg(id = "sqs_keep_interval", long = "sqs-keep-interval", env = "OUTPOST_SQS_KEEP_INTERVAL",
          value_parser = duration::parse, default_value = "20s")]
    pub keep_interval: Duration,
    /// Messages taken beyond the pool's free agent slots.
    #[arg(id = "sqs_prefetch", long = "sqs-prefetch", env = "OUTPOST_SQS_PREFETCH", default_value_t = 1)]
    pub prefetch: u32,
    /// How often a pool without free slots checks again before receiving.
    #[arg(id = "sqs_idle_poll", long = "sqs-idle-poll", env = "OUTPOST_SQS_IDLE_POLL",
          value_parser = duration::parse, default_value = "500ms")]
    pub idle_poll: Duration,
    /// Message bodies longer than this are quarantined.
    #[arg(id = "sqs_max_message_bytes", long = "sqs-max-message-bytes", env = "OUTPOST_SQS_MAX_MESSAGE_BYTES",
          default_value_t = 256 * 1024)]
    pub max_message_bytes: usize,
    /// How much of a quarantined body is kept.
    #[arg(long, env = "OUTPOST_QUARANTINE_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub quarantine_max_body_bytes: usize,
    /// DataHub's own executor also serves this controller's queues: messages for work Outpost does not run
    /// (DataHub Cloud's assertion monitors) are given back for it (after --sqs-foreign-visibility) instead of
    /// being quarantined.
    #[arg(
        id = "sqs_shared_with_datahub_executor",
        long = "sqs-shared-with-datahub-executor",
        env = "OUTPOST_SQS_SHARED_WITH_DATAHUB_EXECUTOR"
    )]
    pub shared_with_datahub_executor: bool,
    /// Visibility given back to a message for a pool no queue here serves, or for DataHub's own executor (whole
    /// seconds; 0 = at once).
    #[arg(id = "sqs_foreign_visibility", long = "sqs-foreign-visibility", env = "OUTPOST_SQS_FOREIGN_VISIBILITY",
          value_parser = duration::parse, default_value = "0s")]
    pub foreign_visibility: Duration,
    /// First backoff after an SQS error (doubled per failure, jittered).
    #[arg(id = "sqs_retry_backoff", long = "sqs-retry-backoff", env = "OUTPOST_SQS_RETRY_BACKOFF",
          value_parser = duration::parse, default_value = "1s")]
    pub retry_backoff: Duration,
    /// Longest backoff after SQS errors.
    #[arg(id = "sqs_retry_backoff_max", long = "sqs-retry-backoff-max", env = "OUTPOST_SQS_RETRY_BACKOFF_MAX",
          value_parser = duration::parse, default_value = "30s")]
    pub retry_backoff_max: Duration,
}

/// Why the SQS intake could not start, stopped, or cannot read a queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--queue-from-gms {0} needs --gms-url")]
    NeedsGmsUrl(PoolId),
    /// SQS refused a call: the HTTP status and the service's error code where it gave them, and the SDK's
    /// error chain.
    #[error("{}{}{chain}", status.map(|s| format!("HTTP {s}: ")).unwrap_or_default(),
            code.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Refused { status: Option<u16>, code: Option<String>, chain: String },
    #[error("{url}: {error}")]
    Queue { url: String, error: Box<Error> },
    #[error(transparent)]
    Cloud(#[from] cloud::Error),
    #[error("an SQS receiver or keeper loop ended")]
    LoopEnded,
    #[error("an SQS receiver or keeper loop failed: {0}")]
    LoopFailed(tokio::task::JoinError),
}

/// Why a `--queue` value is refused.
#[derive(Debug, thiserror::Error)]
pub enum BadQueue {
    #[error("{0:?} is not POOL=URL")]
    NotPair(String),
    #[error(transparent)]
    Pool(#[from] outpost_common::ids::Error),
    #[error("{0:?} is not a queue URL")]
    NotUrl(String),
}

/// `POOL=URL`.
fn parse_queue(value: &str) -> Result<(PoolId, String), BadQueue> {
    let (pool, url) = value.split_once('=').ok_or_else(|| BadQueue::NotPair(value.to_owned()))?;
    let pool = PoolId::parse(pool.trim())?;
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(BadQueue::NotUrl(url.to_owned()));
    }
    Ok((pool, url.trim().to_owned()))
}

impl Config {
    /// Every (pool, queue URL): the --queue pairs plus --pool-id/--queue-url.
    pub fn all_queues(&self) -> Vec<(PoolId, String)> {
        let mut queues = self.queues.clone();
        if let (Some(url), Some(pool)) = (&self.queue_url, &self.pool_id) {
            queues.push((pool.clone(), url.clone()));
        }
        queues
    }

    /// Pools whose queue comes from GMS: --queue-from-gms, or (with GMS and no queue named at all) the pool of
    /// DATAHUB_EXECUTOR_POOL_ID.
    pub fn gms_pools(&self, gms: bool) -> Vec<PoolId> {
        match (&self.pool_id, gms) {
            (Some(pool), true) if self.from_gms.is_empty() && self.queues.is_empty() && self.queue_url.is_none() => {
                vec![pool.clone()]
            }
            _ => self.from_gms.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--sqs-credentials-refresh-ahead", self.credentials_refresh_ahead)?;
        duration::positive("--sqs-keep-interval", self.keep_interval)?;
        duration::positive("--sqs-idle-poll", self.idle_poll)?;
        duration::positive("--sqs-retry-backoff", self.retry_backoff)?;
        duration::whole_seconds("--sqs-wait", self.wait)?;
        duration::whole_seconds("--sqs-visibility-timeout", self.visibility_timeout)?;
        duration::whole_seconds("--sqs-foreign-visibility", self.foreign_visibility)?;
        duration::positive("--sqs-visibility-timeout", self.visibility_timeout)?;
        if self.wait > Duration::from_secs(20) {
            return Err(duration::Invalid(format!(
                "--sqs-wait must be at most 20s (SQS's limit), not {:?}",
                self.wait
            )));
        }
        if self.visibility_timeout > Duration::from_secs(12 * 3600) {
            return Err(duration::Invalid("--sqs-visibility-timeout must be at most 12h (SQS's limit)".into()));
        }
        duration::shorter(
            "--sqs-keep-interval",
            self.keep_interval,
            "--sqs-visibility-timeout",
            self.visibility_timeout,
        )
    }
}

/// Asks GMS for a pool's queue until it answers (GMS may be starting too), or `None` once `token` is cancelled.
async fn pool_queue(
    config: &Config,
    credentials: &cloud::GmsCredentials,
    pool: &PoolId,
    token: &CancellationToken,
) -> Option<cloud::PoolQueue> {
    let mut failures = 0;
    loop {
        match credentials.queue().await {
            Ok(queue) => return Some(queue),
            Err(e) => {
                let delay = bridge::backoff(config, failures);
                failures += 1;
                tracing::warn!(pool = %pool, error = %e, retry_in_ms = outpost_common::duration::millis(delay),
                    "cannot get the pool's queue from DataHub GMS");
                tokio::select! {
                    _ = token.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// An SQS client for a DataHub Cloud pool: its region, credentials asked of `credentials` before every call (it
/// caches them until shortly before they expire), the endpoint override if any.
async fn cloud_client(region: &str, credentials: cloud::GmsCredentials, endpoint: Option<&str>) -> aws_sdk_sqs::Client {
    let loader = loader(endpoint)
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(credentials)
        .identity_cache(aws_config::identity::IdentityCache::no_cache());
    aws_sdk_sqs::Client::new(&loader.load().await)
}

pub use outpost_common::aws::loader;

/// Whether `url` can be read with `sqs`'s credentials (GetQueueAttributes, which reads nothing from the queue):
/// the SDK's error with its service code when not.
pub async fn probe(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<(), Error> {
    let attribute = aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages;
    let asked = sqs.get_queue_attributes().queue_url(url).attribute_names(attribute).send().await;
    asked.map(|_| ()).map_err(|e| {
        use aws_sdk_sqs::error::ProvideErrorMetadata;
        Error::Refused {
            status: e.raw_response().map(|r| r.status().as_u16()),
            code: e.code().map(str::to_owned),
            chain: outpost_common::errors::chain(&e),
        }
    })
}

/// A DataHub Cloud pool's queue, read with the credentials GMS hands out for it: its URL, or why not.
pub async fn probe_cloud(gms: &crate::gms::Client, pool: &PoolId, config: &Config) -> Result<String, Error> {
    let credentials = cloud::GmsCredentials::new(gms.clone(), pool.clone(), config.credentials_refresh_ahead);
    let queue = credentials.queue().await?;
    let client = cloud_client(&queue.region, credentials, config.endpoint.as_deref()).await;
    probe(&client, &queue.url)
        .await
        .map(|()| queue.url.clone())
        .map_err(|e| Error::Queue { url: queue.url.clone(), error: Box::new(e) })
}

/// An SQS client from the default AWS chain (region, credentials, `AWS_ENDPOINT_URL*`), with an optional endpoint
/// override, over rustls with ring (the workspace's only crypto provider).
pub async fn client(endpoint: Option<&str>) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&loader(endpoint).load().await)
}

/// Runs a receiver and a keeper per queue until `token` is cancelled: the queues named by the operator (through
/// `sqs`, the AWS default chain), and DataHub Cloud pools whose queue and credentials come from GMS (each with its
/// own client). A loop that ends before that (or panics) ends the bridge with the reason: the supervisor stops the
/// controller rather than let messages go unkept.
pub async fn run(
    config: Config,
    sqs: aws_sdk_sqs::Client,
    intake: super::Intake,
    token: CancellationToken,
) -> Result<(), Error> {
    let super::Intake { store, scheduler, gms, claims, metrics } = intake;
    let mut queues: Vec<(PoolId, String, aws_sdk_sqs::Client, Option<cloud::GmsCredentials>)> =
        config.all_queues().into_iter().map(|(pool, url)| (pool, url, sqs.clone(), None)).collect();
    for pool in config.gms_pools(gms.is_some()) {
        let gms = gms.clone().ok_or_else(|| Error::NeedsGmsUrl(pool.clone()))?;
        let credentials = cloud::GmsCredentials::new(gms, pool.clone(), config.credentials_refresh_ahead)
            .reporting_to(metrics.clone());
        let Some(queue) = pool_queue(&config, &credentials, &pool, &token).await else { return Ok(()) };
        let client = cloud_client(&queue.region, credentials.clone(), config.endpoint.as_deref()).await;
        info!(pool = %pool, queue = %queue.url, region = %queue.region, "queue and credentials from DataHub GMS");
        queues.push((pool, queue.url, client, Some(credentials)));
    }
    let served: Vec<PoolId> = queues.iter().map(|(pool, ..)| pool.clone()).collect();
    let mut tasks = JoinSet::new();
    for (pool, url, sqs, credentials) in queues {
        let queue = bridge::Queue {
            pool: pool.clone(),
            url: url.clone(),
            served: served.clone(),
            config: config.clone(),
            sqs,
            store: store.clone(),
            scheduler: scheduler.clone(),
            gms: gms.clone(),
            metrics: metrics.clone(),
            credentials,
            claims: claims.clone(),
        };
        metrics.sqs_pool(pool.as_str());
        info!(pool = %pool, queue = %url, "SQS bridge started");
        let receiver = queue.clone();
        tasks.spawn(receiver.receive_loop(token.clone()));
        tasks.spawn(queue.keep_loop(token.clone()));
    }
    while let Some(ended) = tasks.join_next().await {
        if !token.is_cancelled() {
            return Err(match ended {
                Ok(()) => Error::LoopEnded,
                Err(e) => Error::LoopFailed(e),
            });
        }
    }
    let calls: Vec<String> = metrics.sqs_calls().iter().map(|(call, n)| format!("{}={n}", call.label())).collect();
    info!(calls = %calls.join(" "), "SQS bridge stopped; sqs api calls");
    Ok(())
}
