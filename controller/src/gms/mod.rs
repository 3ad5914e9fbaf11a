//! The GMS client: DataHub's metadata service as executors use it (datahub-protocol.md §2) — Rest.li
//! `ingestProposal` writes of `dataHubExecutionRequestResult` and OpenAPI v2 batch reads of execution request
//! aspects. Knows HTTP and DataHub's JSON shapes; never decides what to send or when (that is the reporter's and
//! the sources' job). The token never appears in logs, errors or `Debug` output.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

pub mod credentials;
pub mod requests;
pub use credentials::{Credentials, Token};
pub use requests::{EXECUTOR_SEARCH_SINCE, Listed, Listing, RequestState, ResultState, ServerInfo};

/// A secret value from GMS (an AWS secret key, a session token); `Debug` never shows it.
pub use outpost_common::secret::Secret;

/// One pool's SQS queue and temporary AWS credentials, as DataHub Cloud hands them to remote executors
/// (`listExecutorConfigs`, datahub-protocol.md §2.8).
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    pub executor_id: String,
    pub region: String,
    pub queue_url: String,
    pub access_key_id: String,
    /// GraphQL calls it `secretKeyId`; it is the secret access key.
    pub secret_access_key: Secret,
    pub session_token: Secret,
    /// When the credentials stop working (`None`: GMS did not say in a form we read).
    pub expiration: Option<std::time::SystemTime>,
}

/// The query DataHub's own remote executor sends.
const LIST_EXECUTOR_CONFIGS: &str = "query listExecutorConfigs { listExecutorConfigs { total executorConfigs { \
                                     region executorId queueUrl accessKeyId secretKeyId sessionToken expiration } } }";

/// How a GMS call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 422 "Invalid update to immutable state": the request already has a terminal status there.
    #[error("GMS already has a final status for this request (HTTP 422): {0}")]
    AlreadyTerminal(String),
    /// 422 (Rest.li) or 412 (OpenAPI) "Expected version …": a conditional write lost to another writer.
    #[error("GMS refused the write: the aspect changed since it was read (HTTP {status}): {body}")]
    PreconditionFailed { status: u16, body: String },
    /// 413: the payload is too large for GMS (or a proxy in front of it).
    #[error("GMS refused the payload as too large (HTTP 413): {0}")]
    TooLarge(String),
    /// 401/403: the token is missing, wrong or lacks privileges. Keeps failing until someone fixes it.
    #[error("GMS refused our credentials (HTTP {status}): {body}; check DATAHUB_GMS_TOKEN")]
    Unauthorized { status: u16, body: String },
    /// 404: nothing answers at this path (a wrong --gms-url, or GMS starting behind a proxy).
    #[error("GMS answered HTTP 404 for {path}: {body}; check DATAHUB_GMS_URL")]
    NoSuchEndpoint { path: String, body: String },
    /// 408, 429, 5xx and transport errors (timeouts included): worth retrying.
    #[error("GMS is unavailable: {0}")]
    Unavailable(String),
    /// Any other answer (400, another 422, 409, 415, …): GMS refused this payload; sending it again cannot help.
    #[error("GMS refused the write (HTTP {status}): {body}")]
    Invalid { status: u16, body: String },
    /// The token file named by --gms-token-file cannot be read (or is empty): an operator can fix it.
    #[error(transparent)]
    TokenFile(#[from] credentials::TokenFileError),
    #[error("GMS answered with a body we cannot read: {0}")]
    BadResponse(String),
    /// GraphQL has no `listExecutorConfigs`: this GMS is not DataHub Cloud (open-source DataHub).
    #[error("this GMS has no listExecutorConfigs (open-source DataHub?): {0}")]
    NotDataHubCloud(String),
}

/// What to do about a failed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// GMS already has a final status: the write is settled, nothing more to send.
    Settled,
    /// It may succeed later (an outage, credentials or a URL an operator can fix): retry with backoff.
    Retry,
    /// This payload can never succeed: stop sending it and record why.
    GiveUp,
}

impl Error {
    pub fn disposition(&self) -> Disposition {
        match self {
            Error::AlreadyTerminal(_) => Disposition::Settled,
            Error::Unavailable(_)
            | Error::Unauthorized { .. }
            | Error::NoSuchEndpoint { .. }
            | Error::BadResponse(_)
            | Error::TokenFile(_)
            | Error::NotDataHubCloud(_) => Disposition::Retry,
            Error::PreconditionFailed { .. } | Error::TooLarge(_) | Error::Invalid { .. } => Disposition::GiveUp,
        }
    }
}

