//! `outpost.v1.AdminService`: the operator API. Thin handlers: check the caller's role for the RPC (the one table
//! in `outpost_common::roles`), convert, call one core method, map the error. Never writes SQL.

mod audit;
mod convert;

pub use audit::{AuditConfig, retain};

use outpost_common::ids::{PoolId, TaskId, WorkerId};
use outpost_common::pb;
use outpost_common::roles::AdminRpc;
use outpost_common::venv::VenvSpec;
use tonic::{Request, Response, Status};

use crate::edge::status;
use crate::enroll::{Enrollment, TokenRequest};
use crate::logs::LogTails;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use crate::sources::local::{self, LocalQueue, Submission};
use crate::store::TaskFilter;

pub struct AdminService {
    pub scheduler: Scheduler,
    pub enrollment: Enrollment,
    pub local_queue: LocalQueue,
    pub logs: LogTails,
    pub logins: crate::ui::Logins,
    pub metrics: Metrics,
    pub trust_domain: String,
    /// `--admin-role` mappings for certificates issued before roles.
    pub legacy_admins: Vec<outpost_common::roles::LegacyAdmin>,
    /// The audit trail's reads, and its refusals and failures (recorded alone).
    pub store: crate::store::Store,
    pub ca: crate::enroll::CaRotation,
}

/// `<created_at_ms>:<id>` of the last task of a page.
fn page_token(task: &crate::store::TaskRecord) -> String {
    format!("{}:{}", task.created_at_ms, task.request.id)
}

fn parse_page_token(token: &str) -> Result<Option<(i64, TaskId)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Status::invalid_argument(format!("page_token {token:?} is not one this API returned"));
    let (created, id) = token.split_once(':').ok_or_else(bad)?;
    Ok(Some((created.parse().map_err(|_| bad())?, TaskId::parse(id).map_err(|_| bad())?)))
}

fn task_id(id: &str) -> Result<TaskId, Status> {
    TaskId::parse_id_or_urn(id).map_err(|e| Status::invalid_argument(format!("id: {e}")))
}

fn worker_id(id: &str) -> Result<WorkerId, Status> {
    WorkerId::parse(id).map_err(|e| Status::invalid_argument(format!("worker_id: {e}")))
}

fn local_error(error: local::Error) -> Status {
    match error {
        local::Error::Invalid { .. } => Status::invalid_argument(error.to_string()),
        local::Error::Scheduler(e) => status::from_scheduler(e),
    }
}

impl AdminService {
    /// One task and its attempts, read from the store (NOT_FOUND when unknown).
    async fn task(
        &self,
        id: &outpost_common::ids::TaskId,
    ) -> Result<(crate::store::TaskRecord, Vec<crate::store::AttemptRecord>), Status> {
        let found = self.store.task(id).await.map_err(status::from_store)?;
        found.ok_or_else(|| status::from_scheduler(crate::scheduler::Error::NotFound(id.clone())))
    }

