"""
The command line: C{python3 bench/run [options]} (see bench/README.md).
A script, never a test: it prints figures and a table of PASS/FAIL against
the targets of issue 6; it exits 1 only when a round went wrong (an answer
other than 200, a socket error, a server that died), never because a target
was missed; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import auth, growth, introspection, latency, memory, profiling, purge
from bench.cases import CASES, DURABLE_STORES, SMALL_POPULATION, STORES
from bench.cpu import busiest_processes, loadavg, machine_busy
from bench.install import ensure_python_dependencies, ensure_wrk, install_peer, run_quiet
from bench.latency import LATENCY_CASES
from bench.output import say
from bench.paths import REPO
from bench.report import print_table
from bench.rounds import Runner
from bench.sections import Bench
from bench.wrk import CONNECTIONS, THREADS


def listing(choices: tuple[str, ...] | None) -> Callable[[str], list[str]]:
    """
    An argparse type: a comma-separated list, lower-cased, each one of
    C{choices} (if given); empty parts are dropped, so '' is no value.
    """

    def parse(text: str) -> list[str]:
        values = [v.strip().lower() for v in text.split(",") if v.strip()]
        if choices is not None:
            for v in values:
                if v not in choices:
                    raise argparse.ArgumentTypeError(f"{v!r}: one of {', '.join(choices)}")
        return values

    return parse


def counts(text: str) -> list[int]:
    """
    An argparse type: a comma-separated list of worker counts, 1 or more.
    """
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a list of whole numbers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("worker counts are 1 or more")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run",
        description="ccserver against node-oidc-provider: tokens/s, ratio, p50/p99 (see bench/README.md).",
    )
    parser.add_argument("--cases", type=listing(tuple(CASES)), default=list(CASES),
                        help="comma-separated: es256,eddsa,rs256,opaque [all]")
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds per case [3]")
    # wrk counts its duration in whole seconds
    parser.add_argument("--seconds", type=int, default=8, help="whole seconds of wrk per round [8]")
    parser.add_argument("--warmup", type=int, default=2, help="whole seconds of warm-up per server [2]")
    parser.add_argument("--stores", type=listing(STORES), default=list(STORES),
                        help="stores compared with memory:// (empty: none) [memory,sqlite,redis,postgresql]")
    parser.add_argument("--store-case", choices=tuple(CASES), default="es256",
                        help="the case of the store and worker comparisons [es256]")
    parser.add_argument("--workers", type=counts, default=[1, 2],
                        help="worker counts compared (1 alone: none) [1,2]")
    parser.add_argument("--workers-store", choices=("sqlite", "redis", "postgresql"), default="sqlite",
                        help="the store of the workers and machine comparisons (memory:// cannot be "
                        "shared) [sqlite]")
    parser.add_argument("--machine-workers", type=int, default=os.cpu_count() or 1, metavar="N",
                        help="ccserver --workers N against a node:cluster of N, for the JWT cases "
                        "(1: no machine comparison) [the cores]")
    parser.add_argument("--durable-stores", type=listing(DURABLE_STORES), default=list(DURABLE_STORES),
                        help="stores of the opaque vs JWT ES256 comparison (empty: none) "
                        "[sqlite,postgresql,redis]")
    parser.add_argument("--durable-workers", type=int, default=2, metavar="N",
                        help="ccserver workers in the opaque vs JWT comparison [2]")
    parser.add_argument("--population", type=int, default=100_000, metavar="N",
                        help="registered clients of the large population [100000]")
    parser.add_argument("--population-stores", type=listing(STORES), default=list(STORES),
                        help="stores of the registration rates and (durable ones) of the 100 vs N "
                        "comparison (empty: none) [memory,sqlite,redis,postgresql]")
    parser.add_argument("--population-budget", type=int, default=300, metavar="S",
                        help="whole seconds at most to fill one store to N clients [300]")
    parser.add_argument("--population-cache-off", action=argparse.BooleanOptionalAction, default=True,
                        help="also compare with [store] client_cache_seconds = 0 [on]")
    parser.add_argument("--no-population", action="store_true",
                        help="skip the registration and population section")
    parser.add_argument("--auth-cases", type=listing(auth.AUTH_CASES), default=[],
                        help="client authentication section (issue 11), comma-separated: "
                        "basic,private_key_jwt,dpop (basic is always the baseline) [off]")
    parser.add_argument("--memory", action="store_true",
                        help="memory section: RSS per process after --memory-tokens tokens (ccserver --workers 2 "
                        "on sqlite, JWT and opaque; node:cluster of 2; ccserver with --population clients) [off]")
    parser.add_argument("--memory-tokens", type=int, default=1_000_000, metavar="N",
                        help="tokens per server of the memory section; RSS read at N/4, N/2 and N [1000000]")
    parser.add_argument("--introspection", action=argparse.BooleanOptionalAction, default=True,
                        help="the introspection section: ccserver vs node-oidc-provider, vs its own "
                        "issuance, JWT vs opaque [on]")
    parser.add_argument("--introspection-stores", type=listing(DURABLE_STORES), default=list(DURABLE_STORES),
                        help="stores of introspection vs opaque issuance with --introspection-workers "
                        "(empty: none) [sqlite,postgresql,redis]")
    parser.add_argument("--introspection-workers", type=int, default=2, metavar="N",
                        help="ccserver workers on those stores [2]")
    parser.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                        help="the latency section: p99 at 50%% and 90%% of each server's peak, at a "
                        "constant rate [on]")
    parser.add_argument("--latency-cases", type=listing(LATENCY_CASES), default=list(LATENCY_CASES),
                        help="issue,introspect [both]")
    parser.add_argument("--latency-issue-case", choices=tuple(CASES), default="es256",
                        help="the token type of the issuance latency [es256]")
    parser.add_argument("--population-tokens", type=int, default=0, metavar="N",
                        help="the growth section: N live opaque tokens bulk-loaded into PostgreSQL and "
                        "Redis (0: no growth section) [0]")
    parser.add_argument("--sqlite-population-tokens", type=int, default=1_000_000, metavar="N",
                        help="at most this many of them into SQLite [1000000]")
    parser.add_argument("--growth-stores", type=listing(DURABLE_STORES), default=list(DURABLE_STORES),
                        help="stores of the growth section [sqlite,postgresql,redis]")
    parser.add_argument("--growth-workers", type=int, default=2, metavar="N",
                        help="ccserver workers in the growth section [2]")
    parser.add_argument("--purge", action=argparse.BooleanOptionalAction, default=True,
                        help="the growth section's purge row: p99 while every filled token expires at "
                        "once and is purged, against its quiet value [on]")
    parser.add_argument("--purge-load", choices=("issue", "introspect"), default="issue",
                        help="what the full server answers in the purge row, at 50%% of its peak: "
                        "issuance (writes where the purge deletes) or introspection [issue]")
    parser.add_argument("--purge-quiet-seconds", type=int, default=60, metavar="S",
                        help="seconds of quiet windows measured before the fill's tokens expire [60]")
    parser.add_argument("--purge-after-seconds", type=int, default=purge.AFTER_WINDOWS * purge.WINDOW,
                        metavar="S", help="seconds of windows measured after the purge has ended "
                        f"(not judged; their largest p99 is in the note) [{purge.AFTER_WINDOWS * purge.WINDOW}]")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="also run py-spy on ccserver (first case) and write its raw profile here")
    parser.add_argument("--profile-load", choices=("token", "introspect"), default="token",
                        help="what the profiled server answers: token requests of the first case, "
                        "or introspection of one of its tokens [token]")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument(
        "--access-log",
        choices=("on", "off", "both"),
        default="both",
        help="ccserver's access log: on (its default, the headline), off (node-oidc-provider "
        "logs nothing per request), or both: on, with a second ccserver with it off beside it "
        "in the headline sections [both]",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="run ccserver with [tracing] on, every span kept and exported with OTLP to a "
        "collector the bench runs on loopback (which drops them) [off]",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or args.warmup <= 0:
        parser.error("--rounds, --seconds and --warmup must be positive")
    if args.machine_workers < 1 or args.durable_workers < 1:
        parser.error("--machine-workers and --durable-workers must be positive")
    if args.population <= SMALL_POPULATION:
        parser.error(f"--population must be more than {SMALL_POPULATION}")
    if args.population_budget <= 0:
        parser.error("--population-budget must be positive")
    if args.memory_tokens <= 0:
        parser.error("--memory-tokens must be positive")
    if args.introspection_workers < 1 or args.growth_workers < 1:
        parser.error("--introspection-workers and --growth-workers must be positive")
    if args.purge_quiet_seconds < purge.WINDOW:
        parser.error(f"--purge-quiet-seconds must be at least one window ({purge.WINDOW} s)")
    if args.purge_after_seconds < purge.WINDOW:
        parser.error(f"--purge-after-seconds must be at least one window ({purge.WINDOW} s)")
    if args.population_tokens < 0 or args.sqlite_population_tokens < 0:
        parser.error("--population-tokens and --sqlite-population-tokens must be 0 or more")
    return args



def git_revision() -> str:
    head = run_quiet(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]).stdout.strip() or "?"
    dirty = run_quiet(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")




def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    wrk = ensure_wrk()
    ensure_python_dependencies()
    tmp = Path(tempfile.mkdtemp(prefix="ccserver-bench-"))
    peer_dir = tmp / "peer"
    peer_dir.mkdir()
    bench: Bench | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        peer_version = install_peer(peer_dir)
        node = run_quiet(["node", "--version"]).stdout.strip()
        wrk_version = [
            line.split(" Copyright")[0] for line in (run_quiet([wrk, "-v"]).stdout or "").splitlines()[:1]
        ]
        busy = machine_busy()
        cpu_model = next(
            (row.split(":", 1)[1].strip() for row in Path("/proc/cpuinfo").read_text().splitlines()
             if row.startswith("model name")),
            platform.machine(),
        )
        say("")
        say(f"ccserver token benchmark  {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
        say(f"  ccserver {git_revision()} (Python {platform.python_version()}), "
            f"node-oidc-provider {peer_version} (Node.js {node}), {' '.join(wrk_version)}")
        say(f"  {os.cpu_count()} cores ({cpu_model}); load average {loadavg()}; "
            f"{busy:.2f} cores busy before the run; busiest: {busiest_processes()}")
        if busy > 0.3:
            say("  NOTE: other work is running on this machine: figures will be lower and noisier.")
        say(f"  wrk: {THREADS} thread, {CONNECTIONS} connections, keep-alive, {args.seconds:g} s a round, "
            f"{args.rounds} rounds, alternating; {args.warmup:g} s warm-up per server")
        runner = Runner(wrk, args.seconds, args.warmup)
        bench = Bench(args, runner, tmp, peer_dir)
        bench.cases()
        introspection.run_section(bench)
        bench.machine()
        bench.durable()
        introspection.run_store_section(bench)
        latency.run_section(bench)
        bench.stores()
        bench.workers()
        bench.population()
        auth.run_section(bench)
        memory_rows = memory.run_section(bench)
        growth.run_section(bench)
        say(f"\nResults (medians over {args.rounds} rounds; ratio = median of the per-round ratios; "
            f"load average now {loadavg()}; {(time.monotonic() - started) / 60:.1f} min)")
        if bench.rows:
            print_table(bench.rows)
        if bench.collector is not None:
            say(f"--tracing: the collector received {bench.collector.exports} OTLP exports")
            bench.collector.stop()
        memory.print_memory_table(memory_rows)
        if args.profile:
            profiling.profile(bench, args.profile)
        if args.json:
            args.json.write_text(json.dumps({
                "date": datetime.now(timezone.utc).isoformat(),
                "revision": git_revision(),
                "peer": f"oidc-provider {peer_version}",
                "rows": [row.as_json() for row in bench.rows],
                "memory": [row.as_json() for row in memory_rows],
                "errors": runner.errors,
            }, indent=1))
        if runner.errors:
            say(f"\n{len(runner.errors)} ERROR(S): the figures above are incomplete:")
            for e in runner.errors:
                say(f"  - {e.splitlines()[0]}")
            return 1
        return 0
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        if bench is not None:
            bench.stop_all()
        if args.keep:
            say(f"(logs kept in {tmp})")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
