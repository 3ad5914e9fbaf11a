//! A moto server (SQS and Secrets Manager) for tests, and the SQS messages DataHub producers send.

use std::process::Command;
use std::time::Duration;

use super::{Cluster, Proc, RUN_TIMEOUT, repo_root, unique, wait_until};

/// A moto server: a real SQS (and Secrets Manager) API on loopback, from the project venv.
pub struct Moto {
    pub proc: Proc,
    pub endpoint: String,
    pub sqs: aws_sdk_sqs::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl Cluster {
    pub async fn moto(&self) -> Moto {
        // moto_server takes a port, not 0: borrow a free one from the kernel.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        self.moto_on(port).await
    }

    /// A moto server on a given port (a restart on the same address starts with no queues).
    pub async fn moto_on(&self, port: u16) -> Moto {
        let mut command = Command::new(repo_root().join(".venv/bin/moto_server"));
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut proc = Proc::spawn("moto", command, self.path(&format!("moto-{}.log", unique())));
        let endpoint = format!("http://127.0.0.1:{port}");
        wait_until("moto to answer", Duration::from_secs(60), || {
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            let exited = proc.child.try_wait().ok().flatten();
            async move {
                assert!(exited.is_none(), "moto exited early: {exited:?}");
                up.then_some(())
            }
        })
        .await;
        outpost_common::tls::install_crypto_provider();
        let config = outpost_controller::sources::sqs::loader(Some(&endpoint))
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new("testing", "testing", None, None, "static"))
            .load()
            .await;
        Moto {
            proc,
            endpoint,
            sqs: aws_sdk_sqs::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
        }
    }
}

