"""
The memory section (C{--memory}, issue 14): the resident set size of each
process of a server while it issues --memory-tokens tokens (1,000,000),
read from C{/proc/<pid>/status} after the warm-up and once the count
reaches a quarter, half and all of it.  wrk runs in chunks (token.lua)
until its answered requests reach each count.

Rows: ccserver C{--workers 2} on SQLite with JWT ES256 and with opaque
tokens (a row on disk each); node-oidc-provider as a node:cluster of 2
(ES256); and ccserver C{--workers 2} on SQLite with --population
registered clients (register.lua's fill, as the population section), its
tokens round-robin over all of them, so that the client cache of each
process holds as many entries as it may.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import cpu
from bench.cases import CASES, Case
from bench.cpu import loadavg
from bench.errors import BenchError, NotAvailable
from bench.output import loud, say
from bench.rounds import Round, Runner
from bench.sections import Bench
from bench.servers import CCServer, Peer, Server, basic
from bench.wrk import Load, clients_load, kept_clients, register_load, token_load

WORKERS = 2
STORE = "sqlite"
SECTION = (f"memory: RSS per process (MiB) as tokens are issued; ccserver --workers {WORKERS} on {STORE}, "
           f"node:cluster of {WORKERS}")
#: The longest wrk run of a chunk, in seconds.
CHUNK_CAP = 30
WIDTH = 150


@dataclass(frozen=True)
class Point:
    """
    The RSS of a server's processes once C{tokens} were issued.
    """

    #: the count it was read at (0: after the warm-up)
    count: int
    #: tokens issued so far (200 answers), the warm-up's included
    tokens: int
    #: the tokens/s of the wrk runs since the previous point
    tokens_per_s: float
    #: KiB: the process the bench started (ccserver's main process, which
    #: serves too; node's cluster primary, which only forks)
    main_kib: int
    #: KiB: the rest of its process group, by pid (the workers)
    other_kib: tuple[int, ...]

    @property
    def max_kib(self) -> int:
        return max((self.main_kib, *self.other_kib))


@dataclass
class MemoryRow:
    case: str
    note: str = ""
    #: the first after the warm-up, then one per count reached
    points: list[Point] = field(default_factory=list)
    #: "not available" or "ERROR: ..." when it was not measured to the end
    status: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"section": SECTION, "case": self.case, "note": self.note, "status": self.status,
                "points": [{**p.__dict__, "max_kib": p.max_kib} for p in self.points]}


def counts(total: int) -> list[int]:
    """
    The token counts at which RSS is read: a quarter, half and all of C{total}.
    """
    return sorted({max(1, total // 4), max(1, total // 2), total})


def chunk_seconds(remaining: int, rate: float, cap: int = CHUNK_CAP) -> int:
    """
    Whole seconds of wrk (it counts whole seconds) to issue C{remaining}
    more tokens at C{rate} tokens/s: at least 1, at most C{cap}.  A chunk
    may overshoot by up to a second's tokens.
    """
    if rate <= 0:
        return 1
    return max(1, min(cap, math.ceil(remaining / rate)))


def split_rss(sizes: dict[int, int], leader: int) -> tuple[int, tuple[int, ...]]:
    """
    (the leader's RSS, the others' by pid) of C{cpu.group_rss}'s answer.
    """
    return sizes.get(leader, 0), tuple(sizes[pid] for pid in sorted(sizes) if pid != leader)


def mib(kib: int) -> str:
    return f"{kib / 1024:,.1f}"


def rss_now(server: Server, count: int, tokens: int, rounds: list[Round]) -> Point:
    """
    A Point for C{server} now; C{rounds}: the wrk runs since the previous one.
    """
    requests = sum(r.requests for r in rounds)
    seconds = sum(r.requests / r.tokens_per_s for r in rounds)
    main, others = split_rss(cpu.group_rss(cpu.read_processes(), server.pgid), server.pgid)
    return Point(count, tokens, requests / seconds if seconds else 0.0, main, others)


def issue(runner: Runner, server: Server, load: Load, total: int, row: MemoryRow) -> None:
    """
    Warm C{server} up, read its RSS, then run wrk in chunks until each of
    C{counts(total)} tokens were answered, reading its RSS at each.
    """
    warm = runner.wrk_once(server, runner.warmup, [server], load)
    issued = warm.requests
    row.points.append(rss_now(server, 0, issued, [warm]))
    say(f"    {server.label}: {describe(row.points[-1])} after the warm-up")
    rate = warm.tokens_per_s
    for count in counts(total):
        done: list[Round] = []
        while issued < count:
            r = runner.wrk_once(server, chunk_seconds(count - issued, rate), [server], load)
            issued += r.requests
            rate = r.tokens_per_s
            done.append(r)
        if done:  # else the warm-up went past this count already
            row.points.append(rss_now(server, count, issued, done))
            say(f"    {server.label}: {describe(row.points[-1])}")


def describe(point: Point) -> str:
    return (f"{point.tokens:,} tokens ({point.tokens_per_s:,.0f}/s): RSS main {mib(point.main_kib)} MiB, "
            f"others {', '.join(mib(k) for k in point.other_kib) or '-'} MiB")


def run_section(bench: Bench) -> list[MemoryRow]:
    """
    The memory rows, one server at a time (each stopped before the next).
    """
    if not bench.args.memory:
        return []
    total: int = bench.args.memory_tokens
    es256, opaque = CASES["es256"], CASES["opaque"]
    rows: list[MemoryRow] = []
    say(f"\n== {SECTION}: {total:,} tokens  (load {loadavg()})")

    def ccserver(case: Case, name: str) -> CCServer:
        url = bench.store_url(STORE, [])
        return bench.ccserver(f"ccserver {case.label} x{WORKERS}", bench.workdir(f"memory-{name}"), case, url,
                              workers=WORKERS)

    def measure(row: MemoryRow, server: Server, case: Case, prepare: Callable[[], Load] | None = None) -> None:
        rows.append(row)
        try:
            bench.start(server, case)
            issue(bench.runner, server, prepare() if prepare else token_load(server), total, row)
        except NotAvailable as e:
            row.status = f"not available: {e}"
            say(f"  not available: {e}")
        except (BenchError, subprocess.TimeoutExpired) as e:
            failed(bench, row, e)
        finally:
            bench.stop_all()

    measure(MemoryRow(f"ccserver {es256.label}", f"1 client, main + {WORKERS - 1} spawned worker(s) serve"),
            ccserver(es256, "es256"), es256)
    measure(MemoryRow(f"ccserver {opaque.label}", "1 client, a row on disk per token"),
            ccserver(opaque, "opaque"), opaque)
    peer = Peer(f"node cluster {es256.label} x{WORKERS}", bench.workdir("memory-peer"), bench.peer_dir, es256,
                workers=WORKERS)
    measure(MemoryRow(f"node {es256.label}", f"1 client, memory adapter; the primary only forks {WORKERS} workers"),
            peer, es256)
    many = ccserver(es256, "population")
    row = MemoryRow(f"ccserver {bench.args.population:,} clients")
    measure(row, many, es256, lambda: populate(bench, many, row))
    return rows


def populate(bench: Bench, server: CCServer, row: MemoryRow) -> Load:
    """
    Bring C{server}'s store to --population clients through HTTP (the
    fill of the population section, every new client kept): a load of
    tokens round-robin over all of them.
    """
    target: int = bench.args.population
    kept = server.workdir / "kept-clients.tsv"
    say(f"  filling: {target - 1:,} registrations with wrk (budget {bench.args.population_budget} s)")
    made, seconds, why = bench.runner.fill(server, target - 1, bench.args.population_budget,
                                           register_load(server, 1.0, kept))
    clients = [server.basic] + [basic(*pair) for pair in kept_clients(kept)]
    say(f"    {made:,} clients in {seconds:.1f} s ({made / seconds:,.0f} registrations/s): {why}")
    row.note = (f"{made + 1:,} registered clients, tokens round-robin over {len(clients):,} of them; "
                f"registered in {seconds:.0f} s")
    return clients_load(server.workdir / "clients.txt", clients)


def failed(bench: Bench, row: MemoryRow, e: Exception) -> None:
    loud(f"memory / {row.case}: {e}")
    bench.runner.errors.append(f"memory / {row.case}: {e}")
    row.status = "ERROR: " + str(e).splitlines()[0][:200]


def print_memory_table(rows: list[MemoryRow]) -> None:
    """
    A block in the style of the other sections' table: a line per point
    (the warm-up, then each count), the row's note under it.
    """
    if not rows:
        return
    say("=" * WIDTH)
    say(f"[{SECTION}]")
    say(f"{'case':<24} {'after':>10} {'tokens':>11} {'tok/s':>8} {'main MiB':>9}  {'other processes MiB':<22}"
        f" {'max MiB':>8}")
    for row in rows:
        for n, point in enumerate(row.points):
            after = f"{point.count:,}" if point.count else "warm-up"
            say(f"{row.case if n == 0 else '':<24} {after:>10} {point.tokens:>11,} {point.tokens_per_s:>8,.0f}"
                f" {mib(point.main_kib):>9}  {', '.join(mib(k) for k in point.other_kib) or '-':<22}"
                f" {mib(point.max_kib):>8}")
        if row.status:
            say(f"{'' if row.points else row.case:<24} {row.status}")
        if row.note:
            say(f"{'':<24} ({row.note})")
    say("=" * WIDTH)
    say("RSS (VmRSS of /proc/<pid>/status) right after the wrk run that reached the count; tokens: 200 answers, "
        "the warm-up's included.\nmain: the process bench/run started (ccserver's main process, which serves "
        "too; node's cluster primary, which only forks);\nother processes: the rest of its process group, by pid "
        "(ccserver's spawned worker, node's cluster workers); max: the largest.")
