"""psycopg (PyPI, the PostgreSQL driver most Python tools use) against Footfall's wire
protocol. Driven by crates/footfall/tests/sql_wire.rs: reads its settings as JSON from
argv[1], prints what it saw as one JSON object; the Rust test asserts on it."""

import json
import sys
import time

import psycopg

cfg = json.loads(sys.argv[1])
out = {}


def connect(db, key, **kw):
    return psycopg.connect(host="127.0.0.1", port=cfg["port"], dbname=db, user="analyst",
                           password=key, autocommit=True, connect_timeout=10, **kw)


# Logins that must fail: another property's key, a write key, an unknown key, a property
# that does not exist.
refused = {}
for name, db, key in [
    ("other property's read key", cfg["db"], cfg["other_key"]),
    ("write key", cfg["db"], cfg["write_key"]),
    ("unknown key", cfg["db"], "ff_read_nonsense"),
    ("unknown property", "FF-NOPE", cfg["key"]),
]:
    try:
        connect(db, key).close()
        refused[name] = "CONNECTED"
    except psycopg.OperationalError as e:
        refused[name] = str(e)
out["refused_logins"] = refused

conn = connect(cfg["db"], cfg["key"])
out["tls"] = conn.pgconn.ssl_in_use
cur = conn.cursor()

# What BI tools send when they connect (psql, Grafana, Metabase, DBeaver): version,
# database, schema, the tables and their columns through information_schema and
# pg_catalog.
cur.execute("SELECT current_database(), current_schema()")
out["current"] = list(cur.fetchone())
cur.execute("SELECT version()")
out["version"] = cur.fetchone()[0]
cur.execute("SHOW server_version")
out["server_version"] = cur.fetchone()[0]
cur.execute(
    "SELECT table_name, table_type FROM information_schema.tables "
    "WHERE table_schema = 'public' ORDER BY table_name")
out["information_schema_tables"] = [list(r) for r in cur.fetchall()]
cur.execute(
    "SELECT column_name, data_type FROM information_schema.columns "
    "WHERE table_schema = 'public' AND table_name = 'visits' ORDER BY ordinal_position")
out["visits_columns"] = [r[0] for r in cur.fetchall()]
cur.execute(
    "SELECT c.relname, c.relkind FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = 'public' ORDER BY c.relname")
out["pg_class"] = [list(r) for r in cur.fetchall()]
cur.execute("SELECT datname FROM pg_catalog.pg_database ORDER BY datname")
out["pg_database"] = [r[0] for r in cur.fetchall()]
cur.execute(
    "SELECT a.attname FROM pg_catalog.pg_attribute a "
    "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
    "WHERE c.relname = 'events' AND a.attnum > 0 ORDER BY a.attnum")
out["pg_attribute_events"] = [r[0] for r in cur.fetchall()]

# A BI tool's connect sequence, in the forms such tools send (JDBC-style session
# settings, isolation levels, regular-expression filters on pg_namespace, a table list
# with kinds and descriptions, a search_path-aware list from information_schema).
tool = {}
for sql in [
    "SET extra_float_digits = 2",
    "SET application_name = 'BI tool 1.0'",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "SHOW timezone",
]:
    try:
        cur.execute(sql)
        tool[sql] = "ok"
    except psycopg.Error as e:
        tool[sql] = str(e)
cur.execute(
    "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname <> 'pg_toast' "
    "AND (nspname !~ '^pg_temp_' OR nspname = (pg_catalog.current_schemas(true))[1]) "
    "ORDER BY nspname")
tool["schemas"] = [r[0] for r in cur.fetchall()]
cur.execute(
    "SELECT n.nspname AS schema, c.relname AS name, "
    "CASE c.relkind WHEN 'r' THEN 'TABLE' WHEN 'v' THEN 'VIEW' ELSE NULL END AS kind, "
    "d.description FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON c.relnamespace = n.oid "
    "LEFT JOIN pg_catalog.pg_description d ON c.oid = d.objoid AND d.objsubid = 0 "
    "WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' "
    "AND c.relkind IN ('r', 'v') ORDER BY kind, name")