/// Sorts an HTTP answer that is not 2xx into an [`Error`] (read in full, kept cut short).
fn classify(status: u16, path: &str, full: &str) -> Error {
    // DataHub's 422 envelope repeats the validator's text after a long stack-trace line: read all of it.
    let precondition = full.contains("Expected version");
    let terminal = full.contains("immutable state") || full.contains("Denied update");
    let body = short(full);
    match status {
        422 if precondition => Error::PreconditionFailed { status, body },
        412 => Error::PreconditionFailed { status, body },
        422 if terminal => Error::AlreadyTerminal(body),
        413 => Error::TooLarge(body),
        401 | 403 => Error::Unauthorized { status, body },
        404 => Error::NoSuchEndpoint { path: path.to_owned(), body },
        408 | 429 | 500..=599 => Error::Unavailable(format!("HTTP {status}: {body}")),
        _ => Error::Invalid { status, body },
    }
}

/// The flags of the connection to GMS.
#[derive(Clone, Debug, clap::Args)]
#[group(id = "gms")]
#[command(next_help_heading = "DataHub GMS")]
pub struct Args {
    /// DataHub's metadata service, e.g. https://tenant.acryl.io/gms or http://datahub-gms:8080. Without it
    /// nothing is reported to DataHub (results stay in SQLite).
    #[arg(id = "gms_url", long = "gms-url", env = "DATAHUB_GMS_URL")]
    pub url: Option<String>,
    /// The access token for GMS (a DataHub Remote Executor token).
    #[arg(id = "gms_token", long = "gms-token", env = "DATAHUB_GMS_TOKEN", hide_env_values = true)]
    pub token: Option<Token>,
    /// A file holding the access token instead (a mounted Secret, a CSI or Vault mount), read again whenever it
    /// changes. Wins over DATAHUB_GMS_TOKEN.
    #[arg(id = "gms_token_file", long = "gms-token-file", env = "DATAHUB_GMS_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Timeout of one GMS call.
    #[arg(id = "gms_timeout", long = "gms-timeout", env = "OUTPOST_GMS_TIMEOUT",
          value_parser = outpost_common::duration::parse, default_value = "10s")]
    pub timeout: Duration,
    /// How often KILL signals are read from GMS for unfinished tasks.
    #[arg(long, env = "DATAHUB_EXECUTOR_INGESTION_SIGNAL_POLL_INTERVAL",
          value_parser = outpost_common::duration::parse, default_value = "2s")]
    pub signal_poll_interval: Duration,
    /// How often this controller is reported to DataHub Cloud as an executor of its Cloud pools.
    #[arg(long, env = "OUTPOST_EXECUTOR_STATUS_INTERVAL", value_parser = outpost_common::duration::parse,
          default_value = "30s")]
    pub executor_status_interval: Duration,
}

impl Args {
    pub fn validate(&self) -> Result<(), outpost_common::duration::Invalid> {
        outpost_common::duration::positive("--gms-timeout", self.timeout)?;
        outpost_common::duration::positive("--executor-status-interval", self.executor_status_interval)?;
        outpost_common::duration::positive("--signal-poll-interval", self.signal_poll_interval)
    }

    /// The client, when a GMS URL is set.
    pub fn client(&self) -> Result<Option<Client>, Error> {
        let credentials = match (&self.token_file, &self.token) {
            (Some(file), _) => Credentials::from_file(file),
            (None, Some(token)) => Credentials::Given(token.clone()),
            (None, None) => Credentials::None,
        };
        self.url.as_deref().map(|url| Client::new(url, credentials.clone(), self.timeout)).transpose()
    }
}

/// Builds the HTTP client and knows the base URL (`https://tenant.acryl.io/gms` or `http://datahub-gms:8080`).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    credentials: Credentials,
}

fn short(body: &str) -> String {
    let mut text: String = body.chars().take(300).collect();
    if text.len() < body.len() {
        text.push('…');
    }
    text
}

