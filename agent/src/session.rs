//! The connection to the controller: a small state machine (disconnected with capped, jittered backoff ↔
//! connected). Owns the gRPC channel; sends Hello (with held attempts), credits, acks, heartbeats, logs and
//! results; keeps results until the controller accepts them. The runner is reached only through its handle.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use outpost_common::clock::unix_ms;
use outpost_common::duration;
use outpost_common::ids::{AttemptRef, PoolId, TaskId, WorkerId};
use outpost_common::pb::{self, agent_message::Msg as Out, controller_message::Msg as In};
use outpost_common::task::ResultStatus;
use outpost_common::tls::{TlsFiles, TlsMaterial};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::runner::{Assignment, RunOutcome, Runner, RunnerEvent, StopReason};
use crate::venv::{HeldVenv, Venvs};
use outpost_common::venv::VenvSpec;
use tokio::sync::watch;

/// What the session needs to know.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub controller: String,
    pub server_name: String,
    /// Read again before every connection, so rotated certificates are used without a restart.
    pub tls_files: TlsFiles,
    /// What the files held at start-up (used while a rotation leaves them unreadable).
    pub tls: TlsMaterial,
    pub worker_id: WorkerId,
    pub pools: Vec<PoolId>,
    pub slots: u32,
    pub labels: BTreeMap<String, String>,
    pub timings: Timings,
}

/// The session's timing flags.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "session")]
#[command(next_help_heading = "Connection")]
pub struct Timings {
    /// On SIGTERM: how long running work may finish before it is stopped and handed back.
    #[arg(long, env = "OUTPOST_DRAIN_TIMEOUT", value_parser = duration::parse, default_value = "150s")]
    pub drain_timeout: Duration,
    /// Shortest wait before reconnecting.
    #[arg(long, env = "OUTPOST_RECONNECT_MIN", value_parser = duration::parse, default_value = "200ms")]
    pub reconnect_min: Duration,
    /// Longest wait before reconnecting (jittered, exponential in between).
    #[arg(long, env = "OUTPOST_RECONNECT_MAX", value_parser = duration::parse, default_value = "30s")]
    pub reconnect_max: Duration,
    /// Timeout for establishing the connection.
    #[arg(long, env = "OUTPOST_CONNECT_TIMEOUT", value_parser = duration::parse, default_value = "10s")]
    pub connect_timeout: Duration,
}

impl Timings {
    pub fn validate(&self) -> Result<(), duration::Invalid> {
        duration::positive("--reconnect-min", self.reconnect_min)?;
        duration::positive("--connect-timeout", self.connect_timeout)?;
        if self.reconnect_max < self.reconnect_min {
            return Err(duration::Invalid(format!(
                "--reconnect-max ({:?}) must not be shorter than --reconnect-min ({:?})",
                self.reconnect_max, self.reconnect_min
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the controller: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the controller refused the session: {0}")]
    Refused(tonic::Status),
    #[error("the stream broke: {0}")]
    Stream(tonic::Status),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The controller's certificate comes from a CA this agent does not trust (or the other way round).
    #[error(
        "the controller's certificate is signed by a CA this agent does not trust, or the controller refuses this \
         agent's certificate: the controller's CA was rotated while this agent was away. The agent needs a join \
         token again (--join-token-file or OUTPOST_JOIN_TOKEN) ({0})"
    )]
    Untrusted(String),
}

impl Error {
    /// Refusals that no retry can fix (wrong identity, bad Hello).
    fn is_permanent(&self) -> bool {
        matches!(self, Error::Untrusted(_))
            || matches!(self, Error::Refused(s) if matches!(s.code(), tonic::Code::PermissionDenied | tonic::Code::InvalidArgument | tonic::Code::Unauthenticated))
    }
}

/// Capped exponential backoff with full jitter: attempt n waits a random time in [min, min(max, min·2ⁿ)].
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max: max.max(min), attempt: 0 }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling of the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        outpost_common::backoff::ceiling(self.min, self.max, self.attempt)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = outpost_common::duration::millis(ceiling.saturating_sub(self.min));
        self.min + Duration::from_millis(fastrand::u64(0..=span))
    }
}

/// How a connected session ended.
enum End {
    /// Shutting down and nothing is left to report: exit.
    Done,
    /// The connection is gone; reconnect.
    Lost(String),
}

