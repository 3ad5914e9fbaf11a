//! The controller's metric labels: each label's values are an enum declared with the words it is exported as
//! (`label_enum!`), and each family's label set a `#[derive(EncodeLabelSet)]` struct. Never records anything.

use outpost_common::{label_enum, label_value};
use prometheus_client::encoding::EncodeLabelSet;

use crate::lifecycle::{Loss, RetryReason};

label_value!(Loss, RetryReason);

label_enum! {
    /// The outcome of one GMS write.
    pub enum GmsOutcome {
        Delivered => "delivered",
        /// 422 "immutable state": GMS already has a final status (settled, not retried).
        AlreadyTerminal => "already_terminal",
        /// GMS refused the payload for good (400, 413, another 422): recorded on the task as a delivery failure.
        Refused => "refused",
        Unauthorized => "unauthorized",
        /// Retried later (outage, timeout, 404).
        Failed => "failed",
        /// A conditional write refused because another controller holds the request now.
        ClaimLost => "claim_lost",
    }
}

label_enum! {
    /// What a write to GMS reports.
    pub enum GmsKind {
        Running => "running",
        Progress => "progress",
        Terminal => "terminal",
    }
}

label_enum! {
    /// What became of a message for work Outpost does not run (DataHub Cloud's monitors).
    pub enum ForeignOutcome {
        /// Left for DataHub's own executor sharing the queue.
        GivenBack => "given_back",
        Quarantined => "quarantined",
    }
}

label_enum! {
    /// The Celery tasks of DataHub Cloud's own executor that the SQS intake recognises (and does not run).
    pub enum ForeignTask {
        AssertionRequest => "assertion_request",
        MonitorTrainingRequest => "monitor_training_request",
    }
}

impl ForeignTask {
    /// The task of a Celery task's short name, if it is one of these.
    pub fn from_label(name: &str) -> Option<ForeignTask> {
        ForeignTask::ALL.iter().copied().find(|task| task.label() == name)
    }
}

impl std::fmt::Display for ForeignTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

label_enum! {
    /// What the SQS intake did with a message it received.
    pub enum SqsMessageOutcome {
        /// A new task, taken in; the message is held until its result is in GMS.
        Taken => "taken",
        /// A re-delivery of a task already known and not yet reported: its new receipt handle is held instead.
        Adopted => "adopted",
        /// Done with at once (a re-delivery of a reported task, a KILL signal).
        Deleted => "deleted",
        /// Not for this controller (another pool, another controller's claim): visible again later.
        GivenBack => "given_back",
        /// Unusable: quarantined (and copied to the dead-letter queue if one is set).
        Quarantined => "quarantined",
        /// Could not be handled now: it comes back after its visibility timeout.
        Left => "left",
    }
}

label_enum! {
    /// SQS API calls.
    pub enum SqsCall {
        Receive => "receive",
        ChangeVisibility => "change_visibility",
        Delete => "delete",
        Send => "send",
    }
}

label_enum! {
    /// A way requests come in for a pool (a "channel" in metrics and the API), whose calls can fail quietly.
    pub enum Intake {
        /// Receiving from the pool's SQS queue.
        Sqs => "sqs",
        /// Getting the pool's queue and credentials from DataHub Cloud's GMS.
        DataHubCloud => "cloud_credentials",
        /// Searching open-source GMS for the pool's execution requests.
        GmsChannel => "gms",
    }
}

label_enum! {
    /// A TLS listener whose files are reloaded when they change.
    pub enum Listener {
        Grpc => "grpc",
        Join => "join",
    }
}

label_enum! {
    /// What a look at changed TLS files did.
    pub enum Reload {
        Loaded => "loaded",
        /// The files did not load: the previous certificate stays in use.
        Failed => "failed",
    }
}

label_enum! {
    /// Whether an agent granted a task needing a pinned venv already held it.
    pub enum Warmth {
        Warm => "warm",
        Cold => "cold",
    }
}

/// `outpost_tasks`: a task state's wire name, and the pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatePool {
    pub state: &'static str,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VenvLabel {
    pub venv: Warmth,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LossLabel {
    pub reason: Loss,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabel {
    pub reason: RetryReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub call: SqsCall,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOutcome {
    pub pool: String,
    pub outcome: SqsMessageOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub listener: Listener,
    pub outcome: Reload,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GmsWriteLabels {
    pub kind: GmsKind,
    pub outcome: GmsOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForeignLabels {
    pub task: ForeignTask,
    pub outcome: ForeignOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolChannel {
    pub pool: String,
    pub channel: Intake,
}
