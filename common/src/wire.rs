//! Conversions between `outpost.v1` messages and the shared domain types, used by both edges (the controller's
//! gRPC service and the agent's session), so the two sides cannot drift apart.

use crate::ids::{self, AttemptRef, Epoch, TaskId};
use crate::pb;
use crate::task::ResultStatus;
use crate::venv::HeldVenv;

impl From<&HeldVenv> for pb::Venv {
    fn from(venv: &HeldVenv) -> pb::Venv {
        pb::Venv {
            key: venv.key.to_string(),
            requirement: venv.requirement.clone(),
            bytes: venv.bytes,
            last_used_unix_ms: venv.last_used_ms,
        }
    }
}

impl From<&AttemptRef> for pb::AttemptRef {
    fn from(attempt: &AttemptRef) -> pb::AttemptRef {
        pb::AttemptRef { task_id: attempt.task_id.to_string(), epoch: attempt.epoch.0 }
    }
}

impl TryFrom<pb::AttemptRef> for AttemptRef {
    type Error = ids::Error;
    fn try_from(attempt: pb::AttemptRef) -> Result<AttemptRef, ids::Error> {
        Ok(AttemptRef { task_id: TaskId::parse(&attempt.task_id)?, epoch: Epoch(attempt.epoch) })
    }
}

impl From<ResultStatus> for pb::ResultStatus {
    fn from(status: ResultStatus) -> pb::ResultStatus {
        match status {
            ResultStatus::Succeeded => pb::ResultStatus::Succeeded,
            ResultStatus::Failed => pb::ResultStatus::Failed,
            ResultStatus::Cancelled => pb::ResultStatus::Cancelled,
            ResultStatus::TimedOut => pb::ResultStatus::TimedOut,
            ResultStatus::Interrupted => pb::ResultStatus::Interrupted,
        }
    }
}

/// A wire result status: `None` for UNSPECIFIED or a number no variant has.
pub fn result_status(value: i32) -> Option<ResultStatus> {
    match pb::ResultStatus::try_from(value).ok()? {
        pb::ResultStatus::Succeeded => Some(ResultStatus::Succeeded),
        pb::ResultStatus::Failed => Some(ResultStatus::Failed),
        pb::ResultStatus::Cancelled => Some(ResultStatus::Cancelled),
        pb::ResultStatus::TimedOut => Some(ResultStatus::TimedOut),
        pb::ResultStatus::Interrupted => Some(ResultStatus::Interrupted),
        pb::ResultStatus::Unspecified => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let attempt = AttemptRef { task_id: TaskId::parse("abc").unwrap(), epoch: Epoch(7) };
        assert_eq!(AttemptRef::try_from(pb::AttemptRef::from(&attempt)), Ok(attempt));
        assert!(AttemptRef::try_from(pb::AttemptRef { task_id: "a/b".into(), epoch: 1 }).is_err());
        for status in ResultStatus::ALL {
            assert_eq!(result_status(pb::ResultStatus::from(*status) as i32), Some(*status));
        }
        assert_eq!(result_status(0), None);
        assert_eq!(result_status(99), None);
    }
}