/// Where the agent is in its life (it outlives connections).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Taking work as its free slots allow.
    Working,
    /// Drained by an operator: no new work; what runs finishes.
    Drained,
    /// Asked to stop (SIGTERM): no new work; what runs may finish until `deadline`, then the agent exits.
    ShuttingDown { deadline: Instant },
    /// The drain timeout passed: what ran was stopped and handed back; the agent exits once that is reported.
    Interrupted,
}

impl Life {
    /// Shutting down, interrupted or not.
    fn stopping(self) -> bool {
        matches!(self, Life::ShuttingDown { .. } | Life::Interrupted)
    }

    /// An operator's drain: a working agent takes no more work (a stopping one stays as it is).
    fn drain(self) -> Life {
        match self {
            Life::Working => Life::Drained,
            other => other,
        }
    }

    /// SIGTERM at `now`: stop taking work, with `drain_timeout` for what runs (once; a second one changes nothing).
    fn shut_down(self, now: Instant, drain_timeout: Duration) -> Life {
        match self {
            Life::Working | Life::Drained => Life::ShuttingDown { deadline: now + drain_timeout },
            stopping => stopping,
        }
    }

    /// When what runs must be stopped, if it still runs.
    fn drain_deadline(self) -> Option<Instant> {
        match self {
            Life::ShuttingDown { deadline } => Some(deadline),
            _ => None,
        }
    }

    /// Whether the agent may exit, with `running` attempts and results the controller has not accepted: only
    /// when stopping and nothing runs, and once every result was accepted — or, after the drain timeout, at once
    /// (a disconnected agent cannot deliver them; the controller's lease expiry hands the work out again).
    fn may_exit(self, running: usize, unaccepted: usize, connected: bool) -> bool {
        match self {
            Life::Working | Life::Drained => false,
            Life::ShuttingDown { .. } => running == 0 && unaccepted == 0,
            Life::Interrupted => running == 0 && (unaccepted == 0 || !connected),
        }
    }
}

/// The agent's state that outlives connections.
struct Agent {
    config: SessionConfig,
    /// The certificate, key and CA of the last connection attempt.
    tls: TlsMaterial,
    runner: Runner,
    events: mpsc::Receiver<RunnerEvent>,
    /// Results not yet accepted by the controller, by task.
    pending: HashMap<TaskId, (AttemptRef, RunOutcome)>,
    life: Life,
    /// The start-up line was logged (on the first connection).
    announced: bool,
    metrics: Metrics,
    /// Renews a certificate the controller issued (joined agents).
    renewal: Option<crate::enroll::Renewal>,
    /// Venvs to build ahead of need (the warm-up service builds them).
    warm: mpsc::UnboundedSender<VenvSpec>,
    /// The ready venvs it holds; they go to the controller.
    held_venvs: watch::Receiver<Vec<HeldVenv>>,
}

/// Runs the agent until `shutdown` is cancelled and its work is finished (or handed back after the drain
/// timeout). Returns an error only for refusals no retry can fix.
pub async fn run(
    config: SessionConfig,
    renewal: Option<crate::enroll::Renewal>,
    runner: Runner,
    events: mpsc::Receiver<RunnerEvent>,
    venvs: (&Venvs, mpsc::UnboundedSender<VenvSpec>),
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (venvs, warm) = venvs;
    let mut backoff = Backoff::new(config.timings.reconnect_min, config.timings.reconnect_max);
    let mut agent = Agent {
        tls: config.tls.clone(),
        config,
        runner,
        events,
        pending: HashMap::new(),
        life: Life::Working,
        announced: false,
        metrics,
        renewal,
        held_venvs: venvs.subscribe(),
        warm,
    };
    loop {
        if agent.finished() {
            return Ok(());
        }
        let connected_at = Instant::now();
        let ended = agent.connected(&shutdown).await;
        agent.metrics.set_connected(false);
        match ended {
            Ok(End::Done) => return Ok(()),
            Ok(End::Lost(reason)) => {
                agent.metrics.connection_failed();
                warn!(reason = %reason, "connection to the controller lost")
            }
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                agent.metrics.connection_failed();
                warn!(error = %e, "connection to the controller failed")
            }
        }
        if connected_at.elapsed() > agent.config.timings.reconnect_max {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        info!(delay_ms = outpost_common::duration::millis(delay), "reconnecting");
        if agent.wait_disconnected(delay, &shutdown).await {
            return Ok(());
        }
    }
}

