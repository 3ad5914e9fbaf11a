//! What an SQS message says, parsed once: DataHub's MetadataChangeLog/Proposal JSON for
//! `dataHubExecutionRequestInput` (run) and `dataHubExecutionRequestSignal` KILL (cancel), DataHub Cloud's
//! Celery/kombu envelope (only the URN is read; the input is fetched from GMS; nothing is unpickled), and a plain
//! `{"executionRequestUrn", "input"}` form. Pure functions; anything else is refused with a reason for the
//! quarantine.

use std::collections::BTreeMap;

use base64::Engine;
use outpost_common::ids::TaskId;

use crate::metrics::ForeignTask;
use serde_json::Value;

/// An execution request's input (`dataHubExecutionRequestInput`), checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionInput {
    pub task: String,
    pub args: BTreeMap<String, String>,
    pub executor_id: String,
    pub source_type: String,
    pub requested_at_ms: i64,
}

/// What a message asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Run this execution request.
    Run { id: TaskId, input: ExecutionInput },
    /// Run this execution request; its input must be read from GMS (Celery envelope).
    FetchAndRun { id: TaskId },
    /// Cancel this execution request (a KILL signal).
    Kill { id: TaskId },
    /// Work of DataHub Cloud's own executor that Outpost does not run (an assertion or a monitor's training run):
    /// `task` is the Celery task's short name.
    NotOurs { task: ForeignTask },
}

/// Why a message cannot be used (stored in the quarantine).
pub type Refusal = String;

/// The Celery task that carries ingestion requests.
const CELERY_INGESTION_TASK: &str = "ingestion_request";

fn urn_id(urn: &str) -> Result<TaskId, Refusal> {
    let id = urn
        .strip_prefix(outpost_common::ids::EXECUTION_REQUEST_URN_PREFIX)
        .ok_or_else(|| format!("{urn:?} is not an execution request URN"))?;
    TaskId::parse(id).map_err(|e| format!("execution request URN {urn:?}: {e}"))
}

/// Checks an `ExecutionRequestInput` object.
pub fn parse_input(value: &Value) -> Result<ExecutionInput, Refusal> {
    let object = value.as_object().ok_or("the execution request input is not a JSON object")?;
    let text = |field: &str| -> Result<String, Refusal> {
        match object.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(format!("input.{field} is empty")),
            Some(other) => Err(format!("input.{field} must be a string, not {other}")),
            None => Err(format!("input.{field} is missing")),
        }
    };
    let task = text("task")?;
    let executor_id = text("executorId")?;
    let args = match object.get("args") {
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(format!("input.args.{k} must be a string, not {other}")),
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?,
        Some(other) => return Err(format!("input.args must be a map of strings, not {other}")),
        None => return Err("input.args is missing".into()),
    };
    let source_type = match object.get("source").and_then(|s| s.get("type")) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("input.source.type is missing".into()),
    };
    let requested_at_ms =
        object.get("requestedAt").and_then(Value::as_i64).ok_or("input.requestedAt is missing or not a number")?;
    Ok(ExecutionInput { task, args, executor_id, source_type, requested_at_ms })
}

/// Parses a message body.
pub fn parse(body: &str) -> Result<Request, Refusal> {
    match serde_json::from_str::<Value>(body) {
        Ok(value) => parse_json(&value),
        Err(json_error) => {
            // A kombu envelope travels base64-encoded.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(body.trim())
                .map_err(|_| format!("the body is neither JSON ({json_error}) nor base64"))?;
            let value: Value = serde_json::from_slice(&decoded)
                .map_err(|e| format!("the body is base64 but not a JSON envelope: {e}"))?;
            if value.get("headers").is_some() {
                parse_celery(&value)
            } else {
                Err("the base64 body is not a Celery envelope (no headers)".into())
            }
        }
    }
}

fn parse_json(value: &Value) -> Result<Request, Refusal> {
    let object = value.as_object().ok_or("the body is JSON but not an object")?;
    if let Some(urn) = object.get("executionRequestUrn") {
        let urn = urn.as_str().ok_or("executionRequestUrn must be a string")?;
        let input = object.get("input").ok_or("the plain form needs an input")?;
        return Ok(Request::Run { id: urn_id(urn)?, input: parse_input(input)? });
    }
    if object.contains_key("aspectName") {
        return parse_change(object);
    }
    if object.contains_key("headers") && object.contains_key("body") {
        return parse_celery(value);
    }
    Err("unrecognised message: not a MetadataChangeLog/Proposal, Celery envelope or {executionRequestUrn, input}"
        .into())
}

