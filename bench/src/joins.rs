//! Agents joining with a token: `agents` certificate signing requests (made before the clock starts) exchanged
//! for certificates through the join listener by `concurrency` clients at once, each join a token check and count
//! (one SQLite transaction), a signature, and a record of the certificate (another). A renewal is the same
//! signature and record without the token, so the controller's CPU per join bounds the cost of renewals.

use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_common::pb;
use tokio::task::JoinSet;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::harness::{ControllerProcess, free_port, percentile_ms};

pub async fn joins(agents: usize, concurrency: usize, cert_ttl: Duration) -> anyhow::Result<()> {
    let port = free_port();
    let controller = ControllerProcess::start_with(|certs| {
        vec![
            "--join-listen".into(),
            format!("127.0.0.1:{port}"),
            "--ca-key".into(),
            certs.join("ca.key").display().to_string(),
        ]
    })?;
    let mut admin = controller.admin().await?;
    let token = admin
        .create_join_token(pb::CreateJoinTokenRequest {
            pool: "bench".into(),
            ttl_seconds: 3600,
            reusable: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .token;
    let csrs: Vec<String> = (0..agents)
        .map(|_| {
            let key = rcgen::KeyPair::generate()?;
            Ok(rcgen::CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?.pem()?)
        })
        .collect::<anyhow::Result<_>>()?;
    let ca = std::fs::read(controller.certs().join("ca.pem"))?;
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("127.0.0.1"))?
        .connect()
        .await
        .context("connecting to the join listener")?;
    let (cpu_before, _) = controller.usage();
    let started = Instant::now();
    let mut clients = JoinSet::new();
    let per_client = agents.div_ceil(concurrency);
    for (c, chunk) in csrs.chunks(per_client).enumerate() {
        let (chunk, token) = (chunk.to_vec(), token.clone());
        let mut client = pb::join_service_client::JoinServiceClient::new(channel.clone());
        clients.spawn(async move {
            let mut latencies = Vec::with_capacity(chunk.len());
            for (i, csr) in chunk.into_iter().enumerate() {
                let request =
                    pb::JoinRequest { token: token.clone(), worker_id: format!("bench-{c}-{i}"), csr_pem: csr };
                let sent = Instant::now();
                client.join(request).await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(agents);
    while let Some(done) = clients.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    let (cpu_after, rss) = controller.usage();
    latencies.sort();
    let cpu_per_join = (cpu_after - cpu_before) / agents as f64;
    let renewals_per_s = 10_000.0 / (cert_ttl.as_secs_f64() / 2.0);
    println!(
        "joins: {agents} agents, {concurrency} at once: {:.0} joins/s, latency p50 {:.1} ms, p99 {:.1} ms; controller CPU \
         {:.2} ms per join, RSS {} MiB; renewals of 10,000 agents with {}-certificates: {renewals_per_s:.2}/s = \
         {:.3} % of a core",
        agents as f64 / elapsed.as_secs_f64(),
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
        cpu_per_join * 1000.0,
        rss / (1024 * 1024),
        humantime::format_duration(cert_ttl),
        renewals_per_s * cpu_per_join * 100.0,
    );
    Ok(())
}
