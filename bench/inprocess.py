"""
One ccserver site in this process, driven through a real channel on a
C{StringTransport}: the cost of a request without the reactor, the
sockets or wrk, for instruction counts (C{valgrind --tool=callgrind}) and
in-process timings that hold on a busy machine.

  python3 -m bench.inprocess introspect-opaque --requests 2000
  valgrind --tool=callgrind python3 -m bench.inprocess introspect-opaque \\
      --requests 600 --no-timing

Kinds (C{KINDS}): C{token-opaque}, C{token-es256} (C{POST /token}),
C{introspect-opaque}, C{introspect-es256} (C{POST /token/introspect} of a
token of the same client), C{bare} (a twisted.web resource answering a
constant JSON through the same channel: the HTTP layer's floor).  The site
is the real one over a memory store, with the access log on or off
(C{--access-log}, whose lines go to a buffered writer on /dev/null); the
client authenticates with client_secret_basic.  It prints the user CPU per
request of the best of C{--runs} runs, and the answers' status line.
Instructions per request are (I(N2) - I(N1)) / (N2 - N1) of two callgrind
runs (bench/README.md says how).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import quote_plus

KINDS = ("token-opaque", "token-es256", "introspect-opaque", "introspect-es256", "bare")


def _basic(client_id: str, secret: str) -> bytes:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return b"Basic " + base64.b64encode(raw)


def raw_post(path: bytes, authorization: bytes, form: bytes) -> bytes:
    """
    One keep-alive HTTP/1.1 form POST, as wrk's scripts send it.
    """
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + authorization
        + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(form) + form
    )


class Driver:
    """
    A site and one open connection to it; C{send} feeds it one request and
    returns what it wrote.
    """

    def __init__(self, kind: str, access_log: bool) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        self.kind = kind
        if kind == "bare":
            site = self._bare_site()
            request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        else:
            site, request = self._ccserver(kind, access_log)
        self.site = site
        self.request = request
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 50000),
        )
        self.channel = site.buildProtocol(self.transport.getPeer())
        self.channel.makeConnection(self.transport)

    def send(self) -> bytes:
        self.channel.dataReceived(self.request)
        answer: bytes = self.transport.value()
        self.transport.clear()
        return answer

    @staticmethod
    def _bare_site() -> Any:
        from twisted.internet.task import Clock
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        class Constant(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                request.setHeader(b"Content-Type", b"application/json")
                return b'{"active":true}'

        site = Site(Constant(), reactor=Clock())
        site.log = lambda request: None  # type: ignore[method-assign]
        return site

    def _ccserver(self, kind: str, access_log: bool) -> tuple[Any, bytes]:
        from treq.testing import StubTreq
        from twisted.internet.defer import ensureDeferred
        from twisted.internet.task import Clock
        from twisted.web.resource import Resource

        from ccserver import credentials
        from ccserver.assembly import make_jwks_fetcher, make_site
        from ccserver.config import Config, StoreConfig, TokenConfig
        from ccserver.handlers.registered_scope import RegisteredScopeHandler
        from ccserver.keys import KeyEncryptor
        from ccserver.oauth.tokens import sign_inline
        from ccserver.stores.memory import MemoryStore

        issuer = "http://127.0.0.1:8080"
        master = "master-token-of-the-in-process-bench"
        clock = Clock()
        clock.advance(int(time.time()))
        store = MemoryStore()
        fmt = "opaque" if kind.endswith("opaque") else "jwt"
        config = Config(
            issuer=issuer,
            access_log=access_log,
            store=StoreConfig(url="memory://"),
            tokens=TokenConfig(signing_alg="ES256", format=fmt),
        )
        extra: dict[str, Any] = {}
        if access_log:
            try:
                from ccserver.accesslog import AccessLog
                from ccserver.logfiles import FileDestination
            except ImportError:  # before the access log was buffered: through twisted.logger
                from twisted.logger import globalLogBeginner, jsonFileLogObserver

                # as twist does when its output is not a terminal: JSON lines
                sink = open(os.devnull, "w")  # noqa: SIM115 (open for the run)
                globalLogBeginner.beginLoggingTo([jsonFileLogObserver(sink)], redirectStandardIO=False)
            else:
                extra["access_log"] = AccessLog(FileDestination(os.devnull))
        site, keyring = make_site(
            clock,
            config,
            store,
            RegisteredScopeHandler(),
            credentials.digest(master),
            KeyEncryptor.ephemeral(),
            sign_inline,
            make_jwks_fetcher(clock, config, cast(Any, StubTreq(Resource()))),
            **extra,
        )
        ensureDeferred(keyring.ensure_signing_key())
        site.doStart()
        self._treq: Any = StubTreq(site.resource)
        client = self._json(
            "POST",
            issuer + "/client-reg",
            {"Authorization": f"Bearer {master}", "Content-Type": "application/json"},
            json.dumps({"client_name": "bench", "scope": "read write"}).encode(),
        )
        authorization = _basic(client["client_id"], client["client_secret"])
        token_form = b"grant_type=client_credentials&scope=read"
        if kind.startswith("token"):
            return site, raw_post(b"/token", authorization, token_form)
        issued = self._json(
            "POST",
            issuer + "/token",
            {"Authorization": authorization.decode(),
             "Content-Type": "application/x-www-form-urlencoded"},
            token_form,
        )
        form = b"token=" + issued["access_token"].encode()
        return site, raw_post(b"/token/introspect", authorization, form)

    def _json(self, method: str, url: str, headers: dict[str, str], body: bytes) -> Any:
        found: list[Any] = []
        d = self._treq.request(method, url, headers=headers, data=body)
        d.addCallback(lambda response: response.json())
        d.addBoth(found.append)
        if not found or not isinstance(found[0], dict):
            raise SystemExit(f"bench.inprocess: {method} {url}: {found}")
        return found[0]


def user_cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def per_request(send: Callable[[], bytes], requests: int, runs: int) -> float:
    """
    The least user CPU seconds per request over C{runs} runs of C{requests}.
    """
    best = float("inf")
    for _ in range(runs):
        started = user_cpu()
        for _ in range(requests):
            send()
        best = min(best, (user_cpu() - started) / requests)
    return best


def callgrind_total(output: str) -> int | None:
    """
    The instructions callgrind counted (its C{Collected : N} line, or
    C{refs: N}), from its standard error; None if it printed neither.
    """
    for line in output.splitlines():
        for marker in ("Collected :", "refs:"):
            if marker in line:
                digits = line.split(marker, 1)[1].strip().replace(",", "")
                if digits.isdigit():
                    return int(digits)
    return None


def instructions(kind: str, access_log: bool, small: int, large: int) -> float:
    """
    Instructions per request: two runs under callgrind, of C{small} and
    C{large} requests after the set-up, (I(large) - I(small)) / (large -
    small), so that start-up and set-up cancel out.
    """
    counts = []
    for requests in (small, large):
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                sys.executable, "-m", "bench.inprocess", kind, "--requests", str(requests),
                "--no-timing", *(["--access-log"] if access_log else [])]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        total = callgrind_total(done.stderr)
        if done.returncode != 0 or total is None:
            raise SystemExit(f"callgrind failed ({done.returncode}): {done.stderr[-2000:]}")
        counts.append(total)
    return (counts[1] - counts[0]) / (large - small)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m bench.inprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--access-log", action="store_true", help="the access log on (to /dev/null)")
    parser.add_argument("--no-timing", action="store_true",
                        help="send --requests once, print nothing but the status (for callgrind)")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request with valgrind's callgrind "
                        "(two runs, of 100 and --requests requests)")
    args = parser.parse_args(argv)
    if args.instructions:
        count = instructions(args.kind, args.access_log, 100, max(200, args.requests))
        print(f"{args.kind}{' (access log on)' if args.access_log else ''}: "
              f"{count:,.0f} instructions per request")
        return 0
    driver = Driver(args.kind, args.access_log)
    first = driver.send()
    status = first.split(b"\r\n", 1)[0].decode()
    if " 200 " not in status:
        print(f"{args.kind}: {first[:500]!r}", file=sys.stderr)
        return 1
    if args.no_timing:
        for _ in range(args.requests):
            driver.send()
        print(status)
        return 0
    seconds = per_request(driver.send, args.requests, args.runs)
    print(f"{args.kind}: {seconds * 1e6:.1f} us user CPU per request "
          f"(best of {args.runs} x {args.requests}; {status}; pid {os.getpid()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
