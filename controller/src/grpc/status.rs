//! The one place scheduler errors become gRPC status codes.

use tonic::{Code, Status};

use crate::scheduler::Error;

pub fn from_scheduler(error: Error) -> Status {
    let code = match &error {
        Error::Refused(_) => Code::FailedPrecondition,
        Error::NotFound(_) | Error::NoSuchWorker(_) => Code::NotFound,
        Error::SessionGone => Code::Aborted,
        Error::ShuttingDown | Error::NotDurable(_) => Code::Unavailable,
        Error::Store(_) => Code::Internal,
    };
    Status::new(code, error.to_string())
}
