"""
A store killed under load and started again, with a real server in front:
503 temporarily_unavailable meanwhile (never a 500, a hang or a dropped
connection), everything working again after, nothing lost.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import unittest
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from ccserver.testing.servers import postgres_server, redis_server
from tests.process import CCServerProcess, wait_until

pytestmark = pytest.mark.process

CONFIG = """
[store]
timeout = 1
client_cache_seconds = 0
"""


class OutageMixin:
    server: Any

    def store_url(self) -> str:
        raise NotImplementedError

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-outage-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        (self.tmp / "ccserver.toml").write_text(CONFIG)
        url = self.store_url()
        self.ccserver = CCServerProcess(
            self.tmp, "--config", str(self.tmp / "ccserver.toml"), store=url
        )
        self.addCleanup(self.ccserver.kill)  # type: ignore[attr-defined]
        self.ccserver.start()

    def load(self, client: dict[str, Any], stop: threading.Event, answers: Counter[Any]) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    response = session.post(
                        self.ccserver.url + "/token",
                        data={"grant_type": "client_credentials"},
                        auth=(client["client_id"], client["client_secret"]),
                        timeout=10,
                    )
                except requests.RequestException as e:
                    answers[type(e).__name__] += 1
                    continue
                error = response.json().get("error") if response.status_code != 200 else None
                answers[(response.status_code, error)] += 1

    def assert_readiness_says_little(self) -> None:
        """
        The public readiness probe says the store is unavailable, and not
        where it is; the log says that.
        """

        def unready() -> tuple[requests.Response] | None:
            # a tuple: a 503 Response itself is false
            response = requests.get(self.ccserver.url + "/health/ready", timeout=10)
            return (response,) if response.status_code == 503 else None

        (ready,) = wait_until(unready, what="a 503 from /health/ready")
        t: Any = self
        t.assertEqual(ready.json(), {"status": "unavailable", "reason": "store unavailable"})
        t.assertNotIn(str(self.server.port), ready.text)
        t.assertNotIn("127.0.0.1", ready.text)
        log = self.ccserver.read_log()
        t.assertIn("Not ready (store unavailable): the store did not answer", log)
        t.assertIn(f"127.0.0.1:{self.server.port}", log)

    def test_killed_under_load(self) -> None:
        clients = [self.ccserver.register(scope="read") for _ in range(5)]
        answers: Counter[Any] = Counter()
        stop = threading.Event()
        threads = [threading.Thread(target=self.load, args=(c, stop, answers)) for c in clients[:2]]
        for thread in threads:
            thread.start()
        ok, unavailable = (200, None), (503, "temporarily_unavailable")
        try:
            wait_until(lambda: answers[ok] >= 4, what="tokens issued before the outage")
            self.server.kill()
            wait_until(lambda: answers[unavailable] > 0, what="a 503 during the outage")
            during = Counter(answers)
            registration = requests.post(
                self.ccserver.url + "/client-reg",
                json={"scope": "read"},
                headers={"Authorization": f"Bearer {self.ccserver.master_token}"},
                timeout=10,
            )
            self.assertEqual(registration.status_code, 503)  # type: ignore[attr-defined]
            self.assertEqual(registration.json()["error"], "temporarily_unavailable")  # type: ignore[attr-defined]
            self.assert_readiness_says_little()
            self.server.restart()
            issued = answers[ok]
            wait_until(lambda: answers[ok] >= issued + 4, what="tokens issued after the restart")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        self.assertGreater(during[unavailable], 0, during)  # type: ignore[attr-defined]
        unexpected = {k: n for k, n in answers.items() if k not in (ok, unavailable)}
        self.assertEqual(unexpected, {})  # type: ignore[attr-defined]
        # After: every client registered before the outage gets tokens, and
        # registration works again.
        for client in clients:
            response = requests.post(
                self.ccserver.url + "/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
                timeout=10,
            )
            self.assertEqual(response.status_code, 200, response.text)  # type: ignore[attr-defined]
        self.ccserver.register(scope="read")
        self.assertIn("ccserver is ready", self.ccserver.read_log())  # type: ignore[attr-defined]


class RedisOutage(OutageMixin, unittest.TestCase):
    def store_url(self) -> str:
        self.server = redis_server("faults", persistent=True)
        self.server.flushall()
        return str(self.server.url_for(1))


class PostgreSQLOutage(OutageMixin, unittest.TestCase):
    def store_url(self) -> str:
        self.server = postgres_server("faults")
        return str(self.server.url_for(self.server.create_database()))
