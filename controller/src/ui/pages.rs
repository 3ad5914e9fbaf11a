//! The pages of the status page: the fleet (pools, workers, recent failures), the task list (filters, search,
//! paging) and a task (attempts, result, report, live log tail, why it waits). Everything comes from the same core
//! methods the admin API calls (scheduler reads, enrollment facts, log tails); nothing here changes anything (the
//! buttons an operator login sees post to `actions.rs`).

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use outpost_common::ids::{PoolId, TaskId, WorkerId};
use outpost_common::roles::{AdminRpc, Role};
use outpost_common::task::TaskState;

use super::Ui;
use super::actions::button;
use super::auth::Session;
use super::html::{ago, badge, esc, page, page_with, table, time, until, url_value};
use crate::scheduler::{WorkerState, WorkerView};
use crate::store::{AttemptRecord, TaskFilter, TaskRecord};

/// Tasks per page of the task list.
const PAGE: u32 = 50;

#[derive(Debug, Default, serde::Deserialize)]
pub struct Listing {
    #[serde(default)]
    state: String,
    #[serde(default)]
    pool: String,
    #[serde(default)]
    worker: String,
    /// A task id or URN.
    #[serde(default)]
    q: String,
    /// `<created ms>-<id>` of the last task of the previous page.
    #[serde(default)]
    after: String,
    #[serde(default)]
    fragment: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct Fragment {
    #[serde(default)]
    fragment: Option<String>,
}

fn failed(what: &str, error: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Html(format!("<p role=\"alert\">Cannot read {what}: {}</p>", esc(&error.to_string()))),
    )
        .into_response()
}

/// The whole page (its live part refreshed from `refresh_url`, if any), or only the live part when the page's
/// script asks for it.
fn respond(
    ui: &Ui,
    session: &Session,
    title: &str,
    current: &str,
    refresh_url: Option<&str>,
    fragment: bool,
    live: String,
) -> Response {
    if fragment {
        return Html(live).into_response();
    }
    let every = outpost_common::duration::millis(ui.refresh);
    let audit = session.role >= Role::Admin;
    Html(page_with(title, current, &live, refresh_url.map(|url| (url, every)), audit)).into_response()
}

fn task_link(id: &TaskId) -> String {
    format!("<a href=\"/tasks/{}\">{}</a>", url_value(id.as_str()), esc(id.as_str()))
}

fn worker_link(worker: &str) -> String {
    format!("<a href=\"/tasks?worker={}\">{}</a>", url_value(worker), esc(worker))
}

fn slots_meter(used: u32, total: u32) -> String {
    format!(
        "<meter min=\"0\" max=\"{total}\" value=\"{used}\" aria-label=\"{used} of {total} slots used\"></meter> {used}/{total}"
    )
}

