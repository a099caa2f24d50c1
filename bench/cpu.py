"""
CPU accounting from /proc, in jiffies (clock ticks): the whole machine's,
and that of the processes the bench started, so that what other work ran on
the machine during a round can be told apart from the bench's own.

The parsers take the text of /proc files, so they are tested without
/proc; the readers around them read it.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessTicks:
    """
    What the bench needs of one C{/proc/<pid>/stat}.
    """

    parent: int
    group: int
    #: user + system jiffies
    ticks: int


def machine_ticks(proc_stat: str) -> tuple[int, int]:
    """
    (busy, total) jiffies of the whole machine, from the first line of
    C{/proc/stat} ("cpu  user nice system idle iowait irq softirq steal ...").
    Idle and I/O wait are not busy; steal is, as the guest could not run.
    """
    fields = [int(v) for v in proc_stat.splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def process_ticks(stat: str) -> ProcessTicks:
    """
    One C{/proc/<pid>/stat} line.  The command name is in parentheses and
    may hold spaces and parentheses, so the fields are counted from the last
    ")": state, parent, group, ..., utime (the 12th after the state), stime.
    """
    rest = stat[stat.rfind(")") + 2 :].split()
    return ProcessTicks(parent=int(rest[1]), group=int(rest[2]), ticks=int(rest[11]) + int(rest[12]))


def group_total(processes: dict[int, ProcessTicks], group: int) -> int:
    """
    The jiffies of every process of process group C{group}.
    """
    return sum(p.ticks for p in processes.values() if p.group == group)


def tree_total(processes: dict[int, ProcessTicks], roots: set[int]) -> int:
    """
    The jiffies of C{roots} and all their descendants.  A process group is
    not enough for PostgreSQL: every backend calls setsid() and leads a
    group of its own.
    """
    total = 0
    for pid, process in processes.items():
        ancestor = pid
        while ancestor > 1 and ancestor not in roots:
            parent = processes.get(ancestor)
            ancestor = parent.parent if parent is not None else 0
        if ancestor in roots:
            total += process.ticks
    return total


def rss_kib(status: str) -> int:
    """
    The resident set size, in KiB, from the text of C{/proc/<pid>/status}
    ("VmRSS:    123456 kB"); 0 for a process without one (a zombie).
    """
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def group_rss(processes: dict[int, ProcessTicks], group: int) -> dict[int, int]:
    """
    The RSS (KiB) of each live process of process group C{group}, by pid:
    its leader and, say, its workers.
    """
    sizes = {}
    for pid, process in processes.items():
        if process.group == group:
            try:
                sizes[pid] = rss_kib(Path(f"/proc/{pid}/status").read_text())
            except OSError:
                continue
    return sizes


def read_processes() -> dict[int, ProcessTicks]:
    """
    Every live process, by pid (those that exit while /proc is read are left out).
    """
    processes = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        processes[int(entry.name)] = process_ticks(stat)
    return processes


def cpu_ticks() -> tuple[int, int]:
    """
    (busy, total) jiffies of the whole machine, now.
    """
    return machine_ticks(Path("/proc/stat").read_text())


def pressure_total(text: str) -> int:
    """
    The microseconds, since the boot, during which some runnable task
    waited for a CPU: the C{total} of the "some" line of
    C{/proc/pressure/cpu} ("some avg10=1.00 avg60=0.50 avg300=0.20
    total=12345").
    """
    for line in text.splitlines():
        kind, *fields = line.split()
        if kind == "some":
            return int(dict(field.split("=", 1) for field in fields)["total"])
    raise ValueError(f"no 'some' line in {text!r}")


def cpu_pressure() -> int | None:
    """
    L{pressure_total} now, or None where the kernel keeps no pressure
    figures (built without C{CONFIG_PSI}, or booted with C{psi=0}).
    """
    try:
        return pressure_total(Path("/proc/pressure/cpu").read_text())
    except (OSError, ValueError):
        return None


def group_ticks(pgid: int) -> int:
    """
    The CPU jiffies (user + system) of every live process of a process group.
    """
    return group_total(read_processes(), pgid)


def tree_ticks(roots: set[int]) -> int:
    """
    The CPU jiffies (user + system) of live processes C{roots} and all
    their descendants.
    """
    return tree_total(read_processes(), roots)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_busy(seconds: float = 1.0) -> float:
    """
    Cores in use over C{seconds}, before we start anything.
    """
    b0, t0 = cpu_ticks()
    time.sleep(seconds)
    b1, t1 = cpu_ticks()
    cores = os.cpu_count() or 1
    return (b1 - b0) / max(1, t1 - t0) * cores


def busiest_processes(count: int = 3) -> str:
    try:
        out = subprocess.run(
            ["top", "-b", "-n", "1", "-w", "200"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "(top not available)"
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("PID"):
            rows = [row.split() for row in lines[i + 1 : i + 1 + count]]
            return ", ".join(f"{r[-1]} {r[8]}%" for r in rows if len(r) >= 12)
    return "?"
