"""
What the Redis store does beyond the contract (L{tests.test_store_contract}):
its URLs, its key layout, passwords, expiry of token records.
"""

from __future__ import annotations

import json
import time
from typing import Any

from attrs import evolve
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ccserver.errors import ConfigError, StoreUnavailable
from ccserver.stores.redis import LAYOUT_VERSION, RedisStore
from tests.servers import redis_server
from tests.test_codec import (
    LEGACY_CLIENT,
    LEGACY_CLIENT_JSON,
    LEGACY_KEY,
    LEGACY_KEY_JSON,
    LEGACY_TOKEN,
    LEGACY_TOKEN_JSON,
    RETIRED_KEY,
    RETIRED_KEY_JSON,
    current_json,
)
from tests.test_store_contract import TIMEOUT, make_client, make_key, make_token


class URLTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        store = RedisStore.from_url("redis://cache.example", reactor, timeout=1)
        self.assertEqual((store._host, store._port, store._dbid), ("cache.example", 6379, 0))
        self.assertIsNone(store._password)
        self.assertEqual(store.url, "redis://cache.example")

    def test_password_and_database(self) -> None:
        store = RedisStore.from_url("redis://:s%40cret@10.0.0.5:6380/7", reactor, timeout=1)
        self.assertEqual((store._host, store._port, store._dbid), ("10.0.0.5", 6380, 7))
        self.assertEqual(store._password, "s@cret")
        self.assertIsNone(store._username)
        self.assertEqual(store.url, "redis://:***@10.0.0.5:6380/7")
        self.assertNotIn("cret", repr(store))

    def test_username(self) -> None:
        store = RedisStore.from_url("redis://ccserver:pw@h:1/0", reactor, timeout=1)
        self.assertEqual((store._username, store._password), ("ccserver", "pw"))
        self.assertEqual(store.url, "redis://ccserver:***@h:1/0")

    def test_bad_database(self) -> None:
        with self.assertRaises(ConfigError):
            RedisStore.from_url("redis://h:6379/cache", reactor, timeout=1)

    def test_bad_port(self) -> None:
        with self.assertRaises(ConfigError):
            RedisStore.from_url("redis://h:port/0", reactor, timeout=1)

    def test_other_scheme(self) -> None:
        with self.assertRaises(ConfigError):
            RedisStore.from_url("rediss://h:6379/0", reactor, timeout=1)


