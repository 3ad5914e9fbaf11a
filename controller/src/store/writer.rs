//! The writer: one SQLite connection on a thread of its own that runs a whole job (a turn's transaction) at a
//! time, with cached prepared statements. One hand-off between threads per job instead of one per statement —
//! on a busy machine each hand-off waits for a CPU. Knows nothing of what the jobs do.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::Error;

type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// A handle on the writer thread; the thread ends when every handle is gone.
#[derive(Debug)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Opens a connection to the (already migrated) database file and starts the thread.
    pub(super) fn open(path: &Path) -> Result<Writer, Error> {
        let mut connection = rusqlite::Connection::open(path).map_err(writer_error)?;
        connection.busy_timeout(Duration::from_secs(5)).map_err(writer_error)?;
        // Grants and terminal transitions must survive a crash before they are acknowledged.
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(writer_error)?;
        connection.set_prepared_statement_cache_capacity(64);
        let (jobs, receiver) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("outpost-sqlite-writer".into())
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    job(&mut connection);
                }
            })
            .map_err(|e| Error::Writer(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Runs `job` on the writer's connection and returns what it returned.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut rusqlite::Connection) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move |connection| {
                let _ = reply.send(job(connection));
            }))
            .map_err(|_| Error::Writer("the writer thread is gone".into()))?;
        answer.await.map_err(|_| Error::Writer("the writer thread is gone".into()))
    }
}

/// A database error from the writer's connection.
pub(super) fn writer_error(error: rusqlite::Error) -> Error {
    Error::Writer(error.to_string())
}
