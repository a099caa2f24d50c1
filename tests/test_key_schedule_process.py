"""
Scheduled key rotation ([keys] rotate_every) in real processes: two
`twist ccserver` instances, each with --workers 2, on one SQLite file,
Redis or PostgreSQL: four processes whose schedules fall due together, and
one rotation per period all the same.
"""

from __future__ import annotations

import calendar
import itertools
import shutil
import tempfile
import time
import unittest
from pathlib import Path

import pytest
import requests

from ccserver.testing.servers import clean_store_url
from tests.process import CCServerProcess, wait_until
from tests.test_clients_command import ccserver

pytestmark = pytest.mark.process

PERIOD = 5

CONFIG = f"""
[keys]
rotate_every = "{PERIOD}s"
activation_delay = 1
"""


class ScheduleProcessMixin:
    kind: str

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-schedule-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        (self.tmp / "ccserver.toml").write_text(CONFIG)
        self.url = clean_store_url(self.kind, self.addCleanup)  # type: ignore[attr-defined]

    def start(self) -> CCServerProcess:
        server = CCServerProcess(
            self.tmp,
            "--config", str(self.tmp / "ccserver.toml"),
            "--master-token", "shared-master-token-0123456789",
            "--workers", "2",
            store=self.url,
        )
        self.addCleanup(server.kill)  # type: ignore[attr-defined]
        # SIGTERM first, so that the server stops its workers too
        self.addCleanup(server.stop)  # type: ignore[attr-defined]
        return server.start()

    def created(self) -> list[int]:
        """
        When each signing key was made, from C{ccserver keys list}.
        """
        done = ccserver("--config", str(self.tmp / "ccserver.toml"), "--store", self.url,
                        "keys", "list", cwd=self.tmp)
        self.assertEqual(done.returncode, 0, done.stderr)  # type: ignore[attr-defined]
        lines = done.stdout.splitlines()
        self.assertTrue(lines[-1].startswith("scheduled rotation: every 5s; next "), lines)  # type: ignore[attr-defined]
        times = []
        for line in lines[1:-1]:
            fields = line.split()
            made = time.strptime(f"{fields[3]} {fields[4]}", "%Y-%m-%d %H:%M:%S")
            times.append(calendar.timegm(made))
        return times

    def test_one_rotation_per_period(self) -> None:
        """
        Four processes (two instances, two workers each) ask every second
        whether a rotation is due: each period brings exactly one new key,
        so no two keys were made less than a period apart.
        """
        started = time.time()
        a = self.start()
        self.start()

        def rotated_twice() -> bool:
            jwks = requests.get(a.url + "/jwks.json", timeout=10).json()
            return len(jwks["keys"]) >= 3

        wait_until(rotated_twice, interval=0.2, what="two scheduled rotations")
        created = self.created()
        gaps = [later - earlier for earlier, later in itertools.pairwise(created)]
        self.assertGreaterEqual(len(created), 3)  # type: ignore[attr-defined]
        self.assertTrue(all(gap >= PERIOD for gap in gaps), created)  # type: ignore[attr-defined]
        self.assertLessEqual(len(created), 2 + (time.time() - started) // PERIOD, created)  # type: ignore[attr-defined]


class SQLiteScheduleProcessTests(ScheduleProcessMixin, unittest.TestCase):
    kind = "sqlite"


class RedisScheduleProcessTests(ScheduleProcessMixin, unittest.TestCase):
    kind = "redis"


class PostgreSQLScheduleProcessTests(ScheduleProcessMixin, unittest.TestCase):
    kind = "postgresql"
