"""
Rounds: one wrk run against one server, measured (a Round: rate,
latencies, and who used the CPU meanwhile); the warm-up and the A B A B
alternation of a section; and the fill of a store with registrations.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bench import cpu, wrk
from bench.errors import BenchError
from bench.install import run_quiet
from bench.output import say
from bench.servers import CCServer, Server
from bench.wrk import Load, token_load


@dataclass
class Round:
    server: str
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    cpu_cores: float
    other_cores: float
    #: the throwaway Redis and PostgreSQL servers (all of them: the others idle)
    store_cores: float = 0.0
    #: CPU seconds (user + system) of the server's processes during the round
    cpu_seconds: float = 0.0
    #: the resident set size (MiB) of the server's largest process at the
    #: end of the round (a worker: each serves its share of the tokens)
    rss_mb: float = 0.0
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def per_core(self) -> float:
        """
        Tokens per CPU-second of the server's processes (all of them: a
        node cluster's primary and workers, ccserver's workers): what a
        token costs, whatever the cores it was spread over and whatever
        else the machine ran meanwhile.  0 when no CPU time was counted.
        """
        return self.requests / self.cpu_seconds if self.cpu_seconds > 0 else 0.0


class Runner:
    def __init__(self, wrk: str, seconds: int, warmup: int) -> None:
        self.wrk = wrk
        self.seconds = seconds
        self.warmup = warmup
        self.errors: list[str] = []
        #: the first processes of the throwaway store servers (name: pid),
        #: whose CPU, with their descendants', is the bench's own, not
        #: "other load"
        self.store_groups: dict[str, int] = {}

    def wrk_once(
        self, server: Server, seconds: int, everyone: list[Server], load: Load | None = None
    ) -> Round:
        if not server.alive():
            raise BenchError(f"{server.label} is not running any more; see {server.err_path}")
        load = load or token_load(server)
        argv = wrk.wrk_argv(self.wrk, server.base, seconds, load)
        ours0 = {s.label: cpu.group_ticks(s.pgid) for s in everyone if s.alive()}
        stores0 = cpu.tree_ticks(set(self.store_groups.values()))
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0, total0 = cpu.cpu_ticks()
        extra = load.environment()
        result = run_quiet(argv, timeout=seconds + 60, env={**os.environ, **extra} if extra else None)
        busy1, total1 = cpu.cpu_ticks()
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        processes = cpu.read_processes()
        ours1 = {s.label: cpu.group_total(processes, s.pgid) for s in everyone if s.alive()}
        rss = cpu.group_rss(processes, server.pgid) if server.alive() else {}
        stores1 = cpu.tree_ticks(set(self.store_groups.values()))
        raw = wrk.result(result.stdout.splitlines())
        if result.returncode != 0 or raw is None:
            last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
            raise BenchError(
                f"wrk against {server.label} failed ({result.returncode}): {last}\n"
                f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
            )
        load.created += raw.get("created", 0)
        load.sent += raw.get("sent", 0)
        problems = wrk.problems(raw, server.alive(), server.err_path)
        if problems:
            raise BenchError(f"{server.label}: " + "; ".join(problems))
        elapsed = (total1 - total0) / (os.cpu_count() or 1)  # jiffies of wall time
        server_ticks = ours1.get(server.label, 0) - ours0.get(server.label, 0)
        server_cpu = server_ticks / max(1, elapsed)
        wrk_ticks = (
            children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime
        ) * cpu.CLK_TCK
        store_ticks = max(0, stores1 - stores0)
        ours = sum(ours1.get(k, 0) - v for k, v in ours0.items()) + store_ticks
        other = (busy1 - busy0 - ours - wrk_ticks) / max(1, elapsed)
        return Round(
            server=server.label,
            # for registrations, the 201 answers (the same as requests)
            tokens_per_s=raw.get("created", raw["requests"]) / (raw["duration_us"] / 1e6),
            # at a constant rate, latencies from when each request was due
            p50_ms=raw.get("paced_p50_us", raw["p50_us"]) / 1000,
            p99_ms=raw.get("paced_p99_us", raw["p99_us"]) / 1000,
            requests=raw["requests"],
            cpu_cores=server_cpu,
            other_cores=max(0.0, other),
            store_cores=store_ticks / max(1, elapsed),
            cpu_seconds=server_ticks / cpu.CLK_TCK,
            rss_mb=max(rss.values(), default=0) / 1024,
            raw=raw,
        )

    def measure(
        self, servers: list[Server], rounds: int, loads: dict[str, Load] | None = None
    ) -> dict[str, list[Round]]:
        """
        Warm every server up, then A B (C ...) A B (C ...) for C{rounds}.
        C{loads}: what wrk sends to each server (by label), if not
        token.lua's one client.
        """
        loads = loads or {}
        for server in servers:
            self.wrk_once(server, self.warmup, servers, loads.get(server.label))
        results: dict[str, list[Round]] = {s.label: [] for s in servers}
        for n in range(1, rounds + 1):
            for server in servers:
                load = loads.get(server.label)
                r = self.wrk_once(server, self.seconds, servers, load)
                results[server.label].append(r)
                unit = load.unit if load else "tokens/s"
                say(
                    f"  round {n}/{rounds}  {server.label:<34} {r.tokens_per_s:>8,.0f} {unit}"
                    f"  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms"
                    f"  server cpu {r.cpu_cores:4.2f} ({r.per_core:,.0f}/cpu-s)"
                    + (f"  store cpu {r.store_cores:4.2f}" if self.store_groups else "")
                    + f"  other load {r.other_cores:4.2f} cores  rss {r.rss_mb:,.0f} MiB"
                )
        return results

    def fill(self, server: CCServer, count: int, budget: int, load: Load) -> tuple[int, float, str]:
        """
        Register C{count} clients through C{server}'s C{POST /client-reg}
        with wrk (register.lua's STOP_AFTER), within C{budget} seconds.
        C{load} holds the master token and where register.lua keeps the
        sampled credentials; C{load.created} grows by the clients made.
        Returns (clients made: registrations sent, seconds, why it
        ended).  register.lua prints BENCH_STOPPED once every registration
        was answered; wrk itself would wait out its -d, so it gets SIGINT
        then (its summary and done() follow as usual).
        """
        if not server.alive():
            raise BenchError(f"{server.label} is not running any more; see {server.err_path}")
        fill_load = Load(load.script, load.path, [*load.args[:3], str(count)], load.unit)
        argv = wrk.wrk_argv(self.wrk, server.base, budget, fill_load)
        err_path = server.workdir / f"fill-{time.monotonic_ns()}.stderr"
        started = time.monotonic()
        stopped_at: float | None = None
        with open(err_path, "w") as err:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        # wrk ends by itself after -d; this only guards against a hang
        guard = threading.Timer(budget + 60, process.kill)
        guard.start()
        lines = []
        try:
            assert process.stdout is not None
            for out in process.stdout:
                lines.append(out)
                if out.startswith("BENCH_STOPPED") and stopped_at is None:
                    stopped_at = time.monotonic()
                    process.send_signal(signal.SIGINT)
            process.wait()
        finally:
            guard.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
        seconds = (stopped_at or time.monotonic()) - started
        raw = wrk.result(lines)
        if process.returncode != 0 or raw is None:
            raise BenchError(
                f"wrk filling {server.label} failed ({process.returncode}): "
                f"{''.join(lines)[-1500:]}\n{err_path.read_text(errors='replace')[-1500:]}"
            )
        load.created += raw["created"]
        load.sent += raw["sent"]
        problems = wrk.problems(raw, server.alive(), server.err_path)
        if problems:
            raise BenchError(f"{server.label} (filling): " + "; ".join(problems))
        why = "done" if stopped_at is not None else f"the {budget} s budget ran out"
        return raw["sent"], seconds, why


