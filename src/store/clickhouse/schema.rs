//! The schema: migrations embedded from `clickhouse/` at the repository root, applied in order by
//! [`ClickHouseStore::migrate`] and recorded in `schema_migrations`. One migration may wait: the
//! drop of the table copies ([`super::copies`]) while an operator keeps them.

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use super::copies::DROP_COPIES;
use super::ClickHouseStore;
use crate::store::{StoreError, StoreResult};

/// Embedded migrations, applied in order; a name is never reused or edited once released.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    ("001_init", include_str!("../../../clickhouse/001_init.sql")),
    ("002_exact_days", include_str!("../../../clickhouse/002_exact_days.sql")),
    ("003_day_changes", include_str!("../../../clickhouse/003_day_changes.sql")),
    ("004_analyst_schema", include_str!("../../../clickhouse/004_analyst_schema.sql")),
    ("005_analyst_views", include_str!("../../../clickhouse/005_analyst_views.sql")),
    // Verified first, and waits while `keep_superseded_tables` is set (see `copies`).
    (DROP_COPIES, include_str!("../../../clickhouse/006_drop_copies.sql")),
];

/// Where `schema_migrations` comes from; rendered like a migration.
const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations {{on_cluster}} \
    (name String, applied_at DateTime('UTC')) ENGINE = {{engine schema_migrations MergeTree}} ORDER BY name";

impl ClickHouseStore {
    /// Applies the embedded migrations not yet recorded in `schema_migrations`, in order, and
    /// returns the names it applied (empty when the schema is current). In cluster mode every
    /// statement is rendered for the cluster ([`render`]); a current schema runs no DDL at all, so
    /// a start with a replica down does not wait on it. The drop of the table copies is verified
    /// first and refused when a row of a copy is not in its current table; with
    /// `keep_superseded_tables` it is skipped (not recorded: it runs at a start without it).
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        self.migrate_to(MIGRATIONS[MIGRATIONS.len() - 1].0).await
    }

    /// Like [`Self::migrate`], stopping after migration `last` (an upgrade test starts from an
    /// older schema this way). An unknown name is refused.
    pub async fn migrate_to(&self, last: &str) -> StoreResult<Vec<String>> {
        let end = MIGRATIONS
            .iter()
            .position(|(name, _)| *name == last)
            .ok_or_else(|| StoreError::Permanent(format!("no clickhouse migration named {last:?}")))?;
        let layout = Layout { cluster: self.cluster.as_deref(), database: &self.database };
        let exists: u64 = self
            .fetch_one("schema check", |c| {
                c.query("SELECT count() FROM system.tables WHERE database = ? AND name = 'schema_migrations'")
                    .bind(&self.database)
            })
            .await?;
        if exists == 0 {
            self.execute(&render(MIGRATIONS_TABLE, &layout)?).await?;
        }
        let done: Vec<String> = self
            .fetch_all("applied migrations", |c| c.query("SELECT DISTINCT name FROM schema_migrations"))
            .await?;
        let mut applied = Vec::new();
        for (name, sql) in &MIGRATIONS[..=end] {
            if done.iter().any(|d| d == name) {
                continue;
            }
            if *name == DROP_COPIES {
                if self.keep_copies {
                    tracing::info!(migration = name, database = %self.database,
                        "keeping the table copies plans_v1, plans_v2, zones_v1 \
                         (store.clickhouse.keep_superseded_tables): the migration waits");
                    continue;
                }
                self.verify_copies().await.map_err(|e| in_migration(name, e))?;
            }
            self.apply(name, sql, &layout).await?;
            applied.push((*name).to_string());
        }
        Ok(applied)
    }

    /// Runs one migration's statements and records it.
    async fn apply(&self, name: &str, sql: &str, layout: &Layout<'_>) -> StoreResult<()> {
        for statement in split_statements(sql) {
            let statement = render(&statement, layout)?;
            self.execute(&statement).await.map_err(|e| in_migration(name, e))?;
        }
        let row = MigrationRow { name: name.to_string(), applied_at: Utc::now() };
        let row = &row;
        self.endpoints
            .on_any("migration record", |c| async move {
                self.insert_rows(&c, "schema_migrations", std::slice::from_ref(row)).await
            })
            .await?;
        tracing::info!(migration = name, database = %self.database, cluster = ?self.cluster, "applied clickhouse migration");
        Ok(())
    }
}

