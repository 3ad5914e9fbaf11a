//! The `outpost-controller` program: parse the command line, set up logs and signals, hand over to [`crate::run`].
//! Kept in the library so the test harness runs exactly this code.

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{CertsCommand, Cli, Command};
use crate::{certs, run};

/// The whole program as a process: its exit code. A failure is one line on stderr (and in the log): what
/// stopped, and why.
pub fn run_main() -> i32 {
    match main() {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "outpost-controller stopped");
            eprintln!("outpost-controller: {e:#}");
            1
        }
    }
}

/// The whole `outpost-controller` program.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    outpost_common::telemetry::init(cli.log_format);
    match cli.command {
        Command::Certs(command) => {
            let written = match command {
                CertsCommand::Init { out, san } => certs::init(&out, &san)?,
                CertsCommand::Agent { out, worker_id, trust_domain } => certs::agent(&out, &worker_id, &trust_domain)?,
                CertsCommand::Admin { out, name, role, trust_domain } => {
                    certs::admin(&out, &name, Some(role), &trust_domain)?
                }
            };
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Doctor(config) => {
            config.validate()?;
            outpost_common::tls::install_crypto_provider();
            let runtime = tokio::runtime::Runtime::new()?;
            let checks = runtime.block_on(crate::doctor::run(&config));
            print!("{}", outpost_common::doctor::report(&checks));
            match checks.iter().any(|c| c.verdict == outpost_common::doctor::Verdict::Fail) {
                true => anyhow::bail!("a check failed"),
                false => Ok(()),
            }
        }
        Command::Run(config) => {
            let config = *config;
            outpost_common::tls::install_crypto_provider();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let token = CancellationToken::new();
                tokio::spawn(outpost_common::signal::cancel_on_terminate(token.clone()));
                run(config, token).await
            })
        }
    }
}
