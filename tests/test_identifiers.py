"""
Strings that would become part of a store key (client ids, C{jti}s, an
assertion's C{kid}, token values) are checked once, before any store is
asked (L{ccserver.text.identifier_problem}), on each of the four stores.

Each test runs the oauth layer over a real store (memory, SQLite,
PostgreSQL, Redis), through a L{RecordingStore} that notes every call on
its way: a refused value reaches no store, so nothing of it is stored and
no store can fail on it (PostgreSQL refuses NUL in a string; no store can
encode a lone surrogate as UTF-8).  The same values over HTTP, against a
real process on each store: tests/test_bad_input.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from ccserver import credentials
from ccserver.errors import OAuthError
from ccserver.interfaces import IStore
from ccserver.keys import KeyEncryptor, Keyring, public_jwk
from ccserver.oauth.assertions import AssertionVerifier
from ccserver.oauth.clientauth import JWT_BEARER, ClientAuthenticator
from ccserver.oauth.dpop import MAX_JTI, DPoPVerifier
from ccserver.oauth.introspection import TokenIntrospection
from ccserver.oauth.limits import AuthLimits
from ccserver.oauth.registration import ClientRegistry, register_client, validate_metadata
from ccserver.stores import store_from_url
from ccserver.testing.servers import clean_store_url
from ccserver.text import MAX_IDENTIFIER
from tests.test_dpop import Key

ISSUER = "https://as.example"
MASTER_TOKEN = "master-token-for-identifier-tests"

if TYPE_CHECKING:
    _TestCase = TestCase
else:
    _TestCase = object


def unstorable(max_length: int) -> dict[str, str]:
    """
    What no store key may hold, by name: NUL, other C0 and C1 controls, a
    bidi override, a lone surrogate, and one character too many.
    """
    return {
        "nul": "a\x00b",
        "escape": "a\x1b[2Jb",
        "carriage return": "a\rb",
        "C1 CSI": "a\x9bb",
        "bidi override": "a\u202eb",
        "lone surrogate": "a\ud800b",
        "too long": "a" * (max_length + 1),
    }


class RecordingStore:
    """
    A real store, each call to it noted (its name and arguments) on the way.
    """

    def __init__(self, store: IStore) -> None:
        self.store = store
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.store, name)
        if not callable(attribute):
            return attribute

        def recorded(*args: Any) -> Any:
            self.calls.append((name, args))
            return attribute(*args)

        return recorded


class IdentifierMixin(_TestCase):
    """
    The oauth layer over one kind of store; a subclass names the kind.
    """

    kind: str
    timeout = 60

    async def setUp(self) -> None:
        url = clean_store_url(self.kind, self.addCleanup)
        store = store_from_url(url, reactor, timeout=5.0)
        await store.open()
        self.addCleanup(store.close)
        self.store = store
        self.recording = RecordingStore(store)
        self.now: Callable[[], float] = time.time

    async def assertRefusedUnasked(
        self, make: Callable[[str], Any], values: dict[str, str], error: str, naming: str
    ) -> None:
        """
        Each of C{values} refused with C{error} (its description naming
        C{naming}) before the store is asked anything.
        """
        for name, value in values.items():
            self.recording.calls.clear()
            with self.assertRaises(OAuthError, msg=name) as caught:
                await make(value)
            self.assertEqual(caught.exception.error, error, name)
            self.assertIn(naming, caught.exception.description, name)
            self.assertNotIn(value, caught.exception.description, name)
            self.assertEqual(self.recording.calls, [], name)

    # DPoP

    async def test_dpop_jti(self) -> None:
        verifier = DPoPVerifier(self.recording, ("ES256",), 60, 5, self.now)  # type: ignore[arg-type]
        key = Key()
        endpoint = "https://as.example/token"

        def check(jti: str) -> Any:
            proof = key.proof(self.now(), jti=jti, htu=endpoint)
            return verifier.check([proof], "POST", endpoint)

        await self.assertRefusedUnasked(check, unstorable(MAX_JTI), "invalid_dpop_proof", "jti")
        # a good jti is kept, in this store, once
        self.assertIsNotNone(await check("a" * MAX_JTI))
        self.assertEqual([name for name, _ in self.recording.calls], ["use_once"])

    # client assertions

    async def private_key_jwt_client(self) -> tuple[str, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        registration = await register_client(
            self.store,
            validate_metadata(
                {
                    "scope": "read",
                    "token_endpoint_auth_method": "private_key_jwt",
                    "jwks": {"keys": [dict(public_jwk(key), kid="k1")]},
                }
            ),
            self.now,
        )
        return registration.client.client_id, key

    def assertion(
        self, key: ec.EllipticCurvePrivateKey, client_id: str, kid: str = "k1", **changes: Any
    ) -> dict[str, str]:
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": ISSUER + "/token",
            "exp": int(self.now()) + 60,
            "jti": str(uuid.uuid4()),
            **changes,
        }
        return {
            "client_assertion_type": JWT_BEARER,
            "client_assertion": jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid}),
        }

    def authenticator(self) -> ClientAuthenticator:
        verifier = AssertionVerifier(
            tokens=self.recording,  # type: ignore[arg-type]
            issuer=ISSUER,
            now=self.now,
            max_lifetime=300,
            leeway=5,
        )
        # the brute-force limits over the same store: a refused value must
        # not be counted there either (the counts are the store's)
        limits = AuthLimits(self.recording, self.now, budget=1000)  # type: ignore[arg-type]
        return ClientAuthenticator(self.recording, verifier, limits, now=self.now)  # type: ignore[arg-type]

    async def test_assertion_sub(self) -> None:
        client_id, key = await self.private_key_jwt_client()
        authenticator = self.authenticator()
        await self.assertRefusedUnasked(
            lambda sub: authenticator.authenticate(
                None, self.assertion(key, client_id, sub=sub, iss=sub)
            ),
            unstorable(MAX_IDENTIFIER),
            "invalid_client",
            "sub",
        )

    async def test_assertion_jti_and_kid(self) -> None:
        """
        The client is looked up (by its good C{sub}, and the attempt counted
        for it by the limits), and nothing more: no one-time record is
        written for the bad C{jti}, and no store sees the bad value.
        """
        client_id, key = await self.private_key_jwt_client()
        authenticator = self.authenticator()
        for claim in ("jti", "kid"):
            for name, value in unstorable(MAX_IDENTIFIER).items():
                self.recording.calls.clear()
                with self.assertRaises(OAuthError, msg=(claim, name)) as caught:
                    await authenticator.authenticate(
                        None, self.assertion(key, client_id, **{claim: value})
                    )
                self.assertEqual(caught.exception.error, "invalid_client")
                self.assertIn(claim, caught.exception.description)
                self.assertIn(("get_client", (client_id,)), self.recording.calls)
                self.assertNotIn("use_once", [call for call, _ in self.recording.calls])
                self.assertNotIn(value, repr(self.recording.calls), (claim, name))
        self.recording.calls.clear()
        client = await authenticator.authenticate(None, self.assertion(key, client_id))
        self.assertEqual(client.client_id, client_id)
        self.assertIn("use_once", [call for call, _ in self.recording.calls])

    # client ids in forms, Basic credentials and URLs

    async def test_client_id_in_a_form(self) -> None:
        authenticator = self.authenticator()
        for form in (
            lambda client_id: {"client_id": client_id, "client_secret": "secret"},
            lambda client_id: {"client_id": client_id},
            lambda client_id: {
                "client_id": client_id,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": "a.b.c",
            },
        ):
            await self.assertRefusedUnasked(
                lambda client_id, form=form: authenticator.authenticate(None, form(client_id)),
                unstorable(MAX_IDENTIFIER),
                "invalid_request",
                "client_id",
            )

    async def test_client_id_in_basic_credentials(self) -> None:
        from tests.helpers import basic

        authenticator = self.authenticator()
        values = {
            # percent-decoded after base64 (RFC 6749 §2.3.1): what is not
            # UTF-8 there becomes U+FFFD, never a lone surrogate
            name: value for name, value in unstorable(MAX_IDENTIFIER).items()
            if name != "lone surrogate"
        }
        await self.assertRefusedUnasked(
            lambda client_id: authenticator.authenticate(basic(client_id, "secret"), {}),
            values,
            "invalid_request",
            "client_id",
        )

    async def test_client_configuration_url(self) -> None:
        registry = ClientRegistry(
            self.recording,  # type: ignore[arg-type]
            credentials.digest(MASTER_TOKEN),
            self.now,
            token_max_lifetime=3600,
            client_cache_seconds=5,
            limits=AuthLimits(self.recording, self.now, budget=1000),  # type: ignore[arg-type]
        )
        for operation in (
            lambda client_id: registry.read(client_id, MASTER_TOKEN),
            lambda client_id: registry.replace(client_id, MASTER_TOKEN, lambda: {}),
            lambda client_id: registry.delete(client_id, MASTER_TOKEN),
            lambda client_id: registry.rotate_secret(client_id, MASTER_TOKEN),
        ):
            await self.assertRefusedUnasked(
                operation, unstorable(MAX_IDENTIFIER), "invalid_request", "client_id"
            )

    # token values

    async def test_token_value(self) -> None:
        """
        A token that is not printable is none this server issued: inactive
        (RFC 7662 §2.2), and the store is not asked.
        """
        keyring = Keyring(self.store, KeyEncryptor.ephemeral(), "ES256", 3600, self.now)
        introspection = TokenIntrospection(
            self.recording,  # type: ignore[arg-type]
            self.recording,  # type: ignore[arg-type]
            keyring,
            ISSUER,
            "audience",
            self.now,
            master_token_digest=credentials.digest(MASTER_TOKEN),
        )
        for name, token in unstorable(0).items():
            if name == "too long":
                continue  # a request body bounds a token's length
            self.recording.calls.clear()
            self.assertIsNone(await introspection.lookup(token), name)
            self.assertEqual(self.recording.calls, [], name)
        self.assertIsNone(await introspection.lookup("opaque-token-never-issued"))
        self.assertEqual([name for name, _ in self.recording.calls], ["get_token"])


class MemoryIdentifierTests(IdentifierMixin, TestCase):
    kind = "memory"


class SQLiteIdentifierTests(IdentifierMixin, TestCase):
    kind = "sqlite"


class PostgreSQLIdentifierTests(IdentifierMixin, TestCase):
    kind = "postgresql"


class RedisIdentifierTests(IdentifierMixin, TestCase):
    kind = "redis"
