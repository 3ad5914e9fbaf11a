//! Task intake: the local queue (admin `SubmitTask`), SQS queues, and GMS itself (open-source DataHub), plus the
//! claims at GMS that keep one run per execution request across controllers and KILL signals. Sources turn
//! outside requests into validated [`crate::store::NewTask`]s and hand them to the scheduler; they must never
//! decide placement.

pub mod claims;
pub mod gms_channel;
pub mod kill_signals;
pub mod local;
pub mod sqs;

use std::sync::Arc;

/// What every intake loop works with.
#[derive(Clone)]
pub struct Intake {
    pub store: crate::store::Store,
    pub scheduler: crate::scheduler::Scheduler,
    pub gms: Option<crate::gms::Client>,
    /// Claims at GMS (with reporting on).
    pub claims: Option<Arc<claims::Claims>>,
    pub metrics: crate::metrics::Metrics,
}
