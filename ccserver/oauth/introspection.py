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

A token made by a token exchange dies with the tokens it was made from
(L{ccserver.model.EXCHANGED_FROM}): once one of them is revoked, or its
client deleted, introspection says it is inactive and it cannot be
exchanged again.  So a revoked opaque token's C{jti} goes on the deny list
too, where a token made from it looks.

The same lookup checks the access tokens presented in a token exchange
(L{AccessTokenValidator}).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from attrs import field, frozen
from twisted.internet.defer import Deferred
from zope.interface import implementer

from ccserver import audit, credentials, jose
from ccserver.errors import invalid_request
from ccserver.interfaces import IClientStore, ISubjectTokenValidator, ITokenStore
from ccserver.keys import ACCESS_TOKEN_TYP, SIGNING_ALGORITHMS, Keyring, SigningKey
from ccserver.model import (
    ACCESS_TOKEN_TYPE,
    CREDENTIAL_PARAMS,
    EXCHANGED_FROM,
    Client,
    TokenRecord,
    TokenRef,
    VerifiedToken,
)
from ccserver.oauth.clientauth import ClientAuthenticator, split_authorization, workload_of
from ccserver.oauth.limits import AuthLimits
from ccserver.oauth.mtls import PresentedCertificate
from ccserver.oauth.registration import bearer_error
from ccserver.oauth.tokens import access_token_claims
from ccserver.text import is_printable

A = TypeVar("A")
B = TypeVar("B")

INACTIVE: dict[str, Any] = {"active": False}
#: The most JWTs whose verified signature a process remembers
#: (L{VerifiedSignatures}).
VERIFIED_SIGNATURES = 4096
#: The most opaque tokens whose claims and answer a process keeps
#: (L{RememberedAnswers}).
REMEMBERED_ANSWERS = 1024


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


async def _every(pending: list[Deferred[A]]) -> list[A]:
    """
    The results of store requests already in flight, in order: one round
    trip of latency for all.  When one fails, the failures of the others
    (if any) are not left unhandled.
    """
    results = []
    for index, request in enumerate(pending):
        try:
            results.append(await request)
        except BaseException:
            for rest in pending[index + 1 :]:
                rest.addErrback(lambda _: None)
            raise
    return results


def exchanged_from(claims: Mapping[str, Any]) -> tuple[TokenRef, ...] | None:
    """
    The tokens a token was made from by exchange (L{EXCHANGED_FROM}),
    nearest first: empty for a token made otherwise, None when the claim is
    not what this server writes (such a token counts as dead).
    """
    refs = claims.get(EXCHANGED_FROM)
    if refs is None:
        return ()
    if not isinstance(refs, list):
        return None
    parsed = []
    for ref in refs:
        if not isinstance(ref, Mapping):
            return None
        client_id, jti = ref.get("client_id"), ref.get("jti")
        if not isinstance(client_id, str) or not isinstance(jti, str):
            return None
        parsed.append(TokenRef(client_id, jti))
    return tuple(parsed)


