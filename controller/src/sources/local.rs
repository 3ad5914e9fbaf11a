//! The local queue, the embedded default: tasks submitted through the admin API go straight to the scheduler.
//! Validates and fills defaults (task name, pool, a generated execution request id) here, once.

use std::collections::BTreeMap;

use outpost_common::clock::unix_ms;
use outpost_common::ids::{self, PoolId, TaskId};
use outpost_common::task::{RUN_INGEST, TEST_CONNECTION};

use crate::scheduler::{self, Scheduler};
use crate::store::{Audit, NewTask, TaskRecord};

/// The pool a submission without one goes to (DataHub's default executor ID).
pub const DEFAULT_POOL: &str = "default";
/// `ExecutionRequestSource.type` of a submission without one.
pub const DEFAULT_SOURCE_TYPE: &str = "MANUAL_INGESTION_SOURCE";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error(transparent)]
    Scheduler(#[from] scheduler::Error),
}

/// A task as an operator submits it; empty strings mean "use the default".
#[derive(Clone, Debug, Default)]
pub struct Submission {
    pub task_name: String,
    pub args: BTreeMap<String, String>,
    pub pool: String,
    pub execution_request_id: String,
    pub source_type: String,
}

fn invalid(field: &'static str, reason: impl std::fmt::Display) -> Error {
    Error::Invalid { field, reason: reason.to_string() }
}

/// Checks a submission and fills its defaults.
pub fn validate(submission: Submission) -> Result<NewTask, Error> {
    let task_name = if submission.task_name.is_empty() { RUN_INGEST.to_owned() } else { submission.task_name };
    if !task_name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
        return Err(invalid("task", format!("{task_name:?} is not a task name like RUN_INGEST")));
    }
    // NOOP (and any other name) needs no recipe; agents fail names they do not know, with a clear report.
    if task_name == RUN_INGEST || task_name == TEST_CONNECTION {
        let recipe =
            submission.args.get("recipe").ok_or_else(|| invalid("args", format!("{task_name} needs a recipe")))?;
        let parsed: serde_json::Value =
            serde_json::from_str(recipe).map_err(|e| invalid("args.recipe", format!("not JSON: {e}")))?;
        if !parsed.is_object() {
            return Err(invalid("args.recipe", "must be a JSON object"));
        }
    }
    let pool = if submission.pool.is_empty() { DEFAULT_POOL } else { &submission.pool };
    let id = if submission.execution_request_id.is_empty() {
        TaskId::from_uuid(uuid::Uuid::new_v4())
    } else {
        TaskId::parse_id_or_urn(&submission.execution_request_id).map_err(|e| invalid("execution_request_id", e))?
    };
    Ok(NewTask {
        id,
        task_name,
        pool: PoolId::parse(pool).map_err(|e: ids::Error| invalid("pool", e))?,
        args: submission.args,
        source_type: if submission.source_type.is_empty() {
            DEFAULT_SOURCE_TYPE.to_owned()
        } else {
            submission.source_type
        },
        requested_at_ms: unix_ms(),
        claim: None,
    })
}

/// The local queue: validated submissions go to the scheduler.
#[derive(Clone, Debug)]
pub struct LocalQueue {
    scheduler: Scheduler,
}

impl LocalQueue {
    pub fn new(scheduler: Scheduler) -> LocalQueue {
        LocalQueue { scheduler }
    }

    /// Enqueues a submission; returns the task and whether it was new.
    /// `audit`: an operator's submission, recorded with the task.
    pub async fn submit(&self, submission: Submission, audit: Option<Audit>) -> Result<(TaskRecord, bool), Error> {
        Ok(self.scheduler.submit_audited(validate(submission)?, audit).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(args: &[(&str, &str)]) -> Submission {
        Submission { args: args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..Submission::default() }
    }

    #[test]
    fn fills_defaults() {
        let task = validate(submission(&[("recipe", "{\"source\":{}}")])).unwrap();
        assert_eq!(task.task_name, "RUN_INGEST");
        assert_eq!(task.pool.as_str(), "default");
        assert_eq!(task.source_type, "MANUAL_INGESTION_SOURCE");
        assert_eq!(task.id.as_str().len(), 36, "a UUID is generated");
    }

    #[test]
    fn refuses_bad_input_with_the_field_named() {
        let cases = [
            (submission(&[]), "invalid args: RUN_INGEST needs a recipe"),
            (
                submission(&[("recipe", "source: x")]),
                "invalid args.recipe: not JSON: expected value at line 1 column 1",
            ),
            (submission(&[("recipe", "[1]")]), "invalid args.recipe: must be a JSON object"),
            (
                Submission { pool: "a b".into(), ..submission(&[("recipe", "{}")]) },
                "invalid pool: pool \"a b\" has a character outside [A-Za-z0-9._-]",
            ),
            (
                Submission { task_name: "run ingest".into(), ..submission(&[("recipe", "{}")]) },
                "invalid task: \"run ingest\" is not a task name like RUN_INGEST",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(validate(input).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn accepts_an_execution_request_urn_as_the_id() {
        let task = validate(Submission {
            execution_request_id: "urn:li:dataHubExecutionRequest:abc".into(),
            ..submission(&[("recipe", "{}")])
        })
        .unwrap();
        assert_eq!(task.id.as_str(), "abc");
    }
}
