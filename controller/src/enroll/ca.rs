//! CA rotation of a controller that made its own CA: prepare → activate (when --ca-overlap is up, or when asked) →
//! retire. Each step changes the files (`trust::rotation`), then the authority that signs agents' certificates and
//! the bundle connected agents are sent, and is audited. Which agent holds a certificate from which CA. The core
//! behind the admin RPCs and the overlap timer; never sees protobuf types.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use outpost_common::bundle;
use outpost_common::clock::unix_ms;
use outpost_common::roles::Role;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Authority, Enrollment, Error};
use crate::scheduler::WorkerState;
use crate::store::{Audit, AuditOutcome, Via};
use crate::trust::{Own, Phase, RotationError};

/// A CA as status output shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaInfo {
    pub fingerprint: String,
    pub subject: String,
    pub expires_at_ms: i64,
}

impl CaInfo {
    fn of(pem: &str) -> Option<CaInfo> {
        let (subject, expires_at_ms) = bundle::describe(pem)?;
        Some(CaInfo { fingerprint: bundle::first_fingerprint(pem)?, subject, expires_at_ms })
    }
}

/// A connected agent and the CA of the latest certificate issued to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaAgent {
    pub worker: String,
    /// Empty: no certificate issued by this controller.
    pub ca: String,
    pub on_signing_ca: bool,
}

#[derive(Clone, Debug)]
pub struct CaStatus {
    pub phase: Phase,
    pub activates_at: Option<SystemTime>,
    pub signing: Option<CaInfo>,
    pub next: Option<CaInfo>,
    pub previous: Option<CaInfo>,
    pub agents: Vec<CaAgent>,
}

/// Rotates the CA of a controller that made its own.
#[derive(Clone)]
pub struct CaRotation {
    /// `None`: the CA comes from --tls-ca, and is rotated by whoever made it.
    own: Option<Own>,
    enrollment: Enrollment,
    overlap: Duration,
    /// One step at a time.
    step: Arc<tokio::sync::Mutex<()>>,
    /// Called after each step: the TLS listeners read the changed files now, not at their next check.
    reload: Arc<dyn Fn() + Send + Sync>,
}

fn rotation_error(e: RotationError) -> Error {
    match e {
        RotationError::Phase(why) => Error::Precondition(why),
        other => Error::Authority(other.to_string()),
    }
}

impl CaRotation {
    pub fn new(
        own: Option<Own>,
        enrollment: Enrollment,
        overlap: Duration,
        reload: Arc<dyn Fn() + Send + Sync>,
    ) -> CaRotation {
        CaRotation { own, enrollment, overlap, step: Arc::default(), reload }
    }

    fn own(&self) -> Result<&Own, Error> {
        self.own.as_ref().ok_or_else(|| {
            Error::Precondition(
                "this controller's CA comes from --tls-ca: rotate it with the PKI that made it (agents read their \
                 --tls-ca files again before every connection)"
                    .into(),
            )
        })
    }

    /// Prepares a new CA: trusted beside the signing one from now on; connected agents are sent both.
    pub async fn rotate(&self, audit: Audit) -> Result<CaStatus, Error> {
        self.step(audit, Own::rotate).await
    }

    /// The prepared CA signs from now on (the server's certificate too); agents renew from it.
    pub async fn activate(&self, audit: Audit) -> Result<CaStatus, Error> {
        self.step(audit, Own::activate).await
    }

    /// Drops the previous CA, once every connected agent holds a certificate from the signing one (or `force`).
    pub async fn retire(&self, audit: Audit, force: bool) -> Result<CaStatus, Error> {
        let status = self.status().await?;
        let behind: Vec<&str> = status.agents.iter().filter(|a| !a.on_signing_ca).map(|a| a.worker.as_str()).collect();
        if !force && matches!(status.phase, Phase::Activated { .. }) && !behind.is_empty() {
            return Err(Error::Precondition(format!(
                "{} connected agent(s) hold no certificate from the signing CA yet: {} (they renew as soon as they \
                 get the new bundle; retire anyway with --force, and they must join again)",
                behind.len(),
                behind.join(", ")
            )));
        }
        self.step(audit, Own::retire).await
    }

