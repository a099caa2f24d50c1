"""
The store contract: one mixin with a test for every behaviour of
L{ccserver.interfaces.IStore}, run against every store, on real servers.

Each test gets a clean database: a new SQLite file, a new PostgreSQL
database, a flushed Redis.  The servers are started once per test process
(L{ccserver.testing.servers}).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from ccserver.errors import (
    BindingTaken,
    ClientExists,
    OAuthError,
    StoreUnavailable,
    invalid_client,
)
from ccserver.interfaces import (
    IAuthAttemptStore,
    IClientStore,
    ILeaseStore,
    IRateLimitStore,
    IStore,
    ITokenStore,
)
from ccserver.keys import KeyEncryptor, Keyring
from ccserver.model import (
    AttemptKeys,
    AttemptRelease,
    Client,
    InitialAccessToken,
    Reservation,
    StoredKey,
    TokenGrant,
    TokenRateLimit,
    TokenRecord,
)
from ccserver.oauth.limits import AuthLimits, IssuanceLimit
from ccserver.stores import sql
from ccserver.stores.memory import MemoryStore
from ccserver.stores.redis import RedisStore
from ccserver.stores.sql import SQLStore
from ccserver.testing.polling import eventually
from ccserver.testing.servers import (
    PostgresServer,
    RedisServer,
    ServerBinaryMissing,
    SilentServer,
    clean_store_url,
    find_binary,
    postgres_server,
    redis_sentinel_group,
    redis_server,
)

T = TypeVar("T")

#: Seconds an operation may take in these tests; the servers are local.
TIMEOUT = 5.0

#: The revocation mark of a deletion in the tests that are not about it:
#: tokens issued until now are dead, and the mark is kept for an hour.
MARK = (int(time.time()), int(time.time()) + 3600)


def make_client(client_id: str = "client-1", **changes: Any) -> Client:
    client = Client(
        client_id=client_id,
        client_id_issued_at=1_700_000_000,
        metadata={
            "client_name": "Test client",
            "grant_types": ["client_credentials"],
            "token_endpoint_auth_method": "client_secret_basic",
            "scope": "read write",
        },
        client_secret_digest="a" * 64,
        registration_access_token_digest="b" * 64,
    )
    return evolve(client, **changes)


def make_key(kid: str = "key-1", created_at: int = 1_700_000_000, **changes: Any) -> StoredKey:
    key = StoredKey(
        kid=kid,
        alg="ES256",
        encrypted_private_key="gAAAAAB-encrypted-" + kid,
        created_at=created_at,
        active_from=created_at + 60,
        retired_at=None,
    )
    return evolve(key, **changes)


#: A Kubernetes cluster's issuer, and the subject of a service account's token.
CLUSTER = "https://oidc.cluster.example"
ACCOUNT = "system:serviceaccount:billing:api"


def bound_client(client_id: str, *identities: dict[str, Any]) -> Client:
    """
    A federated_jwt client bound to these workload identities (by default,
    the service account L{ACCOUNT} of L{CLUSTER}).
    """
    return make_client(
        client_id,
        client_secret_digest="",
        metadata={
            "token_endpoint_auth_method": "federated_jwt",
            "federated_identities": list(identities)
            or [{"issuer": CLUSTER, "subject": ACCOUNT}],
        },
    )


if TYPE_CHECKING:
    _TestCase = TestCase
else:
    _TestCase = object


def make_token(
    digest: str = "d" * 64, expires_at: int | None = None, **changes: Any
) -> TokenRecord:
    now = int(time.time())
    token = TokenRecord(
        token_digest=digest,
        client_id="client-1",
        scope=frozenset({"read", "write"}),
        audience=("https://api.example", "https://other.example"),
        issued_at=now,
        expires_at=now + 3600 if expires_at is None else expires_at,
        jti="jti-" + digest[:8],
        claims={"tenant": "Zoë", "roles": ["a", "b"], "n": 1},
    )
    return evolve(token, **changes)


def make_initial_access_token(
    token_id: str = "iat-1", uses: int = 10, **changes: Any
) -> InitialAccessToken:
    now = int(time.time())
    token = InitialAccessToken(
        token_id=token_id,
        token_digest=f"{token_id:x>64}",
        created_at=now,
        expires_at=now + 3600,
        max_uses=uses,
        note="payments team — Zoë",
        scope_limit=("read", "write"),
        audience_limit=("https://api.example",),
        auth_method_limit=None,
        grant_type_limit=(),
    )
    return evolve(token, **changes)


def attempt_keys(source: str, budget: int = 10, cap: int = 0) -> AttemptKeys:
    """
    The keys of one credential tried from C{source}, as the limits make
    them (plain strings here: a store takes them as they come); with a
    cap, one shared by every source.
    """
    return AttemptKeys(
        counter=f"counter:{source}",
        budget=budget,
        cap="cap" if cap else None,
        cap_budget=cap,
        known=f"known:{source}",
    )


class CountingChecks:
    """
    A fake credential check that counts the checks made.  Each answers
    after a store round trip (the lookup of a client that is not there), as
    the check of an uncached client does, so that the checks of a burst
    are under way together.
    """

    def __init__(self, store: IClientStore) -> None:
        self.count = 0
        self.store = store

    def check(self, right: bool) -> Callable[[], Awaitable[str]]:
        async def check() -> str:
            self.count += 1
            await self.store.get_client("nobody")
            if not right:
                raise invalid_client()
            return "client-1"

        return check

    @staticmethod
    def outcome(attempt: Awaitable[object]) -> Deferred[int]:
        """
        The HTTP status the attempt would be answered with.
        """

        async def status() -> int:
            try:
                await attempt
            except OAuthError as error:
                return error.status
            return 200

        return ensureDeferred(status())


class StoreContractMixin(_TestCase):
    """
    The behaviour every L{IStore} shares.  A subclass (which is also a
    L{TestCase}) says how to make a store on this test's clean database.
    """

    #: whether the data outlives the store object (all but MemoryStore)
    durable = True

    #: whether purge_expired() does the forgetting (Redis expires records
    #: by itself: here, as each expired before it was written, at once; it
    #: purges only the expired tokens whose keys it still holds,
    #: L{tests.test_store_redis.PurgeTests})
    purges = True

    store: IStore

    def new_store(self) -> IStore:
        """
        A new, unopened store on this test's database.
        """
        raise NotImplementedError()

    async def setUp(self) -> None:
        self.store = await self.open_store()

    async def open_store(self) -> IStore:
        """
        A new store on this test's database, opened, and closed after the test.
        """
        store = self.new_store()
        await store.open()
        self.addCleanup(store.close)
        return store

    async def reopened(self) -> IStore:
        """
        The store after a restart of the server process that uses it: the
        current one closed and a new one opened on the same database.
        """
        if not self.durable:
            return self.store
        await self.store.close()
        return await self.open_store()

    async def second_store(self) -> IStore:
        """
        Another store on this test's database, as a second process opens
        it (the same object for a store that lives in one process).
        """
        if not self.durable:
            return self.store
        return await self.open_store()

    # the interface

    def test_provides_interface(self) -> None:
        self.assertTrue(verifyObject(IStore, self.store))

    def test_url_is_a_string(self) -> None:
        self.assertIsInstance(self.store.url, str)

    # clients

    async def test_get_missing_client(self) -> None:
        self.assertIsNone(await self.store.get_client("nobody"))

    async def test_client_id_with_nul_is_not_found(self) -> None:
        """
        A client id from the outside may hold any character; PostgreSQL
        refuses NUL in a string.  Every store finds no such client.
        """
        await self.store.add_client(make_client())
        self.assertIsNone(await self.store.get_client("client-1\x00"))
        self.assertIs(await self.store.delete_client("\x00client-1", *MARK), False)
        self.assertIsNotNone(await self.store.get_client("client-1"))

    async def test_add_then_get(self) -> None:
        client = make_client()
        self.assertIsNone(await self.store.add_client(client))
        self.assertEqual(await self.store.get_client(client.client_id), client)

    async def test_add_taken_id_fails(self) -> None:
        first = make_client()
        await self.store.add_client(first)
        second = make_client(client_secret_digest="c" * 64, metadata={"client_name": "other"})
        with self.assertRaises(ClientExists):
            await self.store.add_client(second)
        self.assertEqual(await self.store.get_client(first.client_id), first)

    async def test_concurrent_adds_of_one_id(self) -> None:
        """
        Of many adds of one id at once, exactly one succeeds.
        """
        candidates = [make_client(client_secret_digest=f"{i:064x}") for i in range(10)]
        results = await DeferredList(
            [self.store.add_client(c) for c in candidates], consumeErrors=True
        )
        winners = [c for c, (ok, _) in zip(candidates, results, strict=True) if ok]
        losers = [outcome for ok, outcome in results if not ok]
        self.assertEqual(len(winners), 1)
        for failure in losers:
            self.assertTrue(failure.check(ClientExists))
        self.assertEqual(await self.store.get_client("client-1"), winners[0])

    async def test_replace(self) -> None:
        await self.store.add_client(make_client())
        changed = make_client(
            client_id_issued_at=1_800_000_000,
            metadata={"client_name": "Renamed", "scope": "read"},
            client_secret_digest="d" * 64,
            registration_access_token_digest="e" * 64,
        )
        self.assertIs(await self.store.replace_client(changed), True)
        self.assertEqual(await self.store.get_client("client-1"), changed)

    async def test_previous_secret_kept(self) -> None:
        """
        A rotation's previous secret digest and its expiry are stored with
        the client, written by add and replace, and read back; and a client
        without them reads back with None.
        """
        plain = make_client()
        await self.store.add_client(plain)
        rotated = evolve(
            plain,
            client_secret_digest="f" * 64,
            previous_secret_digest="a" * 64,
            previous_secret_expires_at=1_700_001_800,
        )
        self.assertIs(await self.store.replace_client(rotated), True)
        store = await self.reopened()
        self.assertEqual(await store.get_client("client-1"), rotated)
        self.assertIs(await store.replace_client(plain), True)
        self.assertEqual(await store.get_client("client-1"), plain)
        await store.add_client(evolve(rotated, client_id="client-2"))
        self.assertEqual(
            await store.get_client("client-2"), evolve(rotated, client_id="client-2")
        )

    async def test_auth_method_named_kept(self) -> None:
        """
        Whether a client's registration named its method is stored, written
        by add and replace, read back after a restart and by a listing: a
        client that named none may use either secret method, one that did
        is held to it.
        """
        unnamed = make_client(auth_method_named=False)
        await self.store.add_client(unnamed)
        store = await self.reopened()
        self.assertIs((await store.get_client("client-1")).auth_method_named, False)
        page, _ = await store.list_clients("", 10)
        self.assertEqual(page, [unnamed])
        self.assertIs(await store.replace_client(evolve(unnamed, auth_method_named=True)), True)
        self.assertIs((await store.get_client("client-1")).auth_method_named, True)
        self.assertIs(await store.replace_client(unnamed), True)
        self.assertEqual(await store.get_client("client-1"), unnamed)

    async def list_all(self, page_size: int) -> tuple[list[Client], int]:
        """
        Every client, walking the pages; and how many pages it took.
        """
        found: dict[str, Client] = {}
        cursor, pages = "", 0
        while True:
            page, cursor = await self.store.list_clients(cursor, page_size)
            pages += 1
            self.assertLessEqual(len(page), page_size * 3, "a page far over its size")
            for client in page:
                found[client.client_id] = client
            if not cursor:
                return sorted(found.values(), key=lambda c: c.client_id), pages
            self.assertLess(pages, 1000, "the walk does not end")

    async def test_list_clients_empty(self) -> None:
        self.assertEqual(await self.list_all(10), ([], 1))

    async def test_list_clients_pages(self) -> None:
        """
        Walking the cursor gives every client (ids of any characters,
        numeric-looking ones too), in several pages, and no deleted one.
        """
        ids = [f"client-{i:03}" for i in range(45)] + ["12345", "-dash", "ü"]
        for client_id in ids:
            await self.store.add_client(make_client(client_id))
        await self.store.delete_client("client-007", *MARK)
        clients, pages = await self.list_all(10)
        expected = sorted(set(ids) - {"client-007"})
        self.assertEqual([c.client_id for c in clients], expected)
        self.assertGreater(pages, 1)
        self.assertEqual(clients[0], make_client(expected[0]))

    async def test_replace_missing_stores_nothing(self) -> None:
        self.assertIs(await self.store.replace_client(make_client()), False)
        self.assertIsNone(await self.store.get_client("client-1"))

    async def test_replace_after_delete_does_not_resurrect(self) -> None:
        await self.store.add_client(make_client())
        await self.store.delete_client("client-1", *MARK)
        self.assertIs(await self.store.replace_client(make_client()), False)
        self.assertIsNone(await self.store.get_client("client-1"))

    async def test_concurrent_replaces_leave_one_whole_version(self) -> None:
        """
        Many replaces of one client at once leave one of them, whole: no
        field of one version beside a field of another.
        """
        await self.store.add_client(make_client())
        versions = [
            make_client(
                client_id_issued_at=i,
                metadata={"client_name": f"version {i}", "version": i},
                client_secret_digest=f"{i:064x}",
                registration_access_token_digest=f"{i:064d}",
            )
            for i in range(25)
        ]
        results = await gatherResults([self.store.replace_client(v) for v in versions])
        self.assertEqual(results, [True] * len(versions))
        stored = await self.store.get_client("client-1")
        self.assertIn(stored, versions)

    async def test_delete(self) -> None:
        await self.store.add_client(make_client())
        self.assertIs(await self.store.delete_client("client-1", *MARK), True)
        self.assertIsNone(await self.store.get_client("client-1"))
        self.assertIs(await self.store.delete_client("client-1", *MARK), False)

    async def test_delete_missing(self) -> None:
        self.assertIs(await self.store.delete_client("nobody", *MARK), False)

    async def test_delete_leaves_others(self) -> None:
        one, two = make_client("one"), make_client("two")
        await self.store.add_client(one)
        await self.store.add_client(two)
        await self.store.delete_client("one", *MARK)
        self.assertEqual(await self.store.get_client("two"), two)

    async def test_added_again_after_delete(self) -> None:
        await self.store.add_client(make_client())
        await self.store.delete_client("client-1", *MARK)
        again = make_client(client_secret_digest="f" * 64)
        await self.store.add_client(again)
        self.assertEqual(await self.store.get_client("client-1"), again)

    async def test_metadata_round_trip(self) -> None:
        """
        Metadata comes back as it went in: unicode, nested lists and
        objects, integers, floats, booleans and null, and strings that look
        like numbers stay strings.
        """
        metadata = {
            "client_name": "Zoë's café ☕ — クライアント 𝄞",
            "redirect_uris": [],
            "contacts": ["ops@example.com", "Ünïcödé <u@example.com>"],
            "nested": {"lists": [[1, 2], [3, [4, "five"]]], "empty": {}},
            "integer": 42,
            "big": 2**53 + 1,
            "negative": -7,
            "float": 0.125,
            "true": True,
            "false": False,
            "null": None,
            "numeric_string": "12345",
            "float_string": "1.5",
            'quote"and\\backslash': "'; DROP TABLE clients; --",
        }
        client = make_client(metadata=metadata)
        await self.store.add_client(client)
        stored = await self.store.get_client("client-1")
        assert stored is not None
        self.assertEqual(dict(stored.metadata), metadata)
        self.assertIsInstance(stored.metadata["numeric_string"], str)
        self.assertIsInstance(stored.metadata["float"], float)
        self.assertIsInstance(stored.metadata["true"], bool)

    async def test_numeric_looking_client_id(self) -> None:
        """
        A client id "12345" (and digests of digits only, with a leading
        zero) come back as the same strings, not as numbers.
        """
        client = make_client(
            "12345",
            client_id_issued_at=0,
            client_secret_digest="0" + "1" * 63,
            registration_access_token_digest="0123456789",
        )
        await self.store.add_client(client)
        stored = await self.store.get_client("12345")
        self.assertEqual(stored, client)
        assert stored is not None
        self.assertIs(type(stored.client_id), str)
        self.assertIs(type(stored.client_secret_digest), str)
        self.assertIs(type(stored.registration_access_token_digest), str)
        self.assertIs(type(stored.client_id_issued_at), int)

    async def test_unusual_client_ids(self) -> None:
        ids = ["with space", "slash/and:colon", "ünïcödé", "%s?", "*", "a" * 200]
        for client_id in ids:
            await self.store.add_client(make_client(client_id))
        for client_id in ids:
            stored = await self.store.get_client(client_id)
            self.assertEqual(stored, make_client(client_id))
        self.assertIsNone(await self.store.get_client("a"))

    # federated identities (workload identity federation)

    async def test_bound_clients_found_by_issuer_and_subject(self) -> None:
        client = bound_client(
            "bound",
            {"issuer": CLUSTER, "subject": ACCOUNT},
            {"issuer": "spiffe://example.org", "subject": "spiffe://example.org/api"},
        )
        await self.store.add_client(client)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), ["bound"])
        self.assertEqual(
            await self.store.clients_bound_to("spiffe://example.org", "spiffe://example.org/api"),
            ["bound"],
        )
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT + "x"), [])
        self.assertEqual(await self.store.clients_bound_to(CLUSTER + "x", ACCOUNT), [])
        self.assertEqual(await self.store.get_client("bound"), client)

    async def test_unusual_subjects(self) -> None:
        """
        A subject is whatever the platform writes: long, non-ASCII,
        numeric-looking, with the characters a store key would trip on.
        """
        subjects = ["12345", "repo:Zoë/ü:ref:refs/heads/*", "a b\n:*?[]\x00", "x" * 2048]
        for index, subject in enumerate(subjects):
            await self.store.add_client(
                bound_client(f"c{index}", {"issuer": CLUSTER, "subject": subject})
            )
        for index, subject in enumerate(subjects):
            self.assertEqual(await self.store.clients_bound_to(CLUSTER, subject), [f"c{index}"])

    async def test_clients_without_bindings_are_not_found(self) -> None:
        await self.store.add_client(make_client())
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), [])

    async def test_one_subject_bound_with_other_conditions(self) -> None:
        """
        One workload identity with different claim conditions may be bound
        to different clients: one lookup finds them all.
        """
        production = {"issuer": CLUSTER, "subject": ACCOUNT, "claims": {"environment": "prod"}}
        staging = {"issuer": CLUSTER, "subject": ACCOUNT, "claims": {"environment": "staging"}}
        await self.store.add_client(bound_client("prod", production))
        await self.store.add_client(bound_client("staging", staging))
        await self.store.add_client(bound_client("any"))
        self.assertEqual(
            sorted(await self.store.clients_bound_to(CLUSTER, ACCOUNT)), ["any", "prod", "staging"]
        )

    async def test_taken_binding_refused_and_nothing_stored(self) -> None:
        await self.store.add_client(bound_client("first"))
        with self.assertRaises(BindingTaken) as caught:
            await self.store.add_client(
                bound_client(
                    "second",
                    {"issuer": CLUSTER, "subject": "free"},
                    {"issuer": CLUSTER, "subject": ACCOUNT},
                )
            )
        self.assertEqual(caught.exception.identity, bound_client("x").federated_identities[0])
        self.assertIsNone(await self.store.get_client("second"))
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, "free"), [])
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), ["first"])

    async def test_conditions_compared_whole(self) -> None:
        """
        The same conditions in another order are the same binding.
        """
        await self.store.add_client(
            bound_client("first", {"issuer": CLUSTER, "subject": ACCOUNT, "claims": {"a": "1", "b": "2"}})
        )
        with self.assertRaises(BindingTaken):
            await self.store.add_client(
                bound_client(
                    "second", {"issuer": CLUSTER, "subject": ACCOUNT, "claims": {"b": "2", "a": "1"}}
                )
            )

    async def test_taken_id_with_bindings_stores_no_bindings(self) -> None:
        await self.store.add_client(make_client("taken"))
        with self.assertRaises(ClientExists):
            await self.store.add_client(bound_client("taken"))
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), [])

    async def test_concurrent_adds_of_one_binding(self) -> None:
        """
        Of many clients registered at once with one binding, exactly one is
        stored; the others are refused whole.
        """
        candidates = [bound_client(f"client-{i}") for i in range(10)]
        results = await DeferredList(
            [self.store.add_client(c) for c in candidates], consumeErrors=True
        )
        winners = [c for c, (ok, _) in zip(candidates, results, strict=True) if ok]
        self.assertEqual(len(winners), 1)
        for ok, outcome in results:
            if not ok:
                self.assertTrue(outcome.check(BindingTaken), outcome)
        self.assertEqual(
            await self.store.clients_bound_to(CLUSTER, ACCOUNT), [winners[0].client_id]
        )
        for candidate in candidates:
            stored = await self.store.get_client(candidate.client_id)
            self.assertEqual(stored, candidate if candidate in winners else None)

    async def test_replace_moves_bindings(self) -> None:
        await self.store.add_client(bound_client("client"))
        moved = bound_client("client", {"issuer": CLUSTER, "subject": "system:serviceaccount:a:b"})
        self.assertIs(await self.store.replace_client(moved), True)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), [])
        self.assertEqual(
            await self.store.clients_bound_to(CLUSTER, "system:serviceaccount:a:b"), ["client"]
        )
        # the old binding is free for another client
        await self.store.add_client(bound_client("other"))
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), ["other"])

    async def test_replace_keeps_its_own_binding(self) -> None:
        await self.store.add_client(bound_client("client"))
        renamed = evolve(
            bound_client("client"),
            metadata={**bound_client("client").metadata, "client_name": "renamed"},
        )
        self.assertIs(await self.store.replace_client(renamed), True)
        self.assertEqual(await self.store.get_client("client"), renamed)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), ["client"])

    async def test_replace_dropping_bindings(self) -> None:
        await self.store.add_client(bound_client("client"))
        self.assertIs(await self.store.replace_client(make_client("client")), True)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), [])

    async def test_replace_with_taken_binding_stores_nothing(self) -> None:
        await self.store.add_client(bound_client("first"))
        second = bound_client("second", {"issuer": CLUSTER, "subject": "mine"})
        await self.store.add_client(second)
        with self.assertRaises(BindingTaken):
            await self.store.replace_client(
                bound_client(
                    "second",
                    {"issuer": CLUSTER, "subject": "new"},
                    {"issuer": CLUSTER, "subject": ACCOUNT},
                )
            )
        self.assertEqual(await self.store.get_client("second"), second)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, "mine"), ["second"])
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, "new"), [])
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), ["first"])

    async def test_replace_missing_client_binds_nothing(self) -> None:
        self.assertIs(await self.store.replace_client(bound_client("nobody")), False)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), [])

    async def test_concurrent_replaces_binding_one_identity(self) -> None:
        """
        Clients changed at once to one binding: one gets it, the others
        keep what they had.
        """
        originals = [
            bound_client(f"client-{i}", {"issuer": CLUSTER, "subject": f"own-{i}"})
            for i in range(6)
        ]
        for client in originals:
            await self.store.add_client(client)
        results = await DeferredList(
            [self.store.replace_client(bound_client(c.client_id)) for c in originals],
            consumeErrors=True,
        )
        winners = [c.client_id for c, (ok, _) in zip(originals, results, strict=True) if ok]
        self.assertEqual(len(winners), 1)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), winners)
        for index, client in enumerate(originals):
            if client.client_id not in winners:
                self.assertEqual(await self.store.get_client(client.client_id), client)
                self.assertEqual(
                    await self.store.clients_bound_to(CLUSTER, f"own-{index}"), [client.client_id]
                )

    async def test_delete_unbinds(self) -> None:
        await self.store.add_client(bound_client("client"))
        self.assertIs(await self.store.delete_client("client", *MARK), True)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), [])
        await self.store.add_client(bound_client("next"))
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), ["next"])

    async def test_bindings_outlive_the_store(self) -> None:
        await self.store.add_client(bound_client("client"))
        store = await self.reopened()
        self.assertEqual(await store.clients_bound_to(CLUSTER, ACCOUNT), ["client"])
        with self.assertRaises(BindingTaken):
            await store.add_client(bound_client("other"))
        self.store = store

    # keys

    async def test_no_keys(self) -> None:
        self.assertEqual(await self.store.list_keys(), [])

    async def test_add_and_list_keys_oldest_first(self) -> None:
        newest = make_key("k-newest", created_at=300)
        oldest = make_key("k-oldest", created_at=100)
        middle_b = make_key("k-b", created_at=200)
        middle_a = make_key("k-a", created_at=200)
        for key in (newest, middle_b, oldest, middle_a):
            self.assertIsNone(await self.store.add_key(key))
        self.assertEqual(await self.store.list_keys(), [oldest, middle_a, middle_b, newest])

    async def test_key_round_trip(self) -> None:
        retired = make_key("retired", created_at=1, active_from=2, retired_at=3)
        active = make_key("active", created_at=4, alg="RS256")
        await self.store.add_key(retired)
        await self.store.add_key(active)
        self.assertEqual(await self.store.list_keys(), [retired, active])

    async def test_add_key_with_taken_kid_replaces_it(self) -> None:
        """
        As L{MemoryStore} does: the interface does not say, so every store
        behaves the same.
        """
        await self.store.add_key(make_key())
        again = make_key(alg="EdDSA", encrypted_private_key="other")
        await self.store.add_key(again)
        self.assertEqual(await self.store.list_keys(), [again])

    async def test_replace_key(self) -> None:
        await self.store.add_key(make_key())
        await self.store.add_key(make_key("other", created_at=5))
        retired = make_key(retired_at=1_800_000_000)
        self.assertIs(await self.store.replace_key(retired), True)
        self.assertEqual(await self.store.list_keys(), [make_key("other", created_at=5), retired])

    async def test_replace_missing_key_stores_nothing(self) -> None:
        self.assertIs(await self.store.replace_key(make_key()), False)
        self.assertEqual(await self.store.list_keys(), [])

    async def test_delete_key(self) -> None:
        await self.store.add_key(make_key())
        await self.store.add_key(make_key("other"))
        self.assertIs(await self.store.delete_key("key-1"), True)
        self.assertEqual(await self.store.list_keys(), [make_key("other")])
        self.assertIs(await self.store.delete_key("key-1"), False)

    async def test_delete_missing_key(self) -> None:
        self.assertIs(await self.store.delete_key("nothing"), False)

    async def test_keys_and_clients_apart(self) -> None:
        """
        A key and a client of the same name do not meet.
        """
        await self.store.add_client(make_client("same"))
        await self.store.add_key(make_key("same"))
        self.assertIs(await self.store.delete_key("same"), True)
        self.assertEqual(await self.store.get_client("same"), make_client("same"))

    # tokens (ITokenStore)

    def test_provides_token_interface(self) -> None:
        self.assertTrue(verifyObject(ITokenStore, self.store))

    @property
    def tokens(self) -> ITokenStore:
        return ITokenStore(self.store)

    async def test_get_missing_token(self) -> None:
        self.assertIsNone(await self.tokens.get_token("0" * 64))

    async def test_token_round_trip(self) -> None:
        token = make_token()
        self.assertIsNone(await self.tokens.add_token(token))
        self.assertEqual(await self.tokens.get_token(token.token_digest), token)

    async def test_token_bound_to_a_certificate(self) -> None:
        """
        RFC 8705 §3: an opaque token keeps its certificate binding.
        """
        token = make_token(x5t_s256="bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2")
        await self.tokens.add_token(token)
        self.assertEqual(await self.tokens.get_token(token.token_digest), token)

    async def test_token_made_by_exchange(self) -> None:
        """
        RFC 8693: a token made by a token exchange keeps its subject, its
        nested actors, a may_act, and the tokens it dies with; many at once,
        in one batch where the store groups them.
        """
        delegation = {
            "sub": "client-a",
            "act": {"sub": "client-c", "act": {"sub": "client-b"}},
            "may_act": {"sub": "client-d"},
            "exchanged_from": [
                {"client_id": "client-b", "jti": "jti-b"},
                {"client_id": "client-a", "jti": "jti-a"},
            ],
        }
        tokens = [
            make_token(f"{i:064x}", delegation=delegation if i % 2 else {}) for i in range(20)
        ]
        await gatherResults([self.tokens.add_token(token) for token in tokens])
        for token in tokens:
            stored = await self.tokens.get_token(token.token_digest)
            self.assertEqual(stored, token)
            assert stored is not None
            self.assertEqual(dict(stored.delegation), delegation if stored.delegation else {})

    async def test_token_without_scope_or_audience(self) -> None:
        token = make_token(scope=frozenset(), audience=(), claims={})
        await self.tokens.add_token(token)
        self.assertEqual(await self.tokens.get_token(token.token_digest), token)

    async def test_delete_token(self) -> None:
        token, other = make_token(), make_token("e" * 64)
        await self.tokens.add_token(token)
        await self.tokens.add_token(other)
        self.assertIs(await self.tokens.delete_token(token.token_digest), True)
        self.assertIsNone(await self.tokens.get_token(token.token_digest))
        self.assertIs(await self.tokens.delete_token(token.token_digest), False)
        self.assertEqual(await self.tokens.get_token(other.token_digest), other)

    async def test_delete_missing_token(self) -> None:
        self.assertIs(await self.tokens.delete_token("0" * 64), False)

    async def test_many_tokens_at_once(self) -> None:
        """
        Tokens added together (on SQL stores, one group commit for those
        that arrive during a commit, in batches of at most TOKEN_BATCH) are
        each stored, a digest given twice in one batch as its last.
        """
        tokens = [make_token(f"{i:064x}", jti=f"jti-{i}") for i in range(250)]
        twice = make_token(tokens[5].token_digest, jti="jti-again")
        await gatherResults([self.tokens.add_token(t) for t in [*tokens, twice]])
        for token in tokens[:5] + tokens[6:]:
            self.assertEqual(await self.tokens.get_token(token.token_digest), token)
        self.assertEqual(await self.tokens.get_token(twice.token_digest), twice)

    async def test_revoke(self) -> None:
        future = int(time.time()) + 3600
        self.assertIs(await self.tokens.is_revoked("jti-1"), False)
        self.assertIsNone(await self.tokens.revoke_jti("jti-1", future))
        self.assertIs(await self.tokens.is_revoked("jti-1"), True)
        self.assertIs(await self.tokens.is_revoked("jti-2"), False)
        # revoking twice is harmless
        await self.tokens.revoke_jti("jti-1", future)
        self.assertIs(await self.tokens.is_revoked("jti-1"), True)

    async def test_revocation_kept_until_the_later_expiry(self) -> None:
        now = int(time.time())
        await self.tokens.revoke_jti("longer-first", now + 3600)
        await self.tokens.revoke_jti("longer-first", now + 10)
        await self.tokens.revoke_jti("longer-last", now + 10)
        await self.tokens.revoke_jti("longer-last", now + 3600)
        await self.tokens.purge_expired(now + 100)
        self.assertIs(await self.tokens.is_revoked("longer-first"), True)
        self.assertIs(await self.tokens.is_revoked("longer-last"), True)

    async def test_purge_expired(self) -> None:
        """
        What expired before C{now} is forgotten, by purge_expired() or by
        the store itself; the rest stays.
        """
        now = int(time.time())
        expired, live = make_token("a" * 64, now - 10), make_token("b" * 64, now + 3600)
        await self.tokens.add_token(expired)
        await self.tokens.add_token(live)
        await self.tokens.revoke_jti("expired-jti", now - 10)
        await self.tokens.revoke_jti("live-jti", now + 3600)
        purged = await self.tokens.purge_expired(now)
        self.assertEqual(purged, 2 if self.purges else 0)
        self.assertIsNone(await self.tokens.get_token(expired.token_digest))
        self.assertEqual(await self.tokens.get_token(live.token_digest), live)
        self.assertIs(await self.tokens.is_revoked("expired-jti"), False)
        self.assertIs(await self.tokens.is_revoked("live-jti"), True)
        self.assertEqual(await self.tokens.purge_expired(now), 0)

    async def test_purge_in_batches(self) -> None:
        """
        A purge of more expired rows than a batch forgets every one of
        them, the live ones staying; a SQL store deletes them a batch a
        transaction (L{ccserver.stores.sql.purge_batch}), so that it never
        holds the write lock for the whole purge, and a write made between
        two batches is kept.
        """
        self.patch(sql, "PURGE_BATCH", 3)
        self.patch(sql, "SQLITE_PURGE_BATCH", 3)
        now = int(time.time())
        expired = [make_token(f"{n:064x}", now - 100 + n) for n in range(10)]
        live = make_token("f" * 64, now + 3600)
        for token in [*expired, live]:
            await self.tokens.add_token(token)
        for n in range(7):
            await self.tokens.revoke_jti(f"expired-{n}", now - 10)
        await self.tokens.revoke_jti("live-jti", now + 3600)
        transactions = 0
        if isinstance(self.tokens, SQLStore):
            in_turns = sql.in_turns
            written: list[TokenRecord] = []

            async def counted(batch: Any, size: int, clock: Any, share: float) -> int:
                async def one() -> int:
                    nonlocal transactions
                    transactions += 1
                    if transactions == 2 and not written:
                        # between the first and the second batch: a new token
                        written.append(make_token("e" * 64, now + 3600))
                        await self.tokens.add_token(written[0])
                    return int(await batch())

                return await in_turns(one, size, clock, share)

            self.patch(sql, "in_turns", counted)
        purged = await self.tokens.purge_expired(now)
        self.assertEqual(purged, 17 if self.purges else 0)
        for token in expired:
            self.assertIsNone(await self.tokens.get_token(token.token_digest))
        self.assertEqual(await self.tokens.get_token(live.token_digest), live)
        self.assertIs(await self.tokens.is_revoked("expired-0"), False)
        self.assertIs(await self.tokens.is_revoked("live-jti"), True)
        if isinstance(self.tokens, SQLStore):
            # 10 tokens and 7 jtis, a batch each full one and one that is
            # not (3 a batch: 4 and 3)
            self.assertEqual(transactions, 4 + 3)
            self.assertIsNotNone(await self.tokens.get_token("e" * 64))

    # one-time records (use_once): client assertions' and DPoP proofs' jtis

    async def test_use_once_first_use_then_replay(self) -> None:
        future = int(time.time()) + 300
        self.assertIs(await self.tokens.use_once("assertion:client-1:jti-1", future), True)
        self.assertIs(await self.tokens.use_once("assertion:client-1:jti-1", future), False)
        # the replay did not renew anything, and other keys are apart
        self.assertIs(await self.tokens.use_once("assertion:client-1:jti-2", future), True)
        self.assertIs(await self.tokens.use_once("dpop:jkt:jti-1", future), True)

    async def test_use_once_numeric_looking_key(self) -> None:
        future = int(time.time()) + 300
        self.assertIs(await self.tokens.use_once("12345", future), True)
        self.assertIs(await self.tokens.use_once("12345", future), False)

    async def test_use_once_concurrently(self) -> None:
        """
        Of many uses of one key at once, exactly one is the first.
        """
        future = int(time.time()) + 300
        results = await gatherResults(
            [self.tokens.use_once("assertion:c:same", future) for _ in range(10)]
        )
        self.assertEqual(sorted(results), [False] * 9 + [True])

    async def test_use_once_outlives_the_store(self) -> None:
        future = int(time.time()) + 300
        await self.tokens.use_once("assertion:c:kept", future)
        store = await self.reopened()
        self.assertIs(await store.use_once("assertion:c:kept", future), False)

    async def test_use_once_purged_after_expiry(self) -> None:
        now = int(time.time())
        await self.tokens.use_once("expired", now - 10)
        await self.tokens.use_once("live", now + 3600)
        purged = await self.tokens.purge_expired(now)
        self.assertEqual(purged, 1 if self.purges else 0)
        # forgotten once expired, so usable again; the live one is not
        self.assertIs(await self.tokens.use_once("expired", now + 3600), True)
        self.assertIs(await self.tokens.use_once("live", now + 3600), False)

    async def test_encrypted_secret_round_trip(self) -> None:
        client = make_client(encrypted_secret="gAAAAAB-encrypted-secret")
        await self.store.add_client(client)
        self.assertEqual(await self.store.get_client("client-1"), client)
        replaced = evolve(client, encrypted_secret=None)
        await self.store.replace_client(replaced)
        stored = await self.store.get_client("client-1")
        assert stored is not None
        self.assertIsNone(stored.encrypted_secret)
        await self.store.replace_client(client)
        stored = await self.store.get_client("client-1")
        assert stored is not None
        self.assertEqual(stored.encrypted_secret, "gAAAAAB-encrypted-secret")

    # deleting a client ends its tokens

    async def test_no_revocation_mark(self) -> None:
        self.assertIsNone(await self.tokens.client_revoked_before("client-1"))

    async def test_delete_client_deletes_its_tokens(self) -> None:
        """
        Deleting a client deletes its opaque tokens, and only its own.
        """
        now = int(time.time())
        await self.store.add_client(make_client())
        mine = [make_token(f"{i:064x}") for i in range(3)]
        other = make_token("f" * 64, client_id="client-2")
        for token in [*mine, other]:
            await self.tokens.add_token(token)
        self.assertIs(await self.store.delete_client("client-1", now, now + 3600), True)
        self.assertIsNone(await self.store.get_client("client-1"))
        for token in mine:
            self.assertIsNone(await self.tokens.get_token(token.token_digest))
            # gone, not only hidden by the mark
            self.assertIs(await self.tokens.delete_token(token.token_digest), False)
        self.assertEqual(await self.tokens.get_token(other.token_digest), other)
        self.assertIsNone(await self.tokens.client_revoked_before("client-2"))

    async def test_delete_client_marks_it_revoked(self) -> None:
        now = int(time.time())
        await self.store.add_client(make_client())
        await self.store.delete_client("client-1", now + 5, now + 3605)
        self.assertEqual(await self.tokens.client_revoked_before("client-1"), now + 5)

    async def test_delete_missing_client_marks_it_too(self) -> None:
        now = int(time.time())
        self.assertIs(await self.store.delete_client("nobody", now, now + 3600), False)
        self.assertEqual(await self.tokens.client_revoked_before("nobody"), now)

    async def test_revocation_mark_keeps_the_later_times(self) -> None:
        """
        A second deletion never shortens the mark, neither what it covers
        nor how long it is kept.
        """
        now = int(time.time())
        await self.store.delete_client("client-1", now + 10, now + 3600)
        await self.store.delete_client("client-1", now, now + 100)
        self.assertEqual(await self.tokens.client_revoked_before("client-1"), now + 10)
        await self.tokens.purge_expired(now + 200)
        self.assertEqual(await self.tokens.client_revoked_before("client-1"), now + 10)
        await self.store.delete_client("client-1", now + 20, now + 7200)
        await self.tokens.purge_expired(now + 3700)
        self.assertEqual(await self.tokens.client_revoked_before("client-1"), now + 20)

    async def test_mark_hides_a_token_stored_after_the_deletion(self) -> None:
        """
        An instance that still had the client in its cache may store a token
        after the deletion: the mark hides it if it was issued at or before
        the mark's time, and no later one (a client id used again).
        """
        now = int(time.time())
        await self.store.delete_client("client-1", now, now + 3600)
        covered = make_token("a" * 64, issued_at=now)
        later = make_token("b" * 64, issued_at=now + 1)
        other = make_token("c" * 64, issued_at=now - 10, client_id="client-2")
        for token in (covered, later, other):
            await self.tokens.add_token(token)
        self.assertIsNone(await self.tokens.get_token(covered.token_digest))
        self.assertEqual(await self.tokens.get_token(later.token_digest), later)
        self.assertEqual(await self.tokens.get_token(other.token_digest), other)

    async def test_client_tokens_after_some_expired(self) -> None:
        """
        Tokens of a client that expired (and, on Redis, were trimmed from
        its index) do not stop the deletion of its live ones.
        """
        now = int(time.time())
        await self.tokens.add_token(make_token("a" * 64, now - 10, issued_at=now - 100))
        live = make_token("b" * 64, now + 3600)
        await self.tokens.add_token(live)
        await self.tokens.delete_token("b" * 64)
        again = make_token("c" * 64, now + 60)
        await self.tokens.add_token(again)
        await self.store.delete_client("client-1", now, now + 3600)
        self.assertIs(await self.tokens.delete_token(again.token_digest), False)

    async def test_purge_expired_marks(self) -> None:
        """
        A mark is forgotten once its time to be kept is over, by
        purge_expired() or by the store itself; a live one stays.
        """
        now = int(time.time())
        await self.store.delete_client("expired", now - 100, now - 10)
        await self.store.delete_client("live", now - 100, now + 3600)
        purged = await self.tokens.purge_expired(now)
        self.assertEqual(purged, 1 if self.purges else 0)
        self.assertIsNone(await self.tokens.client_revoked_before("expired"))
        self.assertEqual(await self.tokens.client_revoked_before("live"), now - 100)
        self.assertEqual(await self.tokens.purge_expired(now), 0)

    async def test_concurrent_deletes_and_tokens(self) -> None:
        """
        Tokens stored while the client is deleted are either deleted with
        it or hidden by the mark: none is left to be found.
        """
        now = int(time.time())
        await self.store.add_client(make_client())
        tokens = [make_token(f"{i:064x}", issued_at=now) for i in range(20)]
        await gatherResults(
            [
                *(self.tokens.add_token(t) for t in tokens[:10]),
                self.store.delete_client("client-1", now, now + 3600),
                *(self.tokens.add_token(t) for t in tokens[10:]),
            ]
        )
        for token in tokens:
            self.assertIsNone(await self.tokens.get_token(token.token_digest))

    # lookups in bursts: introspection's reads, which the SQL and Redis
    # stores group into one round trip a batch (GroupLookup)

    async def test_burst_of_token_lookups(self) -> None:
        """
        300 lookups at once, of stored tokens, unknown digests, the same
        digests several times, and tokens of a deleted client (stored
        after its deletion by an instance that still had it cached: some
        covered by its revocation mark, some issued later), each answered
        with its own token or None.
        """
        now = int(time.time())
        await self.store.delete_client("gone", now, now + 3600)
        live = [make_token(f"{i:064x}", jti=f"jti-{i}") for i in range(100)]
        covered = [
            make_token(f"{i + 1000:064x}", client_id="gone", issued_at=now - 10) for i in range(30)
        ]
        later = [make_token(f"{i + 2000:064x}", client_id="gone", issued_at=now + 1) for i in range(10)]
        await gatherResults([self.tokens.add_token(t) for t in [*live, *covered, *later]])
        expected: list[tuple[str, TokenRecord | None]] = [
            *((t.token_digest, t) for t in live),
            *((t.token_digest, t) for t in live[::2]),
            *((t.token_digest, t) for t in live[:30]),
            *((f"{i + 5000:064x}", None) for i in range(50)),
            *((t.token_digest, None) for t in covered + covered),
            *((t.token_digest, t) for t in later),
        ]
        self.assertEqual(len(expected), 300)
        random.Random(7).shuffle(expected)
        answers = await gatherResults([self.tokens.get_token(digest) for digest, _ in expected])
        self.assertEqual(answers, [token for _, token in expected])

    async def test_burst_of_revocation_lookups(self) -> None:
        """
        The JWT path's lookups at once, deny-list entries and clients'
        revocation marks mixed, known and unknown, some asked several
        times: each answered as one alone is.
        """
        now = int(time.time())
        for n in range(0, 60, 3):
            await self.tokens.revoke_jti(f"jti-{n}", now + 3600)
        for n in range(0, 60, 4):
            await self.store.delete_client(f"client-{n}", now - n, now + 3600)
        asked: list[tuple[Deferred[Any], object]] = []
        for n in [*range(60), *range(0, 60, 2)]:
            asked.append((self.tokens.is_revoked(f"jti-{n}"), n % 3 == 0))
            asked.append(
                (self.tokens.client_revoked_before(f"client-{n}"), now - n if n % 4 == 0 else None)
            )
        answers = await gatherResults([d for d, _ in asked])
        self.assertEqual(answers, [want for _, want in asked])

    async def lookups_across(
        self, lookup: Callable[[], Deferred[T]], write: Callable[[], Deferred[Any]]
    ) -> tuple[int, list[T]]:
        """
        Keep lookups going while C{write} runs, four at a time (each one
        answered starts the next), and start three more the moment it has
        completed: how many of the running ones were still unanswered then
        (so that a batch read before the write was in flight on a store
        that groups them), and the three's answers.
        """
        written = False
        running: list[Deferred[T]] = []

        def keep_going(_: object = None) -> None:
            if written:
                return
            d = lookup()
            running.append(d)
            if not d.called:  # a store in memory answers at once
                d.addCallback(keep_going)

        for _ in range(4):
            keep_going()

        def completed(_: object) -> tuple[int, list[Deferred[T]]]:
            nonlocal written
            written = True
            return sum(not d.called for d in running), [lookup() for _ in range(3)]

        unanswered, after = await write().addCallback(completed)
        answers = await gatherResults(after)
        await gatherResults(running)
        if self.durable:
            self.assertEqual(unanswered, 4)
        return unanswered, answers

    async def test_deleted_token_not_found_by_a_later_lookup(self) -> None:
        """
        A token deleted (by another instance) is not found by a lookup
        started after the deletion completed, though batches that read it
        before were in flight then.
        """
        token = make_token()
        await self.tokens.add_token(token)
        other = ITokenStore(await self.second_store())
        _, answers = await self.lookups_across(
            lambda: self.tokens.get_token(token.token_digest),
            lambda: other.delete_token(token.token_digest),
        )
        self.assertEqual(answers, [None] * 3)

    async def test_deleted_clients_token_not_found_by_a_later_lookup(self) -> None:
        """
        The same for a token whose client another instance deletes: its
        revocation mark and deleted tokens are seen by every lookup
        started after the deletion completed.
        """
        now = int(time.time())
        token = make_token(issued_at=now)
        await self.tokens.add_token(token)
        other = await self.second_store()
        _, answers = await self.lookups_across(
            lambda: self.tokens.get_token(token.token_digest),
            lambda: other.delete_client("client-1", now, now + 3600),
        )
        self.assertEqual(answers, [None] * 3)

    async def test_revocations_seen_by_later_lookups(self) -> None:
        """
        A jti revoked and a client deleted by another instance are seen by
        the JWT path's lookups started after the write completed.
        """
        now = int(time.time())
        other = await self.second_store()
        _, revoked = await self.lookups_across(
            lambda: self.tokens.is_revoked("jti-1"),
            lambda: ITokenStore(other).revoke_jti("jti-1", now + 3600),
        )
        self.assertEqual(revoked, [True] * 3)
        _, marks = await self.lookups_across(
            lambda: self.tokens.client_revoked_before("client-1"),
            lambda: other.delete_client("client-1", now, now + 3600),
        )
        self.assertEqual(marks, [now] * 3)

    async def test_tokens_apart_from_clients(self) -> None:
        await self.store.add_client(make_client("x" * 64))
        await self.tokens.add_token(make_token("x" * 64))
        await self.tokens.delete_token("x" * 64)
        self.assertEqual(await self.store.get_client("x" * 64), make_client("x" * 64))

    # lifetime

    # the brute-force limits' slots (IAuthAttemptStore)

    def test_provides_auth_attempt_interface(self) -> None:
        self.assertTrue(verifyObject(IAuthAttemptStore, self.store))

    async def test_reserve_within_budget(self) -> None:
        """
        Each reservation takes one slot, in a window the first one opened
        and the others keep; past the budget, a refusal that changes nothing.
        """
        keys = attempt_keys("a", budget=3)
        now = time.time()
        granted = [await self.store.reserve_attempt(keys, now + n, 60) for n in range(3)]
        self.assertEqual([r.count for r in granted], [1, 2, 3])
        self.assertEqual({r.ends for r in granted}, {granted[0].ends})
        self.assertLess(abs(granted[0].ends - (now + 60)), 0.01)
        self.assertTrue(all(r.granted and r.cap_ends is None for r in granted))
        refused = await self.store.reserve_attempt(keys, now + 3, 60)
        self.assertEqual(refused, Reservation(False, 3, granted[0].ends))
        self.assertEqual(await self.store.reserve_attempt(keys, now + 4, 60), refused)

    async def test_reservation_window_ends(self) -> None:
        """
        A window ends C{window} seconds after it opened (by the callers'
        clock, given as C{now}); the next reservation opens a new one.
        """
        keys = attempt_keys("w", budget=1)
        now = time.time()
        first = await self.store.reserve_attempt(keys, now, 60)
        self.assertFalse((await self.store.reserve_attempt(keys, now + 59.9, 60)).granted)
        second = await self.store.reserve_attempt(keys, now + 60, 60)
        self.assertTrue(second.granted)
        self.assertEqual(second.count, 1)
        self.assertLess(abs(second.ends - (first.ends + 60)), 0.01)

    async def test_counters_apart(self) -> None:
        now = time.time()
        for _ in range(2):
            await self.store.reserve_attempt(attempt_keys("a"), now, 60)
        self.assertEqual((await self.store.reserve_attempt(attempt_keys("b"), now, 60)).count, 1)
        self.assertEqual((await self.store.reserve_attempt(attempt_keys("a"), now, 60)).count, 3)

    async def test_burst_of_reservations(self) -> None:
        """
        500 reservations at once, through two store objects on the same
        database (two processes): exactly the budget is granted, with the
        counts 1 to 10 each once.
        """
        other = await self.second_store()
        keys = attempt_keys("burst", budget=10)
        now = time.time()
        results = await gatherResults(
            [(self.store, other)[n % 2].reserve_attempt(keys, now, 60) for n in range(500)]
        )
        granted = [r for r in results if r.granted]
        self.assertEqual(sorted(r.count for r in granted), list(range(1, 11)))
        self.assertEqual(len(results) - len(granted), 490)

    async def test_release(self) -> None:
        """
        A slot given back is free again; one given back to a window that
        has ended meanwhile, or more than were taken, changes nothing.
        """
        keys = attempt_keys("r", budget=2)
        now = time.time()
        first = await self.store.reserve_attempt(keys, now, 60)
        await self.store.reserve_attempt(keys, now, 60)
        await self.store.release_attempt(AttemptRelease(((keys.counter, first.ends),)), now)
        self.assertEqual((await self.store.reserve_attempt(keys, now, 60)).count, 2)
        # the window the slot came from is not this one: nothing given back
        await self.store.release_attempt(AttemptRelease(((keys.counter, first.ends - 1),)), now)
        self.assertFalse((await self.store.reserve_attempt(keys, now, 60)).granted)
        later = await self.store.reserve_attempt(keys, now + 60, 60)
        self.assertEqual(later.count, 1)
        await self.store.release_attempt(AttemptRelease(((keys.counter, first.ends),)), now + 60)
        self.assertEqual((await self.store.reserve_attempt(keys, now + 60, 60)).count, 2)
        for _ in range(3):
            await self.store.release_attempt(AttemptRelease(((keys.counter, later.ends),)), now)
        self.assertEqual((await self.store.reserve_attempt(keys, now + 60, 60)).count, 1)

    async def test_cap(self) -> None:
        """
        Sources not known share the cap; past it they are refused (capped,
        with the cap's window), even with room in their own counter.  A
        known source is exempt, and takes no slot of it.
        """
        now = time.time()
        for source in ("s1", "s2"):
            reserved = await self.store.reserve_attempt(attempt_keys(source, cap=2), now, 60)
            self.assertTrue(reserved.granted)
            assert reserved.cap_ends is not None
            self.assertLess(abs(reserved.cap_ends - (now + 60)), 0.01)
        refused = await self.store.reserve_attempt(attempt_keys("s3", cap=2), now + 1, 60)
        self.assertFalse(refused.granted)
        self.assertTrue(refused.capped)
        self.assertEqual(refused.count, 0)
        self.assertEqual(refused.cap_ends, reserved.cap_ends)
        known = attempt_keys("s3", cap=2)
        await self.store.release_attempt(AttemptRelease(known=known.known, known_for=3600), now)
        exempt = await self.store.reserve_attempt(known, now + 1, 60)
        self.assertEqual((exempt.granted, exempt.cap_ends), (True, None))
        # a cap slot given back lets one more stranger in
        assert reserved.cap_ends is not None
        await self.store.release_attempt(AttemptRelease((("cap", reserved.cap_ends),)), now)
        self.assertTrue((await self.store.reserve_attempt(attempt_keys("s4", cap=2), now, 60)).granted)

    async def test_known_source_expires(self) -> None:
        now = time.time()
        keys = attempt_keys("k", cap=1)
        await self.store.reserve_attempt(attempt_keys("other", cap=1), now, 60)
        await self.store.release_attempt(AttemptRelease(known=keys.known, known_for=0.5), now)
        self.assertTrue((await self.store.reserve_attempt(keys, now, 60)).granted)
        # real time: Redis keeps a known source as its own expiry.  Each
        # try while it is known takes a slot of the budget (10): a handful
        # at most in its half second.
        await eventually(
            lambda: self.store.reserve_attempt(keys, time.time(), 60).addCallback(
                lambda reserved: reserved.capped
            ),
            reactor,
            10,
            0.1,
            what="the known source expired",
        )

    async def test_known_source_keeps_the_later_expiry(self) -> None:
        now = time.time()
        keys = attempt_keys("k", cap=1)
        await self.store.reserve_attempt(attempt_keys("other", cap=1), now, 60)
        await self.store.release_attempt(AttemptRelease(known=keys.known, known_for=3600), now)
        await self.store.release_attempt(AttemptRelease(known=keys.known, known_for=0.2), now)
        # a real wait, not a poll: what is shown is that something stays,
        # on Redis's own clock (its expiry), which no Clock of ours drives
        await deferLater(reactor, 0.4, lambda: None)
        self.assertTrue((await self.store.reserve_attempt(keys, time.time(), 60)).granted)

    async def test_slots_and_known_sources_shared_and_durable(self) -> None:
        now = time.time()
        keys = attempt_keys("d", budget=2, cap=5)
        await self.store.reserve_attempt(keys, now, 60)
        await self.store.release_attempt(AttemptRelease(known="known-elsewhere", known_for=3600), now)
        store = await self.reopened()
        self.assertEqual((await store.reserve_attempt(keys, now, 60)).count, 2)
        exempt = evolve(attempt_keys("e", cap=1), known="known-elsewhere")
        self.assertTrue((await store.reserve_attempt(exempt, now, 60)).granted)

    async def test_purge_expired_attempts(self) -> None:
        now = int(time.time())
        await self.store.reserve_attempt(attempt_keys("e"), now - 100, 10)
        await self.store.reserve_attempt(attempt_keys("f"), now, 3600)
        await self.store.release_attempt(AttemptRelease(known="gone", known_for=10), now - 100)
        await self.store.release_attempt(AttemptRelease(known="kept", known_for=3600), now)
        purged = await self.tokens.purge_expired(now)
        self.assertEqual(purged, 2 if self.purges else 0)
        self.assertEqual((await self.store.reserve_attempt(attempt_keys("f"), now, 3600)).count, 2)

    async def test_burst_of_checks_through_the_limits(self) -> None:
        """
        The brute-force limits over this store, in two processes (two
        store objects on one database): 499 wrong secrets and the right
        one last, all at once, from one address.  The credential checks
        made (counted by a fake authenticator that answers only after a
        store round trip, as a real one may) are exactly the budget, and
        the right secret, beyond it, is refused unchecked.
        """
        other = await self.second_store()
        checks = CountingChecks(self.store)
        limiters = [AuthLimits(store, time.time, budget=10) for store in (self.store, other)]
        outcomes = await gatherResults(
            [
                checks.outcome(limiters[n % 2].client("client-1", "203.0.113.7", checks.check(n == 499)))
                for n in range(500)
            ]
        )
        self.assertEqual(checks.count, 10)
        self.assertEqual(Counter(outcomes), {401: 10, 429: 490})

    async def test_cap_keeps_known_sources_through_the_limits(self) -> None:
        """
        The cap across sources, in two processes: a source that
        authenticated through one is known to both; once strangers have
        used the cap up, they are refused unchecked on both, while the
        known source goes on authenticating on both.
        """
        other = await self.second_store()
        checks = CountingChecks(self.store)
        limiters = [
            AuthLimits(store, time.time, budget=10, cap=20) for store in (self.store, other)
        ]

        def attempt(n: int, source: str, right: bool) -> Deferred[int]:
            return checks.outcome(limiters[n % 2].client("client-1", source, checks.check(right)))

        self.assertEqual(await attempt(0, "192.0.2.1", True), 200)
        strangers = await gatherResults(
            [attempt(n, f"198.51.100.{n}", False) for n in range(100)]
        )
        self.assertEqual(Counter(strangers), {401: 20, 429: 80})
        self.assertEqual(checks.count, 21)
        for n in range(4):
            self.assertEqual(await attempt(n, "192.0.2.1", True), 200)
        self.assertEqual(await attempt(1, "192.0.2.1", False), 401)
        self.assertEqual(await attempt(1, "198.51.100.200", True), 429)

    # token buckets (IRateLimitStore)

    def test_provides_rate_limit_interface(self) -> None:
        self.assertTrue(verifyObject(IRateLimitStore, self.store))

    async def test_bucket_starts_full(self) -> None:
        """
        A new bucket holds its burst; tokens are taken as asked, then as
        many as are left, with the time until one more.
        """
        now = time.time()
        self.assertEqual(await self.store.take_tokens("b", 2.0, 5, 3, now), TokenGrant(3))
        short = await self.store.take_tokens("b", 2.0, 5, 4, now)
        self.assertEqual(short.taken, 2)
        self.assertAlmostEqual(short.retry_after, 0.5, places=2)
        empty = await self.store.take_tokens("b", 2.0, 5, 1, now)
        self.assertEqual(empty.taken, 0)
        self.assertAlmostEqual(empty.retry_after, 0.5, places=2)

    async def test_bucket_fills(self) -> None:
        """
        It fills at its rate, never beyond its burst; a caller whose clock
        is behind the last count fills nothing.
        """
        now = time.time()
        await self.store.take_tokens("b", 4.0, 8, 8, now)
        self.assertEqual((await self.store.take_tokens("b", 4.0, 8, 8, now + 0.5)).taken, 2)
        behind = await self.store.take_tokens("b", 4.0, 8, 1, now)
        self.assertEqual(behind.taken, 0)
        self.assertAlmostEqual(behind.retry_after, 0.25, places=2)
        self.assertEqual((await self.store.take_tokens("b", 4.0, 8, 100, now + 3600)).taken, 8)
        # a fraction of a token carries over
        await self.store.take_tokens("c", 4.0, 8, 8, now)
        self.assertEqual((await self.store.take_tokens("c", 4.0, 8, 8, now + 0.125)).taken, 0)
        self.assertEqual((await self.store.take_tokens("c", 4.0, 8, 8, now + 0.25)).taken, 1)

    async def test_bucket_limit_changed(self) -> None:
        """
        The rate and burst come with each call: a lower burst holds fewer
        at once from then on.
        """
        now = time.time()
        self.assertEqual((await self.store.take_tokens("b", 1.0, 10, 1, now)).taken, 1)
        self.assertEqual((await self.store.take_tokens("b", 1.0, 3, 10, now)).taken, 3)

    async def test_buckets_apart(self) -> None:
        now = time.time()
        await self.store.take_tokens("a", 1.0, 2, 2, now)
        self.assertEqual((await self.store.take_tokens("b", 1.0, 2, 2, now)).taken, 2)

    async def test_burst_of_takers(self) -> None:
        """
        300 requests for a token at once, through two store objects on one
        database (two processes): exactly the burst is taken, and the rest
        each learn when to come back.
        """
        other = await self.second_store()
        now = time.time()
        grants = await gatherResults(
            [
                (self.store, other)[n % 2].take_tokens("burst", 0.5, 20, 1, now)
                for n in range(300)
            ]
        )
        self.assertEqual(sum(grant.taken for grant in grants), 20)
        self.assertTrue(all(g.retry_after > 0 for g in grants if not g.taken))

    async def test_bucket_shared_and_durable(self) -> None:
        now = time.time()
        await self.store.take_tokens("d", 1.0, 5, 4, now)
        store = await self.reopened()
        self.assertEqual((await store.take_tokens("d", 1.0, 5, 5, now)).taken, 1)

    async def test_purge_full_buckets(self) -> None:
        """
        A bucket left alone until it is full again may be forgotten
        (which leaves it full, as it was).
        """
        now = int(time.time())
        await self.store.take_tokens("full-soon", 1.0, 2, 2, now - 10)
        await self.store.take_tokens("empty", 0.001, 2, 2, now)
        purged = await self.tokens.purge_expired(now)
        self.assertEqual(purged, 1 if self.purges else 0)
        self.assertEqual((await self.store.take_tokens("full-soon", 1.0, 2, 5, now)).taken, 2)
        self.assertEqual((await self.store.take_tokens("empty", 0.001, 2, 5, now)).taken, 0)

    async def test_burst_through_the_rate_limit(self) -> None:
        """
        A client's token rate limit over this store, in two processes (two
        limits over two store objects on one database): 300 requests at
        once, half through each; exactly the burst is let through (the
        bucket fills by a hundredth of a token a second meanwhile), the rest
        refused with 429.
        """
        other = await self.second_store()
        client = evolve(make_client(), token_rate_limit=TokenRateLimit.of(0.01, 25))
        limits = [IssuanceLimit(store, None, time.time) for store in (self.store, other)]

        async def request(n: int) -> int:
            try:
                waiting = limits[n % 2].take(client)
                if waiting is not None:
                    await waiting
            except OAuthError as error:
                return error.status
            return 200

        codes = await gatherResults([ensureDeferred(request(n)) for n in range(300)])
        self.assertEqual(Counter(codes), {200: 25, 429: 275})

    # leases (ILeaseStore)

    def test_provides_lease_interface(self) -> None:
        self.assertTrue(verifyObject(ILeaseStore, self.store))

    async def test_lease_held_by_one(self) -> None:
        """
        A lease is taken by one holder; another cannot take it while it
        lasts; its holder may take it again (extending it); once given up,
        another takes it.  Giving up a lease one does not hold changes
        nothing.
        """
        now = time.time()
        self.assertTrue(await self.store.take_lease("work", "a", now, 60))
        self.assertFalse(await self.store.take_lease("work", "b", now + 1, 60))
        self.assertTrue(await self.store.take_lease("work", "a", now + 1, 60))
        self.assertTrue(await self.store.take_lease("other work", "b", now, 60))
        await self.store.end_lease("work", "b")
        self.assertFalse(await self.store.take_lease("work", "b", now + 2, 60))
        await self.store.end_lease("work", "a")
        self.assertTrue(await self.store.take_lease("work", "b", now + 2, 60))
        await self.store.end_lease("never taken", "b")

    async def test_lease_ends_with_its_time(self) -> None:
        """
        A lease whose holder never gave it up (a process that died) is free
        once its time has passed.  Real time: Redis counts it itself.
        """
        self.assertTrue(await self.store.take_lease("work", "dead", time.time(), 0.3))
        self.assertFalse(await self.store.take_lease("work", "alive", time.time(), 60))
        await deferLater(reactor, 0.5, lambda: None)
        self.assertTrue(await self.store.take_lease("work", "alive", time.time(), 60))

    async def test_burst_of_lease_takers(self) -> None:
        """
        100 holders ask for one lease at once, through two store objects on
        one database (two processes): exactly one gets it.
        """
        other = await self.second_store()
        now = time.time()
        taken = await gatherResults(
            [
                (self.store, other)[n % 2].take_lease("work", f"holder-{n}", now, 60)
                for n in range(100)
            ]
        )
        self.assertEqual(taken.count(True), 1)

    async def test_lease_shared_and_durable(self) -> None:
        await self.store.take_lease("work", "a", time.time(), 60)
        store = await self.reopened()
        self.assertFalse(await store.take_lease("work", "b", time.time(), 60))

    async def test_scheduled_rotation_once_across_processes(self) -> None:
        """
        Two processes (two keyrings over two store objects on one
        database) whose schedule is due at the same moment both try to
        rotate at once: exactly one new key is made, and the old one is
        retired once.
        """
        events: list[tuple[str, str]] = []
        clock = Clock()
        clock.advance(time.time())
        encryptor = KeyEncryptor.ephemeral()
        other = await self.second_store()
        keyrings = [
            Keyring(
                store, encryptor, "ES256", 2 * 86400, clock.seconds,
                lambda event, key: events.append((event, key.kid)),
            )
            for store in (self.store, other)
        ]
        first = await keyrings[0].add_key("ES256", active_from=int(clock.seconds()))
        for keyring in keyrings:
            await keyring.refresh()
        clock.advance(86400)
        made = await gatherResults(
            [
                ensureDeferred(keyring.rotate_on_schedule(86400, 60, store, f"process-{n}"))
                for n, (keyring, store) in enumerate(zip(keyrings, (self.store, other), strict=True))
            ]
        )
        new = [key for key in made if key is not None]
        self.assertEqual(len(new), 1, made)
        stored = await self.store.list_keys()
        self.assertEqual([key.kid for key in stored], [first.kid, new[0].kid])
        self.assertEqual(stored[0].retired_at, new[0].active_from)
        self.assertEqual(
            sorted(events), sorted([("created", first.kid), ("created", new[0].kid), ("retired", first.kid)])
        )
        # and neither rotates again within the period
        await keyrings[1].refresh()
        clock.advance(86399)
        for n, (keyring, store) in enumerate(zip(keyrings, (self.store, other), strict=True)):
            self.assertIsNone(await keyring.rotate_on_schedule(86400, 60, store, f"process-{n}"))
        self.assertEqual(len(await self.store.list_keys()), 2)

    # initial access tokens

    async def test_initial_access_token_round_trip(self) -> None:
        """
        Stored and read back whole: limits absent (None), empty, or lists;
        a note in any script.
        """
        token = make_initial_access_token()
        other = make_initial_access_token(
            "iat-2", created_at=token.created_at + 1, scope_limit=None, note=""
        )
        await self.store.add_initial_access_token(other)
        await self.store.add_initial_access_token(token)
        self.assertEqual(await self.store.get_initial_access_token(token.token_digest), token)
        self.assertIsNone(await self.store.get_initial_access_token("0" * 64))
        self.assertEqual(await self.store.list_initial_access_tokens(), [token, other])

    async def test_register_with_initial_access_token(self) -> None:
        """
        A registration counts one use and stores the client, in one step,
        and answers the token as it now is.
        """
        token = make_initial_access_token(uses=2)
        await self.store.add_initial_access_token(token)
        now = int(time.time())
        used = await self.store.register_with_initial_access_token(
            token.token_digest, make_client("c1"), now
        )
        self.assertEqual(used, evolve(token, uses=1))
        self.assertEqual(await self.store.get_client("c1"), make_client("c1"))
        second = await self.store.register_with_initial_access_token(
            token.token_digest, make_client("c2"), now
        )
        assert second is not None
        self.assertEqual(second.uses, 2)
        self.assertIsNone(
            await self.store.register_with_initial_access_token(
                token.token_digest, make_client("c3"), now
            )
        )
        self.assertIsNone(await self.store.get_client("c3"))
        stored = await self.store.get_initial_access_token(token.token_digest)
        assert stored is not None
        self.assertEqual(stored.uses, 2)

    async def test_initial_access_token_that_may_not_register(self) -> None:
        """
        An unknown, expired or revoked token registers nothing; a client
        id that is taken fails with ClientExists and counts no use.
        """
        now = int(time.time())
        expiring = make_initial_access_token("iat-e", expires_at=now + 5)
        revoked = make_initial_access_token("iat-r")
        for token in (expiring, revoked):
            await self.store.add_initial_access_token(token)
        self.assertTrue(await self.store.revoke_initial_access_token("iat-r", now))
        attempts = [
            ("0" * 64, now),
            (expiring.token_digest, now + 5),
            (revoked.token_digest, now),
        ]
        for digest, when in attempts:
            self.assertIsNone(
                await self.store.register_with_initial_access_token(digest, make_client(), when)
            )
        self.assertIsNone(await self.store.get_client("client-1"))
        await self.store.add_client(make_client())
        with self.assertRaises(ClientExists):
            await self.store.register_with_initial_access_token(
                expiring.token_digest, make_client(client_secret_digest="c" * 64), now
            )
        self.assertEqual(await self.store.get_client("client-1"), make_client())
        stored = await self.store.get_initial_access_token(expiring.token_digest)
        assert stored is not None
        self.assertEqual(stored.uses, 0)

    async def test_register_bound_client_with_initial_access_token(self) -> None:
        """
        A client with bindings registered with an initial access token is
        indexed as C{add_client} indexes it; a binding another client has
        refuses the registration whole: no client, no use counted.
        """
        token = make_initial_access_token(uses=5)
        await self.store.add_initial_access_token(token)
        now = int(time.time())
        bound = bound_client("bound")
        await self.store.register_with_initial_access_token(token.token_digest, bound, now)
        self.assertEqual(await self.store.get_client("bound"), bound)
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), ["bound"])
        with self.assertRaises(BindingTaken) as caught:
            await self.store.register_with_initial_access_token(
                token.token_digest, bound_client("second"), now
            )
        self.assertEqual(caught.exception.identity, bound.federated_identities[0])
        self.assertIsNone(await self.store.get_client("second"))
        self.assertEqual(await self.store.clients_bound_to(CLUSTER, ACCOUNT), ["bound"])
        stored = await self.store.get_initial_access_token(token.token_digest)
        assert stored is not None
        self.assertEqual(stored.uses, 1)

    async def test_revoke_initial_access_token(self) -> None:
        now = int(time.time())
        token = make_initial_access_token()
        await self.store.add_initial_access_token(token)
        self.assertTrue(await self.store.revoke_initial_access_token("iat-1", now))
        self.assertTrue(await self.store.revoke_initial_access_token("iat-1", now + 10))
        self.assertFalse(await self.store.revoke_initial_access_token("iat-0", now))
        self.assertFalse(await self.store.revoke_initial_access_token("iat-\x00", now))
        [listed] = await self.store.list_initial_access_tokens()
        self.assertEqual(listed, evolve(token, revoked_at=now))
        self.assertEqual(await self.store.get_initial_access_token(token.token_digest), listed)

    async def test_burst_of_registrations_with_initial_access_token(self) -> None:
        """
        50 registrations at once with a token of 10 uses, through two
        store objects on the same database (two processes): exactly 10
        clients are stored, each use counted once.
        """
        other = await self.second_store()
        token = make_initial_access_token(uses=10)
        await self.store.add_initial_access_token(token)
        now = int(time.time())
        results = await gatherResults(
            [
                (self.store, other)[n % 2].register_with_initial_access_token(
                    token.token_digest, make_client(f"c{n}"), now
                )
                for n in range(50)
            ]
        )
        used = [(n, r) for n, r in enumerate(results) if r is not None]
        self.assertEqual(sorted(r.uses for _, r in used), list(range(1, 11)))
        stored = [await self.store.get_client(f"c{n}") for n in range(50)]
        self.assertEqual(
            [n for n, client in enumerate(stored) if client is not None], [n for n, _ in used]
        )
        final = await self.store.get_initial_access_token(token.token_digest)
        assert final is not None
        self.assertEqual(final.uses, 10)

    async def test_initial_access_tokens_outlive_the_store(self) -> None:
        token = make_initial_access_token()
        await self.store.add_initial_access_token(token)
        await self.store.register_with_initial_access_token(
            token.token_digest, make_client(), int(time.time())
        )
        store = await self.reopened()
        self.assertEqual(await store.list_initial_access_tokens(), [evolve(token, uses=1)])

    async def test_purge_expired_initial_access_tokens(self) -> None:
        now = int(time.time())
        gone = make_initial_access_token("iat-gone", expires_at=now - 10)
        kept = make_initial_access_token("iat-kept")
        for token in (gone, kept):
            await self.store.add_initial_access_token(token)
        purged = await self.tokens.purge_expired(now)
        self.assertEqual(purged, 1 if self.purges else 0)
        self.assertIsNone(await self.store.get_initial_access_token(gone.token_digest))
        self.assertEqual(await self.store.list_initial_access_tokens(), [kept])

    async def test_data_outlives_the_store(self) -> None:
        """
        A new store opened on an existing database (open() again, as at the
        next start of the server) finds what the last one stored, and the
        second open() does not touch it.
        """
        client, key, token = make_client(), make_key(), make_token()
        await self.store.add_client(client)
        await self.store.add_key(key)
        await self.tokens.add_token(token)
        await self.tokens.revoke_jti("jti-1", token.expires_at)
        await self.store.delete_client("gone", *MARK)
        for _ in range(2):
            store = await self.reopened()
            self.assertEqual(await store.get_client("client-1"), client)
            self.assertEqual(await store.list_keys(), [key])
            self.assertEqual(await ITokenStore(store).get_token(token.token_digest), token)
            self.assertIs(await ITokenStore(store).is_revoked("jti-1"), True)
            self.assertEqual(await ITokenStore(store).client_revoked_before("gone"), MARK[0])
            self.store = store

    async def test_close(self) -> None:
        """
        close() fires with None, and the database can be opened again.
        """
        await self.store.add_client(make_client())
        self.assertIsNone(await self.store.close())
        if self.durable:
            # requests still in flight at shutdown get an answer
            with self.assertRaises(StoreUnavailable):
                await self.store.get_client("client-1")
            store = await self.open_store()
            self.assertEqual(await store.get_client("client-1"), make_client())


class GroupedLookupsMixin(_TestCase):
    """
    A store that groups lookups (SQL, Redis): lookups asked for at once
    make far fewer round trips than lookups, counted by each kind's
    L{ccserver.stores.grouplookup.GroupLookup} (the store's public
    C{token_lookups}, C{revoked_jti_lookups}, C{revoked_client_lookups}).
    """

    store: IStore

    async def test_burst_of_lookups_few_round_trips(self) -> None:
        store: Any = self.store
        tokens = [make_token(f"{i:064x}") for i in range(50)]
        await gatherResults([ITokenStore(store).add_token(t) for t in tokens])
        groups = (store.token_lookups, store.revoked_jti_lookups, store.revoked_client_lookups)
        before = [(g.lookups, g.batches) for g in groups]
        found = await gatherResults(
            [store.get_token(tokens[n % 60].token_digest if n % 60 < 50 else f"{n:064x}") for n in range(300)]
        )
        await gatherResults(
            [
                *(store.is_revoked(f"jti-{n}") for n in range(300)),
                *(store.client_revoked_before(f"client-{n % 7}") for n in range(300)),
            ]
        )
        self.assertEqual(sum(r is not None for r in found), 250)
        for group, (lookups, batches) in zip(groups, before, strict=True):
            self.assertEqual(group.lookups - lookups, 300)
            # the first goes alone, one per connection that may read at
            # once; the rest wait and go together, at most 128 a batch
            self.assertLessEqual(group.batches - batches, 6)


class MemoryStoreTests(StoreContractMixin, TestCase):
    durable = False

    def new_store(self) -> IStore:
        return MemoryStore()


class SQLiteStoreTests(StoreContractMixin, GroupedLookupsMixin, TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.url = clean_store_url("sqlite", self.addCleanup)
        await super().setUp()

    def new_store(self) -> IStore:
        return SQLStore.from_url(self.url, reactor, timeout=TIMEOUT)


class PostgreSQLStoreTests(StoreContractMixin, GroupedLookupsMixin, TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.url = clean_store_url("postgresql", self.addCleanup)
        await super().setUp()

    def new_store(self) -> IStore:
        return SQLStore.from_url(self.url, reactor, timeout=TIMEOUT)


class RedisStoreTests(StoreContractMixin, GroupedLookupsMixin, TestCase):
    timeout = 60

    async def setUp(self) -> None:
        self.url = clean_store_url("redis", self.addCleanup)
        await super().setUp()

    purges = False

    def new_store(self) -> IStore:
        return RedisStore.from_url(self.url, reactor, timeout=TIMEOUT)

    async def test_burst_of_token_lookups_few_scripts_run(self) -> None:
        """
        What the server itself counts: 300 token lookups at once run the
        lookup script a few times (a batch each), not 300.
        """
        token = make_token()
        await self.tokens.add_token(token)
        server = redis_server("shared")
        server.query("CONFIG", "RESETSTAT")
        found = await gatherResults([self.tokens.get_token(token.token_digest) for _ in range(300)])
        self.assertEqual(found, [token] * 300)
        stats = str(server.query("INFO", "commandstats"))
        calls = sum(
            int(line.split("calls=", 1)[1].split(",", 1)[0])
            for line in stats.splitlines()
            if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:"))
        )
        self.assertGreaterEqual(calls, 1)
        self.assertLessEqual(calls, 6)


class SentinelRedisStoreTests(StoreContractMixin, GroupedLookupsMixin, TestCase):
    """
    The contract through Redis Sentinel: the primary found by the
    sentinels, every write that must survive a failover waiting for a
    replica (C{WAIT}, the default with a C{redis+sentinel://} URL).
    """

    timeout = 60
    purges = False

    async def setUp(self) -> None:
        group = redis_sentinel_group()
        group.primary.flushall()
        self.url = group.url(3)
        await super().setUp()

    def new_store(self) -> IStore:
        store = RedisStore.from_url(self.url, reactor, timeout=TIMEOUT)
        self.assertEqual(store.wait_replicas, 1)  # type: ignore[attr-defined]
        return store


class ServerFaultsMixin(_TestCase):
    """
    The store contract when the server fails: an operation on a server that
    is stopped, killed or hung fails with L{StoreUnavailable} within the
    store's timeout (it never hangs), and once the server is back the same
    store object works again, with nothing lost.

    These tests stop and kill their server, so they have one of their own,
    apart from the contract tests'.
    """

    #: the store's timeout in these tests, short to keep them fast
    fault_timeout = 1.0

    #: how much later than its timeout a failure may come: a loaded CI
    #: machine's scheduling, not the store's slack
    slack = 1.5

    server: RedisServer | PostgresServer

    def fault_server(self) -> RedisServer | PostgresServer:
        raise NotImplementedError()

    async def clean_url(self) -> str:
        """
        The URL of a clean database on C{self.server}.
        """
        raise NotImplementedError()

    def new_store(self, url: str, timeout: float) -> IStore:
        raise NotImplementedError()

    async def setUp(self) -> None:
        self.server = self.fault_server()
        self.url = await self.clean_url()
        self.store = await self.opened(self.url)

    async def opened(self, url: str, timeout: float | None = None) -> IStore:
        store = self.new_store(url, self.fault_timeout if timeout is None else timeout)
        await store.open()
        self.addCleanup(store.close)
        return store

    async def assertUnavailableInTime(
        self, operation: Callable[[], Awaitable[object]], timeout: float | None = None
    ) -> float:
        """
        Assert that C{operation} fails with L{StoreUnavailable} within the
        timeout; return how long it took.
        """
        limit = self.fault_timeout if timeout is None else timeout
        started = time.monotonic()
        with self.assertRaises(StoreUnavailable):
            await operation()
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, limit + self.slack)
        return elapsed

    async def assertOutageSurvived(self, take_down: Callable[[], None]) -> None:
        client, key, token = make_client(), make_key(), make_token()
        tokens = ITokenStore(self.store)
        await self.store.add_client(client)
        await self.store.add_key(key)
        await tokens.add_token(token)
        # a pooled connection that has seen the server before, and the
        # lookups' one
        self.assertEqual(await self.store.get_client("client-1"), client)
        self.assertEqual(await tokens.get_token(token.token_digest), token)

        take_down()
        try:
            await self.assertUnavailableInTime(lambda: self.store.get_client("client-1"))
            await self.assertUnavailableInTime(lambda: self.store.add_client(make_client("new")))
            await self.assertUnavailableInTime(lambda: self.store.list_keys())
            # a burst of lookups, grouped into batches: each fails as its
            # batch did, in time
            async def burst() -> None:
                results = await DeferredList(
                    [tokens.get_token(token.token_digest) for _ in range(20)]
                    + [tokens.is_revoked(f"jti-{n}") for n in range(20)],
                    consumeErrors=True,
                )
                for ok, outcome in results:
                    self.assertFalse(ok)
                    outcome.trap(StoreUnavailable)
                raise StoreUnavailable("each of the burst")

            await self.assertUnavailableInTime(burst)
        finally:
            self.server.start()

        # the same store object, no reopening
        self.assertEqual(
            await eventually(
                lambda: self.store.get_client("client-1"),
                reactor,
                15,
                what="the store back",
                tolerate=(StoreUnavailable,),
            ),
            client,
        )
        self.assertEqual(await self.store.list_keys(), [key])
        self.assertEqual(
            await eventually(
                lambda: tokens.get_token(token.token_digest),
                reactor,
                15,
                what="the lookups back",
                tolerate=(StoreUnavailable,),
            ),
            token,
        )
        self.assertIs(await tokens.is_revoked("jti-1"), False)
        later = make_client("later")
        await self.store.add_client(later)
        self.assertEqual(await self.store.get_client("later"), later)

    async def test_stopped_server(self) -> None:
        await self.assertOutageSurvived(self.server.stop)

    async def test_killed_server(self) -> None:
        await self.assertOutageSurvived(self.server.kill)

    async def test_open_while_stopped(self) -> None:
        """
        open() on a stopped server fails in time too, and a later open()
        of a new store succeeds once it is back.
        """
        self.server.stop()
        try:
            store = self.new_store(self.url, self.fault_timeout)
            self.addCleanup(store.close)
            await self.assertUnavailableInTime(store.open)
        finally:
            self.server.start()
        store = await self.opened(self.url)
        self.assertIsNone(await store.get_client("client-1"))

    async def test_hung_server(self) -> None:
        """
        A server that accepts the connection and never answers: the
        operation fails in time, it does not hang.
        """
        silent = SilentServer()
        self.addCleanup(silent.close)
        url = self.url.replace(f":{self.server.port}/", f":{silent.port}/")
        store = self.new_store(url, self.fault_timeout)
        self.addCleanup(store.close)
        await self.assertUnavailableInTime(store.open)

    async def test_password_never_logged(self) -> None:
        """
        The store's url masks the password, and nothing it logs or raises
        when the server is unreachable shows it.
        """
        password = "Sup3r-s3cret"
        silent = SilentServer()
        port = silent.port
        silent.close()  # now a closed port: connections are refused
        url = self.url_with_password(password, port)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        store = self.new_store(url, self.fault_timeout)
        self.addCleanup(store.close)
        self.assertNotIn(password, store.url)
        self.assertIn("***", store.url)
        self.assertNotIn(password, repr(store))
        with self.assertRaises(StoreUnavailable) as caught:
            await store.open()
        self.assertNotIn(password, str(caught.exception))
        self.assertTrue(events)
        for event in events:
            self.assertNotIn(password, formatEvent(event))
            self.assertNotIn(password, repr(event))

    def url_with_password(self, password: str, port: int) -> str:
        raise NotImplementedError()


class PostgreSQLFaultTests(ServerFaultsMixin, TestCase):
    timeout = 120

    def fault_server(self) -> PostgresServer:
        return postgres_server("faults")

    async def clean_url(self) -> str:
        server = self.server
        assert isinstance(server, PostgresServer)
        name = server.create_database()
        self.addCleanup(lambda: server.running and server.drop_database(name))
        return server.url_for(name)

    def new_store(self, url: str, timeout: float) -> IStore:
        return SQLStore.from_url(url, reactor, timeout=timeout)

    def url_with_password(self, password: str, port: int) -> str:
        return f"postgresql://postgres:{password}@127.0.0.1:{port}/ccserver"


class RedisFaultTests(ServerFaultsMixin, TestCase):
    timeout = 120

    def fault_server(self) -> RedisServer:
        # appendfsync always: a kill loses nothing, as in production
        return redis_server("faults", persistent=True)

    async def clean_url(self) -> str:
        server = self.server
        assert isinstance(server, RedisServer)
        server.flushall()
        return server.url_for(5)

    def new_store(self, url: str, timeout: float) -> IStore:
        return RedisStore.from_url(url, reactor, timeout=timeout)

    def url_with_password(self, password: str, port: int) -> str:
        return f"redis://:{password}@127.0.0.1:{port}/0"


class HarnessTests(TestCase):
    def test_missing_binary_fails_loudly(self) -> None:
        """
        A server binary that is not installed is an error naming the Debian
        package to install, never a skipped test.
        """
        with self.assertRaises(ServerBinaryMissing) as caught:
            find_binary("ccserver-no-such-server", package="no-such-package")
        self.assertIn("apt-get install no-such-package", str(caught.exception))
