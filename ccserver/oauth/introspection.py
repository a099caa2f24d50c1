"""
What resource servers and clients ask of a token once it is out: token
introspection (RFC 7662) and token revocation (RFC 7009).

Both endpoints authenticate the caller as a registered client, as the token
endpoint does.  Who may see a token: the client it was issued to, and the
clients whose C{client_id} or registered C{resource_server_uris} its audience
names; with C{[tokens] introspection = "any"}, every authenticated client.
The operator may also revoke any token, with the master token as a bearer
token (RFC 6750 §2.1) at the revocation endpoint.

A deleted client's tokens are dead: its opaque ones are deleted with it,
and its JWTs, which cannot be, are covered by the revocation mark the store
keeps for it (L{ITokenStore.client_revoked_before}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred

from ccserver import audit, credentials, jose
from ccserver.errors import invalid_request
from ccserver.interfaces import IClientStore, ITokenStore
from ccserver.keys import ACCESS_TOKEN_TYP, SIGNING_ALGORITHMS, Keyring
from ccserver.model import Client
from ccserver.oauth.clientauth import (
    CREDENTIAL_PARAMS,
    ClientAuthenticator,
    split_authorization,
    tell_refusal,
)
from ccserver.oauth.limits import AuthLimits
from ccserver.oauth.mtls import PresentedCertificate
from ccserver.oauth.registration import bearer_error
from ccserver.oauth.tokens import access_token_claims
from ccserver.text import is_printable

A = TypeVar("A")
B = TypeVar("B")

INACTIVE: dict[str, Any] = {"active": False}


async def _both(first: Deferred[A], second: Deferred[B]) -> tuple[A, B]:
    """
    The results of two store requests already in flight: one round trip of
    latency, not two.  When the first fails, the second's failure (if any)
    is not left unhandled.
    """
    try:
        result = await first
    except BaseException:
        second.addErrback(lambda _: None)
        raise
    return result, await second


@frozen
class TokenInfo:
    """
    What an active token says, whichever its format.
    """

    claims: Mapping[str, Any]
    #: The JWT's C{jti} to deny-list, or None for an opaque token.
    jti: str | None
    #: The opaque token's digest, or None for a JWT.
    token_digest: str | None

    @property
    def client_id(self) -> str:
        return str(self.claims["client_id"])

    @property
    def audience(self) -> tuple[str, ...]:
        aud = self.claims.get("aud", ())
        return (aud,) if isinstance(aud, str) else tuple(aud)


class TokenIntrospection:
    def __init__(
        self,
        clients: IClientStore,
        tokens: ITokenStore,
        keyring: Keyring,
        issuer: str,
        rule: str,
        now: Callable[[], float],
        *,
        master_token_digest: str,
        authenticator: ClientAuthenticator | None = None,
        limits: AuthLimits | None = None,
    ) -> None:
        """
        @param authenticator: who is calling (the same methods as at the
            token endpoint); by default, the secret methods only.
        """
        self._clients = clients
        self._tokens = tokens
        self._keyring = keyring
        self._issuer = issuer
        self._rule = rule
        self._now = now
        self._master_token_digest = master_token_digest
        self._authenticator = authenticator or ClientAuthenticator(clients, now=now)
        self._limits = limits or AuthLimits(None, now)

    async def _caller(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        certificate: PresentedCertificate | None,
        source: str,
    ) -> Client:
        return await self._authenticator.authenticate(authorization, form, certificate, source)

    @staticmethod
    def _token(form: Mapping[str, str]) -> str:
        token = form.get("token")
        if token is None:
            raise invalid_request("token: missing")
        return token

    async def lookup(self, token: str) -> TokenInfo | None:
        """
        The active token C{token} is, or None when it is unknown, malformed,
        expired or revoked.  A token that is not printable (L{is_printable})
        is none this server issued: the store is not asked about it.  (Its
        length is bounded by the request body's.)
        """
        if not is_printable(token):
            return None
        if token.count(".") == 2:
            return await self._jwt(token)
        # the store leaves out a record its client's revocation mark covers
        record = await self._tokens.get_token(credentials.opaque_token_key(token))
        if record is None or record.expires_at <= self._now():
            return None
        claims = access_token_claims(
            issuer=self._issuer,
            client_id=record.client_id,
            audience=record.audience,
            issued_at=record.issued_at,
            expires_at=record.expires_at,
            jti=record.jti,
            scope=record.scope,
            extra=record.claims,
            jkt=record.jkt,
            x5t_s256=record.x5t_s256,
        )
        return TokenInfo(claims, None, record.token_digest)

    def _access_token_key(self, header: Mapping[str, Any]) -> jose.VerificationKey | None:
        """
        The key named by C{kid}, if this server knows it and it signs with
        the header's C{alg}: a key verifies only its own algorithm.
        """
        key = self._keyring.verification_key(str(header.get("kid")))
        if key is None or header["alg"] != key.alg:
            return None
        return key.public_key

    async def _jwt(self, token: str) -> TokenInfo | None:
        try:
            verified = jose.verify(
                token,
                self._access_token_key,
                algorithms=SIGNING_ALGORITHMS,
                typ=ACCESS_TOKEN_TYP,
                issuer=self._issuer,
                required=("exp", "jti", "client_id"),
                now=self._now(),
            )
        except jose.JOSEError:
            return None
        claims = verified.claims
        revoked, revoked_before = await _both(
            self._tokens.is_revoked(str(claims["jti"])),
            self._tokens.client_revoked_before(str(claims["client_id"])),
        )
        if revoked:
            return None
        if revoked_before is not None:
            issued_at = claims.get("iat")
            # A token without a usable iat cannot be shown to be later than
            # the mark: it is dead with the rest.
            if not isinstance(issued_at, int) or issued_at <= revoked_before:
                return None
        return TokenInfo(claims, str(claims["jti"]), None)

    def _may_see(self, caller: Client, info: TokenInfo) -> bool:
        if self._rule == "any" or info.client_id == caller.client_id:
            return True
        names = {caller.client_id, *caller.metadata.get("resource_server_uris", ())}
        return not names.isdisjoint(info.audience)

    async def introspect(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        certificate: PresentedCertificate | None = None,
        source: str = "",
    ) -> dict[str, Any]:
        """
        RFC 7662 §2: the token's claims with C{active: true}, or exactly
        C{{"active": false}} for a token that is expired, revoked, unknown,
        malformed, or not the caller's to see.

        The server's own members go last, so that no claim in the token can
        stand in for them (a handler's C{"active": false} once did).

        The audit trail hears of a refusal, and of a question about an
        active token that is not the caller's to see.
        """
        caller = None
        try:
            caller = await self._caller(form, authorization, certificate, source)
            info = await self.lookup(self._token(form))
        except Exception as error:
            tell_refusal(
                audit.INTROSPECTION_REFUSED, error, caller, authorization, form, source
            )
            raise
        if info is None:
            return dict(INACTIVE)
        if not self._may_see(caller, info):
            audit.emit(
                audit.INTROSPECTION_REFUSED,
                audit.client(caller.client_id),
                source or None,
                status=200,
                reason="not_permitted",
                client_id=caller.client_id,
                token_id=info.claims.get("jti"),
                token_client_id=info.client_id,
            )
            return dict(INACTIVE)
        # RFC 9449 §6.2: a DPoP-bound token is introspected with its cnf
        # and token_type DPoP.
        bound = isinstance(info.claims.get("cnf"), Mapping) and "jkt" in info.claims["cnf"]
        return {**info.claims, "active": True, "token_type": "DPoP" if bound else "Bearer"}

    async def _is_master(self, authorization: str | None, source: str) -> bool:
        """
        Whether the request presents a bearer token, which must then be the
        master token (checked as the registration endpoints do: its digest,
        in constant time).  Clients authenticate with Basic or the form.

        @raise OAuthError: C{invalid_token} (401) for a bearer token that
            is not the master token; the token itself is never repeated.
        """
        if authorization is None:
            return False
        parts = split_authorization(authorization)
        if parts is None or parts[0].lower() != "bearer":
            return False
        token = parts[1].strip()
        digest = self._master_token_digest

        async def check() -> bool:
            if not credentials.check(token, digest):
                raise bearer_error("the bearer token is not the master token")
            return True

        return await self._limits.master(source, check)

    async def revoke(
        self,
        form: Mapping[str, str],
        authorization: str | None,
        certificate: PresentedCertificate | None = None,
        source: str = "",
    ) -> None:
        """
        RFC 7009 §2: revoke the caller's own token, or with the master token
        as a bearer token, any token.  An unknown token, or another client's,
        is answered the same way, and nothing is revoked.

        The audit trail hears of each token revoked, of each refusal, and of
        a client's attempt at another client's token.
        """
        caller = None
        try:
            if await self._is_master(authorization, source):
                if CREDENTIAL_PARAMS.intersection(form):
                    raise invalid_request(
                        "the master token and client credentials were both presented"
                    )
                info = await self.lookup(self._token(form))
                if info is not None:
                    await self._revoke(info, audit.MASTER_TOKEN, source)
                return
            caller = await self._caller(form, authorization, certificate, source)
            info = await self.lookup(self._token(form))
            if info is None:
                return
            if info.client_id != caller.client_id:
                audit.emit(
                    audit.REVOCATION_REFUSED,
                    audit.client(caller.client_id),
                    source or None,
                    status=200,
                    reason="not_owner",
                    client_id=caller.client_id,
                    token_id=info.claims.get("jti"),
                )
                return
            await self._revoke(info, audit.client(caller.client_id), source)
        except Exception as error:
            tell_refusal(audit.REVOCATION_REFUSED, error, caller, authorization, form, source)
            raise

    async def _revoke(self, info: TokenInfo, actor: audit.Actor, source: str) -> None:
        if info.token_digest is not None:
            await self._tokens.delete_token(info.token_digest)
        elif info.jti is not None:
            await self._tokens.revoke_jti(info.jti, int(info.claims["exp"]))
        audit.emit(
            audit.TOKEN_REVOKED,
            actor,
            source or None,
            token_id=info.claims.get("jti"),
            client_id=info.client_id,
            token_format="opaque" if info.token_digest is not None else "jwt",
        )
