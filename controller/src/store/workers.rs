//! Workers we have seen: what they declared in their last Hello, and whether they are connected. Changes are
//! plain functions over the writer's transaction (parts of the engine's turns); reads use the read pool.

use std::collections::BTreeMap;

use outpost_common::ids::{PoolId, WorkerId};
use rusqlite::{Transaction, params};
use sqlx::FromRow;

use super::row::narrow;
use super::writer::{execute, writer_error};
use super::{Error, Store};

/// What a worker declared when it connected.
#[derive(Clone, Debug)]
pub struct WorkerSeen {
    pub worker_id: WorkerId,
    pub pools: Vec<PoolId>,
    pub slots: u32,
    pub version: String,
    pub labels: BTreeMap<String, String>,
}

/// A stored worker.
#[derive(Clone, Debug)]
pub struct WorkerRecord {
    pub seen: WorkerSeen,
    pub first_seen_ms: i64,
    pub connected_since_ms: Option<i64>,
    pub last_seen_ms: i64,
}

#[derive(FromRow)]
struct WorkerRow {
    worker_id: String,
    pools_json: String,
    slots: i64,
    version: String,
    labels_json: String,
    first_seen_ms: i64,
    connected_since_ms: Option<i64>,
    last_seen_ms: i64,
}

impl TryFrom<WorkerRow> for WorkerRecord {
    type Error = Error;
    fn try_from(row: WorkerRow) -> Result<Self, Error> {
        let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("worker {}: {e}", row.worker_id));
        let pools: Vec<String> = serde_json::from_str(&row.pools_json).map_err(|e| corrupt(&e))?;
        Ok(WorkerRecord {
            seen: WorkerSeen {
                worker_id: WorkerId::parse(&row.worker_id).map_err(|e| corrupt(&e))?,
                pools: pools.iter().map(|p| PoolId::parse(p)).collect::<Result<_, _>>().map_err(|e| corrupt(&e))?,
                slots: narrow("slots", row.slots).map_err(|e| corrupt(&e))?,
                version: row.version.clone(),
                labels: serde_json::from_str(&row.labels_json).map_err(|e| corrupt(&e))?,
            },
            first_seen_ms: row.first_seen_ms,
            connected_since_ms: row.connected_since_ms,
            last_seen_ms: row.last_seen_ms,
        })
    }
}

/// Records that a worker connected with this declaration.
pub(super) fn connected(tx: &Transaction<'_>, worker: &WorkerSeen, now_ms: i64) -> Result<(), Error> {
    let pools: Vec<&str> = worker.pools.iter().map(PoolId::as_str).collect();
    let pools_json = serde_json::to_string(&pools).map_err(|e| Error::Corrupt(e.to_string()))?;
    let labels_json = serde_json::to_string(&worker.labels).map_err(|e| Error::Corrupt(e.to_string()))?;
    execute(
        tx,
        "INSERT INTO workers (worker_id, pools_json, slots, version, labels_json, first_seen_ms, \
         connected_since_ms, last_seen_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (worker_id) DO UPDATE SET pools_json = excluded.pools_json, slots = excluded.slots, \
         version = excluded.version, labels_json = excluded.labels_json, \
         connected_since_ms = excluded.connected_since_ms, last_seen_ms = excluded.last_seen_ms",
        params![
            worker.worker_id.as_str(),
            pools_json,
            i64::from(worker.slots),
            worker.version,
            labels_json,
            now_ms,
            now_ms,
            now_ms
        ],
    )?;
    Ok(())
}

/// Records that a worker's session ended.
pub(super) fn disconnected(tx: &Transaction<'_>, worker: &WorkerId, now_ms: i64) -> Result<(), Error> {
    execute(
        tx,
        "UPDATE workers SET connected_since_ms = NULL, last_seen_ms = ? WHERE worker_id = ?",
        params![now_ms, worker.as_str()],
    )?;
    Ok(())
}

impl Store {
    /// Marks every worker disconnected (at start-up: no session survives a controller restart).
    pub async fn all_workers_disconnected(&self) -> Result<(), Error> {
        self.transaction(|tx, _| {
            tx.execute("UPDATE workers SET connected_since_ms = NULL", []).map_err(writer_error)?;
            Ok(())
        })
        .await
    }

    /// Every worker ever seen, by worker ID.
    pub async fn workers(&self) -> Result<Vec<WorkerRecord>, Error> {
        let rows: Vec<WorkerRow> =
            sqlx::query_as("SELECT * FROM workers ORDER BY worker_id").fetch_all(&self.reads).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }
}
