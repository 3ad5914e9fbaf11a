//! `outpost-controller doctor`: before a first start, with the same flags as `run`, checks whether what they name
//! can work — the TLS trust, the database's directory, GMS (reachable, the token accepted, its version and what it
//! allows, its clock), each channel (the GMS channel's search, DataHub Cloud's executor configs, each SQS queue
//! readable with the credentials in use) — one line per check with a verdict and, where it fails, what to do.
//! Only reads: never writes a file, GMS or a queue, and never prints a secret.

use std::path::Path;
use std::time::{Duration, SystemTime};

use outpost_common::doctor::{Check, Verdict, check};
use outpost_common::identity::pem_validity;
use outpost_common::ids::PoolId;

use crate::config::RunConfig;
use crate::gms;
use crate::sources;

/// A certificate's remaining life, said in days; expiring within a week is a warning, expired a failure.
fn expiry(what: &str, path: &Path, now: SystemTime) -> Check {
    let Some((_, not_after)) = std::fs::read_to_string(path).ok().as_deref().and_then(pem_validity) else {
        return check(Verdict::Fail, what, format!("{} is not a readable PEM certificate", path.display()));
    };
    match not_after.duration_since(now) {
        Err(_) => check(Verdict::Fail, what, format!("{} has expired: replace it", path.display())),
        Ok(left) if left < Duration::from_secs(7 * 86_400) => {
            check(Verdict::Warn, what, format!("{} expires in {} h: renew it", path.display(), left.as_secs() / 3600))
        }
        Ok(left) => {
            check(Verdict::Ok, what, format!("{} valid for {} more days", path.display(), left.as_secs() / 86_400))
        }
    }
}

fn trust(config: &RunConfig, now: SystemTime) -> Vec<Check> {
    match (&config.trust.tls_cert, &config.trust.tls_key, &config.trust.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            let files = outpost_common::tls::TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() };
            match files.load() {
                Ok(_) => vec![expiry("TLS certificate", cert, now), expiry("TLS CA", ca, now)],
                Err(e) => vec![check(Verdict::Fail, "TLS files", format!("{e}: fix --tls-cert/--tls-key/--tls-ca"))],
            }
        }
        _ => {
            let dir = config.trust.dir(&config.db);
            let server = dir.join("controller.pem");
            match server.exists() {
                true => vec![expiry("own TLS certificate", &server, now)],
                false => vec![check(
                    Verdict::Ok,
                    "own TLS trust",
                    format!("no --tls-* files: a CA and certificate will be made in {} at first start", dir.display()),
                )],
            }
        }
    }
}

fn database(config: &RunConfig) -> Check {
    let dir = crate::trust::db_dir(&config.db);
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() && !meta.permissions().readonly() => {
            check(Verdict::Ok, "database", format!("{} (directory {} exists)", config.db.display(), dir.display()))
        }
        Ok(_) => check(Verdict::Fail, "database", format!("{} is not a writable directory", dir.display())),
        Err(e) => check(Verdict::Fail, "database", format!("{}: {e}; create it or change --db", dir.display())),
    }
}

/// Signed seconds GMS's clock is ahead of ours.
fn offset_seconds(theirs: SystemTime, ours: SystemTime) -> i64 {
    match theirs.duration_since(ours) {
        Ok(ahead) => outpost_common::duration::signed_secs(ahead),
        Err(behind) => -outpost_common::duration::signed_secs(behind.duration()),
    }
}

