"""
An in-memory ccserver for unit tests: the real app over a MemoryStore, a
Clock and StubTreq.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus, urlencode

import jwt
from attrs import define
from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from ccserver import audit, credentials
from ccserver.accesslog import AccessLog
from ccserver.assembly import make_issuer_keys, make_jwks_fetcher, make_site
from ccserver.config import Config, StoreConfig, TokenConfig
from ccserver.handlers.registered_scope import RegisteredScopeHandler
from ccserver.interfaces import IClientCredentialsGrantHandler, IStore
from ccserver.keys import KeyEncryptor
from ccserver.metrics import NO_METRICS, NoMetrics
from ccserver.model import TokenRecord
from ccserver.oauth.grants import OfferedGrants
from ccserver.oauth.tokens import sign_inline
from ccserver.stores.memory import MemoryStore

ISSUER = "https://as.example.com"


class AuditEvents:
    """
    The audit events emitted while a test runs (observed on
    L{audit.publisher} until it ends), each as a flat dict: C{type},
    C{actor} (its JSON object), C{source} if any, and its fields.
    """

    def __init__(self, test: SynchronousTestCase) -> None:
        self.raw: list[dict[str, Any]] = []
        audit.publisher.addObserver(self)
        test.addCleanup(audit.publisher.removeObserver, self)

    def __call__(self, event: dict[str, Any]) -> None:
        self.raw.append(event)

    @property
    def events(self) -> list[dict[str, Any]]:
        flat = []
        for event in self.raw:
            one: dict[str, Any] = {
                "type": event["audit_type"],
                "actor": event["audit_actor"].as_json(),
            }
            if event["audit_source"] is not None:
                one["source"] = event["audit_source"]
            one.update((k, v) for k, v in event["audit_fields"].items() if v is not None)
            flat.append(one)
        return flat

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == event_type]

    def one(self, event_type: str) -> dict[str, Any]:
        """
        The one event of C{event_type} (the test fails unless there is
        exactly one).
        """
        found = self.of(event_type)
        if len(found) != 1:
            raise AssertionError(f"{len(found)} {event_type} events: {self.events}")
        return found[0]

    def clear(self) -> None:
        del self.raw[:]
MASTER_TOKEN = "master-token-for-tests-0123456789"


def config_of(test: SynchronousTestCase, text: str) -> Config:
    """
    The configuration that a TOML file holding C{text} gives
    (L{ccserver.config.load_config}, with no environment).
    """
    from ccserver.config import load_config

    path = temp_dir(test) / "ccserver.toml"
    path.write_text(text)
    return load_config({"config": str(path)}, {})


def temp_dir(test: SynchronousTestCase) -> Path:
    """
    A new folder, removed when the test ends.
    """
    folder = Path(tempfile.mkdtemp(prefix="ccserver-test-"))
    test.addCleanup(shutil.rmtree, folder, True)
    return folder


class ListDestination:
    """
    An access log destination that keeps the lines it is given.
    """

    description = "a list"

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.closed = False

    def write(self, lines: Sequence[bytes]) -> int:
        self.lines.extend(lines)
        return len(lines)

    def close(self) -> None:
        self.closed = True


@define
class Response:
    code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def basic(client_id: str, secret: str) -> str:
    """
    RFC 6749 §2.3.1: form-urlencode, then Basic.
    """
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class ServerTestCase(SynchronousTestCase):
    """
    A test case with a whole ccserver app in memory.
    """

    signing_alg = "RS256"

    def make_store(self) -> IStore:
        return MemoryStore()

    def make_handler(self) -> IClientCredentialsGrantHandler:
        return RegisteredScopeHandler()

    def make_metrics(self) -> NoMetrics:
        return NO_METRICS

    def make_config(self, **tokens: Any) -> Config:
        return Config(
            issuer=ISSUER,
            store=StoreConfig(url="memory://", client_cache_seconds=5),
            tokens=TokenConfig(signing_alg=self.signing_alg, **tokens),
        )

    def make_certificates(self) -> Any:
        """
        Where requests' TLS client certificates come from: by default
        nowhere (no TLS listener, no trusted proxy).
        """
        return None

    def make_tracing(self) -> Any:
        """
        The spans' tracer ([tracing]): by default none, tracing off.
        """
        return None

    def make_grant_types(self) -> Any:
        """
        The grant type plugins to offer (a L{ccserver.pluginloader.Found}):
        by default None, the built-in ones.
        """
        return None

    def make_jwks_http(self) -> Any:
        """
        The HTTP client that fetches clients' jwks_uri: by default one that
        finds nothing (404) and never leaves the process.
        """
        return StubTreq(Resource())

    def make_issuer_http(self) -> Any:
        """
        The HTTP client that fetches trusted issuers' keys (when the
        configuration has any): by default one that finds nothing (404).
        """
        return StubTreq(Resource())

    def access_lines(self) -> list[bytes]:
        """
        The access log's lines so far, every one written.
        """
        self.access_log.flush()
        return list(self.access_destination.lines)

    def setUp(self) -> None:
        #: where the access log's lines go (when the configuration has one)
        self.access_destination = ListDestination()
        self.access_log = AccessLog(self.access_destination)
        self.clock = Clock()
        self.clock.advance(int(time.time()))
        self.store = self.make_store()
        self.config = self.make_config()
        self.encryptor = KeyEncryptor.ephemeral()
        handler = self.make_handler()
        found = self.make_grant_types()
        issuer_keys = (
            make_issuer_keys(self.clock, self.config, self.make_issuer_http())
            if self.config.trusted_issuers
            else None
        )
        #: the grant types offered, made over their endpoint (None: the
        #: built-in ones, made by make_site)
        self.offered = (
            None
            if found is None
            else OfferedGrants.made(
                found, ISSUER, handler, self.clock, bool(self.config.trusted_issuers)
            )
        )
        self.site, self.keyring = make_site(
            self.clock,
            self.config,
            self.store,
            handler,
            credentials.digest(MASTER_TOKEN),
            self.encryptor,
            sign_inline,
            make_jwks_fetcher(self.clock, self.config, self.make_jwks_http()),
            self.make_metrics(),
            self.make_certificates(),
            self.offered,
            issuer_keys,
            self.make_tracing(),
            self.access_log if self.config.access_log else None,
        )
        self.successResultOf(ensureDeferred(self.keyring.ensure_signing_key()))
        self.treq = StubTreq(self.site.resource)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | dict[str, str] | None = None,
        json_body: Any = None,
    ) -> Response:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if json_body is not None:
            kwargs["data"] = json.dumps(json_body).encode()
            kwargs["headers"].setdefault("Content-Type", "application/json")
        elif data is not None:
            kwargs["data"] = data
        response = self.successResultOf(self.treq.request(method, ISSUER + path, **kwargs))
        body = self.successResultOf(response.content())
        headers_out = {
            k.decode().lower(): b", ".join(v).decode()
            for k, v in response.headers.getAllRawHeaders()
        }
        return Response(response.code, headers_out, body)

    def register(self, **metadata: Any) -> dict[str, Any]:
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body=metadata,
        )
        self.assertEqual(response.code, 201, response.body)
        return response.json()  # type: ignore[no-any-return]

    def token(
        self,
        form: dict[str, str] | bytes,
        authorization: str | None = None,
    ) -> Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if authorization is not None:
            headers["Authorization"] = authorization
        if isinstance(form, dict):
            form = urlencode(form).encode()
        return self.request("POST", "/token", headers=headers, data=form)

    def verify(self, access_token: str, audience: str = ISSUER) -> dict[str, Any]:
        jwks = self.request("GET", "/jwks.json").json()
        kid = jwt.get_unverified_header(access_token)["kid"]
        key = jwt.PyJWK(next(j for j in jwks["keys"] if j["kid"] == kid))
        claims: dict[str, Any] = jwt.decode(
            access_token,
            key,
            algorithms=[self.signing_alg],
            audience=audience,
            issuer=ISSUER,
            # The tests' time is the Clock's: checked here, not by PyJWT.
            options={"verify_exp": False, "verify_iat": False},
        )
        self.assertLessEqual(claims["iat"], self.clock.seconds())
        self.assertGreater(claims["exp"], self.clock.seconds())
        return claims


class TokenLifecycle:
    """
    A L{ServerTestCase} mixin: issue a client's tokens, and introspect them
    as another client (RFC 7662), each answer checked.
    """

    def auth(self, client: dict[str, Any]) -> str:
        return basic(client["client_id"], client["client_secret"])

    def issue(self, client: dict[str, Any], **form: str) -> str:
        response = self.token({"grant_type": "client_credentials", **form}, self.auth(client))  # type: ignore[attr-defined]
        self.assertEqual(response.code, 200, response.body)  # type: ignore[attr-defined]
        return str(response.json()["access_token"])

    def stored(self, token: str) -> TokenRecord | None:
        """
        The record the store keeps of an opaque token, asked through the
        store's interface (L{ITokenStore.get_token}) under the token's key.
        """
        found: TokenRecord | None = self.successResultOf(  # type: ignore[attr-defined]
            self.store.get_token(credentials.opaque_token_key(token))  # type: ignore[attr-defined]
        )
        return found

    def gone(self, token: str) -> bool:
        """
        Whether the store has no record of an opaque token: not found, and
        not merely hidden by a client's revocation mark (there is nothing
        to delete).
        """
        key = credentials.opaque_token_key(token)
        return self.stored(token) is None and not self.successResultOf(  # type: ignore[attr-defined]
            self.store.delete_token(key)  # type: ignore[attr-defined]
        )

    def introspect(self, token: str, caller: dict[str, Any]) -> dict[str, Any]:
        response = self.request(  # type: ignore[attr-defined]
            "POST",
            "/token/introspect",
            headers={"Authorization": self.auth(caller), "Content-Type": "application/x-www-form-urlencoded"},
            data=f"token={token}".encode(),
        )
        self.assertEqual(response.code, 200, response.body)  # type: ignore[attr-defined]
        self.assertEqual(response.headers["cache-control"], "no-store")  # type: ignore[attr-defined]
        return response.json()  # type: ignore[no-any-return]


def assert_not_echoed(test: SynchronousTestCase, response: Response, *secrets: str) -> None:
    """
    No secret, nor its base64, appears anywhere in a response.
    """
    seen = response.body.decode("latin-1") + repr(response.headers)
    for secret in secrets:
        for form in (secret, base64.b64encode(secret.encode()).decode()):
            test.assertNotIn(form, seen, response.body)
