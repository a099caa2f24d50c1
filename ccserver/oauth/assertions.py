"""
Client authentication with a JWT assertion (RFC 7523 §2.2, §3; OpenID
Connect Core §9): C{private_key_jwt}, signed with a key of the client's
registered JWK set (C{jwks}, or fetched from its C{jwks_uri}), and
C{client_secret_jwt}, an HMAC with the client's secret.

The checks, in the order they run, each failing as 401 C{invalid_client}:

  1. the assertion is a compact JWS whose C{sub} names a client (and the
     form's C{client_id}, when given, is the same);
  2. that client is registered, for one of these two methods;
  3. its C{alg} is one the client's method allows (and its registered
     C{token_endpoint_auth_signing_alg}, if any); never C{none};
  4. a key of the client verifies it: the one its C{kid} names (an unknown
     C{kid} fetches the C{jwks_uri} again, at most once per
     C{[client_auth] jwks_uri_refetch_seconds} per client, so that a client
     rotating its keys is accepted at once), or without a C{kid}, each of
     the client's keys that fits the C{alg}.  No more than
     L{MAX_CANDIDATES} keys are ever tried: an assertion that would need
     more (no C{kid}, and three keys of its type) is refused unchecked, so
     that no assertion, however junk, costs more than two signature checks;
  5. C{iss} = C{sub} = the client id; C{aud} names this server (its issuer,
     or the endpoint the assertion is sent to; RFC 7523 §3 item 3);
     C{exp} is present and not past; C{nbf} and C{iat} are not in the
     future (each with C{[client_auth] leeway}); C{jti} is present; and
     the assertion is fresh (L{acceptable_until});
  6. the C{jti} was never used before (RFC 7523 §3 item 7): a one-time
     record in the store (L{ITokenStore.use_once}), shared by every
     instance, kept for as long as the assertion could be accepted.

What a failure says depends on what an attacker could learn from it.  The
checks of 1. look at the assertion alone, and say what is wrong.  Those of
2. to 4. depend on the client's registration: until the signature is
found good, every one of them answers C{client authentication failed}, as
a wrong secret does, so that no answer tells whether a client id exists,
how it authenticates or which keys it has (the server's log says which,
at the info level).  The one exception is a C{jwks_uri} that cannot be
fetched, which says so, the same way whatever the cause
(L{ccserver.keysets}).  After the signature, the checks of 5. and 6. say
what failed: only the key's holder can read them.

All JOSE is L{ccserver.jose}'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from attrs import field, frozen
from twisted.logger import Logger

from ccserver import jose
from ccserver.errors import invalid_client
from ccserver.interfaces import IClientStore, ITokenStore
from ccserver.keys import KeyDecryptionError, KeyEncryptor
from ccserver.keysets import KeySetSource, KeySetUnavailable
from ccserver.model import Client
from ccserver.text import identifier_problem

#: RFC 7523 §2.2: the C{client_assertion_type} of a JWT client assertion.
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: The JWS algorithms of a client assertion, per method (RFC 7523 §2.2,
#: OpenID Connect Core §9): asymmetric for private_key_jwt, HMAC for
#: client_secret_jwt; never C{none}.
ASSERTION_ALGORITHMS: Mapping[str, tuple[str, ...]] = {
    "private_key_jwt": ("RS256", "PS256", "ES256", "EdDSA"),
    "client_secret_jwt": ("HS256", "HS384", "HS512"),
}
#: The most keys a client's JWK set may hold, registered (C{jwks}) or
#: fetched (C{jwks_uri}).
MAX_CLIENT_KEYS = 20
#: The most keys one assertion is checked against (see the module docstring).
MAX_CANDIDATES = 2
#: Claims an assertion must carry (RFC 7523 §3; OpenID Connect Core §9
#: adds C{jti}).
_REQUIRED = ("iss", "sub", "aud", "exp", "jti")
#: Parsed JWK sets of clients registered with C{jwks}, kept at most this many.
_PARSED_CACHE_SIZE = 10_000
_FAILED = "client authentication failed"


@frozen
class ClientAssertion:
    """
    A JWT client assertion (RFC 7523 §2.2) as a request presented it, the
    form's C{client_id} if it had one, and its C{client_assertion_type}
    (L{JWT_BEARER}, or for a SPIFFE JWT-SVID the SPIFFE draft's).
    """

    client_id: str | None
    assertion: str = field(repr=False)
    assertion_type: str = JWT_BEARER


def client_keys(jwks: object) -> tuple[jose.JWK, ...]:
    """
    The usable signing keys of a client's JWK set: keys for encryption only
    (C{use: enc}) and keys L{jose.import_jwk} refuses are left out, and so
    is everything past the first L{MAX_CLIENT_KEYS} keys.
    """
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        return ()
    usable = jose.import_jwk_set({"keys": keys[:MAX_CLIENT_KEYS]}, MAX_CLIENT_KEYS)
    return tuple(key for key in usable if key.use in (None, "sig"))


def choose(keys: Sequence[jose.JWK], alg: str, kid: str | None) -> list[jose.JWK]:
    """
    The keys an assertion signed with C{alg} is checked against: those that
    fit C{alg}, and carry C{kid} when the assertion names one.
    """
    return [
        key
        for key in keys
        if (kid is None or key.kid == kid) and jose.key_fits(alg, key.key)
    ]


def unselectable(keys: Sequence[jose.JWK], algorithms: Sequence[str]) -> str | None:
    """
    Why some key of a JWK set could never verify an assertion, or None.
    A key is chosen by its C{kid}, or without one among all the keys of its
    type; either way at most L{MAX_CANDIDATES} may be found.
    """
    for key in keys:
        for alg in algorithms:
            if not jose.key_fits(alg, key.key):
                continue
            if len(choose(keys, alg, key.kid)) > MAX_CANDIDATES:
                if key.kid is None:
                    return (
                        f"more than {MAX_CANDIDATES} keys fit {alg} and some have no kid: "
                        "give each key its own kid"
                    )
                return f"more than {MAX_CANDIDATES} keys share one kid"
    return None


def acceptable_until(
    exp: float, iat: float | None, now: float, window: int, leeway: int
) -> float:
    """
    Until when an assertion can be accepted, and so its C{jti} must be
    remembered (RFC 7523 §3 item 7): the store of C{jti}s holds nothing
    longer than C{window + 2 * leeway} seconds.

    With C{iat}: until C{min(exp, iat + window) + leeway}.  Its C{exp} may
    lie far ahead (Authlib makes every assertion for an hour, and offers no
    setting); what bounds it is its C{iat}, which must be recent.  RFC 7523
    §3 item 6 lets a server refuse an C{iat} "unreasonably far in the
    past".  Without C{iat}: until C{exp + leeway}, and C{exp} may lie no
    more than C{window} (and the leeway) ahead.  Either way an assertion
    once past this time is never acceptable again.

    @raise OAuthError: it is not acceptable now.
    """
    if iat is None:
        if exp > now + window + leeway:
            raise invalid_client(
                f"client_assertion: exp is more than {window} seconds ahead and there is no "
                "iat; make short-lived assertions, one per request, or give their iat"
            )
        return exp + leeway
    if iat > now + leeway:
        raise invalid_client("client_assertion: iat is in the future; check the clock")
    until = min(exp, iat + window) + leeway
    if until <= now:
        raise invalid_client(
            f"client_assertion: iat is more than {window} seconds ago; "
            "make a new assertion for each request"
        )
    return until


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
        key_sets: KeySetSource | None = None,
        secret_encryptor: KeyEncryptor | None = None,
    ) -> None:
        """
        @param tokens: where one-time records (C{jti}s) are kept.
        @param max_lifetime: seconds an assertion is accepted after its
            C{iat} (or how far ahead an C{exp} without C{iat} may lie):
            C{[client_auth] max_assertion_lifetime}.
        @param key_sets: fetches C{jwks_uri}s; without one, clients
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
        self._key_sets = key_sets
        self._secret_encryptor = secret_encryptor
        self._parsed: dict[str, tuple[object, tuple[jose.JWK, ...]]] = {}

    async def authenticate(self, clients: IClientStore, presented: ClientAssertion) -> Client:
        assertion = presented.assertion
        try:
            header, claims = jose.unverified(assertion)
        except jose.JOSEError as e:
            raise invalid_client(f"client_assertion: {e}") from None
        client_id = assertion_identifier("the sub claim", claims.get("sub"))
        if presented.client_id is not None and presented.client_id != client_id:
            raise invalid_client("client_id differs from the sub claim of the client_assertion")
        client = await clients.get_client(client_id)
        if client is None:
            raise self._refused(client_id, "no such client")
        method = client.token_endpoint_auth_method
        if method not in ASSERTION_ALGORITHMS:
            raise self._refused(client_id, f"it authenticates with {method}")
        registered_alg = client.metadata.get("token_endpoint_auth_signing_alg")
        algorithms = (registered_alg,) if registered_alg else ASSERTION_ALGORITHMS[method]
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in algorithms:
            raise self._refused(
                client_id, f"the JWS alg is not one of {', '.join(algorithms)} ({method})"
            )
        candidates = await self._candidates(client, method, alg, header.get("kid"))
        verified = self._verify(assertion, candidates, client_id, algorithms)
        claims = verified.claims
        try:
            iat = jose.numeric_date(claims, "iat")
        except jose.JOSEError as e:
            raise invalid_client(f"client_assertion: {e}") from None
        until = acceptable_until(
            float(claims["exp"]), iat, self._now(), self._max_lifetime, self._leeway
        )
        jti = assertion_identifier("the jti claim", claims["jti"])
        if not await self._tokens.use_once(f"assertion:{client_id}:{jti}", math.ceil(until)):
            raise invalid_client(
                "client_assertion: this assertion (its jti) was used already; "
                "make a new one for each request"
            )
        return client

    def _refused(self, client_id: str, reason: str) -> Exception:
        """
        The one answer to an assertion refused for a reason of the client's
        registration, up to its signature: the reason goes to the log.
        """
        self._log.info(
            "Refused a client assertion for {client_id} ({reason}); it was told only: "
            "client authentication failed",
            client_id=client_id,
            reason=reason,
        )
        return invalid_client(_FAILED)

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
        raise self._refused(client_id, "the signature does not verify with its keys or secret")

    async def _candidates(
        self, client: Client, method: str, alg: str, kid: object
    ) -> Sequence[jose.VerificationKey]:
        """
        The keys to try: the client's secret, or its public keys that the
        C{kid} names (all that fit C{alg} when there is no C{kid}), no more
        than L{MAX_CANDIDATES}.
        """
        if method == "client_secret_jwt":
            return [self._secret(client)]
        if kid is not None:
            kid = assertion_identifier("the JWS kid", kid)
        chosen = choose(await self._public_keys(client), alg, kid)
        if not chosen and kid is not None and "jwks_uri" in client.metadata:
            # an unknown kid: the client may have rotated its keys
            chosen = choose(await self._public_keys(client, refetch=True), alg, kid)
        if not chosen:
            raise self._refused(
                client.client_id,
                "no key of the client has this kid" if kid is not None
                else f"no key of the client fits {alg}",
            )
        if len(chosen) > MAX_CANDIDATES:
            raise self._refused(
                client.client_id,
                f"{len(chosen)} of its keys fit {alg}"
                + ("" if kid is None else " and carry this kid")
                + f"; an assertion is checked against {MAX_CANDIDATES} at most: name one by kid",
            )
        return [key.key for key in chosen]

    def _secret(self, client: Client) -> bytes:
        if client.encrypted_secret is None or self._secret_encryptor is None:
            raise self._refused(client.client_id, "it has no secret for client_secret_jwt")
        try:
            return self._secret_encryptor.decrypt_secret(client.encrypted_secret).encode("utf-8")
        except KeyDecryptionError as e:
            self._log.error("Client {client_id}: {error}", client_id=client.client_id, error=str(e))
            raise invalid_client(_FAILED) from None

    async def _public_keys(self, client: Client, *, refetch: bool = False) -> tuple[jose.JWK, ...]:
        jwks = client.metadata.get("jwks")
        if jwks is not None:
            kept = self._parsed.get(client.client_id)
            if kept is not None and kept[0] is jwks:
                return kept[1]
            keys = client_keys(jwks)
            if len(self._parsed) >= _PARSED_CACHE_SIZE:
                self._parsed.clear()
            self._parsed[client.client_id] = (jwks, keys)
            return keys
        uri = client.metadata.get("jwks_uri")
        if not isinstance(uri, str) or self._key_sets is None:
            raise self._refused(client.client_id, "it has no registered keys")
        try:
            key_set = await self._key_sets.key_set(
                uri, refetch_for=client.client_id if refetch else None
            )
        except KeySetUnavailable:
            raise invalid_client(
                "the client's jwks_uri could not be fetched; try again shortly"
            ) from None
        return tuple(key for key in key_set.keys if key.use in (None, "sig"))


def assertion_identifier(name: str, value: object) -> str:
    """
    C{value}, a value of the assertion that a store is asked about (C{sub},
    C{jti}) or keys are looked up by (C{kid}), if it keeps
    L{identifier_problem}'s rule.

    @raise OAuthError: C{invalid_client} (RFC 7523 §3.2) naming C{name}.
    """
    problem = identifier_problem(value)
    if problem is not None:
        raise invalid_client(f"client_assertion: {name} {problem}")
    assert isinstance(value, str)
    return value