class LayoutTests(TestCase):
    """
    The keys are where the module's docstring says, so that an operator
    can find (and back up, or inspect) them.
    """

    timeout = 60

    async def setUp(self) -> None:
        self.server = redis_server()
        self.server.flushall()
        self.store = RedisStore.from_url(self.server.url_for(0), reactor, timeout=TIMEOUT)
        self.addCleanup(self.store.close)
        await self.store.open()

    def raw(self, *command: str) -> bytes:
        return self.server.command(*command)

    async def test_client_is_one_json_value(self) -> None:
        await self.store.add_client(make_client("12345"))
        self.assertEqual(self.raw("TYPE", "ccserver:client:12345"), b"+string")
        self.assertEqual(self.raw("STRLEN", "ccserver:client:12345")[:1], b":")

    async def test_keys_in_one_hash(self) -> None:
        await self.store.add_key(make_key("k1"))
        await self.store.add_key(make_key("k2"))
        self.assertEqual(self.raw("HLEN", "ccserver:keys"), b":2")

    async def test_layout_version(self) -> None:
        self.assertEqual(self.raw("GET", "ccserver:schema_version"), b"$1")
        self.assertEqual(LAYOUT_VERSION, 1)

    async def test_newer_layout_refused(self) -> None:
        self.raw("SET", "ccserver:schema_version", "2")
        store = RedisStore.from_url(self.server.url_for(0), reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        with self.assertRaises(ConfigError):
            await store.open()

    async def test_token_records_expire(self) -> None:
        """
        Token records and deny-list entries carry their expiry as a TTL.
        """
        token = make_token(expires_at=int(time.time()) + 600)
        await self.store.add_token(token)
        await self.store.revoke_jti("jti-1", int(time.time()) + 300)
        ttl = int(self.raw("TTL", f"ccserver:token:{token.token_digest}")[1:])
        self.assertTrue(590 <= ttl <= 600, ttl)
        ttl = int(self.raw("TTL", "ccserver:revoked:jti-1")[1:])
        self.assertTrue(290 <= ttl <= 300, ttl)

    async def test_record_readable_by_others(self) -> None:
        """
        A client record is plain JSON: other tools can read it.
        """
        await self.store.add_client(make_client())
        text = await self.store._call("get", "ccserver:client:client-1")
        record = json.loads(text)
        self.assertEqual(record["client_id"], "client-1")
        self.assertEqual(record["metadata"]["scope"], "read write")

    async def test_records_of_earlier_code(self) -> None:
        """
        Records as ccserver wrote them before the record codec are read as
        they were, and records written now are the same, byte for byte.
        """
        client_key = f"ccserver:client:{LEGACY_CLIENT.client_id}"
        token_key = f"ccserver:token:{LEGACY_TOKEN.token_digest}"
        self.raw("SET", client_key, LEGACY_CLIENT_JSON)
        self.raw(
            "HSET",
            "ccserver:keys",
            LEGACY_KEY.kid,
            LEGACY_KEY_JSON,
            RETIRED_KEY.kid,
            RETIRED_KEY_JSON,
        )
        self.raw("SET", token_key, LEGACY_TOKEN_JSON)
        self.assertEqual(await self.store.get_client(LEGACY_CLIENT.client_id), LEGACY_CLIENT)
        self.assertCountEqual(await self.store.list_keys(), [LEGACY_KEY, RETIRED_KEY])
        self.assertEqual(await self.store.get_token(LEGACY_TOKEN.token_digest), LEGACY_TOKEN)

        self.server.flushall()
        # a token record expires with the token: this one must not have
        expires_at = int(time.time()) + 600
        token = evolve(LEGACY_TOKEN, expires_at=expires_at)
        await self.store.add_client(LEGACY_CLIENT)
        await self.store.add_key(LEGACY_KEY)
        await self.store.add_key(RETIRED_KEY)
        await self.store.add_token(token)
        self.assertEqual(await self.store._call("get", client_key), current_json(LEGACY_CLIENT_JSON))
        self.assertEqual(
            await self.store._call("hgetall", "ccserver:keys"),
            {LEGACY_KEY.kid: LEGACY_KEY_JSON, RETIRED_KEY.kid: RETIRED_KEY_JSON},
        )
        self.assertEqual(
            await self.store._call("get", token_key),
            current_json(LEGACY_TOKEN_JSON).replace(
                '"expires_at":1700003600', f'"expires_at":{expires_at}'
            ),
        )


class PasswordTests(TestCase):
    """
    A Redis that asks for a password (requirepass).
    """

    timeout = 60
    password = "p@ss:w/rd-Zoë"

    def setUp(self) -> None:
        self.server = redis_server("auth", password=self.password)
        self.server.flushall()

    async def test_right_password(self) -> None:
        url = self.server.url_for(2)
        self.assertIn("%40", url)
        store = RedisStore.from_url(url, reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        await store.open()
        await store.add_client(make_client())
        self.assertEqual(await store.get_client("client-1"), make_client())
        self.assertNotIn("ss:w", store.url)

    async def test_wrong_password(self) -> None:
        """
        Fails in time with StoreUnavailable, and logs no password.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = RedisStore.from_url(self.server.url_for(2, "not-it"), reactor, timeout=0.5)
        self.addCleanup(store.close)
        started = time.monotonic()
        with self.assertRaises(StoreUnavailable):
            await store.open()
        self.assertLess(time.monotonic() - started, 2.0)
        logged = " ".join(formatEvent(e) + repr(e) for e in events)
        self.assertIn("set-up failed", logged)
        self.assertNotIn("not-it", logged)
        self.assertNotIn(self.password, logged)


class VersionTests(SynchronousTestCase):
    def test_redis_version(self) -> None:
        from ccserver.stores.redis import _redis_version

        info = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:00000000\r\n"
        self.assertEqual(_redis_version(info), (7, 0))
        self.assertEqual(_redis_version("# Server\r\n"), (0,))
