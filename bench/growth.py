"""
The growth section (issue 23): issuance and introspection of opaque tokens
with a large population of live tokens stored, against an empty store,
ccserver C{--growth-workers} workers on each durable store of
C{--growth-stores}.

Per store, two throwaway stores of the same kind (two SQLite files, two
Redis or PostgreSQL servers), a ccserver over each; one of the two is
filled by L{bench.populate} (a bulk load, never HTTP: C{INSERT ... SELECT
generate_series} on PostgreSQL, a Lua script on Redis, C{executemany} on
SQLite) with C{--population-tokens} live opaque tokens
(C{--sqlite-population-tokens} at most on SQLite), which expire an hour
after the fill.  The fill's time and what a token costs (disk or memory)
are printed.  Then, in alternating rounds, the full and the empty
set-ups issue opaque tokens, then introspect one of their own: two rows
per store, full against empty.
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import unquote_plus

from bench import populate
from bench.cases import CASES, GROWTH_TARGET
from bench.cpu import loadavg
from bench.errors import MEASUREMENT_ERRORS, NotAvailable
from bench.output import say
from bench.report import Row
from bench.servers import CCServer, Server
from bench.wrk import Load, introspect_load, token_load

SECTION = "growth: ccserver --workers {workers}, opaque, {count} live tokens stored vs an empty store"
#: How long the filled tokens live after the fill (past the measurement).
LIFETIME = 3600


def client_id(server: Server) -> str:
    """
    The bench client's id, from its Basic credentials.
    """
    raw = base64.b64decode(server.basic).decode()
    return unquote_plus(raw.split(":", 1)[0])


def count_for(store: str, args: Any) -> int:
    if store == "sqlite":
        return int(min(args.population_tokens, args.sqlite_population_tokens))
    return int(args.population_tokens)


def run_section(bench: Any) -> None:
    args = bench.args
    if not args.population_tokens:
        return
    for store in args.growth_stores:
        count = count_for(store, args)
        section = SECTION.format(workers=args.growth_workers, count=f"{count:,}")
        rows = {
            kind: Row(section, f"{store} {kind}", ours_label=f"{store} full", theirs_label=f"{store} empty",
                      ours_column="full", theirs_column="empty", unit="req/s", target=GROWTH_TARGET,
                      check_p99=False)
            for kind in ("issue", "introspect")
        }
        bench.rows.extend(rows.values())
        say(f"\n== {section}: {store}  (load {loadavg()})")
        try:
            measure_store(bench, store, count, rows)
        except NotAvailable as e:
            for row in rows.values():
                row.status, row.note = "not available", str(e)
            say(f"  {store}: not available: {e}")
        except MEASUREMENT_ERRORS as e:
            for row in rows.values():
                bench.error(row, e)


def measure_store(bench: Any, store: str, count: int, rows: dict[str, Row]) -> None:
    args = bench.args
    opaque = CASES["opaque"]
    support: list[Any] = []
    try:
        servers: dict[str, CCServer] = {}
        urls: dict[str, str] = {}
        for which in ("full", "empty"):
            urls[which] = bench.store_url(store, support)
            server = bench.ccserver(f"ccserver {store} {which}", bench.workdir(f"growth-{store}-{which}"),
                                    opaque, urls[which], workers=args.growth_workers)
            bench.start(server, opaque)
            servers[which] = server
        full = servers["full"]
        now = time.time()
        shape = populate.Shape.of(count, int(now) + LIFETIME, full.base, client_id(full), now)
        step = max(1, count // 10)

        def progress(done: int) -> None:
            if done % step < populate.REDIS_CHUNK or done == count:
                say(f"    filled {done:,} of {count:,}")

        say(f"  filling {store} with {count:,} opaque tokens (load {loadavg()})")
        filled = populate.fill(store, urls["full"], shape, progress)
        say(f"  fill: {filled.describe()}  (load {loadavg()})")
        note = f"fill {filled.describe()}"
        order = [servers["full"], servers["empty"]]
        for kind, row in rows.items():
            loads: dict[str, Load] = {}
            for server in order:
                loads[server.label] = (introspect_load(server, str(server.token()["access_token"]))
                                       if kind == "introspect" else token_load(server))
            results = bench.runner.measure(list(order), args.rounds, loads)
            row.ours, row.theirs = results[servers["full"].label], results[servers["empty"].label]
            row.note = note
    finally:
        bench.stop_all()
        bench.remove_support(support)