    /// Every worker with its certificate expiry and revocation (one view for ListWorkers and GetWorker).
    async fn workers(&self) -> Result<Vec<pb::Worker>, Status> {
        let workers = self.scheduler.list_workers().await.map_err(status::from_scheduler)?;
        let (expiries, revoked) = self.enrollment.worker_facts().await.map_err(status::from_enrollment)?;
        Ok(workers
            .into_iter()
            .map(|w| {
                let id = w.worker_id.to_string();
                let mut worker = convert::worker(w);
                if let Some((_, at, serial)) = expiries.iter().find(|(w, ..)| *w == id) {
                    worker.cert_expires_unix_ms = *at;
                    worker.cert_serial = serial.clone();
                }
                worker.revoked_unix_ms = revoked.iter().find(|(w, _)| *w == id).map_or(0, |(_, at)| *at);
                worker
            })
            .collect())
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminService {
    async fn submit_task(
        &self,
        request: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        let target = format!("{} {}", request.get_ref().pool, request.get_ref().execution_request_id);
        let audit = self.change(&request, AdminRpc::SubmitTask, target.trim(), "").await?;
        let r = request.into_inner();
        let submission = Submission {
            task_name: r.task,
            args: r.args.into_iter().collect(),
            pool: r.pool,
            execution_request_id: r.execution_request_id,
            source_type: r.source_type,
        };
        let submitted = self.local_queue.submit(submission, Some(audit.clone())).await.map_err(local_error);
        let (task, created) = self.settled(audit, submitted).await?;
        Ok(Response::new(pb::SubmitTaskResponse { task: Some(convert::task(task, Vec::new())), created }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.authorize(&request, AdminRpc::ListTasks)?;
        let r = request.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit.min(1000) };
        let filter = TaskFilter {
            state: convert::task_state_filter(r.state)?,
            pool: if r.pool.is_empty() {
                None
            } else {
                Some(PoolId::parse(&r.pool).map_err(|e| Status::invalid_argument(format!("pool: {e}")))?)
            },
            worker: if r.worker_id.is_empty() { None } else { Some(worker_id(&r.worker_id)?) },
            after: parse_page_token(&r.page_token)?,
            // One more than asked tells whether another page follows.
            limit: limit + 1,
        };
        let mut tasks = self.store.list_tasks(&filter).await.map_err(status::from_store)?;
        let next_page_token = if tasks.len() > limit as usize {
            tasks.truncate(limit as usize);
            tasks.last().map(page_token).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.into_iter().map(|t| convert::task(t, Vec::new())).collect(),
            next_page_token,
        }))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::Task>, Status> {
        self.authorize(&request, AdminRpc::GetTask)?;
        let id = task_id(&request.get_ref().id)?;
        let (task, attempts) = self.task(&id).await?;
        let tail = self.logs.tail(&task.request.id, task.epoch).unwrap_or_default();
        let mut task = convert::task(task, attempts);
        task.log_tail = tail;
        Ok(Response::new(task))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        self.authorize(&request, AdminRpc::ListWorkers)?;
        Ok(Response::new(pb::ListWorkersResponse { workers: self.workers().await? }))
    }

    async fn cancel_task(&self, request: Request<pb::CancelTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let r = request.get_ref();
        let audit = self.change(&request, AdminRpc::CancelTask, &r.id, &r.reason).await?;
        let cancelled = async {
            let id = task_id(&r.id)?;
            let reason = if r.reason.is_empty() { format!("cancelled by {}", audit.actor) } else { r.reason.clone() };
            self.scheduler.cancel(&id, &reason, Some(audit.clone())).await.map_err(status::from_scheduler)?;
            Ok(id)
        }
        .await;
        let id = self.settled(audit, cancelled).await?;
        let (task, attempts) = self.task(&id).await?;
        Ok(Response::new(convert::task(task, attempts)))
    }

    async fn list_quarantined(
        &self,
        request: Request<pb::ListQuarantinedRequest>,
    ) -> Result<Response<pb::ListQuarantinedResponse>, Status> {
        self.authorize(&request, AdminRpc::ListQuarantined)?;
        let limit = match request.get_ref().limit {
            0 => 100,
            n => n,
        };
        let messages = self.store.quarantined(limit).await.map_err(status::from_store)?;
        Ok(Response::new(pb::ListQuarantinedResponse {
            messages: messages.into_iter().map(convert::quarantined).collect(),
        }))
    }

    async fn replay_quarantined(
        &self,
        request: Request<pb::ReplayQuarantinedRequest>,
    ) -> Result<Response<pb::ReplayQuarantinedResponse>, Status> {
        let id = request.get_ref().id;
        let audit = self.change(&request, AdminRpc::ReplayQuarantined, &id.to_string(), "").await?;
        let replayed = crate::sources::sqs::replay_quarantined(&self.scheduler, &self.store, id, Some(audit.clone()))
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()));
        let task = self.settled(audit, replayed).await?;
        Ok(Response::new(pb::ReplayQuarantinedResponse { task_id: task.to_string() }))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        let audit = self.change(&request, AdminRpc::DrainWorker, &request.get_ref().worker_id, "").await?;
        let drained = async {
            let worker = worker_id(&request.get_ref().worker_id)?;
            self.scheduler.drain(&worker, Some(audit.clone())).await.map_err(status::from_scheduler)
        }
        .await;
        self.settled(audit, drained).await?;
        Ok(Response::new(pb::DrainWorkerResponse {}))
    }

