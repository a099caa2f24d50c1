"""
What the soak prints and writes: a line per interval as it closes, then
the requests by kind, the growth of each process after the warm-up, the
store against the live tokens, and the checks; the same as JSON.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.soak.load import Observation, SoakRun
from bench.soak.options import describe
from bench.soak.procs import ProcessSample
from bench.soak.stats import (
    Growth,
    KindFigures,
    failures,
    growth,
    is_server_error,
    merge,
    milliseconds,
    percentile,
)
from bench.soak.traffic import EXPECTED_STATUS

#: The answer each kind expects, as recorded: a status, or a command's exit.
EXPECTED = {**{kind: str(status) for kind, status in EXPECTED_STATUS.items()},
            "keys_rotate": "exit 0", "keys_retire": "exit 0"}
MIB = 1024 * 1024


@dataclass(frozen=True)
class Check:
    name: str
    #: None: not judged (the run was too short)
    passed: bool | None
    detail: str

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[self.passed]
        return f"  {verdict}  {self.name}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def processes_cell(samples: Sequence[ProcessSample]) -> str:
    return "  ".join(f"{s.role[0]}{s.pid} {s.rss_kib / 1024:.1f}M/{s.open_files}" for s in samples)


def header() -> str:
    return (f"{'time':>7} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'5xx':>4} {'wrong':>5}  "
            f"{'live tok':>9} {'stored':>9} {'store MiB':>9} {'purged':>7} {'keys':>4} {'clients':>7}  "
            f"{'cpu srv/store/soak/other':>24} {'load':>5}  processes: pid RSS/open files")


def interval_line(observation: Observation) -> str:
    """
    One interval: its request rate, p50/p99 over every kind, its 5xx and
    other unexpected answers; the tokens alive against those stored and
    the store's size at its end, the records the server purged in it, the
    keys /jwks.json listed, the load's registered clients; the cores the
    server, the store, the soak itself and everything else used, and the
    machine's load average (1 minute); and each server process's RSS and
    open files.  Below it, a line for each unexpected answer (kind and
    answer, how many).
    """
    interval = observation.interval
    latencies = interval.latencies()
    unexpected = failures(interval.kinds, EXPECTED)
    wrong = sum(unexpected.values())
    store = observation.store
    stored = "-" if store is None or store.tokens is None else f"{store.tokens:,}"
    size = "-" if store is None else f"{store.size / MIB:,.1f}"
    return (f"{describe(interval.end):>7} {interval.rate:>7,.0f} {ms(percentile(latencies, 0.5)):>7} "
            f"{ms(percentile(latencies, 0.99)):>7} {interval.server_errors():>4} {wrong:>5}  "
            f"{observation.live_tokens:>9,} {stored:>9} {size:>9} {observation.log.purged:>7,} "
            f"{'-' if observation.jwks_keys is None else observation.jwks_keys:>4} {observation.dynamic_clients:>7}  "
            f"{cpu_cell(observation.cpu):>24} {observation.load[0]:>5.2f}  {processes_cell(observation.processes)}"
            + "".join(f"\n{'':>7} unexpected: {kind} x{n}" for kind, n in unexpected.most_common()))


def cpu_cell(used: dict[str, float]) -> str:
    return "/".join(f"{used.get(part, 0.0):.2f}" for part in ("server", "store", "soak", "other"))


def series(run: SoakRun) -> dict[str, list[tuple[float, float, float]]]:
    """
    Each process's samples, by its label ("main 1234"): (seconds since the
    start, RSS in KiB, open files).
    """
    by_process: dict[str, list[tuple[float, float, float]]] = {}
    for at, samples in run.process_samples:
        for sample in samples:
            by_process.setdefault(sample.label, []).append((at, sample.rss_kib, sample.open_files))
    return by_process


def growths(run: SoakRun, warmup: float, window: float) -> list[tuple[str, Growth | None, Growth | None]]:
    """
    (process, RSS growth, open files growth) for each process sampled.
    """
    rows = []
    for label, points in series(run).items():
        rss = growth(f"{label} RSS", [(at, kib) for at, kib, _ in points], warmup, window, run.ran)
        files = growth(f"{label} open files", [(at, n) for at, _, n in points], warmup, window, run.ran)
        rows.append((label, rss, files))
    return rows


def checks(run: SoakRun, totals: dict[str, KindFigures], warmup: float, window: float) -> list[Check]:
    requests = sum(k.requests for k in totals.values())
    server_errors = {f"{kind} {answer}": n for kind, figures in totals.items()
                     for answer, n in figures.answers.items() if is_server_error(answer)}
    wrong = failures(totals, EXPECTED)
    errors = [line for o in run.observations for line in o.log.errors]
    rows = growths(run, warmup, window)
    judged = [g for _, rss, files in rows for g in (rss, files) if g is not None]
    grown = [g for g in judged if not g.passed]
    result = [
        Check("no 5xx answers", not server_errors,
              f"{sum(server_errors.values()):,} of {requests:,} requests"
              + (f" ({', '.join(f'{k}: {n:,}' for k, n in sorted(server_errors.items()))})" if server_errors else "")),
        Check("every answer the one expected", not wrong,
              "none other" if not wrong else ", ".join(f"{k}: {n:,}" for k, n in wrong.most_common(8))),
        Check("the server's processes ran throughout", not run.server_problems,
              "; ".join(run.server_problems) or f"{len(rows)} processes, the same pids from start to end"),
        Check("the soak ran as planned", not run.soak_errors and not run.interrupted,
              "; ".join(run.soak_errors) or ("interrupted" if run.interrupted else f"{describe(run.ran)} of load")),
        Check("nothing logged at error or critical level", not errors,
              f"{len(errors)} events" + (f", first: {errors[0]}" if errors else "")),
    ]
    if not judged:
        result.append(Check("no growth after the warm-up beyond 10%", None,
                            "the run is too short to compare an interval after the warm-up with the last"))
    else:
        result.append(Check("no growth after the warm-up beyond 10%", not grown,
                            ", ".join(f"{g.name} {g.change:+.1%}" for g in grown) or
                            f"largest {max(judged, key=lambda g: g.change).name} "
                            f"{max(g.change for g in judged):+.1%}"))
    return result


def print_summary(run: SoakRun, warmup: float, window: float, say: Any) -> list[Check]:
    """
    Print the tables after the intervals; return the checks.
    """
    totals = merge(o.interval for o in run.observations)
    say("")
    say(f"Requests by kind over {describe(run.ran)} (p50/p99 of the answered ones):")
    say(f"  {'kind':<14} {'requests':>10}  {'p50 ms':>7} {'p99 ms':>7}  answers")
    for kind, figures in sorted(totals.items(), key=lambda item: -item[1].requests):
        answers = ", ".join(f"{answer}: {n:,}" for answer, n in figures.answers.most_common())
        say(f"  {kind:<14} {figures.requests:>10,}  {ms(percentile(figures.latencies, 0.5)):>7} "
            f"{ms(percentile(figures.latencies, 0.99)):>7}  {answers}")
    everything = [v for f in totals.values() for v in f.latencies]
    say(f"  {'total':<14} {sum(f.requests for f in totals.values()):>10,}  "
        f"{ms(percentile(everything, 0.5)):>7} {ms(percentile(everything, 0.99)):>7}")
    if len(run.observations) >= 2:
        first, last = run.observations[0], run.observations[-1]
        say(f"  p50/p99 of the first interval ({describe(first.interval.end - first.interval.start)}) "
            f"{slice_text(first)}, of the last {slice_text(last)}")
    loads = [o.load[0] for o in run.observations]
    if loads:
        say(f"  the machine's load average (1 minute) at the intervals' ends: {min(loads):.2f} to "
            f"{max(loads):.2f}, median {statistics.median(loads):.2f}")
    say("")
    say(f"Growth after the warm-up ({describe(warmup)}): the median of the samples of the interval after it "
        f"against that of the last interval ({describe(window)} each):")
    for label, rss, files in growths(run, warmup, window):
        say(f"  {label:<14} RSS {grow_text(rss, 1024, 'MiB')}   open files {grow_text(files, 1, '')}")
    purges = sum(o.log.purges for o in run.observations)
    purged = sum(o.log.purged for o in run.observations)
    warnings: Counter[str] = Counter()
    for observation in run.observations:
        warnings.update(observation.log.warnings)
    say("")
    for name, chosen in (("first", run.observations[:1]), ("last", run.observations[-1:])):
        for o in chosen:
            say(f"Store at the end of the {name} interval ({describe(o.interval.end)}): {store_text(o)}")
    say(f"Purges: {purges} that dropped something, {purged:,} records in all"
        + (f"; warnings logged: {', '.join(f'{n} x {w!r}' for w, n in warnings.items())}" if warnings else ""))
    result = checks(run, totals, warmup, window)
    say("")
    say("Checks:")
    for check in result:
        say(check.line())
    return result


def store_text(observation: Observation) -> str:
    store = observation.store
    if store is None:
        return f"not read ({observation.store_error})"
    return (f"{store.size / MIB:,.1f} MiB, {'?' if store.tokens is None else f'{store.tokens:,}'} token records "
            f"for {observation.live_tokens:,} live tokens; " + ", ".join(f"{k} {v:,}" for k, v in store.detail.items()))


def slice_text(observation: Observation) -> str:
    latencies = observation.interval.latencies()
    return f"{ms(percentile(latencies, 0.5))}/{ms(percentile(latencies, 0.99))} ms"


def grow_text(figure: Growth | None, unit: float, name: str) -> str:
    if figure is None:
        return "not judged"
    verdict = "PASS" if figure.passed else "FAIL"
    return (f"{figure.warm / unit:,.1f} -> {figure.last / unit:,.1f}{' ' + name if name else ''} "
            f"({figure.change:+.1%}) {verdict}")


def as_json(run: SoakRun, warmup: float, window: float, result: list[Check], about: dict[str, Any]) -> dict[str, Any]:
    totals = merge(o.interval for o in run.observations)
    everything = [v for f in totals.values() for v in f.latencies]
    return {
        **about,
        "ran_s": round(run.ran, 1),
        "interrupted": run.interrupted,
        "requests": sum(f.requests for f in totals.values()),
        "p50_ms": milliseconds(percentile(everything, 0.5)),
        "p99_ms": milliseconds(percentile(everything, 0.99)),
        "totals": {kind: figures.as_json() for kind, figures in sorted(totals.items())},
        "intervals": [observation_json(o) for o in run.observations],
        "process_samples": [{"at_s": round(at, 1), "processes": [s.as_json() for s in samples]}
                            for at, samples in run.process_samples],
        "growth": [g.as_json() for _, rss, files in growths(run, warmup, window)
                   for g in (rss, files) if g is not None],
        "server_problems": run.server_problems,
        "checks": [c.as_json() for c in result],
        "passed": all(c.passed is not False for c in result),
    }


def observation_json(observation: Observation) -> dict[str, Any]:
    interval = observation.interval
    latencies = interval.latencies()
    return {
        "start_s": round(interval.start, 1),
        "end_s": round(interval.end, 1),
        "requests": interval.requests,
        "rate": round(interval.rate, 1),
        "p50_ms": milliseconds(percentile(latencies, 0.5)),
        "p99_ms": milliseconds(percentile(latencies, 0.99)),
        "server_errors": interval.server_errors(),
        "kinds": {kind: figures.as_json() for kind, figures in sorted(interval.kinds.items())},
        "processes": [s.as_json() for s in observation.processes],
        "store": None if observation.store is None else observation.store.as_json(),
        "store_error": observation.store_error,
        "live_tokens": observation.live_tokens,
        "dynamic_clients": observation.dynamic_clients,
        "jwks_keys": observation.jwks_keys,
        "purges": observation.log.purges,
        "purged": observation.log.purged,
        "log_errors": observation.log.errors,
        "warnings": dict(observation.log.warnings),
        "cpu_cores": {part: round(value, 3) for part, value in observation.cpu.items()},
        "loadavg": list(observation.load),
    }
