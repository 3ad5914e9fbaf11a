//! Operators' roles: every AdminService RPC called with a viewer's, an operator's, an admin's and an agent's
//! certificate is allowed exactly where the role table (`outpost_common::roles`, the code's one table) says, and
//! refused with PERMISSION_DENIED naming the role needed elsewhere; a certificate from before roles is refused with
//! how to reissue it, unless `--admin-role` maps it. A new RPC without a call here fails this test.

use outpost_common::pb;
use outpost_common::roles::{AdminRpc, Role};
use outpost_common::tls::TlsFiles;
use outpost_integration_tests::*;
use tonic::transport::Channel;

type Admin = pb::admin_service_client::AdminServiceClient<Channel>;

/// Calls `rpc` with a small, valid request; what matters is whether the edge lets it through.
async fn call(client: &mut Admin, rpc: AdminRpc) -> Result<(), tonic::Status> {
    use AdminRpc::*;
    let id = || "no-such-task".to_owned();
    match rpc {
        ListTasks => client.list_tasks(pb::ListTasksRequest::default()).await.map(drop),
        GetTask => client.get_task(pb::GetTaskRequest { id: id() }).await.map(drop),
        ListWorkers => client.list_workers(pb::ListWorkersRequest::default()).await.map(drop),
        GetWorker => client.get_worker(pb::GetWorkerRequest { worker_id: "nobody".into() }).await.map(drop),
        GetStats => client.get_stats(pb::GetStatsRequest::default()).await.map(drop),
        ExplainTask => client.explain_task(pb::ExplainTaskRequest { id: id() }).await.map(drop),
        ListQuarantined => client.list_quarantined(pb::ListQuarantinedRequest::default()).await.map(drop),
        SubmitTask => {
            let request = pb::SubmitTaskRequest { task: "NOOP".into(), pool: "default".into(), ..Default::default() };
            client.submit_task(request).await.map(drop)
        }
        RetryTask => client.retry_task(pb::RetryTaskRequest { id: id() }).await.map(drop),
        CancelTask => client.cancel_task(pb::CancelTaskRequest { id: id(), reason: String::new() }).await.map(drop),
        DrainWorker => client.drain_worker(pb::DrainWorkerRequest { worker_id: "nobody".into() }).await.map(drop),
        ReplayQuarantined => client.replay_quarantined(pb::ReplayQuarantinedRequest { id: 999_999 }).await.map(drop),
        WarmVenvs => {
            let request = pb::WarmVenvsRequest {
                pool: "default".into(),
                version: "1.7.0.17".into(),
                plugin: "file".into(),
                agents: 1,
            };
            client.warm_venvs(request).await.map(drop)
        }
        CreateJoinToken => {
            let request =
                pb::CreateJoinTokenRequest { pool: "default".into(), ttl_seconds: 60, uses: 1, ..Default::default() };
            client.create_join_token(request).await.map(drop)
        }
        ListJoinTokens => client.list_join_tokens(pb::ListJoinTokensRequest::default()).await.map(drop),
        RevokeJoinToken => client.revoke_join_token(pb::RevokeJoinTokenRequest { id: "abcdef".into() }).await.map(drop),
        RevokeWorker => {
            let request = pb::RevokeWorkerRequest { worker_id: "nobody".into(), ..Default::default() };
            client.revoke_worker(request).await.map(drop)
        }
        CreateUiToken => {
            client.create_ui_token(pb::CreateUiTokenRequest { ttl_seconds: 60, ..Default::default() }).await.map(drop)
        }
        RevokeUiToken => client.revoke_ui_token(pb::RevokeUiTokenRequest { id: "abcdef".into() }).await.map(drop),
        ListAuditEvents => client.list_audit_events(pb::ListAuditEventsRequest::default()).await.map(drop),
        // This controller's CA comes from files given to it: a rotation step fails (FAILED_PRECONDITION) once let in.
        RotateCa => client.rotate_ca(pb::RotateCaRequest::default()).await.map(drop),
        ActivateCa => client.activate_ca(pb::ActivateCaRequest::default()).await.map(drop),
        RetireCa => client.retire_ca(pb::RetireCaRequest::default()).await.map(drop),
        GetCaStatus => client.get_ca_status(pb::GetCaStatusRequest::default()).await.map(drop),
    }
}

