//! Agent enrollment: join tokens (made by admins, kept as digests), joining (a token and a certificate signing
//! request in, a short-lived certificate bound to the token's pool out), renewals by agents that hold a current
//! certificate, and revocation of workers (their stream closed, their work lost to the lease engine, their
//! certificates refused until they expire). The core behind the join listener, the admin API and the agent
//! stream's renewals; never sees protobuf types, never stores a secret or a private key.

pub mod authority;
mod ca;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outpost_common::clock::unix_ms;
use outpost_common::duration;
use outpost_common::ids::{PoolId, WorkerId};
use outpost_common::join::{self, JoinToken};
use tracing::{info, warn};

pub use authority::{Authority, Issued, TrustBundle};
pub use ca::{CaInfo, CaRotation, CaStatus};

use crate::scheduler::Scheduler;
use crate::store::{self, Audit, JoinRefused, NewToken, Store};

/// The enrollment flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "enroll")]
#[command(next_help_heading = "Agent enrollment")]
pub struct Config {
    /// Where agents with a join token get their certificates: TLS with the controller's certificate and no client
    /// certificate, serving joining only (the mTLS port stays strict). Off when unset.
    #[arg(long, env = "OUTPOST_JOIN_LISTEN")]
    pub join_listen: Option<SocketAddr>,
    /// The private key (PEM) of the CA that signs agents' certificates (the first certificate of --tls-ca): a file,
    /// or the ARN of an AWS Secrets Manager secret holding it. Needed to join agents and renew their certificates
    /// when --tls-ca is given; a controller that made its own CA uses that CA's key.
    #[arg(long, env = "OUTPOST_CA_KEY")]
    pub ca_key: Option<String>,
    /// A file holding a join token (`<id>.<secret>`, as `outpostctl tokens create` prints) that is registered at
    /// every start as a reusable token for --bootstrap-token-pool, so every agent of a release can join with it and nobody
    /// has to mint one first. A changed file replaces the token of the previous one (revoked).
    #[arg(long, env = "OUTPOST_BOOTSTRAP_TOKEN_FILE", conflicts_with = "bootstrap_token")]
    pub bootstrap_token_file: Option<std::path::PathBuf>,
    /// The bootstrap token itself, for platforms that hand secrets over as environment (ECS): as
    /// --bootstrap-token-file, in `<id>.<secret>` form or as those 22 characters without the dot.
    #[arg(long, env = "OUTPOST_BOOTSTRAP_TOKEN", hide_env_values = true, value_parser = JoinToken::parse)]
    pub bootstrap_token: Option<JoinToken>,
    /// The pool the bootstrap token joins agents to.
    /// The pool the bootstrap token joins agents to. Unset: the only pool the controller serves (its --queue,
    /// --queue-from-gms or --gms-channel pool), or `default` when it serves none from outside.
    #[arg(long = "bootstrap-token-pool", alias = "bootstrap-pool", env = "OUTPOST_BOOTSTRAP_TOKEN_POOL")]
    pub bootstrap_token_pool: Option<String>,
    /// How long a certificate issued to an agent lives; agents renew at about half of it.
    #[arg(long, env = "OUTPOST_AGENT_CERT_TTL", value_parser = duration::parse, default_value = "24h")]
    pub agent_cert_ttl: Duration,
    /// CA rotation (a controller that made its own CA): how long a prepared CA (`outpostctl ca rotate`) is trusted
    /// beside the signing one before it signs by itself (agents are sent the new bundle in that time; one that is
    /// away for all of it needs a join token again).
    #[arg(long, env = "OUTPOST_CA_OVERLAP", value_parser = duration::parse, default_value = "24h")]
    pub ca_overlap: Duration,
    /// How often the controller checks whether --ca-overlap is up.
    #[arg(long, env = "OUTPOST_CA_CHECK_INTERVAL", value_parser = duration::parse, default_value = "1m")]
    pub ca_check_interval: Duration,
}