async fn gms_checks(config: &RunConfig, client: &gms::Client) -> Vec<Check> {
    let mut checks = Vec::new();
    let server = match client.server_info_dated().await {
        Ok((server, date)) => {
            let kind = if server.cloud { "DataHub Cloud" } else { "open-source DataHub" };
            let version = if server.version.is_empty() { "(no version given)" } else { server.version.as_str() };
            checks.push(check(Verdict::Ok, "GMS reachable", format!("{kind} {version}")));
            if let Some(theirs) = date {
                let offset = offset_seconds(theirs, SystemTime::now());
                let claim_ttl = outpost_common::duration::signed_secs(config.gms_channel.claim_ttl);
                let verdict = if offset.abs() * 4 > claim_ttl { Verdict::Warn } else { Verdict::Ok };
                let advice =
                    if verdict == Verdict::Warn { ": claims lean on clocks; sync this host (NTP)" } else { "" };
                checks.push(check(verdict, "clock", format!("GMS's clock is {offset:+} s from ours{advice}")));
            }
            match server.conditional_writes {
                true => checks.push(check(Verdict::Ok, "claims", "GMS does conditional writes: requests are claimed")),
                false => checks.push(check(
                    Verdict::Warn,
                    "claims",
                    "no conditional writes (DataHub before v0.14.0): run one controller per pool",
                )),
            }
            Some(server)
        }
        Err(e) => {
            checks.push(check(Verdict::Fail, "GMS reachable", format!("{e}: check --gms-url and the network")));
            None
        }
    };
    // The token: an authenticated search (the one the GMS channel makes) must be accepted.
    let probe_pool = config.gms_channel.pools.first().map(ToString::to_string).unwrap_or_else(|| "default".into());
    match client.list_execution_requests(&probe_pool, gms::Listing::Unclaimed, 1).await {
        Ok(_) => checks.push(check(Verdict::Ok, "GMS token", "accepted")),
        Err(e @ gms::Error::Unauthorized { .. }) => {
            checks.push(check(Verdict::Fail, "GMS token", format!("{e} (a DataHub access token for the executor)")))
        }
        Err(e) => checks.push(check(Verdict::Warn, "GMS token", format!("the search failed, so it is not known: {e}"))),
    }
    for pool in &config.gms_channel.pools {
        let what = format!("GMS channel of pool {pool}");
        match server.as_ref().map(|s| (s, sources::gms_channel::unsupported(s))) {
            Some((_, Some(why))) => checks.push(check(Verdict::Fail, what, why.to_string())),
            Some(_) => checks.push(check(
                Verdict::Ok,
                what,
                "requests are searchable by executorId (requests without an ingestion source, such as test \
                 connections, cannot be found this way)",
            )),
            None => checks.push(check(Verdict::Fail, what, "GMS did not say what it is: see above")),
        }
    }
    checks
}

async fn queue_checks(config: &RunConfig, client: Option<&gms::Client>) -> Vec<Check> {
    let mut checks = Vec::new();
    let queues = config.sqs.all_queues();
    if !queues.is_empty() {
        let sqs = sources::sqs::client(config.sqs.endpoint.as_deref()).await;
        for (pool, url) in queues {
            let what = format!("SQS queue of pool {pool}");
            checks.push(match sources::sqs::probe(&sqs, &url).await {
                Ok(()) => check(Verdict::Ok, what, format!("{url} readable with the AWS default credentials")),
                Err(e) => check(Verdict::Fail, what, format!("{url}: {e}")),
            });
        }
    }
    let cloud_pools: Vec<PoolId> = config.sqs.gms_pools(client.is_some());
    if let Some(client) = client
        && !cloud_pools.is_empty()
    {
        for pool in cloud_pools {
            let what = format!("DataHub Cloud queue of pool {pool}");
            checks.push(match sources::sqs::probe_cloud(client, &pool, &config.sqs).await {
                Ok(url) => check(Verdict::Ok, what, format!("{url} readable with the credentials GMS hands out")),
                Err(e) => check(Verdict::Fail, what, e.to_string()),
            });
        }
    }
    checks
}

/// Every check for `config`, in order.
pub async fn run(config: &RunConfig) -> Vec<Check> {
    let now = SystemTime::now();
    let mut checks = trust(config, now);
    checks.push(database(config));
    let client = match config.gms.client() {
        Ok(client) => client,
        Err(e) => {
            checks.push(check(Verdict::Fail, "GMS", format!("{e}")));
            None
        }
    };
    match &client {
        Some(client) => checks.extend(gms_checks(config, client).await),
        None => checks.push(check(Verdict::Ok, "GMS", "no --gms-url: results stay in SQLite")),
    }
    checks.extend(queue_checks(config, client.as_ref()).await);
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offsets_are_signed() {
        let now = SystemTime::now();
        assert_eq!(offset_seconds(now + Duration::from_secs(5), now), 5);
        assert_eq!(offset_seconds(now - Duration::from_secs(7), now), -7);
    }
}
