//! The store's transactions: a job runs in one write transaction on the writer thread (all or nothing), and what
//! it did beyond its rows (`Effects`: outbox rows added, a result recorded) is announced once it is durable. The
//! base every domain file (`tasks`, `attempts`, `outbox`, `claims`, …) and the turn build on; imports none of them.

use rusqlite::{Transaction, TransactionBehavior};

use super::writer::{execute, writer_error};
use super::{Error, Store};

/// What a transaction did beyond its rows, to announce once it is durable; and whether results are reported.
#[derive(Debug, Default)]
pub(super) struct Effects {
    /// GMS reporting is on: state changes write outbox rows.
    pub reporting: bool,
    pub outbox_added: bool,
    /// A terminal result was delivered (or recorded, with reporting off): SQS messages may go.
    pub reported: bool,
}

impl Store {
    /// Runs `job` in one write transaction on the writer (all or nothing), then announces what it did.
    pub(super) async fn transaction<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Transaction<'_>, &mut Effects) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        self.start_transaction(job).await
    }

    /// Hands a transaction to the writer now; the future resolves once it committed (and what it did was
    /// announced, from the writer thread) or failed.
    pub(super) fn start_transaction<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Transaction<'_>, &mut Effects) -> Result<T, Error> + Send + 'static,
    ) -> impl Future<Output = Result<T, Error>> + Send + Sync + 'static {
        let reporting = self.reporting;
        let (outbox_added, reported) = (self.outbox_added.clone(), self.reported.clone());
        let committed = self.writer.submit(move |connection| {
            let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(writer_error)?;
            let mut effects = Effects { reporting, ..Effects::default() };
            let value = job(&tx, &mut effects)?;
            tx.commit().map_err(writer_error)?;
            if effects.outbox_added {
                outbox_added.notify_one();
            }
            if effects.reported {
                reported.send_modify(|n| *n = n.wrapping_add(1));
            }
            Ok::<_, Error>(value)
        });
        async move { committed.await? }
    }
}

impl Store {
    /// One statement in a transaction of its own (bookkeeping outside the engine's turns).
    pub(super) async fn execute_alone(
        &self,
        sql: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<(), Error> {
        self.transaction(move |tx, _| execute(tx, sql, rusqlite::params_from_iter(values)).map(|_| ())).await
    }
}
