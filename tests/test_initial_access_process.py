"""
Initial access tokens in real processes: C{twist ccserver --workers 2} on
SQLite, Redis and PostgreSQL, a token made with C{ccserver
registration-tokens create}, and bursts of registrations sent at once over
connections of their own.  A token of 10 uses registers exactly 10 clients,
whichever worker takes each request; wrong tokens are checked no more than
the budget allows; and the audit trail, in a file the two workers share,
names the token that registered each client.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import unittest
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ccserver.testing.servers import clean_store_url
from tests.process import CCServerProcess
from tests.test_clients_command import ccserver
from tests.test_limits_process import BUDGET, burst, http_request

pytestmark = pytest.mark.process

MASTER_TOKEN = "process-master-token-0123456789"


def registration(token: str, metadata: dict[str, Any] | None = None) -> bytes:
    return http_request(
        "POST",
        "/client-reg",
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        json.dumps(metadata or {"scope": "read"}).encode(),
    )


class InitialAccessProcessMixin:
    kind: str

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-iat-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        self.audit_log = self.tmp / "audit.log"
        self.config = self.tmp / "ccserver.toml"
        self.config.write_text(
            f'[limits]\nfailed_auth_per_minute = {BUDGET}\n[audit]\nlog = "{self.audit_log}"\n'
        )
        self.url = clean_store_url(self.kind, self.addCleanup)  # type: ignore[attr-defined]
        self.server = CCServerProcess(
            self.tmp,
            "--config", str(self.config),
            "--master-token", MASTER_TOKEN,
            "--workers", "2",
            store=self.url,
        )
        self.addCleanup(self.server.kill)  # type: ignore[attr-defined]
        self.addCleanup(self.server.stop)  # type: ignore[attr-defined]
        self.server.start()

    def make_token(self, *options: str) -> dict[str, Any]:
        done = ccserver(
            "--config", str(self.config), "--store", self.url,
            "registration-tokens", "create", "--json", *options,
            cwd=self.tmp,
        )
        assert done.returncode == 0, done.stderr
        created: dict[str, Any] = json.loads(done.stdout)
        return created

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def test_burst_registers_exactly_its_uses(self) -> None:
        """
        30 registrations at once with a token of 10 uses, to two workers:
        10 are registered, the rest refused (401, or 429 once the failures
        fill the budget); the audit trail names the token for each of the
        10, in whole lines from both processes.
        """
        created = self.make_token("--uses", "10", "--scope-limit", "read")
        statuses = burst(
            self.server.port,
            [registration(created["initial_access_token"]) for _ in range(30)],
        )
        counts = Counter(statuses)
        self.assertEqual(counts[201], 10, counts)  # type: ignore[attr-defined]
        self.assertLessEqual(set(counts), {201, 401, 429}, counts)  # type: ignore[attr-defined]
        listed = ccserver(
            "--store", self.url, "registration-tokens", "list", "--json", cwd=self.tmp
        )
        [token] = json.loads(listed.stdout)
        self.assertEqual((token["uses"], token["state"]), (10, "used_up"))  # type: ignore[attr-defined]
        self.server.stop()  # type: ignore[attr-defined]
        events = self.events()
        registered = [e for e in events if e["type"] == "client.registered"]
        used = [e for e in events if e["type"] == "initial_access_token.used"]
        self.assertEqual(len(registered), 10)  # type: ignore[attr-defined]
        for event in registered:
            self.assertEqual(  # type: ignore[attr-defined]
                event["actor"], {"type": "initial_access_token", "id": created["id"]}
            )
        self.assertEqual(sorted(e["uses"] for e in used), list(range(1, 11)))  # type: ignore[attr-defined]
        refused = [e for e in events if e["type"] == "registration.refused"]
        self.assertEqual(len(refused), counts[401] + counts[429])  # type: ignore[attr-defined]
        self.assertTrue(  # type: ignore[attr-defined]
            all(e["reason"] == "used_up" for e in refused if e["status"] == 401)
        )

    def test_burst_of_wrong_tokens(self) -> None:
        """
        200 wrong bearer tokens and a real initial access token last, at
        once from one address, to two workers: each is checked as an
        initial access token and as the master token, each within its own
        budget; a request one of them cannot be tried for any more is
        answered 429 even once checked as the other, so the 401s are at
        most the budget, and the checks at most twice it.
        """
        created = self.make_token("--uses", "5")
        requests = [registration(f"wrong-initial-access-token-{n:04}") for n in range(200)]
        requests.append(registration(created["initial_access_token"]))
        counts = Counter(burst(self.server.port, requests))
        self.assertLessEqual(set(counts), {201, 401, 429}, counts)  # type: ignore[attr-defined]
        self.assertLessEqual(counts[401] + counts[201], BUDGET, counts)  # type: ignore[attr-defined]
        self.assertGreaterEqual(counts[429], 201 - 2 * BUDGET, counts)  # type: ignore[attr-defined]


class SQLiteInitialAccessProcessTests(InitialAccessProcessMixin, unittest.TestCase):
    kind = "sqlite"


class RedisInitialAccessProcessTests(InitialAccessProcessMixin, unittest.TestCase):
    kind = "redis"


class PostgreSQLInitialAccessProcessTests(InitialAccessProcessMixin, unittest.TestCase):
    kind = "postgresql"
