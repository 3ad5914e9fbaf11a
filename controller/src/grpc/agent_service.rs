//! `outpost.v1.AgentService`: one bidirectional stream per agent. Checks that the Hello matches the certificate,
//! then relays: agent messages → scheduler calls, scheduler commands → stream, keepalives both ways. Holds no
//! business rules.

use std::pin::Pin;
use std::time::Duration;

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use outpost_common::clock::unix_ms;
use outpost_common::identity::Identity;
use outpost_common::ids::{AttemptRef, WorkerId};
use outpost_common::pb::{self, agent_message::Msg as In, controller_message::Msg as Out};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::convert;
use crate::edge::{identity, status};
use crate::logs::LogTails;
use crate::scheduler::{Error as SchedulerError, Scheduler, SessionId};

/// How many commands may wait for one agent's stream.
const COMMAND_BUFFER: usize = 256;

/// How many acks and results of one agent may wait for the engine's answer before the session stops reading
/// (the engine answers after each group commit; the agent need not wait for one answer to send the next).
const MAX_UNANSWERED: usize = 256;

/// The engine's answer to an ack or a result, in the order the agent sent them.
enum Answered {
    Ack(AttemptRef, Result<(), SchedulerError>),
    Result(AttemptRef, Result<(), SchedulerError>),
}

type Unanswered = FuturesOrdered<Pin<Box<dyn Future<Output = Answered> + Send>>>;

pub struct AgentService {
    pub scheduler: Scheduler,
    /// Revocations, pool bindings and certificate renewals.
    pub enrollment: crate::enroll::Enrollment,
    /// Where agents' output lines go (for GMS progress reports).
    pub logs: LogTails,
    pub trust_domain: String,
    pub hello_timeout: Duration,
    /// Cancelled at shutdown: every session ends so the server can stop.
    pub shutdown: CancellationToken,
}

type Outbound = mpsc::Sender<Result<pb::ControllerMessage, Status>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentService {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let worker = match identity::peer(&request, &self.trust_domain)? {
            Identity::Agent(worker) => worker,
            other => return Err(Status::permission_denied(format!("{other} may not connect as an agent"))),
        };
        if let Some(serial) = identity::peer_serial(&request)
            && self.enrollment.is_certificate_revoked(&serial).await.map_err(status::from_enrollment)?
        {
            warn!(worker = %worker, serial, "agent refused: its certificate is revoked");
            return Err(Status::permission_denied(format!("certificate {serial} is revoked")));
        }
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.hello_timeout, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within the hello timeout"))??;
        let hello = match first.and_then(|m| m.msg) {
            Some(In::Hello(hello)) => convert::hello(hello)?,
            _ => return Err(Status::invalid_argument("the first message on the stream must be Hello")),
        };
        if hello.worker_id != worker {
            warn!(certificate = %worker, claimed = %hello.worker_id, "agent refused: Hello names another worker");
            return Err(Status::permission_denied(format!(
                "the certificate identifies worker {worker}, but Hello claims worker {}",
                hello.worker_id
            )));
        }
        if self.enrollment.is_revoked(&worker).await.map_err(status::from_enrollment)? {
            warn!(worker = %worker, "agent refused: the worker is revoked");
            return Err(Status::permission_denied(format!("worker {worker} is revoked")));
        }
        let bound = self.enrollment.binding(&worker).await.map_err(status::from_enrollment)?;
        if let Some(pool) = bound.filter(|pool| hello.pools.iter().any(|p| p.as_str() != pool.as_str())) {
            warn!(worker = %worker, bound = %pool, "agent refused: it asks for a pool its join token does not give");
            return Err(Status::permission_denied(format!(
                "worker {worker} joined with a token for pool {pool} and may serve only that pool"
            )));
        }
        let (commands, command_rx) = mpsc::channel(COMMAND_BUFFER);
        let kick = self.shutdown.child_token();
        let held = hello.held.clone();
        let welcome = self.scheduler.connect(hello, commands, kick.clone()).await.map_err(status::from_scheduler)?;
        // The attempts it still runs and may keep: their output is welcome again.
        for attempt in held.iter().filter(|a| !welcome.cancel.contains(a)) {
            self.logs.open(attempt, &worker);
        }
        let config = self.scheduler.config();
        let (outbound, outbound_rx) = mpsc::channel(COMMAND_BUFFER);
        let welcome_msg = Out::Welcome(pb::Welcome {
            session_id: welcome.session.to_string(),
            heartbeat_interval_ms: outpost_common::duration::millis(config.heartbeat_interval),
            lease_ttl_ms: outpost_common::duration::millis(config.lease_ttl),
            keepalive_interval_ms: outpost_common::duration::millis(config.keepalive_interval),
            cancel: welcome.cancel.iter().map(convert::attempt_to_pb).collect(),
        });
        let _ = outbound.send(Ok(pb::ControllerMessage { msg: Some(welcome_msg) })).await;
        // The CAs to trust: the agent takes it if it is new to it (a CA rotation while it was connected elsewhere).
        let mut bundles = self.enrollment.trust_bundles();
        let current = bundles.borrow_and_update().clone();
        if let Some(bundle) = current {
            let _ = outbound.send(Ok(convert::trust_bundle(bundle))).await;
        }
        let session = Session {
            scheduler: self.scheduler.clone(),
            enrollment: self.enrollment.clone(),
            logs: self.logs.clone(),
            worker,
            id: welcome.session,
            outbound,
            keepalive: config.keepalive_interval,
        };
        tokio::spawn(session.run(inbound, command_rx, bundles, kick));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound_rx))))
    }
}

