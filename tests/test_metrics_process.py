"""
Metrics and health of a real C{twist ccserver --metrics tcp:PORT}: the
counts a scrape shows after real requests, with one process and with
C{--workers 2} (every process summed).
"""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.process import CCServerProcess, free_port
from tests.test_workers import children

pytestmark = pytest.mark.process


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def issued(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "ccserver_tokens_issued_total")


class MetricsProcessTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-metrics-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.metrics_port = free_port()

    def start(self, *args: str) -> CCServerProcess:
        server = CCServerProcess(
            self.tmp,
            "--metrics",
            f"tcp:{self.metrics_port}:interface=127.0.0.1",
            *args,
            store=f"sqlite:///{self.tmp}/ccserver.db",
        )
        self.addCleanup(server.kill)
        return server.start()

    def tokens(self, server: CCServerProcess, count: int) -> dict[str, str]:
        client = server.register(scope="read")
        for _ in range(count):
            # A new connection each time, so that workers share them.
            response = requests.post(
                server.url + "/token",
                data={"grant_type": "client_credentials"},
                auth=(client["client_id"], client["client_secret"]),
                headers={"Connection": "close"},
                timeout=10,
            )
            self.assertEqual(response.status_code, 200, response.text)
        return client

    def test_one_process(self) -> None:
        server = self.start()
        client = self.tokens(server, 3)
        bad = requests.post(
            server.url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], "wrong"),
            timeout=10,
        )
        self.assertEqual(bad.status_code, 401)
        self.assertEqual(requests.get(server.url + "/health/live", timeout=10).json(),
                         {"status": "ok"})
        self.assertEqual(requests.get(server.url + "/health/ready", timeout=10).status_code, 200)
        # Never on the public listener.
        self.assertEqual(requests.get(server.url + "/metrics", timeout=10).status_code, 404)

        samples = scrape(self.metrics_port)
        self.assertEqual(
            samples[(
                "ccserver_tokens_issued_total",
                (("alg", "RS256"), ("auth_method", "client_secret_basic"), ("format", "jwt")),
            )],
            3,
        )
        self.assertEqual(
            samples[("ccserver_token_errors_total", (("error", "invalid_client"),))], 1
        )
        self.assertEqual(
            samples[("ccserver_http_requests_total", (("code", "200"), ("route", "/token")))], 3
        )
        self.assertEqual(
            samples[("ccserver_http_requests_total", (("code", "404"), ("route", "other")))], 1
        )
        self.assertEqual(
            samples[("ccserver_registrations_total", (("action", "create"),))], 1
        )
        self.assertEqual(
            samples[("ccserver_http_request_duration_seconds_count", (("route", "/token"),))], 4
        )
        self.assertIn(("process_cpu_seconds_total", ()), samples)
        # The metrics listener serves nothing else.
        other = requests.get(f"http://127.0.0.1:{self.metrics_port}/token", timeout=10)
        self.assertEqual(other.status_code, 404)

    def test_workers_summed(self) -> None:
        server = self.start("--workers", "2")
        self.tokens(server, 30)
        # Connections are spread by the kernel: with 30 of them, a scrape
        # of one process alone would show about half.
        self.assertEqual(issued(scrape(self.metrics_port)), 30)
        # Only the main process listens for scrapes: every scrape is whole.
        self.assertEqual(issued(scrape(self.metrics_port)), 30)

        # The processes count in a private directory, removed on stop.
        assert server.process is not None
        [worker] = children(server.process.pid)
        variables = dict(
            entry.split(b"=", 1)
            for entry in Path(f"/proc/{worker}/environ").read_bytes().split(b"\0")
            if b"=" in entry
        )
        directory = Path(variables[b"PROMETHEUS_MULTIPROC_DIR"].decode())
        self.assertTrue(directory.is_dir())
        self.assertEqual(server.stop(), -15)
        self.assertFalse(directory.exists())
