//! The GMS stand-in (tests/gms_standin.py) from the test side.

use std::process::Command;
use std::time::Duration;

use super::{Cluster, Proc, repo_root, unique, wait_until};

/// The GMS stand-in (tests/gms_standin.py): records every request, validates each payload with DataHub's own
/// schema classes, serves signals and inputs, fails on demand.
pub struct Gms {
    pub proc: Proc,
    pub base: String,
    http: reqwest::Client,
}

/// One result write the stand-in saw.
#[derive(Clone, Debug)]
pub struct ResultWrite {
    pub status: u16,
    pub aspect: serde_json::Value,
    pub arrived_ms: i64,
    pub answered_ms: i64,
}

/// One result write as a claim sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedWrite {
    pub http: u16,
    pub status: String,
    pub expected: Option<String>,
    pub holder: Option<String>,
}

impl Cluster {
    /// Starts the stand-in; `extra` goes to its command line (e.g. `--max-payload`).
    pub async fn gms(&self, extra: &[&str]) -> Gms {
        let port_file = self.path(&format!("gms-{}.port", unique()));
        let mut command = Command::new(repo_root().join(".venv/bin/python"));
        command.arg(repo_root().join("tests/gms_standin.py")).arg("--port-file").arg(&port_file).args(extra);
        let mut proc = Proc::spawn("gms stand-in", command, self.path(&format!("gms-{}.log", unique())));
        let port: u16 = wait_until("the GMS stand-in to listen", Duration::from_secs(30), || {
            let text = std::fs::read_to_string(&port_file).ok();
            let exited = proc.child.try_wait().ok().flatten();
            async move {
                assert!(exited.is_none(), "the GMS stand-in exited early: {exited:?}");
                text.and_then(|t| t.trim().parse().ok())
            }
        })
        .await;
        outpost_common::tls::install_crypto_provider();
        Gms { proc, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() }
    }
}

