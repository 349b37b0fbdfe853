-- The analyst schema: prices are numbers, fetch times are instants.
--   min_price, max_price (plans), price (zones)  Nullable(Decimal(18, 4)): sum, avg and compare them
--       directly. Exact to 4 decimals (a feed price with more is truncated there) and up to 14
--       integer digits (a larger one is NULL there);
--   min_price_text, max_price_text, price_text    the feed's exact decimal text ("20.00", "7.5"),
--       which the API prints as it came;
--   fetched_at                                    DateTime('UTC'), when the fetch that observed the
--       version started (to the second; the version's high bits keep the milliseconds).
-- Columns change type, so both tables are copied into new ones that then take the names; the old
-- tables stay as `plans_v2` and `zones_v1` (drop them once satisfied).
CREATE TABLE IF NOT EXISTS plans_v3 {{on_cluster}}
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
    min_price Nullable(Decimal(18, 4)),
    max_price Nullable(Decimal(18, 4)),
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
    written_us Int64,
    min_price_text Nullable(String),
    max_price_text Nullable(String),
    fetched_at DateTime('UTC')
)
ENGINE = {{engine plans_v3 ReplacingMergeTree(version)}}
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_day, provider, base_plan_id, plan_id);

INSERT INTO plans_v3
SELECT provider, base_plan_id, plan_id, id, title, online, ever_online, organizer_company_id,
       start_local, end_local, start_utc, end_utc, event_date, sell_from, sell_to, sold_out,
       if((isNull(min_price) OR if(position(min_price, '.') = 0, length(min_price), toUInt64(position(min_price, '.') - 1)) > 14), NULL,
          toDecimal64(if((isNull(min_price) OR if(position(min_price, '.') = 0, length(min_price), toUInt64(position(min_price, '.') - 1)) > 14), '0', if(position(min_price, '.') = 0, min_price, substring(min_price, 1, position(min_price, '.') + 4))), 4))
          AS min_price_number,
       if((isNull(max_price) OR if(position(max_price, '.') = 0, length(max_price), toUInt64(position(max_price, '.') - 1)) > 14), NULL,
          toDecimal64(if((isNull(max_price) OR if(position(max_price, '.') = 0, length(max_price), toUInt64(position(max_price, '.') - 1)) > 14), '0', if(position(max_price, '.') = 0, max_price, substring(max_price, 1, position(max_price, '.') + 4))), 4))
          AS max_price_number,
       zone_count, version, hash, superseded, written_at, event_day, start_us, end_us,
       start_local_us, end_local_us, sell_from_us, sell_to_us, written_us,
       min_price, max_price, toDateTime(intDiv(bitShiftRight(version, 20), 1000), 'UTC')
FROM plans;

RENAME TABLE plans TO plans_v2, plans_v3 TO plans {{on_cluster}};

CREATE TABLE IF NOT EXISTS zones_v2 {{on_cluster}}
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
    price Nullable(Decimal(18, 4)),
    numbered UInt8,
    price_text String,
    fetched_at DateTime('UTC')
)
ENGINE = {{engine zones_v2 ReplacingMergeTree}}
PARTITION BY toYYYYMM(event_date)
ORDER BY (event_date, provider, base_plan_id, plan_id, version, idx);

INSERT INTO zones_v2
SELECT provider, base_plan_id, plan_id, version, event_date, idx, zone_id, name, capacity,
       if((isNull(price) OR if(position(price, '.') = 0, length(price), toUInt64(position(price, '.') - 1)) > 14), NULL,
          toDecimal64(if((isNull(price) OR if(position(price, '.') = 0, length(price), toUInt64(position(price, '.') - 1)) > 14), '0', if(position(price, '.') = 0, price, substring(price, 1, position(price, '.') + 4))), 4))
          AS price_number,
       numbered, price, toDateTime(intDiv(bitShiftRight(version, 20), 1000), 'UTC')
FROM zones;

RENAME TABLE zones TO zones_v1, zones_v2 TO zones {{on_cluster}};
