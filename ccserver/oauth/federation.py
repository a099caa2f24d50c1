"""
Workload identity federation: a client authenticates with the token its
workload's platform already gave it (a Kubernetes service-account token, a
SPIFFE JWT-SVID, a CI job's or a cloud's OIDC token), with no secret or key
of its own.  The operator trusts the platform's issuer once
(C{[[trusted_issuers]]}) and binds a client to a workload identity (its
C{federated_identities}: an issuer, a subject, and claims the token must
carry); the workload then sends its token as a client assertion (RFC 7523
§2.2, C{federated_jwt}) or as the assertion of the JWT bearer grant (RFC
7523 §2.1).  A SPIFFE JWT-SVID may also come with the client assertion type
of draft-ietf-oauth-spiffe-client-auth, L{JWT_SPIFFE}.

Whose token it is (L{Federation.recognise}) is told from the token alone:
its C{iss}, when that is a trusted issuer's; else, for a JWT-SVID (which
may carry no C{iss}: "the trust domain of C{sub} selects the bundle"), the
trust domain of its C{sub} when that is trusted.  A token whose C{iss} is a
URL no one trusts is refused as such; any other assertion is a client's
own (L{ccserver.oauth.assertions}), whose C{iss} is its client id.

The checks of a workload token, in the order they run, each failing as 401
C{invalid_client} (the JWT bearer grant answers 400 C{invalid_grant}, RFC
7521 §4.1.1):

  1. its C{alg} is one of L{FEDERATED_ALGORITHMS}: asymmetric, never
     C{none}, never an HMAC (an issuer's keys are public);
  2. a key of its issuer verifies it: the one its C{kid} names (an unknown
     C{kid} fetches the keys again, at most once per C{[client_auth]
     jwks_uri_refetch_seconds} for each issuer, so that a rotation is
     followed at once), or without a C{kid} each key that fits the C{alg},
     two at most (L{MAX_CANDIDATES}).  Keys that cannot be had answer 503
     C{temporarily_unavailable}: the issuer's trouble, not the caller's;
  3. C{iss} is the issuer (but for a JWT-SVID); every value of C{aud} is one
     of the issuer's C{audiences} (a token meant for another service too
     could be replayed here by that service: draft-ietf-oauth-rfc7523bis
     and the SPIFFE draft ask for this server as the sole audience); C{exp}
     is present and not past, C{nbf} and C{iat} not in the future (each
     with C{[client_auth] leeway}); the token is valid for no longer than
     the issuer's C{max_token_lifetime} (C{exp} - C{iat}, or without
     C{iat}, C{exp} - now); C{sub} is a string (for a JWT-SVID, a SPIFFE ID
     of that trust domain);
  4. the client: the one the request's C{client_id} names, which must be
     bound to this workload; without C{client_id}, the one client bound to
     it, found with one store lookup (L{IClientStore.clients_bound_to}, a
     per-process cache in front).  A binding's claim conditions must each
     be a claim of exactly that string; a client is found only if its
     C{token_endpoint_auth_method} is C{federated_jwt}.

No C{jti} is required or remembered.  A workload token is a bearer token
that its platform issues for many uses and the workload presents again and
again until it is refreshed (a Kubernetes projected token lives an hour and
is reused by every process of the pod; SPIRE caches JWT-SVIDs): one-time
use would break every such workload.  What makes reuse safe is that the
token is meant for this server alone (3., the audience rule) and is short-
lived (the lifetime cap).

The failures before the signature is found good depend on the token and the
server's configuration only, never on a registration, and say what is
wrong.  Those after it are told to the holder of a genuine token for that
subject, and never name another client.

All JOSE is L{ccserver.jose}'s; keys come from L{ccserver.keysets}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from attrs import frozen
from twisted.logger import Logger
from zope.interface import implementer

from ccserver import jose
from ccserver.errors import OAuthError, invalid_client, invalid_request, temporarily_unavailable
from ccserver.interfaces import IClientStore, ISubjectTokenValidator
from ccserver.keysets import KeySetUnavailable, TrustedKeys
from ccserver.model import (
    FEDERATED_JWT,
    JWT_TOKEN_TYPE,
    Client,
    VerifiedToken,
    WorkloadIdentity,
)
from ccserver.oauth.assertions import MAX_CANDIDATES, ClientAssertion, choose
from ccserver.oauth.limits import workload_key
from ccserver.text import escape, identifier_problem

#: draft-ietf-oauth-spiffe-client-auth: the C{client_assertion_type} of a
#: SPIFFE JWT-SVID.
JWT_SPIFFE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
#: The JWS algorithms of workload tokens: those the platforms sign with
#: (Kubernetes: RS256, or ES256 and the other ECDSA curves with an EC
#: service-account key; GitHub, GitLab, Google, AWS, Azure: RS256; SPIRE:
#: ES256 by default, RS256, ES384, PS256 ...).  Never C{none} or an HMAC.
FEDERATED_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)
#: The most keys a trusted issuer's JWK set (or SPIFFE bundle) may hold:
#: more than a client's, as a cloud's set holds a few per region, and they
#: are the operator's choice.
MAX_ISSUER_KEYS = 100
#: The longest C{sub} accepted: a SPIFFE ID is at most 2048 bytes
#: (SPIFFE-ID §2.3); Kubernetes, CI and cloud subjects are far shorter.
MAX_SUBJECT_LENGTH = 2048
#: The claims every workload token must carry (RFC 7523 §3; the SPIFFE
#: draft's "SPIFFE ID in sub, aud, and exp").
_REQUIRED = ("sub", "aud", "exp")
_SPIFFE = "spiffe://"


@frozen
class TrustedIssuer:
    """
    An issuer of workload tokens the operator trusts (C{[[trusted_issuers]]}).

    @ivar identifier: its tokens' C{iss}; for a SPIFFE trust domain,
        C{spiffe://<trust domain>}.
    @ivar audiences: the C{aud} values accepted.
    @ivar max_token_lifetime: seconds a token may be valid for.
    @ivar keys: where its keys come from.
    """

    identifier: str
    audiences: frozenset[str]
    max_token_lifetime: int
    keys: TrustedKeys

    @property
    def spiffe(self) -> bool:
        return self.identifier.startswith(_SPIFFE)

    def usable(self, key: jose.JWK) -> bool:
        return signs_tokens(key, spiffe=self.spiffe)


def signs_tokens(key: jose.JWK, *, spiffe: bool) -> bool:
    """
    Whether a key of a trusted issuer's set signs tokens: a SPIFFE bundle
    marks the keys of JWT-SVIDs C{use: jwt-svid} (its C{x509-svid} keys
    sign certificates); an issuer's JWK set, C{sig} or nothing.
    """
    if spiffe:
        return key.use in (None, "jwt-svid")
    return key.use in (None, "sig")


def spiffe_trust_domain(subject: object) -> str | None:
    """
    C{spiffe://<trust domain>} of a SPIFFE ID (SPIFFE-ID §2: C{spiffe://},
    the trust domain, a path), or None when C{subject} is not one.
    """
    if not isinstance(subject, str) or not subject.startswith(_SPIFFE):
        return None
    domain, slash, path = subject[len(_SPIFFE) :].partition("/")
    if not domain or not slash or not path:
        return None
    return _SPIFFE + domain


@frozen
class Recognised:
    """
    A workload token, not verified yet: whose it claims to be.

    @ivar limit_key: what the brute-force limits count its failures by:
        the workload identity it names (issuer and subject), so that
        guesses at one identity are counted together, whichever client
        they aim at.
    """

    token: str
    issuer: TrustedIssuer
    header: Mapping[str, Any]
    claims: Mapping[str, Any]
    client_id: str | None

    @property
    def limit_key(self) -> str:
        subject = self.claims.get("sub")
        return workload_key(self.issuer.identifier, subject if isinstance(subject, str) else "")


class Federation:
    """
    Workload tokens: recognised, verified, and the client bound to them
    found; see the module docstring.
    """

    _log = Logger()

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        clients: IClientStore,
        *,
        now: Callable[[], float],
        leeway: int,
    ) -> None:
        """
        @param clients: where clients and their bindings are found (the
            per-process cache).
        @param leeway: seconds of clock skew allowed for C{exp}, C{nbf}
            and C{iat} (C{[client_auth] leeway}).
        """
        self._issuers = {issuer.identifier: issuer for issuer in issuers}
        self._clients = clients
        self._now = now
        self._leeway = leeway

    @property
    def issuers(self) -> Sequence[str]:
        """
        The trusted issuers' identifiers, in the configuration's order.
        """
        return tuple(self._issuers)

    def recognise(self, presented: ClientAssertion) -> Recognised | None:
        """
        Whose token C{presented} claims to be, or None when it is not a
        workload token but a client's own assertion.

        @raise OAuthError: C{invalid_client} for a token of an issuer no one
            trusts, or a JWT-SVID (C{JWT_SPIFFE}) of a trust domain no one
            trusts or with no SPIFFE ID.
        """
        spiffe = presented.assertion_type == JWT_SPIFFE
        try:
            header, claims = jose.unverified(presented.assertion)
        except jose.JOSEError as e:
            if spiffe:
                raise invalid_client(f"client_assertion: {e}") from None
            return None  # the client assertion's verifier says what is wrong
        iss, subject = claims.get("iss"), claims.get("sub")
        domain = spiffe_trust_domain(subject)
        trusted = self._trusted(claims, spiffe_only=spiffe)
        if trusted is not None:
            return Recognised(presented.assertion, trusted, header, claims, presented.client_id)
        if spiffe:
            if domain is None:
                raise invalid_client(
                    "client_assertion: a JWT-SVID's sub must be a SPIFFE ID "
                    "(spiffe://trust-domain/path)"
                )
            raise invalid_client("client_assertion: the trust domain of its sub is not trusted here")
        if isinstance(iss, str) and "://" in iss:
            # a client's own assertion is issued by its client id, never a URL
            raise invalid_client("client_assertion: its issuer is not trusted here")
        return None

    def _trusted(self, claims: Mapping[str, Any], *, spiffe_only: bool) -> TrustedIssuer | None:
        """
        The trusted issuer whose token these claims say they are: its
        C{iss}'s (unless C{spiffe_only}: the SPIFFE draft's assertion type),
        else the trust domain of its C{sub}'s.
        """
        iss = claims.get("iss")
        if not spiffe_only and isinstance(iss, str):
            trusted = self._issuers.get(iss)
            if trusted is not None and not trusted.spiffe:
                return trusted
        domain = spiffe_trust_domain(claims.get("sub"))
        return None if domain is None else self._issuers.get(domain)

    async def verify(
        self, recognised: Recognised, *, for_this_server: bool = True
    ) -> WorkloadIdentity:
        """
        The token, verified (checks 1 to 3 of the module docstring).

        @param for_this_server: whether its audience must be this server
            (it authenticates a client here); a token exchange's subject
            token is for the exchanging client instead, which the exchange
            checks.
        @raise OAuthError: C{invalid_client}; C{temporarily_unavailable}
            when the issuer's keys cannot be had.
        """
        issuer, header = recognised.issuer, recognised.header
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in FEDERATED_ALGORITHMS:
            raise invalid_client(
                "client_assertion: a workload token must be signed with one of "
                + ", ".join(FEDERATED_ALGORITHMS)
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise invalid_client("client_assertion: the JWS kid is not a string")
        now = self._now()
        verified = None
        for key in await self._candidates(issuer, alg, kid):
            try:
                verified = jose.verify(
                    recognised.token,
                    key,
                    algorithms=FEDERATED_ALGORITHMS,
                    issuer=None if issuer.spiffe else issuer.identifier,
                    required=_REQUIRED,
                    now=now,
                    leeway=self._leeway,
                )
            except jose.BadSignature:
                continue
            except jose.JOSEError as e:
                raise invalid_client(f"client_assertion: {e}") from None
            break
        if verified is None:
            raise invalid_client(
                "client_assertion: the signature does not verify with its issuer's keys"
            )
        claims = verified.claims
        if for_this_server:
            self._check_audience(issuer, claims["aud"])
        self._check_lifetime(issuer, claims, now)
        subject = claims["sub"]
        problem = identifier_problem(subject, MAX_SUBJECT_LENGTH)
        if problem is not None:
            raise invalid_client(f"client_assertion: the sub claim {problem}")
        if issuer.spiffe and spiffe_trust_domain(subject) != issuer.identifier:
            raise invalid_client("client_assertion: the sub claim is not a SPIFFE ID of its trust domain")
        return WorkloadIdentity(issuer.identifier, subject, claims)

    async def _candidates(
        self, issuer: TrustedIssuer, alg: str, kid: str | None
    ) -> list[jose.VerificationKey]:
        try:
            chosen = choose(await self._keys(issuer), alg, kid)
            if not chosen and kid is not None:
                # an unknown kid: the issuer may have rotated its keys
                chosen = choose(await self._keys(issuer, refetch=True), alg, kid)
        except KeySetUnavailable:
            raise temporarily_unavailable(
                "the keys of the token's issuer could not be had; try again shortly"
            ) from None
        if not chosen:
            raise invalid_client(
                "client_assertion: no key of its issuer has this kid"
                if kid is not None
                else f"client_assertion: no key of its issuer fits {alg}"
            )
        if len(chosen) > MAX_CANDIDATES:
            raise invalid_client(
                f"client_assertion: it has no kid, and {len(chosen)} keys of its issuer fit "
                f"{alg}; a token is checked against {MAX_CANDIDATES} at most"
            )
        return [key.key for key in chosen]

    @staticmethod
    async def _keys(issuer: TrustedIssuer, *, refetch: bool = False) -> list[jose.JWK]:
        key_set = await issuer.keys.key_set(refetch=refetch)
        return [key for key in key_set.keys if issuer.usable(key)]

    @staticmethod
    def _check_audience(issuer: TrustedIssuer, aud: object) -> None:
        """
        RFC 7519 §4.1.3: a string or an array of strings; here, every one
        of them this server's (one of the issuer's C{audiences}).
        """
        named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
        if not named or not all(isinstance(value, str) for value in named):
            raise invalid_client("client_assertion: the aud claim must be a string or strings")
        if not all(value in issuer.audiences for value in named):
            raise invalid_client(
                "client_assertion: the aud claim must name this server, and nothing else: "
                + ", ".join(sorted(issuer.audiences))
            )

    def _check_lifetime(self, issuer: TrustedIssuer, claims: Mapping[str, Any], now: float) -> None:
        try:
            iat = jose.numeric_date(claims, "iat")
            exp = jose.numeric_date(claims, "exp")
        except jose.JOSEError as e:
            raise invalid_client(f"client_assertion: {e}") from None
        assert exp is not None  # required, and checked by jose.verify
        cap = issuer.max_token_lifetime
        if iat is None:
            if exp - now > cap + self._leeway:
                raise invalid_client(
                    f"client_assertion: it has no iat, and its exp is more than {cap} seconds "
                    "ahead, the longest its issuer's tokens may be valid for"
                )
            return
        if iat > now + self._leeway:
            raise invalid_client("client_assertion: iat is in the future; check the clock")
        if exp - iat > cap:
            raise invalid_client(
                f"client_assertion: it is valid for {exp - iat:.0f} seconds (exp - iat), more "
                f"than the {cap} its issuer's tokens may be"
            )

    async def client(self, identity: WorkloadIdentity, client_id: str | None) -> Client:
        """
        The client bound to this workload identity (check 4 of the module
        docstring): the one C{client_id} names, or the only one bound.

        @raise OAuthError: C{invalid_client}.
        """
        if client_id is not None:
            named = await self._clients.get_client(client_id)
            if named is None or not bound(named, identity):
                raise self._refused(
                    identity, "client_id names no client bound to this workload identity"
                )
            return named
        candidates = []
        for found_id in await self._clients.clients_bound_to(identity.issuer, identity.subject):
            found = await self._clients.get_client(found_id)
            if found is not None and bound(found, identity):
                candidates.append(found)
        if not candidates:
            raise self._refused(
                identity,
                "no client is bound to this workload identity with conditions its claims meet",
            )
        if len(candidates) > 1:
            raise self._refused(
                identity,
                "this workload identity is bound to several clients; send client_id to name one",
            )
        return candidates[0]

    def _refused(self, identity: WorkloadIdentity, reason: str) -> OAuthError:
        self._log.info(
            "Refused a workload token of {issuer} for subject {subject}: {reason}",
            issuer=identity.issuer,
            # the platform's text: escaped for the operator's terminal
            subject=escape(identity.subject),
            reason=reason,
        )
        return invalid_client(f"client_assertion: {reason}")

    async def client_for(self, claims: Mapping[str, Any]) -> Client | None:
        """
        The client a verified workload token speaks for (for a grant that
        finds its client through L{ITokenEndpoint.identify}): the one
        client bound to it, if the token is for this server (its audience);
        else None.
        """
        trusted = self._trusted(claims, spiffe_only=False)
        subject = claims.get("sub")
        if trusted is None or not isinstance(subject, str):
            return None
        try:
            self._check_audience(trusted, claims.get("aud"))
            return await self.client(WorkloadIdentity(trusted.identifier, subject, claims), None)
        except OAuthError as e:
            if e.error != "invalid_client":
                raise
            return None

    async def authenticate(self, recognised: Recognised) -> tuple[Client, WorkloadIdentity]:
        """
        The client a recognised workload token authenticates, and the
        token's verified identity.
        """
        identity = await self.verify(recognised)
        return await self.client(identity, recognised.client_id), identity


def bound(client: Client, identity: WorkloadIdentity) -> bool:
    """
    Whether C{client} authenticates with workload tokens and one of its
    bindings admits this one.
    """
    return client.token_endpoint_auth_method == FEDERATED_JWT and any(
        binding.admits(identity.issuer, identity.subject, identity.claims)
        for binding in client.federated_identities
    )


class OwnTokens(Protocol):
    """
    What L{WorkloadTokenValidator} asks of the validator of this server's
    own access tokens (L{ccserver.oauth.introspection.AccessTokenValidator}).
    """

    async def verify(self, token: str) -> VerifiedToken: ...

    async def client_for(self, token: VerifiedToken) -> Client | None: ...


@implementer(ISubjectTokenValidator)
class WorkloadTokenValidator:
    """
    RFC 8693 C{urn:ietf:params:oauth:token-type:jwt}: a JWT presented in a
    token exchange as a subject or actor token.  A trusted issuer's token
    (a workload's) is checked as a workload token is (signature, issuer,
    times, the lifetime cap), but for its audience: it is for the
    exchanging client, not for this server, and the exchange checks that
    its C{aud} names that client.  This server's own JWT access tokens go
    to the validator of access tokens (C{own}).
    """

    token_type = JWT_TOKEN_TYPE

    def __init__(self, federation: Federation, own: OwnTokens, issuer: str) -> None:
        """
        @param own: checks this server's own access tokens.
        @param issuer: this server's issuer identifier, their C{iss}.
        """
        self._federation = federation
        self._own = own
        self._issuer = issuer

    async def verify(self, token: str) -> VerifiedToken:
        try:
            _, claims = jose.unverified(token)
        except jose.JOSEError as e:
            raise invalid_request(str(e)) from None
        if claims.get("iss") == self._issuer:
            own = await self._own.verify(token)
            return VerifiedToken(JWT_TOKEN_TYPE, own.claims, own.lineage)
        try:
            recognised = self._federation.recognise(ClientAssertion(None, token))
            if recognised is None:
                raise invalid_request("not a JWT of this server or of an issuer it trusts")
            identity = await self._federation.verify(recognised, for_this_server=False)
        except OAuthError as e:
            if e.error != "invalid_client":
                raise
            description = e.description.removeprefix("client_assertion: ")
            raise invalid_request(description) from None
        return VerifiedToken(JWT_TOKEN_TYPE, identity.claims)

    async def client_for(self, token: VerifiedToken) -> Client | None:
        """
        The client a JWT it verified speaks for: for this server's own, the
        one it was issued to; for a workload's, the one client bound to it,
        if the token is for this server (L{Federation.client_for}).
        """
        if token.claims.get("iss") == self._issuer:
            return await self._own.client_for(token)
        return await self._federation.client_for(token.claims)
