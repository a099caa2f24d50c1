"""
Client authentication with a JWT assertion (RFC 7523 §2.2, §3; OpenID
Connect Core §9): C{private_key_jwt}, signed with a key of the client's
registered JWK set (C{jwks}, or fetched from its C{jwks_uri}), and
C{client_secret_jwt}, an HMAC with the client's secret.

The checks, in the order they run, each failing as 401 C{invalid_client}
with a description for the client's developer that names what failed but
never a key, the assertion, or a value taken from it:

  1. the assertion is a compact JWS; its C{sub} names a registered client
     that authenticates with one of these two methods (and the form's
     C{client_id}, when given, is the same);
  2. its C{alg} is one the client's method allows (and its registered
     C{token_endpoint_auth_signing_alg}, if any); never C{none};
  3. a registered key verifies it: the one its C{kid} names (an unknown
     C{kid} fetches the C{jwks_uri} again, at most once per
     C{[client_auth] jwks_uri_refetch_seconds} per client, so that a client
     rotating its keys is accepted at once), or without a C{kid}, each of
     the client's keys that fits the C{alg};
  4. C{iss} = C{sub} = the client id; C{aud} names this server (its issuer,
     or the endpoint the assertion is sent to; RFC 7523 §3 item 3);
     C{exp} is present, not past, and at most C{[client_auth]
     max_assertion_lifetime} ahead; C{nbf} and C{iat} are not in the future
     (each with C{[client_auth] leeway}); C{jti} is present;
  5. the C{jti} was never used before (RFC 7523 §3 item 7): a one-time
     record in the store (L{ITokenStore.use_once}), shared by every
     instance, kept until the assertion's C{exp}.

All JOSE is L{ccserver.jose.verify}'s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from attrs import frozen
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from ccserver import jose
from ccserver.errors import invalid_client
from ccserver.interfaces import IClientStore, ITokenStore
from ccserver.keys import KeyDecryptionError, KeyEncryptor
from ccserver.model import Client
from ccserver.oauth import mtls
from ccserver.oauth.clientauth import ClientAssertion
from ccserver.oauth.registration import ASSERTION_ALGORITHMS, PRIVATE_JWK_MEMBERS
from ccserver.text import escape, identifier_problem

#: The largest JWK set a C{jwks_uri} may answer with.
MAX_JWKS_BYTES = 64 * 1024
#: Claims an assertion must carry (RFC 7523 §3; OpenID Connect Core §9
#: adds C{jti}).
_REQUIRED = ("iss", "sub", "aud", "exp", "jti")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)
#: Parsed JWK sets of clients registered with C{jwks}, kept at most this many.
_PARSED_CACHE_SIZE = 10_000


def jwk_public_key(jwk: Mapping[str, Any]) -> jose.PublicKey:
    """
    The public key a JWK (RFC 7517) holds, if it is one a client assertion
    may be signed with (RSA of 2048 bits or more, EC P-256, Ed25519/Ed448).

    @raise ValueError: it is not, or holds private members; the message
        names no member's value.
    """
    if any(name in jwk for name in PRIVATE_JWK_MEMBERS):
        raise ValueError("holds private members; only public keys are accepted")
    kty = jwk.get("kty")
    parsers: dict[str, Callable[[Any], Any]] = {
        "RSA": RSAAlgorithm.from_jwk,
        "EC": ECAlgorithm.from_jwk,
        "OKP": OKPAlgorithm.from_jwk,
    }
    if not isinstance(kty, str) or kty not in parsers:
        raise ValueError("kty must be RSA, EC or OKP")
    try:
        key = parsers[kty](dict(jwk))
    except Exception:
        raise ValueError(f"not a valid {kty} public key") from None
    if not any(jose.key_fits(alg, key) for alg in ASSERTION_ALGORITHMS["private_key_jwt"]):
        raise ValueError(
            "unusable key: RSA keys need 2048 bits or more, EC keys the P-256 curve"
        )
    return key  # type: ignore[no-any-return]


@frozen
class ClientKey:
    """
    One usable public key of a client's JWK set.
    """

    kid: str | None
    key: jose.PublicKey


def parse_jwks(jwks: object) -> tuple[ClientKey, ...]:
    """
    The usable signing keys of a JWK set; keys for encryption only
    (C{use: enc}), malformed or private ones are left out.
    """
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    found = []
    for jwk in keys if isinstance(keys, list) else ():
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            key = jwk_public_key(jwk)
        except ValueError:
            continue
        kid = jwk.get("kid")
        found.append(ClientKey(kid if isinstance(kid, str) else None, key))
    return tuple(found)


class JWKSUnavailable(Exception):
    """
    A C{jwks_uri} could not be fetched, or did not answer with a JWK set.
    """


class HTTPGetter(Protocol):
    """
    What the fetcher needs of an HTTP client: treq's C{get}
    (L{treq.client.HTTPClient}, or L{treq.testing.StubTreq} in tests).
    """

    def get(
        self,
        url: str,
        /,
        *,
        headers: Headers,
        allow_redirects: bool,
        unbuffered: bool,
        reactor: Any,
    ) -> Deferred[Any]: ...


def cache_seconds(cache_control: str | None, default: int, low: int, high: int) -> int:
    """
    How long to keep a fetched JWK set: the answer's C{Cache-Control}
    C{max-age} (RFC 9111 §5.2.2.1), or C{default} without one, held between
    C{low} and C{high}.  C{no-store} or C{no-cache} mean as short as allowed:
    refetching on every assertion would let a client's server set our pace.
    """
    seconds = default
    if cache_control:
        lowered = cache_control.lower()
        match = _MAX_AGE.search(lowered)
        if "no-store" in lowered or "no-cache" in lowered:
            seconds = low
        elif match:
            seconds = int(match.group(1))
    return max(low, min(high, seconds))


@frozen
class FetchedJWKS:
    """
    What a client's C{jwks_uri} answered: its usable signing keys (for
    C{private_key_jwt}), and the certificates its keys carry (the first of
    each C{x5c}: for C{self_signed_tls_client_auth}, RFC 8705 §2.2.2).
    """

    keys: tuple[ClientKey, ...]
    certificates: tuple[bytes, ...]


@frozen
class _Cached:
    fetched: FetchedJWKS
    expires_at: float


class JWKSFetcher:
    """
    Fetches and caches clients' JWK sets from their C{jwks_uri}.

    A fetch is bounded in time (C{timeout}) and size (L{MAX_JWKS_BYTES}),
    never follows redirects, and answers other than 200 with a JWK set
    fail it.  Concurrent requests for one URI share one fetch.
    """

    _log = Logger()

    def __init__(
        self,
        http: HTTPGetter,
        clock: IReactorTime,
        *,
        timeout: float,
        default_cache: int,
        min_cache: int,
        max_cache: int,
        refetch_interval: float,
        close: Callable[[], Deferred[None] | None] | None = None,
    ) -> None:
        """
        @param http: the HTTP client (over a connection pool the caller
            made, or this fetcher's: see C{close}).
        @param close: releases the HTTP client's connection pool, called by
            L{close}.
        """
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._default_cache = default_cache
        self._min_cache = min_cache
        self._max_cache = max_cache
        self._refetch_interval = refetch_interval
        self._close = close
        self._cache: dict[str, _Cached] = {}
        self._in_flight: dict[str, list[Deferred[FetchedJWKS]]] = {}
        #: client_id -> when its jwks_uri was last fetched because of an unknown kid
        self._refetched: dict[str, float] = {}

    async def keys(
        self, client_id: str, uri: str, *, refresh: bool = False
    ) -> tuple[ClientKey, ...]:
        """
        The client's keys, from the cache while it is fresh.

        @param refresh: an assertion named a C{kid} the cached set does not
            have: fetch again, unless this client did so less than
            C{refetch_interval} seconds ago.
        @raise JWKSUnavailable: it could not be fetched (and is not cached).
        """
        return (await self.fetched(client_id, uri, refresh=refresh)).keys

    async def certificates(
        self, client_id: str, uri: str, *, refresh: bool = False
    ) -> tuple[bytes, ...]:
        """
        The DER certificates of the client's keys (RFC 8705 §2.2.2), from
        the same cache as L{keys}.

        @param refresh: the client presented a certificate the cached set
            does not have: fetch again, within the same limit as an
            unknown C{kid}.
        @raise JWKSUnavailable: it could not be fetched (and is not cached).
        """
        return (await self.fetched(client_id, uri, refresh=refresh)).certificates

    async def fetched(
        self, client_id: str, uri: str, *, refresh: bool = False
    ) -> FetchedJWKS:
        """
        The client's JWK set, parsed; see L{keys}.
        """
        now = self._clock.seconds()
        cached = self._cache.get(uri)
        if cached is not None and cached.expires_at > now:
            if not refresh:
                return cached.fetched
            last = self._refetched.get(client_id)
            if last is not None and now - last < self._refetch_interval:
                return cached.fetched
        if refresh:
            self._refetched[client_id] = now
        try:
            return await self._shared_fetch(uri)
        except JWKSUnavailable:
            if cached is not None and refresh:
                # a refetch that failed leaves the fresh set as it was
                return cached.fetched
            raise

    def _shared_fetch(self, uri: str) -> Deferred[FetchedJWKS]:
        waiter: Deferred[FetchedJWKS] = Deferred()
        waiters = self._in_flight.get(uri)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._in_flight[uri] = [waiter]

        def done(result: Any) -> None:
            for each in self._in_flight.pop(uri, []):
                if isinstance(result, BaseException):
                    each.errback(result)
                else:
                    each.callback(result)

        fetch = Deferred.fromCoroutine(self._fetch(uri))
        fetch.addTimeout(self._timeout, self._clock)
        fetch.addErrback(self._unavailable, uri)
        fetch.addCallbacks(done, lambda failure: done(failure.value))
        return waiter

    async def _fetch(self, uri: str) -> FetchedJWKS:
        from ccserver.handlers.webhook import read_body

        response: IResponse = await self._http.get(
            uri,
            headers=Headers({b"Accept": [b"application/jwk-set+json, application/json"]}),
            allow_redirects=False,
            unbuffered=True,
            # treq would otherwise import the global reactor
            reactor=self._clock,
        )
        body = await read_body(response, MAX_JWKS_BYTES)
        if response.code != 200:
            raise JWKSUnavailable(f"it answered {response.code}")
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise JWKSUnavailable("the answer is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise JWKSUnavailable("the answer is not a JWK set")
        fetched = FetchedJWKS(
            parse_jwks(document), tuple(mtls.jwks_certificates(document))
        )
        control = response.headers.getRawHeaders(b"cache-control")
        seconds = cache_seconds(
            b", ".join(control).decode("latin-1") if control else None,
            self._default_cache,
            self._min_cache,
            self._max_cache,
        )
        self._cache[uri] = _Cached(fetched, self._clock.seconds() + seconds)
        return fetched

    def _unavailable(self, failure: Any, uri: str) -> None:
        # the HTTP client wraps the cancellation (ResponseNeverReceived)
        nested = getattr(failure.value, "reasons", ())
        if failure.check(defer.TimeoutError, defer.CancelledError) or any(
            reason.check(defer.CancelledError) for reason in nested
        ):
            reason = f"no answer within {self._timeout:g}s"
        else:
            reason = failure.getErrorMessage() or type(failure.value).__name__
        self._log.warn(
            "Could not fetch the JWK set at {uri}, so clients authenticating with its keys "
            "or certificates fail: {reason}",
            # a client's text, and what its server answered: escaped
            uri=escape(uri),
            reason=escape(reason),
        )
        raise JWKSUnavailable(reason)

    def close(self) -> Deferred[None]:
        """
        Release the HTTP connection pool (at shutdown).
        """
        closed = self._close() if self._close is not None else None
        return closed if closed is not None else defer.succeed(None)


class AssertionVerifier:
    """
    Authenticates a client by its JWT assertion; see the module docstring.
    """

    _log = Logger()

    def __init__(
        self,
        *,
        tokens: ITokenStore,
        issuer: str,
        now: Callable[[], float],
        max_lifetime: int,
        leeway: int,
        jwks_fetcher: JWKSFetcher | None = None,
        secret_encryptor: KeyEncryptor | None = None,
    ) -> None:
        """
        @param tokens: where one-time records (C{jti}s) are kept.
        @param jwks_fetcher: fetches C{jwks_uri}s; without one, clients
            registered with a C{jwks_uri} cannot authenticate.
        @param secret_encryptor: decrypts C{client_secret_jwt} secrets.
        """
        self._tokens = tokens
        self._issuer = issuer
        # RFC 7523 §3 item 3: the token endpoint URL or the issuer.  Authlib
        # and others name the endpoint they post to, so this server's other
        # client-authenticating endpoints count too.
        self._audience = frozenset(
            {issuer, f"{issuer}/token", f"{issuer}/token/introspect", f"{issuer}/token/revoke"}
        )
        self._now = now
        self._max_lifetime = max_lifetime
        self._leeway = leeway
        self._jwks = jwks_fetcher
        self._secret_encryptor = secret_encryptor
        self._parsed: dict[str, tuple[object, tuple[ClientKey, ...]]] = {}

    async def authenticate(self, clients: IClientStore, presented: ClientAssertion) -> Client:
        assertion = presented.assertion
        try:
            header, claims = jose.unverified(assertion)
        except jose.JOSEError as e:
            raise invalid_client(f"client_assertion: {e}") from None
        client_id = _identifier("the sub claim", claims.get("sub"))
        if presented.client_id is not None and presented.client_id != client_id:
            raise invalid_client("client_id differs from the sub claim of the client_assertion")
        client = await clients.get_client(client_id)
        if client is None:
            raise invalid_client()
        method = client.token_endpoint_auth_method
        if method not in ASSERTION_ALGORITHMS:
            raise invalid_client(
                "this client is not registered to authenticate with a client assertion"
            )
        registered_alg = client.metadata.get("token_endpoint_auth_signing_alg")
        algorithms = (registered_alg,) if registered_alg else ASSERTION_ALGORITHMS[method]
        alg = header.get("alg")
        if alg not in algorithms:
            raise invalid_client(
                f"client_assertion: the JWS alg is not allowed for this client ({method}); "
                "use " + ", ".join(algorithms)
            )
        assert isinstance(alg, str)
        candidates = await self._candidates(client, method, alg, header.get("kid"))
        verified = self._verify(assertion, candidates, client_id, algorithms)
        claims = verified.claims
        now = self._now()
        exp = float(claims["exp"])
        if exp > now + self._max_lifetime + self._leeway:
            raise invalid_client(
                f"client_assertion: exp is more than {self._max_lifetime} seconds ahead; "
                "make short-lived assertions, one per request"
            )
        iat = claims.get("iat")
        if iat is not None:
            if isinstance(iat, bool) or not isinstance(iat, (int, float)) or not math.isfinite(iat):
                raise invalid_client("client_assertion: the iat claim is not a NumericDate")
            if iat > now + self._leeway:
                raise invalid_client("client_assertion: iat is in the future; check the clock")
        jti = _identifier("the jti claim", claims["jti"])
        if not await self._tokens.use_once(f"assertion:{client_id}:{jti}", math.ceil(exp)):
            raise invalid_client(
                "client_assertion: this assertion (its jti) was used already; "
                "make a new one for each request"
            )
        return client

    def _verify(
        self,
        assertion: str,
        candidates: Sequence[jose.VerificationKey],
        client_id: str,
        algorithms: Sequence[str],
    ) -> jose.Verified:
        for key in candidates:
            try:
                verified = jose.verify(
                    assertion,
                    key,
                    algorithms=algorithms,
                    issuer=client_id,
                    audience=self._audience,
                    required=_REQUIRED,
                    now=self._now(),
                    leeway=self._leeway,
                )
            except jose.BadSignature:
                continue
            except jose.JOSEError as e:
                raise invalid_client(f"client_assertion: {e}") from None
            return verified
        raise invalid_client(
            "client_assertion: the signature does not verify with the client's registered "
            + ("secret" if candidates and isinstance(candidates[0], bytes) else "keys")
        )

    async def _candidates(
        self, client: Client, method: str, alg: str, kid: object
    ) -> Sequence[jose.VerificationKey]:
        """
        The keys to try: the client's secret, or its public keys that the
        C{kid} names (all that fit C{alg} when there is no C{kid}).
        """
        if method == "client_secret_jwt":
            return [self._secret(client)]
        if kid is not None:
            kid = _identifier("the JWS kid", kid)
        keys = await self._public_keys(client, refresh=False)
        chosen = _choose(keys, alg, kid)
        if not chosen and kid is not None and "jwks_uri" in client.metadata:
            # an unknown kid: the client may have rotated its keys
            chosen = _choose(await self._public_keys(client, refresh=True), alg, kid)
        if not chosen:
            raise invalid_client(
                "client_assertion: no registered key of the client has this kid"
                if kid is not None
                else "client_assertion: no registered key of the client fits the JWS alg"
            )
        return chosen

    def _secret(self, client: Client) -> bytes:
        if client.encrypted_secret is None or self._secret_encryptor is None:
            raise invalid_client("this client has no secret for client_secret_jwt")
        try:
            return self._secret_encryptor.decrypt_secret(client.encrypted_secret).encode("utf-8")
        except KeyDecryptionError as e:
            self._log.error("Client {client_id}: {error}", client_id=client.client_id, error=str(e))
            raise invalid_client() from None

    async def _public_keys(self, client: Client, *, refresh: bool) -> tuple[ClientKey, ...]:
        jwks = client.metadata.get("jwks")
        if jwks is not None:
            kept = self._parsed.get(client.client_id)
            if kept is not None and kept[0] is jwks:
                return kept[1]
            keys = parse_jwks(jwks)
            if len(self._parsed) >= _PARSED_CACHE_SIZE:
                self._parsed.clear()
            self._parsed[client.client_id] = (jwks, keys)
            return keys
        uri = client.metadata.get("jwks_uri")
        if not isinstance(uri, str) or self._jwks is None:
            raise invalid_client("this client has no registered keys")
        try:
            return await self._jwks.keys(client.client_id, uri, refresh=refresh)
        except JWKSUnavailable:
            raise invalid_client(
                "the client's jwks_uri could not be fetched; try again shortly"
            ) from None


def _identifier(name: str, value: object) -> str:
    """
    C{value}, a value of the assertion that a store is asked about (C{sub},
    C{jti}) or keys are looked up by (C{kid}), if it keeps
    L{identifier_problem}'s rule.
    """
    problem = identifier_problem(value)
    if problem is not None:
        raise invalid_client(f"client_assertion: {name} {problem}")
    assert isinstance(value, str)
    return value


def _choose(
    keys: Sequence[ClientKey], alg: str, kid: str | None
) -> list[jose.VerificationKey]:
    return [
        k.key
        for k in keys
        if (kid is None or k.kid == kid) and jose.key_fits(alg, k.key)
    ]
