//! Executors visible in DataHub Cloud: for each pool whose queue comes from GMS and that GMS lists as a DataHub
//! Cloud pool, this controller is reported as an executor instance of the pool (`dataHubRemoteExecutorStatus`,
//! datahub-protocol.md §4.4) every `--executor-status-interval`, and once more with `executorStopped` when it
//! stops. Against a GMS without `listExecutorConfigs` (open-source DataHub) it checks once and stays quiet. Writes
//! nothing else.

use std::time::Duration;

use outpost_common::ids::PoolId;
use serde_json::json;
use sha2::Digest;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::gms;

/// What identifies this controller as an executor instance.
pub struct Instance {
    /// Where agents reach it (its gRPC address).
    pub address: String,
    pub hostname: String,
    /// A random part, new at every start (DataHub's worker does the same).
    pub nonce: String,
}

impl Instance {
    /// DataHub's id form: `<sha256(address)[:8]>-<random8>.<pool>.<gms host>`, at most 500 characters in the URN.
    fn id(&self, pool: &PoolId, gms_host: &str) -> String {
        let digest = sha2::Sha256::digest(self.address.as_bytes());
        let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let mut id = format!("{hex}-{}.{pool}.{gms_host}", self.nonce);
        id.truncate(500 - "urn:li:dataHubRemoteExecutor:".len());
        id
    }
}

/// This machine's host name (the pod name on Kubernetes).
pub fn hostname() -> String {
    outpost_common::host::name().unwrap_or_else(|| "unknown".to_owned())
}

/// How often, and how to retry asking GMS which pools are Cloud pools (the reporter's GMS backoff).
pub struct Timing {
    pub interval: Duration,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
}

/// Reports the instance for `pools` until `token` is cancelled, then reports it stopped.
pub async fn run(gms: gms::Client, pools: Vec<PoolId>, instance: Instance, timing: Timing, token: CancellationToken) {
    let Some(pools) = cloud_pools(&gms, pools, &timing, &token).await else { return };
    if pools.is_empty() {
        token.cancelled().await;
        return;
    }
    let started = Instant::now();
    let gms_host = gms.host();
    let ids: Vec<(PoolId, String)> = pools.into_iter().map(|p| (p.clone(), instance.id(&p, &gms_host))).collect();
    info!(count = ids.len(), "reporting this controller as a DataHub executor of its Cloud pools");
    loop {
        report(&gms, &ids, &instance, started, false).await;
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(timing.interval) => {}
        }
    }
    report(&gms, &ids, &instance, started, true).await;
}

/// The pools GMS lists as DataHub Cloud pools (asked once, again after a failure), or `None` on shutdown. An
/// open-source GMS lists none.
async fn cloud_pools(
    gms: &gms::Client,
    pools: Vec<PoolId>,
    timing: &Timing,
    token: &CancellationToken,
) -> Option<Vec<PoolId>> {
    let mut failures = 0;
    loop {
        match gms.executor_configs().await {
            Ok(listed) => {
                return Some(
                    pools.into_iter().filter(|p| listed.iter().any(|c| c.executor_id == p.as_str())).collect(),
                );
            }
            Err(gms::Error::NotDataHubCloud(_)) => {
                info!("GMS has no remote executors (open-source DataHub): executor status is not reported");
                return Some(Vec::new());
            }
            Err(e) => {
                let delay =
                    outpost_common::backoff::equal_jitter(timing.retry_backoff, timing.retry_backoff_max, failures);
                failures += 1;
                warn!(error = %e, "cannot ask GMS about the pools; asking again");
                tokio::select! {
                    _ = token.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn report(gms: &gms::Client, ids: &[(PoolId, String)], instance: &Instance, started: Instant, stopped: bool) {
    for (pool, id) in ids {
        let status = json!({
            "executorPoolId": pool.as_str(),
            "executorReleaseVersion": env!("CARGO_PKG_VERSION"),
            "executorAddress": instance.address,
            "executorHostname": instance.hostname,
            "executorUptime": started.elapsed().as_secs_f64(),
            "executorExpired": false,
            "executorStopped": stopped,
            "executorEmbedded": false,
            "executorInternal": false,
            "logDeliveryEnabled": false,
            "reportedAt": outpost_common::clock::unix_ms(),
            "channel": "SQS",
        });
        if let Err(e) = gms.ingest_executor_status(id, &status).await {
            warn!(pool = %pool, error = %e, "could not report the executor status to GMS");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_have_datahubs_form() {
        let instance = Instance { address: "10.0.0.5:7443".into(), hostname: "c-0".into(), nonce: "k3j4h5g6".into() };
        let id = instance.id(&PoolId::parse("my-pool").unwrap(), "acme.acryl.io");
        let (hash, rest) = id.split_once('-').unwrap();
        assert_eq!((hash.len(), rest), (8, "k3j4h5g6.my-pool.acme.acryl.io"));
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
        let long = instance.id(&PoolId::parse("p").unwrap(), &"h".repeat(600));
        assert_eq!(long.len() + "urn:li:dataHubRemoteExecutor:".len(), 500);
    }
}
