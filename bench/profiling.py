"""
Where ccserver's time goes: py-spy on ccserver while wrk drives it
(--profile), and a summary of py-spy's raw output by area and function.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.cases import CASES
from bench.errors import MEASUREMENT_ERRORS
from bench.install import run_quiet
from bench.output import loud, say
from bench.sections import Bench
from bench.wrk import introspect_load


def profile(bench: Bench, out: Path) -> None:
    """
    Run py-spy on ccserver (the first case, memory store) under the same
    wrk load as the rounds, write its raw profile to C{out}, summarise it.
    """
    introspect = bench.args.profile_load == "introspect"
    if introspect:
        case = CASES["opaque"]
    else:
        case = CASES[bench.args.cases[0]] if bench.args.cases else CASES["es256"]
    what = f"introspection of an {case.label} token" if introspect else case.label
    say(f"\n== profile: ccserver {what}, memory store, py-spy for {bench.args.seconds:g} s")
    if shutil.which("py-spy") is None:
        say("pip install py-spy")
        run_quiet([sys.executable, "-m", "pip", "install", "-q", "py-spy"])
    spy = shutil.which("py-spy")
    if spy is None:
        say("  py-spy is not available: no profile")
        return
    server = bench.ccserver(f"ccserver {case.label} (profiled)", bench.workdir("profile"), case, "memory://")
    try:
        bench.start(server, case)
        load = introspect_load(server, str(server.token()["access_token"])) if introspect else None
        bench.runner.wrk_once(server, bench.args.warmup, [server], load)
        out.parent.mkdir(parents=True, exist_ok=True)
        spy_process = subprocess.Popen(
            [spy, "record", "-d", f"{int(bench.args.seconds)}", "-r", "200", "-o", str(out),
             "--format", "raw", "-p", str(server.pgid)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        time.sleep(0.5)
        r = bench.runner.wrk_once(server, bench.args.seconds, [server], load)
        spy_output = spy_process.communicate(timeout=60)[0].decode(errors="replace")
        say(f"  under py-spy: {r.tokens_per_s:,.0f} {load.unit if load else 'tokens/s'} (sampling slows it)")
        if spy_process.returncode != 0 or not out.exists():
            say(f"  py-spy failed: {spy_output[-800:]}")
            return
        summarise_profile(out)
    except MEASUREMENT_ERRORS as e:
        loud(f"profile: {e}")
    finally:
        bench.stop_all()


#: Where a sample's time goes.  The first two areas take a sample whose
#: stack holds such a frame anywhere (logging and signing are leaves of the
#: request); the others take it by the innermost frame that matches one.
PROFILE_AREAS_ANYWHERE: list[tuple[str, Callable[[str], bool]]] = [
    ("logging: access log line, its buffered write; twisted.logger events",
     lambda f: "twisted/logger/" in f or "ccserver/accesslog.py" in f
     or f.startswith(("_access_log ", "access_line_of ", "HTTPFactory.log "))),
    ("signature: PyJWT algorithm + cryptography",
     lambda f: "jwt/" in f or "cryptography/" in f),
]
PROFILE_AREAS_INNERMOST: list[tuple[str, Callable[[str], bool]]] = [
    ("ccserver: form, client auth, grant, claims, JSON answer", lambda f: "ccserver/" in f),
    ("Klein + werkzeug: routing, request/response wrappers",
     lambda f: "klein/" in f or "werkzeug/" in f),
    ("twisted.web: HTTP parsing, headers, writing", lambda f: "twisted/web/" in f),
    ("Twisted core: reactor, TCP reads and writes, Deferreds", lambda f: "twisted/" in f),
]


def profile_area(frames: list[str]) -> str:
    for name, rule in PROFILE_AREAS_ANYWHERE:
        if any(rule(frame) for frame in frames):
            return name
    for frame in reversed(frames):
        for name, rule in PROFILE_AREAS_INNERMOST:
            if rule(frame):
                return name
    return "other: Python stdlib, interpreter"


def summarise_profile(path: Path, top: int = 20) -> None:
    """
    py-spy's raw format: one collapsed stack a line, root first,
    "frame;frame;... count", a frame being "function (file:line)".
    Prints the time by area, the functions with the most samples at the
    top of the stack (self), and the ccserver, Klein and logging functions
    with the most samples on the stack (inclusive).
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    areas: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        area = profile_area(frames)
        areas[area] = areas.get(area, 0) + count
    if not total:
        say("  (empty profile)")
        return
    say(f"  {total} samples (busy time only) in {path}")
    say("  by area (each sample counted once):")
    for name, count in sorted(areas.items(), key=lambda kv: -kv[1]):
        say(f"    {100 * count / total:5.1f}%  {name}")
    say("  most time at the top of the stack (self):")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        say(f"    {100 * count / total:5.1f}%  {frame}")
    say("  ccserver, Klein, PyJWT and logging functions, time on the stack (inclusive):")
    interesting = ("ccserver/", "klein/", "jwt/", "twisted/logger/", "_access_log", "accesslog")
    chosen = [(f, c) for f, c in inclusive.items() if any(k in f for k in interesting)]
    for frame, count in sorted(chosen, key=lambda kv: -kv[1])[:top]:
        say(f"    {100 * count / total:5.1f}%  {frame}")

