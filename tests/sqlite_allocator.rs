//! SQLite allocates with mimalloc once planfeed has set it up before any connection: a process of
//! its own (this test binary), as the setting only takes before SQLite starts.

use planfeed::store::sqlite::{configure_library, SqliteStore};

#[test]
fn sqlite_allocates_with_mimalloc_when_set_up_before_any_connection() {
    assert!(configure_library(), "SQLite refused the allocator: something opened a connection first");
    let dir = tempfile::tempdir().unwrap();
    let _store = SqliteStore::open(&dir.path().join("planfeed.db")).unwrap();
    // SAFETY: one allocation through SQLite's allocator, checked and freed at once.
    unsafe {
        let p = rusqlite::ffi::sqlite3_malloc(100);
        assert!(!p.is_null());
        assert!(libmimalloc_sys::mi_is_in_heap_region(p), "SQLite's allocation is not mimalloc's");
        assert!(rusqlite::ffi::sqlite3_msize(p) >= 100);
        rusqlite::ffi::sqlite3_free(p);
    }
    // A second call changes nothing and says what the first did.
    assert!(configure_library());
}