tool["tables"] = [[r[0], r[1], r[2]] for r in cur.fetchall()]
cur.execute(
    "SELECT quote_ident(table_name) FROM information_schema.tables "
    "WHERE quote_ident(table_schema) = ANY(string_to_array(current_setting('search_path'), ',')) "
    "ORDER BY 1")
tool["search_path_tables"] = [r[0] for r in cur.fetchall()]
cur.execute(
    "SELECT quote_ident(column_name), data_type FROM information_schema.columns "
    "WHERE table_schema = 'public' AND table_name = 'events' AND column_name = 'visitor'")
tool["visitor_column"] = [list(r) for r in cur.fetchall()]
out["bi_tool"] = tool

# The extended protocol: bound parameters (text and integer), then a statement prepared
# on the server and run three times with different values.
cur.execute("SELECT count(*) FROM events WHERE event_page = %s AND pageview", ("/pricing",))
out["param_pricing_pageviews"] = cur.fetchone()[0]
cur.execute("SELECT event_page, count(*) FROM events WHERE pageview GROUP BY event_page "
            "HAVING count(*) >= %s ORDER BY event_page", (1,))
out["pageviews_by_page"] = {p: n for p, n in cur.fetchall()}
prepared = {}
for page in ["/", "/pricing", "/nothing-here"]:
    cur.execute("SELECT count(DISTINCT visitor) FROM events WHERE event_page = %s", (page,),
                prepare=True)
    prepared[page] = cur.fetchone()[0]
out["prepared_visitors"] = prepared
out["prepared_on_server"] = len(conn._prepared._names) > 0
cur.execute("SELECT count(DISTINCT visitor) AS visitors, count(*) FILTER (WHERE pageview) "
            "AS pageviews FROM events")
out["totals"] = list(cur.fetchone())
cur.execute("SELECT source, count(*) FROM visits GROUP BY source ORDER BY source")
out["visits_by_source"] = {s or "": n for s, n in cur.fetchall()}

# Escape attempts: each is refused, or answers nothing of the other property's.
attempts = cfg["escapes"]
escapes = []
for sql in attempts:
    try:
        cur.execute(sql)
        rows = cur.fetchall() if cur.description else []
        escapes.append({"sql": sql, "ok": True, "text": json.dumps(rows, default=str)})
    except psycopg.Error as e:
        escapes.append({"sql": sql, "ok": False, "sqlstate": e.sqlstate, "text": str(e)})
out["escapes"] = escapes

# The time limit: a client's shorter statement_timeout is honoured (57014), and the
# connection still answers afterwards.
cur.execute("SET statement_timeout = 300")
t = time.monotonic()
try:
    cur.execute("SELECT count(*) FROM generate_series(1, 20000000000) AS t(x) WHERE x % 7 = 3")
    cur.fetchall()
    out["timeout"] = {"error": None}
except psycopg.Error as e:
    out["timeout"] = {"error": e.sqlstate, "text": str(e)}
out["timeout"]["seconds"] = time.monotonic() - t
cur.execute("SET statement_timeout = 0")
cur.execute("SELECT 1")
out["after_timeout"] = cur.fetchone()[0]

# The memory limit (the server's is small in this test): sorting a few million values.
try:
    cur.execute("SELECT x FROM generate_series(1, 4000000) AS t(x) ORDER BY x % 1000, x DESC")
    out["memory"] = {"error": None, "rows": len(cur.fetchall())}
except psycopg.Error as e:
    out["memory"] = {"error": e.sqlstate, "text": str(e)}
cur.execute("SELECT count(*) FROM events")
out["after_memory"] = cur.fetchone()[0]
conn.close()

print(json.dumps(out))