impl Client {
    pub fn new(base_url: &str, credentials: Credentials, timeout: Duration) -> Result<Client, Error> {
        // reqwest builds its rustls config from the process-wide provider (ring, the only one in the workspace).
        outpost_common::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, base: base_url.trim_end_matches('/').to_owned(), credentials })
    }

    /// A request with the current token.
    fn authorized(&self, request: reqwest::RequestBuilder) -> Result<reqwest::RequestBuilder, Error> {
        Ok(match self.credentials.current()? {
            Some(token) => request.bearer_auth(token.expose()),
            None => request,
        })
    }

    fn post(&self, path: &str, body: &Value) -> Result<reqwest::RequestBuilder, Error> {
        self.authorized(
            self.http.post(format!("{}{path}", self.base)).header("X-RestLi-Protocol-Version", "2.0.0").json(body),
        )
    }

    /// A GET; `None` for 404 (DataHub's OpenAPI answers 404 for a missing entity or aspect).
    async fn get(&self, path: &str) -> Result<Option<String>, Error> {
        self.get_dated(path).await.map(|(text, _)| text)
    }

    /// A GET, with the time the answer's `Date` header gives (when it has one).
    async fn get_dated(&self, path: &str) -> Result<(Option<String>, Option<std::time::SystemTime>), Error> {
        let request = self.authorized(self.http.get(format!("{}{path}", self.base)))?;
        let response = request.send().await.map_err(|e| Error::Unavailable(transport_error(&e)))?;
        let status = response.status().as_u16();
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok());
        let text = response.text().await.unwrap_or_default();
        match status {
            200..=299 => Ok((Some(text), date)),
            404 => Ok((None, date)),
            _ => Err(classify(status, path, &text)),
        }
    }

    async fn send(&self, path: &str, body: &Value) -> Result<String, Error> {
        let response = self.post(path, body)?.send().await.map_err(|e| Error::Unavailable(transport_error(&e)))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match status {
            200..=299 => Ok(text),
            _ => Err(classify(status, path, &text)),
        }
    }

    /// UPSERTs an execution request's `dataHubExecutionRequestResult` (the aspect as a JSON object).
    pub async fn ingest_result(&self, urn: &str, result: &Value) -> Result<(), Error> {
        let body = json!({"proposal": result_proposal(urn, result), "async": "false"});
        self.send("/aspects?action=ingestProposal", &body).await.map(|_| ())
    }

    /// UPSERTs the results of many execution requests in one call (Rest.li `ingestProposalBatch`, synchronously,
    /// as DataHub's Python emitter batches them). All or nothing as far as the answer tells: a failure says
    /// nothing about which item failed.
    /// Each result is given as its JSON text (already serialized by the caller, who sized the batch with it).
    pub async fn ingest_results(&self, results: &[(String, String)]) -> Result<(), Error> {
        let proposals: Vec<Value> =
            results.iter().map(|(urn, result)| result_proposal_text(urn, result.clone())).collect();
        let body = json!({"proposals": proposals, "async": "false"});
        self.send("/aspects?action=ingestProposalBatch", &body).await.map(|_| ())
    }

    /// UPSERTs an executor instance's `dataHubRemoteExecutorStatus`, addressed by its key aspect as DataHub's
    /// worker does.
    pub async fn ingest_executor_status(&self, id: &str, status: &Value) -> Result<(), Error> {
        let body = json!({
            "proposal": {
                "entityType": "dataHubRemoteExecutor",
                "entityKeyAspect": {"value": json!({"id": id}).to_string(), "contentType": "application/json"},
                "changeType": "UPSERT",
                "aspectName": "dataHubRemoteExecutorStatus",
                "aspect": {"value": status.to_string(), "contentType": "application/json"},
            },
            "async": "false",
        });
        self.send("/aspects?action=ingestProposal", &body).await.map(|_| ())
    }

    /// GMS's host name (for executor instance ids).
    pub fn host(&self) -> String {
        let rest = self.base.split_once("://").map_or(self.base.as_str(), |(_, rest)| rest);
        rest.split(['/', ':']).next().unwrap_or_default().to_owned()
    }

    /// DataHub Cloud's per-pool SQS queues and temporary AWS credentials (`POST /api/graphql`
    /// `listExecutorConfigs`). An open-source GMS has no such query: it answers with GraphQL errors.
    pub async fn executor_configs(&self) -> Result<Vec<ExecutorConfig>, Error> {
        let body = json!({"query": LIST_EXECUTOR_CONFIGS, "variables": {}});
        let text = self.send("/api/graphql", &body).await?;
        let parsed: Value = serde_json::from_str(&text).map_err(|e| Error::BadResponse(e.to_string()))?;
        if let Some(errors) = parsed.get("errors").filter(|e| !e.is_null()) {
            let errors = short(&errors.to_string());
            return Err(match errors.contains("FieldUndefined") {
                true => Error::NotDataHubCloud(errors),
                false => Error::BadResponse(format!("listExecutorConfigs: {errors}")),
            });
        }
        let entries = parsed["data"]["listExecutorConfigs"]["executorConfigs"]
            .as_array()
            .ok_or_else(|| Error::BadResponse("listExecutorConfigs: no executorConfigs".into()))?;
        let field = |entry: &Value, name: &str| {
            entry[name]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| Error::BadResponse(format!("listExecutorConfigs: an entry has no {name}")))
        };
        entries
            .iter()
            .map(|entry| {
                Ok(ExecutorConfig {
                    executor_id: field(entry, "executorId")?,
                    region: field(entry, "region")?,
                    queue_url: field(entry, "queueUrl")?,
                    access_key_id: field(entry, "accessKeyId")?,
                    secret_access_key: Secret::new(field(entry, "secretKeyId")?),
                    session_token: Secret::new(field(entry, "sessionToken")?),
                    expiration: entry["expiration"].as_str().and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
                })
            })
            .collect()
    }

    /// Reads aspects of execution requests: URN → aspect name → aspect value. Missing entities or aspects are
    /// simply absent.
    pub async fn batch_get(
        &self,
        urns: &[String],
        aspect_names: &[&str],
    ) -> Result<HashMap<String, HashMap<String, Value>>, Error> {
        let body = json!({"urns": urns, "aspectNames": aspect_names, "withSystemMetadata": false});
        let text = self.send("/openapi/v2/entity/batch/dataHubExecutionRequest", &body).await?;
        let parsed: Value = serde_json::from_str(&text).map_err(|e| Error::BadResponse(e.to_string()))?;
        let mut found: HashMap<String, HashMap<String, Value>> = HashMap::new();
        for entity in parsed["entities"].as_array().into_iter().flatten() {
            let Some(urn) = entity["urn"].as_str() else { continue };
            for (name, aspect) in entity["aspects"].as_object().into_iter().flatten() {
                // OpenAPI v2 wraps each aspect as {"value": {...}}.
                let value = aspect.get("value").cloned().unwrap_or_else(|| aspect.clone());
                found.entry(urn.to_owned()).or_default().insert(name.clone(), value);
            }
        }
        Ok(found)
    }
}

