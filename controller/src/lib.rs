//! The Outpost controller: takes execution requests in, leases them to agents over mTLS gRPC streams, records
//! attempts and results in SQLite. [`run`] (in `run.rs`) starts the subsystems under one supervisor and stops
//! them in its phases, in order.

pub(crate) mod admin;
pub mod certs;
pub(crate) mod config;
pub(crate) mod doctor;
pub(crate) mod edge;
pub(crate) mod enroll;
pub mod entry;
pub mod gms;
pub(crate) mod grpc;
pub(crate) mod lifecycle;
pub(crate) mod logs;
pub(crate) mod metrics;
#[cfg(test)]
mod parsers_properties;
pub(crate) mod reporter;
mod run;
pub(crate) mod scheduler;
pub mod sources;
pub(crate) mod store;
pub(crate) mod supervisor;
pub(crate) mod trust;
pub(crate) mod ui;

pub use run::run;

/// A crash point of the test build: with the `failpoints` feature and `FAILPOINTS=<name>=return` (or
/// `1*return`: the first time only), the controller aborts right there, as a power cut would stop it. Compiles to
/// nothing without the feature; inert unless a test configures it.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| {
            eprintln!("outpost-controller: crash point {} reached: aborting", $name);
            std::process::abort()
        })
    };
}
