//! The background checkpoint thread: copies the WAL into the database file after writes, with its
//! own connection, so a batch's commit never waits for a checkpoint.

use std::path::Path;

use super::pool::open_connection;
use crate::store::{StoreError, StoreResult};

/// The background checkpoint thread (see [`Checkpointer::spawn`]).
pub(super) struct Checkpointer {
    /// Wakes the thread after a write; holds at most one wake-up. `None` once stopping.
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread that copies the WAL into the database file after writes, with its own
    /// connection, so a batch's commit never waits for a checkpoint (SQLite's automatic one runs in
    /// the committing connection). Passive: it never blocks the writer or the readers.
    pub(super) fn spawn(path: &Path) -> StoreResult<Self> {
        let conn = open_connection(path, false)?;
        let (wake, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    // Copying the WAL is ingestion's work: at ingestion's priority, not searches'.
                    crate::cpu::lower_current_thread();
                    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    match result {
                        Ok((wal_pages, copied)) => {
                            tracing::trace!(db = %shown, wal_pages, copied, "wal checkpoint")
                        }
                        Err(e) => tracing::warn!(db = %shown, error = %e, "wal checkpoint failed"),
                    }
                }
            })
            .map_err(|e| {
                StoreError::Unavailable(format!("starting the checkpoint thread of {}: {e}", path.display()))
            })?;
        Ok(Self { wake: Some(wake), thread: Some(thread) })
    }

    /// Asks for a checkpoint; a no-op when one is already pending.
    pub(super) fn nudge(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Checkpointer {
    /// Stops the thread and closes its connection before the writer's and readers' close, so the
    /// last of those still folds the WAL into the file and removes it, as SQLite does on close.
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