pub async fn fleet(
    State(ui): State<Ui>,
    Extension(session): Extension<Session>,
    Query(query): Query<Fragment>,
) -> Response {
    let workers = match ui.scheduler.list_workers().await {
        Ok(workers) => workers,
        Err(e) => return failed("the workers", e),
    };
    let (expiries, revoked) = ui.enrollment.worker_facts().await.unwrap_or_default();
    let capacity = ui.scheduler.capacity().await.unwrap_or_default();
    let backlogs = ui.store.pool_backlogs().await.unwrap_or_default();
    let mut running: BTreeMap<String, Vec<TaskId>> = BTreeMap::new();
    for state in [TaskState::Assigned, TaskState::Running] {
        let filter = TaskFilter { state: Some(state), limit: 1000, ..TaskFilter::default() };
        for task in ui.store.list_tasks(&filter).await.unwrap_or_default() {
            if let Some(worker) = &task.worker_id {
                running.entry(worker.to_string()).or_default().push(task.request.id.clone());
            }
        }
    }
    let connected = workers.iter().filter(|w| w.state != WorkerState::Disconnected).count();
    let (used, total) = workers
        .iter()
        .filter(|w| w.state != WorkerState::Disconnected)
        .fold((0, 0), |(u, t), w| (u + w.slots_used, t + w.slots));
    let waiting: u32 = backlogs.iter().map(|b| b.queued).sum();
    let plural = |n: usize, one: &str, many: &str| if n == 1 { one.to_owned() } else { many.to_owned() };
    let mut live = format!(
        "<h1>Fleet</h1><ul class=\"summary\"><li><strong>{connected}</strong> {} connected</li>\
         <li><strong>{used}/{total}</strong> slots in use</li><li><strong>{waiting}</strong> {} waiting</li></ul>",
        plural(connected, "agent", "agents"),
        plural(waiting as usize, "task", "tasks")
    );
    // Pools: every pool with agents or work.
    let mut pools: BTreeMap<String, PoolRow> = BTreeMap::new();
    for c in &capacity {
        let row = pools.entry(c.pool.to_string()).or_default();
        (row.agents, row.draining, row.free) = (c.agents, c.draining, c.free_slots);
    }
    for b in &backlogs {
        let row = pools.entry(b.pool.clone()).or_default();
        (row.waiting, row.running, row.oldest_ms, row.sqs_held) =
            (b.queued, b.running, b.oldest_queued_ms, b.sqs_in_hand);
    }
    for (pool, channel, health) in ui.metrics.channels() {
        pools.entry(pool).or_default().channels.push(channel_health(channel, &health));
    }
    let pool_rows: Vec<Vec<String>> = pools
        .into_iter()
        .map(|(pool, r)| {
            let oldest = if r.waiting > 0 { ago(r.oldest_ms).replace(" ago", "") } else { "-".into() };
            vec![
                format!("<a href=\"/tasks?pool={}\">{}</a>", url_value(&pool), esc(&pool)),
                r.agents.to_string(),
                r.draining.to_string(),
                r.free.to_string(),
                r.waiting.to_string(),
                r.running.to_string(),
                oldest,
                r.sqs_held.to_string(),
                if r.channels.is_empty() { "-".to_owned() } else { r.channels.join("<br>") },
            ]
        })
        .collect();
    live.push_str(&table(
        "Pools",
        &[
            "Pool",
            "Agents",
            "Draining",
            "Free slots",
            "Waiting",
            "Running",
            "Oldest waiting",
            "SQS messages held",
            "Channels",
        ],
        &pool_rows,
        "No pool has agents or work yet.",
    ));
    let may_drain = session.role >= AdminRpc::DrainWorker.needs();
    let worker_rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let id = w.worker_id.to_string();
            let cert = expiries.iter().find(|(worker, ..)| *worker == id).map_or(0, |(_, at, _)| *at);
            let revoked_at = revoked.iter().find(|(worker, _)| *worker == id).map(|(_, at)| *at);
            let mut row = worker_row(w, running.get(&id).map(Vec::as_slice).unwrap_or_default(), cert, revoked_at);
            if may_drain {
                let drain = match (w.state, revoked_at) {
                    (WorkerState::Ready, None) => {
                        let path = format!("/workers/{}/drain", url_value(&id));
                        button(&session, AdminRpc::DrainWorker, &path, &format!("Drain {id}"), false)
                    }
                    _ => String::new(),
                };
                row.push(drain);
            }
            row
        })
        .collect();
    let mut worker_headers =
        vec!["Worker", "State", "Pools", "Slots", "Running", "Last heartbeat", "Version", "Certificate", "Venvs"];
    if may_drain {
        worker_headers.push("Actions");
    }
    live.push_str(&table("Workers", &worker_headers, &worker_rows, "No agent has connected yet."));
    let mut failures: Vec<TaskRecord> = Vec::new();
    for state in [TaskState::Failed, TaskState::Aborted, TaskState::TimedOut] {
        let filter = TaskFilter { state: Some(state), limit: 10, ..TaskFilter::default() };
        failures.extend(ui.store.list_tasks(&filter).await.unwrap_or_default());
    }
    failures.sort_by_key(|t| std::cmp::Reverse(t.updated_at_ms));
    failures.truncate(10);
    let failure_rows: Vec<Vec<String>> = failures.iter().map(task_row).collect();
    live.push_str(&table("Recent failures", &TASK_HEADERS, &failure_rows, "No failures."));
    respond(&ui, &session, "Fleet", "/", Some("/?fragment=1"), query.fragment.is_some(), live)
}

