//! Property tests of every parser of outside input the controller has: SQS bodies (all three shapes, Celery
//! envelopes with base64 bodies), GMS answers (`/config`, OpenAPI results, GraphQL), agent `Hello`s and results
//! from a hostile agent. Each holds for any input: no panic, and a refusal is an error value with words in it.
//! A fixed number of cases runs in the test command; `PROPTEST_CASES=100000 cargo nextest run parsers_properties`
//! runs more. Failing inputs are kept in `proptest-regressions/` next to this file.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::sources::sqs::message;

/// Any JSON value, a few levels deep, with strings that look like the fields the parsers read.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[ -~]{0,40}".prop_map(Value::String),
        prop_oneof![
            Just("urn:li:dataHubExecutionRequest:abc"),
            Just("RUN_INGEST"),
            Just("assertion_request"),
            Just("KILL"),
            Just("dataHubExecutionRequestInput"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            "[a-zA-Z]{1,12}",
            Just("entityUrn".to_owned()),
            Just("aspect".to_owned()),
            Just("value".to_owned()),
            Just("headers".to_owned()),
            Just("body".to_owned()),
            Just("task".to_owned()),
            Just("executorId".to_owned()),
            Just("args".to_owned()),
            Just("input".to_owned()),
            Just("status".to_owned()),
            Just("systemMetadata".to_owned()),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_sqs_body_is_parsed_or_refused_with_a_reason(body in "\\PC{0,300}") {
        if let Err(reason) = message::parse(&body) {
            prop_assert!(!reason.is_empty());
        }
    }

    #[test]
    fn any_json_sqs_body_is_parsed_or_refused_with_a_reason(value in json_value()) {
        if let Err(reason) = message::parse(&value.to_string()) {
            prop_assert!(!reason.is_empty());
        }
        // The same value as a Celery envelope's base64 body.
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(value.to_string());
        let celery = json!({"body": body, "content-encoding": "utf-8", "content-type": "application/json",
                            "headers": {"task": "execute_ingestion", "id": "x"}, "properties": {}});
        let _ = message::parse(&celery.to_string());
    }

    #[test]
    fn any_execution_request_input_is_read_or_refused(value in json_value()) {
        if let Err(reason) = message::parse_input(&value) {
            prop_assert!(!reason.is_empty());
        }
    }

    #[test]
    fn any_gms_answer_is_read_without_a_panic(value in json_value()) {
        let _ = crate::gms::requests::server_info(&value);
        let _ = crate::gms::requests::result_state(&value);
    }

    #[test]
    fn any_hello_is_converted_or_refused(
        worker in "\\PC{0,70}",
        pools in prop::collection::vec("\\PC{0,20}", 0..4),
        slots in any::<u32>(),
        version in "\\PC{0,40}",
        labels in prop::collection::btree_map("\\PC{0,10}", "\\PC{0,10}", 0..4),
        held in prop::collection::vec(("\\PC{0,20}", any::<u64>()), 0..4),
        venvs in prop::collection::vec(("\\PC{0,20}", "\\PC{0,30}", any::<u64>(), any::<i64>()), 0..4),
    ) {
        use outpost_common::pb;
        let hello = pb::Hello {
            worker_id: worker,
            pools,
            slots,
            version,
            labels: labels.into_iter().collect(),
            held: held.into_iter().map(|(task_id, epoch)| pb::AttemptRef { task_id, epoch }).collect(),
            venvs: venvs
                .into_iter()
                .map(|(key, requirement, bytes, last_used_unix_ms)| pb::Venv { key, requirement, bytes, last_used_unix_ms })
                .collect(),
        };
        match crate::grpc::convert_hello(hello) {
            Ok(hello) => prop_assert!(hello.slots >= 1 && hello.slots <= crate::grpc::MAX_SLOTS),
            Err(status) => prop_assert!(!status.message().is_empty()),
        }
    }

    #[test]
    fn any_result_is_converted_or_refused(status in any::<i32>(), exit in any::<Option<i32>>(), report in "\\PC{0,50}") {
        let result = outpost_common::pb::Result { status, exit_code: exit, report, ..Default::default() };
        if let Err(status) = crate::grpc::convert_outcome(&result) {
            prop_assert!(!status.message().is_empty());
        }
    }
}