/// The proposal UPSERTing an execution request's result aspect, addressed by URN.
fn result_proposal(urn: &str, result: &Value) -> Value {
    result_proposal_text(urn, result.to_string())
}

/// The same, for a result already serialized (`aspect.value` carries the aspect as JSON text).
fn result_proposal_text(urn: &str, result: String) -> Value {
    json!({
        "entityType": "dataHubExecutionRequest",
        "entityUrn": urn,
        "changeType": "UPSERT",
        "aspectName": "dataHubExecutionRequestResult",
        "aspect": {"value": result, "contentType": "application/json"},
    })
}

/// A transport error with its causes (reqwest hides the interesting part in the source chain).
fn transport_error(error: &reqwest::Error) -> String {
    outpost_common::errors::chain(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_never_shows() {
        let client =
            Client::new("http://gms:8080/", Credentials::Given(Token::new("s3cr3t".into())), Duration::from_secs(1))
                .unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("Secret(<redacted>)"));
        assert_eq!(client.base, "http://gms:8080");
    }

    #[test]
    fn executor_credentials_never_show() {
        let config = ExecutorConfig {
            executor_id: "pool".into(),
            region: "us-west-2".into(),
            queue_url: "https://sqs/q".into(),
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Secret::new("wJalrXUtnFEMI".into()),
            session_token: Secret::new("FwoGZXIvYXdzEBY".into()),
            expiration: None,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("FwoGZXIvYXdzEBY"), "{shown}");
        assert!(shown.contains("Secret(<redacted>)"));
    }

    #[test]
    fn every_answer_is_sorted_into_settled_retry_or_give_up() {
        use Disposition::*;
        let immutable = "Failed to validate MCP due to: Invalid update to immutable state for aspect \
                         dataHubExecutionRequestResult ... Denied update.";
        let version = "Failed to validate MCP due to: ValidationExceptionCollection{... \
                       AspectValidationException(subType=PRECONDITION, msg=Expected version -1, actual version 1)]}";
        let table = [
            (422, immutable, Settled),
            (422, version, GiveUp),
            (412, "{\"error\":\"Precondition Error\"}", GiveUp),
            (422, "some other validation failure", GiveUp),
            (400, "bad request", GiveUp),
            (413, "Request Entity Too Large", GiveUp),
            (409, "conflict", GiveUp),
            (401, "", Retry),
            (403, "", Retry),
            (404, "", Retry),
            (408, "", Retry),
            (429, "", Retry),
            (500, "", Retry),
            (503, "", Retry),
        ];
        for (status, body, want) in table {
            assert_eq!(classify(status, "/aspects", body).disposition(), want, "HTTP {status} {body}");
        }
        assert_eq!(Error::Unavailable("timed out".into()).disposition(), Retry);
        // DataHub's envelope puts a long stack-trace line first: the validator's text is found past the cut.
        let envelope = format!("{{\"stackTrace\": \"{}\", \"message\": \"{version}\"}}", "x".repeat(400));
        let error = classify(422, "/aspects", &envelope);
        assert!(matches!(error, Error::PreconditionFailed { .. }), "{error:?}");
        assert!(error.to_string().len() < 600, "kept short: {error}");
    }
}