/// A pool's channel in words: "sqs: ok", or failing since when and why (never by color alone).
fn channel_health(channel: crate::metrics::Intake, health: &crate::metrics::ChannelHealth) -> String {
    let name = esc(channel.label());
    if health.consecutive_failures == 0 {
        return format!("{name}: <span class=\"badge s-ready\">OK</span> {}", ago(health.last_success_ms));
    }
    let since = match health.last_success_ms {
        0 => "no call has succeeded yet".to_owned(),
        at => format!("no success for {}", ago(at).replace(" ago", "")),
    };
    format!(
        "{name}: <span class=\"badge s-failed\">FAILING</span> {since} ({} failures in a row): {}",
        health.consecutive_failures,
        esc(&health.last_error)
    )
}

#[derive(Default)]
struct PoolRow {
    agents: u32,
    draining: u32,
    free: u32,
    waiting: u32,
    running: u32,
    oldest_ms: i64,
    sqs_held: u32,
    channels: Vec<String>,
}

fn worker_row(w: &WorkerView, running: &[TaskId], cert_expires_ms: i64, revoked_at: Option<i64>) -> Vec<String> {
    let state = match (revoked_at, w.state) {
        (Some(_), _) => "REVOKED",
        (None, WorkerState::Ready) => "READY",
        (None, WorkerState::Draining) => "DRAINING",
        (None, WorkerState::Disconnected) => "DISCONNECTED",
    };
    let pools = w.pools.iter().map(PoolId::as_str).collect::<Vec<_>>().join(", ");
    let tasks =
        if running.is_empty() { "-".to_owned() } else { running.iter().map(task_link).collect::<Vec<_>>().join(" ") };
    vec![
        worker_link(w.worker_id.as_str()),
        badge(state),
        esc(&pools),
        slots_meter(w.slots_used, w.slots),
        tasks,
        ago(w.last_seen_ms),
        esc(&w.version),
        until(cert_expires_ms),
        w.venvs.iter().map(|v| esc(&v.requirement)).collect::<Vec<_>>().join("<br>"),
    ]
}

const TASK_HEADERS: [&str; 6] = ["Task", "State", "Pool", "Worker", "Attempts", "Updated"];

fn task_row(t: &TaskRecord) -> Vec<String> {
    vec![
        task_link(&t.request.id),
        badge(t.state.as_str()),
        esc(t.request.pool.as_str()),
        t.worker_id.as_ref().map_or("-".to_owned(), |w| worker_link(w.as_str())),
        t.attempts.to_string(),
        ago(t.updated_at_ms),
    ]
}

