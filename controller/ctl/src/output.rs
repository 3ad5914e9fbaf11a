//! How outpostctl prints: aligned tables for people, JSON (lowerCamelCase, as grpcurl prints) for scripts.

use outpost_common::pb;
use serde_json::{Value, json};

fn state_name(state: i32) -> String {
    pb::TaskState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATE_").to_owned())
        .unwrap_or_else(|_| state.to_string())
}

fn worker_state_name(state: i32) -> String {
    pb::WorkerState::try_from(state)
        .map(|s| s.as_str_name().trim_start_matches("WORKER_STATE_").to_owned())
        .unwrap_or_else(|_| state.to_string())
}

pub fn is_terminal(state: i32) -> bool {
    use pb::TaskState::*;
    matches!(pb::TaskState::try_from(state), Ok(Succeeded | Failed | Cancelled | TimedOut | Aborted))
}

fn time(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let t = outpost_common::clock::system_time(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Prints rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn worker_json(w: &pb::Worker) -> Value {
    json!({
        "workerId": w.worker_id, "pools": w.pools, "slots": w.slots, "slotsUsed": w.slots_used,
        "version": w.version, "state": worker_state_name(w.state),
        "connectedSinceUnixMs": w.connected_since_unix_ms, "lastSeenUnixMs": w.last_seen_unix_ms, "labels": w.labels,
        "certExpiresUnixMs": w.cert_expires_unix_ms, "certSerial": w.cert_serial, "revokedUnixMs": w.revoked_unix_ms,
        "venvs": w.venvs.iter().map(venv_json).collect::<Vec<_>>(),
    })
}

fn venv_json(v: &pb::Venv) -> Value {
    json!({"key": v.key, "requirement": v.requirement, "bytes": v.bytes, "lastUsedUnixMs": v.last_used_unix_ms})
}

/// Every venv of every connected worker, one row each.
pub fn venvs(workers: &[pb::Worker], as_json: bool) {
    let held = workers.iter().flat_map(|w| w.venvs.iter().map(move |v| (w, v)));
    if as_json {
        let values = held
            .map(|(w, v)| {
                let mut value = venv_json(v);
                value["workerId"] = json!(w.worker_id);
                value["pools"] = json!(w.pools);
                value
            })
            .collect();
        return print_json(&Value::Array(values));
    }
    let rows: Vec<Vec<String>> = held
        .map(|(w, v)| {
            vec![
                w.worker_id.clone(),
                w.pools.join(","),
                v.key.clone(),
                v.requirement.clone(),
                format!("{:.1} MiB", v.bytes as f64 / (1024.0 * 1024.0)),
                time(v.last_used_unix_ms),
            ]
        })
        .collect();
    table(&["WORKER", "POOLS", "VENV", "REQUIREMENT", "SIZE", "LAST USED"], &rows);
}

pub fn warmed(warmed: &pb::WarmVenvsResponse, as_json: bool) {
    if as_json {
        return print_json(&json!({"key": warmed.key, "workerIds": warmed.worker_ids}));
    }
    if warmed.worker_ids.is_empty() {
        println!(
            "venv {}: no agent asked (every connected agent of the pool holds it already, or none is connected)",
            warmed.key
        );
    } else {
        println!("venv {}: asked {} to build it", warmed.key, warmed.worker_ids.join(", "));
    }
}

fn token_json(t: &pb::JoinToken) -> Value {
    json!({
        "id": t.id, "pool": t.pool, "expiresUnixMs": t.expires_unix_ms, "usesLeft": t.uses_left,
        "description": t.description, "createdBy": t.created_by, "createdUnixMs": t.created_unix_ms,
        "revokedUnixMs": t.revoked_unix_ms,
        "used": t.used.iter().map(|u| json!({"workerId": u.worker_id, "address": u.address, "unixMs": u.unix_ms}))
            .collect::<Vec<_>>(),
    })
}

/// A new token: the secret once, and how to use it.
/// A token (`what`: join token, status page login token) revoked.
pub fn token_revoked(what: &str, id: &str, as_json: bool) {
    if as_json {
        return print_json(&json!({ "id": id, "revoked": true }));
    }
    println!("revoked {what} {id}");
}

pub fn ui_token_created(created: &pb::CreateUiTokenResponse, as_json: bool) {
    if as_json {
        return print_json(&json!({"token": created.token, "id": created.id, "expiresUnixMs": created.expires_unix_ms,
                    "role": created.role}));
    }
    println!("{}", created.token);
    println!(
        "status page login token {} ({}), expires {}; it is shown only now. Type it at the page's login form.",
        created.id,
        created.role,
        time(created.expires_unix_ms)
    );
}

pub fn token_created(created: &pb::CreateJoinTokenResponse, as_json: bool) {
    let info = created.info.clone().unwrap_or_default();
    if as_json {
        let mut value = token_json(&info);
        value["token"] = Value::String(created.token.clone());
        return print_json(&value);
    }
    println!("{}", created.token);
    println!(
        "join token {} for pool {}, expires {}; it is shown only now. Give it to agents as OUTPOST_JOIN_TOKEN or \
         --join-token-file.",
        info.id,
        info.pool,
        time(info.expires_unix_ms)
    );
}

pub fn tokens(tokens: &[pb::JoinToken], as_json: bool) {
    if as_json {
        return print_json(&Value::Array(tokens.iter().map(token_json).collect()));
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.pool.clone(),
                if t.uses_left < 0 { "reusable".into() } else { t.uses_left.to_string() },
                t.used.len().to_string(),
                time(t.expires_unix_ms),
                time(t.revoked_unix_ms),
                t.created_by.clone(),
                or_dash(&t.description).to_owned(),
            ]
        })
        .collect();
    table(&["ID", "POOL", "USES LEFT", "JOINED", "EXPIRES", "REVOKED", "CREATED BY", "DESCRIPTION"], &rows);
}

