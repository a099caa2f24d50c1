"""
The purge row of the growth section (issue 23): p99 latency while every
token of the fill expires at once and is purged, against its quiet value.

The fill's tokens are live through the growth rows and expire together at
one moment afterwards (L{expiry}: the fill's start, plus a conservative
estimate of the fill's time and of the rows' time, plus C{--purge-quiet-seconds}).
The full server runs with C{[store] purge_interval_seconds} =
L{PURGE_INTERVAL}, so that its purge begins within seconds of the expiry.  After the rows, the full server is driven at a constant rate,
L{PURGE_LOAD} of the peak its growth row just measured (issuance by
default: it writes to the table or keyspace the purge deletes from, the
harsher case), in consecutive L{WINDOW}-second wrk runs (result.lua's
pacing: latency from each request's due time), from the quiet window
before the expiry until the purge has ended (and L{AFTER_WINDOWS} after), or
until L{time_limit}.  A thread polls the store meanwhile (L{Watch}): how
many rows or keys have gone.

Each window is quiet (it ended before the purge began), during (it
overlapped the purge) or after.  The row (judge "purge p99" of
L{bench.report.Row}): the p99 of every answer during the purge over the
p99 of every quiet answer (each phase's windows pooled: their latency
histograms added, L{bench.histogram}), at most C{PURGE_P99_TARGET}.  The
note gives the windows too: the largest p99 of a window during the purge,
and the largest of a quiet window against their median, which says how far
one window strays with no purge at all.
"""

from __future__ import annotations

import math
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import cpu, populate
from bench.histogram import pooled_p99_ms
from bench.rounds import Round

#: Tokens a second each store's fill made on this machine (1,000,000
#: tokens, shared machine: bench/README.md), and the share of that rate
#: the expiry counts on: a slower fill must not let the tokens expire
#: before the growth rows end.  (On the quiet machine the fills ran faster
#: still: SQLite 60,000-70,000 a second.)
FILL_RATES = {"postgresql": 45_000, "sqlite": 20_000, "redis": 15_000}
FILL_SAFETY = 0.75
#: Seconds any fill takes on top of its rows (connections, ANALYZE, sizes).
FILL_FIXED = 15.0
#: Seconds each wrk run of the growth rows costs on top of its duration
#: (its start, the CPU readings, a token fetched for introspection).
WRK_OVERHEAD = 1.5
#: Seconds between the full server's purges ([store] purge_interval_seconds).
PURGE_INTERVAL = 5.0
#: The share of the full server's peak rate the purge row drives it at.
PURGE_LOAD = 0.5
#: Whole seconds of each wrk window.
WINDOW = 5
#: How often the watch asks the store how far the purge has come.
POLL_SECONDS = 1.0
#: Windows measured once the purge has ended (what it leaves behind:
#: a checkpoint of the write-ahead log, autovacuum).
AFTER_WINDOWS = 2
#: The share of the fill's tokens gone that says the purge has begun.
BEGUN_SHARE = 0.001
#: The purge row's phases of a window.
QUIET, DURING, AFTER = "quiet", "during", "after"


def fill_estimate(store: str, count: int) -> float:
    """
    Seconds a fill of C{count} tokens into C{store} should take at most.
    """
    return FILL_FIXED + count / (FILL_RATES[store] * FILL_SAFETY)


def rows_estimate(rounds: int, seconds: int, warmup: int, servers: int = 2, kinds: int = 2) -> float:
    """
    Seconds the growth rows take: per kind (issuance, introspection) and
    server (full, empty) a warm-up and C{rounds} rounds of C{seconds}.
    """
    per_server = warmup + WRK_OVERHEAD + rounds * (seconds + WRK_OVERHEAD)
    return kinds * servers * per_server


def expiry(started: float, store: str, count: int, args: Any) -> int:
    """
    When the fill's tokens expire (a Unix time): after the fill begun at
    C{started}, the growth rows and the quiet window, each as estimated.
    """
    ahead = (fill_estimate(store, count) + rows_estimate(args.rounds, args.seconds, args.warmup)
             + args.purge_quiet_seconds)
    return int(math.ceil(started + ahead))


def time_limit(count: int) -> float:
    """
    Seconds after the expiry that the row waits at most for the purge to
    end (5,000 rows or keys a second, at the least, plus two minutes: more
    than the full server issues a second on Redis, whose purge is the
    slowest).
    """
    return PURGE_INTERVAL + 120 + count / 5_000


#: The probe's count on Redis: the entries of the clients' sets (their
#: clients named in C{KEYS[1]}) that expire by C{ARGV[2]}, the fill's
#: tokens not yet purged.
REDIS_LEFT = """
local left = 0
for _, client in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    left = left + redis.call('ZCOUNT', ARGV[1] .. client, '-inf', ARGV[2])
end
return left
"""


