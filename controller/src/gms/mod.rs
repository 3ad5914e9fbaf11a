//! The GMS client: DataHub's metadata service as executors use it (datahub-protocol.md §2) — Rest.li
//! `ingestProposal` writes of `dataHubExecutionRequestResult` and OpenAPI v2 batch reads of execution request
//! aspects. Knows HTTP and DataHub's JSON shapes; never decides what to send or when (that is the reporter's and
//! the sources' job). The token never appears in logs, errors or `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

/// A bearer token; `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(token: String) -> Token {
        Token(token)
    }
}

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;
    fn from_str(token: &str) -> Result<Token, Self::Err> {
        Ok(Token(token.to_owned()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// How a GMS call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 422: GMS refused the change (for a result: it is already terminal).
    #[error("GMS refused the change (HTTP 422): {0}")]
    Rejected(String),
    /// 401/403: the token is missing, wrong or lacks privileges. Keeps failing until someone fixes it.
    #[error("GMS refused our credentials (HTTP {status}): {body}; check DATAHUB_GMS_TOKEN")]
    Unauthorized { status: u16, body: String },
    /// 408, 429, 5xx and transport errors: worth retrying.
    #[error("GMS is unavailable: {0}")]
    Unavailable(String),
    /// Any other answer.
    #[error("GMS answered HTTP {status}: {body}")]
    Other { status: u16, body: String },
    #[error("GMS answered with a body we cannot read: {0}")]
    BadResponse(String),
}

impl Error {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Unauthorized { .. })
    }
}

/// Builds the HTTP client and knows the base URL (`https://tenant.acryl.io/gms` or `http://datahub-gms:8080`).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<Token>,
}

fn short(body: &str) -> String {
    let mut text: String = body.chars().take(300).collect();
    if text.len() < body.len() {
        text.push('…');
    }
    text
}

impl Client {
    pub fn new(base_url: &str, token: Option<Token>, timeout: Duration) -> Result<Client, Error> {
        // reqwest builds its rustls config from the process-wide provider (ring, the only one in the workspace).
        outpost_common::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("outpost/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { http, base: base_url.trim_end_matches('/').to_owned(), token })
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        let mut request =
            self.http.post(format!("{}{path}", self.base)).header("X-RestLi-Protocol-Version", "2.0.0").json(body);
        if let Some(Token(token)) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn send(&self, path: &str, body: &Value) -> Result<String, Error> {
        let response = self.post(path, body).send().await.map_err(|e| Error::Unavailable(transport_error(&e)))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match status {
            200..=299 => Ok(text),
            422 => Err(Error::Rejected(short(&text))),
            401 | 403 => Err(Error::Unauthorized { status, body: short(&text) }),
            408 | 429 | 500..=599 => Err(Error::Unavailable(format!("HTTP {status}: {}", short(&text)))),
            _ => Err(Error::Other { status, body: short(&text) }),
        }
    }

    /// UPSERTs an execution request's `dataHubExecutionRequestResult` (the aspect as a JSON object).
    pub async fn ingest_result(&self, urn: &str, result: &Value) -> Result<(), Error> {
        let body = json!({
            "proposal": {
                "entityType": "dataHubExecutionRequest",
                "entityUrn": urn,
                "changeType": "UPSERT",
                "aspectName": "dataHubExecutionRequestResult",
                "aspect": {"value": result.to_string(), "contentType": "application/json"},
            },
            "async": "false",
        });
        self.send("/aspects?action=ingestProposal", &body).await.map(|_| ())
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
            Client::new("http://gms:8080/", Some(Token::new("s3cr3t".into())), Duration::from_secs(1)).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("Token(<redacted>)"));
        assert_eq!(client.base, "http://gms:8080");
    }

    #[test]
    fn only_outages_and_credentials_are_retried() {
        assert!(Error::Unavailable("x".into()).is_retryable());
        assert!(Error::Unauthorized { status: 401, body: String::new() }.is_retryable());
        assert!(!Error::Rejected("terminal".into()).is_retryable());
        assert!(!Error::Other { status: 400, body: String::new() }.is_retryable());
    }
}