fn task_json(t: &pb::Task) -> Value {
    let mut value = json!({
        "id": t.id, "urn": t.urn, "task": t.task, "pool": t.pool, "state": state_name(t.state), "epoch": t.epoch,
        "attempts": t.attempts, "workerId": t.worker_id, "args": t.args, "sourceType": t.source_type,
        "createdUnixMs": t.created_unix_ms, "updatedUnixMs": t.updated_unix_ms,
        "reportedUnixMs": t.reported_unix_ms, "deliveryFailure": t.delivery_failure,
        "attemptHistory": t.attempt_history.iter().map(|a| json!({
            "number": a.number, "epoch": a.epoch, "workerId": a.worker_id, "state": a.state,
            "assignedUnixMs": a.assigned_unix_ms, "startedUnixMs": a.started_unix_ms, "endedUnixMs": a.ended_unix_ms,
            "reason": a.reason,
        })).collect::<Vec<_>>(),
    });
    if let Some(r) = &t.result {
        value["result"] = json!({
            "exitCode": r.exit_code, "report": r.report, "structuredReport": r.structured_report,
            "startTimeUnixMs": r.start_time_unix_ms, "durationMs": r.duration_ms, "finishedUnixMs": r.finished_unix_ms,
        });
    }
    value
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

pub fn workers(workers: &[pb::Worker], as_json: bool) {
    if as_json {
        return print_json(&Value::Array(workers.iter().map(worker_json).collect()));
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.worker_id.clone(),
                worker_state_name(w.state),
                w.pools.join(","),
                format!("{}/{}", w.slots_used, w.slots),
                or_dash(&w.version).to_owned(),
                time(w.connected_since_unix_ms),
                time(w.last_seen_unix_ms),
                time(w.cert_expires_unix_ms),
                if w.revoked_unix_ms > 0 { format!("revoked {}", time(w.revoked_unix_ms)) } else { "-".into() },
                w.venvs.len().to_string(),
            ]
        })
        .collect();
    table(
        &["WORKER", "STATE", "POOLS", "SLOTS", "VERSION", "CONNECTED", "LAST SEEN", "CERT EXPIRES", "REVOKED", "VENVS"],
        &rows,
    );
}

pub fn quarantined(messages: &[pb::QuarantinedMessage], as_json: bool) {
    if as_json {
        let values = messages
            .iter()
            .map(|q| {
                json!({"id": q.id, "queueUrl": q.queue_url, "messageId": q.message_id, "reason": q.reason,
                       "body": q.body, "bodyBytes": q.body_bytes, "receivedUnixMs": q.received_unix_ms,
                       "replayedUnixMs": q.replayed_unix_ms})
            })
            .collect();
        return print_json(&Value::Array(values));
    }
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|q| {
            vec![
                q.id.to_string(),
                time(q.received_unix_ms),
                q.body_bytes.to_string(),
                time(q.replayed_unix_ms),
                q.reason.clone(),
            ]
        })
        .collect();
    table(&["ID", "RECEIVED", "BYTES", "REPLAYED", "REASON"], &rows);
}

