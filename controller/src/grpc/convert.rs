//! Conversions between `outpost.v1` wire types and the scheduler's domain types. Required fields are checked
//! here, once; a missing or malformed field names itself in the error.

use outpost_common::ids::{AttemptRef, PoolId, WorkerId};
use outpost_common::pb;
use tonic::Status;

use crate::scheduler::AttemptResult;
use crate::scheduler::{AgentCommand, AgentHello, HeldVenv};
use outpost_common::task::RunResult;
use outpost_common::venv::VenvKey;

fn invalid(what: &str, error: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{what}: {error}"))
}

pub fn attempt(attempt: Option<pb::AttemptRef>) -> Result<AttemptRef, Status> {
    let attempt = attempt.ok_or_else(|| Status::invalid_argument("attempt is missing"))?;
    AttemptRef::try_from(attempt).map_err(|e| invalid("attempt.task_id", e))
}

pub fn attempt_to_pb(attempt: &AttemptRef) -> pb::AttemptRef {
    pb::AttemptRef::from(attempt)
}

/// The most slots one agent may declare (its credit can never exceed them).
pub const MAX_SLOTS: u32 = 1024;
/// Bounds on what a Hello may carry (a hostile agent must not grow the controller's memory at will).
const MAX_LABELS: usize = 32;
const MAX_TEXT: usize = 256;
const MAX_POOLS: usize = 64;
/// The most venvs an agent may say it holds.
pub const MAX_VENVS: usize = 1024;

/// The venvs of a Hello or a VenvsHeld, bounded and with keys checked.
pub fn venvs(venvs: Vec<pb::Venv>) -> Result<Vec<HeldVenv>, Status> {
    if venvs.len() > MAX_VENVS {
        return Err(Status::invalid_argument(format!("venvs: at most {MAX_VENVS}")));
    }
    venvs
        .into_iter()
        .map(|v| {
            if v.requirement.len() > MAX_TEXT {
                return Err(Status::invalid_argument(format!("venvs.requirement: at most {MAX_TEXT} bytes")));
            }
            Ok(HeldVenv {
                key: VenvKey::parse(&v.key).map_err(|e| invalid("venvs.key", e))?,
                requirement: v.requirement,
                bytes: v.bytes,
                last_used_ms: v.last_used_unix_ms,
            })
        })
        .collect()
}

pub fn hello(hello: pb::Hello) -> Result<AgentHello, Status> {
    if hello.pools.is_empty() {
        return Err(Status::invalid_argument("hello.pools: an agent must serve at least one pool"));
    }
    if hello.pools.len() > MAX_POOLS {
        return Err(Status::invalid_argument(format!("hello.pools: at most {MAX_POOLS}")));
    }
    if hello.slots == 0 || hello.slots > MAX_SLOTS {
        return Err(Status::invalid_argument(format!("hello.slots: must be 1 to {MAX_SLOTS}, not {}", hello.slots)));
    }
    if hello.version.len() > MAX_TEXT {
        return Err(Status::invalid_argument(format!("hello.version: at most {MAX_TEXT} bytes")));
    }
    if hello.labels.len() > MAX_LABELS || hello.labels.iter().any(|(k, v)| k.len() > MAX_TEXT || v.len() > MAX_TEXT) {
        return Err(Status::invalid_argument(format!(
            "hello.labels: at most {MAX_LABELS} labels of at most {MAX_TEXT} bytes each"
        )));
    }
    if hello.held.len() > MAX_SLOTS as usize {
        return Err(Status::invalid_argument(format!("hello.held: at most {MAX_SLOTS} attempts")));
    }
    Ok(AgentHello {
        worker_id: WorkerId::parse(&hello.worker_id).map_err(|e| invalid("hello.worker_id", e))?,
        pools: hello
            .pools
            .iter()
            .map(|p| PoolId::parse(p))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid("hello.pools", e))?,
        slots: hello.slots,
        version: hello.version,
        labels: hello.labels.into_iter().collect(),
        held: hello.held.into_iter().map(|a| attempt(Some(a))).collect::<Result<_, _>>()?,
        venvs: venvs(hello.venvs)?,
    })
}

pub fn outcome(result: &pb::Result) -> Result<AttemptResult, Status> {
    let status = outpost_common::wire::result_status(result.status)
        .ok_or_else(|| Status::invalid_argument(format!("result.status: {} is not a result status", result.status)))?;
    Ok(AttemptResult {
        status,
        record: RunResult {
            exit_code: result.exit_code,
            report: result.report.clone(),
            structured_report: result.structured_report.clone(),
            start_time_ms: result.start_time_unix_ms,
            duration_ms: result.duration_ms,
        },
    })
}

pub fn command(command: AgentCommand) -> pb::ControllerMessage {
    use pb::controller_message::Msg;
    let msg = match command {
        AgentCommand::Assign(a) => Msg::Assign(pb::Assign {
            attempt: Some(attempt_to_pb(&a.attempt)),
            urn: a.attempt.task_id.urn(),
            task: a.task_name,
            args: a.args.into_iter().collect(),
            pool: a.pool.to_string(),
            attempt_number: a.attempt_number,
            deadline_unix_ms: a.deadline_unix_ms.unwrap_or_default(),
        }),
        AgentCommand::Cancel { attempt, reason } => {
            Msg::Cancel(pb::Cancel { attempt: Some(attempt_to_pb(&attempt)), reason })
        }
        AgentCommand::Drain { reason } => Msg::Drain(pb::Drain { reason }),
        AgentCommand::Warm(spec) => {
            Msg::WarmVenv(pb::WarmVenv { version: spec.version.unwrap_or_default(), plugin: spec.plugin })
        }
    };
    pb::ControllerMessage { msg: Some(msg) }
}

pub fn trust_bundle(bundle: crate::enroll::TrustBundle) -> pb::ControllerMessage {
    let msg = pb::TrustBundle { ca_pem: bundle.ca_pem, signer_pem: bundle.signer_pem, signature: bundle.signature };
    pb::ControllerMessage { msg: Some(pb::controller_message::Msg::TrustBundle(msg)) }
}
