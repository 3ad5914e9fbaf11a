//! What the two gRPC services (the agents' in `grpc`, the operators' in `admin`) share at the edge: the caller's
//! identity from its verified certificate, and the one mapping of core errors to gRPC status codes. Knows tonic's
//! types and the core's errors; never decides anything and never imports either service (both import it).

pub mod identity;
pub mod status;
