"""The migrations and docs/analytics.md on a current ClickHouse release, in process (chDB).

The tests run the store against Debian's clickhouse-server 18.16; this checks that the same files
work on the engine of a current release (chDB embeds it; no server, no network):
- every migration in clickhouse/, rendered for a single server, applies in order, and the tables
  the store reads and writes exist with their engines;
- rendered for a cluster (`Replicated…MergeTree` with the `{shard}`/`{replica}` paths), every
  CREATE TABLE parses and is refused only for the macros a cluster node's config would give;
- migration 005 gives the fetch rows of an older release their outcome and counts from their
  error texts, and 006 leaves no table copy behind;
- every ```sql query of docs/analytics.md runs on the migrated schema after plans (versions, a
  tombstone, an offline and a never-online plan), their zones (one written twice) and fetches are
  inserted, and answers what they say.
Run by scripts/current-clickhouse.sh (part of `make test`).
"""
import glob
import os
import re
import sys

from chdb import session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split(sql):
    """Statements as the migration runner splits them (src/store/clickhouse/schema.rs)."""
    out, current = [], []
    for line in sql.splitlines():
        trimmed = line.strip()
        if trimmed.startswith("--") or not trimmed:
            continue
        current.append(line)
        if trimmed.endswith(";"):
            statement = "\n".join(current).strip().rstrip(";").strip()
            if statement:
                out.append(statement)
            current = []
    if current:
        out.append("\n".join(current).strip())
    return out


def render(statement, cluster, database):
    """The runner's placeholders: `{{on_cluster}}`, `{{database}}` and
    `{{engine <table> <Engine>(<args>)}}`."""
    statement = statement.replace("{{on_cluster}}", "").replace("{{database}}", database)

    def engine(m):
        table, spec = m.group(1), m.group(2)
        if not cluster:
            return spec
        name, _, args = spec.partition("(")
        args = args[:-1] if args.endswith(")") else args
        path = f"'/clickhouse/tables/{{shard}}/planfeed/{table}', '{{replica}}'"
        return f"Replicated{name}({path}{', ' + args if args else ''})"

    return re.sub(r"\{\{engine (\S+) ([^}]*)\}\}", engine, statement)


def tsv(session_, sql):
    return session_.query(sql, "TSV").bytes().decode()


# Rows as the writer leaves them (src/store/clickhouse/rows.rs), for the queries of the docs:
# plan 291 moved from June 30 to July 1 (a tombstone at its old day, same version); plan 322/1642
# went offline in its second version; 900/901 was never on sale online; 1591/1700 is upcoming.
PLANS = [
    # provider, base, plan, title, online, ever_online, start, end, day, min, max, version, superseded
    ("fever", 291, 291, "Camela en concierto", 1, 1, "2021-06-30 21:00:00", "2021-06-30 22:00:00", "15.00", "30.00", 1, 0),
    ("fever", 291, 291, "Camela en concierto", 1, 1, "2021-06-30 21:00:00", "2021-06-30 22:00:00", "17.50", "25.00", 2, 1),
    ("fever", 291, 291, "Camela en concierto", 1, 1, "2021-07-01 21:00:00", "2021-07-01 22:00:00", "17.50", "25.00", 2, 0),
    ("fever", 322, 1642, "Pantomima Full", 1, 1, "2021-02-10 20:00:00", "2021-02-10 21:30:00", "55.00", "55.00", 1, 0),
    ("fever", 322, 1642, "Pantomima Full", 0, 1, "2021-02-10 20:00:00", "2021-02-10 21:30:00", "55.00", "55.00", 2, 0),
    ("fever", 900, 901, "Never on sale", 0, 0, "2021-07-01 10:00:00", "2021-07-01 11:00:00", "1.00", "1.00", 1, 0),
    ("fever", 1591, 1642, "Los Morancos", 1, 1, "2021-07-31 20:00:00", "2021-07-31 21:00:00", "65.00", "75.00", 1, 0),
    ("fever", 1591, 1700, "Far future", 1, 1, "2099-01-01 20:00:00", "2099-01-01 21:00:00", "5.00", "5.00", 1, 0),
]
ZONES = [
    # base, plan, version, day, idx, zone_id, name, capacity, price
    (291, 291, 1, "2021-06-30", 0, 40, "Platea", 243, "20.00"),
    (291, 291, 1, "2021-06-30", 1, 38, "Grada 2", 100, "15.00"),
    (291, 291, 1, "2021-06-30", 2, 30, "A28", 90, "30.00"),
    (291, 291, 2, "2021-07-01", 0, 40, "Platea", 150, "25.00"),
    (291, 291, 2, "2021-07-01", 1, 38, "Grada 2", 0, "17.50"),
    (322, 1642, 1, "2021-02-10", 0, 311, "A42", 2, "55.00"),
    (322, 1642, 2, "2021-02-10", 0, 311, "A42", 0, "55.00"),
    (900, 901, 1, "2021-07-01", 0, 1, "Pista", 0, "1.00"),
    (1591, 1642, 1, "2021-07-31", 0, 186, "Amfiteatre", 0, "75.00"),
    (1591, 1642, 1, "2021-07-31", 1, 186, "Amfiteatre", 12, "65.00"),
    (1591, 1700, 1, "2099-01-01", 0, 7, "Pista", 100, "5.00"),
]

