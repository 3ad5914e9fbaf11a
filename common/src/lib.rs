//! Shared by every Outpost binary: the `outpost.v1` wire types, typed IDs and states, identity parsing and TLS
//! helpers. Must never do network I/O, spawn tasks or touch SQL.

pub mod pb {
    //! Generated `outpost.v1` protobuf types and services. Only the gRPC edges use these.
    tonic::include_proto!("outpost.v1");

    /// Encoded descriptor set of `outpost.v1`, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("outpost_descriptor");
}

pub mod clock;
pub mod duration;
pub mod identity;
pub mod ids;
pub mod signal;
pub mod task;
pub mod telemetry;
pub mod tls;
