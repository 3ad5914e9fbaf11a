//! The Outpost controller: takes execution requests in, leases them to agents over mTLS gRPC streams, records
//! attempts and results in SQLite. `run` wires the subsystems under one cancellation token.

pub mod store;
