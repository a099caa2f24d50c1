"""
The introspection section (issue 23): RFC 7662 introspection of a token by
the client it was issued to, client_secret_basic, as a resource server
does on each call it serves (introspect.lua: only C{"active":true} answers
count).

  - ccserver against node-oidc-provider, each introspecting one of its own
    opaque tokens, memory store, one process each (node-oidc-provider
    refuses to introspect its JWT access tokens);
  - ccserver's introspection of an opaque token against its own issuance of
    opaque tokens, same set-up;
  - ccserver's introspection of a JWT (ES256) against that of an opaque
    token;
  - the HTTP floor (bench/floor.py: ccserver's HTTP layer on twisted.web,
    answering a constant, no OAuth work) against the opaque introspection,
    with no target: where the floor is; the row of introspection against
    issuance says how much the target leaves above it;
  - on each durable store of C{--introspection-stores}, C{--workers 2}:
    introspection of an opaque token against the issuance of opaque tokens
    on the same store.

All of the first four in one alternation; with C{--access-log both} (the
default) each ccserver runs as configured by default, access log on, and
a second one with the access log off gives the figure beside it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.cases import (
    CASES,
    INTROSPECTION_PEER_TARGET,
    INTROSPECTION_STORE_TARGET,
    INTROSPECTION_TARGET,
    JWT_INTROSPECTION_TARGET,
    Case,
)
from bench.cpu import loadavg
from bench.errors import MEASUREMENT_ERRORS, NotAvailable
from bench.output import say
from bench.report import Row
from bench.rounds import Round
from bench.sections import access_log_note
from bench.servers import CCServer, Floor, Peer, Server
from bench.wrk import Load, introspect_load, token_load

SECTION = "introspection: opaque token, memory store, 1 process each"
#: the HTTP floor's label (bench/floor.py)
FLOOR = "HTTP floor"
STORE_SECTION = "introspection on durable stores: ccserver --workers {workers}, opaque"


@dataclass
class Measured:
    """
    One server of an alternation and what wrk sends it.
    """

    server: Server
    load: Load


def floor_note(introspect: list[Round], issue: list[Round], floor: list[Round], target: float) -> str:
    """
    Where the floor is, for the row of introspection against issuance: the
    server CPU of a request of each (the median of the rounds'), and how
    much of it the target leaves for all of ccserver's own work above the
    HTTP floor (bench/floor.py), against what that work costs now.
    """
    i, t, f = (1e6 / statistics.median(r.per_core for r in rounds) for rounds in (introspect, issue, floor))
    allowed = t / target
    return (
        f"server CPU a request: issuance {t:.0f} us, introspection {i:.0f} us, HTTP floor {f:.0f} us; "
        f"at {target:.2f}x an introspection may cost {allowed:.0f} us, which leaves {allowed - f:.0f} us "
        f"above the floor for ccserver's own work (now {i - f:.0f} us)"
    )


def _token(server: Server) -> str:
    return str(server.token()["access_token"])


def run_section(bench: Any) -> None:
    """
    The first three comparisons, in one alternation, into C{bench.rows}.
    """
    args = bench.args
    if not args.introspection:
        return
    say(f"\n== {SECTION}  (load {loadavg()})")
    opaque, jwt = CASES["opaque"], CASES["es256"]
    both = args.access_log == "both"
    rows = {
        "peer": Row(SECTION, "opaque, vs node-oidc-provider", ours_label="ccserver introspect",
                    theirs_label="node introspect", unit="req/s", target=INTROSPECTION_PEER_TARGET,
                    judge="per core"),
        "issue": Row(SECTION, "opaque, vs own issuance", ours_label="ccserver introspect",
                     theirs_label="ccserver issue", ours_column="introspect", theirs_column="issue",
                     unit="req/s", target=INTROSPECTION_TARGET, judge="per core", check_p99=False),
        "jwt": Row(SECTION, "JWT ES256 vs opaque", ours_label="ccserver introspect jwt",
                   theirs_label="ccserver introspect", ours_column="jwt", theirs_column="opaque",
                   unit="req/s", target=JWT_INTROSPECTION_TARGET, judge="per core", check_p99=False),
        # no target: where the floor is (bench/floor.py)
        "floor": Row(SECTION, "HTTP floor vs opaque", ours_label=FLOOR, theirs_label="ccserver introspect",
                     ours_column="floor", theirs_column="introspect", unit="req/s", judge="per core",
                     check_p99=False),
    }
    bench.rows.extend(rows.values())
    on = args.access_log != "off"
    plan: list[tuple[str, Server, Case, str]] = [
        ("ccserver introspect", bench.ccserver("ccserver introspect", bench.workdir("intro-cc"), opaque,
                                               "memory://", access_log=on), opaque, "introspect"),
        ("node introspect", Peer("node introspect", bench.workdir("intro-peer"), bench.peer_dir, opaque),
         opaque, "introspect"),
        ("ccserver issue", bench.ccserver("ccserver issue", bench.workdir("intro-issue"), opaque, "memory://",
                                          access_log=on), opaque, "issue"),
        ("ccserver introspect jwt", bench.ccserver("ccserver introspect jwt", bench.workdir("intro-jwt"), jwt,
                                                   "memory://", access_log=on), jwt, "introspect"),
        (FLOOR, Floor(FLOOR, bench.workdir("intro-floor")), opaque, "introspect"),
    ]
    if both:
        for label, _, case, kind in list(plan):
            if label.startswith("ccserver"):
                off = f"{label} (log off)"
                plan.append((off, bench.ccserver(off, bench.workdir(f"intro-off-{kind}-{case.name}"), case,
                                                 "memory://", access_log=False), case, kind))
    try:
        measured: list[Measured] = []
        for label, server, case, kind in plan:
            try:
                bench.start(server, case)
            except NotAvailable as e:
                for row in rows.values():
                    if label in (row.ours_label, row.theirs_label):
                        row.status, row.note = "not available", str(e)
                say(f"  {label}: not available: {e}")
                continue
            load = introspect_load(server, _token(server)) if kind == "introspect" else token_load(server)
            measured.append(Measured(server, load))
        results = bench.runner.measure([m.server for m in measured], args.rounds,
                                       {m.server.label: m.load for m in measured})
        for row in rows.values():
            if row.status:
                continue
            row.ours, row.theirs = results.get(row.ours_label), results.get(row.theirs_label)
            if both:
                off_ours = results.get(f"{row.ours_label} (log off)")
                off_theirs = results.get(f"{row.theirs_label} (log off)", row.theirs) \
                    if row.theirs_label.startswith("ccserver") else row.theirs
                if off_ours and off_theirs:
                    row.note = access_log_note(off_ours, off_theirs, row.judge)
        issue, floor = rows["issue"], results.get(FLOOR)
        if issue.ours and issue.theirs and floor and issue.target is not None:
            where = floor_note(issue.ours, issue.theirs, floor, issue.target)
            issue.note = f"{issue.note}; {where}" if issue.note else where
    except MEASUREMENT_ERRORS as e:
        bench.section_error(SECTION, e)
    finally:
        bench.stop_all()


def run_store_section(bench: Any) -> None:
    """
    Introspection against issuance of opaque tokens, each on a fresh store
    of the same kind with C{--introspection-workers} workers, per store.
    """
    args = bench.args
    workers = args.introspection_workers
    section = STORE_SECTION.format(workers=workers)
    opaque = CASES["opaque"]
    for store in args.introspection_stores:
        row = Row(section, store, ours_label=f"{store} introspect", theirs_label=f"{store} issue",
                  ours_column="introspect", theirs_column="issue", unit="req/s",
                  target=INTROSPECTION_STORE_TARGET, check_p99=False)
        bench.rows.append(row)
        say(f"\n== {section}: {store}  (load {loadavg()})")
        support: list[Any] = []
        try:
            loads: dict[str, Load] = {}
            servers: list[Server] = []
            for label, kind in ((row.ours_label, "introspect"), (row.theirs_label, "issue")):
                # a store of its own for each (as the durable section): two
                # servers on one store would need one key-encryption key
                url = bench.store_url(store, support)
                server: CCServer = bench.ccserver(f"ccserver {label}", bench.workdir(f"intro-{store}-{kind}"),
                                                  opaque, url, workers=workers)
                bench.start(server, opaque)
                servers.append(server)
                loads[server.label] = (introspect_load(server, _token(server)) if kind == "introspect"
                                       else token_load(server))
            results = bench.runner.measure(servers, args.rounds, loads)
            row.ours, row.theirs = results[servers[0].label], results[servers[1].label]
        except NotAvailable as e:
            row.status, row.note = "not available", str(e)
            say(f"  {store}: not available: {e}")
        except MEASUREMENT_ERRORS as e:
            bench.error(row, e)
        finally:
            bench.stop_all()
            bench.remove_support(support)
