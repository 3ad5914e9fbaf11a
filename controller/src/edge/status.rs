//! The one place scheduler errors become gRPC status codes.

use tonic::{Code, Status};

use crate::scheduler::Error;

pub fn from_scheduler(error: Error) -> Status {
    let message = error.to_string();
    from_scheduler_ref(&error, message)
}

/// Store errors (reads the edges make themselves) as gRPC status codes, by the same table.
pub fn from_store(error: crate::store::Error) -> Status {
    from_scheduler(error.into())
}

/// Enrollment errors as gRPC status codes.
pub fn from_enrollment(error: crate::enroll::Error) -> Status {
    use crate::enroll::Error as E;
    let code = match &error {
        E::NoAuthority | E::Precondition(_) => Code::FailedPrecondition,
        E::Authority(_) | E::Store(_) => Code::Internal,
        E::BadRequest(_) => Code::InvalidArgument,
        E::Refused(_) => Code::PermissionDenied,
        E::NoSuchToken(_) => Code::NotFound,
        E::WorkerConnected(_) => Code::AlreadyExists,
        E::Scheduler(e) => return from_scheduler_ref(e, error.to_string()),
    };
    Status::new(code, error.to_string())
}

pub fn from_ui_login(error: crate::ui::auth::Error) -> Status {
    use crate::ui::auth::Error as E;
    let code = match &error {
        E::Store(_) => Code::Internal,
        E::NotFound(_) => Code::NotFound,
        E::BadTtl => Code::InvalidArgument,
    };
    Status::new(code, error.to_string())
}

fn from_scheduler_ref(error: &Error, message: String) -> Status {
    let code = match error {
        Error::Refused(_) => Code::FailedPrecondition,
        Error::NotFound(_) | Error::NoSuchWorker(_) => Code::NotFound,
        Error::SessionGone => Code::Aborted,
        Error::ShuttingDown | Error::NotDurable(_) => Code::Unavailable,
        Error::Store(_) => Code::Internal,
    };
    Status::new(code, message)
}