    async fn get_worker(&self, request: Request<pb::GetWorkerRequest>) -> Result<Response<pb::Worker>, Status> {
        self.authorize(&request, AdminRpc::GetWorker)?;
        let worker = worker_id(&request.get_ref().worker_id)?;
        let found = self.workers().await?.into_iter().find(|w| w.worker_id == worker.as_str());
        found.map(Response::new).ok_or_else(|| Status::not_found(format!("no worker {worker}")))
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let r = request.get_ref();
        let audit = self.change(&request, AdminRpc::CreateJoinToken, &r.pool, &r.description).await?;
        let created = async {
            let token = TokenRequest {
                pool: PoolId::parse(&r.pool).map_err(|e| Status::invalid_argument(format!("pool: {e}")))?,
                ttl: std::time::Duration::from_secs(if r.ttl_seconds == 0 { 24 * 3600 } else { r.ttl_seconds }),
                uses: (!r.reusable).then_some(r.uses.max(1)),
                description: r.description.clone(),
            };
            self.enrollment
                .create_token(token, &audit.actor, Some(audit.clone()))
                .await
                .map_err(status::from_enrollment)
        }
        .await;
        let (secret, info) = self.settled(audit, created).await?;
        Ok(Response::new(pb::CreateJoinTokenResponse { token: secret.reveal(), info: Some(convert::join_token(info)) }))
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> Result<Response<pb::ListJoinTokensResponse>, Status> {
        self.authorize(&request, AdminRpc::ListJoinTokens)?;
        let tokens = self.enrollment.tokens().await.map_err(status::from_enrollment)?;
        Ok(Response::new(pb::ListJoinTokensResponse { tokens: tokens.into_iter().map(convert::join_token).collect() }))
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> Result<Response<pb::RevokeJoinTokenResponse>, Status> {
        let id = &request.get_ref().id;
        let audit = self.change(&request, AdminRpc::RevokeJoinToken, id, "").await?;
        let revoked = self.enrollment.revoke_token(id, Some(audit.clone())).await.map_err(status::from_enrollment);
        self.settled(audit, revoked).await?;
        Ok(Response::new(pb::RevokeJoinTokenResponse {}))
    }

    async fn revoke_worker(
        &self,
        request: Request<pb::RevokeWorkerRequest>,
    ) -> Result<Response<pb::RevokeWorkerResponse>, Status> {
        let r = request.get_ref();
        let target = if r.serial.is_empty() { r.worker_id.clone() } else { format!("serial {}", r.serial) };
        let audit = self.change(&request, AdminRpc::RevokeWorker, &target, &r.reason).await?;
        let reason = if r.reason.is_empty() { format!("revoked by {}", audit.actor) } else { r.reason.clone() };
        let revoked = async {
            let enrollment = &self.enrollment;
            if !r.serial.is_empty() {
                return enrollment.revoke_certificate(&r.serial, &reason, Some(audit.clone())).await;
            }
            let worker = worker_id(&r.worker_id).map_err(|s| crate::enroll::Error::BadRequest(s.message().into()))?;
            enrollment.revoke_worker(&worker, &reason, Some(audit.clone())).await
        }
        .await;
        self.settled(audit, revoked.map_err(status::from_enrollment)).await?;
        Ok(Response::new(pb::RevokeWorkerResponse {}))
    }

    async fn create_ui_token(
        &self,
        request: Request<pb::CreateUiTokenRequest>,
    ) -> Result<Response<pb::CreateUiTokenResponse>, Status> {
        let r = request.get_ref();
        let audit = self.change(&request, AdminRpc::CreateUiToken, &r.role, &r.description).await?;
        let created = async {
            let ttl = std::time::Duration::from_secs(if r.ttl_seconds == 0 { 12 * 3600 } else { r.ttl_seconds });
            let role = match r.role.as_str() {
                "" => outpost_common::roles::Role::Viewer,
                role => role.parse().map_err(|e| Status::invalid_argument(format!("role: {e}")))?,
            };
            let by = format!("admin/{}", audit.actor);
            let audit = Some(audit.clone());
            self.logins.create(ttl, &r.description, role, &by, audit).await.map_err(status::from_ui_login)
        }
        .await;
        let created = self.settled(audit, created).await?;
        Ok(Response::new(pb::CreateUiTokenResponse {
            token: created.token,
            id: created.id,
            expires_unix_ms: created.expires_at_ms,
            role: created.role.to_string(),
        }))
    }

    async fn revoke_ui_token(
        &self,
        request: Request<pb::RevokeUiTokenRequest>,
    ) -> Result<Response<pb::RevokeUiTokenResponse>, Status> {
        let id = &request.get_ref().id;
        let audit = self.change(&request, AdminRpc::RevokeUiToken, id, "").await?;
        let revoked = self.logins.revoke(id, Some(audit.clone())).await.map_err(status::from_ui_login);
        self.settled(audit, revoked).await?;
        Ok(Response::new(pb::RevokeUiTokenResponse {}))
    }

    async fn warm_venvs(
        &self,
        request: Request<pb::WarmVenvsRequest>,
    ) -> Result<Response<pb::WarmVenvsResponse>, Status> {
        let r = request.get_ref();
        let target = format!("{} {}=={}", r.pool, r.plugin, r.version);
        let audit = self.change(&request, AdminRpc::WarmVenvs, &target, "").await?;
        let warmed = async {
            let pool = PoolId::parse(&r.pool).map_err(|e| Status::invalid_argument(format!("pool: {e}")))?;
            let spec = VenvSpec::pinned(&r.version, &r.plugin).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let key = spec.key().to_string();
            let asked = self.scheduler.warm(&pool, spec, r.agents, Some(audit.clone())).await;
            asked.map(|asked| (key, asked)).map_err(status::from_scheduler)
        }
        .await;
        let (key, asked) = self.settled(audit, warmed).await?;
        Ok(Response::new(pb::WarmVenvsResponse { key, worker_ids: asked.iter().map(ToString::to_string).collect() }))
    }

    async fn retry_task(&self, request: Request<pb::RetryTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let audit = self.change(&request, AdminRpc::RetryTask, &request.get_ref().id, "").await?;
        let retried = async {
            let id = task_id(&request.get_ref().id)?;
            self.scheduler.retry(&id, Some(audit.clone())).await.map_err(status::from_scheduler)?;
            Ok(id)
        }
        .await;
        let id = self.settled(audit, retried).await?;
        let (task, attempts) = self.task(&id).await?;
        Ok(Response::new(convert::task(task, attempts)))
    }

    async fn get_stats(&self, request: Request<pb::GetStatsRequest>) -> Result<Response<pb::Stats>, Status> {
        self.authorize(&request, AdminRpc::GetStats)?;
        let backlogs = self.store.pool_backlogs().await.map_err(status::from_store)?;
        let capacity = self.scheduler.capacity().await.map_err(status::from_scheduler)?;
        let outbox_backlog = self.store.outbox_depth().await.map_err(status::from_store)?;
        let now = outpost_common::clock::unix_ms();
        Ok(Response::new(convert::stats(backlogs, capacity, outbox_backlog, &self.metrics, now)))
    }

    async fn explain_task(
        &self,
        request: Request<pb::ExplainTaskRequest>,
    ) -> Result<Response<pb::Explanation>, Status> {
        self.authorize(&request, AdminRpc::ExplainTask)?;
        let id = task_id(&request.get_ref().id)?;
        let explanation = self.scheduler.explain(&id).await.map_err(status::from_scheduler)?;
        Ok(Response::new(convert::explanation(&id, explanation)))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        self.authorize(&request, AdminRpc::ListAuditEvents)?;
        Ok(Response::new(pb::ListAuditEventsResponse { events: self.audit_events(request.get_ref()).await? }))
    }

    async fn rotate_ca(&self, request: Request<pb::RotateCaRequest>) -> Result<Response<pb::CaStatus>, Status> {
        let audit = self.change(&request, AdminRpc::RotateCa, "ca", &request.get_ref().reason).await?;
        let rotated = self.ca.rotate(audit.clone()).await.map_err(status::from_enrollment);
        Ok(Response::new(convert::ca_status(self.settled(audit, rotated).await?)))
    }

    async fn activate_ca(&self, request: Request<pb::ActivateCaRequest>) -> Result<Response<pb::CaStatus>, Status> {
        let audit = self.change(&request, AdminRpc::ActivateCa, "ca", &request.get_ref().reason).await?;
        let activated = self.ca.activate(audit.clone()).await.map_err(status::from_enrollment);
        Ok(Response::new(convert::ca_status(self.settled(audit, activated).await?)))
    }

    async fn retire_ca(&self, request: Request<pb::RetireCaRequest>) -> Result<Response<pb::CaStatus>, Status> {
        let r = request.get_ref();
        let target = if r.force { "ca (forced)" } else { "ca" };
        let audit = self.change(&request, AdminRpc::RetireCa, target, &r.reason).await?;
        let retired = self.ca.retire(audit.clone(), r.force).await.map_err(status::from_enrollment);
        Ok(Response::new(convert::ca_status(self.settled(audit, retired).await?)))
    }

    async fn get_ca_status(&self, request: Request<pb::GetCaStatusRequest>) -> Result<Response<pb::CaStatus>, Status> {
        self.authorize(&request, AdminRpc::GetCaStatus)?;
        let status = self.ca.status().await.map_err(status::from_enrollment)?;
        Ok(Response::new(convert::ca_status(status)))
    }
}