impl Config {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        if let Some(pool) = &self.bootstrap_token_pool {
            PoolId::parse(pool).map_err(|e| duration::Invalid(format!("--bootstrap-token-pool: {e}")))?;
        }
        duration::positive("--ca-overlap", self.ca_overlap)?;
        duration::positive("--ca-check-interval", self.ca_check_interval)?;
        duration::positive("--agent-cert-ttl", self.agent_cert_ttl)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this controller issues no certificates: start it with --ca-key")]
    NoAuthority,
    #[error("{0}")]
    Authority(String),
    #[error("{0}")]
    BadRequest(String),
    /// The step does not follow from where things stand (a CA rotation step out of order).
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Refused(#[from] JoinRefused),
    #[error("no join token {0}")]
    NoSuchToken(String),
    #[error("worker {0} is connected; a second agent cannot take its name")]
    WorkerConnected(WorkerId),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Scheduler(#[from] crate::scheduler::Error),
}

/// The bootstrap token's pool: the one named, else the only pool served from outside, else `default` (the pool of
/// local submissions). Several served and none named is refused: the token would join agents to a guess.
fn bootstrap_pool(named: Option<&str>, served: &[PoolId]) -> Result<PoolId, Error> {
    let bad = |e: outpost_common::ids::Error| Error::BadRequest(format!("--bootstrap-token-pool: {e}"));
    let mut distinct: Vec<&PoolId> = served.iter().collect();
    distinct.sort();
    distinct.dedup();
    match (named, distinct.as_slice()) {
        (Some(pool), _) => PoolId::parse(pool).map_err(bad),
        (None, []) => PoolId::parse("default").map_err(bad),
        (None, [only]) => Ok((*only).clone()),
        (None, several) => Err(Error::BadRequest(format!(
            "--bootstrap-token-pool is needed: the controller serves the pools {}",
            several.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Who made a bootstrap token (its `created_by`).
pub const BOOTSTRAP_CREATOR: &str = "bootstrap token file";

/// A bootstrap token does not expire: 9999-12-31.
const BOOTSTRAP_EXPIRY_MS: i64 = 253_402_300_799_000;

/// The CA's private key: read from a file, or from AWS Secrets Manager when `source` is a secret's ARN (region and
/// credentials from the AWS default chain). Never logged.
pub async fn read_ca_key(source: &str) -> Result<String, Error> {
    if source.starts_with("arn:") {
        let client = aws_sdk_secretsmanager::Client::new(&outpost_common::aws::loader(None).load().await);
        let secret = client.get_secret_value().secret_id(source).send().await.map_err(|e| {
            Error::Authority(format!("cannot read the CA key {source}: {}", outpost_common::errors::chain(&e)))
        })?;
        return secret.secret_string.ok_or_else(|| Error::Authority(format!("the secret {source} holds no text")));
    }
    std::fs::read_to_string(Path::new(source)).map_err(|e| Error::Authority(format!("cannot read {source}: {e}")))
}

/// What a token is made with.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub pool: PoolId,
    pub ttl: Duration,
    /// `None`: reusable.
    pub uses: Option<u32>,
    pub description: String,
}

/// A joined agent's identity and certificate.
#[derive(Clone, Debug)]
pub struct Joined {
    pub worker: WorkerId,
    pub pool: String,
    pub issued: Issued,
    pub ca_pem: String,
}

#[derive(Clone)]
pub struct Enrollment {
    store: Store,
    scheduler: Scheduler,
    /// Replaced when the signing CA changes (a CA rotation).
    authority: Arc<std::sync::RwLock<Option<Arc<Authority>>>>,
    /// The CA bundle agents are sent (none without an authority).
    bundles: Arc<tokio::sync::watch::Sender<Option<TrustBundle>>>,
    trust_domain: String,
    ttl: Duration,
}

impl Enrollment {
    pub fn new(
        store: Store,
        scheduler: Scheduler,
        authority: Option<Authority>,
        trust_domain: String,
        ttl: Duration,
    ) -> Enrollment {
        let enrollment = Enrollment {
            store,
            scheduler,
            authority: Arc::default(),
            bundles: Arc::new(tokio::sync::watch::Sender::new(None)),
            trust_domain,
            ttl,
        };
        if let Some(authority) = authority
            && let Err(e) = enrollment.replace_authority(authority)
        {
            warn!(error = %e, "cannot sign the CA bundle for agents; rotations will not reach them");
        }
        enrollment
    }

    fn authority(&self) -> Result<Arc<Authority>, Error> {
        self.authority.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(Error::NoAuthority)
    }

    /// A new signing CA or CA bundle (a CA rotation step): certificates are signed by it from now on, and connected
    /// agents are sent the new bundle.
    pub fn replace_authority(&self, authority: Authority) -> Result<(), Error> {
        let bundle = authority.trust_bundle();
        *self.authority.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(authority));
        self.bundles.send_replace(Some(bundle?));
        Ok(())
    }

    /// The CA bundle agents are to hold, now and whenever it changes.
    pub fn trust_bundles(&self) -> tokio::sync::watch::Receiver<Option<TrustBundle>> {
        self.bundles.subscribe()
    }

    /// Makes a token; the secret is only in the returned [`JoinToken`].
    pub async fn create_token(
        &self,
        request: TokenRequest,
        created_by: &str,
        audit: Option<Audit>,
    ) -> Result<(JoinToken, store::JoinToken), Error> {
        let token = JoinToken::generate();
        let new = NewToken {
            id: token.id.clone(),
            secret_hash: token.secret_hash(),
            bundle_key: token.bundle_key(),
            pool: request.pool.to_string(),
            expires_at_ms: unix_ms().saturating_add(outpost_common::duration::signed_millis(request.ttl)),
            uses_left: request.uses.map(i64::from),
            description: request.description,
            created_by: created_by.to_owned(),
        };
        let now_ms = unix_ms();
        self.store.create_token(&new, now_ms, audit).await?;
        info!(token = %token.id, pool = %request.pool, by = created_by, "join token created");
        // What was just stored: no uses yet, not revoked.
        let stored = store::JoinToken {
            id: new.id,
            pool: new.pool,
            expires_at_ms: new.expires_at_ms,
            uses_left: new.uses_left,
            description: new.description,
            created_by: new.created_by,
            created_at_ms: now_ms,
            revoked_at_ms: None,
            uses: Vec::new(),
        };
        Ok((token, stored))
    }

    /// Registers the bootstrap token (`--bootstrap-token-file` or `--bootstrap-token`), if one is given, as the
    /// reusable join token of `--bootstrap-token-pool`, or of the only pool in `served` when it is not given.
    pub async fn bootstrap(&self, config: &Config, served: &[PoolId]) -> Result<(), Error> {
        let (token, origin) = match (&config.bootstrap_token, &config.bootstrap_token_file) {
            (Some(token), _) => (token.clone(), "OUTPOST_BOOTSTRAP_TOKEN".to_owned()),
            (None, Some(file)) => {
                let text = tokio::fs::read_to_string(file).await.map_err(|e| {
                    Error::BadRequest(format!("cannot read the bootstrap token file {}: {e}", file.display()))
                })?;
                let token = JoinToken::parse(&text)
                    .map_err(|e| Error::BadRequest(format!("the bootstrap token file {}: {e}", file.display())))?;
                (token, format!("from {}", file.display()))
            }
            (None, None) => return Ok(()),
        };
        let pool = bootstrap_pool(config.bootstrap_token_pool.as_deref(), served)?;
        let new = NewToken {
            id: token.id.clone(),
            secret_hash: token.secret_hash(),
            bundle_key: token.bundle_key(),
            pool: pool.to_string(),
            expires_at_ms: BOOTSTRAP_EXPIRY_MS,
            uses_left: None,
            description: origin,
            created_by: BOOTSTRAP_CREATOR.to_owned(),
        };
        let revoked = self.store.bootstrap_token(&new, unix_ms()).await?;
        info!(token = %token.id, pool = %pool, replaced = ?revoked, "bootstrap join token registered");
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<store::JoinToken>, Error> {
        Ok(self.store.tokens().await?)
    }

    pub async fn revoke_token(&self, id: &str, audit: Option<Audit>) -> Result<(), Error> {
        match self.store.revoke_token(id, unix_ms(), audit).await? {
            true => {
                info!(token = id, "join token revoked");
                Ok(())
            }
            false => Err(Error::NoSuchToken(id.to_owned())),
        }
    }

    /// The CA bundle and its signature for holders of token `id`.
    pub async fn ca_bundle(&self, token_id: &str) -> Result<(String, String), Error> {
        let authority = self.authority()?;
        let key = self.store.token_bundle_key(token_id).await?;
        let key = key.ok_or_else(|| Error::NoSuchToken(token_id.to_owned()))?;
        Ok((authority.ca_pem.clone(), join::sign_bundle(&key, &authority.ca_pem)))
    }

    /// A token and a signing request in, a certificate out. The worker id is the one asked for, or one made from
    /// the pool when none is.
    pub async fn join(&self, token: &str, worker: &str, csr_pem: &str, address: &str) -> Result<Joined, Error> {
        let authority = self.authority()?;
        let token = JoinToken::parse(token).map_err(|e| Error::BadRequest(e.to_string()))?;
        let worker = match worker {
            "" => {
                let suffix: String = (0..8).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
                WorkerId::parse(&format!("agent-{suffix}"))
            }
            asked => WorkerId::parse(asked),
        }
        .map_err(|e| Error::BadRequest(format!("worker id: {e}")))?;
        // The request is checked before the token is spent on it.
        let probe = authority.sign(csr_pem, &self.trust_domain, &worker, Duration::from_secs(1));
        probe?;
        // Agents of one release share a reusable token: a second one asking for a live worker's name is refused.
        let workers = self.scheduler.list_workers().await?;
        if workers.iter().any(|w| w.worker_id == worker && w.state != crate::scheduler::WorkerState::Disconnected) {
            warn!(token = %token.id, worker = %worker, address, "join refused: the worker is connected");
            return Err(Error::WorkerConnected(worker));
        }
        let pool = match self.store.join(&token.id, &token.secret_hash(), &worker, address, unix_ms()).await? {
            Ok(pool) => pool,
            Err(refused) => {
                warn!(token = %token.id, worker = %worker, address, reason = %refused, "join refused");
                return Err(refused.into());
            }
        };
        let issued = self.issue(csr_pem, &worker).await?;
        info!(token = %token.id, worker = %worker, pool, address, expires_at_ms = issued.expires_at_ms, "agent joined");
        Ok(Joined { worker, pool, issued, ca_pem: authority.ca_pem.clone() })
    }

    /// A new certificate for a connected worker's new key.
    pub async fn renew(&self, worker: &WorkerId, csr_pem: &str) -> Result<Issued, Error> {
        if self.is_revoked(worker).await? {
            return Err(JoinRefused::WorkerRevoked(worker.to_string()).into());
        }
        let issued = self.issue(csr_pem, worker).await?;
        info!(worker = %worker, expires_at_ms = issued.expires_at_ms, "certificate renewed");
        Ok(issued)
    }

    async fn issue(&self, csr_pem: &str, worker: &WorkerId) -> Result<Issued, Error> {
        let authority = self.authority()?;
        let issued = authority.sign(csr_pem, &self.trust_domain, worker, self.ttl)?;
        let ca = &authority.fingerprint;
        self.store.certificate_issued(&issued.serial, worker, issued.expires_at_ms, ca, unix_ms()).await?;
        Ok(issued)
    }

    /// Revokes a worker for good: recorded first (so it is refused from now on, restarts included), then its
    /// session is closed and its work lost.
    pub async fn revoke_worker(&self, worker: &WorkerId, reason: &str, audit: Option<Audit>) -> Result<(), Error> {
        self.store.revoke_worker(worker, reason, unix_ms(), audit).await?;
        self.scheduler.revoke(worker).await?;
        warn!(worker = %worker, reason, "worker revoked");
        Ok(())
    }

    /// Revokes one certificate by serial: refused from now on; the stream of the worker it was issued to (if this
    /// controller issued it) is closed and its work lost, as for a revoked worker.
    pub async fn revoke_certificate(&self, serial: &str, reason: &str, audit: Option<Audit>) -> Result<(), Error> {
        let serial = serial.trim().trim_start_matches("0x").to_ascii_lowercase();
        let serial = serial.trim_start_matches('0');
        if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::BadRequest("a certificate serial is hex digits".into()));
        }
        let worker = self.store.revoke_certificate(serial, reason, unix_ms(), audit).await?;
        if let Some(worker) = worker.as_deref().and_then(|w| WorkerId::parse(w).ok()) {
            self.scheduler.revoke(&worker).await?;
        }
        warn!(serial, worker = worker.as_deref().unwrap_or("?"), reason, "certificate revoked");
        Ok(())
    }

    pub async fn is_certificate_revoked(&self, serial: &str) -> Result<bool, Error> {
        Ok(self.store.certificate_revoked(serial).await?)
    }

    pub async fn is_revoked(&self, worker: &WorkerId) -> Result<bool, Error> {
        Ok(self.store.worker_revoked(worker).await?)
    }

    /// The pool a joined worker is bound to.
    pub async fn binding(&self, worker: &WorkerId) -> Result<Option<String>, Error> {
        Ok(self.store.worker_binding(worker).await?)
    }

    /// Per worker: its latest issued certificate (expiry, serial) and its revocation time.
    pub async fn worker_facts(&self) -> Result<(Vec<(String, i64, String)>, Vec<(String, i64)>), Error> {
        Ok((self.store.certificate_expiries().await?, self.store.revoked_workers().await?))
    }
}

#[cfg(test)]
mod bootstrap_tests {
    use super::*;

    #[test]
    fn the_bootstrap_pool_is_the_one_named_else_the_only_one_served_else_default() {
        let pool = |p: &str| PoolId::parse(p).unwrap();
        assert_eq!(bootstrap_pool(Some("named"), &[pool("a"), pool("b")]).unwrap(), pool("named"));
        assert_eq!(bootstrap_pool(None, &[pool("remote"), pool("remote")]).unwrap(), pool("remote"));
        assert_eq!(bootstrap_pool(None, &[]).unwrap(), pool("default"));
        let refused = bootstrap_pool(None, &[pool("b"), pool("a")]).unwrap_err().to_string();
        assert!(
            refused.contains("--bootstrap-token-pool is needed: the controller serves the pools a, b"),
            "{refused}"
        );
        assert!(bootstrap_pool(Some("no spaces"), &[]).is_err());
    }
}