impl Gms {
    async fn control(&self, what: &str, body: serde_json::Value) {
        let response = self.http.post(format!("{}/__control/{what}", self.base)).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "control {what}: {}", response.status());
    }

    /// Every request the stand-in saw.
    pub async fn requests(&self) -> Vec<serde_json::Value> {
        self.http.get(format!("{}/__control/requests", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// The next `count` calls whose path contains `path` answer `status` (0 = the connection drops).
    pub async fn fail(&self, status: u16, count: u32, path: &str) {
        self.control("fail", serde_json::json!({"status": status, "count": count, "path": path})).await;
    }

    /// The next `count` writes whose body contains `matching` answer `status`.
    pub async fn fail_matching(&self, status: u16, count: u32, matching: &str) {
        let body = serde_json::json!({"status": status, "count": count, "path": "aspects", "match": matching});
        self.control("fail", body).await;
    }

    /// The next `count` writes whose body contains `matching` are answered only after `delay`.
    pub async fn delay_matching(&self, delay: Duration, count: u32, matching: &str) {
        let body = serde_json::json!({"delay_ms": delay.as_millis() as u64, "count": count, "path": "aspects",
                                      "match": matching});
        self.control("fail", body).await;
    }

    /// Ends every injected failure.
    pub async fn heal(&self) {
        self.control("clear", serde_json::json!({})).await;
    }

    /// Ends every injected failure and, at the same instant, makes the next `count` calls whose path contains
    /// `path` answer `status`.
    pub async fn heal_then_fail(&self, status: u16, count: u32, path: &str) {
        let then = serde_json::json!([{"status": status, "count": count, "path": path}]);
        self.control("clear", serde_json::json!({"then": then})).await;
    }

    pub async fn signal(&self, urn: &str) {
        self.control("signal", serde_json::json!({"urn": urn, "signal": "KILL"})).await;
    }

    pub async fn input(&self, urn: &str, input: serde_json::Value) {
        self.control("input", serde_json::json!({"urn": urn, "input": input})).await;
    }

    /// What `GET /config` answers from now on: an open-source DataHub of `version` (conditional writes from
    /// v0.14.0).
    /// `GET /config` answers as DataHub Cloud of `version` would (`serverEnv` other than `core`).
    pub async fn serve_cloud_version(&self, version: &str) {
        let config = serde_json::json!({"noCode": "true", "versions": {"acryldata/datahub": {"version": version}},
                                        "datahub": {"serverType": "prod", "serverEnv": "prod"}});
        self.control("config", config).await;
    }

    pub async fn serve_version(&self, version: &str) {
        let config = serde_json::json!({"noCode": "true", "versions": {"acryldata/datahub": {"version": version}},
                                        "datahub": {"serverType": "prod", "serverEnv": "core"}});
        self.control("config", config).await;
    }

    /// Creates an execution request in GMS (searchable after the stand-in's index lag).
    pub async fn create_request(&self, urn: &str, input: serde_json::Value) {
        self.control("execution_request", serde_json::json!({"urn": urn, "input": input})).await;
    }

    /// The latest `dataHubExecutionRequestResult` per URN.
    pub async fn results(&self) -> serde_json::Map<String, serde_json::Value> {
        self.http.get(format!("{}/__control/results", self.base)).send().await.unwrap().json().await.unwrap()
    }

    /// Every result write for `urn` with its answer, the `If-Version-Match` it carried and the controller it
    /// named, in order.
    pub async fn claimed_writes(&self, urn: &str) -> Vec<ClaimedWrite> {
        self.result_proposals(urn)
            .await
            .into_iter()
            .map(|(record, proposal, aspect)| ClaimedWrite {
                http: record["status"].as_u64().unwrap_or(0) as u16,
                status: aspect["status"].as_str().unwrap_or("?").to_owned(),
                expected: proposal["headers"]["If-Version-Match"].as_str().map(str::to_owned),
                holder: proposal["systemMetadata"]["properties"]["outpostController"].as_str().map(str::to_owned),
            })
            .collect()
    }

    /// The same, each with when it arrived (Unix ms, the stand-in's clock).
    pub async fn timed_claimed_writes(&self, urn: &str) -> Vec<(ClaimedWrite, i64)> {
        let arrived: Vec<i64> = self
            .result_proposals(urn)
            .await
            .into_iter()
            .map(|(record, _, _)| record["time_ms"].as_i64().unwrap_or_default())
            .collect();
        self.claimed_writes(urn).await.into_iter().zip(arrived).collect()
    }

    /// Every result proposal for `urn` in order: the stand-in's record, the proposal, and its aspect.
    async fn result_proposals(&self, urn: &str) -> Vec<(serde_json::Value, serde_json::Value, serde_json::Value)> {
        self.requests()
            .await
            .into_iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.contains("/aspects?action=ingestProposal")))
            .flat_map(|r| {
                let body: serde_json::Value =
                    r["body"].as_str().and_then(|b| serde_json::from_str(b).ok()).unwrap_or_default();
                // A single write, or each write of a batch (ingestProposalBatch), with the batch's record.
                let proposals = match body["proposals"].as_array() {
                    Some(batch) => batch.clone(),
                    None => vec![body["proposal"].clone()],
                };
                proposals
                    .into_iter()
                    .filter(|proposal| proposal["entityUrn"] == urn)
                    .map(|proposal| {
                        let aspect = serde_json::from_str(proposal["aspect"]["value"].as_str().unwrap_or("null"));
                        (r.clone(), proposal, aspect.unwrap_or_default())
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How many calls went to a path containing `path`.
    pub async fn calls_to(&self, path: &str) -> usize {
        self.requests().await.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.contains(path))).count()
    }

    /// Makes the stand-in a DataHub Cloud GMS: `listExecutorConfigs` answers these entries, their credentials
    /// expiring `expires_in` after each answer.
    pub async fn executor_configs(&self, configs: serde_json::Value, expires_in: Duration) {
        let body = serde_json::json!({"configs": configs, "expires_in_ms": expires_in.as_millis() as u64});
        self.control("executor_configs", body).await;
    }

    /// The `dataHubRemoteExecutorStatus` aspects written (key id, aspect), in order.
    pub async fn executor_statuses(&self) -> Vec<(String, serde_json::Value)> {
        self.requests()
            .await
            .into_iter()
            .filter_map(|r| {
                let body: serde_json::Value = serde_json::from_str(r["body"].as_str()?).ok()?;
                let proposal = &body["proposal"];
                (proposal["entityType"] == "dataHubRemoteExecutor").then(|| {
                    let key: serde_json::Value =
                        serde_json::from_str(proposal["entityKeyAspect"]["value"].as_str().unwrap_or("{}"))
                            .unwrap_or_default();
                    let aspect = serde_json::from_str(proposal["aspect"]["value"].as_str().unwrap_or("null"));
                    (key["id"].as_str().unwrap_or_default().to_owned(), aspect.unwrap_or_default())
                })
            })
            .collect()
    }

    /// How many GraphQL calls the stand-in answered.
    pub async fn graphql_calls(&self) -> usize {
        let requests = self.requests().await;
        requests.iter().filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/api/graphql"))).count()
    }

    /// The Bearer token GMS accepts from now on (`None`: any).
    pub async fn accept_token(&self, token: Option<&str>) {
        self.control("token", serde_json::json!({"token": token})).await;
    }

    /// The `dataHubExecutionRequestResult` aspects written for `urn`, in order, with the HTTP status of each.
    pub async fn result_writes(&self, urn: &str) -> Vec<(u16, serde_json::Value)> {
        self.timed_result_writes(urn).await.into_iter().map(|w| (w.status, w.aspect)).collect()
    }

    /// The same, for writes sent on their own only (not those inside an `ingestProposalBatch` call): how each write
    /// was judged by itself.
    pub async fn single_result_writes(&self, urn: &str) -> Vec<(u16, serde_json::Value)> {
        self.result_proposals(urn)
            .await
            .into_iter()
            .filter(|(record, _, _)| record["path"].as_str().is_some_and(|p| p.ends_with("action=ingestProposal")))
            .map(|(record, _, aspect)| (record["status"].as_u64().unwrap_or(0) as u16, aspect))
            .collect()
    }

    /// The same, with when each arrived and was answered (Unix ms, the stand-in's clock).
    pub async fn timed_result_writes(&self, urn: &str) -> Vec<ResultWrite> {
        self.result_proposals(urn)
            .await
            .into_iter()
            .map(|(record, _, aspect)| ResultWrite {
                status: record["status"].as_u64().unwrap_or(0) as u16,
                aspect,
                arrived_ms: record["time_ms"].as_i64().unwrap_or_default(),
                answered_ms: record["done_ms"].as_i64().unwrap_or_default(),
            })
            .collect()
    }

    /// Requests whose payload failed DataHub's schema validation.
    pub async fn invalid(&self) -> Vec<serde_json::Value> {
        self.requests().await.into_iter().filter(|r| r["valid"] == false).collect()
    }
}
