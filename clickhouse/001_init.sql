-- planfeed schema, first version. Keep to the subset that runs on ClickHouse 18.16 (Debian) and on a
-- current server: no DateTime64, Map, Bool, Date32, LowCardinality, no server-side parameters.
-- Statements are separated by a `;` at the end of a line (the HTTP interface runs one at a time).
-- Placeholders make the same text serve one server and a cluster (src/store/clickhouse/schema.rs):
-- `{{on_cluster}}` becomes `ON CLUSTER <name>` in cluster mode, `{{engine <table> <Engine>(args)}}`
-- becomes `Replicated<Engine>(<ZooKeeper path of the table>, <replica>, args)` there.

-- One row per written plan version. ReplacingMergeTree(version) keeps the newest row per
-- (event_date, provider, base_plan_id, plan_id); a plan that moved to another day gets a tombstone
-- (superseded = 1) at its old day with the new version, so the old day's row is replaced too.
-- ever_online is sticky: the store carries it from the stored rows of the key into each new row.
-- Search reads `FINAL` over the partitions of the requested days only.
CREATE TABLE IF NOT EXISTS plans {{on_cluster}}
(
    provider String,
    base_plan_id UInt64,
    plan_id UInt64,
    id UUID,
    title String,
    online UInt8,
    ever_online UInt8,
    organizer_company_id Nullable(UInt64),
    -- Provider-local wall time, stored as-is (read it as UTC to get the feed's digits back).
    start_local DateTime('UTC'),
    end_local DateTime('UTC'),
    start_utc DateTime('UTC'),
    end_utc DateTime('UTC'),
    event_date Date,
    sell_from Nullable(DateTime('UTC')),
    sell_to Nullable(DateTime('UTC')),
    sold_out UInt8,
    -- Min/max zone price as exact decimal text with the feed's scale ("20.00", "7.5"): any precision
    -- comes back as it went in. For arithmetic: toDecimal64OrNull(min_price, 4), toFloat64OrNull(...).
    min_price Nullable(String),
    max_price Nullable(String),
    zone_count UInt32,
    version UInt64,
    hash UInt64,
    superseded UInt8,
    written_at DateTime('UTC')
)
ENGINE = {{engine plans ReplacingMergeTree(version)}}
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, provider, base_plan_id, plan_id);

-- Zones of every written plan version, for ad-hoc price and capacity history. `idx` is the zone's
-- position in the plan (zone ids may repeat); the replacing engine collapses the identical rows a
-- retried batch may write twice.
CREATE TABLE IF NOT EXISTS zones {{on_cluster}}
(
    provider String,
    base_plan_id UInt64,
    plan_id UInt64,
    version UInt64,
    event_date Date,
    idx UInt32,
    zone_id UInt64,
    name String,
    capacity UInt32,
    -- Exact decimal text, as for plans.min_price.
    price String,
    numbered UInt8
)
ENGINE = {{engine zones ReplacingMergeTree}}
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, provider, base_plan_id, plan_id, version, idx);

-- One row per fetch attempt: provider reliability over time.
CREATE TABLE IF NOT EXISTS fetches {{on_cluster}}
(
    provider String,
    started_at DateTime('UTC'),
    started_at_ns UInt32,
    duration_ms UInt64,
    http_status Nullable(UInt16),
    bytes UInt64,
    plans_seen UInt64,
    plans_written UInt64,
    plans_unchanged UInt64,
    plans_skipped UInt64,
    error Nullable(String)
)
ENGINE = {{engine fetches MergeTree}}
PARTITION BY toYYYYMM(started_at)
ORDER BY (provider, started_at);
