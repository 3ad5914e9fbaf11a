//! The controller's shutdown phases, in the order `run` stops them, over the shared supervisor
//! (`outpost_common::supervisor`): a critical subsystem that ends early makes `run` turn not-ready and shut down
//! in order with a non-zero exit (so ECS or Kubernetes restart it). Owns no business logic.

pub use outpost_common::supervisor::Failed;

/// When a service stops at shutdown; `run` stops the phases in this order, each awaited before the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// What takes work in or talks to the outside: gRPC (agents, admin), joins, the status page, SQS, GMS
    /// channels and signals, and their housekeeping.
    Intake,
    /// The lease engine (it commits its last turn).
    Scheduler,
    /// The GMS reporter (its last delivery pass).
    Reporter,
    /// `/metrics` and the health probes.
    Health,
    /// What ends only once the store is closed (the writer's watch).
    Store,
}

/// The controller's supervisor.
pub type Supervisor = outpost_common::supervisor::Supervisor<Phase>;
