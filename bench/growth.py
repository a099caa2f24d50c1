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
(C{--sqlite-population-tokens} at most on SQLite), live through the
rows.  The fill's time and what a token costs (disk or memory) are
printed.  Then, in alternating rounds, the full and the empty set-ups
issue opaque tokens, then introspect one of their own: two rows per
store, full against empty.  Then, unless C{--no-purge}, the purge row
(L{bench.purge}): every token of the fill expires at one moment after the
rows, and the full server's p99 while they are purged is held to its
quiet value.  Tokens that expired before the rows ended make the rows
invalid: said, never printed as figures.
"""

from __future__ import annotations

import base64
import math
import statistics
import time
from typing import Any
from urllib.parse import unquote_plus

from bench import populate, purge
from bench.cases import CASES, GROWTH_TARGET, PURGE_P99_TARGET
from bench.cpu import loadavg
from bench.errors import MEASUREMENT_ERRORS, NotAvailable
from bench.output import say
from bench.report import Row
from bench.servers import CCServer, Server
from bench.wrk import Load, introspect_load, token_load

SECTION = "growth: ccserver --workers {workers}, opaque, {count} live tokens stored vs an empty store"
#: How long the filled tokens live after the fill (past the measurement)
#: with --no-purge.
LIFETIME = 3600
#: A row whose figures must not be read (the tokens expired under it).
INVALID = "invalid"


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
        if args.purge:
            rows["purge"] = Row(
                section, f"{store} purge", ours_label=f"{store} during the purge",
                theirs_label=f"{store} quiet", ours_column="purge", theirs_column="quiet", unit="req/s",
                target=PURGE_P99_TARGET, judge="purge p99",
            )
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
    # both set-ups alike; the full one's purge then begins within seconds
    # of the expiry (its first, at the start, finds nothing expired)
    settings = {"store": {"purge_interval_seconds": purge.PURGE_INTERVAL}} if args.purge else None
    try:
        servers: dict[str, CCServer] = {}
        urls: dict[str, str] = {}
        for which in ("full", "empty"):
            urls[which] = bench.store_url(store, support)
            server = bench.ccserver(f"ccserver {store} {which}", bench.workdir(f"growth-{store}-{which}"),
                                    opaque, urls[which], workers=args.growth_workers, settings=settings)
            bench.start(server, opaque)
            servers[which] = server
        full = servers["full"]
        now = time.time()
        expires_at = purge.expiry(now, store, count, args) if args.purge else int(now) + LIFETIME
        shape = populate.Shape.of(count, expires_at, full.base, client_id(full), now)
        step = max(1, count // 10)

        def progress(done: int) -> None:
            if done % step < populate.REDIS_CHUNK or done == count:
                say(f"    filled {done:,} of {count:,}")

        say(f"  filling {store} with {count:,} opaque tokens, all expiring at {clock(expires_at)} "
            f"(in {expires_at - now:,.0f} s; load {loadavg()})")
        filled = populate.fill(store, urls["full"], shape, progress)
        say(f"  fill: {filled.describe()}  (load {loadavg()})")
        note = f"fill {filled.describe()}"
        rows_end = time.time() + purge.rows_estimate(args.rounds, args.seconds, args.warmup)
        if args.purge and rows_end > expires_at:
            invalid(rows, f"the fill took {filled.seconds:.0f} s, longer than the "
                    f"{purge.fill_estimate(store, count):.0f} s estimated: its tokens expire at "
                    f"{clock(expires_at)}, before the growth rows would end ({clock(rows_end)})")
            return
        order = [servers["full"], servers["empty"]]
        for kind in ("issue", "introspect"):
            row = rows[kind]
            loads: dict[str, Load] = {}
            for server in order:
                loads[server.label] = load_of(kind, server)
            results = bench.runner.measure(list(order), args.rounds, loads)
            row.ours, row.theirs = results[servers["full"].label], results[servers["empty"].label]
            row.note = note
        if args.purge and time.time() >= expires_at:
            invalid(rows, f"the fill's tokens expired at {clock(expires_at)}, before the growth rows "
                    f"ended ({clock(time.time())}): their figures are not of a full store; the fill "
                    f"took {filled.seconds:.0f} s ({purge.fill_estimate(store, count):.0f} s estimated)")
            return
        if args.purge:
            bench.stop_some([servers["empty"]])
            measure_purge(bench, store, full, urls["full"], count, expires_at, rows)
    finally:
        bench.stop_all()
        bench.remove_support(support)


def plural(windows: int) -> str:
    return f"{windows} window" + ("" if windows == 1 else "s")


def clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def load_of(kind: str, server: CCServer) -> Load:
    return (introspect_load(server, str(server.token()["access_token"]))
            if kind == "introspect" else token_load(server))


def invalid(rows: dict[str, Row], why: str) -> None:
    """
    Every row of the store is invalid, and why is said plainly.
    """
    say(f"  INVALID: {why}")
    for row in rows.values():
        row.status, row.note = INVALID, why
        row.ours = row.theirs = None


def measure_purge(bench: Any, store: str, server: CCServer, url: str, count: int, expires_at: int,
                  rows: dict[str, Row]) -> None:
    """
    The purge row (L{bench.purge}): the full server at L{purge.PURGE_LOAD}
    of the peak its growth row of C{--purge-load} measured, from the quiet
    window through the purge of the fill's tokens.
    """
    args = bench.args
    row, measured = rows["purge"], rows[args.purge_load]
    if not measured.ours:
        row.status, row.note = "not available", f"no peak: the {args.purge_load} row was not measured"
        return
    peak = statistics.median(r.tokens_per_s for r in measured.ours)
    load = load_of(args.purge_load, server).paced(purge.PURGE_LOAD * peak)
    limit = purge.time_limit(count)
    say(f"  purge row: {args.purge_load} at {purge.PURGE_LOAD:.0%} of the full server's peak "
        f"{peak:,.0f}/s ({load.rate:,.0f}/s), {purge.WINDOW} s windows from {args.purge_quiet_seconds:g} s "
        f"before the expiry at {clock(expires_at)} until the purge has ended (at most {limit:,.0f} s after)")
    gone, close = purge.probe(store, url, count, expires_at)
    watch = purge.Watch(gone, count)
    try:
        watch.start()
        windows, limit_hit = purge.measure(bench.runner, server, load, watch, expires_at,
                                           args.purge_quiet_seconds,
                                           limit + args.purge_after_seconds, say,
                                           math.ceil(args.purge_after_seconds / purge.WINDOW))
    finally:
        watch.stop()
        close()
    verdict = purge.verdict(windows)
    row.ours = [w.round for p, w in windows if p == purge.DURING]
    row.theirs = [w.round for p, w in windows if p == purge.QUIET]
    judged = row.ratio()
    counts = {p: sum(1 for q, _ in windows if q == p) for p in (purge.QUIET, purge.DURING, purge.AFTER)}
    what = purge.describe(watch.progress, limit_hit)
    figures = (f"p99 quiet {verdict.quiet_p99:.1f} ms (median of {counts[purge.QUIET]})"
               if verdict.quiet_p99 is not None else "no quiet window")
    spread = row.quiet_spread()  # the control the row is voided by, printed as judged
    if verdict.quiet_max is not None and spread is not None:
        figures += (f", the quiet windows' largest {verdict.quiet_max:.1f} ms "
                    f"({spread:.2f}x their median)")
    if verdict.during_max is not None and verdict.during_median is not None:
        figures += (f", during the purge {verdict.during_max:.1f} ms max, {verdict.during_median:.1f} "
                    f"median ({plural(counts[purge.DURING])})")
        if verdict.quiet_p99:
            figures += f" (the largest {verdict.during_max / verdict.quiet_p99:.2f}x the quiet median)"
    if verdict.quiet_pooled is not None and verdict.during_pooled is not None:
        figures += (f"; every answer: p99 quiet {verdict.quiet_pooled:.1f} ms, during the purge "
                    f"{verdict.during_pooled:.1f} ms")
    ratio = f": {judged:.2f}x (target <= {PURGE_P99_TARGET:g}x)" if judged is not None else ""
    if verdict.after_max is not None:
        ratio += f"; after it {verdict.after_max:.1f} ms max ({plural(counts[purge.AFTER])})"
    used = "; ".join(f"{which} {text}" for which in (purge.QUIET, purge.DURING)
                     if (text := purge.mean_cores(windows, which)) is not None)
    row.note = (f"{what}; {figures}{ratio}; {args.purge_load} at {load.rate:,.0f}/s"
                + (f"; {used}" if used else "")
                + (f"; the watch failed: {watch.error}" if watch.error else ""))
    if limit_hit and watch.progress.ended is None:
        row.caveat = "(the purge did not end in time)"
    say(f"  {store} purge: {row.note}  -> {row.verdict()}")