fn venvs_pb(venvs: &[HeldVenv]) -> Vec<pb::Venv> {
    venvs.iter().map(pb::Venv::from).collect()
}

fn msg(msg: Out) -> pb::AgentMessage {
    pb::AgentMessage { msg: Some(msg) }
}

fn attempt_pb(attempt: &AttemptRef) -> pb::AttemptRef {
    pb::AttemptRef::from(attempt)
}

fn attempt_from_pb(attempt: Option<pb::AttemptRef>) -> Result<AttemptRef, Error> {
    let attempt = attempt.ok_or_else(|| Error::Protocol("message without attempt".into()))?;
    AttemptRef::try_from(attempt).map_err(|e| Error::Protocol(e.to_string()))
}

fn result_pb(attempt: &AttemptRef, outcome: &RunOutcome) -> pb::AgentMessage {
    msg(Out::Result(pb::Result {
        attempt: Some(attempt_pb(attempt)),
        status: pb::ResultStatus::from(outcome.status) as i32,
        exit_code: outcome.run.exit_code,
        report: outcome.run.report.clone(),
        structured_report: outcome.run.structured_report.clone(),
        start_time_unix_ms: outcome.run.start_time_ms,
        duration_ms: outcome.run.duration_ms,
    }))
}

/// A hand-back of an assignment the agent cannot start.
fn handed_back(reason: &str) -> RunOutcome {
    RunOutcome::without_run(
        ResultStatus::Interrupted,
        format!("The agent handed the task back without starting it: {reason}\n"),
    )
}

impl Agent {
    /// Connected: done once everything ran and was accepted.
    fn finished(&self) -> bool {
        self.life.may_exit(self.runner.busy(), self.pending.len(), true)
    }

    fn taking_work(&self) -> bool {
        self.life == Life::Working
    }

    fn free_slots(&self) -> u32 {
        self.config.slots.saturating_sub(u32::try_from(self.runner.busy()).unwrap_or(u32::MAX))
    }

    fn begin_shutdown(&mut self) {
        if !self.life.stopping() {
            info!(drain_timeout = ?self.config.timings.drain_timeout, running = self.runner.busy(), "draining: taking no new work");
            self.life = self.life.shut_down(Instant::now(), self.config.timings.drain_timeout);
        }
    }

    fn interrupt_all(&mut self) {
        warn!(running = self.runner.busy(), "drain timeout: stopping what is left and handing it back");
        self.life = Life::Interrupted;
        self.runner.stop_all(StopReason::Interrupted);
    }

    fn record_finished(&mut self, attempt: AttemptRef, outcome: RunOutcome) {
        self.metrics.run_ended(outcome.status);
        self.runner.finished(&attempt);
        self.metrics.set_busy(self.runner.busy());
        self.pending.insert(attempt.task_id.clone(), (attempt, outcome));
    }

