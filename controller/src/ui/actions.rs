//! What an operator may do from the status page (cancel, retry, drain) and the audit page admins read. A post is
//! taken only from this site (its Origin, when sent) with the form token bound to the session, from a login whose
//! role the action needs (the admin API's table); each one — a refusal too — is recorded in the audit trail, the
//! change's row in the change's transaction. Never writes SQL.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use outpost_common::clock::unix_ms;
use outpost_common::ids::{TaskId, WorkerId};
use outpost_common::roles::{AdminRpc, Role};
use tracing::warn;

use super::auth::Session;
use super::html::{esc, page, table, time, url_value};
use super::{Ui, same_origin};
use crate::store::{Audit, AuditFilter, AuditOutcome, Via};

#[derive(Debug, serde::Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// The hidden field every action form carries.
fn csrf_field(session: &Session) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(&session.csrf))
}

/// A button posting `action` (a path of this site) with the session's form token; none for a role that may not.
pub fn button(session: &Session, rpc: AdminRpc, action: &str, label: &str, reason_field: bool) -> String {
    if session.role < rpc.needs() {
        return String::new();
    }
    let reason = if reason_field { "<label>Reason <input name=\"reason\" autocomplete=\"off\"></label> " } else { "" };
    format!(
        "<form method=\"post\" action=\"{}\" class=\"action\">{}{reason}<button type=\"submit\">{}</button></form>",
        esc(action),
        csrf_field(session),
        esc(label)
    )
}

/// A refused post, recorded; the answer says why.
async fn refuse(ui: &Ui, audit: Audit, status: StatusCode, why: String) -> Response {
    record(ui, audit, AuditOutcome::Denied, &why).await;
    (status, Html(page("Refused", "", &format!("<h1>Refused</h1><p role=\"alert\">{}</p>", esc(&why)), None)))
        .into_response()
}

async fn record(ui: &Ui, audit: Audit, outcome: AuditOutcome, detail: &str) {
    let action = audit.action;
    if let Err(e) = ui.store.audit(audit, outcome, detail.to_owned(), unix_ms()).await {
        warn!(action, error = %e, "cannot record an audit row");
    }
}

/// The audit row of `rpc` on `target` if the post may go ahead; else the refusal (recorded) to answer with.
async fn allowed(
    ui: &Ui,
    session: &Session,
    peer: SocketAddr,
    headers: &HeaderMap,
    form: &ActionForm,
    rpc: AdminRpc,
    target: &str,
) -> Result<Audit, Response> {
    let audit = Audit {
        actor: session.actor(),
        role: Some(session.role),
        via: Via::Page,
        peer: peer.to_string(),
        action: rpc.name(),
        target: target.to_owned(),
        reason: form.reason.clone(),
    };
    if !same_origin(headers) {
        return Err(refuse(ui, audit, StatusCode::FORBIDDEN, "a post from another site is refused".into()).await);
    }
    // Compared as digests of equal length; the token is a digest of the session id, never stored.
    if form.csrf.is_empty() || form.csrf != session.csrf {
        let why = "the form is stale or forged (no valid form token): reload the page".to_owned();
        return Err(refuse(ui, audit, StatusCode::FORBIDDEN, why).await);
    }
    if session.role < rpc.needs() {
        let why = format!("{} needs the {} role; this login has the {} role", rpc.name(), rpc.needs(), session.role);
        return Err(refuse(ui, audit, StatusCode::FORBIDDEN, why).await);
    }
    Ok(audit)
}

/// After an action: back to `to`, or the failure (recorded) when it could not be done.
async fn settled(ui: &Ui, audit: Audit, result: Result<(), crate::scheduler::Error>, to: &str) -> Response {
    match result {
        Ok(()) => Redirect::to(to).into_response(),
        Err(e) => {
            let why = e.to_string();
            record(ui, audit, AuditOutcome::Failed, &why).await;
            let body =
                format!("<h1>Not done</h1><p role=\"alert\">{}</p><p><a href=\"{}\">Back</a></p>", esc(&why), esc(to));
            (StatusCode::CONFLICT, Html(page("Not done", "", &body, None))).into_response()
        }
    }
}

