//! `outpostctl`: the admin API from a terminal. Tables by default, `--json` for scripts. Exit codes: 0 ok,
//! 1 the call failed, 2 usage error. A client only: it must never reach into the controller's internals.

mod commands;
mod docs;
mod doctor;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use outpost_common::pb::{self, admin_service_client::AdminServiceClient};
use outpost_common::tls::TlsFiles;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(name = "outpostctl", version, about = "Inspect and steer an Outpost controller")]
struct Cli {
    /// The controller's gRPC address.
    #[arg(long, env = "OUTPOST_CONTROLLER", default_value = "https://localhost:7443")]
    controller: String,
    /// The name the controller's certificate must carry (default: the host of --controller).
    #[arg(long, env = "OUTPOST_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    #[command(flatten)]
    tls: Identity,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Who outpostctl is: an admin certificate, or (none given) the local admin identity of a controller that made its
/// own trust, read from its --trust-dir (so `outpostctl` works as it is inside the controller's container).
#[derive(Debug, clap::Args)]
struct Identity {
    /// An admin certificate (PEM), SAN URI spiffe://<trust-domain>/admin/<name>.
    #[arg(long, env = "OUTPOST_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "OUTPOST_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA that signed the controller's certificate (PEM).
    #[arg(long, env = "OUTPOST_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// With no --tls-* files: the trust directory of a controller that made its own trust (admin-local.pem,
    /// admin-local.key, ca.pem); the controller's container sets it.
    #[arg(long, env = "OUTPOST_TRUST_DIR")]
    trust_dir: Option<PathBuf>,
}

impl Identity {
    fn files(&self) -> anyhow::Result<TlsFiles> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca, &self.trust_dir) {
            (Some(cert), Some(key), Some(ca), _) => {
                Ok(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() })
            }
            (None, None, None, Some(dir)) => Ok(TlsFiles {
                cert: dir.join("admin-local.pem"),
                key: dir.join("admin-local.key"),
                ca: dir.join("ca.pem"),
            }),
            _ => anyhow::bail!(
                "give --tls-cert, --tls-key and --tls-ca (an admin certificate), or --trust-dir (OUTPOST_TRUST_DIR) of \
                 a controller that made its own trust"
            ),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a shell completion script (bash, zsh or fish): e.g. `outpostctl completion bash >
    /// /etc/bash_completion.d/outpostctl`. Needs no controller.
    Completion { shell: clap_complete::Shell },
    /// Write man pages (outpostctl.1 and one per command) into a directory. Needs no controller.
    Man {
        /// Where to write them (e.g. /usr/share/man/man1).
        #[arg(long)]
        out: PathBuf,
    },
    /// List workers (`workers revoke WORKER` revokes one).
    Workers {
        #[command(subcommand)]
        action: Option<WorkersAction>,
    },
    /// The pinned-version venvs each connected agent holds (size, last use); `venvs warm --pool P --version V
    /// --plugin PLUGIN` asks agents of a pool to build one in idle time.
    Venvs {
        #[command(subcommand)]
        action: Option<VenvsAction>,
    },
    /// Login tokens for the status page (--ui-listen): `ui-tokens create [--ttl 12h]`, `ui-tokens revoke ID`.
    UiTokens {
        #[command(subcommand)]
        action: UiTokensAction,
    },
    /// Join tokens for agents: `tokens create --pool P`, `tokens list`, `tokens revoke ID`.
    Tokens {
        #[command(subcommand)]
        action: TokensAction,
    },
    /// List tasks, newest first.
    Tasks {
        /// Only tasks in this state (QUEUED, RUNNING, SUCCEEDED, FAILED, ...).
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        /// Only tasks held (or last held) by this worker.
        #[arg(long)]
        worker: Option<String>,
        /// Tasks per page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue a listing (the token a previous page printed).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one task with its attempts and result.
    Task {
        id: String,
        /// Print the log tail as it grows until the task ends.
        #[arg(long)]
        follow: bool,
        /// How often --follow polls.
        #[arg(long, value_parser = outpost_common::duration::parse, default_value = "1s")]
        poll_interval: Duration,
    },
    /// Run a finished task again.
    Retry { id: String },
    /// Backlog, capacity and failures per pool.
    Stats,
    /// Check the running fleet: every pool with waiting work has agents, agents run this release, no agent
    /// certificate is about to expire. Exits 1 when a check fails.
    Doctor,
    /// Why a task is where it is (for a queued task: what keeps it from running).
    Explain { id: String },
    /// Cancel a task (a running one is stopped on its agent).
    Cancel {
        id: String,
        /// Why (recorded in the report).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stop giving work to a worker; what it runs finishes.
    Drain { worker: String },
    /// The audit trail: every change made through the admin API or the status page, and every refused one, newest
    /// first. Reads are not recorded.
    Audit {
        /// Only events of the last D (e.g. 24h, 7d).
        #[arg(long, value_parser = outpost_common::duration::parse)]
        since: Option<Duration>,
        /// Only this actor: an admin certificate's name, or ui-token/ID for a status page login.
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (an admin RPC's name, e.g. CancelTask, RevokeWorker).
        #[arg(long)]
        action: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Rotate the CA of a controller that made its own, without agents joining again: `ca rotate` (a new CA is
    /// trusted beside the current one), `ca activate` (it signs; automatic after --ca-overlap), `ca retire` (the
    /// old one is dropped once every agent holds a certificate from the new one), `ca status`.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// List the SQS messages that could not be used, or replay one (`quarantine replay ID`).
    Quarantine {
        #[command(subcommand)]
        action: Option<QuarantineAction>,
    },
    /// Submit a recipe (YAML or JSON file) as a task on the local queue.
    Submit {
        /// The pool (executor ID) that must run it.
        #[arg(long, default_value = "default")]
        pool: String,
        /// The recipe file (YAML or JSON); RUN_INGEST and TEST_CONNECTION need one, NOOP does not.
        #[arg(long)]
        recipe: Option<PathBuf>,
        /// RUN_INGEST or TEST_CONNECTION.
        #[arg(long, default_value = "RUN_INGEST")]
        task: String,
        /// The execution request id (a UUID is generated if absent).
        #[arg(long)]
        id: Option<String>,
        /// Extra args, KEY=VALUE (version, debug_mode, extra_env_vars, ...).
        #[arg(long = "arg")]
        args: Vec<String>,
        /// Wait until the task is finished and print it.
        #[arg(long)]
        wait: bool,
        /// How often --wait polls.
        #[arg(long, value_parser = outpost_common::duration::parse, default_value = "500ms")]
        poll_interval: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum VenvsAction {
    /// Ask agents of a pool to build a venv before work needing it arrives (placement then prefers them).
    Warm {
        #[arg(long)]
        pool: String,
        /// A pinned DataHub version, e.g. 1.7.0.17.
        #[arg(long)]
        version: String,
        /// The source plugin, e.g. mysql.
        #[arg(long)]
        plugin: String,
        /// How many agents to ask (0: every connected agent of the pool that does not hold it yet).
        #[arg(long, default_value_t = 0)]
        agents: u32,
    },
}

#[derive(Debug, Subcommand)]
enum WorkersAction {
    /// Revoke a worker: its stream closes, its work runs elsewhere, its certificates are refused until they expire.
    /// With --serial, one certificate only (the worker may join again with a token).
    Revoke {
        #[arg(required_unless_present = "serial")]
        worker: Option<String>,
        /// Revoke the certificate with this serial (hex, as `workers --json` shows certSerial) instead.
        #[arg(long, conflicts_with = "worker")]
        serial: Option<String>,
        /// Why (kept with the revocation).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum UiTokensAction {
    /// Make a login token for the status page; it is printed once, here.
    Create {
        /// How long it can be used to log in.
        #[arg(long, value_parser = outpost_common::duration::parse, default_value = "12h")]
        ttl: Duration,
        #[arg(long, default_value = "")]
        description: String,
        /// What its sessions may do: viewer (read), operator (also act on tasks and workers) or admin.
        #[arg(long, default_value = "viewer")]
        role: outpost_common::roles::Role,
    },
    /// Revoke a login token: its sessions end at their next request.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum TokensAction {
    /// Make a join token; its secret is printed once, here.
    Create {
        /// The pool the agents that join with it serve.
        #[arg(long)]
        pool: String,
        /// How long it can be used.
        #[arg(long, value_parser = outpost_common::duration::parse, default_value = "24h")]
        ttl: Duration,
        /// How many agents may join with it.
        #[arg(long, default_value_t = 1, conflicts_with = "reusable")]
        uses: u32,
        /// Any number of agents may join with it until it expires or is revoked.
        #[arg(long)]
        reusable: bool,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (never their secrets) and who joined with them.
    List,
    /// Revoke a join token (agents that joined with it keep their certificates).
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum CaAction {
    /// Prepare a new CA: every connected agent is sent it to trust beside the current one.
    Rotate {
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let the prepared CA sign from now on (the controller's certificate too); agents renew from it at once.
    Activate {
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Drop the previous CA (refused while a connected agent holds no certificate from the new one).
    Retire {
        #[arg(long, default_value = "")]
        reason: String,
        /// Retire anyway: agents still on the old CA must join again with a token.
        #[arg(long)]
        force: bool,
    },
    /// The phase, the CAs, and which CA each connected agent's certificate comes from.
    Status,
}

#[derive(Debug, Subcommand)]
enum QuarantineAction {
    /// Parse a quarantined message again and take its task in.
    Replay { id: i64 },
}

/// The whole `outpostctl` program.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // What the command line alone answers, before any connection.
    match &cli.command {
        Command::Completion { shell } => {
            // Rendered whole first: a reader that stops early (`| head`) is not an error.
            let mut script = Vec::new();
            docs::completion(*shell, &mut Cli::command(), &mut script);
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
                _ => ExitCode::SUCCESS,
            };
        }
        Command::Man { out } => {
            return match docs::man_pages(Cli::command(), out) {
                Ok(written) => {
                    println!("wrote {written} man pages to {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            };
        }
        _ => {}
    }
    outpost_common::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<AdminServiceClient<Channel>> {
    let tls = cli.tls.files()?.load()?;
    let server_name = match &cli.tls_server_name {
        Some(name) => name.clone(),
        None => outpost_common::tls::server_name_of(&cli.controller)
            .context("--controller must look like https://HOST:PORT")?,
    };
    let channel = Endpoint::from_shared(cli.controller.clone())?
        .tls_config(tls.client_config(&server_name))?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {}", cli.controller))?;
    Ok(AdminServiceClient::new(channel))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn parse_state(state: &str) -> anyhow::Result<pb::TaskState> {
    pb::TaskState::from_str_name(&format!("TASK_STATE_{}", state.to_ascii_uppercase()))
        .filter(|s| *s != pb::TaskState::Unspecified)
        .with_context(|| format!("unknown state {state:?}"))
}

/// Reads a recipe file (YAML or JSON) into the JSON text DataHub's `recipe` arg carries.
fn read_recipe(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_norway::from_str(&text).with_context(|| format!("{} is not a YAML or JSON recipe", path.display()))?;
    anyhow::ensure!(value.is_object(), "{} must hold a recipe object (source, sink, ...)", path.display());
    Ok(value.to_string())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect(&cli).await?;
    match &cli.command {
        Command::Completion { .. } | Command::Man { .. } => unreachable!("answered in main"),
        Command::Venvs { action: None } => {
            let workers = client.list_workers(pb::ListWorkersRequest {}).await.map_err(status_error)?.into_inner();
            output::venvs(&workers.workers, cli.json);
        }
        Command::Venvs { action: Some(VenvsAction::Warm { pool, version, plugin, agents }) } => {
            let request = pb::WarmVenvsRequest {
                pool: pool.clone(),
                version: version.clone(),
                plugin: plugin.clone(),
                agents: *agents,
            };
            let warmed = client.warm_venvs(request).await.map_err(status_error)?.into_inner();
            output::warmed(&warmed, cli.json);
        }
        Command::Workers { action: None } => {
            let workers = client.list_workers(pb::ListWorkersRequest {}).await.map_err(status_error)?.into_inner();
            output::workers(&workers.workers, cli.json);
        }
        Command::Workers { action: Some(WorkersAction::Revoke { worker, serial, reason }) } => {
            let request = pb::RevokeWorkerRequest {
                worker_id: worker.clone().unwrap_or_default(),
                reason: reason.clone(),
                serial: serial.clone().unwrap_or_default(),
            };
            client.revoke_worker(request).await.map_err(status_error)?;
            let what = match (worker, serial) {
                (_, Some(serial)) => format!("certificate {serial}"),
                (Some(worker), None) => worker.clone(),
                (None, None) => String::new(),
            };
            if cli.json {
                println!("{}", serde_json::json!({ "revoked": what }));
            } else {
                println!("revoked {what}: its stream is closed and it is refused from now on");
            }
        }
        Command::Tokens { action: TokensAction::Create { pool, ttl, uses, reusable, description } } => {
            let request = pb::CreateJoinTokenRequest {
                pool: pool.clone(),
                ttl_seconds: ttl.as_secs().max(1),
                uses: *uses,
                reusable: *reusable,
                description: description.clone(),
            };
            let created = client.create_join_token(request).await.map_err(status_error)?.into_inner();
            output::token_created(&created, cli.json);
        }
        Command::UiTokens { action: UiTokensAction::Create { ttl, description, role } } => {
            let request = pb::CreateUiTokenRequest {
                ttl_seconds: ttl.as_secs().max(1),
                description: description.clone(),
                role: role.to_string(),
            };
            let created = client.create_ui_token(request).await.map_err(status_error)?.into_inner();
            output::ui_token_created(&created, cli.json);
        }
        Command::UiTokens { action: UiTokensAction::Revoke { id } } => {
            client.revoke_ui_token(pb::RevokeUiTokenRequest { id: id.clone() }).await.map_err(status_error)?;
            output::token_revoked("status page login token", id, cli.json);
        }
        Command::Tokens { action: TokensAction::List } => {
            let tokens = client.list_join_tokens(pb::ListJoinTokensRequest {}).await.map_err(status_error)?;
            output::tokens(&tokens.into_inner().tokens, cli.json);
        }
        Command::Tokens { action: TokensAction::Revoke { id } } => {
            client.revoke_join_token(pb::RevokeJoinTokenRequest { id: id.clone() }).await.map_err(status_error)?;
            output::token_revoked("join token", id, cli.json);
        }
        Command::Tasks { state, pool, worker, limit, page_token } => {
            let state = state.as_deref().map(parse_state).transpose()?.unwrap_or(pb::TaskState::Unspecified);
            let request = pb::ListTasksRequest {
                state: state as i32,
                pool: pool.clone().unwrap_or_default(),
                limit: *limit,
                worker_id: worker.clone().unwrap_or_default(),
                page_token: page_token.clone().unwrap_or_default(),
            };
            let tasks = client.list_tasks(request).await.map_err(status_error)?.into_inner();
            output::tasks(&tasks.tasks, &tasks.next_page_token, cli.json);
        }
        Command::Task { id, follow: false, .. } => {
            let task = client.get_task(pb::GetTaskRequest { id: id.clone() }).await.map_err(status_error)?.into_inner();
            output::task(&task, cli.json);
        }
        Command::Task { id, follow: true, poll_interval } => {
            commands::follow(&mut client, id, *poll_interval, cli.json).await?
        }
        Command::Retry { id } => {
            let task =
                client.retry_task(pb::RetryTaskRequest { id: id.clone() }).await.map_err(status_error)?.into_inner();
            output::task(&task, cli.json);
        }
        Command::Doctor => commands::doctor(&mut client).await?,
        Command::Stats => {
            let stats = client.get_stats(pb::GetStatsRequest {}).await.map_err(status_error)?.into_inner();
            output::stats(&stats, cli.json);
        }
        Command::Explain { id } => {
            let request = pb::ExplainTaskRequest { id: id.clone() };
            let explanation = client.explain_task(request).await.map_err(status_error)?.into_inner();
            output::explanation(&explanation, cli.json);
        }
        Command::Cancel { id, reason } => {
            let request = pb::CancelTaskRequest { id: id.clone(), reason: reason.clone() };
            let task = client.cancel_task(request).await.map_err(status_error)?.into_inner();
            output::task(&task, cli.json);
        }
        Command::Drain { worker } => {
            client.drain_worker(pb::DrainWorkerRequest { worker_id: worker.clone() }).await.map_err(status_error)?;
            if cli.json {
                println!("{}", serde_json::json!({ "workerId": worker, "draining": true }));
            } else {
                println!("draining {worker}: it gets no new work; what it runs finishes");
            }
        }
        Command::Audit { since, actor, action, limit } => {
            let since_unix_ms = since.map_or(0, |d| {
                outpost_common::clock::unix_ms().saturating_sub(outpost_common::duration::signed_millis(d))
            });
            let request = pb::ListAuditEventsRequest {
                since_unix_ms,
                actor: actor.clone().unwrap_or_default(),
                action: action.clone().unwrap_or_default(),
                limit: *limit,
            };
            let events = client.list_audit_events(request).await.map_err(status_error)?.into_inner();
            output::audit(&events.events, cli.json);
        }
        Command::Ca { action } => {
            let status = match action {
                CaAction::Rotate { reason } => client.rotate_ca(pb::RotateCaRequest { reason: reason.clone() }).await,
                CaAction::Activate { reason } => {
                    client.activate_ca(pb::ActivateCaRequest { reason: reason.clone() }).await
                }
                CaAction::Retire { reason, force } => {
                    client.retire_ca(pb::RetireCaRequest { reason: reason.clone(), force: *force }).await
                }
                CaAction::Status => client.get_ca_status(pb::GetCaStatusRequest {}).await,
            };
            output::ca_status(&status.map_err(status_error)?.into_inner(), cli.json);
        }
        Command::Quarantine { action: None } => {
            let list =
                client.list_quarantined(pb::ListQuarantinedRequest { limit: 100 }).await.map_err(status_error)?;
            output::quarantined(&list.into_inner().messages, cli.json);
        }
        Command::Quarantine { action: Some(QuarantineAction::Replay { id }) } => {
            let request = pb::ReplayQuarantinedRequest { id: *id };
            let replayed = client.replay_quarantined(request).await.map_err(status_error)?.into_inner();
            if cli.json {
                println!("{}", serde_json::json!({ "id": id, "taskId": replayed.task_id }));
            } else {
                println!("replayed quarantined message {id} as task {}", replayed.task_id);
            }
        }
        Command::Submit { pool, recipe, task, id, args, wait, poll_interval } => {
            let submission = commands::Submission { pool, recipe: recipe.as_deref(), task, id: id.as_deref(), args };
            commands::submit(&mut client, submission, wait.then_some(*poll_interval), cli.json).await?
        }
    }
    Ok(())
}