/// The relay of one connected agent.
struct Session {
    scheduler: Scheduler,
    enrollment: crate::enroll::Enrollment,
    logs: LogTails,
    worker: WorkerId,
    id: SessionId,
    outbound: Outbound,
    keepalive: Duration,
}

impl Session {
    async fn run(
        self,
        mut inbound: Streaming<pb::AgentMessage>,
        mut commands: mpsc::Receiver<crate::scheduler::AgentCommand>,
        mut bundles: tokio::sync::watch::Receiver<Option<crate::enroll::TrustBundle>>,
        kick: CancellationToken,
    ) {
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.tick().await;
        let mut unanswered = Unanswered::new();
        let reason = loop {
            tokio::select! {
                _ = kick.cancelled() => break "session closed by the controller".to_owned(),
                message = inbound.message(), if unanswered.len() < MAX_UNANSWERED => match message {
                    Ok(Some(message)) => {
                        if let Err(e) = self.handle(message, &mut unanswered).await {
                            let _ = self.outbound.send(Err(e.clone())).await;
                            break format!("protocol error: {e}");
                        }
                    }
                    Ok(None) => break "agent closed the stream".to_owned(),
                    Err(e) => break format!("stream error: {e}"),
                },
                Some(answered) = unanswered.next() => {
                    if let Err(e) = self.answered(answered).await {
                        let _ = self.outbound.send(Err(e.clone())).await;
                        break format!("the controller could not record a message: {e}");
                    }
                }
                Some(command) = commands.recv() => {
                    if let crate::scheduler::AgentCommand::Assign(assignment) = &command {
                        self.logs.open(&assignment.attempt, &self.worker);
                    }
                    if self.outbound.send(Ok(convert::command(command))).await.is_err() {
                        break "agent stream gone".to_owned();
                    }
                }
                Ok(()) = bundles.changed() => {
                    let bundle = bundles.borrow_and_update().clone();
                    if let Some(bundle) = bundle
                        && self.outbound.send(Ok(convert::trust_bundle(bundle))).await.is_err()
                    {
                        break "agent stream gone".to_owned();
                    }
                }
                _ = keepalive.tick() => {
                    let msg = Out::Keepalive(pb::Keepalive { sent_unix_ms: unix_ms() });
                    if self.outbound.send(Ok(pb::ControllerMessage { msg: Some(msg) })).await.is_err() {
                        break "agent stream gone".to_owned();
                    }
                }
            }
        };
        info!(worker = %self.worker, session = %self.id, reason = %reason, "agent session ended");
        self.scheduler.disconnected(&self.worker, self.id).await;
    }

    /// Handles one agent message inside a span naming the attempt it is about (if any).
    async fn handle(&self, message: pb::AgentMessage, unanswered: &mut Unanswered) -> Result<(), Status> {
        use pb::agent_message::Msg;
        let attempt = match &message.msg {
            Some(Msg::Ack(pb::Ack { attempt })) | Some(Msg::Log(pb::Log { attempt, .. })) => attempt.clone(),
            Some(Msg::Result(result)) => result.attempt.clone(),
            _ => None,
        };
        match attempt {
            Some(a) => {
                let span = tracing::info_span!("attempt", task = %a.task_id, epoch = a.epoch, worker = %self.worker);
                tracing::Instrument::instrument(self.handle_message(message, unanswered), span).await
            }
            None => self.handle_message(message, unanswered).await,
        }
    }