# What each documented query answers on those rows (current releases print decimals without
# trailing zeros; only the columns that do not depend on the run).
EXPECTED = {
    "1": ["2021-02-10\t1", "2021-07-01\t1", "2021-07-31\t1", "2099-01-01\t1"],
    "2": ["1\t0\t40\tPlatea\t243\t20", "1\t1\t38\tGrada 2\t100\t15", "1\t2\t30\tA28\t90\t30",
          "2\t0\t40\tPlatea\t150\t25", "2\t1\t38\tGrada 2\t0\t17.5"],
    "3": ["Far future\t2099-01-01 20:00:00\t5\tfever\t1591\t1700"],
    "4": ["fever\t291\t291\tCamela en concierto\t2021-07-01 21:00:00\t38\tGrada 2\t17.5",
          "fever\t322\t1642\tPantomima Full\t2021-02-10 20:00:00\t311\tA42\t55",
          "fever\t1591\t1642\tLos Morancos\t2021-07-31 20:00:00\t186\tAmfiteatre\t75"],
    "5": ["fever\t2021-06-01 10:00:00\t3\t2\t0.667\t100", "fever\t2021-06-01 11:00:00\t1\t1\t1\t30000"],
    "6": ["fever\t2021-06-01\thttp_error\t1\t0\t\\N\t\\N",
          "fever\t2021-06-01\tok\t1\t0\t\\N\t\\N",
          "fever\t2021-06-01\tstore_rejected\t1\t0\t2\t3",
          "fever\t2021-06-01\ttimeout\t1\t0\t0\t0"],
    "7": ["fever\t322\t1642\tPantomima Full\t2021-02-10 20:00:00"],
    "8": ["fever\t291\t291\t15\t17.5\t2"],
    "9": ["fever\t322\t1642\t0\t1", "fever\t1591\t1642\t12\t2", "fever\t1591\t1700\t100\t1",
          "fever\t291\t291\t150\t2"],
    "10": ["fever\t1591\t1642\tLos Morancos\t65\t75\t10", "fever\t291\t291\tCamela en concierto\t17.5\t25\t7.5",
           "fever\t322\t1642\tPantomima Full\t55\t55\t0", "fever\t1591\t1700\tFar future\t5\t5\t0"],
}
# Columns compared per query (the others hold the run's clock).
COLUMNS = {"2": slice(1, None), "10": slice(0, 7)}


