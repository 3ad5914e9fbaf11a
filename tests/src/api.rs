//! Admin API helpers for tests: submit, poll until a state, wait for workers; flags; recipe input files.

use std::path::Path;
use std::time::Duration;

use outpost_common::pb::{self, admin_service_client::AdminServiceClient};
use tonic::transport::Channel;

use super::{RUN_TIMEOUT, repo_root, wait_until};

/// Submits a RUN_INGEST task with `recipe` to pool `default` under execution request id `id`.
pub async fn submit(admin: &mut AdminServiceClient<Channel>, id: &str, recipe: String) -> pb::Task {
    submit_to(admin, id, recipe, "default").await
}

/// Submits a RUN_INGEST task with `recipe` to `pool` under execution request id `id`.
pub async fn submit_to(admin: &mut AdminServiceClient<Channel>, id: &str, recipe: String, pool: &str) -> pb::Task {
    let request = pb::SubmitTaskRequest {
        task: "RUN_INGEST".into(),
        args: std::collections::HashMap::from([("recipe".to_owned(), recipe)]),
        pool: pool.into(),
        execution_request_id: id.into(),
        source_type: String::new(),
    };
    let response = admin.submit_task(request).await.expect("submit").into_inner();
    assert!(response.created, "{id} is new");
    response.task.expect("task in response")
}

pub async fn get(admin: &mut AdminServiceClient<Channel>, id: &str) -> pb::Task {
    admin.get_task(pb::GetTaskRequest { id: id.into() }).await.expect("get task").into_inner()
}

pub fn is_terminal(state: i32) -> bool {
    use pb::TaskState::*;
    matches!(pb::TaskState::try_from(state), Ok(Succeeded | Failed | Cancelled | TimedOut | Aborted))
}

pub async fn wait_terminal(admin: &AdminServiceClient<Channel>, id: &str) -> pb::Task {
    wait_until(&format!("task {id} to finish"), RUN_TIMEOUT, || {
        let mut admin = admin.clone();
        let id = id.to_owned();
        async move {
            let task = get(&mut admin, &id).await;
            is_terminal(task.state).then_some(task)
        }
    })
    .await
}

pub async fn wait_workers(admin: &AdminServiceClient<Channel>, ready: usize) {
    wait_until(&format!("{ready} connected workers"), Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let workers = admin.list_workers(pb::ListWorkersRequest {}).await.ok()?.into_inner().workers;
            let connected = workers.iter().filter(|w| w.state == pb::WorkerState::Ready as i32).count();
            (connected == ready).then_some(())
        }
    })
    .await
}

/// Polls GetTask until `accept` holds for the task (up to a run's timeout).
pub async fn wait_task(
    admin: &AdminServiceClient<Channel>,
    id: &str,
    what: &str,
    accept: impl Fn(&pb::Task) -> bool,
) -> pb::Task {
    wait_until(&format!("task {id}: {what}"), RUN_TIMEOUT, || {
        let mut admin = admin.clone();
        let id = id.to_owned();
        let task = async move { admin.get_task(pb::GetTaskRequest { id }).await.ok().map(|r| r.into_inner()) };
        let accept = &accept;
        async move { task.await.filter(|task| accept(task)) }
    })
    .await
}

/// Command-line flags: `base` with `overrides` replacing same-named flags or added after them.
pub fn merge_flags(base: &[(&str, &str)], overrides: &[(&str, &str)]) -> Vec<String> {
    let mut flags: Vec<(&str, &str)> = base.to_vec();
    for (flag, value) in overrides {
        match flags.iter_mut().find(|(f, _)| f == flag) {
            Some(entry) => entry.1 = value,
            None => flags.push((flag, value)),
        }
    }
    flags.into_iter().flat_map(|(f, v)| [f.to_owned(), v.to_owned()]).collect()
}

/// Waits until the task runs (acknowledged) and returns the worker running it.
pub async fn wait_running(admin: &AdminServiceClient<Channel>, id: &str) -> String {
    wait_task(admin, id, "running", |t| t.state == pb::TaskState::Running as i32).await.worker_id
}

/// Submits a task of any kind with the given args to pool `default`.
pub async fn submit_args(
    admin: &mut AdminServiceClient<Channel>,
    id: &str,
    task: &str,
    args: &[(&str, String)],
) -> pb::Task {
    let request = pb::SubmitTaskRequest {
        task: task.into(),
        args: args.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        pool: "default".into(),
        execution_request_id: id.into(),
        source_type: String::new(),
    };
    let response = admin.submit_task(request).await.expect("submit").into_inner();
    response.task.expect("task in response")
}

/// Writes the first `records` MCPs of the example file to `path` (for recipes whose input differs per run).
pub fn write_mcps(path: &Path, records: usize) {
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("examples/sample_mcps.json")).unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string(&all[..records]).unwrap()).unwrap();
}

/// Whether `needle` occurs anywhere in the bytes of `path` (false when the file does not exist).
pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path).map(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes())).unwrap_or(false)
}

/// Waits until `pool`'s `channel` health, as `GetStats` shows it, passes `ready`; returns it.
pub async fn wait_channel(
    admin: &AdminServiceClient<Channel>,
    pool: &str,
    channel: &str,
    what: &str,
    ready: impl Fn(&pb::ChannelHealth) -> bool,
) -> pb::ChannelHealth {
    wait_until(&format!("{pool}'s {channel} channel: {what}"), Duration::from_secs(60), || async {
        let stats = admin.clone().get_stats(pb::GetStatsRequest {}).await.ok()?.into_inner();
        let health =
            stats.pools.into_iter().find(|p| p.pool == pool)?.channels.into_iter().find(|c| c.channel == channel)?;
        ready(&health).then_some(health)
    })
    .await
}
