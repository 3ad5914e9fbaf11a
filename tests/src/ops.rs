//! Operations helpers: free ports, HTTP GET, Prometheus parsing with the reference parser, grpcurl.

use std::process::{Command, Output, Stdio};

use super::{Cluster, Controller, repo_root};

/// A free loopback port (borrowed from the kernel; free again when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET over plain HTTP: (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    outpost_common::tls::install_crypto_provider();
    let response = reqwest::get(url).await.expect("http get");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Parses Prometheus text with the reference parser (Python `prometheus_client`): every sample as
/// `{"family", "type", "name", "labels", "value"}`. Panics if the parser refuses the text.
pub fn parse_metrics(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut child = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("tests/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the metrics parser");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "prometheus_client refused the text: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The value of the sample `name` whose labels include `labels`.
pub fn metric(samples: &[serde_json::Value], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .and_then(|s| s["value"].as_f64())
}

/// The value of the sample `name` with `labels` in a scrape of `/metrics` at `addr` now (0 when absent).
pub async fn scraped(addr: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = http_get(&format!("http://{addr}/metrics")).await;
    metric(&parse_metrics(&text), name, labels).unwrap_or(0.0)
}

/// Venv builds an agent made, whatever their outcome (its `outpost_agent_venv_builds_total` at `metrics_addr`).
pub async fn agent_venv_builds(metrics_addr: &str) -> usize {
    let name = "outpost_agent_venv_builds_total";
    let built = scraped(metrics_addr, name, &[("outcome", "ok")]).await
        + scraped(metrics_addr, name, &[("outcome", "failed")]).await;
    built as usize
}

impl Cluster {
    /// Runs grpcurl (from the project venv) with the admin certificate against the controller.
    pub fn grpcurl(&self, controller: &Controller, args: &[&str]) -> Output {
        let tls = self.admin_tls();
        Command::new(repo_root().join(".venv/bin/grpcurl"))
            .arg("-cacert")
            .arg(tls.ca)
            .arg("-cert")
            .arg(tls.cert)
            .arg("-key")
            .arg(tls.key)
            .args(args.iter().map(|a| a.replace("{addr}", &controller.addr.to_string())))
            .output()
            .expect("run grpcurl")
    }
}
