//! Faults without a process dying, and crashes at named steps: a network blip or partition between an agent and
//! the controller (through a TCP fault proxy), and the controller aborting at fail points where turns commit,
//! results are recorded, GMS is written and SQS messages are deleted — then restarted on the same file.

use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

fn fast() -> Vec<&'static str> {
    vec!["--heartbeat-interval", "300ms", "--lease-ttl", "3s", "--sweep-interval", "100ms"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_blip_and_a_short_partition_lose_nothing_and_run_the_task_once() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").args(&fast()).start().await;
    let proxy = Proxy::start(controller.addr).await;
    let _agent = cluster.agent("w-1").start_at(&proxy.url());
    let mut admin = cluster.admin(&controller).await;
    wait_workers(&admin, 1).await;
    let run = cluster.held_run("through-faults");
    submit(&mut admin, "through-faults", run.recipe()).await;
    run.wait_started(1).await;

    // A blip: both ends see the connection die; the agent reconnects and keeps its run.
    let before = proxy.accepted();
    proxy.reset();
    wait_until("the agent to reconnect after the blip", Duration::from_secs(30), || async {
        (proxy.accepted() > before).then_some(())
    })
    .await;
    wait_workers(&admin, 1).await;
    // A partition shorter than the lease TTL: connections refused for a moment, then allowed again.
    proxy.partition(true);
    let refused_from = proxy.accepted();
    wait_until("the agent to try again while partitioned", Duration::from_secs(30), || async {
        (proxy.accepted() > refused_from).then_some(())
    })
    .await;
    proxy.partition(false);
    wait_workers(&admin, 1).await;
    run.release();
    let task = wait_terminal(&admin, "through-faults").await;
    assert_eq!((task.state, task.attempts), (pb::TaskState::Succeeded as i32, 1), "{task:?}");
    let full = admin.get_task(pb::GetTaskRequest { id: "through-faults".into() }).await.unwrap().into_inner();
    assert_eq!(full.attempt_history.len(), 1, "never re-run: {:?}", full.attempt_history);
}

/// The controller aborts at `point` (the first time it is reached), is restarted on the same file, and every
/// request still ends with exactly one final result at GMS, nothing changed after it, and its SQS message gone.
async fn crash_and_recover(point: &str) {
    let cluster = Cluster::new(bins!());
    let moto = cluster.moto().await;
    let gms = cluster.gms(&[]).await;
    let queue = moto.queue(&format!("crash-{}", point.replace(':', "-"))).await;
    let ids: Vec<String> = (0..3).map(|i| format!("crash-{i}")).collect();
    for id in &ids {
        moto.send(&queue, &messages::mcl_input(id, &messages::input(&file_recipe(), "default"))).await;
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let gms_url = gms.base.clone();
    let mut owned = moto.bridge_flags("default", &queue, "3s");
    owned.extend(["--listen", &listen, "--gms-url", &gms_url].map(String::from));
    let mut flags = fast();
    flags.extend(owned.iter().map(String::as_str));
    flags.extend(["--gms-retry-backoff", "100ms", "--gms-retry-backoff-max", "300ms", "--progress-interval", "500ms"]);
    let failpoints = format!("{point}=1*return");
    let mut first =
        cluster.controller("outpost.db").args(&flags).env(&[("FAILPOINTS", failpoints.as_str())]).start().await;
    let _agent = cluster.agent("w-1").slots(2).start(&first);
    let status = first.proc.wait_exit(Duration::from_secs(120)).await;
    // Only the crash point aborts (a panic unwinds and exits 101): SIGABRT is the crash at {point}.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "the controller should have aborted at {point}: {status:?}");

    let second = cluster.controller("outpost.db").args(&flags).start().await;
    let admin = cluster.admin(&second).await;
    let urns: Vec<String> = ids.iter().map(|id| format!("urn:li:dataHubExecutionRequest:{id}")).collect();
    wait_until("every request to have its final result in GMS", Duration::from_secs(120), || async {
        let results = gms.results().await;
        urns.iter().all(|u| results.get(u).is_some_and(|r| r["status"] == "SUCCESS")).then_some(())
    })
    .await;
    moto.wait_empty(&queue).await;
    for (id, urn) in ids.iter().zip(&urns) {
        let writes = gms.result_writes(urn).await;
        let accepted: Vec<&str> =
            writes.iter().filter(|(code, _)| *code == 200).map(|(_, a)| a["status"].as_str().unwrap_or("?")).collect();
        let first_final = accepted.iter().position(|s| *s == "SUCCESS").expect("a final result");
        // After the final result only the same result again (GMS ignores an identical terminal write).
        assert!(accepted[first_final..].iter().all(|s| *s == "SUCCESS"), "{point}: {id}: {accepted:?}");
        let task = wait_task(&admin, id, "reported", |t| t.reported_unix_ms > 0).await;
        assert_eq!(task.state, pb::TaskState::Succeeded as i32, "{point}: {task:?}");
    }
    assert!(gms.invalid().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_an_sqs_receive_loses_nothing() {
    crash_and_recover("crash::after_sqs_receive").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_grant_commits_loses_nothing() {
    crash_and_recover("crash::after_grant_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_result_commits_loses_nothing() {
    crash_and_recover("crash::after_result_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_a_gms_write_and_its_record_sends_the_same_result_again_only() {
    crash_and_recover("crash::after_gms_write").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_an_sqs_delete_deletes_it_after_the_restart() {
    crash_and_recover("crash::before_sqs_delete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_agent_neither_starves_another_nor_grows_the_log_tails() {
    let cluster = Cluster::new(bins!());
    let controller = cluster.controller("outpost.db").args(&fast()).start().await;
    let mut admin = cluster.admin(&controller).await;
    let hostile = Ghost::connect_alive(&cluster, &controller, "hostile", "other-pool", 1).await;
    let _agent = cluster.agent("honest").start(&controller);
    wait_workers(&admin, 2).await;
    submit(&mut admin, "under-flood", file_recipe()).await;
    // 20,000 heartbeats and 20,000 log messages (80 MB of lines about an attempt it does not hold).
    let flood = tokio::spawn(async move {
        let sent = hostile.flood(20_000).await;
        (hostile, sent)
    });
    let task = wait_terminal(&admin, "under-flood").await;
    assert_eq!((task.state, task.worker_id.as_str()), (pb::TaskState::Succeeded as i32, "honest"));
    let (_hostile, sent) = flood.await.unwrap();
    assert_eq!(sent, 20_000, "the flood was taken in, not cut off");
    // The controller kept none of the hostile lines: its memory stayed small.
    let metrics_free = admin.list_workers(pb::ListWorkersRequest {}).await.unwrap().into_inner();
    assert_eq!(metrics_free.workers.len(), 2);
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", controller.proc.pid()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").parse().unwrap()))
        .unwrap();
    eprintln!("controller RSS after the flood: {rss_kib} KiB");
    assert!(rss_kib < 64 * 1024, "the controller's memory grew to {rss_kib} KiB under the flood");
}