/// A permanent error of migration `name` says so.
fn in_migration(name: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Permanent(m) => StoreError::Permanent(format!("migration {name}: {m}")),
        other => other,
    }
}

/// What the placeholders of a migration become: the same files serve a single server and a
/// cluster.
pub(super) struct Layout<'a> {
    pub(super) cluster: Option<&'a str>,
    pub(super) database: &'a str,
}

/// Fills a statement's placeholders:
/// - `{{on_cluster}}`: nothing on a single server, `ON CLUSTER <cluster>` in cluster mode;
/// - `{{database}}`: the database, for the tables a view reads and the statements a cluster runs
///   on every replica (in a session of its own there, whose current database is the server's
///   default);
/// - `{{engine <table> <Engine>(<args>)}}`: `<Engine>(<args>)` on a single server; in cluster mode
///   `Replicated<Engine>('/clickhouse/tables/{shard}/<database>/<table>', '{replica}', <args>)`,
///   the replica's path in ZooKeeper taken from the server's `<macros>`.
pub(super) fn render(statement: &str, layout: &Layout<'_>) -> StoreResult<String> {
    let mut out = String::with_capacity(statement.len() + 64);
    let mut rest = statement;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find("}}")
            .ok_or_else(|| StoreError::Permanent(format!("unclosed placeholder in migration: {rest}")))?;
        out.push_str(&fill(rest[open + 2..open + close].trim(), layout)?);
        rest = &rest[open + close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn fill(placeholder: &str, layout: &Layout<'_>) -> StoreResult<String> {
    if placeholder == "on_cluster" {
        return Ok(layout.cluster.map(|c| format!("ON CLUSTER {c}")).unwrap_or_default());
    }
    if placeholder == "database" {
        return Ok(layout.database.to_string());
    }
    let bad = || StoreError::Permanent(format!("unknown migration placeholder {{{{{placeholder}}}}}"));
    let spec = placeholder.strip_prefix("engine ").ok_or_else(bad)?;
    let (table, engine) = spec.trim().split_once(' ').ok_or_else(bad)?;
    let engine = engine.trim();
    if layout.cluster.is_none() {
        return Ok(engine.to_string());
    }
    let (name, args) = match engine.split_once('(') {
        Some((name, args)) => (name, args.trim_end_matches(')').trim()),
        None => (engine, ""),
    };
    let path = format!("'/clickhouse/tables/{{shard}}/{}/{table}', '{{replica}}'", layout.database);
    Ok(if args.is_empty() {
        format!("Replicated{name}({path})")
    } else {
        format!("Replicated{name}({path}, {args})")
    })
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

    #[test]
    fn placeholders_render_per_mode() {
        let single = Layout { cluster: None, database: "db" };
        let cluster = Layout { cluster: Some("pf"), database: "db" };
        let sql =
            "CREATE TABLE t {{on_cluster}} (a UInt8) ENGINE = {{engine t ReplacingMergeTree(v)}} ORDER BY a";
        assert_eq!(
            render(sql, &single).unwrap(),
            "CREATE TABLE t  (a UInt8) ENGINE = ReplacingMergeTree(v) ORDER BY a"
        );
        assert_eq!(
            render(sql, &cluster).unwrap(),
            "CREATE TABLE t ON CLUSTER pf (a UInt8) ENGINE = \
             ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/t', '{replica}', v) ORDER BY a"
        );
        assert_eq!(
            render("{{engine z MergeTree}}", &cluster).unwrap(),
            "ReplicatedMergeTree('/clickhouse/tables/{shard}/db/z', '{replica}')"
        );
        assert_eq!(
            render("CREATE VIEW {{database}}.v {{on_cluster}} AS SELECT 1 FROM {{database}}.t", &cluster)
                .unwrap(),
            "CREATE VIEW db.v ON CLUSTER pf AS SELECT 1 FROM db.t"
        );
        assert!(render("{{nope}}", &single).is_err());
        assert!(render("{{on_cluster", &single).is_err());
        for (_, sql) in MIGRATIONS {
            for statement in split_statements(sql) {
                assert!(!render(&statement, &cluster).unwrap().contains("{{"), "{statement}");
            }
        }
    }
}
