//! Supervision of a binary's subsystems: each runs as a named service in a shutdown phase (the binary's own enum),
//! with the phase's cancellation token. If a critical one ends before shutdown was asked for — an error, a panic,
//! or just returning — the binary must not limp on: [`Supervisor::failed`] says which and why. At shutdown the
//! binary stops its phases in order ([`Supervisor::stop`] cancels one and waits for every service in it). Owns no
//! business logic; never decides what a service does.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// What a service returns: nothing, or a result whose error says why it stopped.
pub trait Outcome {
    fn reason(self) -> String;
}

impl Outcome for () {
    fn reason(self) -> String {
        "it ended on its own".to_owned()
    }
}

impl<E: std::fmt::Display> Outcome for Result<(), E> {
    fn reason(self) -> String {
        match self {
            Ok(()) => "it ended on its own".to_owned(),
            Err(e) => e.to_string(),
        }
    }
}

/// Why a service ended.
#[derive(Debug)]
struct Ended {
    name: &'static str,
    critical: bool,
    reason: String,
}

/// The services of one binary's run, in the order they were started, and each phase's token. `P` names the
/// phases (the binary's own enum).
pub struct Supervisor<P> {
    services: Vec<(&'static str, P, JoinHandle<()>)>,
    /// Each phase's token, made on first use.
    tokens: std::sync::Mutex<Vec<(P, CancellationToken)>>,
    ended: mpsc::UnboundedSender<Ended>,
    endings: mpsc::UnboundedReceiver<Ended>,
}

/// A critical service that ended early, and why (one line).
#[derive(Debug, thiserror::Error)]
#[error("{name} stopped: {reason}")]
pub struct Failed {
    pub name: &'static str,
    pub reason: String,
}

impl<P> Default for Supervisor<P> {
    fn default() -> Self {
        let (ended, endings) = mpsc::unbounded_channel();
        Supervisor { services: Vec::new(), tokens: std::sync::Mutex::default(), ended, endings }
    }
}

impl<P: Copy + Eq> Supervisor<P> {
    /// The token `phase`'s services stop on (cancelled by [`Supervisor::stop`]).
    pub fn token(&self, phase: P) -> CancellationToken {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, token)) = tokens.iter().find(|(p, _)| *p == phase) {
            return token.clone();
        }
        let token = CancellationToken::new();
        tokens.push((phase, token.clone()));
        token
    }

    /// Starts `service` under `name`, stopped with `phase`. A critical service must run until shutdown; when any
    /// service ends, the supervisor hears why (its error, its panic message, or that it returned).
    pub fn spawn<F, T>(&mut self, name: &'static str, critical: bool, phase: P, service: F)
    where
        F: Future<Output = T> + Send + 'static,
        T: Outcome + Send + 'static,
    {
        self.watch(name, critical, phase, tokio::spawn(service));
    }

    /// Supervises a task already running.
    pub fn watch<T: Outcome + Send + 'static>(
        &mut self,
        name: &'static str,
        critical: bool,
        phase: P,
        task: JoinHandle<T>,
    ) {
        let ended = self.ended.clone();
        let watcher = tokio::spawn(async move {
            let reason = match task.await {
                Ok(outcome) => outcome.reason(),
                Err(e) if e.is_panic() => {
                    format!("it panicked: {}", crate::errors::panic_text(e.into_panic().as_ref()))
                }
                Err(e) => format!("it was cancelled: {e}"),
            };
            let _ = ended.send(Ended { name, critical, reason });
        });
        self.services.push((name, phase, watcher));
    }

    /// Waits until a critical service ends (forever if none does). Non-critical endings are logged.
    pub async fn failed(&mut self) -> Failed {
        loop {
            match self.endings.recv().await {
                Some(Ended { name, critical: true, reason }) => return Failed { name, reason },
                Some(Ended { name, reason, .. }) => debug!(service = name, reason = %reason, "service ended"),
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Cancels `phase`'s token and waits for every service of the phase to end, each at most `limit` (one that
    /// does not is named in the log and left behind).
    pub async fn stop(&mut self, phase: P, limit: Duration) {
        self.token(phase).cancel();
        let (stopping, rest) = std::mem::take(&mut self.services).into_iter().partition(|(_, p, _)| *p == phase);
        self.services = rest;
        let stopping: Vec<(&'static str, P, JoinHandle<()>)> = stopping;
        for (name, _, handle) in stopping {
            if tokio::time::timeout(limit, handle).await.is_err() {
                warn!(service = name, "did not stop within the shutdown timeout");
            }
        }
    }

    /// Services not stopped yet, by name (empty once every phase was stopped).
    #[cfg(test)]
    pub fn running(&self) -> Vec<&'static str> {
        self.services.iter().map(|(name, ..)| *name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Phase {
        Intake,
        Scheduler,
    }

    #[tokio::test]
    async fn a_critical_service_that_panics_or_returns_is_reported_with_its_reason() {
        let mut supervisor = Supervisor::<Phase>::default();
        supervisor.spawn("quiet", false, Phase::Intake, async { Ok::<(), String>(()) });
        supervisor.spawn("engine", true, Phase::Scheduler, async {
            tokio::task::yield_now().await;
            if true {
                panic!("lost the plot");
            }
            Ok::<(), String>(())
        });
        let failed = supervisor.failed().await;
        assert_eq!(failed.to_string(), "engine stopped: it panicked: lost the plot");

        let mut supervisor = Supervisor::<Phase>::default();
        supervisor.spawn("gRPC server", true, Phase::Intake, async { Err::<(), _>("address in use") });
        assert_eq!(supervisor.failed().await.to_string(), "gRPC server stopped: address in use");
        supervisor.stop(Phase::Intake, Duration::from_secs(1)).await;
    }

    /// Each phase's services stop on its token and are waited for, in the order asked; later phases run on
    /// meanwhile.
    #[tokio::test]
    async fn stopping_a_phase_cancels_its_token_and_waits_for_each_of_its_services() {
        let mut supervisor = Supervisor::<Phase>::default();
        let (done, mut order) = mpsc::unbounded_channel();
        for (name, phase) in [("page", Phase::Intake), ("engine", Phase::Scheduler), ("grpc", Phase::Intake)] {
            let (token, done) = (supervisor.token(phase), done.clone());
            supervisor.spawn(name, false, phase, async move {
                token.cancelled().await;
                tokio::task::yield_now().await;
                let _ = done.send(name);
            });
        }
        supervisor.stop(Phase::Intake, Duration::from_secs(5)).await;
        let mut stopped = vec![order.recv().await.unwrap(), order.recv().await.unwrap()];
        stopped.sort();
        assert_eq!(stopped, ["grpc", "page"]);
        assert!(order.try_recv().is_err(), "the engine runs on");
        assert_eq!(supervisor.running(), ["engine"]);
        supervisor.stop(Phase::Scheduler, Duration::from_secs(5)).await;
        assert_eq!(order.try_recv().unwrap(), "engine");
        assert!(supervisor.running().is_empty());
    }
}