class VerifiedSignatures:
    """
    The access tokens (JWTs) whose signature this process has verified, and
    the claims they carry, at most C{size} of them (the oldest go first):
    a resource server introspects the same token on every call it serves,
    and an ES256 verification costs more than the rest of an introspection.

    Only what cannot change is remembered: that these bytes were signed by
    that key, and what they say (a L{TokenInfo}: the claims, and the answer
    introspection makes of them).  Everything that can change is checked
    on every introspection, as for a token seen the first time: that this
    process still knows the key (L{Keyring.verification_key}: a key
    removed from the store is forgotten at the next refresh, and its tokens
    with it), the token's time (C{exp}, C{nbf}), and in the store its
    revocation, its client's deletion and those of the tokens it was made
    from.  So nothing here can make a revoked token, or a deleted client's,
    active.
    """

    def __init__(self, size: int = VERIFIED_SIGNATURES) -> None:
        self._size = size
        self._tokens: OrderedDict[str, tuple[SigningKey, TokenInfo]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def get(self, token: str, keyring: Keyring) -> TokenInfo | None:
        """
        What C{token} says if its signature was verified with a key
        C{keyring} still holds, else None (and it is forgotten).
        """
        found = self._tokens.get(token)
        if found is None:
            return None
        key, info = found
        current = keyring.verification_key(key.kid)
        # the same key material: a refresh makes new SigningKeys of the
        # keys it knew, with the same private key object
        if current is None or current.private_key is not key.private_key:
            del self._tokens[token]
            return None
        return info

    def add(self, token: str, key: SigningKey, info: TokenInfo) -> None:
        if self._size <= 0:
            return
        self._tokens[token] = (key, info)
        while len(self._tokens) > self._size:
            self._tokens.popitem(last=False)

    def forget(self, token: str) -> None:
        self._tokens.pop(token, None)


class RememberedAnswers:
    """
    What introspection made of the opaque tokens it was asked about last:
    for each, the record the store gave and the L{TokenInfo} made of it
    (its claims and its answer), at most C{size} of them (the oldest go
    first).  A resource server introspects the same token on every call it
    serves, and making the claims and the answer each time was a share of
    an introspection's cost (bench/README.md, run N).

    Nothing here stands in for the store: the token's record is read from
    it on every introspection, and what was made of a record is used only
    while the store gives that same record again.  A revoked token, or a
    deleted client's, is one the store no longer gives; the expiry, the
    tokens it was made from and who may see it are checked every time.  So
    what is remembered is never staler than the store.
    """

    def __init__(self, size: int = REMEMBERED_ANSWERS) -> None:
        self._size = size
        self._infos: dict[str, tuple[TokenRecord, TokenInfo]] = {}

    def __len__(self) -> int:
        return len(self._infos)

    def get(self, record: TokenRecord) -> TokenInfo | None:
        """
        What was made of C{record}, if it is the record it was made of.
        """
        found = self._infos.get(record.token_digest)
        if found is None or found[0] != record:
            return None
        return found[1]

    def add(self, record: TokenRecord, info: TokenInfo) -> None:
        if self._size <= 0:
            return
        infos = self._infos
        infos.pop(record.token_digest, None)
        infos[record.token_digest] = (record, info)
        while len(infos) > self._size:
            del infos[next(iter(infos))]


def active_answer(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    """
    RFC 7662 §2.2: what introspection answers for an active token with
    C{claims}, read-only.  The server's own members go last, so that no
    claim in the token can stand in for them (a handler's C{"active":
    false} once did).  RFC 9449 §6.2: a DPoP-bound token is introspected
    with its C{cnf} and C{token_type} DPoP.
    """
    confirmation = claims.get("cnf")
    bound = isinstance(confirmation, Mapping) and "jkt" in confirmation
    return MappingProxyType({**claims, "active": True, "token_type": "DPoP" if bound else "Bearer"})


@frozen
class TokenInfo:
    """
    What an active token says, whichever its format, and what
    introspection answers for it (L{active_answer}), made once.
    """

    claims: Mapping[str, Any]
    #: The JWT's C{jti} to deny-list, or None for an opaque token.
    jti: str | None
    #: The opaque token's digest, or None for a JWT.
    token_digest: str | None
    answer: Mapping[str, Any] = field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "answer", active_answer(self.claims))

    @property
    def client_id(self) -> str:
        return str(self.claims["client_id"])

    @property
    def audience(self) -> tuple[str, ...]:
        aud = self.claims.get("aud", ())
        return (aud,) if isinstance(aud, str) else tuple(aud)

    @property
    def ref(self) -> TokenRef:
        return TokenRef(self.client_id, str(self.claims["jti"]))


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
        self._verified = VerifiedSignatures()
        self._remembered = RememberedAnswers()

    @staticmethod
    def _token(form: Mapping[str, str]) -> str:
        token = form.get("token")
        if token is None:
            raise invalid_request("token: missing")
        return token

    async def lookup(self, token: str) -> TokenInfo | None:
        """
        The active token C{token} is, or None when it is unknown, malformed,
        expired or revoked, or was made by exchange from a token that is
        revoked (L{exchanged_from}).  A token that is not printable
        (L{is_printable}) is none this server issued: the store is not asked
        about it.  (Its length is bounded by the request body's.)
        """
        if not is_printable(token):
            return None
        info = await (self._jwt(token) if token.count(".") == 2 else self._opaque(token))
        if info is None or EXCHANGED_FROM not in info.claims:
            return info
        return info if await self._lineage_alive(info.claims) else None

    async def _lineage_alive(self, claims: Mapping[str, Any]) -> bool:
        """
        Whether every token a token was made from is alive: none revoked (a
        revoked opaque token's C{jti} is on the deny list too), none of
        their clients deleted since.  A client's mark that covers the
        token's own C{iat} covers every token it was made from, each made
        before it.
        """
        refs = exchanged_from(claims)
        issued_at = claims.get("iat")
        if refs is None or not isinstance(issued_at, int):
            return False
        pending: list[Deferred[Any]] = []
        for ref in refs:
            pending.append(self._tokens.is_revoked(ref.jti))
            pending.append(self._tokens.client_revoked_before(ref.client_id))
        answers = await _every(pending)
        for revoked, revoked_before in zip(answers[::2], answers[1::2], strict=True):
            if revoked or (revoked_before is not None and issued_at <= revoked_before):
                return False
        return True

    async def _opaque(self, token: str) -> TokenInfo | None:
        # the store leaves out a record its client's revocation mark covers
        record = await self._tokens.get_token(credentials.opaque_token_key(token))
        if record is None or record.expires_at <= self._now():
            return None
        remembered = self._remembered.get(record)
        if remembered is not None:
            return remembered
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
            delegation=record.delegation,
        )
        # read-only: every introspection of the record shares it
        info = TokenInfo(MappingProxyType(claims), None, record.token_digest)
        self._remembered.add(record, info)
        return info

    def _access_token_key(self, header: Mapping[str, Any]) -> SigningKey | None:
        """
        The key named by C{kid}, if this server knows it and it signs with
        the header's C{alg}: a key verifies only its own algorithm.
        """
        key = self._keyring.verification_key(str(header.get("kid")))
        if key is None or header["alg"] != key.alg:
            return None
        return key

    def _verified_info(self, token: str) -> TokenInfo | None:
        """
        What a JWT this server signed that has not expired says, or None:
        its signature verified once (L{VerifiedSignatures}), its time every
        time.
        """
        now = self._now()
        info = self._verified.get(token, self._keyring)
        if info is not None:
            try:
                jose.check_times(info.claims, now)
            except jose.JOSEError:
                self._verified.forget(token)
                return None
            return info
        used: list[SigningKey] = []

        def key(header: Mapping[str, Any]) -> jose.VerificationKey | None:
            found = self._access_token_key(header)
            if found is None:
                return None
            used.append(found)
            return found.public_key

        try:
            verified = jose.verify(
                token,
                key,
                algorithms=SIGNING_ALGORITHMS,
                typ=ACCESS_TOKEN_TYP,
                issuer=self._issuer,
                required=("exp", "jti", "client_id"),
                now=now,
            )
        except jose.JOSEError:
            return None
        # read-only: every introspection of the token shares it
        claims = MappingProxyType(verified.claims)
        info = TokenInfo(claims, str(claims["jti"]), None)
        self._verified.add(token, used[0], info)
        return info

    async def _jwt(self, token: str) -> TokenInfo | None:
        info = self._verified_info(token)
        if info is None:
            return None
        claims = info.claims
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
        return info

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
    ) -> Mapping[str, Any]:
        """
        RFC 7662 §2: the token's claims with C{active: true}
        (L{active_answer}: read-only, and the same object for as long as
        the store gives the same record of an opaque token), or exactly
        C{{"active": false}} for a token that is expired, revoked, unknown,
        malformed, or not the caller's to see.

        The audit trail hears of a refusal, and of a question about an
        active token that is not the caller's to see.
        """
        caller = None
        try:
            caller = await self._authenticator.caller(authorization, form, certificate, source)
            info = await self.lookup(self._token(form))
        except Exception as error:
            self._authenticator.tell_refusal(
                audit.INTROSPECTION_REFUSED, error, caller, authorization, form, source
            )
            raise
        if info is None:
            return dict(INACTIVE)
        client = caller.client
        if not self._may_see(client, info):
            audit.emit(
                audit.INTROSPECTION_REFUSED,
                audit.client(client.client_id),
                source or None,
                status=200,
                reason="not_permitted",
                client_id=client.client_id,
                workload=workload_of(caller),
                token_id=info.claims.get("jti"),
                token_client_id=info.client_id,
            )
            return dict(INACTIVE)
        return info.answer

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
            caller = await self._authenticator.caller(authorization, form, certificate, source)
            client_id = caller.client.client_id
            info = await self.lookup(self._token(form))
            if info is None:
                return
            if info.client_id != client_id:
                audit.emit(
                    audit.REVOCATION_REFUSED,
                    audit.client(client_id),
                    source or None,
                    status=200,
                    reason="not_owner",
                    client_id=client_id,
                    workload=workload_of(caller),
                    token_id=info.claims.get("jti"),
                )
                return
            await self._revoke(info, audit.client(client_id), source, workload_of(caller))
        except Exception as error:
            self._authenticator.tell_refusal(
                audit.REVOCATION_REFUSED, error, caller, authorization, form, source
            )
            raise

    async def _revoke(
        self,
        info: TokenInfo,
        actor: audit.Actor,
        source: str,
        workload: Mapping[str, str] | None = None,
    ) -> None:
        """
        Delete an opaque token, and put its C{jti} on the deny list too,
        where the tokens made from it by exchange look; deny-list a JWT's.
        """
        if info.token_digest is not None:
            await self._tokens.delete_token(info.token_digest)
        await self._tokens.revoke_jti(str(info.claims["jti"]), int(info.claims["exp"]))
        audit.emit(
            audit.TOKEN_REVOKED,
            actor,
            source or None,
            token_id=info.claims.get("jti"),
            client_id=info.client_id,
            token_format="opaque" if info.token_digest is not None else "jwt",
            workload=workload,
        )


@implementer(ISubjectTokenValidator)
class AccessTokenValidator:
    """
    RFC 8693 C{urn:ietf:params:oauth:token-type:access_token}: an access
    token this server issued, JWT or opaque, checked as introspection
    checks it (signature, expiry, revocation, a deleted client, the tokens
    it was made from).
    """

    token_type = ACCESS_TOKEN_TYPE

    def __init__(self, introspection: TokenIntrospection, clients: IClientStore) -> None:
        self._introspection = introspection
        self._clients = clients

    async def verify(self, token: str) -> VerifiedToken:
        info = await self._introspection.lookup(token)
        if info is None:
            raise invalid_request(
                "not an active access token of this server (unknown, malformed, expired "
                "or revoked)"
            )
        refs = exchanged_from(info.claims) or ()
        return VerifiedToken(ACCESS_TOKEN_TYPE, info.claims, (info.ref, *refs))

    async def client_for(self, token: VerifiedToken) -> Client | None:
        """
        The client the token was issued to (its C{client_id}).
        """
        client_id = token.claims.get("client_id")
        if not isinstance(client_id, str):
            return None
        return await self._clients.get_client(client_id)
