//! The audit trail as operators read it: `outpostctl audit` with its filters (table and JSON), every change with
//! who, from where and why, refusals and failures too, never a secret at rest, and rows older than
//! `--audit-retention` deleted.

use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

fn audit_json(cluster: &Cluster, controller: &Controller, args: &[&str]) -> Vec<serde_json::Value> {
    let out = cluster.ctl(controller, &[&["--json", "audit"][..], args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_in_the_audit_trail_with_who_and_why_and_no_secret() {
    let cluster = Cluster::new(bins!());
    outpost_controller::certs::admin(&cluster.certs, "ro", Some(outpost_common::roles::Role::Viewer), "outpost")
        .unwrap();
    let controller = cluster.controller("outpost.db").start().await;
    let mut admin = cluster.admin(&controller).await;

    // A queued task (no agent) cancelled with a reason; a join token and a login token minted and one revoked.
    submit(&mut admin, "to-cancel", file_recipe()).await;
    let out = cluster.ctl(&controller, &["cancel", "to-cancel", "--reason", "wrong recipe"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cluster.ctl(&controller, &["--json", "tokens", "create", "--pool", "default", "--description", "ci"]);
    assert!(out.status.success());
    let join: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = cluster.ctl(&controller, &["--json", "ui-tokens", "create", "--role", "operator"]);
    let login: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let login_id = login["id"].as_str().unwrap();
    assert!(cluster.ctl(&controller, &["ui-tokens", "revoke", login_id]).status.success());
    // A failure (no such task) and a refusal (a viewer may not cancel).
    assert_eq!(cluster.ctl(&controller, &["retry", "no-such-task"]).status.code(), Some(1));
    let viewer = outpost_common::tls::TlsFiles {
        cert: cluster.certs.join("admin-ro.pem"),
        key: cluster.certs.join("admin-ro.key"),
        ca: cluster.certs.join("ca.pem"),
    };
    assert_eq!(cluster.ctl_as(&controller, &viewer, &["cancel", "to-cancel"]).status.code(), Some(1));
    // Reads are not recorded.
    admin.list_tasks(pb::ListTasksRequest::default()).await.unwrap();
    assert!(cluster.ctl_as(&controller, &viewer, &["tasks"]).status.success());

    let all = audit_json(&cluster, &controller, &[]);
    let summary: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("ro", "CancelTask", "denied"),
            ("ops", "RetryTask", "failed"),
            ("ops", "RevokeUiToken", "done"),
            ("ops", "CreateUiToken", "done"),
            ("ops", "CreateJoinToken", "done"),
            ("ops", "CancelTask", "done"),
            ("ops", "SubmitTask", "done"),
        ],
        "newest first, reads left out: {all:#?}"
    );
    let cancel = &all[5];
    assert_eq!((cancel["target"].as_str(), cancel["reason"].as_str()), (Some("to-cancel"), Some("wrong recipe")));
    assert_eq!((cancel["role"].as_str(), cancel["via"].as_str()), (Some("admin"), Some("api")));
    assert!(cancel["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{cancel}");
    assert_eq!(all[2]["target"].as_str(), Some(login_id));
    assert_eq!(all[0]["detail"].as_str(), Some("CancelTask needs the operator role; ro has the viewer role"));
    assert!(all[1]["detail"].as_str().unwrap().contains("no-such-task"), "{}", all[1]);

    // The filters.
    let by_actor = audit_json(&cluster, &controller, &["--actor", "ro"]);
    assert_eq!(by_actor.len(), 1);
    let by_action = audit_json(&cluster, &controller, &["--action", "CancelTask"]);
    assert_eq!(by_action.len(), 2);
    assert_eq!(audit_json(&cluster, &controller, &["--since", "1h", "--limit", "3"]).len(), 3);
    // The table names the columns and the rows.
    let out = cluster.ctl(&controller, &["audit", "--action", "CancelTask"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().starts_with("TIME"), "{table}");
    assert!(table.contains("wrong recipe") && table.contains("denied"), "{table}");

    // No secret at rest: neither token's secret is in the database or its WAL.
    let mut bytes = std::fs::read(cluster.path("outpost.db")).unwrap();
    bytes.extend(std::fs::read(cluster.path("outpost.db-wal")).unwrap_or_default());
    for token in [join["token"].as_str().unwrap(), login["token"].as_str().unwrap()] {
        let secret = token.split('.').nth(1).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a token's secret at rest");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_older_than_the_retention_are_deleted() {
    let cluster = Cluster::new(bins!());
    let flags = ["--audit-retention", "5s", "--audit-prune-interval", "200ms"];
    let controller = cluster.controller("outpost.db").args(&flags).start().await;
    let mut admin = cluster.admin(&controller).await;
    submit(&mut admin, "kept-briefly", file_recipe()).await;
    assert_eq!(audit_json(&cluster, &controller, &[]).len(), 1);
    wait_until("the row to pass the retention and go", Duration::from_secs(30), || {
        let left = audit_json(&cluster, &controller, &[]).len();
        async move { (left == 0).then_some(()) }
    })
    .await;
}
