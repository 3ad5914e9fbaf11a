//! `outpost-controller doctor` before a first start, with `run`'s flags: against the GMS stand-in as open-source
//! DataHub older than 1.2 (the GMS channel refused, both versions named — and `run` refuses to start the same way),
//! as a current one, and as DataHub Cloud with its queue in moto; and against moto refusing the credentials.

use std::process::{Command, Output};
use std::time::Duration;

use outpost_integration_tests::*;

/// `outpost-controller doctor FLAGS` with a database in the temp dir and no certificate files (own trust).
fn doctor(cluster: &Cluster, flags: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(&cluster.bins.controller)
        .arg("doctor")
        .arg("--db")
        .arg(cluster.path("outpost.db"))
        .args(flags)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .envs(env.iter().copied())
        .output()
        .expect("run doctor")
}

fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
}

fn line<'a>(lines: &'a [String], start: &str) -> &'a str {
    lines.iter().find(|l| l.starts_with(start)).unwrap_or_else(|| panic!("no line starting {start:?} in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_source_datahub_before_1_2_cannot_serve_the_gms_channel_and_doctor_and_run_say_so() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    gms.serve_version("v1.1.0").await;
    let url = format!("{}/gms", gms.base);
    let flags = ["--gms-url", url.as_str(), "--gms-channel", "oss"];
    let output = doctor(&cluster, &flags, &[]);
    let found = lines(&output);
    assert_eq!(output.status.code(), Some(1), "{found:#?}");
    assert_eq!(line(&found, "ok    GMS reachable"), "ok    GMS reachable: open-source DataHub v1.1.0");
    assert_eq!(
        line(&found, "FAIL  GMS channel of pool oss"),
        "FAIL  GMS channel of pool oss: the GMS channel (--gms-channel) needs a DataHub whose search indexes \
         executorId (open-source v1.2.0 or later, or DataHub Cloud); this GMS is v1.1.0. Upgrade DataHub, or take \
         requests from an SQS queue (--queue)"
    );
    assert!(line(&found, "ok    own TLS trust").contains("will be made"), "{found:#?}");
    assert!(!cluster.path("trust").exists(), "doctor only reads: it made no trust");
    assert!(found.last().unwrap().ends_with("1 failed, 0 warnings"), "{found:#?}");

    // `run` refuses to start on it with the same reason, instead of a channel that finds nothing.
    let mut refused = cluster.controller("outpost.db").args(&flags).spawn();
    let status = refused.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
    assert!(refused.log().contains("this GMS is v1.1.0"), "{}", refused.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_open_source_datahub_passes_and_a_wrong_token_is_named() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&[]).await;
    gms.serve_version("v1.2.0").await;
    gms.accept_token(Some("right-token")).await;
    let url = format!("{}/gms", gms.base);
    let flags = ["--gms-url", url.as_str(), "--gms-channel", "oss"];
    let output = doctor(&cluster, &flags, &[("DATAHUB_GMS_TOKEN", "right-token")]);
    let found = lines(&output);
    assert!(output.status.success(), "{found:#?}");
    assert_eq!(line(&found, "ok    GMS token"), "ok    GMS token: accepted");
    assert_eq!(line(&found, "ok    claims"), "ok    claims: GMS does conditional writes: requests are claimed");
    assert!(line(&found, "ok    GMS channel of pool oss").contains("test connections"), "{found:#?}");
    assert!(line(&found, "ok    clock").starts_with("ok    clock: GMS's clock is"), "{found:#?}");

    let output = doctor(&cluster, &flags, &[("DATAHUB_GMS_TOKEN", "wrong-token")]);
    let found = lines(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(line(&found, "FAIL  GMS token").contains("GMS refused our credentials (HTTP 401)"), "{found:#?}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("wrong-token"), "the token is never printed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datahub_cloud_hands_out_a_queue_that_doctor_reads_and_moto_refusing_the_credentials_fails() {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let gms = cluster.gms(&[]).await;
    gms.serve_cloud_version("v0.3.12").await;
    let queue = moto.queue("doctor-cloud").await;
    let own = moto.queue("doctor-own").await;
    let entry = serde_json::json!({"region": "us-east-1", "executorId": "remote", "queueUrl": queue,
        "accessKeyId": "ASIADOCTOR", "secretKeyId": "doctor-secret", "sessionToken": "doctor-session"});
    gms.executor_configs(serde_json::json!([entry]), Duration::from_secs(600)).await;
    let url = format!("{}/gms", gms.base);
    let own_flag = format!("own={own}");
    let flags = [
        "--gms-url",
        url.as_str(),
        "--queue-from-gms",
        "remote",
        "--queue",
        own_flag.as_str(),
        "--sqs-endpoint",
        moto.endpoint.as_str(),
    ];
    let output = doctor(&cluster, &flags, &[]);
    let found = lines(&output);
    assert!(output.status.success(), "{found:#?}");
    assert_eq!(line(&found, "ok    GMS reachable"), "ok    GMS reachable: DataHub Cloud v0.3.12");
    assert_eq!(
        line(&found, "ok    DataHub Cloud queue of pool remote"),
        format!("ok    DataHub Cloud queue of pool remote: {queue} readable with the credentials GMS hands out")
    );
    assert!(line(&found, "ok    SQS queue of pool own").contains("readable"), "{found:#?}");

    // Once moto checks signatures, the default credentials of this host are refused: named, with the AWS code.
    moto.iam(None, &["admin"]);
    moto.iam(None, &["enforce"]);
    let output = doctor(&cluster, &flags, &[]);
    let found = lines(&output);
    assert_eq!(output.status.code(), Some(1), "{found:#?}");
    let refused = line(&found, "FAIL  SQS queue of pool own");
    assert!(refused.contains(&format!("{own}: HTTP 403")), "{refused}");
    let refused = line(&found, "FAIL  DataHub Cloud queue of pool remote");
    assert!(refused.contains(&format!("{queue}: HTTP 403")), "{refused}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("doctor-secret") && !text.contains("doctor-session"), "a secret was printed");
}
