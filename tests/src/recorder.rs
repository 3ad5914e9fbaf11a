//! A recording HTTP proxy for the SQS API on loopback: it forwards every request to the real SQS API (moto) and
//! keeps each call — when it arrived, its action, and both JSON bodies — so tests learn which messages were
//! deleted, and when, from the calls themselves rather than from the controller's log.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::history::Delete;

/// One SQS API call as it went through.
#[derive(Clone, Debug)]
pub struct SqsCall {
    /// When the request arrived (Unix ms).
    pub at_ms: i64,
    /// The action (`ReceiveMessage`, `DeleteMessageBatch`, ...), from the AWS JSON protocol's `X-Amz-Target`.
    pub action: String,
    pub request: Value,
    pub status: u16,
    pub response: Value,
}

struct Target {
    base: String,
    client: reqwest::Client,
    calls: Mutex<Vec<SqsCall>>,
}

pub struct SqsRecorder {
    pub addr: std::net::SocketAddr,
    target: Arc<Target>,
    serve: AbortHandle,
}

impl Drop for SqsRecorder {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

impl SqsRecorder {
    /// Listens on 127.0.0.1:0 and forwards to `url` (`http://127.0.0.1:N`, moto's endpoint).
    pub async fn before(url: &str) -> SqsRecorder {
        outpost_common::tls::install_crypto_provider();
        let target = Arc::new(Target {
            base: url.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            calls: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("recorder binds");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(forward).with_state(target.clone());
        let serve = tokio::spawn(async move { axum::serve(listener, app).await }).abort_handle();
        SqsRecorder { addr, target, serve }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every call so far, in the order they arrived.
    pub fn calls(&self) -> Vec<SqsCall> {
        self.target.calls.lock().unwrap().clone()
    }

    /// Every delete that reached SQS, for the task whose message it deleted: receipt handles are matched to the
    /// messages `ReceiveMessage` handed out, and a message body to its task by `task_of`.
    pub fn deletes(&self, task_of: impl Fn(&str) -> Option<String>) -> Vec<Delete> {
        let calls = self.calls();
        let received: std::collections::HashMap<&str, &str> = calls
            .iter()
            .filter(|c| c.action == "ReceiveMessage")
            .flat_map(|c| c.response["Messages"].as_array().into_iter().flatten())
            .filter_map(|m| Some((m["ReceiptHandle"].as_str()?, m["Body"].as_str()?)))
            .collect();
        let mut deletes = Vec::new();
        for call in &calls {
            let handles: Vec<&str> = match call.action.as_str() {
                "DeleteMessage" => call.request["ReceiptHandle"].as_str().into_iter().collect(),
                "DeleteMessageBatch" => call.request["Entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["ReceiptHandle"].as_str())
                    .collect(),
                _ => continue,
            };
            for handle in handles {
                let body =
                    received.get(handle).unwrap_or_else(|| panic!("a delete of a handle never received: {handle}"));
                let task = task_of(body).unwrap_or_else(|| panic!("no task in a deleted message: {body}"));
                deletes.push(Delete { task, at_ms: call.at_ms });
            }
        }
        deletes
    }
}

async fn forward(State(target): State<Arc<Target>>, request: Request) -> Result<Response, (StatusCode, String)> {
    let at_ms = outpost_common::clock::unix_ms();
    let (parts, body) = request.into_parts();
    let body: Bytes =
        axum::body::to_bytes(body, 16 << 20).await.map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forwarded = target.client.request(parts.method.clone(), format!("{}{path}", target.base));
    for (name, value) in &parts.headers {
        if name != axum::http::header::HOST {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = forwarded.body(body.clone()).send().await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let answer_body = answer.bytes().await.map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    let action = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(|t| t.trim_start_matches("AmazonSQS.").to_owned())
        .unwrap_or_default();
    target.calls.lock().unwrap().push(SqsCall {
        at_ms,
        action,
        request: serde_json::from_slice(&body).unwrap_or_default(),
        status: status.as_u16(),
        response: serde_json::from_slice(&answer_body).unwrap_or_default(),
    });
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        if name != axum::http::header::TRANSFER_ENCODING && name != axum::http::header::CONTENT_LENGTH {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    response.body(Body::from(answer_body)).map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))
}