/// A MetadataChangeLog or MetadataChangeProposal about an execution request.
fn parse_change(object: &serde_json::Map<String, Value>) -> Result<Request, Refusal> {
    if let Some(entity_type) = object.get("entityType").and_then(Value::as_str)
        && entity_type != "dataHubExecutionRequest"
    {
        return Err(format!("entityType {entity_type:?} is not dataHubExecutionRequest"));
    }
    let aspect_name = object.get("aspectName").and_then(Value::as_str).ok_or("aspectName must be a string")?;
    if let Some(change) = object.get("changeType").and_then(Value::as_str)
        && change != "UPSERT"
        && change != "CREATE"
    {
        return Err(format!("changeType {change:?} is not UPSERT"));
    }
    let id = match object.get("entityUrn").and_then(Value::as_str) {
        Some(urn) => urn_id(urn)?,
        None => {
            let key = object
                .get("entityKeyAspect")
                .and_then(|k| k.get("value"))
                .and_then(Value::as_str)
                .ok_or("the change has neither entityUrn nor entityKeyAspect")?;
            let key: Value = serde_json::from_str(key).map_err(|e| format!("entityKeyAspect.value: {e}"))?;
            let id = key.get("id").and_then(Value::as_str).ok_or("entityKeyAspect has no id")?;
            TaskId::parse(id).map_err(|e| format!("entityKeyAspect.id: {e}"))?
        }
    };
    let aspect = object.get("aspect").ok_or("the change has no aspect")?;
    if let Some(content_type) = aspect.get("contentType").and_then(Value::as_str)
        && content_type != "application/json"
    {
        return Err(format!("aspect.contentType {content_type:?} is not application/json"));
    }
    let value_text = aspect.get("value").and_then(Value::as_str).ok_or("aspect.value must be a JSON string")?;
    let value: Value = serde_json::from_str(value_text).map_err(|e| format!("aspect.value is not JSON: {e}"))?;
    match aspect_name {
        "dataHubExecutionRequestInput" => Ok(Request::Run { id, input: parse_input(&value)? }),
        "dataHubExecutionRequestSignal" => match value.get("signal").and_then(Value::as_str) {
            Some("KILL") => Ok(Request::Kill { id }),
            Some(other) => Err(format!("signal {other:?} is not KILL")),
            None => Err("the signal aspect has no signal".into()),
        },
        other => {
            Err(format!("aspect {other:?} is neither dataHubExecutionRequestInput nor dataHubExecutionRequestSignal"))
        }
    }
}

