"""
The brute-force limits in real processes: `twist ccserver --workers 2` on
SQLite, Redis and PostgreSQL, and bursts of requests sent over connections
of their own from one address, every request sent before any answer is
read.  Whatever the workers and the store do at once, no more credentials
are checked than the budget: a request refused (429) is never checked, so
the requests answered 401 or 200 are the checks made.
"""

from __future__ import annotations

import base64
import shutil
import socket
import tempfile
import unittest
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ccserver.testing.servers import clean_store_url
from tests.process import DEADLINE, CCServerProcess

pytestmark = pytest.mark.process

BUDGET = 10
CAP = 30

CONFIG = f"""
[limits]
failed_auth_per_minute = {BUDGET}
failed_auth_per_client_per_minute = {CAP}
# the cap test names its sources in X-Forwarded-For; the bursts send none,
# and come from 127.0.0.1 itself
trusted_proxies = ["127.0.0.1"]
"""

MASTER_TOKEN = "process-master-token-0123456789"


def burst(port: int, requests: list[bytes]) -> list[int]:
    """
    Each request on a connection of its own: every connection made, then
    every request sent, and only then the answers read.  Their statuses,
    in the order of C{requests}.
    """
    connections = [
        socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) for _ in requests
    ]
    try:
        for connection, request in zip(connections, requests, strict=True):
            connection.sendall(request)
        statuses = []
        for connection in connections:
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
            statuses.append(int(answer.split(b" ", 2)[1]))
        return statuses
    finally:
        for connection in connections:
            connection.close()


def http_request(
    method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def token_request(client_id: str, secret: str, source: str | None = None) -> bytes:
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    headers = {
        "Authorization": f"Basic {credentials}",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if source is not None:
        headers["X-Forwarded-For"] = source
    return http_request("POST", "/token", headers, b"grant_type=client_credentials")


def registration_request(master_token: str) -> bytes:
    return http_request(
        "POST",
        "/client-reg",
        {"Authorization": f"Bearer {master_token}", "Content-Type": "application/json"},
        b'{"scope": "read"}',
    )


class LimitsProcessMixin:
    """
    Two workers on one store, each a process of its own.
    """

    kind: str

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-limits-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        (self.tmp / "ccserver.toml").write_text(CONFIG)
        url = clean_store_url(self.kind, self.addCleanup)  # type: ignore[attr-defined]
        self.server = CCServerProcess(
            self.tmp,
            "--config", str(self.tmp / "ccserver.toml"),
            "--master-token", MASTER_TOKEN,
            "--workers", "2",
            store=url,
        )
        self.addCleanup(self.server.kill)  # type: ignore[attr-defined]
        # run first: SIGTERM, so that the server stops its workers (a
        # SIGKILLed server leaves them running)
        self.addCleanup(self.server.stop)  # type: ignore[attr-defined]
        self.server.start()
        self.client: dict[str, Any] = self.server.register(scope="read")

    def assertWithinBudget(self, statuses: list[int], success: int) -> Counter[int]:
        counts = Counter(statuses)
        self.assertLessEqual(set(counts), {success, 401, 429}, counts)  # type: ignore[attr-defined]
        self.assertLessEqual(counts[401] + counts[success], BUDGET, counts)  # type: ignore[attr-defined]
        return counts

    def test_burst_of_secrets(self) -> None:
        """
        200 wrong secrets and the right one last, at once from one address
        over 201 connections, to two workers: no more than the budget of
        them is checked.
        """
        requests = [token_request(self.client["client_id"], f"wrong-{n}") for n in range(200)]
        requests.append(token_request(self.client["client_id"], self.client["client_secret"]))
        counts = self.assertWithinBudget(burst(self.server.port, requests), 200)
        self.assertEqual(counts[401], BUDGET, counts)  # type: ignore[attr-defined]

    def test_burst_of_master_tokens(self) -> None:
        """
        The same at /client-reg: 200 wrong master tokens and the right one
        last; no more than the budget checked.  A bearer token there may be
        the master token or an initial access token, each with a budget of
        its own: a request one of the two cannot be tried for is answered
        429 after its check (the other's budget may have been spent by
        the other worker meanwhile), so the 401s are at most the budget,
        and the checks at most twice it.
        """
        requests = [registration_request(f"wrong-master-token-{n:04}") for n in range(200)]
        requests.append(registration_request(MASTER_TOKEN))
        counts = self.assertWithinBudget(burst(self.server.port, requests), 201)
        self.assertGreaterEqual(counts[429], 201 - 2 * BUDGET, counts)  # type: ignore[attr-defined]

    def test_burst_of_successes(self) -> None:
        """
        A client that only authenticates rightly is never refused: 200 of
        its requests at once, to two workers, twice, are all answered
        with tokens (the slots kept by its successes never fill the
        budget against it).  Crossing a window's end, which the benchmark
        found refused such a client, is covered in memory on a Clock
        (tests/test_limits.py, SuccessOnlyTests): the window is a minute.
        """
        request = token_request(self.client["client_id"], self.client["client_secret"])
        for _ in range(2):
            statuses = burst(self.server.port, [request] * 200)
            self.assertEqual(Counter(statuses), {200: 200})  # type: ignore[attr-defined]

    def test_cap_keeps_a_known_source(self) -> None:
        """
        100 addresses guess the client's secret at once, once each: the cap
        lets 30 be checked and refuses the rest unchecked, and refuses a new
        address even with the right secret; the address the client
        authenticated from before goes on getting tokens from both workers.
        """
        known = "192.0.2.1"
        client_id, secret = self.client["client_id"], self.client["client_secret"]
        self.assertEqual(burst(self.server.port, [token_request(client_id, secret, known)]), [200])
        guesses = [token_request(client_id, f"wrong-{n}", f"198.51.100.{n}") for n in range(100)]
        counts = Counter(burst(self.server.port, guesses))
        self.assertEqual(counts, {401: CAP, 429: 100 - CAP})  # type: ignore[attr-defined]
        after = burst(
            self.server.port,
            [token_request(client_id, secret, known) for _ in range(20)]
            + [token_request(client_id, secret, "203.0.113.9")],
        )
        self.assertEqual(after, [200] * 20 + [429])  # type: ignore[attr-defined]


class SQLiteLimitsProcessTests(LimitsProcessMixin, unittest.TestCase):
    kind = "sqlite"


class RedisLimitsProcessTests(LimitsProcessMixin, unittest.TestCase):
    kind = "redis"


class PostgreSQLLimitsProcessTests(LimitsProcessMixin, unittest.TestCase):
    kind = "postgresql"
