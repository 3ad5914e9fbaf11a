//! The writer: one SQLite connection on a thread of its own that runs a whole job (a turn's transaction) at a
//! time, with cached prepared statements. One hand-off between threads per job instead of one per statement —
//! on a busy machine each hand-off waits for a CPU. Knows nothing of what the jobs do.

use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::Error;

type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// What the writer has run: statements (transaction control left out) and commits, since it opened.
#[derive(Debug, Default)]
pub struct WriteCounts {
    pub statements: AtomicU64,
    pub commits: AtomicU64,
}

thread_local! {
    /// Statements and commits the writer thread's connection ran since the last job ended (SQLite's trace hook
    /// takes a plain function, so the count lives with the thread that owns the connection).
    static TRACED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// SQLite's statement trace: counts each statement as it starts running.
fn traced(event: rusqlite::trace::TraceEvent<'_>) {
    let rusqlite::trace::TraceEvent::Stmt(_, sql) = event else { return };
    let word = sql.trim_start().split_ascii_whitespace().next().unwrap_or_default().to_ascii_uppercase();
    TRACED.with(|counts| {
        let (statements, commits) = counts.get();
        counts.set(match word.as_str() {
            "COMMIT" | "END" => (statements, commits + 1),
            "BEGIN" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" => (statements, commits),
            _ => (statements + 1, commits),
        });
    });
}

/// A handle on the writer thread; the thread ends at [`Writer::close`] (or when the handle is gone), or when a
/// job panics (the connection is dropped with its open transaction rolled back; later jobs fail).
#[derive(Debug)]
pub(super) struct Writer {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// How the thread ended: `Ok` after a close, `Err(why)` after a panic.
    ended: Mutex<Option<oneshot::Receiver<Result<(), Error>>>>,
    pub(super) counts: Arc<WriteCounts>,
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
        connection.trace_v2(rusqlite::trace::TraceEventCodes::SQLITE_TRACE_STMT, Some(traced));
        let counts = Arc::new(WriteCounts::default());
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (ended, ending) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("outpost-sqlite-writer".into())
            .spawn(move || {
                let mut outcome = Ok(());
                while let Ok(job) = receiver.recv() {
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut connection)));
                    if let Err(panic) = ran {
                        outcome = Err(Error::WriterPanicked(outpost_common::errors::panic_text(panic.as_ref())));
                        break;
                    }
                }
                // Dropping the connection closes it (the last connection to close checkpoints the WAL).
                drop(connection);
                let _ = ended.send(outcome);
            })
            .map_err(|e| Error::Writer(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            jobs: Mutex::new(Some(jobs)),
            thread: Mutex::new(Some(thread)),
            ended: Mutex::new(Some(ending)),
            counts,
        })
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

    /// Resolves when the thread ends: `Ok` after [`Writer::close`], `Err(why)` if a job panicked. Only the first
    /// caller is told; later ones wait forever.
    pub(super) async fn ended(&self) -> Result<(), Error> {
        let ending = self.ended.lock().unwrap_or_else(|e| e.into_inner()).take();
        match ending {
            Some(ending) => ending.await.unwrap_or(Err(Error::WriterGone)),
            None => std::future::pending().await,
        }
    }

    /// Hands `job` to the writer now; the future resolves to what it returned.
    pub(super) fn submit<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut rusqlite::Connection) -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, Error>> + Send + Sync + 'static {
        let (reply, answer) = oneshot::channel();
        let counts = self.counts.clone();
        let job: Job = Box::new(move |connection| {
            let value = job(connection);
            // Counted before the answer goes out: whoever awaits the job sees its statements counted.
            let (statements, commits) = TRACED.with(|traced| traced.replace((0, 0)));
            counts.statements.fetch_add(statements, Ordering::Relaxed);
            counts.commits.fetch_add(commits, Ordering::Relaxed);
            let _ = reply.send(value);
        });
        let sent = match self.jobs.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        async move {
            if !sent {
                return Err(Error::Writer("the writer is closed".into()));
            }
            answer.await.map_err(|_| Error::Writer("the writer thread is gone".into()))
        }
    }

    /// Runs `job` on the writer's connection and returns what it returned.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut rusqlite::Connection) -> T + Send + 'static,
    ) -> Result<T, Error> {
        self.submit(job).await
    }
}

/// Runs one statement (prepared once, then cached) in the writer's transaction: how many rows it changed.
pub(super) fn execute(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<usize, Error> {
    tx.prepare_cached(sql).and_then(|mut statement| statement.execute(params)).map_err(writer_error)
}

/// A database error from the writer's connection.
pub(super) fn writer_error(error: rusqlite::Error) -> Error {
    Error::Writer(error.to_string())
}