pub fn tasks(tasks: &[pb::Task], next_page_token: &str, as_json: bool) {
    if as_json {
        let list = Value::Array(tasks.iter().map(task_json).collect());
        return print_json(&json!({"tasks": list, "nextPageToken": next_page_token}));
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.task.clone(),
                t.pool.clone(),
                state_name(t.state),
                t.attempts.to_string(),
                or_dash(&t.worker_id).to_owned(),
                time(t.created_unix_ms),
            ]
        })
        .collect();
    table(&["ID", "TASK", "POOL", "STATE", "ATTEMPTS", "WORKER", "CREATED"], &rows);
    if !next_page_token.is_empty() {
        println!("more: --page-token {next_page_token}");
    }
}

pub fn stats(stats: &pb::Stats, as_json: bool) {
    if as_json {
        let pools: Vec<Value> = stats
            .pools
            .iter()
            .map(|p| {
                let channels: Vec<Value> = p
                    .channels
                    .iter()
                    .map(|c| {
                        json!({"channel": c.channel, "lastSuccessUnixMs": c.last_success_unix_ms,
                               "lastError": c.last_error, "lastErrorUnixMs": c.last_error_unix_ms,
                               "consecutiveFailures": c.consecutive_failures})
                    })
                    .collect();
                json!({"pool": p.pool, "queued": p.queued, "running": p.running,
                       "oldestQueuedAgeMs": p.oldest_queued_age_ms, "agents": p.agents, "freeSlots": p.free_slots,
                       "sqsInHand": p.sqs_in_hand, "channels": channels})
            })
            .collect();
        return print_json(&json!({"pools": pools, "leaseLosses": stats.lease_losses, "retries": stats.retries,
                                  "outboxBacklog": stats.outbox_backlog}));
    }
    let rows: Vec<Vec<String>> = stats
        .pools
        .iter()
        .map(|p| {
            vec![
                p.pool.clone(),
                p.queued.to_string(),
                p.running.to_string(),
                format!("{:.1}s", p.oldest_queued_age_ms as f64 / 1000.0),
                p.agents.to_string(),
                p.free_slots.to_string(),
                p.sqs_in_hand.to_string(),
            ]
        })
        .collect();
    table(&["POOL", "QUEUED", "RUNNING", "OLDEST QUEUED", "AGENTS", "FREE SLOTS", "SQS IN HAND"], &rows);
    let channels: Vec<Vec<String>> = stats
        .pools
        .iter()
        .flat_map(|p| p.channels.iter().map(move |c| (p, c)))
        .map(|(p, c)| {
            let health = match c.consecutive_failures {
                0 => "ok".to_owned(),
                n => format!("FAILING ({n} in a row)"),
            };
            let since = |ms: i64| if ms > 0 { time(ms) } else { "-".to_owned() };
            vec![p.pool.clone(), c.channel.clone(), health, since(c.last_success_unix_ms), c.last_error.clone()]
        })
        .collect();
    if !channels.is_empty() {
        println!();
        table(&["POOL", "CHANNEL", "HEALTH", "LAST SUCCESS", "LAST ERROR"], &channels);
    }
    let mut losses: Vec<String> = stats.lease_losses.iter().map(|(k, v)| format!("{k}={v}")).collect();
    losses.sort();
    let mut retries: Vec<String> = stats.retries.iter().map(|(k, v)| format!("{k}={v}")).collect();
    retries.sort();
    println!(
        "\nlease losses: {}\nretries: {}\nGMS outbox backlog: {}",
        losses.join(" "),
        retries.join(" "),
        stats.outbox_backlog
    );
}

pub fn explanation(e: &pb::Explanation, as_json: bool) {
    let reason = pb::Reason::try_from(e.reason).map(|r| r.as_str_name().trim_start_matches("REASON_").to_owned());
    let reason = reason.unwrap_or_else(|_| e.reason.to_string());
    if as_json {
        return print_json(&json!({"id": e.id, "state": state_name(e.state), "reason": reason, "message": e.message,
                                  "notBeforeUnixMs": e.not_before_unix_ms, "workerId": e.worker_id,
                                  "venvKey": e.venv_key, "warmWorkers": e.warm_workers}));
    }
    println!("{} is {}: {} ({reason})", e.id, state_name(e.state), e.message);
}

pub fn submitted(task: &pb::Task, created: bool, as_json: bool) {
    if as_json {
        let mut value = task_json(task);
        value["created"] = json!(created);
        return print_json(&value);
    }
    let verb = if created { "submitted" } else { "already known" };
    println!("{verb}: {} ({}, pool {}, {})", task.id, task.task, task.pool, state_name(task.state));
}

