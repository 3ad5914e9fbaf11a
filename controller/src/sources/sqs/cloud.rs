//! DataHub Cloud's pool queues: the queue URL, the region and temporary AWS credentials come from GMS
//! (`listExecutorConfigs`, datahub-protocol.md §2.8) instead of the operator. The credentials are fetched again
//! ahead of their expiration, and at once when SQS says they no longer work; the SQS client asks this provider
//! before every call, so held messages and their visibility renewals simply go on with the new ones. Never logs,
//! stores or shows a secret.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::metrics::{Intake, Metrics};
use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use outpost_common::ids::PoolId;
use tracing::{info, warn};

use crate::gms::{self, ExecutorConfig};

/// Why GMS did not give a pool's queue and credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}; name the pool's queue with --queue instead")]
    NotDataHubCloud(gms::Error),
    #[error(transparent)]
    Gms(gms::Error),
    #[error("GMS lists no executor config for pool {0} (is it a DataHub Cloud pool in state READY?)")]
    NoConfig(PoolId),
}

/// Credentials for one pool, from GMS, cached until shortly before they expire. Clones share the cache.
#[derive(Clone, Debug)]
pub struct GmsCredentials {
    gms: gms::Client,
    pool: PoolId,
    /// Fetch again this long before the expiration GMS gave.
    refresh_ahead: Duration,
    cached: Arc<Mutex<Option<(Credentials, SystemTime)>>>,
    /// Where each call's outcome is counted (the pool's `cloud_credentials` channel health); none in a probe.
    health: Option<Metrics>,
}

/// What a pool's queue is, as GMS says.
pub struct PoolQueue {
    pub url: String,
    pub region: String,
}

impl GmsCredentials {
    pub fn new(gms: gms::Client, pool: PoolId, refresh_ahead: Duration) -> GmsCredentials {
        GmsCredentials { gms, pool, refresh_ahead, cached: Arc::new(Mutex::new(None)), health: None }
    }

    /// The same, counting each call's outcome as the pool's `cloud_credentials` channel health.
    pub fn reporting_to(self, metrics: Metrics) -> GmsCredentials {
        GmsCredentials { health: Some(metrics), ..self }
    }

    /// The pool's entry of `listExecutorConfigs`.
    async fn config(&self) -> Result<ExecutorConfig, Error> {
        let found = self.gms.executor_configs().await.map_err(|e| match e {
            gms::Error::NotDataHubCloud(_) => Error::NotDataHubCloud(e),
            e => Error::Gms(e),
        });
        let found = found.and_then(|configs| {
            configs
                .into_iter()
                .find(|c| c.executor_id == self.pool.as_str())
                .ok_or_else(|| Error::NoConfig(self.pool.clone()))
        });
        if let Some(metrics) = &self.health {
            let now = outpost_common::clock::unix_ms();
            match &found {
                Ok(_) => metrics.channel_ok(self.pool.as_str(), Intake::DataHubCloud, now),
                Err(e) => metrics.channel_failed(self.pool.as_str(), Intake::DataHubCloud, &e.to_string(), now),
            }
        }
        found
    }

    /// Asks GMS for the pool's queue (and caches the credentials that came with it).
    pub async fn queue(&self) -> Result<PoolQueue, Error> {
        let config = self.config().await?;
        let queue = PoolQueue { url: config.queue_url.clone(), region: config.region.clone() };
        self.remember(&config);
        Ok(queue)
    }

    /// Forgets the cached credentials: SQS refused them (expired or revoked); the next call fetches new ones.
    pub fn invalidate(&self) {
        if self.cached.lock().unwrap_or_else(|e| e.into_inner()).take().is_some() {
            warn!(pool = %self.pool, "SQS refused the credentials from GMS; fetching new ones");
        }
    }

