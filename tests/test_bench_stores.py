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
        The bench's Redis runs at Redis's defaults (C{hz 10}: C{hz 100}
        made the purge row worse), without persistence, as the tests' own.
        """
        support: list[servers.ThrowawayServer] = []
        groups: dict[str, int] = {}
        url = stores.start("redis", support, groups)
        self.addCleanup(stores.remove, support, groups)
        redis = populate.Redis(url)
        try:
            self.assertEqual(redis.call("CONFIG", "GET", "hz"), ["hz", "10"])
            self.assertEqual(redis.call("CONFIG", "GET", "appendonly"), ["appendonly", "no"])
        finally:
            redis.close()