    /// Keeps collecting results while disconnected. True when the agent should exit.
    async fn wait_disconnected(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let until = Instant::now() + delay;
        loop {
            let drain_deadline = self.life.drain_deadline();
            let may_begin_shutdown = !self.life.stopping();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return false,
                _ = shutdown.cancelled(), if may_begin_shutdown => self.begin_shutdown(),
                _ = sleep_until_opt(drain_deadline) => {
                    self.interrupt_all();
                }
                Some(event) = self.events.recv() => {
                    if let RunnerEvent::Finished { attempt, outcome } = event {
                        self.record_finished(attempt, outcome);
                    }
                }
            }
            // Nothing running, but results the controller has not seen: exit only once the drain time is up.
            if self.life.may_exit(self.runner.busy(), self.pending.len(), false) {
                return true;
            }
        }
    }

    /// The TLS files as they are now: a rotated certificate is picked up here. Unreadable files (a rotation
    /// half done) leave the last good ones in use.
    fn refresh_tls(&mut self) {
        match self.config.tls_files.load() {
            Ok(tls) => {
                if tls.cert != self.tls.cert {
                    self.metrics.tls_reloaded(true);
                    info!(cert = %self.config.tls_files.cert.display(), "certificate files changed: using the new ones");
                }
                self.tls = tls;
            }
            Err(e) => {
                self.metrics.tls_reloaded(false);
                warn!(error = %e, "cannot read the certificate files; using the last good ones")
            }
        }
    }

    async fn connected(&mut self, shutdown: &CancellationToken) -> Result<End, Error> {
        self.refresh_tls();
        let endpoint = Endpoint::from_shared(self.config.controller.clone())?
            .tls_config(self.tls.client_config(&self.config.server_name))?
            .connect_timeout(self.config.timings.connect_timeout);
        let channel = endpoint.connect().await.map_err(|e| match crate::trust::untrusted(&e) {
            true => Error::Untrusted(outpost_common::errors::chain(&e)),
            false => Error::Transport(e),
        })?;
        let mut client = pb::agent_service_client::AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
        let mut held = self.runner.held();
        held.extend(self.pending.values().map(|(a, _)| a.clone()));
        let hello = Out::Hello(pb::Hello {
            worker_id: self.config.worker_id.to_string(),
            pools: self.config.pools.iter().map(ToString::to_string).collect(),
            slots: self.config.slots,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: self.config.labels.clone().into_iter().collect(),
            held: held.iter().map(attempt_pb).collect(),
            venvs: venvs_pb(&self.held_venvs.borrow_and_update()),
        });
        let _ = tx.send(msg(hello)).await;
        let mut inbound = client.connect(ReceiverStream::new(rx)).await.map_err(Error::Refused)?.into_inner();
        let welcome = match inbound.message().await.map_err(Error::Refused)? {
            Some(pb::ControllerMessage { msg: Some(In::Welcome(welcome)) }) => welcome,
            _ => return Err(Error::Protocol("the controller's first message was not Welcome".into())),
        };
        for attempt in welcome.cancel {
            let attempt = attempt_from_pb(Some(attempt))?;
            warn!(attempt = %attempt, "the controller no longer holds this attempt for us; stopping it");
            self.metrics.attempt_disowned();
            self.runner.stop(&attempt, StopReason::Cancelled);
            self.pending.remove(&attempt.task_id);
        }
        info!(session = %welcome.session_id, controller = %self.config.controller, "connected");
        self.metrics.set_connected(true);
        if !self.announced {
            self.announced = true;
            info!(worker = %self.config.worker_id, slots = self.config.slots, "Starting datahub executor worker");
        }
        let send = |m: pb::AgentMessage| {
            let tx = tx.clone();
            async move { tx.send(m).await.map_err(|_| Error::Protocol("outbound stream closed".into())) }
        };
        for (attempt, outcome) in self.pending.values() {
            send(result_pb(attempt, outcome)).await?;
        }
        if self.life.stopping() {
            send(msg(Out::Draining(pb::Draining { reason: "agent shutting down".into() }))).await?;
        } else if self.taking_work() && self.free_slots() > 0 {
            send(msg(Out::Credit(pb::Credit { credits: self.free_slots() }))).await?;
        }
        let mut heartbeat = tokio::time::interval(Duration::from_millis(welcome.heartbeat_interval_ms.max(100)));
        let mut keepalive = tokio::time::interval(Duration::from_millis(welcome.keepalive_interval_ms.max(100)));
        heartbeat.tick().await;
        keepalive.tick().await;
        loop {
            if self.finished() {
                return Ok(End::Done);
            }
            let drain_deadline = self.life.drain_deadline();
            let may_begin_shutdown = !self.life.stopping();
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.handle(message, &tx).await?,
                    Ok(None) => return Ok(End::Lost("the controller closed the stream".into())),
                    Err(status) => return Err(Error::Stream(status)),
                },
                Some(event) = self.events.recv() => match event {
                    RunnerEvent::Log { attempt, lines } => {
                        send(msg(Out::Log(pb::Log { attempt: Some(attempt_pb(&attempt)), lines }))).await?;
                    }
                    RunnerEvent::Finished { attempt, outcome } => {
                        send(result_pb(&attempt, &outcome)).await?;
                        self.record_finished(attempt, outcome);
                        if self.taking_work() {
                            send(msg(Out::Credit(pb::Credit { credits: 1 }))).await?;
                        }
                    }
                },
                _ = heartbeat.tick() => {
                    let attempts = self.runner.progress().into_iter().map(|p| pb::AttemptProgress {
                        attempt: Some(attempt_pb(&p.attempt)),
                        log_bytes: p.log_bytes,
                        last_output_unix_ms: p.last_output_ms,
                    }).collect();
                    send(msg(Out::Heartbeat(pb::Heartbeat { attempts }))).await?;
                }
                _ = keepalive.tick() => {
                    send(msg(Out::Keepalive(pb::Keepalive { sent_unix_ms: unix_ms() }))).await?;
                }
                Ok(()) = self.held_venvs.changed() => {
                    let venvs = venvs_pb(&self.held_venvs.borrow_and_update());
                    send(msg(Out::VenvsHeld(pb::VenvsHeld { venvs }))).await?;
                }
                _ = shutdown.cancelled(), if may_begin_shutdown => {
                    self.begin_shutdown();
                    send(msg(Out::Draining(pb::Draining { reason: "agent shutting down".into() }))).await?;
                }
                _ = sleep_until_opt(drain_deadline) => self.interrupt_all(),
                _ = sleep_until_opt(self.renewal.as_ref().map(|r| r.due())) => {
                    if let Some(renewal) = self.renewal.as_mut() {
                        match renewal.request() {
                            Ok(request) => {
                                info!("renewing the certificate (a new key) over the live stream");
                                send(msg(Out::RenewCertificate(request))).await?;
                            }
                            Err(e) => warn!(error = %e, "cannot make a certificate request; will try again"),
                        }
                    }
                }
            }
        }
    }

    async fn handle(
        &mut self,
        message: pb::ControllerMessage,
        tx: &mpsc::Sender<pb::AgentMessage>,
    ) -> Result<(), Error> {
        let Some(message) = message.msg else { return Ok(()) };
        match message {
            In::Assign(assign) => {
                let attempt = attempt_from_pb(assign.attempt)?;
                if self.runner.holds(&attempt) {
                    return Ok(());
                }
                // A newer attempt of a task whose older attempt is ending here takes that attempt's slot.
                if !self.taking_work() || (self.free_slots() == 0 && !self.runner.replaces(&attempt)) {
                    let reason = if self.taking_work() { "no free slot" } else { "the agent is draining" };
                    warn!(attempt = %attempt, reason, "handing an assignment back");
                    let outcome = handed_back(reason);
                    let _ = tx.send(result_pb(&attempt, &outcome)).await;
                    self.pending.insert(attempt.task_id.clone(), (attempt, outcome));
                    return Ok(());
                }
                info!(attempt = %attempt, task = %assign.task, number = assign.attempt_number, "assignment received");
                let taken = self.runner.start(Assignment {
                    attempt: attempt.clone(),
                    task_name: assign.task,
                    args: assign.args.into_iter().collect(),
                    attempt_number: assign.attempt_number,
                    deadline_unix_ms: (assign.deadline_unix_ms > 0).then_some(assign.deadline_unix_ms),
                });
                if !taken {
                    warn!(attempt = %attempt, "an assignment older than the attempt of this task here; not taken");
                    return Ok(());
                }
                self.metrics.set_busy(self.runner.busy());
                let _ = tx.send(msg(Out::Ack(pb::Ack { attempt: Some(attempt_pb(&attempt)) }))).await;
            }
            In::Cancel(cancel) => {
                let attempt = attempt_from_pb(cancel.attempt)?;
                info!(attempt = %attempt, reason = %cancel.reason, "cancel requested");
                self.runner.stop(&attempt, StopReason::Cancelled);
            }
            In::WarmVenv(warm) => match VenvSpec::pinned(&warm.version, &warm.plugin) {
                Ok(spec) => {
                    // Gone only at shutdown, when nothing new is built.
                    let _ = self.warm.send(spec);
                }
                Err(e) => warn!(error = %e, "the controller asked for a venv that cannot be built"),
            },
            In::Drain(drain) => {
                info!(reason = %drain.reason, "drain requested by the controller: taking no new work");
                self.life = self.life.drain();
            }
            In::ResultAccepted(accepted) => {
                let attempt = attempt_from_pb(accepted.attempt)?;
                if self.pending.get(&attempt.task_id).is_some_and(|(a, _)| *a == attempt) {
                    self.pending.remove(&attempt.task_id);
                }
            }
            In::Refused(refused) => {
                let attempt = attempt_from_pb(refused.attempt)?;
                warn!(attempt = %attempt, code = refused.code, message = %refused.message, "the controller refused a message");
                self.metrics.attempt_disowned();
                // A refused attempt is no longer ours: stop it and forget its result.
                self.runner.stop(&attempt, StopReason::Cancelled);
                if self.pending.get(&attempt.task_id).is_some_and(|(a, _)| *a == attempt) {
                    self.pending.remove(&attempt.task_id);
                }
            }
            In::Certificate(certificate) => match self.renewal.as_mut().map(|r| r.complete(certificate)) {
                Some(Ok(expires_ms)) => {
                    info!(expires_unix_ms = expires_ms, "certificate renewed; the next connection uses it")
                }
                Some(Err(e)) => warn!(error = %e, "certificate renewal failed; will try again"),
                None => warn!("a certificate the agent did not ask for; ignored"),
            },
            In::TrustBundle(bundle) => match self.renewal.as_mut().map(|r| r.take_bundle(&bundle)) {
                Some(Ok(crate::trust::Taken::Updated { cas, renew })) => {
                    info!(
                        cas,
                        renew, "new CA bundle from the controller (a CA rotation): the next connection trusts it"
                    )
                }
                Some(Ok(crate::trust::Taken::Unchanged)) => {}
                Some(Err(e)) => warn!(error = %format!("{e:#}"), "a CA bundle from the controller was refused"),
                None => debug!("a CA bundle from the controller ignored: this agent's CA comes from --tls-ca"),
            },
            In::Welcome(_) | In::Keepalive(_) => {}
        }
        Ok(())
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The life cycle as a table: what each event does in each state, and when the agent may exit.
    #[test]
    fn the_life_cycle_drains_shuts_down_once_and_exits_only_when_it_may() {
        let now = Instant::now();
        let timeout = Duration::from_secs(30);
        let shutting = Life::ShuttingDown { deadline: now + timeout };
        // drain
        assert_eq!(Life::Working.drain(), Life::Drained);
        assert_eq!(Life::Drained.drain(), Life::Drained);
        assert_eq!(shutting.drain(), shutting, "a drain does not undo a shutdown");
        assert_eq!(Life::Interrupted.drain(), Life::Interrupted);
        // shut down: once, from working or drained; a second SIGTERM keeps the first deadline
        assert_eq!(Life::Working.shut_down(now, timeout), shutting);
        assert_eq!(Life::Drained.shut_down(now, timeout), shutting);
        assert_eq!(shutting.shut_down(now + timeout, timeout), shutting);
        assert_eq!(Life::Interrupted.shut_down(now, timeout), Life::Interrupted);
        assert_eq!(shutting.drain_deadline(), Some(now + timeout));
        assert_eq!(Life::Interrupted.drain_deadline(), None);
        assert!(!Life::Drained.stopping() && shutting.stopping() && Life::Interrupted.stopping());
        // may exit (running, unaccepted, connected)
        for life in [Life::Working, Life::Drained] {
            assert!(!life.may_exit(0, 0, true), "{life:?} never exits by itself");
        }
        assert!(shutting.may_exit(0, 0, true));
        assert!(!shutting.may_exit(1, 0, true), "a run still going");
        assert!(!shutting.may_exit(0, 1, false), "a result not accepted, within the drain time");
        assert!(Life::Interrupted.may_exit(0, 1, false), "after the drain timeout, a disconnected agent goes");
        assert!(!Life::Interrupted.may_exit(0, 1, true), "a connected one delivers first");
        assert!(!Life::Interrupted.may_exit(1, 0, false), "a stopped run not yet ended");
    }

    #[test]
    fn backoff_grows_to_its_cap_and_stays_within_bounds() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut backoff = Backoff::new(min, max);
        let ceilings: Vec<u64> = (0..7)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(delay >= min && delay <= ceiling, "{delay:?} outside [{min:?}, {ceiling:?}]");
                outpost_common::duration::millis(ceiling)
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), min);
    }
}
