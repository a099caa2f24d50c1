"""
Secret rotation with a grace period, and the operator's client operations
(ccserver/clients.py), in memory: the HTTP endpoint for the master token's
holder, the token endpoint honouring both secrets until the grace ends
(a Clock, no sleeping), and other instances following within their client
cache time.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from ccserver import credentials
from ccserver.assembly import make_jwks_fetcher, make_site
from ccserver.clients import all_clients, public_view, rotate_secret
from ccserver.config import Config, StoreConfig, TokenConfig
from ccserver.handlers.registered_scope import RegisteredScopeHandler
from ccserver.interfaces import IStore
from ccserver.keys import KeyEncryptor
from ccserver.oauth.clientauth import ClientCredentials, authenticate
from ccserver.oauth.tokens import sign_inline
from ccserver.stores.cache import CachingClientStore
from ccserver.stores.memory import MemoryStore
from tests.helpers import MASTER_TOKEN, Response, ServerTestCase, basic

GRANT = {"grant_type": "client_credentials"}


class RotateOverHTTPTests(ServerTestCase):
    def rotate(self, client_id: str, token: str | None = MASTER_TOKEN) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.request("POST", f"/client-reg/{client_id}/rotate-secret", headers=headers)

    def test_both_secrets_until_the_grace_ends(self) -> None:
        """
        After a rotation the new secret works, and the old one too until
        [clients] secret_rotation_grace (1800 s by default) has passed;
        then only the new one.
        """
        client = self.register(scope="read")
        old = client["client_secret"]
        response = self.rotate(client["client_id"])
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(response.headers["cache-control"], "no-store")
        rotation = response.json()
        self.assertEqual(
            sorted(rotation), ["client_id", "client_secret", "previous_secret_expires_at"]
        )
        self.assertEqual(rotation["client_id"], client["client_id"])
        self.assertEqual(rotation["previous_secret_expires_at"], int(self.clock.seconds()) + 1800)
        new = rotation["client_secret"]
        self.assertNotEqual(new, old)
        for secret in (old, new):
            self.assertEqual(self.token(GRANT, basic(client["client_id"], secret)).code, 200)
        self.clock.advance(1799)
        self.assertEqual(self.token(GRANT, basic(client["client_id"], old)).code, 200)
        self.clock.advance(1)
        refused = self.token(GRANT, basic(client["client_id"], old))
        self.assertEqual(refused.code, 401)
        self.assertEqual(refused.json()["error"], "invalid_client")
        self.assertEqual(self.token(GRANT, basic(client["client_id"], new)).code, 200)

    def test_rotating_again_ends_the_oldest_at_once(self) -> None:
        client = self.register(scope="read")
        first = client["client_secret"]
        second = self.rotate(client["client_id"]).json()["client_secret"]
        third = self.rotate(client["client_id"]).json()["client_secret"]
        self.assertEqual(self.token(GRANT, basic(client["client_id"], first)).code, 401)
        for secret in (second, third):
            self.assertEqual(self.token(GRANT, basic(client["client_id"], secret)).code, 200)

    def test_only_the_master_token(self) -> None:
        """
        The client's own registration access token cannot rotate its
        secret; nor can no token, or a wrong one; an unknown client gets
        the same 401 as a wrong token.  Nothing changes.
        """
        client = self.register(scope="read")
        for token in (client["registration_access_token"], None, "wrong-token-0123456789"):
            response = self.rotate(client["client_id"], token)
            self.assertEqual(response.code, 401, token)
            self.assertEqual(response.json()["error"], "invalid_token")
            self.assertIn("Bearer", response.headers["www-authenticate"])
        self.assertEqual(self.rotate("no-such-client").code, 401)
        self.assertEqual(
            self.token(GRANT, basic(client["client_id"], client["client_secret"])).code, 200
        )

    def test_post_only(self) -> None:
        client = self.register(scope="read")
        response = self.request(
            "GET",
            f"/client-reg/{client['client_id']}/rotate-secret",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
        )
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers["allow"], "POST")

    def test_replace_keeps_the_grace(self) -> None:
        """
        Replacing the metadata (RFC 7592 §2.2) during the grace period keeps
        the previous secret working.
        """
        client = self.register(scope="read", client_name="a")
        old = client["client_secret"]
        self.rotate(client["client_id"])
        response = self.request(
            "PUT",
            f"/client-reg/{client['client_id']}",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body={"client_id": client["client_id"], "scope": "read", "client_name": "b"},
        )
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(self.token(GRANT, basic(client["client_id"], old)).code, 200)


class OtherInstanceTests(SynchronousTestCase):
    """
    Two instances on one store: a rotation on one reaches the other within
    its client cache time ([store] client_cache_seconds, 5 s here).
    """

    def test_follows_within_cache_time(self) -> None:
        from twisted.internet.task import Clock

        from tests.helpers import ISSUER

        clock = Clock()
        clock.advance(1_800_000_000)
        store = MemoryStore()
        sites = []
        config = Config(
            issuer=ISSUER,
            store=StoreConfig(url="memory://", client_cache_seconds=5),
            tokens=TokenConfig(signing_alg="ES256"),
        )
        encryptor = KeyEncryptor.ephemeral()
        for _ in range(2):
            site, keyring = make_site(
                clock,
                config,
                store,
                RegisteredScopeHandler(),
                credentials.digest(MASTER_TOKEN),
                encryptor,
                sign_inline,
                make_jwks_fetcher(clock, config, StubTreq(Resource())),
            )
            self.successResultOf(ensureDeferred(keyring.ensure_signing_key()))
            sites.append(StubTreq(site.resource))

        def call(which: int, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
            response = self.successResultOf(sites[which].request(method, ISSUER + path, **kwargs))
            body = self.successResultOf(response.json())
            return response.code, body

        master = {"Authorization": f"Bearer {MASTER_TOKEN}"}
        code, client = call(
            0, "POST", "/client-reg", headers={**master, "Content-Type": "application/json"},
            data=b'{"scope": "read"}',
        )
        self.assertEqual(code, 201)
        form = {"Content-Type": "application/x-www-form-urlencoded"}

        def token(which: int, secret: str) -> int:
            return call(
                which, "POST", "/token",
                headers={**form, "Authorization": basic(client["client_id"], secret)},
                data=b"grant_type=client_credentials",
            )[0]

        self.assertEqual(token(1, client["client_secret"]), 200)  # instance 1 caches it
        code, rotation = call(0, "POST", f"/client-reg/{client['client_id']}/rotate-secret",
                              headers=master)
        self.assertEqual(code, 200)
        self.assertEqual(token(0, rotation["client_secret"]), 200)
        clock.advance(5)
        self.assertEqual(token(1, rotation["client_secret"]), 200)
        clock.advance(1800)
        self.assertEqual(token(1, client["client_secret"]), 401)


class AuthenticateTests(SynchronousTestCase):
    def test_previous_secret_only_before_expiry(self) -> None:
        """
        authenticate() takes the previous secret before
        previous_secret_expires_at and not from then on; an expired one
        is refused even if the record still holds it.
        """
        store = MemoryStore()
        self.successResultOf(
            ensureDeferred(_register(store))
        )
        client = self.successResultOf(store.get_client("c"))
        assert client is not None
        now = [1000.0]
        presented = ClientCredentials("client_secret_basic", "c", "old-secret")
        self.assertEqual(
            self.successResultOf(ensureDeferred(authenticate(store, presented, now=lambda: now[0]))),
            client,
        )
        now[0] = 1800.0
        failure = self.failureResultOf(
            ensureDeferred(authenticate(store, presented, now=lambda: now[0]))
        )
        self.assertEqual(failure.value.error, "invalid_client")

    def test_rotate_unknown_client(self) -> None:
        store = MemoryStore()
        self.assertIsNone(
            self.successResultOf(ensureDeferred(rotate_secret(store, "nobody", 60, lambda: 0.0)))
        )

    def test_no_grace_ends_the_old_secret_at_once(self) -> None:
        store = MemoryStore()
        self.successResultOf(ensureDeferred(_register(store)))
        rotation = self.successResultOf(ensureDeferred(rotate_secret(store, "c", 0, lambda: 5.0)))
        assert rotation is not None
        self.assertIsNone(rotation.previous_secret_expires_at)
        client = self.successResultOf(store.get_client("c"))
        assert client is not None
        self.assertIsNone(client.previous_secret_digest)
        self.assertTrue(credentials.check(rotation.client_secret, client.client_secret_digest))


class PublicViewTests(SynchronousTestCase):
    def test_never_a_secret_or_digest(self) -> None:
        store = MemoryStore()
        self.successResultOf(ensureDeferred(_register(store)))
        client = self.successResultOf(store.get_client("c"))
        assert client is not None
        view = public_view(client, 1000.0)
        text = repr(view)
        for digest in (client.client_secret_digest, client.registration_access_token_digest):
            self.assertNotIn(digest, text)
        self.assertNotIn("digest", text)
        self.assertEqual(view["previous_secret_expires_at"], 1800)
        self.assertNotIn("previous_secret_expires_at", public_view(client, 1800.0))

    def test_all_clients_drops_repeats(self) -> None:
        """
        A store whose pages repeat a client (as Redis SCAN may) still gives
        each client once.
        """
        store = MemoryStore()
        self.successResultOf(ensureDeferred(_register(store)))
        client = self.successResultOf(store.get_client("c"))

        class Repeating:
            def list_clients(self, cursor: str, count: int) -> Any:
                from twisted.internet.defer import succeed

                return succeed(([client, client], "" if cursor == "1" else "1"))

        async def collect() -> list[Any]:
            return [c async for c in all_clients(Repeating())]  # type: ignore[arg-type]

        self.assertEqual(self.successResultOf(ensureDeferred(collect())), [client])

    def test_cache_drops_expired_records(self) -> None:
        """
        Records past their time are dropped as new ones are cached, so the
        cache holds about the clients seen within C{seconds}, not every
        client ever seen (1.9 KiB each; 100,000 clients cost ~180 MiB a
        process when they stayed).
        """
        from twisted.internet.task import Clock

        from ccserver.model import Client

        store = MemoryStore()
        clock = Clock()
        cache = CachingClientStore(store, clock.seconds, 5)
        for i in range(100):
            client = Client(
                client_id=f"c{i}",
                client_id_issued_at=0,
                metadata={},
                client_secret_digest=None,
                registration_access_token_digest="x",
            )
            self.successResultOf(store.add_client(client))
        for i in range(100):
            self.successResultOf(cache.get_client(f"c{i}"))
            clock.advance(0.5)
        # seen in the last 5 s: the last 10, and a few not yet swept
        self.assertLessEqual(len(cache), 13)
        self.assertGreaterEqual(len(cache), 10)
        # still served from the cache while fresh
        self.assertEqual(self.successResultOf(cache.get_client("c99")).client_id, "c99")

    def test_cache_keeps_bindings_for_its_time(self) -> None:
        """
        The clients bound to a workload identity are served from the cache
        for its time, as records are (no round trip per workload token);
        a write through this process is seen at once, another process'
        within the cache time.
        """
        from twisted.internet.task import Clock

        from ccserver.model import Client

        def bound(client_id: str, subject: str) -> Client:
            return Client(
                client_id=client_id,
                client_id_issued_at=0,
                metadata={
                    "token_endpoint_auth_method": "federated_jwt",
                    "federated_identities": [{"issuer": "https://i", "subject": subject}],
                },
                client_secret_digest="",
                registration_access_token_digest="x",
            )

        store = MemoryStore()
        clock = Clock()
        cache = CachingClientStore(store, clock.seconds, 5)
        self.successResultOf(store.add_client(bound("a", "s")))
        self.assertEqual(self.successResultOf(cache.clients_bound_to("https://i", "s")), ["a"])
        # another process binds "b" to the same subject: seen within 5 s
        self.successResultOf(store.delete_client("a", 0, 1))
        self.successResultOf(store.add_client(bound("b", "s")))
        self.assertEqual(self.successResultOf(cache.clients_bound_to("https://i", "s")), ["a"])
        clock.advance(5)
        self.assertEqual(self.successResultOf(cache.clients_bound_to("https://i", "s")), ["b"])
        # a write through this process: at once
        self.successResultOf(cache.replace_client(bound("b", "t")))
        self.assertEqual(self.successResultOf(cache.clients_bound_to("https://i", "s")), [])
        self.assertEqual(self.successResultOf(cache.clients_bound_to("https://i", "t")), ["b"])

    def test_cache_lists_from_the_store(self) -> None:
        store = MemoryStore()
        self.successResultOf(ensureDeferred(_register(store)))
        cache = CachingClientStore(store, lambda: 0.0, 5)
        page, cursor = self.successResultOf(cache.list_clients("", 10))
        self.assertEqual([c.client_id for c in page], ["c"])
        self.assertEqual(cursor, "")


async def _register(store: IStore) -> None:
    """
    Client "c", its secret "new-secret" rotated from "old-secret" at 0
    with a grace until 1800.
    """
    from ccserver.model import Client

    await store.add_client(
        Client(
            client_id="c",
            client_id_issued_at=0,
            metadata={"scope": "read", "token_endpoint_auth_method": "client_secret_basic"},
            client_secret_digest=credentials.digest("new-secret"),
            registration_access_token_digest=credentials.digest("rat"),
            previous_secret_digest=credentials.digest("old-secret"),
            previous_secret_expires_at=1800,
        )
    )
