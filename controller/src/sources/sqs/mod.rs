//! The SQS bridge: DataHub's execution requests arrive on SQS queues, one per pool. Receives only as many
//! messages as the pool's agents can start (plus a small prefetch), keeps each message invisible while its task
//! lives, deletes it only once the task's result reached GMS, and quarantines what it cannot use. A source: it
//! turns messages into scheduler calls and store bookkeeping; it never decides placement.

mod bridge;
pub mod message;

use std::time::Duration;

use aws_config::BehaviorVersion;
use outpost_common::ids::PoolId;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use bridge::replay_quarantined;

use crate::gms;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// The bridge's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// (pool, queue URL) pairs.
    pub queues: Vec<(PoolId, String)>,
    /// Where unusable messages are copied before they are deleted.
    pub dead_letter_queue: Option<String>,
    /// Long-poll wait of one receive.
    pub wait: Duration,
    /// Visibility set on receive and renewed while a task lives.
    pub visibility_timeout: Duration,
    /// How often visibility is renewed (must be well under the visibility timeout).
    pub keep_interval: Duration,
    /// Messages taken beyond the free agent slots.
    pub prefetch: u32,
    /// How often a pool without demand checks again.
    pub idle_poll: Duration,
    /// Bodies longer than this are quarantined.
    pub max_message_bytes: usize,
    /// How much of a quarantined body is stored.
    pub quarantine_max_body_bytes: usize,
    /// Visibility given back to a message for a pool this controller does not serve.
    pub foreign_visibility: Duration,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

/// An SQS client from the default AWS chain (region, credentials, `AWS_ENDPOINT_URL*`), with an optional endpoint
/// override, over rustls with ring (the workspace's only crypto provider).
pub async fn client(endpoint: Option<&str>) -> aws_sdk_sqs::Client {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new().tls_provider(Provider::Rustls(CryptoMode::Ring)).build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    aws_sdk_sqs::Client::new(&loader.load().await)
}

/// Runs a receiver and a keeper per queue until `token` is cancelled.
pub async fn run(
    config: Config,
    sqs: aws_sdk_sqs::Client,
    store: Store,
    scheduler: Scheduler,
    gms: Option<gms::Client>,
    metrics: Metrics,
    token: CancellationToken,
) {
    let served: Vec<PoolId> = config.queues.iter().map(|(pool, _)| pool.clone()).collect();
    let mut tasks = JoinSet::new();
    for (pool, url) in &config.queues {
        let queue = bridge::Queue {
            pool: pool.clone(),
            url: url.clone(),
            served: served.clone(),
            config: config.clone(),
            sqs: sqs.clone(),
            store: store.clone(),
            scheduler: scheduler.clone(),
            gms: gms.clone(),
            metrics: metrics.clone(),
        };
        info!(pool = %pool, queue = %url, "SQS bridge started");
        let receiver = queue.clone();
        tasks.spawn(receiver.receive_loop(token.clone()));
        tasks.spawn(queue.keep_loop(token.clone()));
    }
    while tasks.join_next().await.is_some() {}
    let calls: Vec<String> = metrics.sqs_calls().iter().map(|(call, n)| format!("{call}={n}")).collect();
    info!(calls = %calls.join(" "), "SQS bridge stopped; sqs api calls");
}
