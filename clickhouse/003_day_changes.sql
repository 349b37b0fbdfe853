-- The change feed: per event day, when it was last written (the writer's clock, microseconds since
-- 1970). Processes that do not write (api replicas) poll max(written_us) every second and read the
-- days written since their last poll, then reload exactly those days. One row per day once merged,
-- so a poll reads a table the size of the calendar of plans, never the plans themselves.
CREATE TABLE IF NOT EXISTS day_changes {{on_cluster}}
(
    event_day Int32,
    written_us Int64
)
ENGINE = {{engine day_changes ReplacingMergeTree(written_us)}}
ORDER BY event_day;