impl Moto {
    /// Runs tests/moto_iam.py against this moto (signing with `admin`'s key once moto enforces authentication):
    /// `admin`, `user NAME`, `key NAME`, `delete NAME KEY`, `enforce`, `try KEY SECRET QUEUE`, `count QUEUE`.
    pub fn iam(&self, admin: Option<&serde_json::Value>, args: &[&str]) -> serde_json::Value {
        let mut command = std::process::Command::new(repo_root().join(".venv/bin/python"));
        command.arg(repo_root().join("tests/moto_iam.py")).arg(&self.endpoint).args(args);
        if let Some(admin) = admin {
            command.env("ADMIN_KEY_ID", admin["AccessKeyId"].as_str().unwrap());
            command.env("ADMIN_SECRET", admin["SecretAccessKey"].as_str().unwrap());
        }
        let output = command.output().expect("moto_iam.py runs");
        assert!(output.status.success(), "moto_iam.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("moto_iam.py prints JSON")
    }

    pub async fn queue(&self, name: &str) -> String {
        self.sqs.create_queue().queue_name(name).send().await.expect("create queue").queue_url.expect("queue url")
    }

    /// Fast SQS-bridge flags for a controller serving `pool` from `queue` on this moto.
    pub fn bridge_flags(&self, pool: &str, queue: &str, visibility: &str) -> Vec<String> {
        [
            "--queue",
            &format!("{pool}={queue}"),
            "--sqs-endpoint",
            &self.endpoint,
            "--sqs-wait",
            "1s",
            "--sqs-visibility-timeout",
            visibility,
            "--sqs-keep-interval",
            "1s",
            "--sqs-idle-poll",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    pub async fn send(&self, queue: &str, body: &str) {
        self.sqs.send_message().queue_url(queue).message_body(body).send().await.expect("send message");
    }

    /// (visible, in flight) message counts.
    pub async fn counts(&self, queue: &str) -> (u64, u64) {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(queue)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("queue attributes")
            .attributes
            .unwrap_or_default();
        let count = |name: &A| attributes.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        (count(&A::ApproximateNumberOfMessages), count(&A::ApproximateNumberOfMessagesNotVisible))
    }

    /// Waits until the queue holds no message at all (visible or in flight).
    pub async fn wait_empty(&self, queue: &str) {
        wait_until("the queue to empty", RUN_TIMEOUT, || async { (self.counts(queue).await == (0, 0)).then_some(()) })
            .await;
    }
}

/// Execution request messages as DataHub and DataHub Cloud put them on SQS.
pub mod messages {
    use base64::Engine;
    use serde_json::{Value, json};

    /// A `dataHubExecutionRequestInput` for `recipe` on pool `executor_id`.
    pub fn input(recipe: &str, executor_id: &str) -> Value {
        json!({
            "task": "RUN_INGEST",
            "args": {"recipe": recipe, "version": "native", "debug_mode": "false"},
            "executorId": executor_id,
            "source": {"type": "SCHEDULED_INGESTION_SOURCE", "ingestionSource": "urn:li:dataHubIngestionSource:nightly"},
            "requestedAt": 1732550000000i64,
            "actorUrn": "urn:li:corpuser:datahub",
        })
    }

    /// A MetadataChangeLog of the input aspect, shaped as DataHub's MCL (the aspect as a JSON string).
    pub fn mcl_input(id: &str, input: &Value) -> String {
        json!({
            "entityType": "dataHubExecutionRequest",
            "entityUrn": format!("urn:li:dataHubExecutionRequest:{id}"),
            "entityKeyAspect": {"value": json!({"id": id}).to_string(), "contentType": "application/json"},
            "changeType": "UPSERT",
            "aspectName": "dataHubExecutionRequestInput",
            "aspect": {"value": input.to_string(), "contentType": "application/json"},
            "systemMetadata": {"lastObserved": 1732550000000i64, "runId": "no-run-id-provided"},
            "created": {"time": 1732550000000i64, "actor": "urn:li:corpuser:datahub"},
        })
        .to_string()
    }

    /// A MetadataChangeLog of a KILL signal.
    pub fn mcl_kill(id: &str) -> String {
        let signal = json!({"signal": "KILL", "executorId": "default",
                            "createdAt": {"time": 1732550100000i64, "actor": "urn:li:corpuser:admin"}});
        json!({
            "entityType": "dataHubExecutionRequest",
            "entityUrn": format!("urn:li:dataHubExecutionRequest:{id}"),
            "changeType": "UPSERT",
            "aspectName": "dataHubExecutionRequestSignal",
            "aspect": {"value": signal.to_string(), "contentType": "application/json"},
        })
        .to_string()
    }

    /// DataHub Cloud's Celery/kombu envelope (base64 JSON; the pickled body is never read).
    pub fn celery(id: &str, pool: &str) -> String {
        celery_task("ingestion_request", &format!("urn:li:dataHubExecutionRequest:{id}"), pool)
    }

    /// The same envelope for another of DataHub's executor tasks (`assertion_request`, ...) about `urn`.
    pub fn celery_task(task: &str, urn: &str, pool: &str) -> String {
        let envelope = json!({
            "body": base64::engine::general_purpose::STANDARD.encode(b"\x80\x04\x95 not unpickled"),
            "content-encoding": "binary",
            "content-type": "application/x-python-serialize",
            "headers": {"lang": "py", "task": format!("datahub_executor.worker.celery_sqs.app.{task}"),
                        "id": urn, "root_id": urn, "parent_id": null, "group": null, "retries": 0,
                        "eta": null, "expires": null, "timelimit": [null, null],
                        "argsrepr": "[MetadataChangeLogClass({...})]", "kwargsrepr": "{}", "origin": "gen1@coordinator"},
            "properties": {"correlation_id": urn, "reply_to": "0b3c0f3e-1111-4222-8333-444455556666",
                           "delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": pool},
                           "priority": 0, "body_encoding": "base64", "delivery_tag": "5c3f0f3e-1111-4222-8333-444455556666"},
        });
        base64::engine::general_purpose::STANDARD.encode(envelope.to_string())
    }

    /// The plain form for producers of one's own.
    pub fn plain(id: &str, input: &Value) -> String {
        json!({"executionRequestUrn": format!("urn:li:dataHubExecutionRequest:{id}"), "input": input}).to_string()
    }

    /// The execution request id a message body of one of the shapes above is about.
    pub fn request_id(body: &str) -> Option<String> {
        let message: Value = serde_json::from_str(body).ok()?;
        let urn = [&message["entityUrn"], &message["executionRequestUrn"], &message["headers"]["id"]]
            .into_iter()
            .find_map(Value::as_str)?;
        urn.strip_prefix("urn:li:dataHubExecutionRequest:").map(str::to_owned)
    }
}
