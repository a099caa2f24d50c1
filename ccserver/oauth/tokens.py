"""
Minting access tokens: JWTs per RFC 9068, signed with the current key, or
opaque tokens of 256 random bits (after the time they were made) kept in
the store as digests; and where a JWT's signature is computed (inline, or
RSA in threads).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from ccserver import credentials
from ccserver.errors import invalid_request
from ccserver.interfaces import ITokenStore
from ccserver.keys import Keyring, SigningKey
from ccserver.model import (
    EMPTY,
    RESERVED_CLAIMS,
    Client,
    Delegation,
    GrantAuthorization,
    IssuedToken,
    TokenRecord,
)

JWT = "jwt"
OPAQUE = "opaque"

#: Signs claims with a key, at once or later: the choice of thread is the
#: composition root's (L{sign_inline} or L{rsa_in_threads}).
Signer = Callable[[SigningKey, dict[str, Any]], "str | Deferred[str]"]


def sign_inline(key: SigningKey, claims: dict[str, Any]) -> str:
    return key.sign(claims)


def rsa_in_threads(reactor: Any) -> Signer:
    """
    A signer that signs with RSA keys in the reactor's thread pool and with
    the others inline.  An RSA signature costs many times an EC or EdDSA
    one, and C{cryptography} releases the GIL while it signs: in a
    thread it runs on another core while the reactor thread serves the next
    requests, which raises RS256 throughput while a core is idle.  EC and
    EdDSA signatures cost less than the hand-off to a thread, so they stay
    inline (the figures: bench/README.md, "Measurements behind design
    choices").
    """
    pool = reactor.getThreadPool()

    def sign(key: SigningKey, claims: dict[str, Any]) -> str | Deferred[str]:
        if key.alg in ("RS256", "PS256"):
            return deferToThreadPool(reactor, pool, key.sign, claims)
        return key.sign(claims)

    return sign


def rsa_signing_in_threads(mode: str, workers: int, cores: int | None) -> bool:
    """
    Whether RSA signatures go to threads (L{rsa_in_threads}) or stay inline
    (L{sign_inline}), for C{[tokens] rsa_signing} = C{mode}.

    A thread only adds throughput while a core would otherwise be idle, and
    the hand-off costs CPU of its own on every token.  With one process per
    core every core is busy serving already; and one process on two cores
    measured faster inline too (the other core goes to the kernel's network
    work and the clients).  So "auto" uses threads only while at least two
    cores are left over by the workers (the figures: bench/README.md,
    "Measurements behind design choices").  An unknown core count counts as
    one.
    """
    if mode == "threads":
        return True
    if mode == "inline":
        return False
    return workers + 2 <= (cores or 1)


def access_token_claims(
    *,
    issuer: str,
    client_id: str,
    audience: Sequence[str],
    issued_at: int,
    expires_at: int,
    jti: str,
    scope: Iterable[str],
    extra: Mapping[str, Any],
    jkt: str | None = None,
    x5t_s256: str | None = None,
    delegation: Mapping[str, Any] = EMPTY,
) -> dict[str, Any]:
    """
    RFC 9068 §2.2: C{iss}, C{exp}, C{aud}, C{sub}, C{client_id}, C{iat},
    C{jti}, and C{scope} when any was granted; a grant handler's extra
    claims beside them.  The claims of a JWT, and what introspection says of
    an opaque token.  A DPoP-bound token carries C{cnf: {"jkt": ...}}
    (RFC 9449 §6.1), a certificate-bound one C{cnf: {"x5t#S256": ...}}
    (RFC 8705 §3.1), a token bound both ways both members (RFC 7800 §3.1
    lets C{cnf} hold several); only the server sets C{cnf} (it is reserved).

    C{delegation} holds the RFC 8693 claims the server set: a token made by
    exchange has the subject token's C{sub} (not its client's), C{act} and
    C{exchanged_from} (L{Delegation.claims}); a token a handler gave a
    C{may_act} has that.

    L{GrantAuthorization} already refuses reserved claims; any that reached
    here anyway (an opaque token stored before a name was reserved) are
    left out, so that only the server speaks for them.
    """
    claims: dict[str, Any] = {
        name: value for name, value in extra.items() if name not in RESERVED_CLAIMS
    }
    claims.update(
        iss=issuer,
        sub=client_id,
        client_id=client_id,
        aud=audience[0] if len(audience) == 1 else list(audience),
        iat=issued_at,
        exp=expires_at,
        jti=jti,
    )
    scope = sorted(scope)
    if scope:
        claims["scope"] = " ".join(scope)
    confirmation = {}
    if jkt is not None:
        confirmation["jkt"] = jkt
    if x5t_s256 is not None:
        confirmation["x5t#S256"] = x5t_s256
    if confirmation:
        claims["cnf"] = confirmation
    if delegation:
        claims.update(delegation)
    return claims


@frozen
class TokenMinter:
    """
    Turns a grant handler's decision into an access token.

    @ivar issuer: the C{iss} claim.
    @ivar lifetime: the lifetime of a token whose grant names none.
    @ivar max_lifetime: no token lives longer.
    @ivar audience: the C{aud} of a token whose grant names none (the issuer
        when empty).
    @ivar token_format: the format of a token whose grant names none.
    @ivar tokens: where opaque tokens are kept.
    """

    keyring: Keyring
    tokens: ITokenStore
    issuer: str
    lifetime: int
    max_lifetime: int
    audience: tuple[str, ...]
    token_format: str
    now: Callable[[], float]
    sign: Signer = sign_inline

    async def mint(
        self,
        client: Client,
        authorization: GrantAuthorization,
        jkt: str | None = None,
        *,
        x5t_s256: str | None = None,
        dpop_nonce: str | None = None,
        delegation: Delegation | None = None,
        auth_method: str | None = None,
    ) -> IssuedToken:
        """
        @param jkt: the thumbprint of the DPoP key to bind the token to
            (RFC 9449 §5), or None.
        @param x5t_s256: the thumbprint of the TLS client certificate to
            bind the token to (RFC 8705 §3.1), or None.
        @param dpop_nonce: the DPoP nonce to send with the answer, if any.
        @param delegation: for a token made by exchange (RFC 8693): its
            C{sub}, C{act}, what it dies with, and the latest it may end.
        @param auth_method: how the client authenticated, for the metrics,
            when not its registered method.
        """
        issued_at = int(self.now())
        lifetime = min(authorization.lifetime or self.lifetime, self.max_lifetime)
        delegated: Mapping[str, Any] = EMPTY
        if delegation is not None:
            delegated = delegation.claims()
            if delegation.expires_at_most is not None:
                # RFC 8693 gives no rule; ending with the subject token is
                # this server's: a token made from another outlives nothing
                left = delegation.expires_at_most - issued_at
                if left < 1:
                    raise invalid_request("subject_token: expired while the exchange was decided")
                lifetime = min(lifetime, left)
        if authorization.may_act is not None:
            delegated = {**delegated, "may_act": dict(authorization.may_act)}
        audience = authorization.audience or self.audience or (self.issuer,)
        token_format = authorization.token_format or self.token_format
        jti = secrets.token_urlsafe(16)
        if token_format == OPAQUE:
            access_token = credentials.new_opaque_token(self.now())
            alg = "none"
            await self.tokens.add_token(
                TokenRecord(
                    token_digest=credentials.opaque_token_key(access_token),
                    client_id=client.client_id,
                    scope=authorization.scope,
                    audience=audience,
                    issued_at=issued_at,
                    expires_at=issued_at + lifetime,
                    jti=jti,
                    claims=authorization.claims,
                    jkt=jkt,
                    x5t_s256=x5t_s256,
                    delegation=delegated,
                )
            )
        elif token_format == JWT:
            claims = access_token_claims(
                issuer=self.issuer,
                client_id=client.client_id,
                audience=audience,
                issued_at=issued_at,
                expires_at=issued_at + lifetime,
                jti=jti,
                scope=authorization.scope,
                extra=authorization.claims,
                jkt=jkt,
                x5t_s256=x5t_s256,
                delegation=delegated,
            )
            key = self.keyring.current
            alg = key.alg
            signed = self.sign(key, claims)
            access_token = signed if isinstance(signed, str) else await signed
        else:
            raise ValueError(f"unknown token format {token_format!r}")
        return IssuedToken(
            access_token=access_token,
            expires_in=lifetime,
            scope=authorization.scope,
            token_type="Bearer" if jkt is None else "DPoP",
            dpop_nonce=dpop_nonce,
            token_format=token_format,
            alg=alg,
            auth_method=auth_method or client.token_endpoint_auth_method,
            client_id=client.client_id,
            token_id=jti,
            audience=tuple(audience),
            expires_at=issued_at + lifetime,
            jkt=jkt,
            x5t_s256=x5t_s256,
        )
