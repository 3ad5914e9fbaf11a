//! Execution requests in GMS as a source of work and a register of claims (datahub-protocol.md §2.6, §2.7;
//! shapes in datahub-gms-shapes.md §1–§5): what the server supports (`GET /config`), the search for requests of a
//! pool (GraphQL `listExecutionRequests`), re-reads with `systemMetadata.version` (OpenAPI v3), and conditional
//! writes of `dataHubExecutionRequestResult` that name their writer. Decides nothing about claiming.

use std::collections::HashMap;

use outpost_common::ids::AspectVersion;
use serde_json::{Value, json};

use super::{Client, Error, short};

/// The `systemMetadata.properties` key naming the controller that wrote a result aspect (the claim's holder).
pub const HOLDER_PROPERTY: &str = "outpostController";

/// What `GET /config` says about the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// e.g. `v1.2.0` (open source) or `v0.3.12` (DataHub Cloud); empty when not given.
    pub version: String,
    /// DataHub Cloud (`datahub.serverEnv` set and not `core`).
    pub cloud: bool,
    /// Conditional writes (`If-Version-Match`, added in open-source v0.14.0; every DataHub Cloud release since).
    pub conditional_writes: bool,
    /// Execution requests searchable by `executorId` (the model in open-source 1.2.0 and later, and DataHub Cloud):
    /// what the GMS channel needs to find a pool's requests.
    pub executor_search: bool,
}

/// The first open-source DataHub whose search indexes `executorId`.
pub const EXECUTOR_SEARCH_SINCE: &str = "v1.2.0";

/// A request's `dataHubExecutionRequestResult` as GMS holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultState {
    pub status: String,
    pub version: AspectVersion,
    /// The controller whose write this is (absent when not Outpost's).
    pub holder: Option<String>,
}

/// A request re-read: its input aspect and its result, if any.
#[derive(Clone, Debug)]
pub struct RequestState {
    pub input: Option<Value>,
    pub result: Option<ResultState>,
}

/// Which requests of a pool a search looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// No result yet: nobody took them.
    Unclaimed,
    /// Claimed (PENDING) or running: someone holds them, perhaps a controller that died.
    Held,
}

/// A search hit (a candidate only: the index lags; re-read before acting).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub urn: String,
}

const LIST_EXECUTION_REQUESTS: &str = "query listExecutionRequests($input: ListExecutionRequestsInput!) { \
     listExecutionRequests(input: $input) { start count total executionRequests { urn id } } }";

/// The result aspect of a claimed request that waits for an agent: PENDING (what DataHub Cloud's coordinator
/// writes for queued work and DataHub's UI shows as waiting), with a report saying who holds it.
pub fn pending_result(report: &str) -> Value {
    json!({"status": "PENDING", "report": report})
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.trim_start_matches('v').split(['.', '-', 'r']).map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0)))
}

/// Reads `/config`'s answer (datahub-gms-shapes.md §5).
pub fn server_info(config: &Value) -> ServerInfo {
    let versions = &config["versions"];
    let version = versions["acryldata/datahub"]["version"]
        .as_str()
        .or_else(|| versions["linkedin/datahub"]["version"].as_str())
        .unwrap_or_default()
        .to_owned();
    let env = config["datahub"]["serverEnv"].as_str().unwrap_or_default();
    let cloud = !env.is_empty() && env != "core";
    let parsed = parse_version(&version);
    let conditional_writes = cloud || parsed.is_some_and(|v| v >= (0, 14, 0));
    let executor_search = cloud || parsed.is_some_and(|v| v >= (1, 2, 0));
    ServerInfo { version, cloud, conditional_writes, executor_search }
}

pub(crate) fn result_state(aspect: &Value) -> Option<ResultState> {
    let status = aspect["value"]["status"].as_str()?.to_owned();
    let metadata = &aspect["systemMetadata"];
    let version = match &metadata["version"] {
        Value::String(v) => v.clone(),
        Value::Number(n) => n.to_string(),
        _ => "1".to_owned(),
    };
    let holder = metadata["properties"][HOLDER_PROPERTY].as_str().map(str::to_owned);
    Some(ResultState { status, version: AspectVersion::new(version), holder })
}

