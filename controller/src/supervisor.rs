//! Supervision of the controller's subsystems: each runs as a named service with a handle. If a critical one
//! ends before shutdown was asked for — an error, a panic, or just returning — the controller must not limp on:
//! [`Supervisor::failed`] says which and why, and `run` turns not-ready and shuts down in order with a non-zero
//! exit (so ECS or Kubernetes restart it). Owns no business logic; never decides what a service does.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
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

/// The services of one `run`, in the order they were started.
pub struct Supervisor {
    services: Vec<(&'static str, JoinHandle<()>)>,
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

impl Default for Supervisor {
    fn default() -> Self {
        let (ended, endings) = mpsc::unbounded_channel();
        Supervisor { services: Vec::new(), ended, endings }
    }
}

impl Supervisor {
    /// Starts `service` under `name`. A critical service must run until shutdown; when any service ends, the
    /// supervisor hears why (its error, its panic message, or that it returned).
    pub fn spawn<F, T>(&mut self, name: &'static str, critical: bool, service: F)
    where
        F: Future<Output = T> + Send + 'static,
        T: Outcome + Send + 'static,
    {
        self.watch(name, critical, tokio::spawn(service));
    }

    /// Supervises a task already running.
    pub fn watch<T: Outcome + Send + 'static>(&mut self, name: &'static str, critical: bool, task: JoinHandle<T>) {
        let ended = self.ended.clone();
        let watcher = tokio::spawn(async move {
            let reason = match task.await {
                Ok(outcome) => outcome.reason(),
                Err(e) if e.is_panic() => {
                    format!("it panicked: {}", outpost_common::errors::panic_text(e.into_panic().as_ref()))
                }
                Err(e) => format!("it was cancelled: {e}"),
            };
            let _ = ended.send(Ended { name, critical, reason });
        });
        self.services.push((name, watcher));
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

    /// Waits (at most `limit`) for the service `name` to end after its token was cancelled.
    pub async fn stopped(&mut self, name: &'static str, limit: Duration) {
        let Some(index) = self.services.iter().position(|(n, _)| *n == name) else { return };
        let (_, handle) = self.services.remove(index);
        if tokio::time::timeout(limit, handle).await.is_err() {
            warn!(service = name, "did not stop within the shutdown timeout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_critical_service_that_panics_or_returns_is_reported_with_its_reason() {
        let mut supervisor = Supervisor::default();
        supervisor.spawn("quiet", false, async { Ok::<(), String>(()) });
        supervisor.spawn("engine", true, async {
            tokio::task::yield_now().await;
            if true {
                panic!("lost the plot");
            }
            Ok::<(), String>(())
        });
        let failed = supervisor.failed().await;
        assert_eq!(failed.to_string(), "engine stopped: it panicked: lost the plot");

        let mut supervisor = Supervisor::default();
        supervisor.spawn("gRPC server", true, async { Err::<(), _>("address in use") });
        assert_eq!(supervisor.failed().await.to_string(), "gRPC server stopped: address in use");
        supervisor.stopped("gRPC server", Duration::from_secs(1)).await;
    }
}