    async fn step(&self, audit: Audit, change: fn(&Own) -> Result<(), RotationError>) -> Result<CaStatus, Error> {
        let own = self.own()?.clone();
        let _one = self.step.lock().await;
        let action = audit.action;
        let done = tokio::task::spawn_blocking(move || -> Result<Authority, Error> {
            change(&own).map_err(rotation_error)?;
            // The server's certificate and the local admin identity, made again under the signing CA.
            for made in own.ensure(SystemTime::now()).map_err(rotation_error)? {
                info!(dir = %own.dir.display(), "{made}");
            }
            let key = std::fs::read_to_string(own.dir.join("ca.key"))
                .map_err(|e| Error::Authority(format!("cannot read the CA key: {e}")))?;
            Authority::load(&own.dir.join("ca.pem"), &key, "ca.key")
        })
        .await
        .map_err(|e| Error::Authority(format!("the CA step failed: {e}")))??;
        let reload = self.reload.clone();
        let _ = tokio::task::spawn_blocking(move || reload()).await;
        self.enrollment.replace_authority(done)?;
        let status = self.status().await?;
        info!(action, phase = status.phase.name(), signing = ?status.signing.as_ref().map(|c| &c.fingerprint), "CA rotation step done");
        self.enrollment.store.audit(audit, AuditOutcome::Done, String::new(), unix_ms()).await?;
        Ok(status)
    }

    pub async fn status(&self) -> Result<CaStatus, Error> {
        let own = self.own()?;
        let phase = own.phase();
        let signing_pem = own.signing_pem().map_err(rotation_error)?;
        let signing = CaInfo::of(&signing_pem);
        let signing_fp = signing.as_ref().map(|c| c.fingerprint.clone()).unwrap_or_default();
        let cas = self.enrollment.store.certificate_cas().await?;
        let workers = self.enrollment.scheduler.list_workers().await?;
        let agents = workers
            .into_iter()
            .filter(|w| w.state != WorkerState::Disconnected)
            .map(|w| {
                let worker = w.worker_id.to_string();
                let ca = cas.iter().find(|(id, _)| *id == worker).map(|(_, ca)| ca.clone()).unwrap_or_default();
                CaAgent { on_signing_ca: ca == signing_fp, worker, ca }
            })
            .collect();
        Ok(CaStatus {
            phase,
            activates_at: match phase {
                Phase::Prepared { since } => Some(since + self.overlap),
                _ => None,
            },
            signing,
            next: own.next_pem().as_deref().and_then(CaInfo::of),
            previous: own.previous_pem().as_deref().and_then(CaInfo::of),
            agents,
        })
    }

    /// Activates a prepared CA once --ca-overlap is up, checking every `interval`, until `token` is cancelled.
    pub async fn run(self, interval: Duration, token: CancellationToken) {
        let Some(own) = self.own.clone() else { return };
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let Phase::Prepared { since } = own.phase() else { continue };
            if since + self.overlap > SystemTime::now() {
                continue;
            }
            let audit = Audit {
                actor: "controller".into(),
                role: Some(Role::Admin),
                via: Via::Controller,
                peer: String::new(),
                action: "ActivateCa",
                target: String::new(),
                reason: format!("--ca-overlap {} is up", humantime::format_duration(self.overlap)),
            };
            match self.activate(audit).await {
                Ok(status) => info!(
                    signing = ?status.signing.map(|c| c.fingerprint),
                    "--ca-overlap is up: the new CA signs from now on"
                ),
                Err(e) => warn!(error = %e, "cannot activate the prepared CA; will try again"),
            }
        }
    }
}
