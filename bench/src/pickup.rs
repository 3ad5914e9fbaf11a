//! Request created in DataHub → RUNNING written to GMS: the GMS channel (open-source DataHub: found by polling
//! GMS's search) side by side with the SQS path (DataHub Cloud: the request arrives on a queue), both claiming
//! at GMS. A GMS stand-in (tests/gms_standin.py) whose search index lags writes by `index_lag_ms` (Elasticsearch
//! refreshes every second by default), moto for SQS, one agent session that acks at once.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use outpost_common::clock::unix_ms;
use outpost_common::pb::{self, agent_message::Msg as Out};
use serde_json::json;

use crate::harness::{ControllerProcess, Guard, Session, http_get, repo_root};

async fn post(addr: &str, path: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    anyhow::ensure!(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"), "{path}: {answer}");
    Ok(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_port(port: u16) {
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn input(pool: &str) -> serde_json::Value {
    json!({"task": "RUN_INGEST", "args": {"recipe": "{}", "version": "native"}, "executorId": pool,
           "source": {"type": "MANUAL_INGESTION_SOURCE"}, "requestedAt": unix_ms()})
}

pub async fn pickup(requests: usize, every: Duration, index_lag_ms: u64, sqs: bool) -> anyhow::Result<()> {
    let root = repo_root()?;
    let dir = tempfile::tempdir()?;
    let port_file = dir.path().join("gms.port");
    let _gms = Guard(
        Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tests/gms_standin.py"))
            .arg("--port-file")
            .arg(&port_file)
            .args(["--index-lag-ms", &index_lag_ms.to_string()])
            .stderr(Stdio::null())
            .spawn()?,
    );
    let gms = loop {
        if let Ok(port) = std::fs::read_to_string(&port_file) {
            break format!("127.0.0.1:{}", port.trim());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let config = json!({"noCode": "true", "versions": {"acryldata/datahub": {"version": "v1.2.0"}},
                        "datahub": {"serverEnv": "core"}});
    post(&gms, "/__control/config", &config).await?;
    let gms_url = format!("http://{gms}");
    let pool = "bench";
    let moto_port = free_port();
    let mut _moto = None;
    let mut queue = None;
    let mut extra: Vec<String> = vec!["--gms-url".into(), gms_url, "--progress-interval".into(), "30s".into()];
    if sqs {
        _moto = Some(Guard(
            Command::new(root.join(".venv/bin/moto_server"))
                .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        ));
        wait_port(moto_port).await;
        let endpoint = format!("http://127.0.0.1:{moto_port}");
        let config = outpost_controller::sources::sqs::loader(Some(&endpoint))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("bench", "bench", None, None, "static"))
            .load()
            .await;
        let client = aws_sdk_sqs::Client::new(&config);
        let url = client.create_queue().queue_name("bench").send().await?.queue_url.context("queue url")?;
        extra.extend(["--queue".into(), format!("{pool}={url}"), "--sqs-endpoint".into(), endpoint]);
        queue = Some((client, url));
    } else {
        extra.extend(["--gms-channel".into(), pool.into()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start(&extra)?;
    let mut agent = Session::open(&controller, "bench-agent", pool, 8).await?;
    agent.send(Out::Credit(pb::Credit { credits: 8 })).await?;
    let runner = tokio::spawn(async move {
        loop {
            let Ok(assign) = agent.next_assign().await else { break };
            if agent.complete_accepted(&assign.attempt).await.is_err() {
                break;
            }
            if agent.send(Out::Credit(pb::Credit { credits: 1 })).await.is_err() {
                break;
            }
        }
    });

    let mut created = HashMap::new();
    for i in 0..requests {
        let id = format!("pickup-{i}");
        let urn = format!("urn:li:dataHubExecutionRequest:{id}");
        let input = input(pool);
        created.insert(urn.clone(), unix_ms());
        post(&gms, "/__control/execution_request", &json!({"urn": urn, "input": input})).await?;
        if let Some((client, url)) = &queue {
            let mcl = json!({"entityType": "dataHubExecutionRequest", "entityUrn": urn, "changeType": "UPSERT",
                             "aspectName": "dataHubExecutionRequestInput",
                             "aspect": {"value": input.to_string(), "contentType": "application/json"}});
            client.send_message().queue_url(url).message_body(mcl.to_string()).send().await?;
        }
        // Spread over the poll cycle: a fixed step plus jitter, so arrivals do not line up with the polls.
        let jitter = fastrand::u64(0..=every.as_millis() as u64);
        tokio::time::sleep(every + Duration::from_millis(jitter) / 2).await;
    }
    let latencies = loop {
        let records: Vec<serde_json::Value> = serde_json::from_str(&http_get(&gms, "/__control/requests").await?)?;
        let mut running: HashMap<String, i64> = HashMap::new();
        for record in &records {
            if record["status"] != 200 || !record["path"].as_str().unwrap_or_default().contains("ingestProposal") {
                continue;
            }
            let Ok(body) = serde_json::from_str::<serde_json::Value>(record["body"].as_str().unwrap_or("{}")) else {
                continue;
            };
            let aspect = body["proposal"]["aspect"]["value"].as_str().unwrap_or_default();
            if aspect.contains("\"RUNNING\"") {
                let urn = body["proposal"]["entityUrn"].as_str().unwrap_or_default().to_owned();
                running.entry(urn).or_insert(record["time_ms"].as_i64().unwrap_or_default());
            }
        }
        if running.len() == requests {
            let mut latencies: Vec<Duration> =
                created.iter().map(|(urn, at)| Duration::from_millis((running[urn] - at).max(0) as u64)).collect();
            latencies.sort();
            break latencies;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    runner.abort();
    let p = |q: f64| crate::harness::percentile_ms(&latencies, q);
    println!(
        "pickup via {}: {requests} requests, created -> RUNNING at GMS: p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, \
         max {:.0} ms (index lag {index_lag_ms} ms, poll interval {}, claims on)",
        if sqs { "SQS" } else { "the GMS channel" },
        p(50.0),
        p(90.0),
        p(99.0),
        p(100.0),
        std::env::var("OUTPOST_GMS_POLL_INTERVAL").unwrap_or_else(|_| "default (500ms)".into())
    );
    Ok(())
}
