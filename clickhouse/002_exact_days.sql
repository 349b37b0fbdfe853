-- Every valid date, 0001-01-01 to 9999-12-31 in any provider zone (so UTC instants and days up to
-- 10000-01-01), stored exactly. `Date` and `DateTime` only span 1970..2105, so `plans` gains exact
-- integer columns and is keyed by them:
--   event_day                    Int32, days since 1970-01-01 (negative before), the search key;
--   start_us, end_us             Int64, the UTC instants in microseconds since 1970;
--   start_local_us, end_local_us Int64, the provider-local wall times read as UTC, in microseconds;
--   sell_from_us, sell_to_us     Nullable(Int64), likewise; written_us Int64, when the row was written.
-- The Date/DateTime columns stay for ad-hoc SQL, clamped to 1970-01-01 .. 2105-12-31 (exact inside
-- that span). `event_date` (clamped) still partitions by month: plans outside the span share the
-- first or last partition. The sort key changes, so the rows are copied into a new table, which
-- then takes the name `plans`; the old table stays as `plans_v1` (drop it once satisfied).
CREATE TABLE IF NOT EXISTS plans_v2 {{on_cluster}}
(
    provider String,
    base_plan_id UInt64,
    plan_id UInt64,
    id UUID,
    title String,
    online UInt8,
    ever_online UInt8,
    organizer_company_id Nullable(UInt64),
    start_local DateTime('UTC'),
    end_local DateTime('UTC'),
    start_utc DateTime('UTC'),
    end_utc DateTime('UTC'),
    event_date Date,
    sell_from Nullable(DateTime('UTC')),
    sell_to Nullable(DateTime('UTC')),
    sold_out UInt8,
    min_price Nullable(String),
    max_price Nullable(String),
    zone_count UInt32,
    version UInt64,
    hash UInt64,
    superseded UInt8,
    written_at DateTime('UTC'),
    event_day Int32,
    start_us Int64,
    end_us Int64,
    start_local_us Int64,
    end_local_us Int64,
    sell_from_us Nullable(Int64),
    sell_to_us Nullable(Int64),
    written_us Int64
)
ENGINE = {{engine plans_v2 ReplacingMergeTree(version)}}
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_day, provider, base_plan_id, plan_id);

INSERT INTO plans_v2
SELECT provider, base_plan_id, plan_id, id, title, online, ever_online, organizer_company_id,
       start_local, end_local, start_utc, end_utc, event_date, sell_from, sell_to, sold_out,
       min_price, max_price, zone_count, version, hash, superseded, written_at,
       toInt32(event_date),
       toInt64(start_utc) * 1000000, toInt64(end_utc) * 1000000,
       toInt64(start_local) * 1000000, toInt64(end_local) * 1000000,
       toInt64(sell_from) * 1000000, toInt64(sell_to) * 1000000,
       toInt64(written_at) * 1000000
FROM plans;

RENAME TABLE plans TO plans_v1, plans_v2 TO plans {{on_cluster}};
