//! The admin API's side of the audit trail: a change's audit row is made here from the caller's certificate and
//! address and handed down with the change (the store writes it in the change's transaction); a refusal or a
//! failure is recorded alone. Reads are never recorded. Never writes SQL.

use outpost_common::clock::unix_ms;
use outpost_common::pb;
use outpost_common::roles::AdminRpc;
use tonic::{Request, Status};
use tracing::{info, warn};

use std::time::Duration;

use outpost_common::duration;
use tokio_util::sync::CancellationToken;

use super::AdminService;
use crate::edge::identity;
use crate::store::{Audit, AuditEvent, AuditFilter, AuditOutcome, Store, Via};

/// The audit trail's flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "audit")]
#[command(next_help_heading = "Audit trail")]
pub struct AuditConfig {
    /// How long audit rows are kept (`outpostctl audit`); older ones are deleted.
    #[arg(long, env = "OUTPOST_AUDIT_RETENTION", value_parser = duration::parse, default_value = "90d")]
    pub audit_retention: Duration,
    /// How often rows past --audit-retention are deleted.
    #[arg(long, env = "OUTPOST_AUDIT_PRUNE_INTERVAL", value_parser = duration::parse, default_value = "1h")]
    pub audit_prune_interval: Duration,
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--audit-retention", self.audit_retention)?;
        duration::positive("--audit-prune-interval", self.audit_prune_interval)
    }
}

/// Deletes audit rows older than --audit-retention, at start and every --audit-prune-interval, until `token` is
/// cancelled.
pub async fn retain(store: Store, config: AuditConfig, token: CancellationToken) {
    let mut every = tokio::time::interval(config.audit_prune_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = every.tick() => {}
        }
        let before = unix_ms() - i64::try_from(config.audit_retention.as_millis()).unwrap_or(i64::MAX);
        match store.prune_audit(before).await {
            Ok(0) => {}
            Ok(n) => info!(rows = n, "audit rows past --audit-retention deleted"),
            Err(e) => warn!(error = %e, "cannot delete old audit rows; will try again"),
        }
    }
}

impl AdminService {
    /// The caller of a read, if its role may call `rpc`.
    pub(super) fn authorize<T>(&self, request: &Request<T>, rpc: AdminRpc) -> Result<identity::Caller, Status> {
        identity::authorize(request, &self.trust_domain, &self.legacy_admins, rpc).map_err(|denied| denied.status)
    }

    /// The audit row of a change `rpc` asks for (on `target`, with the caller's `reason`), if the caller's role
    /// may ask for it; a refusal is recorded before it is answered.
    pub(super) async fn change<T>(
        &self,
        request: &Request<T>,
        rpc: AdminRpc,
        target: &str,
        reason: &str,
    ) -> Result<Audit, Status> {
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let audit = |actor: String, role| Audit {
            actor,
            role,
            via: Via::Api,
            peer: peer.clone(),
            action: rpc.name(),
            target: target.to_owned(),
            reason: reason.to_owned(),
        };
        match identity::authorize(request, &self.trust_domain, &self.legacy_admins, rpc) {
            Ok(caller) => Ok(audit(caller.name, Some(caller.role))),
            Err(denied) => {
                if rpc.changes() {
                    let row = audit(denied.name, denied.role);
                    self.record(row, AuditOutcome::Denied, denied.status.message()).await;
                }
                Err(denied.status)
            }
        }
    }

    /// `result` of an audited change: a failure is recorded (the change itself wrote its row when it was made).
    pub(super) async fn settled<T>(&self, audit: Audit, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.record(audit, AuditOutcome::Failed, status.message()).await;
        }
        result
    }

    async fn record(&self, audit: Audit, outcome: AuditOutcome, detail: &str) {
        let (action, actor) = (audit.action, audit.actor.clone());
        if let Err(e) = self.store.audit(audit, outcome, detail.to_owned(), unix_ms()).await {
            warn!(action, actor, %outcome, error = %e, "cannot record an audit row");
        }
    }

    pub(super) async fn audit_events(&self, r: &pb::ListAuditEventsRequest) -> Result<Vec<pb::AuditEvent>, Status> {
        let filter = AuditFilter {
            since_ms: (r.since_unix_ms > 0).then_some(r.since_unix_ms),
            actor: (!r.actor.is_empty()).then(|| r.actor.clone()),
            action: (!r.action.is_empty()).then(|| r.action.clone()),
            limit: if r.limit == 0 { 100 } else { r.limit.min(1000) },
        };
        let events = self.store.audit_events(&filter).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(events.into_iter().map(event).collect())
    }
}

fn event(e: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id,
        at_unix_ms: e.at_ms,
        actor: e.actor,
        role: e.role.map(|r| r.to_string()).unwrap_or_default(),
        via: e.via.as_str().to_owned(),
        peer: e.peer,
        action: e.action,
        target: e.target,
        outcome: e.outcome.to_string(),
        reason: e.reason,
        detail: e.detail,
    }
}
