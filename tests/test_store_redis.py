"""
What the Redis store does beyond the contract (L{tests.test_store_contract}):
its URLs, its key layout, passwords, expiry of token records.
"""

from __future__ import annotations

import json
import time
from typing import Any

import txredisapi
from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ccserver.errors import ConfigError, StoreUnavailable
from ccserver.model import TokenRecord
from ccserver.stores import redis as redis_store
from ccserver.stores.codec import TOKENS
from ccserver.stores.redis import (
    EXPIRY_DELAY,
    EXPIRY_SPREAD,
    LAYOUT_VERSION,
    PURGE_SHARE,
    TOKEN_BATCH,
    TOKEN_CLIENTS_KEY,
    RedisStore,
    kept_until,
    trimmed_before,
)
from ccserver.stores.redisprotocol import RedisFactory, RedisProtocol, _own_connection
from ccserver.testing.servers import redis_server
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
        address = store.address
        self.assertEqual((address.host, address.port, address.dbid), ("cache.example", 6379, 0))
        self.assertIsNone(address.password)
        self.assertEqual(store.url, "redis://cache.example")

    def test_password_and_database(self) -> None:
        store = RedisStore.from_url("redis://:s%40cret@10.0.0.5:6380/7", reactor, timeout=1)
        address = store.address
        self.assertEqual((address.host, address.port, address.dbid), ("10.0.0.5", 6380, 7))
        self.assertEqual(address.password, "s@cret")
        self.assertIsNone(address.username)
        self.assertEqual(store.url, "redis://:***@10.0.0.5:6380/7")
        self.assertNotIn("cret", repr(store))

    def test_username(self) -> None:
        store = RedisStore.from_url("redis://ccserver:pw@h:1/0", reactor, timeout=1)
        self.assertEqual((store.address.username, store.address.password), ("ccserver", "pw"))
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
        # INCRBY 0 answers the value itself (GET answers its length first)
        self.assertEqual(self.raw("INCRBY", "ccserver:schema_version", "0"), b":2")
        self.assertEqual(LAYOUT_VERSION, 2)

    async def test_layout_1_brought_to_2(self) -> None:
        """
        A store written by a ccserver before federated identities (layout
        1) holds no bindings: it is brought to layout 2 as it is, its
        clients kept.
        """
        await self.store.add_client(make_client("old"))
        self.raw("SET", "ccserver:schema_version", "1")
        store = RedisStore.from_url(self.server.url_for(0), reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        await store.open()
        self.assertEqual(self.raw("INCRBY", "ccserver:schema_version", "0"), b":2")
        self.assertEqual(await store.get_client("old"), make_client("old"))

    async def test_bindings_layout(self) -> None:
        """
        A client's bindings: one hash per issuer and subject, one set per
        client; both gone with the client.
        """
        identities = [{"issuer": "https://i.example", "subject": "s"}]
        client = make_client(
            "bound",
            metadata={"token_endpoint_auth_method": "federated_jwt",
                      "federated_identities": identities},
        )
        await self.store.add_client(client)
        (identity,) = client.federated_identities
        self.assertEqual(self.raw("HLEN", f"ccserver:bindings:{identity.key}"), b":1")
        self.assertEqual(self.raw("SCARD", "ccserver:client_bindings:bound"), b":1")
        await self.store.delete_client("bound", 1, 2)
        self.assertEqual(self.raw("EXISTS", f"ccserver:bindings:{identity.key}"), b":0")
        self.assertEqual(self.raw("EXISTS", "ccserver:client_bindings:bound"), b":0")

    async def test_newer_layout_refused(self) -> None:
        self.raw("SET", "ccserver:schema_version", str(LAYOUT_VERSION + 1))
        store = RedisStore.from_url(self.server.url_for(0), reactor, timeout=TIMEOUT)
        self.addCleanup(store.close)
        with self.assertRaises(ConfigError):
            await store.open()

    async def test_token_records_expire(self) -> None:
        """
        Token records and deny-list entries carry their expiry as a TTL; a
        token's key goes a lifetime and a little more after its expiry
        (L{kept_until}: the purge's to delete before), an expired token is
        not answered meanwhile.
        """
        now = int(time.time())
        token = make_token(expires_at=now + 600, issued_at=now)
        await self.store.add_token(token)
        await self.store.revoke_jti("jti-1", now + 300)
        key = f"ccserver:token:{token.token_digest}"
        self.assertEqual(
            int(self.raw("EXPIRETIME", key)[1:]), kept_until(token.token_digest, now, now + 600)
        )
        ttl = int(self.raw("TTL", key)[1:])
        self.assertTrue(1190 <= ttl <= 600 * (1 + EXPIRY_DELAY + EXPIRY_SPREAD), ttl)
        ttl = int(self.raw("TTL", "ccserver:revoked:jti-1")[1:])
        self.assertTrue(290 <= ttl <= 300, ttl)

    def test_expiry_spread(self) -> None:
        """
        Tokens that expire together are forgotten by Redis, if the purge
        has not deleted them, a lifetime after it (L{EXPIRY_DELAY}: a busy
        hour's are the purge's, at its pace) and over a quarter of a
        lifetime (L{EXPIRY_SPREAD}), each at a time its digest sets,
        evenly: they do not all go in the same second (Redis's expiry
        cycle, busy with them, held every request back).
        """
        issued, expires = 1_000_000, 1_003_600
        times = [kept_until(f"{i:064x}", issued, expires) for i in range(10_000)]
        self.assertEqual(min(times), expires + 3600)
        self.assertEqual(max(times), expires + 3600 + 899)
        # each tenth of the spread gets about a tenth of the tokens
        tenths = [0] * 10
        for t in times:
            tenths[(t - expires - 3600) * 10 // 900] += 1
        self.assertTrue(all(800 < n < 1200 for n in tenths), tenths)
        self.assertEqual(times[7], kept_until(f"{7:064x}", issued, expires))
        # a lifetime too short to spread: a lifetime after its expiry
        self.assertEqual(kept_until("a" * 64, issued, issued + 3), issued + 6)
        self.assertEqual(kept_until("a" * 64, issued, issued), issued)
        self.assertEqual(kept_until("a" * 64, issued, issued - 5), issued - 5)

    async def test_record_readable_by_others(self) -> None:
        """
        A client record is plain JSON: other tools can read it.
        """
        await self.store.add_client(make_client())
        record = json.loads(self.server.query("GET", "ccserver:client:client-1"))
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
        self.assertEqual(self.server.query("GET", client_key), current_json(LEGACY_CLIENT_JSON))
        fields = self.server.query("HGETALL", "ccserver:keys")
        self.assertEqual(
            dict(zip(fields[::2], fields[1::2], strict=True)),
            {LEGACY_KEY.kid: LEGACY_KEY_JSON, RETIRED_KEY.kid: RETIRED_KEY_JSON},
        )
        self.assertEqual(
            self.server.query("GET", token_key),
            current_json(LEGACY_TOKEN_JSON).replace(
                '"expires_at":1700003600', f'"expires_at":{expires_at}'
            ),
        )


def script_calls(info: str) -> int:
    """
    The EVAL and EVALSHA calls counted in an C{INFO commandstats} answer.
    """
    calls = 0
    for line in info.splitlines():
        name, _, stats = line.partition(":")
        if name in ("cmdstat_eval", "cmdstat_evalsha"):
            calls += int(dict(f.split("=") for f in stats.split(","))["calls"])
    return calls


class TokenBatchTests(TestCase):
    """
    Opaque tokens issued while a write is under way go to Redis together,
    in one script call, and each is answered only once that call is.
    """

    timeout = 60

    async def setUp(self) -> None:
        self.server = redis_server()
        self.server.flushall()
        self.store = RedisStore.from_url(self.server.url_for(3), reactor, timeout=TIMEOUT)
        self.addCleanup(self.store.close)
        await self.store.open()

    def raw(self, *command: str) -> Any:
        """
        One command's answer, from the server itself (the store's database).
        """
        return self.server.query(*command, db=3)

    def script_calls(self) -> int:
        return script_calls(self.raw("INFO", "commandstats"))

    async def add_together(self, tokens: list[TokenRecord]) -> None:
        """
        Add C{tokens} at once, after a first token that takes the idle
        store's first write: they all wait for it, then go in one batch.
        """
        first = make_token("0" * 64, client_id="warm-up")
        writes = [self.store.add_token(first), *(self.store.add_token(t) for t in tokens)]
        await gatherResults(writes)

    async def test_two_clients_in_one_script_call(self) -> None:
        """
        A batch of tokens of two clients is one script call, and leaves
        what one token at a time did: each record as JSON with its expiry,
        each client's set with its digests scored by expiry, expiring with
        the last of them.
        """
        now = int(time.time())
        mine = [make_token(f"{i:064x}", now + 600 + i) for i in range(1, 4)]
        theirs = [make_token(f"{i:064x}", now + 300, client_id="client-2") for i in range(4, 6)]
        mixed = [mine[0], theirs[0], mine[1], theirs[1], mine[2]]
        self.raw("CONFIG", "RESETSTAT")
        await self.add_together(mixed)
        # the first token's call, then one for all five
        self.assertEqual(self.script_calls(), 2)
        for token in mixed:
            key = f"ccserver:token:{token.token_digest}"
            self.assertEqual(self.raw("GET", key), TOKENS.to_json(token))
            self.assertEqual(
                int(self.raw("EXPIRETIME", key)),
                kept_until(token.token_digest, token.issued_at, token.expires_at),
            )
            self.assertEqual(await self.store.get_token(token.token_digest), token)
        for client_id, own in (("client-1", mine), ("client-2", theirs)):
            key = f"ccserver:client_tokens:{client_id}"
            members = self.raw("ZRANGE", key, "0", "-1", "WITHSCORES")
            self.assertEqual(
                [(digest, int(float(score)))
                 for digest, score in zip(members[::2], members[1::2], strict=True)],
                [(t.token_digest, t.expires_at) for t in own],
            )
            # gone as the last of its tokens' keys goes (the purge finds
            # each one whose key is left)
            self.assertEqual(
                int(self.raw("EXPIRETIME", key)),
                max(kept_until(t.token_digest, t.issued_at, t.expires_at) for t in own),
            )

    async def test_trimmed_per_client(self) -> None:
        """
        In a batch, each client's set is trimmed of the entries whose keys
        Redis has let go (L{trimmed_before}: expired a lifetime and a
        quarter before the earliest of its tokens in the batch was
        issued), and keeps its later expiry if it had one: clients do not
        mix.
        """
        now = int(time.time())
        old_1 = make_token("a" * 64, now - 500, issued_at=now - 1000)
        old_2 = make_token("b" * 64, now - 500, issued_at=now - 1000, client_id="client-2")
        later_1 = make_token("c" * 64, now + 5000, issued_at=now - 100)
        later_2 = make_token("9" * 64, now + 200, issued_at=now - 100, client_id="client-2")
        # the live ones first, or the sets would expire with the old ones
        for token in (later_1, later_2, old_1, old_2):
            await self.store.add_token(token)
        self.assertEqual(int(self.raw("ZCARD", "ccserver:client_tokens:client-2")), 2)
        batch = [
            # client-1's tokens of the batch: the earlier of now - 600 * 1.25
            # and now - 60 - 3660 * 1.25: old_1 stays
            make_token("d" * 64, now + 600, issued_at=now),
            make_token("e" * 64, now + 3600, issued_at=now - 60),
            # client-2's: before now - 40 - 340 * 1.25 = now - 465: old_2 goes
            make_token("f" * 64, now + 300, issued_at=now - 40, client_id="client-2"),
        ]
        self.assertEqual(trimmed_before(now - 40, now + 300), now - 465)
        await self.add_together(batch)

        async def digests(client_id: str) -> list[str]:
            key = f"ccserver:client_tokens:{client_id}"
            return list(self.raw("ZRANGE", key, "0", "-1"))

        self.assertEqual(await digests("client-1"), ["a" * 64, "d" * 64, "e" * 64, "c" * 64])
        self.assertEqual(await digests("client-2"), ["9" * 64, "f" * 64])
        # the sets go with the last of their tokens' keys: a batch does not
        # shorten what an earlier token needs
        self.assertEqual(
            int(self.raw("EXPIRETIME", "ccserver:client_tokens:client-1")),
            kept_until(later_1.token_digest, later_1.issued_at, later_1.expires_at),
        )
        self.assertEqual(
            int(self.raw("EXPIRETIME", "ccserver:client_tokens:client-2")),
            max(kept_until(t.token_digest, t.issued_at, t.expires_at)
                for t in (later_2, old_2, batch[2])),
        )
        # and deleting a client deletes its tokens of the batch, only its own
        await self.store.delete_client("client-1", now + 1, now + 3600)
        for token in batch[:2]:
            self.assertIs(await self.store.delete_token(token.token_digest), False)
        self.assertIs(await self.store.delete_token("f" * 64), True)

    async def test_trim_leaves_the_purge_its_tokens(self) -> None:
        """
        Tokens that have just expired, their keys still there, are not
        trimmed: the purge deletes them with their keys, at its pace (a
        trim in the request's own script deleting them cost Redis three
        times as much a token while a busy hour's tokens expired).
        """
        now = int(time.time())
        just = make_token("a" * 64, now - 5, issued_at=now - 3605)
        await self.store.add_token(make_token("c" * 64, now + 3600))
        await self.store.add_token(just)
        await self.store.add_token(make_token("b" * 64, now + 3600, issued_at=now))
        key = "ccserver:client_tokens:client-1"
        self.assertIn("a" * 64, self.raw("ZRANGE", key, "0", "-1"))
        self.assertEqual(await self.store.purge_expired(now), 1)
        self.assertNotIn("a" * 64, self.raw("ZRANGE", key, "0", "-1"))

    async def test_trim_bounded(self) -> None:
        """
        A batch trims at most L{TRIM_PER_TOKEN} expired entries of a
        client's set for each of the client's tokens it adds, the earliest
        first, however many expired together (a busy hour's million would
        hold Redis for most of a second, and a fixed 1,000 a batch starved
        it while ten million expired); the next batches trim the rest.
        """
        self.patch(redis_store, "TRIM_PER_TOKEN", 2)
        now = int(time.time())
        live = make_token("f" * 64, now + 5000, issued_at=now - 2000)
        expired = [
            make_token(f"{i:064x}", now - 1000 + i, issued_at=now - 2000) for i in range(1, 11)
        ]
        for token in (live, *expired):
            await self.store.add_token(token)
        key = "ccserver:client_tokens:client-1"
        self.assertEqual(int(self.raw("ZCARD", key)), 11)
        await self.add_together(
            [make_token(digest, now + 600, issued_at=now) for digest in ("e" * 64, "b" * 64)]
        )
        # a batch of 2: 4 of the 10 expired went, the earliest: 11 + 2 - 4
        self.assertEqual(int(self.raw("ZCARD", key)), 9)
        self.assertNotIn(f"{1:064x}", self.raw("ZRANGE", key, "0", "-1"))
        self.assertIn(f"{5:064x}", self.raw("ZRANGE", key, "0", "-1"))
        for digest in ("d" * 64, "c" * 64, "a" * 64):
            await self.store.add_token(make_token(digest, now + 600, issued_at=now))
        # batches of 1: 2 a batch; the 6 left went in the next three, the
        # live ones stay
        self.assertEqual(
            sorted(self.raw("ZRANGE", key, "0", "-1")),
            sorted(["f" * 64, "e" * 64, "b" * 64, "d" * 64, "c" * 64, "a" * 64]),
        )

    async def test_full_batch(self) -> None:
        """
        More tokens than a batch holds go in several, each whole.
        """
        now = int(time.time())
        tokens = [
            make_token(f"{i:064x}", now + 600, client_id=f"client-{i % 3}")
            for i in range(1, TOKEN_BATCH + 11)
        ]
        self.raw("CONFIG", "RESETSTAT")
        await self.add_together(tokens)
        self.assertEqual(self.script_calls(), 3)
        for token in tokens:
            self.assertEqual(await self.store.get_token(token.token_digest), token)
        own = [t for t in tokens if t.client_id == "client-0"]
        self.assertEqual(int(self.raw("ZCARD", "ccserver:client_tokens:client-0")), len(own))


class PurgeTests(TestCase):
    """
    The purge deletes expired opaque tokens itself, along their clients'
    sets, a batch a script call and paced (L{RedisStore.purge_expired}),
    before Redis's own expiry would (L{kept_until}): Redis's expiry cycle
    let millions of expired keys gather, then deleted them in bursts that
    held every request back.
    """

    timeout = 60

    async def setUp(self) -> None:
        self.server = redis_server()
        self.server.flushall()
        self.store = RedisStore.from_url(self.server.url_for(4), reactor, timeout=TIMEOUT)
        self.addCleanup(self.store.close)
        await self.store.open()
        self.now = int(time.time())

    def raw(self, *command: str) -> Any:
        return self.server.query(*command, db=4)

    def expired(self, digest: str, client_id: str = "client-1") -> TokenRecord:
        """
        A token that expired 10 s ago, after a long lifetime: Redis keeps
        its key for minutes yet (L{kept_until}; its digest's last 8 hex
        digits set how long).
        """
        digest = digest[8:] + f"{2000:08x}"
        token = make_token(digest, self.now - 10, issued_at=self.now - 10_000, client_id=client_id)
        self.assertGreater(kept_until(digest, token.issued_at, token.expires_at), self.now + 60)
        return token

    def exists(self, token: TokenRecord) -> bool:
        return int(self.raw("EXISTS", f"ccserver:token:{token.token_digest}")) == 1

    async def test_clients_named(self) -> None:
        """
        Every client with opaque tokens is named in the set the purge
        starts from, once.
        """
        for i, client_id in enumerate(["client-1", "client-2", "client-1"]):
            await self.store.add_token(make_token(f"{i:064x}", self.now + 600, client_id=client_id))
        self.assertEqual(
            sorted(self.raw("SMEMBERS", TOKEN_CLIENTS_KEY)), ["client-1", "client-2"]
        )

    async def test_expired_deleted(self) -> None:
        """
        The expired tokens of every client go, keys and entries, the live
        ones stay; a client left with none leaves the set of clients.
        """
        gone = [self.expired("a" * 64), self.expired("b" * 64, "client-2"),
                self.expired("c" * 64, "client-3")]
        live = [make_token("d" * 64, self.now + 600),
                make_token("e" * 64, self.now + 600, client_id="client-2")]
        for token in [*live, *gone]:
            await self.store.add_token(token)
        self.assertTrue(all(self.exists(t) for t in gone))
        self.assertEqual(await self.store.purge_expired(self.now), 3)
        self.assertFalse(any(self.exists(t) for t in gone))
        for token in live:
            self.assertEqual(await self.store.get_token(token.token_digest), token)
        self.assertEqual(list(self.raw("ZRANGE", "ccserver:client_tokens:client-1", "0", "-1")),
                         ["d" * 64])
        self.assertEqual(int(self.raw("EXISTS", "ccserver:client_tokens:client-3")), 0)
        self.assertEqual(
            sorted(self.raw("SMEMBERS", TOKEN_CLIENTS_KEY)), ["client-1", "client-2"]
        )
        self.assertEqual(await self.store.purge_expired(self.now), 0)

    async def test_deleted_client_leaves(self) -> None:
        """
        A deleted client (its set deleted with it) leaves the set of
        clients at the next purge.
        """
        await self.store.add_token(make_token("a" * 64, self.now + 600))
        await self.store.delete_client("client-1", self.now + 1, self.now + 3600)
        self.assertEqual(await self.store.purge_expired(self.now), 0)
        self.assertEqual(self.raw("SMEMBERS", TOKEN_CLIENTS_KEY), [])

    async def test_in_paced_batches(self) -> None:
        """
        A purge of more than a batch deletes L{PURGE_BATCH} a script call,
        resting after each batch that deleted any as L{rest} says for
        L{PURGE_SHARE}; each call names only the clients of the page not
        yet done with; a token written between two batches is kept.
        """
        self.patch(redis_store, "PURGE_BATCH", 3)
        tokens = [self.expired(f"{i:064x}", f"client-{i % 3}") for i in range(1, 11)]
        for token in tokens:
            await self.store.add_token(token)
        # issued before any of them expired: its batch trims none of them
        written = make_token("f" * 64, self.now + 600, issued_at=self.now - 10_000)
        rests: list[float] = []
        named: list[int] = []

        async def rest(clock: Any, took: float, share: float) -> None:
            rests.append(share)
            if len(rests) == 1:
                await self.store.add_token(written)

        write = self.store._write

        def counted(command: str, script: str, keys: list[str], args: list[str]) -> Any:
            if script is redis_store._PURGE_TOKENS_SCRIPT:
                named.append(len(keys) - 1)
            return write(command, script, keys, args)

        self.patch(redis_store, "rest", rest)
        self.patch(self.store, "_write", counted)
        self.assertEqual(await self.store.purge_expired(self.now), 10)
        self.assertFalse(any(self.exists(t) for t in tokens))
        self.assertEqual(await self.store.get_token(written.token_digest), written)
        # 3 + 3 + 3 + 1, the page of three clients shrinking as each is
        # done with (a batch that fills up ends on a client that may have more)
        self.assertEqual(rests, [PURGE_SHARE] * 4)
        self.assertEqual(named[0], 3)
        self.assertEqual(sorted(named, reverse=True), named)
        self.assertLess(named[-1], 3)

    async def test_pages_of_clients(self) -> None:
        """
        The clients are found a page at a time (C{SSCAN}, never a command
        over all of them at once), and every page is purged.
        """
        tokens = [self.expired(f"{i:064x}", f"client-{i}") for i in range(250)]
        await gatherResults([self.store.add_token(t) for t in tokens])
        self.raw("CONFIG", "RESETSTAT")
        self.assertEqual(await self.store.purge_expired(self.now), 250)
        self.assertFalse(any(self.exists(t) for t in tokens))
        self.assertEqual(self.raw("SMEMBERS", TOKEN_CLIENTS_KEY), [])
        stats = self.raw("INFO", "commandstats")
        sscan = next(line for line in stats.splitlines() if line.startswith("cmdstat_sscan:"))
        self.assertGreater(int(sscan.split("calls=")[1].split(",")[0]), 1)


class FakeConnection:
    """
    txredisapi's connection pool, as the store calls it for tokens: each
    C{eval} is kept, and answered by the test.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str], Deferred[Any]]] = []

    def eval(self, script: str, keys: list[str], args: list[str]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((keys, args, d))
        return d


class TokenBatchFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = RedisStore.from_url("redis://127.0.0.1:1/0", self.clock, timeout=5)
        self.redis = self.store._redis = FakeConnection()

    def test_answered_only_once_written(self) -> None:
        """
        No token's Deferred fires before the script call of its batch has
        answered.
        """
        first = self.store.add_token(make_token("a" * 64))
        later = [
            self.store.add_token(make_token("b" * 64)),
            self.store.add_token(make_token("c" * 64, client_id="client-2")),
        ]
        self.assertEqual(len(self.redis.calls), 1)
        self.assertNoResult(first)
        self.redis.calls[0][2].callback(1)
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(len(self.redis.calls), 2)
        keys, _, answer = self.redis.calls[1]
        self.assertEqual(
            keys,
            [
                "ccserver:token:" + "b" * 64,
                "ccserver:token:" + "c" * 64,
                "ccserver:token_clients",
                "ccserver:client_tokens:client-1",
                "ccserver:client_tokens:client-2",
            ],
        )
        for d in later:
            self.assertNoResult(d)
        answer.callback(2)
        for d in later:
            self.assertIsNone(self.successResultOf(d))

    def test_failed_batch_fails_every_token(self) -> None:
        """
        A batch whose call fails fails each of its tokens, as an
        unavailable store (L{StoreUnavailable}) or with Redis' error; the
        next batch is written all the same.
        """
        first = self.store.add_token(make_token("a" * 64))
        batch = [self.store.add_token(make_token(f"{i:064x}")) for i in range(1, 4)]
        self.redis.calls[0][2].errback(txredisapi.ConnectionError("Not connected"))
        self.failureResultOf(first, StoreUnavailable)
        batch_answer = self.redis.calls[1][2]
        after = self.store.add_token(make_token("f" * 64))
        batch_answer.errback(txredisapi.ResponseError("ERR something"))
        for d in batch:
            self.failureResultOf(d, txredisapi.ResponseError)
        self.redis.calls[2][2].callback(1)
        self.assertIsNone(self.successResultOf(after))

    def test_batch_in_time(self) -> None:
        """
        A batch whose call does not answer fails its tokens with
        L{StoreUnavailable} within the store's timeout.
        """
        first = self.store.add_token(make_token("a" * 64))
        self.clock.advance(5)
        self.failureResultOf(first, StoreUnavailable)

    def test_closed_store(self) -> None:
        self.store._redis = None
        self.failureResultOf(self.store.add_token(make_token()), StoreUnavailable)

    def test_unencodable_token_fails_alone(self) -> None:
        """
        A token that cannot be written as JSON fails at once (as it did
        before batches), and does not take its batch with it.
        """
        first = self.store.add_token(make_token("a" * 64))
        other = self.store.add_token(make_token("b" * 64))
        with self.assertRaises(TypeError):
            self.store.add_token(make_token("c" * 64, claims={"bad": object()}))
        self.redis.calls[0][2].callback(1)
        self.assertEqual(
            self.redis.calls[1][0],
            ["ccserver:token:" + "b" * 64, "ccserver:token_clients", "ccserver:client_tokens:client-1"],
        )
        self.redis.calls[1][2].callback(1)
        self.successResultOf(first)
        self.successResultOf(other)


class _Connection:
    def __init__(self, connected: int) -> None:
        self.connected = connected


class DeadConnectionTests(SynchronousTestCase):
    """
    The pool's queue of idle connections when one dies: txredisapi's own
    handed a connection given back dead to every command waiting, each
    removed it, and all but the first raised ValueError (a 500 instead of
    a 503, when a Redis died under load).
    """

    def setUp(self) -> None:
        self.factory = RedisFactory("test", 0, 2, isLazy=True)
        self.factory.size = 1  # a connection is there, as far as the pool knows

    def test_given_back_dead(self) -> None:
        waiting = [self.factory.getConnection(peek=True) for _ in range(3)]
        dead, live = _Connection(0), _Connection(1)
        self.factory.connectionQueue.put(dead)
        for d in waiting:
            self.assertNoResult(d)
        self.assertEqual(self.factory.connectionQueue.pending, [])
        self.factory.connectionQueue.put(live)
        for d in waiting:
            self.assertIs(self.successResultOf(d), live)

    def test_died_in_the_queue(self) -> None:
        dead, live = _Connection(1), _Connection(1)
        self.factory.connectionQueue.put(dead)
        dead.connected = 0
        waiting = self.factory.getConnection(peek=True)
        self.assertNoResult(waiting)
        self.assertEqual(self.factory.connectionQueue.pending, [])
        self.factory.connectionQueue.put(live)
        self.assertIs(self.successResultOf(waiting), live)


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


class _Answering:
    """
    A connection of the pool, as txredisapi's handler calls a protocol
    method on it: L{own} answers when the test says, L{shared} at once.
    """

    def __init__(self) -> None:
        self.answer: Deferred[str] = Deferred()

    @_own_connection
    def own(self) -> Deferred[str]:
        return self.answer

    def shared(self) -> Deferred[str]:
        return succeed("shared")


class _Factory:
    """
    A txredisapi factory, as its L{txredisapi.ConnectionHandler} uses it:
    which connections it is asked for (C{peek}: shared, else taken off
    the queue), and what is put back.
    """

    protocol = _Answering

    def __init__(self) -> None:
        self.deferred: Deferred[None] = Deferred()
        self.connection = _Answering()
        self.peeks: list[bool] = []
        self.connectionQueue = DeferredQueue[Any]()

    def getConnection(self, peek: bool = False) -> Deferred[Any]:
        self.peeks.append(peek)
        return succeed(self.connection)


class OwnConnectionTests(SynchronousTestCase):
    """
    The one private API of txredisapi the Redis store relies on: a
    protocol method marked by L{_own_connection} gets a connection of its
    own from txredisapi's L{txredisapi.ConnectionHandler}, given back once
    it has answered (L{RedisProtocol.replicated}: a write and its C{WAIT}
    with nothing in between).  These fail if txredisapi changes it.
    """

    def test_own_connection_until_answered(self) -> None:
        factory = _Factory()
        handler = txredisapi.ConnectionHandler(factory)
        answered = handler.own()
        self.assertEqual(factory.peeks, [False])
        self.assertEqual(factory.connectionQueue.pending, [])
        factory.connection.answer.callback("done")
        self.assertEqual(self.successResultOf(answered), "done")
        self.assertEqual(factory.connectionQueue.pending, [factory.connection])

    def test_other_commands_share(self) -> None:
        factory = _Factory()
        handler = txredisapi.ConnectionHandler(factory)
        self.assertEqual(self.successResultOf(handler.shared()), "shared")
        self.assertEqual(factory.peeks, [True])
        self.assertEqual(factory.connectionQueue.pending, [])

    def test_replicated_is_marked(self) -> None:
        factory = _Factory()
        factory.protocol = RedisProtocol  # type: ignore[assignment]
        factory.getConnection = lambda peek=False: factory.peeks.append(peek) or Deferred()  # type: ignore[method-assign]
        txredisapi.ConnectionHandler(factory).replicated("set", "k", "v", replicas=1, timeout=1)
        self.assertEqual(factory.peeks, [False])
