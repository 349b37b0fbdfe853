-- Views for analysts, and the fetch log's outcome.
--
-- plans_current: one row per searchable plan (observed on sale online at least once), the values
-- of its latest version: the rows a search would show, without FINAL, superseded or version in
-- the query. Reads `plans FINAL` itself, so it is exact before the engine merges.
--   start_local, end_local, sell_from, sell_to  the feed's wall-clock times (provider-local),
--                                               read as UTC to get the feed's digits;
--   start_utc, end_utc                          the instants; event_date, the UTC day of the start.
--   The Date/DateTime columns hold 1970..2105; a plan outside shows the span's edge (the exact
--   values stay in plans' *_us and event_day columns).
-- zones_current: the zones of each plan of plans_current, in its latest version.
-- Views are not replicated: `{{on_cluster}}` creates them on every replica; `plans` and `zones`
-- are named with their database there, since the statement runs in another session on each one.
CREATE VIEW IF NOT EXISTS {{database}}.plans_current {{on_cluster}} AS
SELECT
    provider, base_plan_id, plan_id, id, title, organizer_company_id,
    online, sold_out,
    start_local, end_local, start_utc, end_utc, event_date,
    sell_from, sell_to,
    min_price, max_price, zone_count,
    version, fetched_at
FROM {{database}}.plans FINAL
WHERE superseded = 0 AND ever_online = 1;

CREATE VIEW IF NOT EXISTS {{database}}.zones_current {{on_cluster}} AS
SELECT provider, base_plan_id, plan_id, version, event_date, idx, zone_id, name, capacity, price, numbered, fetched_at
FROM {{database}}.zones FINAL
WHERE (provider, base_plan_id, plan_id, version) IN (
    SELECT provider, base_plan_id, plan_id, version FROM {{database}}.plans_current);

-- fetches.outcome: how the fetch ended, the label of planfeed_fetches_total{outcome} (ok,
-- http_error, timeout, connect, truncated, too_large, body_error, bad_feed, skipped, backpressure,
-- pipeline, shutdown, store_rejected, spool_full); plans_spooled, plans_dropped: its observations
-- handed to the spool (replayed later) and rejected for good by the store. The writer fills them.
-- Rows written before get them from these DEFAULT expressions, computed from the error text when
-- read (the same rules as FetchOutcome::of_legacy_error in src/domain.rs): no error is ok; the
-- writer's notes ("store rejected N plans (written W, spooled S)", "store and spool refused
-- writes") win; else the opening of the text names the failure; a request or body read failure is
-- a timeout when its text says "timed out"; a text no rule knows is a chunk the parser could not
-- read (bad_feed). The counts are known only from a "store rejected" note: NULL otherwise.
ALTER TABLE {{database}}.fetches {{on_cluster}}
    ADD COLUMN outcome String DEFAULT multiIf(
        isNull(error), 'ok',
        ifNull(error, '') LIKE '%store rejected %', 'store_rejected',
        ifNull(error, '') LIKE '%store and spool refused writes%', 'spool_full',
        ifNull(error, '') LIKE 'circuit open:%', 'skipped',
        ifNull(error, '') LIKE 'cannot open %', 'connect',
        ifNull(error, '') LIKE 'provider answered HTTP %', 'http_error',
        ifNull(error, '') LIKE 'fetch timed out after % waiting for the pipeline%', 'backpressure',
        ifNull(error, '') LIKE 'fetch timed out after %', 'timeout',
        ifNull(error, '') LIKE 'request to %' AND (ifNull(error, '') LIKE '%timed out%' OR ifNull(error, '') LIKE '%no body bytes from the provider%'), 'timeout',
        ifNull(error, '') LIKE 'request to %', 'connect',
        ifNull(error, '') LIKE 'body read failed after %' AND (ifNull(error, '') LIKE '%timed out%' OR ifNull(error, '') LIKE '%no body bytes from the provider%'), 'timeout',
        ifNull(error, '') LIKE 'body read failed after %', 'body_error',
        ifNull(error, '') LIKE 'body exceeds provider.max_body_bytes%', 'too_large',
        ifNull(error, '') LIKE 'body truncated after %', 'truncated',
        ifNull(error, '') LIKE 'fetch interrupted by shutdown%', 'shutdown',
        ifNull(error, '') LIKE 'pipeline is shutting down%' OR ifNull(error, '') LIKE 'no parser is running%', 'pipeline',
        'bad_feed'),
    ADD COLUMN plans_spooled Nullable(UInt64) DEFAULT if(
        extract(ifNull(error, ''), 'store rejected ([0-9]+)') = '', NULL,
        toUInt64OrNull(extract(ifNull(error, ''), ', spooled ([0-9]+)'))),
    ADD COLUMN plans_dropped Nullable(UInt64) DEFAULT toUInt64OrNull(extract(ifNull(error, ''), 'store rejected ([0-9]+)'));
