//! Sorting rusqlite's errors into the store's two kinds: worth retrying (busy, locked, I/O) or not.

use std::fmt::Display;

use rusqlite::ErrorCode;

use crate::store::{StoreError, StoreResult};

/// Attaches what the store was doing to a rusqlite error and sorts it into transient or permanent.
pub(super) trait SqlContext<T> {
    fn ctx<D: Display>(self, what: impl FnOnce() -> D) -> StoreResult<T>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn ctx<D: Display>(self, what: impl FnOnce() -> D) -> StoreResult<T> {
        self.map_err(|e| {
            let msg = format!("{}: {e}", what());
            if is_transient(&e) {
                StoreError::Unavailable(msg)
            } else {
                StoreError::Permanent(msg)
            }
        })
    }
}

fn is_transient(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::OperationInterrupted
                | ErrorCode::SchemaChanged
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::types::Type;

    use super::*;

    fn failure(code: std::os::raw::c_int) -> rusqlite::Result<()> {
        Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn busy_locked_and_io_errors_are_transient_the_rest_permanent() {
        for code in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_LOCKED, rusqlite::ffi::SQLITE_IOERR] {
            let err = failure(code).ctx(|| "writing plan p/1/2").unwrap_err();
            assert!(err.is_transient(), "{err}");
        }
        for code in
            [rusqlite::ffi::SQLITE_CONSTRAINT, rusqlite::ffi::SQLITE_MISMATCH, rusqlite::ffi::SQLITE_CORRUPT]
        {
            let err = failure(code).ctx(|| "writing plan p/1/2").unwrap_err();
            assert!(!err.is_transient(), "{err}");
        }
        let err = Err::<(), _>(rusqlite::Error::InvalidColumnType(0, "id".into(), Type::Null))
            .ctx(|| "reading plans of 2030-01-01..=2030-01-01")
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Permanent(m) if m.starts_with("reading plans of 2030-01-01")),
            "{err}"
        );
    }
}
