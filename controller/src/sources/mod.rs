//! Task intake. Today: the local queue (admin `SubmitTask`). Sources turn outside requests into validated
//! [`crate::store::NewTask`]s and hand them to the scheduler; they must never decide placement.

pub mod kill_signals;
pub mod local;
pub mod sqs;
