//! The schema: migrations embedded from `clickhouse/` at the repository root, applied in order by
//! [`ClickHouseStore::migrate`] and recorded in `schema_migrations`.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::retry::timed;
use super::{ClickHouseStore, QUERY_TIMEOUT};
use crate::store::{StoreError, StoreResult};

/// Embedded migrations, applied in order; a name is never reused or edited once released.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../../../clickhouse/001_init.sql")),
    ("002_exact_days", include_str!("../../../clickhouse/002_exact_days.sql")),
    ("003_day_changes", include_str!("../../../clickhouse/003_day_changes.sql")),
];

impl ClickHouseStore {
    /// Applies the embedded migrations not yet recorded in `schema_migrations`, in order, and
    /// returns the names it applied (empty when the schema is current).
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        self.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name String, applied_at DateTime('UTC')) \
             ENGINE = MergeTree ORDER BY name",
        )
        .await?;
        let done: Vec<String> = timed(
            QUERY_TIMEOUT,
            self.client.query("SELECT DISTINCT name FROM schema_migrations").fetch_all(),
        )
        .await?;
        let mut applied = Vec::new();
        for (name, sql) in MIGRATIONS {
            if done.iter().any(|d| d == name) {
                continue;
            }
            for statement in split_statements(sql) {
                self.execute(&statement).await.map_err(|e| match e {
                    StoreError::Permanent(m) => StoreError::Permanent(format!("migration {name}: {m}")),
                    other => other,
                })?;
            }
            let row = MigrationRow { name: (*name).to_string(), applied_at: Utc::now() };
            self.insert_rows("schema_migrations", std::slice::from_ref(&row)).await?;
            tracing::info!(migration = name, database = %self.database, "applied clickhouse migration");
            applied.push((*name).to_string());
        }
        Ok(applied)
    }
}

/// Splits a migration file at `;` line ends, dropping comment-only lines.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let stmt = current.trim().trim_end_matches(';').trim().to_string();
            if !stmt.is_empty() {
                out.push(stmt);
            }
            current.clear();
        }
    }
    let rest = current.trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

#[derive(Debug, Row, Serialize, Deserialize)]
struct MigrationRow {
    name: String,
    #[serde(with = "clickhouse::serde::chrono::datetime")]
    applied_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_split_into_statements() {
        let statements = split_statements(MIGRATIONS[0].1);
        assert_eq!(statements.len(), 3);
        assert!(statements.iter().all(|s| s.starts_with("CREATE TABLE IF NOT EXISTS")));
        assert!(statements.iter().all(|s| !s.ends_with(';')));
    }
}
