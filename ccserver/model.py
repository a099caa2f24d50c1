"""
The domain: registered clients, grant requests and the decisions of grant
handlers, issued tokens and signing keys.

These are plain frozen attrs classes; nothing here knows of HTTP or of a store.
The protocol's value rules live here too, each once, as functions the
layers above call and raise their own errors from: scope syntax
(L{is_scope_token}), resource URIs (L{is_resource_uri}), lifetimes
(L{is_lifetime}), grant type names (L{is_grant_type}) and the claims a
grant handler may not set (L{check_claims}).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple, TypeGuard
from urllib.parse import SplitResult, urlsplit

from attrs import field, frozen

#: Names a grant handler may not use in L{GrantAuthorization.claims}: the
#: claims and introspection members whose meaning the server vouches for,
#: whether or not it sets them today.  A handler's claim of one of these
#: would reach resource servers as if the server had said it (a handler
#: answering C{{"active": false, "token_type": "forged"}} once rewrote the
#: introspection answer).
#:
#:   - RFC 7662 §2.2, the introspection response: C{active}, C{scope},
#:     C{client_id}, C{username}, C{token_type}, C{exp}, C{iat}, C{nbf},
#:     C{sub}, C{aud}, C{iss}, C{jti};
#:   - RFC 9068 §2.2, the JWT access token: C{iss}, C{exp}, C{aud}, C{sub},
#:     C{client_id}, C{iat}, C{jti}; §2.2.1, authentication information:
#:     C{auth_time}, C{acr}, C{amr} (the server authenticates, not the
#:     handler); §2.2.3: C{scope} (a handler grants scope through
#:     L{GrantAuthorization.scope});
#:   - RFC 8693 §4: C{act}, C{scope}, C{client_id}, C{may_act};
#:   - RFC 7800 §3.1: C{cnf}, the proof-of-possession key a DPoP or mutual-TLS
#:     bound token carries;
#:   - C{exchanged_from}, this server's own: the tokens a token made by a
#:     token exchange was made from, which it dies with
#:     (L{EXCHANGED_FROM}).
#:
#: Left to the handler on purpose: the RFC 9068 §2.2.3.1 authorization
#: attributes C{roles}, C{groups} and C{entitlements}, and the §2.2.2
#: identity claims.  They are what a grant handler decides, as it decides
#: scope; the server neither sets nor checks them.
RESERVED_CLAIMS = frozenset(
    {
        # RFC 7662 §2.2
        "active", "scope", "client_id", "username", "token_type",
        "exp", "iat", "nbf", "sub", "aud", "iss", "jti",
        # RFC 9068 §2.2.1
        "auth_time", "acr", "amr",
        # RFC 8693 §4
        "act", "may_act",
        # RFC 7800 §3.1
        "cnf",
        # this server's: the tokens an exchanged token dies with
        "exchanged_from",
    }
)

CLIENT_CREDENTIALS = "client_credentials"
#: RFC 7523 §2.1: the grant type of the JWT bearer grant, whose assertion
#: is a workload's token (workload identity federation).
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: The C{token_endpoint_auth_method} of a client that authenticates with the
#: token its workload's platform gave it (a Kubernetes service-account
#: token, a SPIFFE JWT-SVID, a CI job's OIDC token), bound to it by its
#: C{federated_identities}.
FEDERATED_JWT = "federated_jwt"
#: The claims a binding's conditions may not name: those the server checks
#: on their own (the issuer, the subject, the audience, the times, the id).
CHECKED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})
#: RFC 8693 §2.1: the grant type of a token exchange.
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
#: RFC 8693 §3: the token type of an OAuth 2.0 access token (of any format).
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
#: RFC 8693 §3: the token type of a JWT.
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
#: The claim of a token made by a token exchange that names the tokens it
#: was made from (a list of C{{"client_id": ..., "jti": ...}}, the nearest
#: first): it is dead as soon as one of them is (revoked, or its client
#: deleted).  This server's own claim, reserved.
EXCHANGED_FROM = "exchanged_from"
#: Form parameters that are about client authentication, not the grant.
CREDENTIAL_PARAMS = frozenset(
    {"client_id", "client_secret", "client_assertion", "client_assertion_type"}
)

#: RFC 7591 §2: the C{token_endpoint_auth_method} of a client whose
#: registration names none.
DEFAULT_AUTH_METHOD = "client_secret_basic"
#: The methods that present the client secret itself (RFC 6749 §2.3.1): in
#: an HTTP Basic header, or in the form body.
SECRET_METHODS = ("client_secret_basic", "client_secret_post")


def scope_values(scope: str | None) -> frozenset[str]:
    """
    The set of values in a space-separated scope string (RFC 6749 §3.3).
    """
    if not scope:
        return frozenset()
    return frozenset(scope.split())


# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")


def is_scope_token(value: object) -> bool:
    """
    Whether C{value} is one scope value (RFC 6749 §3.3: visible ASCII but
    space, C{"} and C{\\}).  The one rule for a client's registered scope,
    a token request's scope and a grant webhook's answer; each caller
    splits its own way and raises its own error.
    """
    return isinstance(value, str) and _SCOPE_TOKEN.fullmatch(value) is not None


def split_uri(uri: str) -> SplitResult | None:
    """
    The parts of C{uri}, or None when it cannot be split: the one place a
    URI from the outside is parsed, because C{urlsplit} raises
    C{ValueError} for some inputs (an unclosed IPv6 bracket, C{http://[x};
    a host that changes under NFKC normalisation) instead of answering.
    Every check of a client's URI goes through here, so none of them can
    turn such a URI into a 500.
    """
    try:
        return urlsplit(uri)
    except ValueError:
        return None


def is_resource_uri(uri: str) -> bool:
    """
    RFC 8707 §2: a resource indicator is an absolute URI with no fragment.
    The one rule for a token request's C{resource} and a client's
    registered C{audience} and C{resource_server_uris}.
    """
    parts = split_uri(uri)
    return (
        parts is not None
        and bool(parts.scheme)
        and bool(parts.netloc or parts.path)
        and "#" not in uri
    )


# RFC 6749 Appendix A.10: grant-name = 1*name-char, name-char = "-" / "." /
# "_" / DIGIT / ALPHA; an extension grant is an absolute URI (§4.5).
_GRANT_NAME = re.compile(r"[-._0-9A-Za-z]+")


def is_grant_type(value: object) -> bool:
    """
    Whether C{value} can be a C{grant_type} (RFC 6749 §4.5, Appendix
    A.10): a name of letters, digits, C{-}, C{.} and C{_}, or an absolute
    URI.  The one rule for a grant type plugin's C{grant_type}.
    """
    if not isinstance(value, str) or not value or value != value.strip():
        return False
    if _GRANT_NAME.fullmatch(value):
        return True
    parts = split_uri(value)
    return (
        parts is not None
        and bool(parts.scheme)
        and bool(parts.netloc or parts.path)
        and all(0x21 <= ord(c) <= 0x7E for c in value)
    )


def is_lifetime(value: object) -> TypeGuard[int]:
    """
    Whether C{value} is a token lifetime: a whole number of seconds greater
    than 0.  C{True} is an C{int} in Python but not a number in JSON or
    TOML, so it is not one.  The one rule for a grant handler's decision, a
    client's C{access_token_lifetime} and the configured lifetimes; each
    caller raises its own error.
    """
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


#: The one empty read-only mapping, shared: most tokens have no delegation.
EMPTY: Mapping[str, Any] = MappingProxyType({})


#: The largest C{token_rate_limit} a client may be given: a million tokens
#: a second, and a burst of as many (far beyond what a process issues).
MAX_TOKEN_RATE = 1_000_000


@frozen
class TokenRateLimit:
    """
    How many tokens one client may be issued: C{tokens_per_second} on
    average, and at most C{burst} at once (a token bucket that holds
    C{burst} and fills at C{tokens_per_second}).

    The operator's to set, per client (L{Client.token_rate_limit}) or for
    every client (C{[limits] tokens_per_client_per_second}).
    """

    tokens_per_second: float
    burst: int

    @classmethod
    def of(cls, tokens_per_second: float, burst: int | None = None) -> TokenRateLimit:
        """
        A limit whose burst is, unless given, a second's worth of tokens
        (at least one).
        """
        if burst is None:
            burst = max(1, math.ceil(tokens_per_second))
        return cls(float(tokens_per_second), burst)

    def as_json(self) -> dict[str, Any]:
        rate = self.tokens_per_second
        return {"tokens_per_second": int(rate) if rate.is_integer() else rate, "burst": self.burst}


def token_rate_limit_problem(value: object) -> str | None:
    """
    What is wrong with C{value} as a client's C{token_rate_limit} (a JSON
    object: C{tokens_per_second}, a number greater than 0, and optionally
    C{burst}, a whole number of 1 or more, both at most
    L{MAX_TOKEN_RATE}), or None when it is one.  The one rule for the
    registration endpoint, the command and the stores' records.
    """
    if not isinstance(value, Mapping):
        return "must be an object with tokens_per_second (and burst)"
    unknown = sorted(set(value) - {"tokens_per_second", "burst"})
    if unknown:
        return f"has no member {unknown[0]!r}; it has tokens_per_second and burst"
    rate = value.get("tokens_per_second")
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float))
        or not math.isfinite(rate)
        or not 0 < rate <= MAX_TOKEN_RATE
    ):
        return f"tokens_per_second must be a number greater than 0, at most {MAX_TOKEN_RATE}"
    burst = value.get("burst", 1)
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_TOKEN_RATE:
        return f"burst must be a whole number of 1 or more, at most {MAX_TOKEN_RATE}"
    return None


def token_rate_limit(value: Mapping[str, Any]) -> TokenRateLimit:
    """
    The limit a checked C{token_rate_limit} object says
    (L{token_rate_limit_problem}).
    """
    return TokenRateLimit.of(value["tokens_per_second"], value.get("burst"))


def _readonly(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    # an empty one is the shared EMPTY: most tokens carry no extra claims
    return MappingProxyType(dict(mapping)) if mapping else EMPTY


def _conditions(claims: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    pairs = claims.items() if isinstance(claims, Mapping) else claims
    return tuple(sorted((str(name), str(value)) for name, value in pairs))


def _digest(*parts: str) -> str:
    text = "\x00".join(parts)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def binding_key(issuer: str, subject: str) -> str:
    """
    The key the stores index federated identities by: a digest of the
    issuer and the subject, so that a subject of any length or character
    costs a store 64 bytes, and one lookup finds every client bound to it.
    """
    return _digest(issuer, subject)


@frozen
class FederatedIdentity:
    """
    A binding of a client to a workload identity (its C{federated_identities}
    metadata): the tokens of C{issuer} whose C{sub} is C{subject}, and whose
    claims are each exactly the string the C{claims} conditions name,
    authenticate the client.

    @ivar issuer: the trusted issuer's identifier: its C{iss}, or
        C{spiffe://<trust domain>} for a SPIFFE trust domain.
    @ivar claims: the conditions, as (name, value) pairs sorted by name.
    """

    issuer: str
    subject: str
    claims: tuple[tuple[str, str], ...] = field(default=(), converter=_conditions)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> FederatedIdentity:
        """
        One element of validated C{federated_identities} metadata.
        """
        return cls(value["issuer"], value["subject"], value.get("claims") or {})

    def as_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"issuer": self.issuer, "subject": self.subject}
        if self.claims:
            document["claims"] = dict(self.claims)
        return document

    @property
    def key(self) -> str:
        """
        What the stores find it by (L{binding_key}).
        """
        return binding_key(self.issuer, self.subject)

    @property
    def conditions_key(self) -> str:
        """
        A digest of its conditions: with L{key}, what makes it unique among
        every client's bindings.
        """
        return _digest(json.dumps(dict(self.claims), sort_keys=True, separators=(",", ":")))

    def admits(self, issuer: str, subject: str, claims: Mapping[str, Any]) -> bool:
        """
        Whether a verified token of C{issuer} for C{subject} with these
        C{claims} is this workload: each condition is a claim of exactly
        that string value.
        """
        return (
            issuer == self.issuer
            and subject == self.subject
            and all(claims.get(name) == value for name, value in self.claims)
        )


@frozen
class WorkloadIdentity:
    """
    A workload's token, verified: signed by a trusted issuer's key, for
    this server, in its lifetime.

    @ivar issuer: the trusted issuer's identifier (for a SPIFFE JWT-SVID,
        which may carry no C{iss}, C{spiffe://<trust domain>}).
    @ivar subject: its C{sub}.
    @ivar claims: every claim of the token, as verified.
    """

    issuer: str
    subject: str
    claims: Mapping[str, Any] = field(factory=dict, converter=_readonly)


@frozen
class Client:
    """
    A registered client.

    @ivar client_id: its identifier.
    @ivar client_id_issued_at: when it was registered (seconds since the epoch).
    @ivar metadata: its RFC 7591 metadata as registered, JSON-compatible,
        without C{client_id} or any secret.
    @ivar client_secret_digest: the SHA-256 digest of its secret (hex); never
        the secret itself.
    @ivar registration_access_token_digest: the SHA-256 digest of its
        registration access token (hex).
    @ivar encrypted_secret: for a C{client_secret_jwt} client only, its
        secret encrypted with the key-encryption key (Fernet token, ASCII):
        the server needs the secret itself to check an HMAC.  L{None} for
        every other client, which keeps only the digest.  An empty
        C{client_secret_digest} means the client has no secret at all
        (C{private_key_jwt}).
    @ivar previous_secret_digest: after a secret rotation, the digest of
        the secret it replaced, which still authenticates until
        C{previous_secret_expires_at} (the grace period); None otherwise.
    @ivar previous_secret_expires_at: when the previous secret stops
        working (seconds since the epoch), or None.
    @ivar auth_method_named: whether its registration named its
        C{token_endpoint_auth_method}.  One that did not has
        C{client_secret_basic} (RFC 7591 §2's default) in its metadata, and
        may present its secret either way (L{SECRET_METHODS}).  A client
        stored before this was recorded counts as having named it.
    @ivar token_rate_limit: how many tokens it may be issued, set by the
        operator (the master token, the command); None for the server's
        default (C{[limits] tokens_per_client_per_second}).  Not RFC 7591
        metadata: the server's own, shown in its registration.
    """

    client_id: str
    client_id_issued_at: int
    metadata: Mapping[str, Any] = field(converter=_readonly)
    client_secret_digest: str = field(repr=False)
    registration_access_token_digest: str = field(repr=False)
    encrypted_secret: str | None = field(default=None, repr=False)
    previous_secret_digest: str | None = field(default=None, repr=False)
    previous_secret_expires_at: int | None = None
    auth_method_named: bool = True
    token_rate_limit: TokenRateLimit | None = None

    def previous_secret_digest_at(self, now: float) -> str | None:
        """
        The previous secret's digest while its grace period lasts (until
        C{previous_secret_expires_at}, exclusive), else None.
        """
        expires_at = self.previous_secret_expires_at
        if self.previous_secret_digest is None or expires_at is None or now >= expires_at:
            return None
        return self.previous_secret_digest

    @property
    def scope(self) -> frozenset[str]:
        """
        The scope values this client may be granted.
        """
        return scope_values(self.metadata.get("scope"))

    @property
    def grant_types(self) -> tuple[str, ...]:
        return tuple(self.metadata.get("grant_types", ()))

    @property
    def audience(self) -> tuple[str, ...]:
        """
        The resource servers (absolute URIs) this client may get tokens for.
        """
        return tuple(self.metadata.get("audience", ()))

    @property
    def token_endpoint_auth_method(self) -> str:
        return str(self.metadata.get("token_endpoint_auth_method", DEFAULT_AUTH_METHOD))

    @property
    def federated_identities(self) -> tuple[FederatedIdentity, ...]:
        """
        The workload identities bound to it (C{federated_identities}), for
        a C{federated_jwt} client; none for every other.
        """
        return tuple(
            FederatedIdentity.from_json(value)
            for value in self.metadata.get("federated_identities", ())
        )

    @property
    def token_endpoint_auth_methods(self) -> tuple[str, ...]:
        """
        The methods this client may authenticate with: the one it registered;
        both secret methods when its registration named none, since both
        carry the same secret (client libraries differ in which they use
        by default: requests-oauth2client and openid-client post it).
        """
        method = self.token_endpoint_auth_method
        if not self.auth_method_named and method == DEFAULT_AUTH_METHOD:
            return SECRET_METHODS
        return (method,)


def _frozen_scope(values: Iterable[str]) -> frozenset[str]:
    if isinstance(values, str):
        return scope_values(values)
    return frozenset(values)


def _optional_scope(values: Iterable[str] | None) -> frozenset[str] | None:
    return None if values is None else _frozen_scope(values)


def _audience(values: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    if isinstance(values, str):
        return (values,)
    return tuple(values)


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def check_claims(claims: Mapping[str, Any]) -> None:
    """
    Refuse a grant handler's extra claims that use a reserved name
    (L{RESERVED_CLAIMS}): the one check, for built-in and plugin handlers
    through L{GrantAuthorization} and for the webhook's answers alike.

    @raise ValueError: naming every reserved claim found.
    """
    reserved = sorted(RESERVED_CLAIMS.intersection(claims))
    if reserved:
        raise ValueError("reserved claims are set by the server only: " + ", ".join(reserved))


def may_act_problem(value: object) -> str | None:
    """
    What is wrong with an RFC 8693 §4.4 C{may_act} value, or None: it must
    be a JSON object whose C{sub} is a non-empty string, every member a
    string.  The one rule for handlers and the webhook's answers.
    """
    if not isinstance(value, Mapping):
        return "must be an object"
    sub = value.get("sub")
    if not isinstance(sub, str) or not sub:
        return "must have a sub, a non-empty string"
    for name, member in value.items():
        if not isinstance(name, str) or not isinstance(member, str):
            return "must have strings for members"
    return None


def _optional_may_act(value: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if value is None:
        return None
    problem = may_act_problem(value)
    if problem is not None:
        raise ValueError(f"GrantAuthorization.may_act: {problem}, not {value!r}")
    return MappingProxyType(dict(value))


def _check_claims(instance: object, attribute: object, claims: Mapping[str, Any]) -> None:
    try:
        check_claims(claims)
    except ValueError as e:
        raise ValueError(f"GrantAuthorization.claims: {e}") from None


@frozen
class Authenticated:
    """
    Who a token request authenticated as: the client, and for a client
    that authenticated with its workload's token (C{federated_jwt}, or the
    assertion of the JWT bearer grant) that token, verified.
    """

    client: Client
    workload: WorkloadIdentity | None = None


@frozen
class GrantRequest:
    """
    A client's request for an access token, as a grant handler sees it.

    @ivar client: the authenticated, registered client.
    @ivar scope: the scope values requested, or L{None} when the request
        named no scope.
    @ivar params: the other form parameters of the token request (never the
        client's credentials).
    @ivar issuer: this server's issuer identifier.
    @ivar grant_type: the request's C{grant_type}: C{client_credentials},
        or that of a grant type plugin that asks the handler the same way.
    """

    client: Client
    scope: frozenset[str] | None = field(converter=_optional_scope)
    params: Mapping[str, str] = field(converter=_readonly, factory=dict)
    issuer: str = ""
    #: The RFC 8707 C{resource} values of the request (absolute URIs), in
    #: the order given; empty when it named none.
    resource: tuple[str, ...] = field(default=(), converter=_strings)
    grant_type: str = CLIENT_CREDENTIALS
    #: The workload token the client authenticated with (C{federated_jwt},
    #: or the assertion of the JWT bearer grant), verified: its issuer,
    #: subject and every claim, for a handler to decide on; None for every
    #: other client.
    workload: WorkloadIdentity | None = None


class TokenRequest(NamedTuple):
    """
    A request to the token endpoint, as a grant type plugin gets it
    (L{ccserver.interfaces.IGrantType}): its parameters, read once, and
    what came with it.  It passes it back to the endpoint's steps
    (L{ccserver.interfaces.ITokenEndpoint}), which read the rest.

    A named tuple, not an attrs class: one is made for every token request,
    and this is the cheapest immutable object Python has.
    """

    #: The form parameters, each given once (RFC 6749 §3.2), C{grant_type}
    #: among them; those sent empty are left out.
    form: Mapping[str, str]
    #: The C{Authorization} header, if any.
    authorization: str | None
    #: The RFC 8707 C{resource} parameters, in order (repeatable).
    resource: Sequence[str] = ()
    #: The RFC 8693 C{audience} parameters, in order (repeatable).
    audience: Sequence[str] = ()
    #: Every C{DPoP} header value (RFC 9449).
    dpop: Sequence[str] = ()
    #: The TLS client certificate (RFC 8705), a
    #: L{ccserver.oauth.mtls.PresentedCertificate}, or None.
    certificate: Any = None
    #: The caller's address, which the brute-force limits count by.
    source: str = ""

    @property
    def grant_type(self) -> str:
        return self.form["grant_type"]


@frozen
class Binding:
    """
    What a token about to be issued is bound to (L{ITokenEndpoint.bind}):
    the DPoP key of the request's proof (RFC 9449 §6, C{cnf.jkt}), the TLS
    client certificate (RFC 8705 §3, C{cnf.x5t#S256}), and the DPoP nonce
    to send with the answer.  A bearer token has none (the endpoint gives
    L{None} rather than an empty one).
    """

    jkt: str | None = None
    x5t_s256: str | None = None
    dpop_nonce: str | None = None


@frozen
class TokenRef:
    """
    A token a token made by exchange dies with: its client and its C{jti}.
    """

    client_id: str
    jti: str

    def as_json(self) -> dict[str, str]:
        return {"client_id": self.client_id, "jti": self.jti}


def _refs(values: Iterable[TokenRef]) -> tuple[TokenRef, ...]:
    return tuple(values)


@frozen
class VerifiedToken:
    """
    A token presented in a token exchange (RFC 8693 §2.1: a subject or an
    actor token), once its validator has checked it: signature, issuer,
    expiry, revocation.

    @ivar token_type: its RFC 8693 §3 type URI, as presented.
    @ivar claims: what it says: the claims of a JWT, or what introspection
        says of an opaque token (without C{active} or C{token_type}).
    @ivar lineage: for this server's own tokens, the token itself and the
        tokens it was made from, nearest first: what a token made from it
        dies with.  Empty for a token from elsewhere.
    """

    token_type: str
    claims: Mapping[str, Any] = field(converter=_readonly)
    lineage: tuple[TokenRef, ...] = field(default=(), converter=_refs)

    @property
    def subject(self) -> str | None:
        """
        Its C{sub}, if it has one that is a string.
        """
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else None

    @property
    def audience(self) -> tuple[str, ...]:
        aud = self.claims.get("aud", ())
        if isinstance(aud, str):
            return (aud,)
        return tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()

    @property
    def scope(self) -> frozenset[str]:
        scope = self.claims.get("scope")
        return scope_values(scope) if isinstance(scope, str) else frozenset()

    @property
    def expires_at(self) -> int | None:
        exp = self.claims.get("exp")
        return exp if isinstance(exp, int) and not isinstance(exp, bool) else None


@frozen
class TokenExchangeRequest:
    """
    A token exchange (RFC 8693 §2.1), as a grant handler sees it
    (L{ccserver.interfaces.ITokenExchangeHandler}): the subject and actor
    tokens, verified, and what the exchanging client asks for.

    @ivar client: the exchanging client, authenticated.
    @ivar subject: the subject token, verified: whose token the new one is
        (its C{sub} becomes the new token's).
    @ivar actor: the actor token, verified, or None: who acts (without one,
        the exchanging client).
    @ivar scope: the scope values requested, or None when the request named
        none.
    @ivar audience: the RFC 8693 C{audience} values requested, in order.
    @ivar resource: the RFC 8707 C{resource} values requested, in order.
    @ivar requested_token_type: the type asked for (L{ACCESS_TOKEN_TYPE} by
        default, or L{JWT_TOKEN_TYPE}).
    @ivar params: the request's other form parameters.
    @ivar issuer: this server's issuer identifier.
    """

    client: Client
    subject: VerifiedToken
    actor: VerifiedToken | None
    scope: frozenset[str] | None = field(converter=_optional_scope)
    audience: tuple[str, ...] = field(default=(), converter=_strings)
    resource: tuple[str, ...] = field(default=(), converter=_strings)
    requested_token_type: str = ACCESS_TOKEN_TYPE
    params: Mapping[str, str] = field(converter=_readonly, factory=dict)
    issuer: str = ""

    @property
    def targets(self) -> tuple[str, ...]:
        """
        Every audience and resource value requested, in order, once each.
        """
        return tuple(dict.fromkeys((*self.audience, *self.resource)))


@frozen
class Delegation:
    """
    What a token made by a token exchange says beyond a grant handler's
    decision, set by the server only (RFC 8693 §4): whose it is and who
    acts, which tokens it dies with, and when it must end at the latest.

    @ivar subject: its C{sub}, the subject token's.
    @ivar actor: its C{act} claim: the acting party, with the subject
        token's own C{act} nested in it (RFC 8693 §4.1).
    @ivar exchanged_from: the tokens it dies with (L{EXCHANGED_FROM}).
    @ivar expires_at_most: its C{exp} is no later (the subject token's).
    """

    subject: str
    actor: Mapping[str, Any] = field(converter=_readonly)
    exchanged_from: tuple[TokenRef, ...] = field(default=(), converter=_refs)
    expires_at_most: int | None = None

    def claims(self) -> dict[str, Any]:
        """
        Its claims, as the token carries them.
        """
        claims: dict[str, Any] = {"sub": self.subject, "act": _plain(self.actor)}
        if self.exchanged_from:
            claims[EXCHANGED_FROM] = [ref.as_json() for ref in self.exchanged_from]
        return claims


def _plain(value: Any) -> Any:
    """
    A JSON value with read-only mappings made dicts again.
    """
    if isinstance(value, Mapping):
        return {name: _plain(member) for name, member in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(member) for member in value]
    return value


@frozen
class GrantAuthorization:
    """
    A grant handler's decision: what the access token carries.

    @ivar scope: the scope values granted (any iterable of str, kept as a
        frozenset; a string is split on spaces).
    @ivar lifetime: the token's lifetime in seconds, or L{None} for the
        server's default.
    @ivar audience: the token's audience, or L{None} for the server's default.
    @ivar claims: extra top-level claims for the token.  Reserved claims
        (L{RESERVED_CLAIMS}) raise L{ValueError}.
    @ivar token_format: C{"jwt"}, C{"opaque"}, or L{None} for the server's
        configured format.
    @ivar may_act: RFC 8693 §4.4: who may exchange the token and act on
        behalf of its subject although the token is not for them: an
        object whose C{sub} (a string) is that party's, as its own tokens
        say it (a client's C{client_id}); other members, strings, must
        match too.  L{None}: only the token's audience may.
    """

    scope: frozenset[str] = field(converter=_frozen_scope)
    lifetime: int | None = None
    audience: tuple[str, ...] | None = field(default=None, converter=_audience)
    claims: Mapping[str, Any] = field(
        factory=dict, converter=_readonly, validator=_check_claims
    )
    token_format: str | None = None
    may_act: Mapping[str, str] | None = None

    def __attrs_post_init__(self) -> None:
        if self.lifetime is not None and not is_lifetime(self.lifetime):
            raise ValueError(
                f"GrantAuthorization.lifetime must be a positive int, not {self.lifetime!r}"
            )
        if self.may_act is not None:
            # checked here rather than by a converter, which would be
            # called for every decision, most without a may_act
            object.__setattr__(self, "may_act", _optional_may_act(self.may_act))


@frozen
class IssuedToken:
    """
    An access token as the token endpoint returns it.
    """

    access_token: str = field(repr=False)
    expires_in: int
    scope: frozenset[str]
    token_type: str = "Bearer"
    #: RFC 9449 §8.2: the DPoP nonce to send with the answer, if any.
    dpop_nonce: str | None = None
    #: What the metrics count it by (not part of the answer): its format,
    #: the algorithm that signed it ("none" for an opaque token), and how
    #: its client authenticated.
    token_format: str = "jwt"
    alg: str = "none"
    auth_method: str = "client_secret_basic"
    #: RFC 8693 §2.2.1: the type of the token issued by a token exchange
    #: (L{ACCESS_TOKEN_TYPE} or L{JWT_TOKEN_TYPE}); None for other grants,
    #: whose answer has no such member.
    issued_token_type: str | None = None
    #: What the audit trail says of it (not part of the answer either): the
    #: client it was issued to, its C{jti}, audience and expiry, and the
    #: thumbprints it is bound to.
    client_id: str = ""
    token_id: str = ""
    audience: tuple[str, ...] = ()
    expires_at: int = 0
    jkt: str | None = None
    x5t_s256: str | None = None

    def as_json(self) -> dict[str, Any]:
        document = {
            "access_token": self.access_token,
            "token_type": self.token_type,
            "expires_in": self.expires_in,
            "scope": " ".join(sorted(self.scope)),
        }
        if self.issued_token_type is not None:
            document["issued_token_type"] = self.issued_token_type
        return document


@frozen
class TokenRecord:
    """
    What the store keeps of an issued opaque access token: its digest, never
    the token, and its grant.

    @ivar token_digest: the key the token is stored under: the SHA-256
        digest (hex) of the token, after the time it was made
        (L{ccserver.credentials.opaque_token_key}).
    @ivar client_id: the client it was issued to (also its C{sub}).
    @ivar scope: the scope values granted.
    @ivar audience: its audience.
    @ivar issued_at: when it was issued (seconds since the epoch).
    @ivar expires_at: when it expires; the store may forget it after then.
    @ivar jti: its unique identifier.
    @ivar claims: the grant handler's extra claims.
    @ivar jkt: the RFC 7638 thumbprint of the DPoP key the token is bound
        to (RFC 9449 §6), or None for a bearer token.
    @ivar x5t_s256: the thumbprint of the TLS client certificate it is
        bound to (RFC 8705 §3.1), or None for a bearer token.
    @ivar delegation: the RFC 8693 claims the server set (L{Delegation}):
        C{sub} when it is not the client's, C{act}, C{may_act}, and
        L{EXCHANGED_FROM}; empty for most tokens.
    """

    token_digest: str
    client_id: str
    scope: frozenset[str] = field(converter=_frozen_scope)
    audience: tuple[str, ...] = field(converter=_strings)
    issued_at: int
    expires_at: int
    jti: str
    claims: Mapping[str, Any] = field(factory=dict, converter=_readonly)
    jkt: str | None = None
    x5t_s256: str | None = None
    delegation: Mapping[str, Any] = field(default=EMPTY, converter=_readonly)


@frozen
class StoredKey:
    """
    A signing key as the store keeps it.

    @ivar kid: its key identifier.
    @ivar alg: the JWS algorithm it signs with.
    @ivar encrypted_private_key: the PEM of its private key, encrypted with
        the server's key-encryption key (Fernet token, ASCII).
    @ivar created_at: when it was made (seconds since the epoch).
    @ivar active_from: when it may start signing.
    @ivar retired_at: when it stopped signing, or L{None}.
    """

    kid: str
    alg: str
    encrypted_private_key: str = field(repr=False)
    created_at: int
    active_from: int
    retired_at: int | None = None


def _optional_strings(values: Iterable[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


@frozen
class InitialAccessToken:
    """
    RFC 7591 §3: a bearer token the operator hands out so that a team can
    register its own clients at C{POST /client-reg} without the master
    token, within limits: what the clients it registers may have, how many
    it may register, and until when.

    @ivar token_id: its public identifier, which the audit trail and the
        operator's listing name it by.
    @ivar token_digest: the SHA-256 digest (hex) of the token; never the
        token itself.
    @ivar created_at: when it was made (seconds since the epoch).
    @ivar expires_at: when it stops registering; the store may forget it
        after then.
    @ivar max_uses: how many clients it may register.
    @ivar uses: how many it has registered.
    @ivar note: the operator's note (who it is for).
    @ivar scope_limit: the scope values its clients may have, or None for
        any; likewise L{audience_limit} (their C{audience} and
        C{resource_server_uris}), L{auth_method_limit} (their
        C{token_endpoint_auth_method}) and L{grant_type_limit} (their
        C{grant_types}).
    @ivar revoked_at: when the operator revoked it, or None.
    """

    token_id: str
    token_digest: str = field(repr=False)
    created_at: int
    expires_at: int
    max_uses: int
    uses: int = 0
    note: str = ""
    scope_limit: tuple[str, ...] | None = field(default=None, converter=_optional_strings)
    audience_limit: tuple[str, ...] | None = field(default=None, converter=_optional_strings)
    auth_method_limit: tuple[str, ...] | None = field(default=None, converter=_optional_strings)
    grant_type_limit: tuple[str, ...] | None = field(default=None, converter=_optional_strings)
    revoked_at: int | None = None

    def unusable(self, now: float) -> str | None:
        """
        Why it cannot register a client at C{now}: C{"revoked"},
        C{"expired"} or C{"used_up"}; None when it can.
        """
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.expires_at:
            return "expired"
        if self.uses >= self.max_uses:
            return "used_up"
        return None


@frozen
class AttemptKeys:
    """
    Where one credential check is counted (L{ccserver.oauth.limits}), as
    L{ccserver.interfaces.IAuthAttemptStore} keeps it: every key an opaque
    digest, never a secret.
    """

    #: the credential tried from one source: at most C{budget} slots in a
    #: window (failed checks, checks under way, and slots a process keeps)
    counter: str
    budget: int
    #: the credential tried from every source not known for it: at most
    #: C{cap_budget} slots in a window; None for no such cap
    cap: str | None
    cap_budget: int
    #: present while the source is known for the credential (it used it
    #: successfully not long ago): the cap does not apply to it
    known: str


@frozen
class Reservation:
    """
    A store's answer to a reservation: a slot, or a refusal, and the
    windows it concerns.
    """

    #: whether a slot was reserved (in the counter, and in the cap unless
    #: the source is known)
    granted: bool
    #: the counter's slots, this one included if granted
    count: int
    #: when the counter's window ends (seconds since the epoch); it also
    #: names the window, for L{AttemptRelease}
    ends: float
    #: when the cap's window ends, if this reservation took a slot of it or
    #: the cap refused it; None when the source is known or there is no cap
    cap_ends: float | None = None
    #: whether the cap refused it (the counter had room)
    capped: bool = False


@frozen
class AttemptRelease:
    """
    What a successful check gives back, and records, in one write.
    """

    #: slots given back: (counter or cap key, the end of the window the
    #: slot was reserved in); a window that has ended meanwhile is left alone
    slots: tuple[tuple[str, float], ...] = ()
    #: a known-source key to record, and for how many seconds from now (the
    #: later of this and any expiry recorded already is kept)
    known: str | None = None
    known_for: float = 0.0


@frozen
class TokenGrant:
    """
    A store's answer to a request for tokens from a client's bucket
    (L{ccserver.interfaces.IRateLimitStore.take_tokens}).
    """

    #: how many were taken (0 to the number asked for)
    taken: int
    #: when fewer were taken than asked: seconds until the bucket holds one
    #: more whole token; else 0
    retry_after: float = 0.0