pub async fn tasks(
    State(ui): State<Ui>,
    Extension(session): Extension<Session>,
    Query(listing): Query<Listing>,
) -> Response {
    let fragment = listing.fragment.is_some();
    let mut error = None;
    let mut filter = TaskFilter { limit: PAGE, ..TaskFilter::default() };
    if !listing.state.is_empty() {
        match listing.state.parse::<TaskState>() {
            Ok(state) => filter.state = Some(state),
            Err(e) => error = Some(e.to_string()),
        }
    }
    if !listing.pool.is_empty() {
        match PoolId::parse(&listing.pool) {
            Ok(pool) => filter.pool = Some(pool),
            Err(e) => error = Some(format!("pool: {e}")),
        }
    }
    if !listing.worker.is_empty() {
        match WorkerId::parse(&listing.worker) {
            Ok(worker) => filter.worker = Some(worker),
            Err(e) => error = Some(format!("worker: {e}")),
        }
    }
    if let Some((ms, id)) = listing.after.split_once('-')
        && let (Ok(ms), Ok(id)) = (ms.parse::<i64>(), TaskId::parse(id))
    {
        filter.after = Some((ms, id));
    }
    let found: Vec<TaskRecord> = if !listing.q.trim().is_empty() {
        match TaskId::parse_id_or_urn(listing.q.trim()) {
            Ok(id) => ui.store.task(&id).await.ok().flatten().map(|(t, _)| vec![t]).unwrap_or_default(),
            Err(e) => {
                error = Some(format!("search: {e}"));
                Vec::new()
            }
        }
    } else if error.is_none() {
        match ui.store.list_tasks(&filter).await {
            Ok(tasks) => tasks,
            Err(e) => return failed("the tasks", e),
        }
    } else {
        Vec::new()
    };
    let options: String = std::iter::once(("", "any state"))
        .chain(TaskState::ALL.iter().map(|s| (s.as_str(), s.as_str())))
        .map(|(value, label)| {
            let selected = if value == listing.state { " selected" } else { "" };
            format!("<option value=\"{value}\"{selected}>{label}</option>")
        })
        .collect();
    let mut live = format!(
        "<h1>Tasks</h1><form class=\"filters\" method=\"get\" action=\"/tasks\" role=\"search\">\
         <label>State <select name=\"state\">{options}</select></label>\
         <label>Pool <input name=\"pool\" value=\"{}\" autocomplete=\"off\"></label>\
         <label>Worker <input name=\"worker\" value=\"{}\" autocomplete=\"off\"></label>\
         <label>Id or URN <input name=\"q\" type=\"search\" value=\"{}\" autocomplete=\"off\"></label>\
         <button type=\"submit\">Show</button></form>",
        esc(&listing.pool),
        esc(&listing.worker),
        esc(&listing.q)
    );
    if let Some(error) = error {
        live.push_str(&format!("<p role=\"alert\" class=\"error\">{}</p>", esc(&error)));
    }
    let rows: Vec<Vec<String>> = found.iter().map(task_row).collect();
    live.push_str(&table("Tasks, newest first", &TASK_HEADERS, &rows, "No task matches."));
    let query = |after: &str| {
        format!(
            "/tasks?state={}&pool={}&worker={}&after={}",
            url_value(&listing.state),
            url_value(&listing.pool),
            url_value(&listing.worker),
            url_value(after)
        )
    };
    if u32::try_from(found.len()).is_ok_and(|n| n == PAGE)
        && let Some(last) = found.last()
    {
        let next = query(&format!("{}-{}", last.created_at_ms, last.request.id));
        live.push_str(&format!("<p><a href=\"{}\" rel=\"next\">Older tasks</a></p>", esc(&next)));
    }
    let refresh = format!("{}&q={}&fragment=1", query(&listing.after), url_value(&listing.q));
    respond(&ui, &session, "Tasks", "/tasks", Some(&refresh), fragment, live)
}

