//! Shared by every Outpost binary: the `outpost.v1` wire types, typed IDs and states, identity parsing and TLS
//! helpers, operators' roles, the supervisor both binaries run their services under. Must never spawn long-lived
//! tasks of its own (`supervisor.rs` spawns only what a binary hands it) or touch SQL; its only network I/O is
//! serving HTTP (`http.rs`: metrics, health, the status page) on a listener the binaries hand in.

pub mod pb {
    //! Generated `outpost.v1` protobuf types and services. Only the gRPC edges use these.
    tonic::include_proto!("outpost.v1");

    /// Encoded descriptor set of `outpost.v1`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("outpost_descriptor");
}

pub mod accept;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backoff;
pub mod bundle;
pub mod clock;
pub mod doctor;
pub mod duration;
pub mod errors;
pub mod host;
pub mod http;
pub mod identity;
pub mod ids;
pub mod join;
pub mod locks;
pub mod metrics;
pub mod roles;
pub mod secret;
pub mod signal;
pub mod supervisor;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod venv;
pub mod wire;