pub fn task(task: &pb::Task, as_json: bool) {
    if as_json {
        return print_json(&task_json(task));
    }
    let fields = [
        ("ID", task.id.clone()),
        ("URN", task.urn.clone()),
        ("TASK", task.task.clone()),
        ("POOL", task.pool.clone()),
        ("STATE", state_name(task.state)),
        ("EPOCH", task.epoch.to_string()),
        ("ATTEMPTS", task.attempts.to_string()),
        ("WORKER", or_dash(&task.worker_id).to_owned()),
        ("CREATED", time(task.created_unix_ms)),
        ("UPDATED", time(task.updated_unix_ms)),
    ];
    for (name, value) in fields {
        println!("{name:<10}{value}");
    }
    if let Some(r) = &task.result {
        println!("{:<10}{}", "EXIT CODE", r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()));
        println!("{:<10}{} ms", "DURATION", r.duration_ms);
    }
    if !task.delivery_failure.is_empty() {
        println!("{:<10}{}", "GMS", format_args!("refused for good: {}", task.delivery_failure));
    }
    if !task.attempt_history.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = task
            .attempt_history
            .iter()
            .map(|a| {
                vec![
                    a.number.to_string(),
                    a.epoch.to_string(),
                    a.worker_id.clone(),
                    a.state.clone(),
                    time(a.assigned_unix_ms),
                    time(a.ended_unix_ms),
                    or_dash(&a.reason).to_owned(),
                ]
            })
            .collect();
        table(&["ATTEMPT", "EPOCH", "WORKER", "STATE", "ASSIGNED", "ENDED", "REASON"], &rows);
    }
    if let Some(r) = &task.result {
        println!("\n{}", r.report.trim_end());
    }
}

pub fn audit(events: &[pb::AuditEvent], as_json: bool) {
    if as_json {
        let events = events.iter().map(|e| {
            json!({
                "id": e.id, "atUnixMs": e.at_unix_ms, "actor": e.actor, "role": e.role, "via": e.via,
                "peer": e.peer, "action": e.action, "target": e.target, "outcome": e.outcome, "reason": e.reason,
                "detail": e.detail,
            })
        });
        return print_json(&Value::Array(events.collect()));
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            let why = [e.reason.as_str(), e.detail.as_str()].into_iter().filter(|s| !s.is_empty());
            vec![
                time(e.at_unix_ms),
                e.actor.clone(),
                or_dash(&e.role).to_owned(),
                e.via.clone(),
                or_dash(&e.peer).to_owned(),
                e.action.clone(),
                or_dash(&e.target).to_owned(),
                e.outcome.clone(),
                or_dash(&why.collect::<Vec<_>>().join("; ")).to_owned(),
            ]
        })
        .collect();
    table(&["TIME", "ACTOR", "ROLE", "VIA", "PEER", "ACTION", "TARGET", "OUTCOME", "REASON / DETAIL"], &rows);
}

pub fn ca_status(status: &pb::CaStatus, as_json: bool) {
    let ca = |c: &Option<pb::CaInfo>| {
        c.as_ref().map_or(
            Value::Null,
            |c| json!({ "fingerprint": c.fingerprint, "subject": c.subject, "expiresUnixMs": c.expires_unix_ms }),
        )
    };
    if as_json {
        return print_json(&json!({
            "phase": status.phase, "phaseSinceUnixMs": status.phase_since_unix_ms,
            "activatesAtUnixMs": status.activates_at_unix_ms, "signing": ca(&status.signing), "next": ca(&status.next),
            "previous": ca(&status.previous),
            "agents": status.agents.iter().map(|a| json!({
                "workerId": a.worker_id, "caFingerprint": a.ca_fingerprint, "onSigningCa": a.on_signing_ca,
            })).collect::<Vec<_>>(),
        }));
    }
    let since = if status.phase_since_unix_ms > 0 {
        format!(" since {}", time(status.phase_since_unix_ms))
    } else {
        String::new()
    };
    println!("phase: {}{since}", status.phase);
    if status.activates_at_unix_ms > 0 {
        println!("activates: {} (--ca-overlap; or `outpostctl ca activate`)", time(status.activates_at_unix_ms));
    }
    for (what, c) in [("signing", &status.signing), ("next", &status.next), ("previous", &status.previous)] {
        if let Some(c) = c {
            println!("{what}: {} {} (expires {})", c.fingerprint, c.subject, time(c.expires_unix_ms));
        }
    }
    let rows: Vec<Vec<String>> = status
        .agents
        .iter()
        .map(|a| {
            let on = if a.on_signing_ca { "signing CA" } else { "previous or other CA" };
            vec![a.worker_id.clone(), or_dash(&a.ca_fingerprint).to_owned(), on.to_owned()]
        })
        .collect();
    table(&["WORKER", "CERTIFICATE FROM CA", "WHICH"], &rows);
}