pub async fn task(
    State(ui): State<Ui>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(query): Query<Fragment>,
) -> Response {
    let Ok(id) = TaskId::parse_id_or_urn(&id) else {
        return (StatusCode::NOT_FOUND, Html(page("Not found", "", "<h1>No such task</h1>", None))).into_response();
    };
    let (task, attempts) = match ui.store.task(&id).await {
        Ok(Some(found)) => found,
        Ok(None) => {
            let body = format!("<h1>No task {}</h1>", esc(id.as_str()));
            return (StatusCode::NOT_FOUND, Html(page("Not found", "", &body, None))).into_response();
        }
        Err(e) => return failed("the task", e),
    };
    let mut live = format!(
        "<h1>Task {}</h1><dl class=\"facts\"><dt>State</dt><dd>{}</dd><dt>URN</dt><dd><code>{}</code></dd>\
         <dt>Task</dt><dd>{}</dd><dt>Pool</dt><dd>{}</dd><dt>Source</dt><dd>{}</dd><dt>Received</dt><dd>{}</dd>\
         <dt>Epoch</dt><dd>{}</dd></dl>",
        esc(id.as_str()),
        badge(task.state.as_str()),
        esc(&id.urn()),
        esc(&task.request.task_name),
        esc(task.request.pool.as_str()),
        esc(&task.request.source_type),
        time(task.created_at_ms),
        task.epoch.0
    );
    if let Some(url) = &ui.datahub_url {
        live.push_str(&format!(
            "<p><a href=\"{}/ingestion\" rel=\"noopener\">Open ingestion in DataHub</a> (execution request <code>{}</code>)</p>",
            esc(url.trim_end_matches('/')),
            esc(&id.urn())
        ));
    }
    if !task.state.is_terminal()
        && let Ok(explained) = ui.scheduler.explain(&id).await
    {
        live.push_str(&format!(
            "<section aria-labelledby=\"why\"><h2 id=\"why\">Why it is {}</h2><p class=\"why\">{}</p></section>",
            esc(task.state.as_str()),
            esc(&explained.describe())
        ));
    }
    let path = format!("/tasks/{}", url_value(id.as_str()));
    let action = if task.state.is_terminal() {
        button(&session, AdminRpc::RetryTask, &format!("{path}/retry"), "Retry", false)
    } else {
        button(&session, AdminRpc::CancelTask, &format!("{path}/cancel"), "Cancel", true)
    };
    live.push_str(&action);
    if let Some(failure) = &task.delivery_failure {
        live.push_str(&format!("<p role=\"alert\" class=\"error\">GMS refused for good: {}</p>", esc(failure)));
    }
    let rows: Vec<Vec<String>> = attempts.iter().map(attempt_row).collect();
    live.push_str(&table(
        "Attempts",
        &["#", "Worker", "Epoch", "State", "Assigned", "Ended", "Reason"],
        &rows,
        "No attempt yet.",
    ));
    if let Some(tail) = ui.logs.tail(&id, task.epoch).filter(|_| !task.state.is_terminal()) {
        live.push_str(&format!(
            "<section aria-labelledby=\"log\"><h2 id=\"log\">Log (live)</h2><pre class=\"log\" tabindex=\"0\">{}</pre></section>",
            esc(&tail)
        ));
    }
    if let Some(result) = &task.result {
        let exit = result.run.exit_code.map_or("-".to_owned(), |c| c.to_string());
        live.push_str(&format!(
            "<section aria-labelledby=\"result\"><h2 id=\"result\">Result</h2><dl class=\"facts\"><dt>Exit code</dt><dd>{exit}</dd>\
             <dt>Finished</dt><dd>{}</dd><dt>Took</dt><dd>{:.1} s</dd></dl>\
             <h3>Report</h3><pre class=\"log\" tabindex=\"0\">{}</pre></section>",
            time(result.finished_at_ms),
            result.run.duration_ms as f64 / 1000.0,
            esc(&result.run.report)
        ));
    }
    let refresh = if task.state.is_terminal() { None } else { Some(format!("{path}?fragment=1")) };
    respond(&ui, &session, &format!("Task {}", id.as_str()), "", refresh.as_deref(), query.fragment.is_some(), live)
}

fn attempt_row(a: &AttemptRecord) -> Vec<String> {
    vec![
        a.number.to_string(),
        worker_link(a.worker_id.as_str()),
        a.epoch.0.to_string(),
        badge(a.state.as_str()),
        time(a.assigned_at_ms),
        a.ended_at_ms.map_or("-".to_owned(), time),
        esc(a.reason.as_deref().unwrap_or("-")),
    ]
}
