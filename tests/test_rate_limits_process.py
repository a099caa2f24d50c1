"""
Per-client token rate limits in real processes: two `twist ccserver`
instances, each with --workers 2, on one SQLite file, Redis or
PostgreSQL; a burst of one client's requests sent to both at once, every
request sent before any answer is read: its burst is let through across
the four processes, no more.  And the command that sets a client's limit,
followed by the running servers.
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
from tests.process import CCServerProcess, wait_until
from tests.test_clients_command import ccserver
from tests.test_limits_process import burst, token_request

pytestmark = pytest.mark.process

CONFIG = """
[store]
client_cache_seconds = 1
"""

MASTER_TOKEN = "shared-master-token-0123456789"


class RateLimitProcessMixin:
    kind: str

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-rate-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        (self.tmp / "ccserver.toml").write_text(CONFIG)
        self.url = clean_store_url(self.kind, self.addCleanup)  # type: ignore[attr-defined]
        self.a = self.start()
        self.b = self.start()

    def start(self) -> CCServerProcess:
        server = CCServerProcess(
            self.tmp,
            "--config", str(self.tmp / "ccserver.toml"),
            "--master-token", MASTER_TOKEN,
            "--workers", "2",
            store=self.url,
        )
        self.addCleanup(server.kill)  # type: ignore[attr-defined]
        # SIGTERM first, so that the server stops its workers too
        self.addCleanup(server.stop)  # type: ignore[attr-defined]
        return server.start()

    def test_burst_across_processes(self) -> None:
        """
        240 requests of a client whose limit holds 30 at once (and fills by
        a hundredth of a token a second), half to each instance: 30 tokens,
        and 429 with Retry-After for the rest.
        """
        client = self.a.register(
            scope="read", token_rate_limit={"tokens_per_second": 0.01, "burst": 30}
        )
        request = token_request(client["client_id"], client["client_secret"])
        statuses = burst(self.a.port, [request] * 120) + burst(self.b.port, [request] * 120)
        self.assertEqual(Counter(statuses), {200: 30, 429: 210})  # type: ignore[attr-defined]

    def test_set_by_the_command(self) -> None:
        """
        C{ccserver clients set-rate-limit} gives a running client a limit:
        both instances honour it within the client cache time; C{--off}
        takes it away.
        """
        client = self.a.register(scope="read")
        request = token_request(client["client_id"], client["client_secret"])
        self.assertEqual(burst(self.a.port, [request] * 20), [200] * 20)

        def command(*args: str) -> dict[str, Any]:
            done = ccserver("--store", self.url, "clients", "set-rate-limit", client["client_id"],
                            *args, cwd=self.tmp)
            self.assertEqual(done.returncode, 0, done.stderr)  # type: ignore[attr-defined]
            shown: dict[str, Any] = json.loads(done.stdout)
            return shown

        shown = command("--token-rate-limit", "0.01:5")
        self.assertEqual(shown["token_rate_limit"], {"tokens_per_second": 0.01, "burst": 5})  # type: ignore[attr-defined]

        def limited() -> bool:
            statuses = burst(self.a.port, [request] * 10) + burst(self.b.port, [request] * 10)
            return 429 in statuses and statuses.count(200) <= 5

        wait_until(limited, interval=0.5, what="the limit honoured by both instances")
        self.assertNotIn("token_rate_limit", command("--off"))  # type: ignore[attr-defined]
        wait_until(
            lambda: burst(self.b.port, [request] * 10) == [200] * 10,
            interval=0.5,
            what="the limit taken away",
        )


class SQLiteRateLimitProcessTests(RateLimitProcessMixin, unittest.TestCase):
    kind = "sqlite"


class RedisRateLimitProcessTests(RateLimitProcessMixin, unittest.TestCase):
    kind = "redis"


class PostgreSQLRateLimitProcessTests(RateLimitProcessMixin, unittest.TestCase):
    kind = "postgresql"


class CommandTests(unittest.TestCase):
    """
    The command's options for the limit, and their mistakes, in one line.
    """

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-rate-cli-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.url = f"sqlite:///{self.tmp}/ccserver.db"

    def run_ok(self, *args: str) -> dict[str, Any]:
        done = ccserver("--store", self.url, "clients", *args, cwd=self.tmp)
        self.assertEqual(done.returncode, 0, done.stderr)
        document: dict[str, Any] = json.loads(done.stdout)
        return document

    def test_create_and_set(self) -> None:
        created = self.run_ok("create", "--scope", "read", "--token-rate-limit", "50:200")
        self.assertEqual(created["token_rate_limit"], {"tokens_per_second": 50, "burst": 200})
        client_id = created["client_id"]
        shown = self.run_ok("show", client_id)
        self.assertEqual(shown["token_rate_limit"], {"tokens_per_second": 50, "burst": 200})
        self.assertEqual(
            self.run_ok("set-rate-limit", client_id, "--token-rate-limit", "2.5")["token_rate_limit"],
            {"tokens_per_second": 2.5, "burst": 3},
        )
        self.assertNotIn("token_rate_limit", self.run_ok("set-rate-limit", client_id, "--off"))

    def test_mistakes(self) -> None:
        created = self.run_ok("create", "--scope", "read")
        for args, message in [
            (["--token-rate-limit", "fast"], "--token-rate-limit: 'fast' is not RATE or RATE:BURST"),
            (["--token-rate-limit", "0"], "--token-rate-limit: tokens_per_second must be"),
            (["--token-rate-limit", "5:0"], "--token-rate-limit: burst must be"),
        ]:
            done = ccserver("--store", self.url, "clients", "set-rate-limit", created["client_id"],
                            *args, cwd=self.tmp)
            self.assertEqual(done.returncode, 1, done.stderr)
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
            self.assertIn(message, done.stderr)
        done = ccserver("--store", self.url, "clients", "set-rate-limit", "no-such-client",
                        "--off", cwd=self.tmp)
        self.assertEqual(done.returncode, 1)
        self.assertIn("no client 'no-such-client'", done.stderr)
        done = ccserver("--store", self.url, "clients", "create", "--token-rate-limit", "x:y",
                        cwd=self.tmp)
        self.assertEqual(done.returncode, 1)
        self.assertIn("--token-rate-limit: 'x:y'", done.stderr)
