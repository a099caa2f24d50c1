"""
The latency section (issue 23): p99 at 50% and 90% of each server's own
peak rate, ccserver against node-oidc-provider, one process each on the
memory store, for issuance (JWT ES256) and for introspection (an opaque
token).

Each server's peak is the median rate of C{--rounds} closed-loop rounds (as
fast as it answers, the other sections' load).  Then wrk drives each at a
constant rate, C{LATENCY_LOADS} of its own peak, in alternating rounds
(result.lua's pacing: each answer's latency counted from when its request
was due, so that a stall is charged to every request it held back, as
wrk2 does).  A row per case and load: PASS when ccserver's median p99 is no
worse than node-oidc-provider's.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.cases import CASES, LATENCY_LOADS, Case
from bench.cpu import loadavg
from bench.errors import MEASUREMENT_ERRORS, NotAvailable
from bench.output import say
from bench.report import Row
from bench.rounds import Round
from bench.servers import Peer, Server
from bench.wrk import Load, introspect_load, token_load

SECTION = "latency: p99 at a constant share of each server's own peak, memory store, 1 process each"
#: A paced round that sent less than this share of its due requests did
#: not keep its rate (the server, or wrk, fell behind): said in the note.
KEPT_RATE = 0.97
#: The latency cases: the issuance case, and introspection of an opaque token.
LATENCY_CASES = ("issue", "introspect")


def rate_kept(rounds: list[Round], rate: float) -> float:
    """
    The least share of the due rate that any of the rounds sent.
    """
    return min(r.tokens_per_s for r in rounds) / rate if rounds and rate > 0 else 0.0


def peak(rounds: list[Round]) -> float:
    """
    A server's peak: the median rate of its closed-loop rounds.
    """
    return float(statistics.median(r.tokens_per_s for r in rounds))


def describe(label: str, rounds: list[Round], rate: float, top: float) -> str:
    kept = rate_kept(rounds, rate)
    text = f"{label} {rate:,.0f}/s of peak {top:,.0f}"
    if kept < KEPT_RATE:
        text += f" (kept only {kept:.0%} of it)"
    return text


def run_section(bench: Any) -> None:
    args = bench.args
    if not args.latency:
        return
    for kind in args.latency_cases:
        case = CASES["opaque"] if kind == "introspect" else CASES[args.latency_issue_case]
        what = ("introspection, opaque token" if kind == "introspect"
                else f"issuance, {case.label}")
        say(f"\n== {SECTION}: {what}  (load {loadavg()})")
        short = "introspection" if kind == "introspect" else f"issuance {case.alg}"
        rows = [
            Row(SECTION, f"{short} at {share:.0%}", ours_label="ccserver", theirs_label="node",
                unit="req/s", judge="p99")
            for share in LATENCY_LOADS
        ]
        bench.rows.extend(rows)
        try:
            measure_case(bench, kind, case, rows)
        except NotAvailable as e:
            for row in rows:
                row.status, row.note = "not available", str(e)
            say(f"  not available: {e}")
        except MEASUREMENT_ERRORS as e:
            for row in rows:
                bench.error(row, e)
        finally:
            bench.stop_all()


def measure_case(bench: Any, kind: str, case: Case, rows: list[Row]) -> None:
    ours = bench.ccserver("ccserver", bench.workdir(f"latency-cc-{kind}"), case, "memory://")
    theirs = Peer("node", bench.workdir(f"latency-peer-{kind}"), bench.peer_dir, case)
    servers: list[Server] = [ours, theirs]
    loads: dict[str, Load] = {}
    for server in servers:
        bench.start(server, case)
        loads[server.label] = (introspect_load(server, str(server.token()["access_token"]))
                               if kind == "introspect" else token_load(server))
    runner = bench.runner
    closed = runner.measure(servers, bench.args.rounds, loads)
    peaks = {label: peak(rounds) for label, rounds in closed.items()}
    say("  peaks: " + ", ".join(f"{label} {rate:,.0f}/s" for label, rate in peaks.items()))
    for share, row in zip(LATENCY_LOADS, rows, strict=True):
        paced = {label: load.paced(share * peaks[label]) for label, load in loads.items()}
        say(f"  at {share:.0%} of each peak: "
            + ", ".join(f"{label} {load.rate:,.0f}/s" for label, load in paced.items()))
        results = runner.measure(servers, bench.args.rounds, paced)
        row.ours, row.theirs = results[ours.label], results[theirs.label]
        row.note = "; ".join(
            describe(label, results[label], paced[label].rate or 0.0, peaks[label])
            for label in (ours.label, theirs.label)
        )
