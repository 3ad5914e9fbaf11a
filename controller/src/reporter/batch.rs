//! Reporting in batches: due writes of tasks that are not claimed at GMS (no conditional write to make) go out
//! together, one `ingestProposalBatch` call per batch of up to `--gms-batch-size` writes (and a few megabytes).
//! A batch GMS refuses, or that fails on the way, is sent again row by row (`Reporter::deliver`), so a refused or
//! failed write is handled alone exactly as before. Rows of one task are never in one batch (a read of the outbox
//! returns each task's oldest row only), so a task's writes stay in order.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use futures::stream;
use outpost_common::ids::TaskId;
use tracing::{debug, info, warn};

use super::Reporter;
use crate::gms;
use crate::metrics::{GmsKind, GmsOutcome};
use crate::store::{Delivery, OutboxEntry, OutboxKind};

/// At most this many bytes of aspects in one batch call (GMS takes requests of up to 15 MB by default).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

impl Reporter {
    /// Whether `entry` may go in a batch: its task is not claimed at GMS.
    pub(super) fn batchable(&self, entry: &OutboxEntry) -> bool {
        self.config.batch_size > 1
            && self.batching.load(Ordering::Relaxed)
            && entry.claim.is_none()
            && !entry.claim_lost
    }

    /// Delivers `rows` (batchable, of distinct tasks) in batches; each with what became of it.
    pub(super) async fn deliver_batched<'a>(&self, rows: &[&'a OutboxEntry]) -> Vec<(&'a OutboxEntry, Delivery)> {
        let terminal: Vec<TaskId> =
            rows.iter().filter(|r| r.kind == OutboxKind::Terminal).map(|r| r.task_id.clone()).collect();
        let tasks = match self.store.task_rows(&terminal).await {
            Ok(tasks) => tasks,
            Err(e) => {
                warn!(error = %e, "cannot read tasks for a batch of GMS writes; sending them one by one");
                return self.one_by_one(rows).await;
            }
        };
        // Each row with its aspect; a row that cannot go in a batch (its task gone, claimed since, no result)
        // goes alone.
        let mut items: Vec<(&'a OutboxEntry, String)> = Vec::with_capacity(rows.len());
        let mut alone = Vec::new();
        for &row in rows {
            let task = tasks.iter().find(|t| t.request.id == row.task_id);
            let aspect = match (row.kind, task) {
                (OutboxKind::Running, _) => self.aspect(row, None, false),
                (OutboxKind::Terminal, Some(task)) if task.request.claim.is_none() && !task.claim_lost => {
                    self.aspect(row, Some(task), false)
                }
                (OutboxKind::Terminal, _) => {
                    alone.push(row);
                    continue;
                }
            };
            match aspect {
                // Serialized once: its length sizes the batch, its text goes in the call.
                Ok(aspect) => items.push((row, aspect.to_string())),
                Err(_) => alone.push(row),
            }
        }
        // Collected first: a lazy map of closures in a stream trips the compiler's Send check of the reporter task.
        let batches: Vec<_> = chunks(items, self.config.batch_size).into_iter().map(|b| self.send_batch(b)).collect();
        let sent: Vec<Vec<_>> = stream::iter(batches).buffer_unordered(self.config.concurrency.max(1)).collect().await;
        let mut outcomes: Vec<_> = sent.into_iter().flatten().collect();
        outcomes.extend(self.one_by_one(&alone).await);
        outcomes
    }

    /// Sends one batch under its tasks' locks; on any failure, each row again on its own.
    async fn send_batch<'a>(&self, batch: Vec<(&'a OutboxEntry, String)>) -> Vec<(&'a OutboxEntry, Delivery)> {
        let locks: Vec<_> = batch.iter().map(|(row, _)| self.locks.of(&row.task_id)).collect();
        let mut held = Vec::with_capacity(locks.len());
        for lock in locks {
            held.push(lock.lock_owned().await);
        }
        let (rows, aspects): (Vec<&'a OutboxEntry>, Vec<String>) = batch.into_iter().unzip();
        let results: Vec<(String, String)> = rows.iter().map(|row| row.task_id.urn()).zip(aspects).collect();
        let sent = self.gms.ingest_results(&results).await;
        drop(held);
        match sent {
            Ok(()) => {
                if rows.iter().any(|r| r.kind == OutboxKind::Terminal) {
                    crate::crash_point!("crash::after_gms_write");
                }
                for row in &rows {
                    let kind = if row.kind == OutboxKind::Terminal { GmsKind::Terminal } else { GmsKind::Running };
                    self.metrics.gms_write(kind, GmsOutcome::Delivered);
                    if row.kind == OutboxKind::Terminal {
                        self.logs.forget(&row.task_id);
                    }
                }
                info!(writes = rows.len(), "reported to GMS in one batch");
                rows.into_iter().map(|row| (row, Delivery::Delivered)).collect()
            }
            Err(e) => {
                if matches!(e, gms::Error::NoSuchEndpoint { .. }) {
                    warn!(error = %e, "this GMS has no ingestProposalBatch: writes go one by one from now on");
                    self.batching.store(false, Ordering::Relaxed);
                } else {
                    debug!(error = %e, writes = rows.len(), "a batch of GMS writes failed; sending them one by one");
                }
                self.one_by_one(&rows).await
            }
        }
    }

    /// Delivers rows one by one (each as before batching), concurrently.
    pub(super) async fn one_by_one<'a>(&self, rows: &[&'a OutboxEntry]) -> Vec<(&'a OutboxEntry, Delivery)> {
        let deliveries: Vec<_> = rows.iter().map(|&entry| async move { (entry, self.deliver(entry).await) }).collect();
        stream::iter(deliveries).buffer_unordered(self.config.concurrency.max(1)).collect().await
    }
}

/// Splits items into batches of at most `size` items and about [`MAX_BATCH_BYTES`] of aspect text.
fn chunks<T>(items: Vec<(T, String)>, size: usize) -> Vec<Vec<(T, String)>> {
    let mut batches: Vec<Vec<(T, String)>> = Vec::new();
    let mut bytes = 0;
    for (item, aspect) in items {
        let length = aspect.len();
        let full = batches.last().is_none_or(|b| b.len() >= size.max(1) || bytes + length > MAX_BATCH_BYTES);
        if full {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += length;
        if let Some(batch) = batches.last_mut() {
            batch.push((item, aspect));
        }
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn batches_hold_at_most_their_size_and_bytes() {
        let small: Vec<(u32, String)> = (0..7).map(|i| (i, "\"x\"".to_owned())).collect();
        let sizes: Vec<usize> = chunks(small, 3).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let big = "y".repeat(MAX_BATCH_BYTES / 2);
        let large: Vec<(u32, String)> = (0..3).map(|i| (i, Value::from(big.clone()).to_string())).collect();
        let sizes: Vec<usize> = chunks(large, 100).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1], "two halves and their quotes are over the byte cap");
    }
}
