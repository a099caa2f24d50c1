"""
The growth section's bulk load (bench/populate.py), on each durable store
(real SQLite, PostgreSQL, Redis from the harness): the tokens it writes are
what ccserver's own store reads back, as ccserver would have written them.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from bench import populate, purge
from ccserver.interfaces import IStore
from ccserver.stores import store_from_url
from ccserver.stores.redis import EXPIRY_DELAY, EXPIRY_SPREAD, PREFIX, TOKEN_CLIENTS_KEY, kept_until
from ccserver.testing import servers

ISSUER = "https://as.example.com"
COUNT = 250


class PopulateMixin:
    kind = ""

    async def setUp(self) -> None:
        test: Any = self
        self.url = servers.clean_store_url(self.kind, test.addCleanup)
        self.store: IStore = store_from_url(self.url, reactor)
        await self.store.open()  # the schema, made as the server makes it
        test.addCleanup(self.store.close)
        self.now = time.time()
        self.shape = populate.Shape.of(COUNT, int(self.now) + 3600, ISSUER, "own-client", self.now)

    def digests(self, client_id: str) -> list[str]:
        raise NotImplementedError

    async def test_read_back(self) -> None:
        test: Any = self
        filled = populate.fill(self.kind, self.url, self.shape)
        test.assertEqual(filled.count, COUNT)
        test.assertGreater(filled.size_after, filled.size_before)
        own = self.digests("own-client")
        test.assertEqual(len(own), COUNT // populate.OWN_SHARE)
        bulk = [i for i in range(COUNT) if i % populate.OWN_SHARE and i % populate.CLIENTS == 1]
        test.assertEqual(len(self.digests("bulk-1")), len(bulk))
        for digest in (own[0], own[-1]):
            record = await self.store.get_token(digest)
            test.assertIsNotNone(record, digest)
            assert record is not None
            test.assertEqual(record.client_id, "own-client")
            test.assertEqual(tuple(record.scope), ("read",))
            test.assertEqual(tuple(record.audience), (ISSUER,))
            test.assertEqual(record.expires_at, self.shape.expires_at)
            test.assertLessEqual(record.issued_at, self.now)
            test.assertGreaterEqual(record.issued_at, self.now - 3601)
            # ordered by time, as ccserver's own keys are
            test.assertEqual(int(digest[:12], 16) // 1000, record.issued_at)
        await self.expired(own[0])

    async def expired(self, digest: str) -> None:
        """
        Every token expires at once, at the shape's expiry: the purge
        drops them all.
        """
        test: Any = self
        test.assertIsNotNone(await self.store.purge_expired(self.shape.expires_at - 1))
        test.assertIsNotNone(await self.store.get_token(digest))
        purged = await self.store.purge_expired(self.shape.expires_at + 1)
        test.assertGreaterEqual(purged, COUNT)
        test.assertIsNone(await self.store.get_token(digest))


class SQLitePopulateTests(PopulateMixin, TestCase):
    kind = "sqlite"

    def digests(self, client_id: str) -> list[str]:
        with sqlite3.connect(self.url.removeprefix("sqlite:///")) as connection:
            rows = connection.execute(
                "SELECT token_digest FROM access_tokens WHERE client_id = ? ORDER BY token_digest",
                (client_id,),
            ).fetchall()
        return [row[0] for row in rows]


class PostgreSQLPopulateTests(PopulateMixin, TestCase):
    kind = "postgresql"

    def digests(self, client_id: str) -> list[str]:
        with psycopg.connect(self.url) as connection:
            rows = connection.execute(
                "SELECT token_digest FROM access_tokens WHERE client_id = %s ORDER BY token_digest",
                (client_id,),
            ).fetchall()
        return [row[0] for row in rows]


class RedisPopulateTests(PopulateMixin, TestCase):
    kind = "redis"

    async def test_purge_probe(self) -> None:
        """
        The purge row's probe counts the fill's tokens the store's purge
        has deleted (the entries gone from their clients' sets): none
        before, all after.
        """
        populate.fill(self.kind, self.url, self.shape)
        gone, close = purge.probe(self.kind, self.url, COUNT, self.shape.expires_at)
        self.addCleanup(close)
        self.assertEqual(gone(), 0)
        await self.store.purge_expired(self.shape.expires_at + 1)
        self.assertEqual(gone(), COUNT)

    def digests(self, client_id: str) -> list[str]:
        redis = populate.Redis(self.url)
        try:
            members = redis.call("ZRANGE", f"{PREFIX}client_tokens:{client_id}", 0, -1)
            ttl = redis.call("TTL", f"{PREFIX}client_tokens:{client_id}")
        finally:
            redis.close()
        assert ttl > 3000, ttl
        return sorted(members)

    async def expired(self, digest: str) -> None:
        """
        Redis forgets each token by itself after its expiry (C{EXAT}), when
        the store itself would have (L{kept_until}): a lifetime after it,
        over a quarter of one, as the store's;
        each client's set stays until the last of its tokens' keys goes,
        and names its client in the set the store's purge starts from, so
        that the purge drops them all at their expiry, as on SQL.
        """
        test: Any = self
        redis = populate.Redis(self.url)
        try:
            own = self.digests("own-client")
            kept = [redis.call("EXPIRETIME", f"{PREFIX}token:{d}") for d in own]
            kept_set = redis.call("EXPIRETIME", f"{PREFIX}client_tokens:own-client")
            clients = redis.call("SMEMBERS", TOKEN_CLIENTS_KEY)
        finally:
            redis.close()
        records = [await self.store.get_token(d) for d in own]
        wanted = [kept_until(d, r.issued_at, r.expires_at) for d, r in zip(own, records, strict=True) if r]
        test.assertEqual(kept, wanted)
        test.assertGreater(len(set(kept)), len(kept) // 2)
        test.assertGreaterEqual(min(kept), self.shape.expires_at)
        lifetime = self.shape.expires_at - min(r.issued_at for r in records if r)
        test.assertLess(max(kept), self.shape.expires_at + lifetime * (EXPIRY_DELAY + EXPIRY_SPREAD))
        shortest = self.shape.expires_at - max(r.issued_at for r in records if r)
        test.assertGreaterEqual(min(kept), self.shape.expires_at + int(shortest * EXPIRY_DELAY))
        test.assertEqual(kept_set, max(kept))
        test.assertIn("own-client", clients)
        test.assertIn("bulk-1", clients)
        await super().expired(digest)