    /// Handles one agent message. Refusals about one attempt are answered on the stream; only protocol
    /// violations end the session.
    async fn handle_message(&self, message: pb::AgentMessage, unanswered: &mut Unanswered) -> Result<(), Status> {
        let Some(msg) = message.msg else { return Err(Status::invalid_argument("empty agent message")) };
        match msg {
            In::Hello(_) => return Err(Status::invalid_argument("Hello may only be sent once per stream")),
            In::Credit(credit) => self.scheduler.credit(&self.worker, self.id, credit.credits).await,
            In::Ack(ack) => {
                let attempt = convert::attempt(ack.attempt)?;
                let answer = self.scheduler.ack(&self.worker, self.id, attempt.clone()).await;
                unanswered.push_back(Box::pin(async move { Answered::Ack(attempt, answer.get().await) }));
            }
            In::Heartbeat(heartbeat) => {
                if heartbeat.attempts.len() > convert::MAX_SLOTS as usize {
                    return Err(Status::invalid_argument(format!(
                        "heartbeat.attempts: at most {}",
                        convert::MAX_SLOTS
                    )));
                }
                let attempts = heartbeat
                    .attempts
                    .into_iter()
                    .map(|p| convert::attempt(p.attempt))
                    .collect::<Result<Vec<_>, _>>()?;
                self.scheduler.heartbeat(&self.worker, self.id, attempts).await;
            }
            In::Keepalive(_) => self.scheduler.seen(&self.worker, self.id).await,
            In::Log(log) => {
                let attempt = convert::attempt(log.attempt)?;
                self.logs.append(&self.worker, &attempt, log.lines);
            }
            In::Result(result) => {
                let attempt = convert::attempt(result.attempt.clone())?;
                let outcome = convert::outcome(&result)?;
                let answer = self.scheduler.result(&self.worker, self.id, attempt.clone(), outcome).await;
                unanswered.push_back(Box::pin(async move { Answered::Result(attempt, answer.get().await) }));
            }
            In::Draining(_) => self.scheduler.draining(&self.worker, self.id).await,
            In::VenvsHeld(held) => {
                let venvs = convert::venvs(held.venvs)?;
                self.scheduler.venvs_held(&self.worker, self.id, venvs).await;
            }
            In::RenewCertificate(renew) => {
                // Signing is quick; the stream carries on while it happens.
                let certificate = match self.enrollment.renew(&self.worker, &renew.csr_pem).await {
                    Ok(issued) => pb::Certificate {
                        cert_pem: issued.cert_pem,
                        expires_unix_ms: issued.expires_at_ms,
                        error: String::new(),
                    },
                    Err(e) => {
                        warn!(worker = %self.worker, error = %e, "certificate renewal refused");
                        pb::Certificate { error: e.to_string(), ..Default::default() }
                    }
                };
                let msg = Out::Certificate(certificate);
                let _ = self.outbound.send(Ok(pb::ControllerMessage { msg: Some(msg) })).await;
            }
        }
        Ok(())
    }

    /// Passes the engine's answer on. A change that could not be made durable ends the session (an error
    /// status): the agent reconnects and sends again what it still holds, so nothing is lost.
    async fn answered(&self, answered: Answered) -> Result<(), Status> {
        let (attempt, outcome, is_result) = match answered {
            Answered::Ack(attempt, outcome) => (attempt, outcome, false),
            Answered::Result(attempt, outcome) => (attempt, outcome, true),
        };
        match outcome {
            Ok(()) if is_result => {
                self.logs.forget(&attempt.task_id);
                let msg = Out::ResultAccepted(pb::ResultAccepted { attempt: Some(convert::attempt_to_pb(&attempt)) });
                let _ = self.outbound.send(Ok(pb::ControllerMessage { msg: Some(msg) })).await;
            }
            Ok(()) => {}
            Err(e @ (SchedulerError::NotDurable(_) | SchedulerError::ShuttingDown | SchedulerError::Store(_))) => {
                return Err(status::from_scheduler(e));
            }
            Err(e) => self.refuse(&attempt, status::from_scheduler(e)).await,
        }
        Ok(())
    }

    async fn refuse(&self, attempt: &AttemptRef, status: Status) {
        warn!(worker = %self.worker, attempt = %attempt, code = ?status.code(), message = %status.message(), "refused");
        let msg = Out::Refused(pb::Refused {
            attempt: Some(convert::attempt_to_pb(attempt)),
            code: status.code() as i32,
            message: status.message().to_owned(),
        });
        let _ = self.outbound.send(Ok(pb::ControllerMessage { msg: Some(msg) })).await;
    }
}
