"""
What the soak's load knows and sends: the clients (registered at the
start, and those the load registers, updates and deletes), the tokens it
holds that are still alive, and the next request of the mix.

No I/O and no clock of its own: the load (load.py) asks for a request,
sends it, and hands the answer back; the state changes only on the
answer each kind expects, so a failed request changes nothing.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import secrets
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.servers import basic

BASIC = "client_secret_basic"
PRIVATE_KEY_JWT = "private_key_jwt"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Seconds an assertion is valid for (below [client_auth]
#: max_assertion_lifetime's 300): its jti is kept in the store as long.
ASSERTION_LIFETIME = 60
#: A token counts as alive until this many seconds before the expiry its
#: answer gave (counted from when the request was sent), so that the load
#: never introspects one the server may just have seen expire.
EXPIRY_MARGIN = 2.0
#: What every client registers and what every token asks for.
SCOPE = "read write"
TOKEN_FORM = {"grant_type": "client_credentials", "scope": "read"}
#: The answer recorded when introspection calls a token the load holds as
#: alive inactive: a token answered 200 and lost, or revoked by no one.
LOST = "200 inactive"
#: The status each kind of request expects: any other answer is a failure.
EXPECTED_STATUS = {
    "token": 200,
    "token_jwt": 200,
    "introspect": 200,
    "revoke": 200,
    "jwks": 200,
    "register": 201,
    "update": 200,
    "delete": 204,
    "rotate_secret": 200,
}


@dataclass
class Client:
    client_id: str
    auth_method: str = BASIC
    secret: str = ""
    #: a dynamic client's, for its PUT and DELETE
    registration_access_token: str = ""
    dynamic: bool = False
    name: str = ""
    updates: int = 0
    #: requests naming it now (as the caller, or the owner of the token)
    in_flight: int = 0
    #: its DELETE is sent: nothing new may use it
    leaving: bool = False
    #: a rotated secret, and from when the load uses it: once every
    #: process's cache of the client ([store] client_cache_seconds) has
    #: the new record; the old secret works through the rotation's grace
    next_secret: tuple[str, float] | None = None

    def secret_at(self, now: float) -> str:
        if self.next_secret is not None and now >= self.next_secret[1]:
            self.secret, self.next_secret = self.next_secret[0], None
        return self.secret


@dataclass
class Request:
    kind: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    #: the clients and token it names, held (in flight) until it ends
    clients: tuple[Client, ...] = ()
    token: str | None = None
    #: what the expected answer changes: called with its body, the time
    #: the request was sent and the time its answer came; it returns the
    #: answer to record, if not the status
    on_answer: Callable[[bytes, float, float], str | None] | None = None

    @property
    def expected(self) -> int:
        """
        The status the kind expects; any other answer is a failure.
        """
        return EXPECTED_STATUS[self.kind]


class LiveTokens:
    """
    The opaque tokens the load was issued that are still alive (not
    expired, revoked, or their client deleted): counted, and picked at
    random for introspection and revocation.  A picked token is busy until
    its request ends, so that no revocation races an introspection of it.
    """

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}
        #: token -> (client id, expires at)
        self._info: dict[str, tuple[str, float]] = {}
        self._expiries: list[tuple[float, str]] = []
        self._by_client: dict[str, set[str]] = {}
        self.busy: set[str] = set()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, token: str, client_id: str, expires_at: float) -> None:
        if token in self._info:
            return
        self._index[token] = len(self._items)
        self._items.append(token)
        self._info[token] = (client_id, expires_at)
        self._by_client.setdefault(client_id, set()).add(token)
        heapq.heappush(self._expiries, (expires_at, token))

    def discard(self, token: str) -> bool:
        info = self._info.pop(token, None)
        if info is None:
            return False
        at = self._index.pop(token)
        last = self._items.pop()
        if last != token:
            self._items[at] = last
            self._index[last] = at
        owned = self._by_client.get(info[0])
        if owned is not None:
            owned.discard(token)
            if not owned:
                del self._by_client[info[0]]
        return True

    def discard_client(self, client_id: str) -> int:
        """
        Forget the tokens of a deleted client; how many there were.
        """
        tokens = self._by_client.pop(client_id, set())
        for token in list(tokens):
            self.discard(token)
        return len(tokens)

    def expire(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, token = heapq.heappop(self._expiries)
            info = self._info.get(token)
            if info is not None and info[1] == expires_at:
                self.discard(token)

    def count(self, now: float) -> int:
        self.expire(now)
        return len(self._items)

    def owner(self, token: str) -> str | None:
        info = self._info.get(token)
        return None if info is None else info[0]

    def pick(self, rng: random.Random, now: float, tries: int = 8) -> tuple[str, str] | None:
        """
        A random live token that is not busy, and its client's id.
        """
        self.expire(now)
        for _ in range(tries if self._items else 0):
            token = self._items[rng.randrange(len(self._items))]
            if token not in self.busy:
                return token, self._info[token][0]
        return None


class AssertionSigner:
    """
    A private_key_jwt client's key: a fresh ES256 client assertion (RFC
    7523 §3) for each request, each with its own jti.
    """

    def __init__(self, kid: str | None = None) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = kid or "soak-" + secrets.token_hex(4)

    def public_jwk(self) -> dict[str, Any]:
        from jwt.algorithms import ECAlgorithm  # noqa: PLC0415

        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}

    def assertion(self, client_id: str, audience: str, now: float) -> str:
        import jwt  # noqa: PLC0415

        issued = int(now)
        claims = {"iss": client_id, "sub": client_id, "aud": audience, "iat": issued,
                  "exp": issued + ASSERTION_LIFETIME, "jti": secrets.token_urlsafe(16)}
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})


def form(fields: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(fields).encode()


FORM_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}
JSON_TYPE = {"Content-Type": "application/json"}


class Traffic:
    """
    The clients and live tokens, and the requests of the mix built from
    them.

    @param weights: kind -> weight of the mix (options.MIX's kinds).
    @param max_dynamic: at most this many clients registered by the load
        at once; deletions stop at a quarter of it.
    @param switch_after: seconds from a secret rotation's answer to the
        load's first use of the new secret.
    """

    def __init__(
        self,
        issuer: str,
        master_token: str,
        weights: dict[str, float],
        rng: random.Random,
        *,
        max_dynamic: int,
        switch_after: float,
        signer: AssertionSigner | None = None,
    ) -> None:
        self.issuer = issuer
        self.master_token = master_token
        self.rng = rng
        self.signer = signer
        self.max_dynamic = max_dynamic
        self.min_dynamic = max_dynamic // 4
        self.switch_after = switch_after
        chosen = [(kind, weight) for kind, weight in weights.items() if weight > 0]
        self._kinds = [kind for kind, _ in chosen]
        self._cumulative = list(itertools.accumulate(weight for _, weight in chosen))
        self.clients: list[Client] = []
        self.dynamic: list[Client] = []
        self.tokens = LiveTokens()
        #: registrations sent and not answered yet (they count against
        #: max_dynamic)
        self.registering = 0
        self._names = itertools.count(1)
        self._rotations = itertools.count()
        #: the keys /jwks.json listed last
        self.jwks_keys: int | None = None

    # -- the requests --------------------------------------------------

    def next_request(self, now: float) -> Request:
        """
        The next request of the mix: a kind drawn by weight, or a token
        request when that kind has nothing to work on now.
        """
        kind = self.rng.choices(self._kinds, cum_weights=self._cumulative)[0]
        request = self.build(kind, now) or self.build("token", now)
        assert request is not None, "no client to ask for a token"
        self._hold(request)
        return request

    def rotation(self, now: float) -> Request | None:
        """
        Rotate the next client_secret_basic client's secret (in turn;
        one that has a rotation still to take up is passed over).
        """
        candidates = [c for c in self.clients if c.auth_method == BASIC and c.next_secret is None]
        if not candidates:
            return None
        client = candidates[next(self._rotations) % len(candidates)]

        def answered(body: bytes, sent: float, received: float) -> None:
            client.next_secret = (str(json.loads(body)["client_secret"]), received + self.switch_after)

        request = Request("rotate_secret", "POST", f"/client-reg/{client.client_id}/rotate-secret",
                          self._master(), b"", on_answer=_recorded(answered))
        self._hold(request)
        return request

    def finished(self, request: Request) -> None:
        for client in request.clients:
            client.in_flight -= 1
        if request.token is not None:
            self.tokens.busy.discard(request.token)
        if request.kind == "register":
            self.registering -= 1

    def build(self, kind: str, now: float) -> Request | None:
        maker: Callable[[float], Request | None] = getattr(self, "_" + kind)
        return maker(now)

    def _token(self, now: float) -> Request | None:
        return self._token_for(self._usable(BASIC), now)

    def _token_jwt(self, now: float) -> Request | None:
        return self._token_for(self._usable(PRIVATE_KEY_JWT), now)

    def _token_for(self, candidates: list[Client], now: float) -> Request | None:
        if not candidates:
            return None
        client = self.rng.choice(candidates)
        headers, fields = self._authentication(client, now)

        def answered(body: bytes, sent: float, received: float) -> None:
            document = json.loads(body)
            expires_at = sent + float(document["expires_in"]) - EXPIRY_MARGIN
            self.tokens.add(str(document["access_token"]), client.client_id, expires_at)

        kind = "token" if client.auth_method == BASIC else "token_jwt"
        return Request(kind, "POST", "/token", headers, form({**TOKEN_FORM, **fields}), (client,),
                       on_answer=_recorded(answered))

    def _introspect(self, now: float) -> Request | None:
        picked = self._pick_token(now)
        if picked is None:
            return None
        token, client = picked
        headers, fields = self._authentication(client, now)

        def answered(body: bytes, sent: float, received: float) -> str | None:
            return None if json.loads(body).get("active") is True else LOST

        return Request("introspect", "POST", "/token/introspect", headers, form({"token": token, **fields}),
                       (client,), token, answered)

    def _revoke(self, now: float) -> Request | None:
        picked = self._pick_token(now)
        if picked is None:
            return None
        token, client = picked
        # no longer alive for the load, whatever the answer: never picked again
        self.tokens.discard(token)
        headers, fields = self._authentication(client, now)
        body = form({"token": token, "token_type_hint": "access_token", **fields})
        return Request("revoke", "POST", "/token/revoke", headers, body, (client,), token)

    def _jwks(self, now: float) -> Request | None:
        def answered(body: bytes, sent: float, received: float) -> None:
            self.jwks_keys = len(json.loads(body)["keys"])

        return Request("jwks", "GET", "/jwks.json", {}, None, on_answer=_recorded(answered))

    def _register(self, now: float) -> Request | None:
        if len(self.dynamic) + self.registering >= self.max_dynamic:
            return self._delete_one(now)
        name = f"soak-{next(self._names)}"

        def answered(body: bytes, sent: float, received: float) -> None:
            document = json.loads(body)
            self.dynamic.append(Client(
                str(document["client_id"]), BASIC, str(document["client_secret"]),
                str(document["registration_access_token"]), dynamic=True, name=name,
            ))

        self.registering += 1
        body = json.dumps({"client_name": name, "scope": SCOPE}).encode()
        return Request("register", "POST", "/client-reg", {**self._master(), **JSON_TYPE}, body,
                       on_answer=_recorded(answered))

    def _update(self, now: float) -> Request | None:
        candidates = [c for c in self.dynamic if not c.leaving]
        if not candidates:
            return None
        client = self.rng.choice(candidates)
        client.updates += 1
        body = json.dumps({"client_id": client.client_id, "client_name": f"{client.name} v{client.updates + 1}",
                           "scope": SCOPE}).encode()
        headers = {"Authorization": "Bearer " + client.registration_access_token, **JSON_TYPE}
        return Request("update", "PUT", f"/client-reg/{client.client_id}", headers, body, (client,))

    def _delete(self, now: float) -> Request | None:
        if len([c for c in self.dynamic if not c.leaving]) <= self.min_dynamic:
            return self._register(now)
        return self._delete_one(now)

    def _delete_one(self, now: float) -> Request | None:
        idle = [c for c in self.dynamic if not c.leaving and c.in_flight == 0]
        if not idle:
            return None
        client = self.rng.choice(idle)
        client.leaving = True

        def answered(body: bytes, sent: float, received: float) -> None:
            self.dynamic.remove(client)
            self.tokens.discard_client(client.client_id)

        headers = {"Authorization": "Bearer " + client.registration_access_token}
        return Request("delete", "DELETE", f"/client-reg/{client.client_id}", headers, None, (client,),
                       on_answer=_recorded(answered))

    # -- helpers -------------------------------------------------------

    def _usable(self, method: str) -> list[Client]:
        return [c for c in (*self.clients, *self.dynamic) if c.auth_method == method and not c.leaving]

    def _client(self, client_id: str) -> Client | None:
        for client in (*self.clients, *self.dynamic):
            if client.client_id == client_id:
                return client
        return None

    def _pick_token(self, now: float) -> tuple[str, Client] | None:
        picked = self.tokens.pick(self.rng, now)
        if picked is None:
            return None
        client = self._client(picked[1])
        if client is None or client.leaving:
            return None
        return picked[0], client

    def _authentication(self, client: Client, now: float) -> tuple[dict[str, str], dict[str, str]]:
        """
        The headers and form fields that authenticate C{client}.
        """
        if client.auth_method == PRIVATE_KEY_JWT:
            assert self.signer is not None
            assertion = self.signer.assertion(client.client_id, self.issuer, now)
            return dict(FORM_TYPE), {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
        return {"Authorization": "Basic " + basic(client.client_id, client.secret_at(now)), **FORM_TYPE}, {}

    def _master(self) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.master_token}

    def _hold(self, request: Request) -> None:
        for client in request.clients:
            client.in_flight += 1
        if request.token is not None:
            self.tokens.busy.add(request.token)


def _recorded(change: Callable[[bytes, float, float], None]) -> Callable[[bytes, float, float], str | None]:
    """
    An answer handler that changes the state and lets the status be recorded.
    """

    def handler(body: bytes, sent: float, received: float) -> str | None:
        change(body, sent, received)
        return None

    return handler