@dataclass
class Window:
    """
    One wrk run of the purge row: when it ran (Unix times) and its figures.
    """

    started: float
    ended: float
    round: Round
    #: the share of the window during which some runnable task waited for a
    #: CPU (L{bench.cpu.cpu_pressure}), or None if the kernel does not say
    waiting: float | None = None


@dataclass
class Progress:
    """
    The purge as the watch saw it: (Unix time, rows or keys gone) samples.
    """

    count: int
    samples: list[tuple[float, int]] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    @property
    def begun(self) -> float | None:
        """
        The last sample before the first that saw more than
        L{BEGUN_SHARE} of the rows gone (the purge began after it), or
        None if none has yet.  (A few keys of its own expire on Redis
        meanwhile: a lease, a one-time C{jti}.)
        """
        threshold = int(self.count * BEGUN_SHARE)
        for index, (when, gone) in enumerate(self.samples):
            if gone > threshold:
                return self.samples[index - 1][0] if index else when
        return None

    @property
    def ended(self) -> float | None:
        """
        The first sample that saw every row gone, or None.
        """
        return next((when for when, gone in self.samples if gone >= self.count), None)


def phase(window: Window, progress: Progress) -> str:
    """
    Whether C{window} was quiet (it ended before the purge began), during
    the purge (it overlapped it, or the purge has not ended), or after it.
    """
    begun, ended = progress.begun, progress.ended
    if begun is None or window.ended <= begun:
        return QUIET
    if ended is not None and window.started >= ended:
        return AFTER
    return DURING


@dataclass
class Verdict:
    """
    The purge row's figures (the row itself judges them: L{bench.report.Row}
    with judge "purge p99").
    """

    quiet_p99: float | None
    during_max: float | None
    during_median: float | None
    #: the largest p99 of the windows after the purge (not judged)
    after_max: float | None = None
    #: the largest p99 of the quiet windows: how far one window strays from
    #: their median with no purge at all (the control)
    quiet_max: float | None = None
    #: the p99 of every quiet answer, and of every answer during the purge
    #: (the windows pooled; None for rounds without histograms): the ratio
    #: judged
    quiet_pooled: float | None = None
    during_pooled: float | None = None


def verdict(windows: list[tuple[str, Window]]) -> Verdict:
    """
    The row's figures from the windows and their phases: the median and
    the largest quiet p99, the largest and the median p99 during the
    purge, the largest after it, and the p99 of every answer of each of
    the first two phases (their ratio is judged).
    """
    quiet = [w.round.p99_ms for p, w in windows if p == QUIET]
    during = [w.round.p99_ms for p, w in windows if p == DURING]
    after = [w.round.p99_ms for p, w in windows if p == AFTER]
    return Verdict(
        statistics.median(quiet) if quiet else None,
        max(during) if during else None,
        statistics.median(during) if during else None,
        max(after) if after else None,
        max(quiet) if quiet else None,
        pooled_p99_ms(w.round.raw for p, w in windows if p == QUIET) if quiet else None,
        pooled_p99_ms(w.round.raw for p, w in windows if p == DURING) if during else None,
    )


def describe(progress: Progress, limit_hit: bool) -> str:
    """
    The purge's duration and rate, as the watch saw them (to within its
    poll), or why there is none.
    """
    begun, ended = progress.begun, progress.ended
    if begun is None:
        return "the purge had not begun"
    if ended is None:
        return (f"the purge had not ended ({progress.deleted:,} of {progress.count:,} gone"
                + (" at the time limit)" if limit_hit else ")"))
    seconds = max(ended - begun, 1e-9)
    return f"purge {progress.count:,} in {seconds:.0f} s ({progress.count / seconds:,.0f}/s)"