fn encode(urn: &str) -> String {
    urn.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Client {
    /// What the server is and supports (`GET {gms}/config`).
    pub async fn server_info(&self) -> Result<ServerInfo, Error> {
        self.server_info_dated().await.map(|(info, _)| info)
    }

    /// The same, with the time GMS's answer says it is (its `Date` header), for a clock check.
    pub async fn server_info_dated(&self) -> Result<(ServerInfo, Option<std::time::SystemTime>), Error> {
        let (text, date) = self.get_dated("/config").await?;
        let text = text.ok_or_else(|| Error::NoSuchEndpoint { path: "/config".into(), body: String::new() })?;
        let config: Value = serde_json::from_str(&text).map_err(|e| Error::BadResponse(format!("/config: {e}")))?;
        Ok((server_info(&config), date))
    }

    /// Re-reads a request's input and result with their system metadata (OpenAPI v3); `None` when GMS has no
    /// such request.
    pub async fn read_request(&self, urn: &str) -> Result<Option<RequestState>, Error> {
        let path = format!(
            "/openapi/v3/entity/dataHubExecutionRequest/{}?systemMetadata=true&aspects=dataHubExecutionRequestInput\
             &aspects=dataHubExecutionRequestResult",
            encode(urn)
        );
        let Some(text) = self.get(&path).await? else { return Ok(None) };
        let entity: Value = serde_json::from_str(&text).map_err(|e| Error::BadResponse(format!("{path}: {e}")))?;
        Ok(Some(RequestState {
            input: entity.get("dataHubExecutionRequestInput").map(|a| a["value"].clone()),
            result: entity.get("dataHubExecutionRequestResult").and_then(result_state),
        }))
    }

    /// Re-reads a request's result with its version and writer (OpenAPI v3); `None` when it has none.
    pub async fn read_result(&self, urn: &str) -> Result<Option<ResultState>, Error> {
        let path = format!(
            "/openapi/v3/entity/dataHubExecutionRequest/{}/dataHubExecutionRequestResult?systemMetadata=true",
            encode(urn)
        );
        let Some(text) = self.get(&path).await? else { return Ok(None) };
        let aspect: Value = serde_json::from_str(&text).map_err(|e| Error::BadResponse(format!("{path}: {e}")))?;
        Ok(result_state(&aspect))
    }

    /// Re-reads the results of many requests at once (OpenAPI v3 `batchGet`, with their versions and writers); a
    /// request with no result is left out.
    pub async fn read_results(&self, urns: &[String]) -> Result<HashMap<String, ResultState>, Error> {
        let path = "/openapi/v3/entity/dataHubExecutionRequest/batchGet?systemMetadata=true";
        let body: Vec<Value> =
            urns.iter().map(|urn| json!({"urn": urn, "dataHubExecutionRequestResult": {}})).collect();
        let text = self.send(path, &Value::Array(body)).await?;
        let entities: Value = serde_json::from_str(&text).map_err(|e| Error::BadResponse(format!("{path}: {e}")))?;
        let mut found = HashMap::new();
        for entity in entities.as_array().into_iter().flatten() {
            let (Some(urn), Some(result)) = (entity["urn"].as_str(), entity.get("dataHubExecutionRequestResult"))
            else {
                continue;
            };
            if let Some(state) = result_state(result) {
                found.insert(urn.to_owned(), state);
            }
        }
        Ok(found)
    }

    /// UPSERTs a request's result only if GMS still holds `expected` (`If-Version-Match` in the proposal's
    /// headers, synchronously), naming `holder` as its writer. A lost race is `Error::PreconditionFailed`.
    pub async fn ingest_result_if(
        &self,
        urn: &str,
        result: &Value,
        expected: &AspectVersion,
        holder: &str,
        now_ms: i64,
    ) -> Result<(), Error> {
        let mut proposal = super::result_proposal(urn, result);
        proposal["systemMetadata"] = json!({
            "lastObserved": now_ms,
            "runId": "no-run-id-provided",
            "lastRunId": "no-run-id-provided",
            "properties": {HOLDER_PROPERTY: holder},
        });
        proposal["headers"] = json!({"If-Version-Match": expected.as_str()});
        let body = json!({"proposal": proposal, "async": "false"});
        self.send("/aspects?action=ingestProposal", &body).await.map(|_| ())
    }

    /// Requests for `pool` that are unclaimed or held, oldest first (GraphQL `listExecutionRequests`; a search:
    /// it lags behind writes).
    pub async fn list_execution_requests(
        &self,
        pool: &str,
        listing: Listing,
        count: u32,
    ) -> Result<Vec<Listed>, Error> {
        let status = match listing {
            Listing::Unclaimed => json!({"field": "executionResultStatus", "condition": "EXISTS", "negated": true}),
            Listing::Held => json!({"field": "executionResultStatus", "values": ["PENDING", "RUNNING"]}),
        };
        let body = json!({
            "query": LIST_EXECUTION_REQUESTS,
            "variables": {"input": {
                "start": 0,
                "count": count,
                "query": "*",
                "filters": [{"field": "executorId", "values": [pool]}, status],
                "sort": {"field": "requestTimeMs", "sortOrder": "ASCENDING"},
            }},
        });
        let text = self.send("/api/graphql", &body).await?;
        let parsed: Value = serde_json::from_str(&text).map_err(|e| Error::BadResponse(e.to_string()))?;
        if let Some(errors) = parsed.get("errors").filter(|e| !e.is_null()) {
            return Err(Error::BadResponse(format!("listExecutionRequests: {}", short(&errors.to_string()))));
        }
        let hits = parsed["data"]["listExecutionRequests"]["executionRequests"]
            .as_array()
            .ok_or_else(|| Error::BadResponse("listExecutionRequests: no executionRequests".into()))?;
        Ok(hits
            .iter()
            .filter_map(|hit| {
                let urn = hit["urn"].as_str()?.to_owned();
                Some(Listed { urn })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditional_writes_are_known_from_the_server_version() {
        let core =
            |v: &str| json!({"versions": {"acryldata/datahub": {"version": v}}, "datahub": {"serverEnv": "core"}});
        assert!(server_info(&core("v1.2.0")).conditional_writes);
        assert!(server_info(&core("v0.14.0")).conditional_writes);
        assert!(server_info(&core("v0.14.1rc3")).conditional_writes);
        assert!(!server_info(&core("v0.13.3")).conditional_writes);
        assert!(!server_info(&json!({"versions": {"linkedin/datahub": {"version": "v0.8.45"}}})).conditional_writes);
        assert!(!server_info(&core("v1.1.0")).executor_search);
        assert!(server_info(&core("v1.2.0")).executor_search);
        assert!(server_info(&core("v1.3.0rc2")).executor_search);
        assert!(!server_info(&json!({})).conditional_writes);
        let cloud =
            json!({"versions": {"acryldata/datahub": {"version": "v0.3.12"}}, "datahub": {"serverEnv": "prod"}});
        assert_eq!(
            server_info(&cloud),
            ServerInfo { version: "v0.3.12".into(), cloud: true, conditional_writes: true, executor_search: true }
        );
    }

    #[test]
    fn a_result_names_its_version_and_writer() {
        let aspect = json!({"value": {"status": "RUNNING"},
            "systemMetadata": {"version": "3", "properties": {"outpostController": "c-1"}}});
        assert_eq!(
            result_state(&aspect),
            Some(ResultState {
                status: "RUNNING".into(),
                version: AspectVersion::new("3"),
                holder: Some("c-1".into())
            })
        );
        assert_eq!(result_state(&json!({"value": {}})), None);
        assert_eq!(encode("urn:li:dataHubExecutionRequest:a-1"), "urn%3Ali%3AdataHubExecutionRequest%3Aa-1");
    }
}