    fn remember(&self, config: &ExecutorConfig) -> Credentials {
        let credentials = Credentials::new(
            config.access_key_id.clone(),
            config.secret_access_key.expose(),
            // Long-lived keys come without a session token: send none rather than an empty one.
            Some(config.session_token.expose().to_owned()).filter(|token| !token.is_empty()),
            config.expiration,
            "datahub-gms",
        );
        // Without an expiration, fetch again after the refresh margin (never keep unknown credentials for long).
        let now = SystemTime::now();
        let refresh_at = match config.expiration {
            Some(expiration) => expiration.checked_sub(self.refresh_ahead).unwrap_or(now).max(now),
            None => now + self.refresh_ahead,
        };
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some((credentials.clone(), refresh_at));
        credentials
    }

    async fn fetch(&self) -> provider::Result {
        if let Some((credentials, refresh_at)) = self.cached.lock().unwrap_or_else(|e| e.into_inner()).clone()
            && SystemTime::now() < refresh_at
        {
            return Ok(credentials);
        }
        let config = self.config().await.map_err(CredentialsError::provider_error)?;
        info!(pool = %self.pool, expires = ?config.expiration, "fetched SQS credentials from GMS");
        Ok(self.remember(&config))
    }
}

impl ProvideCredentials for GmsCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.fetch())
    }
}

/// Whether an SQS error means the credentials no longer work.
pub fn is_credentials_error(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ExpiredToken"
                | "ExpiredTokenException"
                | "InvalidClientTokenId"
                | "AccessDenied"
                | "AccessDeniedException"
        ) | Some("UnrecognizedClientException" | "InvalidAccessKeyId" | "SignatureDoesNotMatch")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_refusals_are_told_apart_from_outages() {
        for code in ["ExpiredToken", "InvalidClientTokenId", "AccessDenied", "UnrecognizedClientException"] {
            assert!(is_credentials_error(Some(code)), "{code}");
        }
        for code in [Some("ServiceUnavailable"), Some("ThrottlingException"), None] {
            assert!(!is_credentials_error(code), "{code:?}");
        }
    }
}

#[cfg(test)]
mod refresh_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A GMS that answers every GraphQL call with new credentials (`ASIA<n>`) expiring in an hour.
    async fn gms() -> (gms::Client, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                let mut buffer = vec![0u8; 65536];
                let _ = stream.read(&mut buffer).await;
                let expiration = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
                let body = format!(
                    r#"{{"data":{{"listExecutorConfigs":{{"total":1,"executorConfigs":[{{"region":"us-east-1","executorId":"p","queueUrl":"http://q","accessKeyId":"ASIA{n}","secretKeyId":"s{n}","sessionToken":"t{n}","expiration":"{expiration}"}}]}}}}}}"#
                );
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
            }
        });
        let client = gms::Client::new(&format!("http://{addr}"), Default::default(), Duration::from_secs(5)).unwrap();
        (client, calls)
    }

    #[tokio::test]
    async fn credentials_are_reused_until_sqs_refuses_them_then_fetched_again() {
        let (gms, calls) = gms().await;
        let credentials = GmsCredentials::new(gms, PoolId::parse("p").unwrap(), Duration::from_secs(300));
        let first = credentials.provide_credentials().await.unwrap();
        let again = credentials.provide_credentials().await.unwrap();
        assert_eq!((first.access_key_id(), again.access_key_id()), ("ASIA1", "ASIA1"));
        assert_eq!(calls.load(Ordering::SeqCst), 1, "valid for an hour: asked once");
        // SQS said they no longer work: the next call asks GMS at once.
        credentials.invalidate();
        let fresh = credentials.provide_credentials().await.unwrap();
        assert_eq!((fresh.access_key_id(), fresh.secret_access_key()), ("ASIA2", "s2"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn credentials_are_fetched_again_ahead_of_their_expiration() {
        let (gms, calls) = gms().await;
        // Fetched again when less than two hours are left: every answer (one hour) is already due.
        let credentials = GmsCredentials::new(gms, PoolId::parse("p").unwrap(), Duration::from_secs(7200));
        credentials.provide_credentials().await.unwrap();
        let second = credentials.provide_credentials().await.unwrap();
        assert_eq!(second.access_key_id(), "ASIA2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
