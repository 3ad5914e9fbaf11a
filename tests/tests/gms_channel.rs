//! Open-source DataHub: execution requests found in GMS itself (the GMS channel), claimed with conditional
//! writes so that one controller runs each, claims renewed and taken over, and the SQS and GMS channels of one
//! pool on two controllers running every request exactly once. Real controllers and agents, the GMS stand-in
//! (with a lagging search index and DataHub's version checks), moto for SQS.

use std::collections::HashMap;
use std::time::Duration;

use outpost_common::pb;
use outpost_integration_tests::*;

type Admin = pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>;

fn urn(id: &str) -> String {
    format!("urn:li:dataHubExecutionRequest:{id}")
}

/// Fast timings, GMS reporting to `gms`, and `extra`.
fn flags(gms: &Gms, extra: &[&str]) -> Vec<String> {
    flags_with(gms, &[], extra)
}

/// The same with some of the fast timings overridden.
fn flags_with(gms: &Gms, overrides: &[(&str, &str)], extra: &[&str]) -> Vec<String> {
    let base = [
        ("--heartbeat-interval", "300ms"),
        ("--lease-ttl", "3s"),
        ("--sweep-interval", "100ms"),
        ("--progress-interval", "500ms"),
        ("--signal-poll-interval", "500ms"),
        ("--gms-retry-backoff", "100ms"),
        ("--gms-retry-backoff-max", "300ms"),
        ("--gms-poll-interval", "200ms"),
        ("--gms-takeover-interval", "500ms"),
        ("--claim-ttl", "3s"),
    ];
    let mut flags = merge_flags(&base, overrides);
    flags.push("--gms-url".into());
    flags.push(gms.base.clone());
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

async fn controller(cluster: &Cluster, gms: &Gms, db: &str, extra: &[&str]) -> Controller {
    let flags = flags(gms, extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cluster.controller(db).args(&flags).start().await
}

/// Waits until GMS holds a final status for each of `urns`.
async fn wait_final(gms: &Gms, urns: &[String]) -> serde_json::Map<String, serde_json::Value> {
    wait_until("every request to have a final status in GMS", Duration::from_secs(180), || async {
        let results = gms.results().await;
        let done =
            urns.iter().all(|u| results.get(u).is_some_and(|r| r["status"] != "RUNNING" && r["status"] != "PENDING"));
        done.then_some(results)
    })
    .await
}

/// Tasks of one controller by id, as its admin API lists them.
async fn tasks(admin: &Admin) -> HashMap<String, pb::Task> {
    let mut admin = admin.clone();
    let listed = admin.list_tasks(pb::ListTasksRequest { limit: 1000, ..Default::default() }).await.unwrap();
    listed.into_inner().tasks.into_iter().map(|t| (t.id.clone(), t)).collect()
}

async fn assert_clean(gms: &Gms) {
    let invalid = gms.invalid().await;
    assert!(invalid.is_empty(), "payloads DataHub's schema classes refused: {invalid:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_the_pool_are_found_in_gms_claimed_and_run_once_and_others_left_alone() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&["--index-lag-ms", "300"]).await;
    gms.serve_version("v1.2.0").await;
    let controller = controller(&cluster, &gms, "outpost.db", &["--gms-channel", "oss-pool"]).await;
    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").pool("oss-pool").slots(2).start(&controller);
    let searched = |c: &pb::ChannelHealth| c.last_success_unix_ms > 0 && c.consecutive_failures == 0;
    wait_channel(&admin, "oss-pool", "gms", "a search succeeded", searched).await;
    let ids: Vec<String> = (0..4).map(|i| format!("oss-{i}")).collect();
    for id in &ids {
        gms.create_request(&urn(id), messages::input(&file_recipe(), "oss-pool")).await;
    }
    gms.create_request(&urn("elsewhere"), messages::input(&file_recipe(), "another-pool")).await;
    let urns: Vec<String> = ids.iter().map(|id| urn(id)).collect();
    let results = wait_final(&gms, &urns).await;

    for id in &ids {
        assert_eq!(results[&urn(id)]["status"], "SUCCESS", "{id}");
        let writes = gms.claimed_writes(&urn(id)).await;
        let seen: Vec<(u16, &str, Option<&str>)> =
            writes.iter().map(|w| (w.http, w.status.as_str(), w.expected.as_deref())).collect();
        // The claim on a request with no result (PENDING on version -1), then every later write conditional on
        // the version the one before it made: -1, 1, 2, 3, ...
        assert_eq!(seen[0], (200, "PENDING", Some("-1")), "{id}: {seen:?}");
        let chain: Vec<String> = (0..seen.len()).map(|k| if k == 0 { "-1".into() } else { k.to_string() }).collect();
        let sent: Vec<&str> = seen.iter().map(|w| w.2.unwrap_or("none")).collect();
        assert_eq!(sent, chain, "{id}: {seen:?}");
        assert!(seen.iter().any(|w| w.1 == "RUNNING"), "{id}: {seen:?}");
        assert_eq!(seen.last().map(|w| (w.0, w.1)), Some((200, "SUCCESS")), "{id}: {seen:?}");
        assert!(writes.iter().all(|w| w.expected.is_some() && w.holder == writes[0].holder), "{id}: {writes:?}");
        assert!(writes.iter().all(|w| w.http == 200), "no write of the holder refused: {writes:?}");
    }
    let ours = tasks(&admin).await;
    assert_eq!(ours.len(), 4, "only the pool's requests were taken: {:?}", ours.keys());
    assert!(ours.values().all(|t| t.attempts == 1), "each ran once: {ours:?}");
    assert!(gms.claimed_writes(&urn("elsewhere")).await.is_empty(), "another pool's request is left alone");
    assert_clean(&gms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_not_claimed_while_no_agent_slot_is_free() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&["--index-lag-ms", "100"]).await;
    gms.serve_version("v1.2.0").await;
    let controller = controller(&cluster, &gms, "outpost.db", &["--gms-channel", "oss-pool"]).await;
    // One slot, held by a session that acks and never finishes.
    let mut ghost = Ghost::connect_alive(&cluster, &controller, "ghost", "oss-pool", 1).await;
    gms.create_request(&urn("first"), messages::input(&file_recipe(), "oss-pool")).await;
    let assign = ghost.next_assign().await;
    ghost.ack(&assign).await;
    gms.create_request(&urn("second"), messages::input(&file_recipe(), "oss-pool")).await;
    // Time passes visibly: the held request's claim is renewed by progress writes, twice after "second" exists.
    wait_until("two progress writes of the first request", Duration::from_secs(30), || async {
        let writes = gms.claimed_writes(&urn("first")).await;
        (writes.iter().filter(|w| w.status == "RUNNING" && w.http == 200).count() >= 3).then_some(())
    })
    .await;
    assert!(gms.claimed_writes(&urn("second")).await.is_empty(), "no free slot, so no claim");

    let admin = cluster.admin(&controller).await;
    let _agent = cluster.agent("w-1").pool("oss-pool").start(&controller);
    let results = wait_final(&gms, &[urn("second")]).await;
    assert_eq!(results[&urn("second")]["status"], "SUCCESS");
    assert_eq!(tasks(&admin).await["second"].worker_id, "w-1");
    assert_clean(&gms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controllers_claim_is_taken_over_after_the_ttl_and_its_late_writes_are_refused() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&["--index-lag-ms", "100"]).await;
    gms.serve_version("v1.2.0").await;
    let mut first = controller(&cluster, &gms, "first.db", &["--gms-channel", "oss-pool"]).await;
    let mut first_agent = cluster.agent("w-1").pool("oss-pool").start(&first);
    let run = cluster.held_run("orphan");
    gms.create_request(&urn("orphan"), messages::input(&run.recipe(), "oss-pool")).await;
    wait_until("the first controller to report RUNNING", Duration::from_secs(60), || async {
        let writes = gms.claimed_writes(&urn("orphan")).await;
        writes.iter().any(|w| w.status == "RUNNING" && w.http == 200).then_some(())
    })
    .await;
    let first_holder = gms.claimed_writes(&urn("orphan")).await[0].holder.clone().unwrap();
    // A second controller serving the pool, with a free slot: it lists the held request at start and watches it
    // (one batch read per watch interval). Its listing of held requests is slow on purpose (the default 30 s):
    // the takeover must come from the watch.
    let slow_listing = [("--gms-takeover-interval", "30s"), ("--claim-watch-interval", "500ms")];
    let second_flags = flags_with(&gms, &slow_listing, &["--gms-channel", "oss-pool"]);
    let second_flags: Vec<&str> = second_flags.iter().map(String::as_str).collect();
    let second = cluster.controller("second.db").args(&second_flags).start().await;
    let second_admin = cluster.admin(&second).await;
    let _second_agent = cluster.agent("w-2").pool("oss-pool").start(&second);
    wait_until("the second controller to watch the held request", Duration::from_secs(30), || async {
        (gms.calls_to("/batchGet").await >= 2).then_some(())
    })
    .await;
    assert!(
        gms.claimed_writes(&urn("orphan")).await.iter().all(|w| w.holder.as_deref() == Some(first_holder.as_str()))
    );

    first.proc.kill();
    let killed_ms = outpost_common::clock::unix_ms();
    cluster.kill_cli_processes("w-1");
    first_agent.kill();
    run.release();
    let results = wait_final(&gms, &[urn("orphan")]).await;
    // Taken over within the claim TTL (3 s) and a few seconds, not at the next listing (30 s).
    let takeover_ms = gms
        .timed_claimed_writes(&urn("orphan"))
        .await
        .into_iter()
        .find(|(w, _)| w.holder.as_deref() != Some(first_holder.as_str()))
        .map(|(_, at)| at)
        .unwrap();
    let took = takeover_ms - killed_ms;
    eprintln!("SIGKILL -> takeover write at GMS: {took} ms (claim TTL 3000 ms)");
    assert!(took <= 3_000 + 5_000, "taken over {took} ms after the kill");
    assert_eq!(results[&urn("orphan")]["status"], "SUCCESS");
    let writes = gms.claimed_writes(&urn("orphan")).await;
    let takeover = writes.iter().position(|w| w.holder.as_deref() != Some(first_holder.as_str())).unwrap();
    assert_eq!(writes[takeover].status, "PENDING", "{writes:?}");
    assert_eq!(writes[takeover].http, 200, "{writes:?}");
    assert!(writes[takeover].expected.as_deref().is_some_and(|v| v != "-1"), "a conditional takeover: {writes:?}");
    assert_eq!(tasks(&second_admin).await["orphan"].state, pb::TaskState::Succeeded as i32);

    // The first controller comes back on its file: its next write is refused, it learns the claim is gone,
    // stops its run and sends nothing more.
    let restarted = controller(&cluster, &gms, "first.db", &["--gms-channel", "oss-pool"]).await;
    let first_admin = cluster.admin(&restarted).await;
    let lost = wait_task(&first_admin, "orphan", "the lost claim to stop the run", |t| {
        t.delivery_failure.contains("claim lost")
    })
    .await;
    assert!(lost.delivery_failure.contains(&writes[takeover].holder.clone().unwrap()), "{lost:?}");
    let finished = wait_task(&first_admin, "orphan", "the run to stop", |t| is_terminal(t.state)).await;
    assert_eq!(finished.state, pb::TaskState::Cancelled as i32, "{finished:?}");
    let after = gms.claimed_writes(&urn("orphan")).await;
    let accepted_final: Vec<_> = after.iter().filter(|w| w.http == 200 && w.status == "SUCCESS").collect();
    assert_eq!(accepted_final.len(), 1, "one final result at GMS: {after:?}");
    assert!(
        after
            .iter()
            .filter(|w| w.holder.as_deref() == Some(first_holder.as_str()))
            .skip_while(|w| w.http == 200)
            .all(|w| w.http == 422),
        "every late write of the first controller was refused: {after:?}"
    );
    assert_eq!(gms.results().await[&urn("orphan")]["status"], "SUCCESS");
    assert_clean(&gms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_on_one_pool_sqs_and_gms_channel_run_fifty_requests_and_duplicates_once_each() {
    let cluster = Cluster::new(bins!());
    let gms = cluster.gms(&["--index-lag-ms", "300"]).await;
    gms.serve_version("v1.2.0").await;
    let moto = cluster.moto().await;
    let queue = moto.queue("shared-pool").await;
    let sqs_flags = moto.bridge_flags("oss-pool", &queue, "5s");
    let sqs_flags: Vec<&str> = sqs_flags.iter().map(String::as_str).collect();
    let by_sqs = controller(&cluster, &gms, "sqs.db", &sqs_flags).await;
    let by_gms = controller(&cluster, &gms, "gms.db", &["--gms-channel", "oss-pool"]).await;
    let (sqs_admin, gms_admin) = (cluster.admin(&by_sqs).await, cluster.admin(&by_gms).await);
    let _a = cluster.agent("w-sqs").pool("oss-pool").slots(3).start(&by_sqs);
    let _b = cluster.agent("w-gms").pool("oss-pool").slots(3).start(&by_gms);

    let ids: Vec<String> = (0..50).map(|i| format!("both-{i:02}")).collect();
    for id in &ids {
        let input = messages::input(&file_recipe(), "oss-pool");
        gms.create_request(&urn(id), input.clone()).await;
        // Every request arrives on SQS twice (SQS delivers at least once; DataHub may send twice).
        moto.send(&queue, &messages::mcl_input(id, &input)).await;
        moto.send(&queue, &messages::mcl_input(id, &input)).await;
    }
    let urns: Vec<String> = ids.iter().map(|id| urn(id)).collect();
    let results = wait_final(&gms, &urns).await;
    moto.wait_empty(&queue).await;

    let (ran_sqs, ran_gms) = (tasks(&sqs_admin).await, tasks(&gms_admin).await);
    for id in &ids {
        assert_eq!(results[&urn(id)]["status"], "SUCCESS", "{id}");
        let runs: Vec<&pb::Task> = ran_sqs.get(id).into_iter().chain(ran_gms.get(id)).collect();
        assert_eq!(runs.len(), 1, "{id} taken in by exactly one controller: {runs:?}");
        assert_eq!((runs[0].state, runs[0].attempts), (pb::TaskState::Succeeded as i32, 1), "{id}: {runs:?}");
        let writes = gms.claimed_writes(&urn(id)).await;
        let accepted: Vec<&ClaimedWrite> = writes.iter().filter(|w| w.http == 200).collect();
        assert_eq!(accepted.iter().filter(|w| w.status == "SUCCESS").count(), 1, "{id}: {writes:?}");
        // One claim won (later PENDING writes renew it while the request waits for a slot).
        let claims = accepted.iter().filter(|w| w.expected.as_deref() == Some("-1")).count();
        assert_eq!(claims, 1, "one claim won: {writes:?}");
        assert!(accepted.iter().all(|w| w.holder == accepted[0].holder), "one holder wrote: {writes:?}");
    }
    eprintln!("ran by the SQS controller: {}, by the GMS-channel controller: {}", ran_sqs.len(), ran_gms.len());
    assert!(!ran_sqs.is_empty() && !ran_gms.is_empty(), "both controllers took work");
    assert_clean(&gms).await;
}
