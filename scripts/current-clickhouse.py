"""The migrations and docs/analytics.md on a current ClickHouse release, in process (chDB).

The tests run the store against Debian's clickhouse-server 18.16; this checks that the same files
work on the engine of a current release (chDB embeds it; no server, no network):
- every migration in clickhouse/, rendered for a single server, applies in order, and the tables
  the store reads and writes exist with their engines;
- rendered for a cluster (`Replicated…MergeTree` with the `{shard}`/`{replica}` paths), every
  CREATE TABLE parses and is refused only for the macros a cluster node's config would give;
- every ```sql query of docs/analytics.md runs on the migrated schema after a plan, its zones and
  its fetch are inserted, and reads them back.
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


def render(statement, cluster):
    """The runner's placeholders: `{{on_cluster}}` and `{{engine <table> <Engine>(<args>)}}`."""
    statement = statement.replace("{{on_cluster}}", "")

    def engine(m):
        table, spec = m.group(1), m.group(2)
        if not cluster:
            return spec
        name, _, args = spec.partition("(")
        args = args[:-1] if args.endswith(")") else args
        path = f"'/clickhouse/tables/{{shard}}/planfeed/{table}', '{{replica}}'"
        return f"Replicated{name}({path}{', ' + args if args else ''})"

    return re.sub(r"\{\{engine (\S+) ([^}]*)\}\}", engine, statement)


def main(data_dir):
    migrations = sorted(glob.glob(os.path.join(ROOT, "clickhouse", "*.sql")))
    single = session.Session(data_dir)
    print("ClickHouse", single.query("SELECT version()", "TSV").bytes().decode().strip())
    for path in migrations:
        for statement in split(open(path).read()):
            single.query(render(statement, cluster=False))
        print("applied", os.path.basename(path))
    tables = single.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name", "TSV"
    ).bytes().decode()
    for needed in ("plans\tReplacingMergeTree", "zones\tReplacingMergeTree", "fetches\tMergeTree",
                   "day_changes\tReplacingMergeTree"):
        assert needed in tables.splitlines(), f"missing {needed!r} in:\n{tables}"

    # One engine per process: the cluster rendering goes to a database of its own.
    single.query("CREATE DATABASE IF NOT EXISTS cluster_check")
    parsed = 0
    for path in migrations:
        for statement in split(open(path).read()):
            if "{{engine" not in statement:
                continue
            try:
                rendered = render(statement, cluster=True)
                single.query(re.sub(r"CREATE TABLE IF NOT EXISTS (\w+)", r"CREATE TABLE IF NOT EXISTS cluster_check.\1", rendered))
                raise AssertionError("a replicated table without a cluster config was created")
            except RuntimeError as e:
                message = str(e)
                assert "No macro 'shard'" in message, f"{os.path.basename(path)}: {message[:300]}"
                parsed += 1
    print(f"cluster rendering: {parsed} CREATE TABLE statements parse (refused only for the missing macros)")

    single.query("""INSERT INTO plans (provider, base_plan_id, plan_id, id, title, online, ever_online,
        start_local, end_local, start_utc, end_utc, event_date, sold_out, min_price, max_price,
        min_price_text, max_price_text, version, fetched_at)
        VALUES ('fever', 291, 291, generateUUIDv4(), 'Camela en concierto', 1, 1,
        '2021-06-30 21:00:00', '2021-06-30 22:00:00', '2021-06-30 21:00:00', '2021-06-30 22:00:00',
        '2021-06-30', 0, 15.00, 30.00, '15.00', '30.00', 1, '2021-06-01 10:00:00')""")
    docs = open(os.path.join(ROOT, "docs", "analytics.md")).read()
    queries = re.findall(r"```sql\n(.*?)```", docs, re.S)
    assert queries, "docs/analytics.md has no ```sql blocks"
    for i, query in enumerate(queries, 1):
        single.query(query.strip().rstrip(";"), "TSV")
    print(f"docs/analytics.md: {len(queries)} queries run")
    rows = single.query("SELECT title, min_price FROM plans FINAL", "TSV").bytes().decode()
    assert rows.strip() == "Camela en concierto\t15", rows


if __name__ == "__main__":
    main(sys.argv[1])
