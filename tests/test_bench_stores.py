"""
The bench's throwaway stores (bench/stores.py): a real Redis started as
the growth section's purge row runs it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from bench import populate, stores
from ccserver.testing import servers


class BenchRedisTests(SynchronousTestCase):
    def test_settings(self) -> None:
        """
        The bench's Redis runs with docs/stores.md's advice for tail
        latency (C{hz 100}), everything else as the tests' own.
        """
        support: list[servers.ThrowawayServer] = []
        groups: dict[str, int] = {}
        url = stores.start("redis", support, groups)
        self.addCleanup(stores.remove, support, groups)
        redis = populate.Redis(url)
        try:
            self.assertEqual(redis.call("CONFIG", "GET", "hz"), ["hz", "100"])
            self.assertEqual(redis.call("CONFIG", "GET", "appendonly"), ["appendonly", "no"])
        finally:
            redis.close()
