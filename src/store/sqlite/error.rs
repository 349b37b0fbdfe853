//! Sorting rusqlite's errors into the store's kinds: worth retrying soon (busy, locked), the store's
//! own refusal (read-only, permissions, a full disk, I/O errors, a damaged file) or a rejection of
//! the request (a value it cannot hold).

use std::fmt::Display;

use rusqlite::ErrorCode;

use crate::store::{Refusal, StoreError, StoreResult};

/// Attaches what the store was doing to a rusqlite error and sorts it into transient or permanent.
pub(super) trait SqlContext<T> {
    fn ctx<D: Display>(self, what: impl FnOnce() -> D) -> StoreResult<T>;
}

impl<T> SqlContext<T> for rusqlite::Result<T> {
    fn ctx<D: Display>(self, what: impl FnOnce() -> D) -> StoreResult<T> {
        self.map_err(|e| {
            let msg = format!("{}: {e}", what());
            if let Some(cause) = refusal(&e) {
                StoreError::refused(cause, msg)
            } else if is_transient(&e) {
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
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::OperationInterrupted
                | ErrorCode::SchemaChanged
        ),
        _ => false,
    }
}

/// The store's file or its place refuses, whatever is written.
fn refusal(e: &rusqlite::Error) -> Option<Refusal> {
    let rusqlite::Error::SqliteFailure(f, _) = e else { return None };
    Some(match f.code {
        ErrorCode::ReadOnly => Refusal::ReadOnly,
        ErrorCode::PermissionDenied | ErrorCode::AuthorizationForStatementDenied => Refusal::Permission,
        ErrorCode::DiskFull => Refusal::Space,
        ErrorCode::SystemIoFailure
        | ErrorCode::CannotOpen
        | ErrorCode::DatabaseCorrupt
        | ErrorCode::NotADatabase => Refusal::Io,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::types::Type;

    use super::*;

    fn failure(code: std::os::raw::c_int) -> rusqlite::Result<()> {
        Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None))
    }

    #[test]
    fn busy_and_locked_are_transient_the_file_s_faults_refusals_the_rest_permanent() {
        for code in [rusqlite::ffi::SQLITE_BUSY, rusqlite::ffi::SQLITE_LOCKED] {
            let err = failure(code).ctx(|| "writing plan p/1/2").unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        }
        for (code, cause) in [
            (rusqlite::ffi::SQLITE_READONLY, Refusal::ReadOnly),
            (rusqlite::ffi::SQLITE_PERM, Refusal::Permission),
            (rusqlite::ffi::SQLITE_FULL, Refusal::Space),
            (rusqlite::ffi::SQLITE_IOERR, Refusal::Io),
            (rusqlite::ffi::SQLITE_CORRUPT, Refusal::Io),
        ] {
            let err = failure(code).ctx(|| "writing plan p/1/2").unwrap_err();
            assert_eq!(err.refusal(), Some(cause), "{err}");
            assert!(err.is_transient(), "a refusal is waited out: {err}");
        }
        for code in [rusqlite::ffi::SQLITE_CONSTRAINT, rusqlite::ffi::SQLITE_MISMATCH] {
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