fn task_path(id: &TaskId) -> String {
    format!("/tasks/{}", url_value(id.as_str()))
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, Html(page("Not found", "", &format!("<h1>{}</h1>", esc(what)), None))).into_response()
}

/// `POST /tasks/{id}/cancel` (with an optional reason) and `POST /tasks/{id}/retry`.
pub async fn task(
    State(ui): State<Ui>,
    Extension(session): Extension<Session>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let Ok(id) = TaskId::parse_id_or_urn(&id) else { return not_found("No such task") };
    let rpc = match action.as_str() {
        "cancel" => AdminRpc::CancelTask,
        "retry" => AdminRpc::RetryTask,
        _ => return not_found("No such action"),
    };
    let audit = match allowed(&ui, &session, peer, &headers, &form, rpc, id.as_str()).await {
        Ok(audit) => audit,
        Err(refused) => return refused,
    };
    let done = if rpc == AdminRpc::CancelTask {
        let reason = if form.reason.is_empty() { format!("cancelled by {}", audit.actor) } else { form.reason.clone() };
        ui.scheduler.cancel(&id, &reason, Some(audit.clone())).await
    } else {
        ui.scheduler.retry(&id, Some(audit.clone())).await
    };
    settled(&ui, audit, done, &task_path(&id)).await
}

/// `POST /workers/{id}/drain`.
pub async fn drain(
    State(ui): State<Ui>,
    Extension(session): Extension<Session>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let Ok(worker) = WorkerId::parse(&id) else { return not_found("No such worker") };
    let audit = match allowed(&ui, &session, peer, &headers, &form, AdminRpc::DrainWorker, worker.as_str()).await {
        Ok(audit) => audit,
        Err(refused) => return refused,
    };
    let drained = ui.scheduler.drain(&worker, Some(audit.clone())).await;
    settled(&ui, audit, drained, "/").await
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
}

/// The audit trail, newest first, for admin logins.
pub async fn audit(
    State(ui): State<Ui>,
    Extension(session): Extension<Session>,
    Query(query): Query<AuditQuery>,
) -> Response {
    if session.role < Role::Admin {
        let body = format!(
            "<h1>Refused</h1><p role=\"alert\">The audit page is for admin logins; this login has the {} role.</p>",
            session.role
        );
        return (StatusCode::FORBIDDEN, Html(page("Refused", "", &body, None))).into_response();
    }
    let filter = AuditFilter {
        since_ms: None,
        actor: (!query.actor.is_empty()).then(|| query.actor.clone()),
        action: (!query.action.is_empty()).then(|| query.action.clone()),
        limit: 200,
    };
    let events = match ui.store.audit_events(&filter).await {
        Ok(events) => events,
        Err(e) => {
            let body = format!("<p role=\"alert\">Cannot read the audit trail: {}</p>", esc(&e.to_string()));
            return (StatusCode::SERVICE_UNAVAILABLE, Html(body)).into_response();
        }
    };
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                time(e.at_ms),
                esc(&e.actor),
                esc(e.role.map_or("-", Role::as_str)),
                esc(e.via.as_str()),
                esc(&e.peer),
                esc(&e.action),
                esc(&e.target),
                esc(e.outcome.as_str()),
                esc(&[e.reason.as_str(), e.detail.as_str()]
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ")),
            ]
        })
        .collect();
    let mut live = format!(
        "<h1>Audit</h1><p class=\"hint\">Every change made through the admin API or this page, and every refused one, \
         newest first (the last 200). Reads are not recorded.</p>\
         <form method=\"get\" action=\"/audit\" class=\"filters\">\
         <label for=\"actor\">Actor</label><input id=\"actor\" name=\"actor\" value=\"{}\" placeholder=\"ops or ui-token/ID\">\
         <label for=\"action\">Action</label><input id=\"action\" name=\"action\" value=\"{}\" placeholder=\"CancelTask\">\
         <button type=\"submit\">Filter</button></form>",
        esc(&query.actor),
        esc(&query.action)
    );
    live.push_str(&table(
        "Audit trail",
        &["Time", "Actor", "Role", "Via", "Peer", "Action", "Target", "Outcome", "Reason / detail"],
        &rows,
        "Nothing recorded yet.",
    ));
    Html(page("Audit", "/audit", &live, None)).into_response()
}
