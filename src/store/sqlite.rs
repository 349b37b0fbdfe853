//! Embedded store: one SQLite file.
