//! DataHub Cloud's pool queues: the queue URL, the region and temporary AWS credentials come from GMS
//! (`listExecutorConfigs`, datahub-protocol.md §2.8) instead of the operator. The credentials are fetched again
//! ahead of their expiration, and at once when SQS says they no longer work; the SQS client asks this provider
//! before every call, so held messages and their visibility renewals simply go on with the new ones. Never logs,
//! stores or shows a secret.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use outpost_common::ids::PoolId;
use tracing::{info, warn};

use crate::gms::{self, ExecutorConfig};

/// Credentials for one pool, from GMS, cached until shortly before they expire. Clones share the cache.
#[derive(Clone, Debug)]
pub struct GmsCredentials {
    gms: gms::Client,
    pool: PoolId,
    /// Fetch again this long before the expiration GMS gave.
    refresh_ahead: Duration,
    cached: Arc<Mutex<Option<(Credentials, SystemTime)>>>,
}

/// What a pool's queue is, as GMS says.
pub struct PoolQueue {
    pub url: String,
    pub region: String,
}

impl GmsCredentials {
    pub fn new(gms: gms::Client, pool: PoolId, refresh_ahead: Duration) -> GmsCredentials {
        GmsCredentials { gms, pool, refresh_ahead, cached: Arc::new(Mutex::new(None)) }
    }

    /// The pool's entry of `listExecutorConfigs`.
    async fn config(&self) -> Result<ExecutorConfig, String> {
        let configs = self.gms.executor_configs().await.map_err(|e| match e {
            gms::Error::BadResponse(why) if why.contains("FieldUndefined") => format!(
                "this GMS has no listExecutorConfigs (open-source DataHub?): name the pool's queue with --queue \
                 instead ({why})"
            ),
            e => e.to_string(),
        })?;
        configs.into_iter().find(|c| c.executor_id == self.pool.as_str()).ok_or_else(|| {
            format!("GMS lists no executor config for pool {} (is it a DataHub Cloud pool in state READY?)", self.pool)
        })
    }

    /// Asks GMS for the pool's queue (and caches the credentials that came with it).
    pub async fn queue(&self) -> Result<PoolQueue, String> {
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
            Some(config.session_token.expose().to_owned()),
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
