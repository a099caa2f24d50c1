"""
The server's processes, read from /proc: which they are (the main process
the soak started, and its workers: the rest of its process group), and
what each holds: resident memory (C{VmRSS} of C{/proc/<pid>/status}) and
open file descriptors (the entries of C{/proc/<pid>/fd}).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import cpu

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessSample:
    #: "main", or "worker"
    role: str
    pid: int
    rss_kib: int
    open_files: int

    @property
    def label(self) -> str:
        return f"{self.role} {self.pid}"

    def as_json(self) -> dict[str, Any]:
        return {"role": self.role, "pid": self.pid, "rss_kib": self.rss_kib, "open_files": self.open_files}


def server_processes(processes: dict[int, cpu.ProcessTicks], leader: int) -> list[tuple[str, int]]:
    """
    (role, pid) of the live processes of C{leader}'s process group: the
    leader (the main process) first, then the workers by pid.
    """
    group = sorted(pid for pid, process in processes.items() if process.group == leader)
    return [("main", leader)] * (leader in group) + [("worker", pid) for pid in group if pid != leader]


def open_files(pid: int, proc: Path = PROC) -> int | None:
    """
    How many file descriptors C{pid} has open; None once it is gone.
    """
    try:
        return len(os.listdir(proc / str(pid) / "fd"))
    except OSError:
        return None


def resident_kib(pid: int, proc: Path = PROC) -> int | None:
    try:
        return cpu.rss_kib((proc / str(pid) / "status").read_text())
    except OSError:
        return None


def sample(leader: int, proc: Path = PROC) -> list[ProcessSample]:
    """
    A L{ProcessSample} of each process of the server now (one that ends
    while it is read is left out).
    """
    samples = []
    for role, pid in server_processes(cpu.read_processes(), leader):
        rss, files = resident_kib(pid, proc), open_files(pid, proc)
        if rss is not None and files is not None:
            samples.append(ProcessSample(role, pid, rss, files))
    return samples


@dataclass(frozen=True)
class CpuReading:
    """
    CPU jiffies so far: the machine's (busy, all), the server's process
    group, the store server's process tree (PostgreSQL's backends lead
    sessions of their own), and the soak's own process with the commands
    it ran (`ccserver keys`).
    """

    machine_busy: int
    machine_total: int
    server: int
    store: int
    soak: int


def read_cpu(leader: int, store_roots: set[int]) -> CpuReading:
    processes = cpu.read_processes()
    busy, total = cpu.cpu_ticks()
    own = os.times()
    soak = (own.user + own.system + own.children_user + own.children_system) * cpu.CLK_TCK
    return CpuReading(busy, total, cpu.group_total(processes, leader), cpu.tree_total(processes, store_roots),
                      round(soak))


def cores(before: CpuReading, after: CpuReading, seconds: float, cpus: int) -> dict[str, float]:
    """
    Cores used on average between two readings C{seconds} apart: the
    server, the store, the soak (its load generator), everything else on
    the machine ("other"), and the machine in all.  A process that ended
    in between takes its jiffies with it, so a part is never below 0.
    """
    ticks = max(1.0, seconds * cpu.CLK_TCK)
    machine_ticks = max(1, after.machine_total - before.machine_total)
    machine = (after.machine_busy - before.machine_busy) / machine_ticks * cpus
    parts = {
        "server": max(0, after.server - before.server) / ticks,
        "store": max(0, after.store - before.store) / ticks,
        "soak": max(0, after.soak - before.soak) / ticks,
    }
    return {**parts, "other": max(0.0, machine - sum(parts.values())), "machine": machine}
