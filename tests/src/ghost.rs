//! Hand-driven agent sessions for tests.

use std::time::Duration;

use outpost_common::tls::TlsFiles;

use super::{Cluster, Controller, channel};

/// A hand-driven agent session (in the test process, with a real agent certificate): it says exactly what a
/// test makes it say, to reproduce agents that never ack or vanish mid-run.
pub struct Ghost {
    outbound: tokio::sync::mpsc::Sender<outpost_common::pb::AgentMessage>,
    inbound: tonic::Streaming<outpost_common::pb::ControllerMessage>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// The attempts it acknowledged: its heartbeats list them, as a real agent's list what it runs.
    held: std::sync::Arc<std::sync::Mutex<Vec<outpost_common::pb::AttemptRef>>>,
}

impl Drop for Ghost {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}

impl Ghost {
    /// Connects as `worker`, serving `pool` with `slots`, and grants `slots` credits.
    pub async fn connect(cluster: &Cluster, controller: &Controller, worker: &str, pool: &str, slots: u32) -> Ghost {
        use outpost_common::pb::{self, agent_message::Msg};
        let (cert, key) = cluster.agent_cert(worker);
        let tls = TlsFiles { cert, key, ca: cluster.certs.join("ca.pem") };
        let channel = channel(&controller.url(), &tls).await.expect("ghost connects");
        let (outbound, rx) = tokio::sync::mpsc::channel(16);
        let hello = pb::Hello { worker_id: worker.into(), pools: vec![pool.into()], slots, ..Default::default() };
        outbound.send(pb::AgentMessage { msg: Some(Msg::Hello(hello)) }).await.unwrap();
        let mut inbound = pb::agent_service_client::AgentServiceClient::new(channel)
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("ghost session accepted")
            .into_inner();
        let first = inbound.message().await.expect("welcome").expect("welcome");
        assert!(matches!(first.msg, Some(pb::controller_message::Msg::Welcome(_))), "{first:?}");
        outbound.send(pb::AgentMessage { msg: Some(Msg::Credit(pb::Credit { credits: slots })) }).await.unwrap();
        Ghost { outbound, inbound, heartbeat: None, held: Default::default() }
    }

    /// Like [`Ghost::connect`], but it heartbeats every 200 ms (until dropped), listing the attempts it
    /// acknowledged, so its leases never expire.
    pub async fn connect_alive(
        cluster: &Cluster,
        controller: &Controller,
        worker: &str,
        pool: &str,
        slots: u32,
    ) -> Ghost {
        use outpost_common::pb::{self, agent_message::Msg};
        let mut ghost = Ghost::connect(cluster, controller, worker, pool, slots).await;
        let (outbound, held) = (ghost.outbound.clone(), ghost.held.clone());
        ghost.heartbeat = Some(tokio::spawn(async move {
            loop {
                let attempts = held
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|a| pb::AttemptProgress { attempt: Some(a.clone()), ..Default::default() })
                    .collect();
                let beat = pb::AgentMessage { msg: Some(Msg::Heartbeat(pb::Heartbeat { attempts })) };
                if outbound.send(beat).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        ghost
    }

    /// The next assignment, skipping keepalives.
    pub async fn next_assign(&mut self) -> outpost_common::pb::Assign {
        use outpost_common::pb::controller_message::Msg;
        let deadline = Duration::from_secs(30);
        loop {
            let message = tokio::time::timeout(deadline, self.inbound.message())
                .await
                .expect("an assignment within 30 s")
                .expect("stream open")
                .expect("a message");
            match message.msg {
                Some(Msg::Assign(assign)) => return assign,
                Some(Msg::Keepalive(_)) => continue,
                other => panic!("unexpected message to the ghost: {other:?}"),
            }
        }
    }

    /// A hostile agent: `n` heartbeats, and `n` log messages of 4 KiB about an attempt it does not hold, as fast as
    /// the stream takes them. Returns how many went out before the stream closed.
    pub async fn flood(&self, n: usize) -> usize {
        use outpost_common::pb::{self, agent_message::Msg};
        let line = "x".repeat(4096);
        for i in 0..n {
            let beat = pb::AgentMessage { msg: Some(Msg::Heartbeat(pb::Heartbeat { attempts: vec![] })) };
            let log = pb::AgentMessage {
                msg: Some(Msg::Log(pb::Log {
                    attempt: Some(pb::AttemptRef { task_id: "not-mine".into(), epoch: 1 }),
                    lines: vec![line.clone()],
                })),
            };
            if self.outbound.send(beat).await.is_err() || self.outbound.send(log).await.is_err() {
                return i;
            }
        }
        n
    }

    pub async fn ack(&self, assign: &outpost_common::pb::Assign) {
        use outpost_common::pb::{self, agent_message::Msg};
        let ack = pb::Ack { attempt: assign.attempt.clone() };
        self.outbound.send(pb::AgentMessage { msg: Some(Msg::Ack(ack)) }).await.unwrap();
        if let Some(attempt) = &assign.attempt {
            self.held.lock().unwrap().push(attempt.clone());
        }
    }
}
