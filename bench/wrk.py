"""
The load: what wrk sends (a Lua script, a path, the script's arguments)
and what its one C{BENCH_RESULT {json}} line says.  token.lua and
register.lua print that line from wrk's C{done()}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.paths import INTROSPECT_LUA, LUA, REGISTER_LUA
from bench.servers import CCServer, Server

CONNECTIONS = 32
THREADS = 1


@dataclass
class Load:
    """
    What wrk sends: a Lua script, the URL path, the script's arguments (after
    C{--}).  The default load is token.lua's one client on C{/token}.
    """

    script: Path
    path: str
    args: list[str]
    #: what one answer is, in the round lines ("tokens/s", "registrations/s")
    unit: str = "tokens/s"
    #: clients registered (201 answers) by every run of this load, warm-up included
    created: int = 0
    #: registrations sent by every run of this load: C{created}, plus those
    #: still in flight when a timed run ended (the server makes them too)
    sent: int = 0
    #: requests a second at a constant rate (result.lua's pacing), or None
    #: for as fast as the server answers
    rate: float | None = None

    def paced(self, rate: float) -> Load:
        """
        The same load at C{rate} requests a second.
        """
        return Load(self.script, self.path, self.args, self.unit, rate=rate)

    def environment(self) -> dict[str, str]:
        """
        What wrk's environment adds for this load (the pacing's rate).
        """
        if self.rate is None:
            return {}
        return {"BENCH_RATE": f"{self.rate:.3f}", "BENCH_THREADS": str(THREADS)}


def token_load(server: Server) -> Load:
    return Load(LUA, "/token", [server.basic])


def introspect_load(server: Server, token: str) -> Load:
    """
    introspect.lua: C{server}'s client introspects C{token} at the
    server's introspection endpoint; only C{"active":true} answers count.
    """
    return Load(INTROSPECT_LUA, server.introspection_path, [server.basic, token], "introspections/s")


def clients_load(path: Path, clients: list[str]) -> Load:
    """
    token.lua round-robin over C{clients} (Basic credentials), written to
    C{path}, one a line.
    """
    path.write_text("\n".join(clients) + "\n")
    return Load(LUA, "/token", ["@" + str(path)])


def register_load(server: CCServer, keep_probability: float, kept: Path) -> Load:
    """
    register.lua against C{server}: each new client's id and secret kept
    in C{kept} with C{keep_probability} (read them with L{kept_clients}).
    """
    return Load(REGISTER_LUA, "/client-reg", [server.master_token, f"{keep_probability:.6g}", str(kept)],
                "registrations/s")


def kept_clients(kept: Path) -> list[tuple[str, str]]:
    """
    The (client id, secret) pairs register.lua kept in C{kept}, one
    C{id<TAB>secret} a line; none if it kept none (no file).
    """
    text = kept.read_text() if kept.exists() else ""
    pairs = [line.split("\t") for line in text.splitlines()]
    return [(pair[0], pair[1]) for pair in pairs if len(pair) == 2]


def wrk_argv(wrk: str, base: str, seconds: int, load: Load) -> list[str]:
    """
    One wrk run of C{load} against the server at C{base} for C{seconds}:
    keep-alive, THREADS thread, CONNECTIONS connections.
    """
    return [
        wrk,
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(load.script),
        base + load.path,
        "--",
        *load.args,
    ]


def result(lines: list[str]) -> dict[str, Any] | None:
    """
    The figures of the C{BENCH_RESULT} line among wrk's output lines, or
    None if it printed none (it failed, or was killed).
    """
    line = next((out for out in lines if out.startswith("BENCH_RESULT ")), None)
    if line is None:
        return None
    raw: dict[str, Any] = json.loads(line.split(" ", 1)[1])
    return raw


def problems(raw: dict[str, Any], server_alive: bool, err_path: Path) -> list[str]:
    """
    What went wrong in a wrk run, from its BENCH_RESULT: answers other
    than the expected status (200 for tokens, 201 for registrations),
    socket errors, nothing answered, the server dead.
    """
    found = []
    unexpected = raw.get("unexpected", raw.get("non200", 0))
    if unexpected:
        found.append(
            f"{unexpected} answers were not {raw.get('expected', 200)} (the first: "
            f"{raw['first_bad_status']} {raw['first_bad_body'][:200]!r})"
        )
    socket_errors = {k: v for k, v in raw["errors"].items() if v and k != "status"}
    if socket_errors:
        found.append(f"socket errors {socket_errors}")
    if raw["requests"] == 0:
        found.append("no request was answered")
    if not server_alive:
        found.append(f"the server died; see {err_path}")
    return found
