//! The `outpost-agent` program: parse the command line, set up logs, turn SIGTERM/SIGINT into a drain, run
//! [`crate::run`]. Kept in the library so the test harness runs exactly this code.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The whole `outpost-agent` program.
pub fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    outpost_common::telemetry::init(config.log_format);
    outpost_common::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(outpost_common::signal::cancel_on_terminate(shutdown.clone()));
        crate::run(config, shutdown).await
    })
}