class Watch:
    """
    A thread that asks the store, every L{POLL_SECONDS}, how many of the
    fill's C{count} tokens have gone, from C{gone} (a probe of its own
    connection): SQLite counts the rows left that expire at the fill's
    time, PostgreSQL reads the table's deleted tuples (pg_stat), Redis
    counts the entries left in the clients' sets that expire by then.
    """

    def __init__(self, gone: Callable[[], int], count: int) -> None:
        self.progress = Progress(count)
        self._gone = gone
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="purge-watch", daemon=True)
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.progress.samples.append((time.time(), min(self.progress.count, self._gone())))
            except Exception as e:  # said in the row's note, never a crash of the run
                self.error = str(e)
                return
            self._stop.wait(POLL_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def probe(store: str, url: str, count: int, expires_at: int) -> tuple[Callable[[], int], Callable[[], None]]:
    """
    A probe of how many of the fill's tokens have gone from the store at
    C{url}, and what closes its connection.
    """
    if store == "sqlite":
        connection = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30, isolation_level=None,
                                     check_same_thread=False)

        def left() -> int:
            row = connection.execute("SELECT count(*) FROM access_tokens WHERE expires_at <= ?",
                                     (expires_at,)).fetchone()
            return count - int(row[0])

        return left, connection.close
    if store == "postgresql":
        import psycopg  # noqa: PLC0415 (the PostgreSQL extra)

        pg = psycopg.connect(url, autocommit=True)

        def deleted() -> int:
            row = pg.execute("SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'access_tokens'").fetchone()
            return int(row[0]) if row else 0

        base = deleted()
        return (lambda: deleted() - base), pg.close
    from ccserver.stores.redis import PREFIX, TOKEN_CLIENTS_KEY  # noqa: PLC0415

    redis = populate.Redis(url)

    def gone() -> int:
        return count - int(redis.call("EVAL", REDIS_LEFT, 1, TOKEN_CLIENTS_KEY, PREFIX + "client_tokens:",
                                      expires_at))

    return gone, redis.close


def cores(window: Window) -> str:
    """
    Who used the CPU during C{window}: the server's processes, the store's,
    everything else (cores), and how much of the window some runnable task
    waited for a CPU: what tells a purge that slows the requests by taking
    CPU (on this machine the store shares the cores) from one that makes
    them wait inside the store.
    """
    r = window.round
    return _cores(r.cpu_cores, r.store_cores, r.other_cores, window.waiting)


def _cores(server: float, store: float, other: float, waiting: float | None) -> str:
    text = f"cpu: server {server:.2f} store {store:.2f} other {other:.2f}"
    return text if waiting is None else f"{text}, waiting {waiting:.0%}"


def mean_cores(windows: list[tuple[str, Window]], which: str) -> str | None:
    """
    L{cores} of the windows of phase C{which}, averaged (None if none was).
    """
    chosen = [w for p, w in windows if p == which]
    if not chosen:
        return None
    waits = [w.waiting for w in chosen if w.waiting is not None]
    return _cores(statistics.fmean(w.round.cpu_cores for w in chosen),
                  statistics.fmean(w.round.store_cores for w in chosen),
                  statistics.fmean(w.round.other_cores for w in chosen),
                  statistics.fmean(waits) if len(waits) == len(chosen) else None)


def measure(runner: Any, server: Any, load: Any, watch: Watch, expires_at: int, quiet_seconds: float,
            limit: float, say: Callable[[str], None],
            after_windows: int = AFTER_WINDOWS) -> tuple[list[tuple[str, Window]], bool]:
    """
    Drive C{server} with C{load} (paced) in L{WINDOW}-second runs, after
    one to warm up, from C{quiet_seconds} before C{expires_at} until
    C{after_windows} windows after the purge C{watch} follows has ended
    (what the store does after a purge shows in them: PostgreSQL's
    autovacuum of the rows it deleted), or C{limit} seconds after the
    expiry: each window with its phase, and whether the limit ended it.
    """
    wait = expires_at - quiet_seconds - WINDOW - time.time()
    if wait > 0:
        say(f"  waiting {wait:.0f} s for the quiet window ({quiet_seconds:g} s before the expiry)")
        time.sleep(wait)
    # connections made, caches warm, after the wait: not a quiet window
    warm = runner.wrk_once(server, WINDOW, [server], load)
    say(f"  warm-up    {warm.tokens_per_s:>7,.0f}/s  p50 {warm.p50_ms:6.2f} ms  p99 {warm.p99_ms:7.2f} ms")
    windows: list[Window] = []
    while True:
        started, waited = time.time(), cpu.cpu_pressure()
        result = runner.wrk_once(server, WINDOW, [server], load)
        ended, waited_after = time.time(), cpu.cpu_pressure()
        waiting = (None if waited is None or waited_after is None
                   else (waited_after - waited) / 1e6 / max(ended - started, 1e-9))
        windows.append(Window(started, ended, result, waiting))
        progress = watch.progress
        now = phase(windows[-1], progress)
        due = f" (due {load.rate:,.0f}/s)" if load.rate else ""
        say(f"  window {len(windows):>3} {now:<6} {result.tokens_per_s:>7,.0f}/s{due}"
            f"  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms"
            f"  gone {progress.deleted:,} of {progress.count:,}  (expiry{started - expires_at:+.0f} s)"
            f"  {cores(windows[-1])}")
        if sum(1 for w in windows if phase(w, progress) == AFTER) >= after_windows:
            break
        if watch.error is not None or time.time() > expires_at + limit:
            return [(phase(w, watch.progress), w) for w in windows], True
    return [(phase(w, watch.progress), w) for w in windows], False
