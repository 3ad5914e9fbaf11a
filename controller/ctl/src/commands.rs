//! The commands of outpostctl that do more than one call and print its answer: following a run's log, submitting
//! (and waiting), the fleet's doctor. Each is one function; `run` only dispatches. A client only.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use outpost_common::pb::{self, admin_service_client::AdminServiceClient};
use tonic::transport::Channel;

use crate::{doctor, output, read_recipe, status_error};

type Client = AdminServiceClient<Channel>;

/// Prints each new line of the running attempt's log tail as it grows, then the finished task.
pub async fn follow(client: &mut Client, id: &str, poll_interval: Duration, json: bool) -> anyhow::Result<()> {
    let mut printed: Vec<String> = Vec::new();
    loop {
        let task = client.get_task(pb::GetTaskRequest { id: id.to_owned() }).await.map_err(status_error)?.into_inner();
        let lines: Vec<String> = task.log_tail.lines().map(String::from).collect();
        // The tail is a window: print only what follows the lines already printed.
        let overlap = (0..=printed.len().min(lines.len()))
            .rev()
            .find(|n| printed[printed.len() - n..] == lines[..*n])
            .unwrap_or(0);
        for line in &lines[overlap..] {
            println!("{line}");
        }
        printed = lines;
        if output::is_terminal(task.state) {
            output::task(&task, json);
            return Ok(());
        }
        tokio::time::sleep(poll_interval).await;
    }
}

/// The running fleet as checks; an error when one fails.
pub async fn doctor(client: &mut Client) -> anyhow::Result<()> {
    let stats = client.get_stats(pb::GetStatsRequest {}).await.map_err(status_error)?.into_inner();
    let workers = client.list_workers(pb::ListWorkersRequest {}).await.map_err(status_error)?.into_inner();
    let now_ms = outpost_common::clock::unix_ms();
    let checks = doctor::checks(&stats, &workers.workers, now_ms, env!("CARGO_PKG_VERSION"));
    print!("{}", outpost_common::doctor::report(&checks));
    if checks.iter().any(|c| c.verdict == outpost_common::doctor::Verdict::Fail) {
        anyhow::bail!("a check failed");
    }
    Ok(())
}

/// What `outpostctl submit` was given.
pub struct Submission<'a> {
    pub pool: &'a str,
    pub recipe: Option<&'a Path>,
    pub task: &'a str,
    pub id: Option<&'a str>,
    pub args: &'a [String],
}

/// Submits a task; with `wait`, polls at that interval until it is finished and prints it.
pub async fn submit(
    client: &mut Client,
    submission: Submission<'_>,
    wait: Option<Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let mut args = std::collections::HashMap::new();
    for arg in submission.args {
        let (key, value) = arg.split_once('=').with_context(|| format!("--arg {arg:?} is not KEY=VALUE"))?;
        args.insert(key.to_owned(), value.to_owned());
    }
    if let Some(recipe) = submission.recipe {
        args.insert("recipe".to_owned(), read_recipe(recipe)?);
    }
    let request = pb::SubmitTaskRequest {
        task: submission.task.to_owned(),
        args,
        pool: submission.pool.to_owned(),
        execution_request_id: submission.id.unwrap_or_default().to_owned(),
        source_type: String::new(),
    };
    let response = client.submit_task(request).await.map_err(status_error)?.into_inner();
    let submitted = response.task.context("the controller returned no task")?;
    let Some(poll_interval) = wait else {
        output::submitted(&submitted, response.created, json);
        return Ok(());
    };
    if !json {
        output::submitted(&submitted, response.created, false);
    }
    loop {
        let task =
            client.get_task(pb::GetTaskRequest { id: submitted.id.clone() }).await.map_err(status_error)?.into_inner();
        if output::is_terminal(task.state) {
            output::task(&task, json);
            return Ok(());
        }
        tokio::time::sleep(poll_interval).await;
    }
}
