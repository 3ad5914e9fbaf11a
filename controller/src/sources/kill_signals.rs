//! KILL signals from DataHub: every poll interval, batch-read `dataHubExecutionRequestSignal` of the tasks not
//! yet finished (as DataHub Cloud's executor does, only while there are any) and cancel those whose signal is
//! KILL; and stop the tasks whose claim at GMS passed to another controller (the reporter records that). A
//! source: it turns GMS facts into scheduler calls and decides nothing itself.

use std::time::Duration;

use outpost_common::ids::TaskId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::gms;
use crate::scheduler::Scheduler;
use crate::store::Store;

/// URNs per batch read.
const BATCH: usize = 100;

pub async fn run(scheduler: Scheduler, store: Store, gms: gms::Client, interval: Duration, token: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => poll(&scheduler, &store, &gms).await,
        }
    }
}

async fn poll(scheduler: &Scheduler, store: &Store, gms: &gms::Client) {
    match store.lost_claims().await {
        Ok(lost) => {
            for task in lost {
                match scheduler.cancel(&task, "another controller took over this request at GMS", None).await {
                    Ok(()) => info!(task = %task, "claim lost at GMS: stopping the run here"),
                    Err(e) if e.is_finished() => {}
                    Err(e) => warn!(task = %task, error = %e, "claim lost: cancel failed"),
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list lost claims"),
    }
    let live = match store.live_task_ids().await {
        Ok(live) => live,
        Err(e) => {
            warn!(error = %e, "cannot list live tasks for signal polling");
            return;
        }
    };
    for chunk in live.chunks(BATCH) {
        let urns: Vec<String> = chunk.iter().map(TaskId::urn).collect();
        let found = match gms.batch_get(&urns, &["dataHubExecutionRequestSignal"]).await {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %e, "polling KILL signals failed");
                return;
            }
        };
        for (urn, aspects) in found {
            let Some(signal) = aspects.get("dataHubExecutionRequestSignal") else { continue };
            if signal["signal"].as_str() != Some("KILL") {
                continue;
            }
            let Ok(task) = TaskId::parse_id_or_urn(&urn) else { continue };
            match scheduler.cancel(&task, "KILL signal from DataHub", None).await {
                Ok(()) => info!(task = %task, "KILL signal: cancelling"),
                Err(e) if e.is_finished() => {}
                Err(e) => warn!(task = %task, error = %e, "KILL signal: cancel failed"),
            }
        }
    }
}
