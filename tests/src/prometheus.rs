//! A real Prometheus (Debian's, from scripts/setup-prometheus.sh) on loopback for the tests: it scrapes the
//! processes it is given every second, loads Outpost's rules with their `for:` shortened so alerts fire in seconds,
//! and is asked through its HTTP API what users' dashboards and alert managers ask.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::{Cluster, Proc, free_port, repo_root, unique, wait_until};

pub struct Prometheus {
    pub proc: Proc,
    pub base: String,
}

impl Cluster {
    /// Starts Prometheus scraping `jobs` (job name, `host:port` targets) with deploy/monitoring/outpost-rules.yaml
    /// (every `for:` made `for_`), evaluated every second. Returns once it is ready.
    pub async fn prometheus(&self, jobs: &[(&str, Vec<String>)], for_: &str) -> Prometheus {
        let rules = std::fs::read_to_string(repo_root().join("deploy/monitoring/outpost-rules.yaml")).unwrap();
        let rules: String = rules
            .lines()
            .map(|line| match line.trim_start().strip_prefix("for: ") {
                Some(_) => format!("{}for: {for_}", &line[..line.len() - line.trim_start().len()]),
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dir = self.path(&format!("prometheus-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        let scrapes: Vec<Value> = jobs
            .iter()
            .map(|(job, targets)| serde_json::json!({"job_name": job, "static_configs": [{"targets": targets}]}))
            .collect();
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
            "rule_files": [dir.join("rules.yaml")],
            "scrape_configs": scrapes,
        });
        // JSON is YAML: Prometheus reads it as its configuration file.
        std::fs::write(dir.join("prometheus.yml"), config.to_string()).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut command = Command::new("prometheus");
        command
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn");
        let proc = Proc::spawn("prometheus", command, self.path(&format!("prometheus-{}.log", unique())));
        let base = format!("http://{listen}");
        let ready = format!("{base}/-/ready");
        wait_until("Prometheus to be ready", Duration::from_secs(60), || {
            let ready = ready.clone();
            async move { reqwest::get(&ready).await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        Prometheus { proc, base }
    }
}

impl Prometheus {
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = reqwest::Url::parse_with_params(&format!("{}{path}", self.base), query).unwrap();
        let response = reqwest::Client::new().get(url).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// An instant query: `Ok(result)` (the series), or `Err(error)` when Prometheus refuses the query.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer = self.api("/api/v1/query", &[("query", expr)]).await;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(format!("{}: {}", answer["errorType"], answer["error"])),
        }
    }

    /// The active alerts: (name, labels, state: "pending" or "firing").
    pub async fn alerts(&self) -> Vec<(String, Value, String)> {
        let answer = self.api("/api/v1/alerts", &[]).await;
        answer["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                let name = a["labels"]["alertname"].as_str().unwrap_or_default().to_owned();
                (name, a["labels"].clone(), a["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    /// Waits until the targets that are up number `n`.
    pub async fn wait_targets_up(&self, n: usize) {
        wait_until(&format!("{n} targets up in Prometheus"), Duration::from_secs(60), || async {
            let answer = self.api("/api/v1/targets", &[]).await;
            let up = answer["data"]["activeTargets"].as_array().into_iter().flatten().filter(|t| t["health"] == "up");
            (up.count() == n).then_some(())
        })
        .await
    }

    /// Waits until alert `name` whose labels include `labels` is firing (`true`) or not active at all (`false`).
    pub async fn wait_alert(&self, name: &str, labels: &[(&str, &str)], firing: bool) {
        let what = format!("{name} {labels:?} {}", if firing { "firing" } else { "cleared" });
        wait_until(&what, Duration::from_secs(90), || async {
            let alerts = self.alerts().await;
            let matching = alerts.iter().filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v));
            let states: Vec<&str> = matching.map(|(_, _, state)| state.as_str()).collect();
            let done = if firing { states.contains(&"firing") } else { states.is_empty() };
            done.then_some(())
        })
        .await
    }
}
