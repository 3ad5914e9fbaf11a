//! `outpost-agent`: parse the command line, set up logs, turn SIGTERM/SIGINT into a drain, run the agent.

use clap::Parser;
use outpost_agent::config::Config;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    outpost_common::telemetry::init(config.log_format);
    outpost_common::tls::install_crypto_provider();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(drain_on_signal(shutdown.clone()));
        outpost_agent::run(config, shutdown).await
    })
}

/// SIGTERM or SIGINT starts the drain.
async fn drain_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    token.cancel();
}