fn files(cluster: &Cluster, stem: &str) -> TlsFiles {
    TlsFiles {
        cert: cluster.certs.join(format!("{stem}.pem")),
        key: cluster.certs.join(format!("{stem}.key")),
        ca: cluster.certs.join("ca.pem"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_rpc_is_allowed_exactly_where_the_role_table_says() {
    let cluster = Cluster::new(bins!());
    for (name, role) in [("ro", Some(Role::Viewer)), ("op", Some(Role::Operator)), ("old", None), ("mapped", None)] {
        outpost_controller::certs::admin(&cluster.certs, name, role, "outpost").unwrap();
    }
    cluster.agent_cert("w-1");
    let controller = cluster.controller("outpost.db").args(&["--admin-role", "mapped=operator"]).start().await;
    let callers: [(&str, Option<Role>); 5] = [
        ("admin-ro", Some(Role::Viewer)),
        ("admin-op", Some(Role::Operator)),
        ("admin-ops", Some(Role::Admin)),
        ("admin-mapped", Some(Role::Operator)),
        ("agent-w-1", None),
    ];
    let mut checked = 0;
    for (stem, role) in callers {
        let mut client = admin_client(&controller, &files(&cluster, stem)).await;
        for &rpc in AdminRpc::ALL {
            let result = call(&mut client, rpc).await;
            let allowed = role.is_some_and(|r| r >= rpc.needs());
            match (&result, allowed) {
                (Err(status), false) => {
                    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{stem} {}: {status:?}", rpc.name());
                    if let Some(role) = role {
                        let name = stem.trim_start_matches("admin-");
                        let expected =
                            format!("{} needs the {} role; {name} has the {role} role", rpc.name(), rpc.needs());
                        assert_eq!(status.message(), expected);
                    } else {
                        assert_eq!(status.message(), "agent w-1 may not call the admin service");
                    }
                }
                (Err(status), true) => assert!(
                    !matches!(status.code(), tonic::Code::PermissionDenied | tonic::Code::Unauthenticated),
                    "{stem} may call {}, yet: {status:?}",
                    rpc.name()
                ),
                (Ok(()), true) => {}
                (Ok(()), false) => panic!("{stem} called {} although it needs the {} role", rpc.name(), rpc.needs()),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * AdminRpc::ALL.len());

    // Every call that changes (or would change) something left one audit row: who, with which role, from where,
    // and how it ended; reads left none.
    let mut admin = cluster.admin(&controller).await;
    let request = pb::ListAuditEventsRequest { limit: 1000, ..Default::default() };
    let events = admin.list_audit_events(request).await.unwrap().into_inner().events;
    let changes = AdminRpc::ALL.iter().filter(|rpc| rpc.changes()).count();
    assert_eq!(events.len(), 5 * changes, "{events:#?}");
    for (stem, role) in callers {
        let actor = if stem.starts_with("agent-") { "agent w-1".to_owned() } else { stem.replace("admin-", "") };
        for &rpc in AdminRpc::ALL {
            let rows: Vec<&pb::AuditEvent> =
                events.iter().filter(|e| e.actor == actor && e.action == rpc.name()).collect();
            if !rpc.changes() {
                assert!(rows.is_empty(), "a read is not audited: {rows:?}");
                continue;
            }
            assert_eq!(rows.len(), 1, "{actor} {}: {rows:?}", rpc.name());
            let row = rows[0];
            let allowed = role.is_some_and(|r| r >= rpc.needs());
            let expected = if allowed { ["done", "failed"].as_slice() } else { ["denied"].as_slice() };
            assert!(expected.contains(&row.outcome.as_str()), "{actor} {}: {row:?}", rpc.name());
            assert_eq!(row.role, role.map(|r| r.to_string()).unwrap_or_default());
            assert_eq!(row.via, "api");
            assert!(row.peer.starts_with("127.0.0.1:"), "{row:?}");
            if !allowed {
                assert!(row.detail.contains("may not call the admin service") || row.detail.contains("needs the"));
            }
        }
    }
    // What the test could do was done, and said so: a token minted, a task submitted.
    let done = |action: &str| events.iter().any(|e| e.action == action && e.actor == "ops" && e.outcome == "done");
    assert!(done("CreateJoinToken") && done("SubmitTask") && done("CreateUiToken"));
    let failed = events.iter().find(|e| e.action == "CancelTask" && e.actor == "ops").unwrap();
    assert_eq!((failed.outcome.as_str(), failed.target.as_str()), ("failed", "no-such-task"));
    assert!(failed.detail.contains("no-such-task"), "{failed:?}");

    // A certificate from before roles, not mapped: refused, with how to reissue it.
    let mut old = admin_client(&controller, &files(&cluster, "admin-old")).await;
    let refused = call(&mut old, AdminRpc::ListTasks).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused.message().starts_with(
            "admin certificate old carries no role (it was issued before roles): reissue it \
             with `outpost-controller certs admin --role viewer|operator|admin --name old`"
        ),
        "{}",
        refused.message()
    );
    // outpostctl says the same, and exits 1.
    let out = cluster.ctl_as(&controller, &files(&cluster, "admin-ro"), &["cancel", "no-such-task"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CancelTask needs the operator role; ro has the viewer role")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_login_tokens_carry_a_role_viewer_unless_told() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").start().await;
    let created = |args: &[&str]| {
        let out = cluster.ctl(&controller, &[&["--json", "ui-tokens", "create"][..], args].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(created(&[])["role"], "viewer");
    assert_eq!(created(&["--role", "operator"])["role"], "operator");
    let refused = cluster.ctl(&controller, &["ui-tokens", "create", "--role", "root"]);
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("\"root\" is not a role: viewer, operator or admin"));
}