def insert_rows(single):
    for (provider, base, plan, title, online, ever, start, end, low, high, version, superseded) in PLANS:
        day = start[:10]
        single.query(f"""INSERT INTO plans (provider, base_plan_id, plan_id, id, title, online, ever_online,
            start_local, end_local, start_utc, end_utc, event_date, event_day, sold_out, min_price, max_price,
            min_price_text, max_price_text, version, superseded, fetched_at)
            VALUES ('{provider}', {base}, {plan}, generateUUIDv4(), '{title}', {online}, {ever},
            '{start}', '{end}', '{start}', '{end}', '{day}', toInt32(toDate('{day}')), 0, {low}, {high},
            '{low}', '{high}', {version}, {superseded}, '2021-06-01 10:00:00')""")
    # The last zones twice: a retried write before the engine merges.
    for rows in (ZONES, ZONES[-2:]):
        values = ", ".join(
            f"('fever', {b}, {p}, {v}, '{d}', {i}, {z}, '{n}', {c}, {price}, 1, '{price}', '2021-06-01 10:00:00')"
            for (b, p, v, d, i, z, n, c, price) in rows)
        single.query(f"""INSERT INTO zones (provider, base_plan_id, plan_id, version, event_date, idx, zone_id,
            name, capacity, price, numbered, price_text, fetched_at) VALUES {values}""")
    single.query("""INSERT INTO fetches (provider, started_at, duration_ms, error, outcome, plans_spooled,
        plans_dropped) VALUES ('fever', '2021-06-01 11:00:00', 30000,
        'fetch timed out after 30s while reading the body (10 bytes read)', 'timeout', 0, 0)""")


def migrate_with_older_fetches(single, migrations):
    """Applies every migration for a single server, the fetch log holding rows of a release before
    005 (no outcome, no counts) when 005 applies: they get the outcome their error tells."""
    database = tsv(single, "SELECT currentDatabase()").strip()
    for path in migrations:
        if os.path.basename(path).startswith("005"):
            single.query("""INSERT INTO fetches (provider, started_at, duration_ms, error) VALUES
                ('fever', '2021-06-01 10:00:00', 100, NULL),
                ('fever', '2021-06-01 10:05:00', 100, 'provider answered HTTP 503 Service Unavailable (after 2 retries)'),
                ('fever', '2021-06-01 10:10:00', 100,
                 'provider answered HTTP 500; store rejected 3 plans (written 40, spooled 2): type mismatch')""")
        for statement in split(open(path).read()):
            single.query(render(statement, cluster=False, database=database))
        print("applied", os.path.basename(path))


def check_cluster_rendering(single, migrations):
    """Every replicated CREATE TABLE parses (refused only for the macros a node's config gives)."""
    # One engine per process: the cluster rendering goes to a database of its own.
    single.query("CREATE DATABASE IF NOT EXISTS cluster_check")
    parsed = 0
    for path in migrations:
        for statement in split(open(path).read()):
            if "{{engine" not in statement:
                continue
            try:
                rendered = render(statement, cluster=True, database="cluster_check")
                single.query(re.sub(r"CREATE TABLE IF NOT EXISTS (\w+)", r"CREATE TABLE IF NOT EXISTS cluster_check.\1", rendered))
                raise AssertionError("a replicated table without a cluster config was created")
            except RuntimeError as e:
                message = str(e)
                assert "No macro 'shard'" in message, f"{os.path.basename(path)}: {message[:300]}"
                parsed += 1
    print(f"cluster rendering: {parsed} CREATE TABLE statements parse (refused only for the missing macros)")


def main(data_dir):
    migrations = sorted(glob.glob(os.path.join(ROOT, "clickhouse", "*.sql")))
    single = session.Session(data_dir)
    print("ClickHouse", tsv(single, "SELECT version()").strip())
    migrate_with_older_fetches(single, migrations)
    tables = tsv(single, "SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name")
    # The tables the store reads and writes, the views, and no table copy (006 dropped them).
    assert tables.splitlines() == [
        "day_changes\tReplacingMergeTree", "fetches\tMergeTree", "plans\tReplacingMergeTree",
        "plans_current\tView", "zones\tReplacingMergeTree", "zones_current\tView",
    ], tables
    check_cluster_rendering(single, migrations)

    insert_rows(single)
    docs = open(os.path.join(ROOT, "docs", "analytics.md")).read()
    queries = re.findall(r"^### (\d+)\..*?```sql\n(.*?)```", docs, re.S | re.M)
    assert len(queries) == len(EXPECTED), f"docs/analytics.md has {len(queries)} numbered queries"
    for number, query in queries:
        rows = tsv(single, query.strip().rstrip(";")).splitlines()
        columns = COLUMNS.get(number, slice(None))
        got = ["\t".join(r.split("\t")[columns]) for r in rows]
        assert got == EXPECTED[number], f"query {number}: {got}"
    print(f"docs/analytics.md: {len(queries)} queries answer as expected")


if __name__ == "__main__":
    main(sys.argv[1])