/// DataHub Cloud's Celery/kombu envelope: `headers.task` says what it is, `headers.id` is the URN.
fn parse_celery(value: &Value) -> Result<Request, Refusal> {
    let headers = value.get("headers").ok_or("the Celery envelope has no headers")?;
    let task = headers.get("task").and_then(Value::as_str).ok_or("the Celery envelope has no headers.task")?;
    let short = task.rsplit('.').next().unwrap_or(task);
    // Celery tasks DataHub Cloud's pool queue also carries, for its proprietary monitors (datahub-protocol.md
    // §4.2).
    if let Some(task) = ForeignTask::from_label(short) {
        return Ok(Request::NotOurs { task });
    }
    if short != CELERY_INGESTION_TASK {
        return Err(format!("Celery task {task:?} is not an ingestion request"));
    }
    let urn = headers.get("id").and_then(Value::as_str).ok_or("the Celery envelope has no headers.id")?;
    Ok(Request::FetchAndRun { id: urn_id(urn)? })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn input() -> Value {
        json!({"task": "RUN_INGEST", "args": {"recipe": "{}", "version": "native"}, "executorId": "remote",
               "source": {"type": "MANUAL_INGESTION_SOURCE"}, "requestedAt": 1732550000000i64})
    }

    fn change(aspect_name: &str, aspect: Value) -> String {
        json!({"entityType": "dataHubExecutionRequest", "entityUrn": "urn:li:dataHubExecutionRequest:abc",
               "changeType": "UPSERT", "aspectName": aspect_name,
               "aspect": {"value": aspect.to_string(), "contentType": "application/json"}})
        .to_string()
    }

    fn id() -> TaskId {
        TaskId::parse("abc").unwrap()
    }

    fn celery(task: &str) -> String {
        let envelope = json!({"body": "gASVAAAA", "content-encoding": "binary",
                              "content-type": "application/x-python-serialize",
                              "headers": {"lang": "py", "task": task, "id": "urn:li:dataHubExecutionRequest:abc"},
                              "properties": {"body_encoding": "base64"}});
        base64::engine::general_purpose::STANDARD.encode(envelope.to_string())
    }

    #[test]
    fn the_three_shapes() {
        let want_input = ExecutionInput {
            task: "RUN_INGEST".into(),
            args: BTreeMap::from([("recipe".into(), "{}".into()), ("version".into(), "native".into())]),
            executor_id: "remote".into(),
            source_type: "MANUAL_INGESTION_SOURCE".into(),
            requested_at_ms: 1732550000000,
        };
        assert_eq!(
            parse(&change("dataHubExecutionRequestInput", input())),
            Ok(Request::Run { id: id(), input: want_input.clone() })
        );
        let plain = json!({"executionRequestUrn": "urn:li:dataHubExecutionRequest:abc", "input": input()}).to_string();
        assert_eq!(parse(&plain), Ok(Request::Run { id: id(), input: want_input }));
        let kill = change(
            "dataHubExecutionRequestSignal",
            json!({"signal": "KILL", "createdAt": {"time": 1, "actor": "urn:li:corpuser:a"}}),
        );
        assert_eq!(parse(&kill), Ok(Request::Kill { id: id() }));
        assert_eq!(
            parse(&celery("datahub_executor.worker.celery_sqs.app.ingestion_request")),
            Ok(Request::FetchAndRun { id: id() })
        );
        let key_form = json!({"entityType": "dataHubExecutionRequest", "entityKeyAspect": {"value": "{\"id\": \"abc\"}", "contentType": "application/json"},
                              "changeType": "UPSERT", "aspectName": "dataHubExecutionRequestSignal",
                              "aspect": {"value": "{\"signal\": \"KILL\"}", "contentType": "application/json"}});
        assert_eq!(parse(&key_form.to_string()), Ok(Request::Kill { id: id() }));
        // DataHub Cloud's monitor work travels on the same queue; it is recognised, not taken for garbage.
        for (name, task) in [
            ("assertion_request", ForeignTask::AssertionRequest),
            ("monitor_training_request", ForeignTask::MonitorTrainingRequest),
        ] {
            let celery = celery(&format!("datahub_executor.worker.celery_sqs.app.{name}"));
            assert_eq!(parse(&celery), Ok(Request::NotOurs { task }));
        }
    }

    #[test]
    fn refusals_say_why() {
        let mut no_task = input();
        no_task.as_object_mut().unwrap().remove("task");
        let mut numeric_arg = input();
        numeric_arg["args"]["debug_mode"] = json!(true);
        let cases: Vec<(String, &str)> = vec![
            ("not json at all".into(), "the body is neither JSON (expected ident at line 1 column 2) nor base64"),
            (
                "{\"truncated\": ".into(),
                "the body is neither JSON (EOF while parsing a value at line 1 column 14) nor base64",
            ),
            ("[1, 2]".into(), "the body is JSON but not an object"),
            (
                "{\"hello\": 1}".into(),
                "unrecognised message: not a MetadataChangeLog/Proposal, Celery envelope or {executionRequestUrn, input}",
            ),
            (
                change("dataHubIngestionSourceInfo", json!({})),
                "aspect \"dataHubIngestionSourceInfo\" is neither dataHubExecutionRequestInput nor dataHubExecutionRequestSignal",
            ),
            (change("dataHubExecutionRequestInput", no_task), "input.task is missing"),
            (change("dataHubExecutionRequestInput", numeric_arg), "input.args.debug_mode must be a string, not true"),
            (change("dataHubExecutionRequestSignal", json!({"signal": "PAUSE"})), "signal \"PAUSE\" is not KILL"),
            (
                celery("datahub_executor.worker.celery_sqs.app.metadata_test_request"),
                "Celery task \"datahub_executor.worker.celery_sqs.app.metadata_test_request\" is not an ingestion request",
            ),
            (
                json!({"executionRequestUrn": "urn:li:dataset:x", "input": input()}).to_string(),
                "\"urn:li:dataset:x\" is not an execution request URN",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(parse(&body), Err(want.to_owned()), "body: {body}");
        }
    }
}
