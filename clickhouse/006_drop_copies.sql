-- The full copies that 002 and 004 left of the tables they rebuilt: plans_v1 (plans as 001 made
-- it), plans_v2 (as 002 made it) and zones_v1 (zones as 001 made it). The migration runner
-- (src/store/clickhouse/copies.rs) runs these statements only after checking that every row of
-- each copy is in the current table (the same key at the same version and content, or a newer
-- version of the key), and refuses with the first row it misses otherwise. With
-- store.clickhouse.keep_superseded_tables = true the copies stay and this migration waits.
DROP TABLE IF EXISTS {{database}}.plans_v1 {{on_cluster}};
DROP TABLE IF EXISTS {{database}}.plans_v2 {{on_cluster}};
DROP TABLE IF EXISTS {{database}}.zones_v1 {{on_cluster}};
