//! The writer: one SQLite connection on a thread of its own that runs a whole job (a turn's transaction) at a
//! time, with cached prepared statements. One hand-off between threads per job instead of one per statement —
//! on a busy machine each hand-off waits for a CPU. Knows nothing of what the jobs do.

use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::Error;

type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// A handle on the writer thread; the thread ends at [`Writer::close`] (or when the handle is gone).
#[derive(Debug)]
pub(super) struct Writer {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
        let thread = std::thread::Builder::new()
            .name("outpost-sqlite-writer".into())
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    job(&mut connection);
                }
                // Dropping the connection closes it (the last connection to close checkpoints the WAL).
            })
            .map_err(|e| Error::Writer(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer { jobs: Mutex::new(Some(jobs)), thread: Mutex::new(Some(thread)) })
    }

    /// Lets the jobs already handed in finish, closes the connection and waits for the thread to end. Later
    /// jobs fail with "the writer is closed".
    pub(super) async fn close(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Runs `job` on the writer's connection and returns what it returned.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut rusqlite::Connection) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            let _ = reply.send(job(connection));
        });
        let sent = match self.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(Error::Writer("the writer is closed".into()));
        }
        answer.await.map_err(|_| Error::Writer("the writer thread is gone".into()))
    }
}

/// A database error from the writer's connection.
pub(super) fn writer_error(error: rusqlite::Error) -> Error {
    Error::Writer(error.to_string())
}
