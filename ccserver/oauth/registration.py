"""
Dynamic client registration (RFC 7591) and client configuration (RFC 7592).

Metadata validation lives here; so do the rules of who may read, replace and
delete a registration.  Nothing here knows of HTTP.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from attrs import define, evolve, field, frozen

from ccserver import audit, credentials, jose
from ccserver.clients import SecretRotation, rotate_secret
from ccserver.errors import (
    BindingTaken,
    ClientExists,
    OAuthError,
    invalid_client_metadata,
    invalid_request,
)
from ccserver.interfaces import IClientStore, IInitialAccessTokenStore
from ccserver.keys import KeyEncryptor
from ccserver.model import (
    CHECKED_CLAIMS,
    CLIENT_CREDENTIALS,
    DEFAULT_AUTH_METHOD,
    FEDERATED_JWT,
    JWT_BEARER_GRANT,
    SECRET_METHODS,
    Client,
    FederatedIdentity,
    InitialAccessToken,
    TokenRateLimit,
    is_lifetime,
    is_resource_uri,
    is_scope_token,
    scope_values,
    split_uri,
    token_rate_limit,
    token_rate_limit_problem,
)
from ccserver.oauth.assertions import (
    ASSERTION_ALGORITHMS,
    MAX_CLIENT_KEYS,
    unselectable,
)
from ccserver.oauth.clientauth import check_client_id
from ccserver.oauth.federation import MAX_SUBJECT_LENGTH, spiffe_trust_domain
from ccserver.oauth.limits import AuthLimits
from ccserver.oauth.mtls import BOUND_TOKENS, MTLS_METHODS, SUBJECT_FIELDS, validate_mtls_metadata
from ccserver.outbound import AddressPolicy, RefusedURL
from ccserver.text import identifier_problem

T = TypeVar("T")

#: The grant types a client registers for by default, and the ones a
#: registry accepts when it is not told which are loaded.
GRANT_TYPES = (CLIENT_CREDENTIALS,)
#: How clients may authenticate at the token endpoint.
AUTH_METHODS = (
    *SECRET_METHODS,
    "client_secret_jwt",
    "private_key_jwt",
    *MTLS_METHODS,
    FEDERATED_JWT,
)
#: The most workload identities one client may be bound to, and the most
#: claim conditions one binding may have.
MAX_FEDERATED_IDENTITIES = 20
MAX_CONDITIONS = 16
#: The longest issuer, claim name and claim value of a binding.
MAX_ISSUER_LENGTH = 1024
MAX_CLAIM_NAME_LENGTH = 256
MAX_CLAIM_VALUE_LENGTH = 1024
#: The methods whose client gets a client secret: the two that present it
#: (L{SECRET_METHODS}), and client_secret_jwt, whose assertions it signs.
SECRET_BEARING_METHODS = (*SECRET_METHODS, "client_secret_jwt")
#: Random bytes in a client_secret_jwt client's secret: 512 bits, so that
#: it is long enough an HMAC key for HS512 too (RFC 7518 §3.2).
JWT_SECRET_BYTES = 64

#: What the master token is told at a client's configuration endpoint
#: when there is no such client (deleted, or never registered).
NO_SUCH_CLIENT = "no client has this client_id: it was deleted, or never registered"
#: Where a client's C{jwks_uri} may point when the caller names no policy:
#: public addresses, over https.
STRICT = AddressPolicy.public()

_URI_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri", "jwks_uri")
_STRING_FIELDS = ("client_name", "software_id", "software_version")
# RFC 7591 §2.2: human-readable fields may carry a language tag, "client_name#fr".
_LOCALIZABLE = ("client_name", "client_uri", "logo_uri", "tos_uri", "policy_uri")
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")

#: Metadata that carries privilege: what the client's tokens grant (C{scope},
#: C{audience}, C{access_token_lifetime}), which tokens it may introspect
#: (C{resource_server_uris}), and how it gets and proves itself
#: (C{grant_types}, C{token_endpoint_auth_method}, and
#: C{dpop_bound_access_tokens}, RFC 9449 §5.2: a client whose key was stolen
#: with its token must not be able to drop the binding).  The operator sets them
#: with the master token; a client's own registration access token cannot
#: change them (RFC 7592 §2.2 lets the server refuse metadata values).
#: C{token_endpoint_auth_signing_alg}, C{jwks} and C{jwks_uri} are not
#: privileged: they are the client's keys, which it rotates itself (a change
#: of key type changes the algorithm with it), and they prove who it is
#: without granting anything more.
#: The one list to extend: token-binding fields such as
#: C{dpop_bound_access_tokens} and C{tls_client_certificate_bound_access_tokens}
#: belong here when they come (and in L{_WHEN_ABSENT} if their absence
#: means something other than None).
PRIVILEGED_FIELDS: tuple[str, ...] = (
    "scope",
    "audience",
    "resource_server_uris",
    "access_token_lifetime",
    "grant_types",
    "token_endpoint_auth_method",
    "dpop_bound_access_tokens",
    # RFC 8705: which certificate authenticates the client, and whether its
    # tokens are bound to one.
    BOUND_TOKENS,
    *SUBJECT_FIELDS,
    # which workloads' tokens authenticate it: a client that could bind
    # itself to any workload could take that workload's identity
    "federated_identities",
)

#: What a privileged field's absence means to the rest of the server (see
#: L{ccserver.model.Client}), so that leaving a field out and sending its
#: default compare equal.
_WHEN_ABSENT: dict[str, Any] = {
    "audience": [],
    "resource_server_uris": [],
    "grant_types": [],
    "token_endpoint_auth_method": DEFAULT_AUTH_METHOD,
    # RFC 9449 §5.2: "If omitted, the default value is false."
    "dpop_bound_access_tokens": False,
    BOUND_TOKENS: False,
    "federated_identities": [],
}


def _privilege(metadata: Mapping[str, Any], name: str) -> object:
    """
    What a privileged field grants, in a form that compares equal however it
    was written: a scope or a list as a set (order and repeats carry no
    privilege), an absent field as what its absence means.
    """
    value = metadata.get(name, _WHEN_ABSENT.get(name))
    if name == "scope":
        return scope_values(value)
    if isinstance(value, list):
        return frozenset(
            json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for v in value
        )
    return value


def privileged_changes(current: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """
    The privileged fields whose grant differs between two validated
    metadata documents, in L{PRIVILEGED_FIELDS} order.
    """
    return [
        name
        for name in PRIVILEGED_FIELDS
        if _privilege(current, name) != _privilege(new, name)
    ]


#: The server's own fields of a client, which only the operator (the master
#: token, the command) sets: not RFC 7591 metadata (kept apart from it, in
#: L{Client}), but given and shown with it.  A client's own registration
#: access token cannot change them (as L{PRIVILEGED_FIELDS}), and an
#: initial access token cannot set them.
OPERATOR_FIELDS: tuple[str, ...] = ("token_rate_limit",)


def requested_token_rate_limit(body: Mapping[str, Any]) -> TokenRateLimit | None:
    """
    The C{token_rate_limit} a registration request gives (an object,
    L{token_rate_limit_problem}; null or absent: none, the server's
    default applies).

    @raise OAuthError: C{invalid_client_metadata} naming the field.
    """
    value = body.get("token_rate_limit")
    if value is None:
        return None
    problem = token_rate_limit_problem(value)
    if problem is not None:
        raise invalid_client_metadata(f"token_rate_limit: {problem}")
    return token_rate_limit(value)


def operator_fields(body: object, operator: bool) -> TokenRateLimit | None:
    """
    The operator's fields (L{OPERATOR_FIELDS}) of a registration request:
    its C{token_rate_limit}, from the operator (C{operator}: the master
    token, the command); from anyone else (an initial access token), a
    request that gives one is refused.

    @raise OAuthError: C{invalid_client_metadata} naming the field.
    """
    if not isinstance(body, dict):
        raise invalid_client_metadata("the request body must be a JSON object")
    if not operator:
        given = [name for name in OPERATOR_FIELDS if name in body]
        if given:
            raise invalid_client_metadata(
                f"{given[0]}: only the master token (the operator) may set this field"
            )
    return requested_token_rate_limit(body)


def operator_only(names: list[str]) -> OAuthError:
    """
    The refusal of a change to L{PRIVILEGED_FIELDS} or L{OPERATOR_FIELDS}
    by a caller that is not the operator.
    """
    one = len(names) == 1
    return invalid_client_metadata(
        ", ".join(names)
        + ": only the master token (the operator) may change "
        + ("this field" if one else "these fields")
        + "; with the client's registration access token, send the "
        + ("registered value" if one else "registered values")
        + " to keep "
        + ("it" if one else "them")
    )


def bearer_error(description: str) -> OAuthError:
    """
    RFC 6750 §3.1: a missing or wrong bearer token at the registration
    endpoints (and a wrong master token at the revocation endpoint).
    """
    return OAuthError(
        "invalid_token",
        description,
        status=401,
        headers={"WWW-Authenticate": 'Bearer realm="ccserver", error="invalid_token"'},
    )


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise invalid_client_metadata(f"{name}: must be a string")
    return value


def _string_list(name: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid_client_metadata(f"{name}: must be an array of strings")
    return list(value)


def _absolute_uri(name: str, value: object) -> str:
    uri = _string(name, value)
    parts = split_uri(uri)
    if parts is None or parts.scheme not in ("https", "http") or not parts.netloc:
        raise invalid_client_metadata(f"{name}: {uri!r} is not an absolute http(s) URI")
    return uri


def _resource_uris(name: str, value: object) -> list[str]:
    uris = _string_list(name, value)
    for uri in uris:
        if not is_resource_uri(uri):
            raise invalid_client_metadata(f"{name}: {uri!r} is not an absolute URI without fragment")
    return list(dict.fromkeys(uris))


def check_scope(name: str, scope: str) -> str:
    values = scope.split(" ")
    if not scope or not all(is_scope_token(v) for v in values):
        raise invalid_client_metadata(
            f"{name}: must be scope values separated by single spaces (RFC 6749 §3.3)"
        )
    return " ".join(dict.fromkeys(values))


def names_auth_method(body: object) -> bool:
    """
    Whether a registration request names its C{token_endpoint_auth_method}.
    A client whose request did not is registered with RFC 7591 §2's
    default, C{client_secret_basic}, and may use C{client_secret_post} too
    (L{Client.token_endpoint_auth_methods}): the libraries that post the
    secret by default then work with it as registered.
    """
    return isinstance(body, dict) and "token_endpoint_auth_method" in body


def validate_metadata(
    body: object,
    jwks_uri_policy: AddressPolicy = STRICT,
    grant_types: Sequence[str] = GRANT_TYPES,
    trusted_issuers: Collection[str] = (),
) -> dict[str, Any]:
    """
    Check a registration request's metadata and fill in the defaults.

    Metadata this server does not understand is ignored (RFC 7591 §2).

    @param jwks_uri_policy: where a C{jwks_uri} may point (C{[client_auth]
        jwks_uri_private_networks}).
    @param grant_types: the grant types the server offers (its grant type
        plugins loaded): C{grant_types} may name only those.
    @param trusted_issuers: the identifiers of the trusted issuers
        (C{[[trusted_issuers]]}), the only ones a C{federated_identities}
        binding may name.
    @raise OAuthError: C{invalid_client_metadata}, naming the field.
    """
    if not isinstance(body, dict):
        raise invalid_client_metadata("the request body must be a JSON object")
    if "software_statement" in body:
        raise OAuthError(
            "invalid_software_statement", "software statements are not accepted here"
        )
    metadata: dict[str, Any] = {}

    # a client bound to workloads authenticates with their tokens, unless
    # its registration says otherwise (and is refused below)
    default_method = FEDERATED_JWT if "federated_identities" in body else DEFAULT_AUTH_METHOD
    method = body.get("token_endpoint_auth_method", default_method)
    method = _string("token_endpoint_auth_method", method)
    if method not in AUTH_METHODS:
        raise invalid_client_metadata(
            f"token_endpoint_auth_method: {method!r} is not supported; use one of "
            + ", ".join(AUTH_METHODS)
        )
    metadata["token_endpoint_auth_method"] = method

    # a workload may present its token either way, as a client assertion
    # with client_credentials or as the JWT bearer grant's assertion, where
    # the server offers that grant
    default_grants = [CLIENT_CREDENTIALS]
    if method == FEDERATED_JWT and JWT_BEARER_GRANT in grant_types:
        default_grants.append(JWT_BEARER_GRANT)
    requested = _string_list("grant_types", body.get("grant_types", default_grants))
    for grant_type in requested:
        if grant_type not in grant_types:
            raise invalid_client_metadata(
                f"grant_types: this server does not issue {grant_type!r}; it issues "
                + ", ".join(grant_types)
            )
        if grant_type == JWT_BEARER_GRANT and method != FEDERATED_JWT:
            raise invalid_client_metadata(
                f"grant_types: {JWT_BEARER_GRANT} is for federated_jwt clients: its "
                "assertion is the token of a workload bound to the client"
            )
    metadata["grant_types"] = list(dict.fromkeys(requested))
    _check_federation_metadata(body, method, trusted_issuers, metadata)

    response_types = _string_list("response_types", body.get("response_types", []))
    if response_types:
        raise invalid_client_metadata(
            "response_types: must be empty: this server has no authorization endpoint"
        )
    metadata["response_types"] = []

    application_type = body.get("application_type", "web")
    if application_type not in ("web", "native"):
        raise invalid_client_metadata("application_type: must be 'web' or 'native'")
    metadata["application_type"] = application_type

    if "scope" in body:
        metadata["scope"] = check_scope("scope", _string("scope", body["scope"]))

    if "audience" in body:
        metadata["audience"] = _resource_uris("audience", body["audience"])
    if "resource_server_uris" in body:
        metadata["resource_server_uris"] = _resource_uris(
            "resource_server_uris", body["resource_server_uris"]
        )
    if "access_token_lifetime" in body:
        lifetime = body["access_token_lifetime"]
        if not is_lifetime(lifetime):
            raise invalid_client_metadata("access_token_lifetime: must be a positive integer")
        metadata["access_token_lifetime"] = lifetime

    if "dpop_bound_access_tokens" in body:
        bound = body["dpop_bound_access_tokens"]
        if not isinstance(bound, bool):
            raise invalid_client_metadata("dpop_bound_access_tokens: must be true or false")
        metadata["dpop_bound_access_tokens"] = bound

    if "redirect_uris" in body:
        metadata["redirect_uris"] = [
            _absolute_uri("redirect_uris", uri)
            for uri in _string_list("redirect_uris", body["redirect_uris"])
        ]
    if "contacts" in body:
        metadata["contacts"] = _string_list("contacts", body["contacts"])
    if "jwks" in body:
        metadata["jwks"] = _public_jwks(body["jwks"])
    if "jwks" in body and "jwks_uri" in body:
        raise invalid_client_metadata("jwks_uri: must not be given together with jwks")
    if "jwks_uri" in body:
        _check_jwks_uri(body["jwks_uri"], jwks_uri_policy)
    _check_assertion_metadata(body, method, metadata)
    metadata.update(validate_mtls_metadata(body, method))

    for key, value in body.items():
        field, _, tag = key.partition("#")
        if tag and (field not in _LOCALIZABLE or not _LANGUAGE_TAG.match(tag)):
            continue
        if field in _URI_FIELDS:
            metadata[key] = _absolute_uri(key, value)
        elif field in _STRING_FIELDS:
            metadata[key] = _string(key, value)
    return metadata


def _public_jwks(jwks: object) -> dict[str, Any]:
    """
    A client's JWK set (RFC 7517 §5): at most L{MAX_CLIENT_KEYS} public
    keys, each one a client assertion may be signed with (and that
    L{jose.import_jwk} accepts: no RSA exponent but 65537, no RSA key over
    8192 bits, no EC point off its curve), each of which an assertion can
    choose (L{unselectable}).  A private member means the client has just
    published its private key: refused, and never echoed.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise invalid_client_metadata("jwks: must be a JWK set, an object with 'keys'")
    if len(jwks["keys"]) > MAX_CLIENT_KEYS:
        raise invalid_client_metadata(f"jwks: holds more than {MAX_CLIENT_KEYS} keys")
    keys = []
    for index, jwk in enumerate(jwks["keys"]):
        try:
            key = jose.import_jwk(jwk)
        except jose.UnusableKey as e:
            raise invalid_client_metadata(f"jwks: key {index} {e}") from None
        if not any(jose.key_fits(alg, key.key) for alg in ASSERTION_ALGORITHMS["private_key_jwt"]):
            raise invalid_client_metadata(
                f"jwks: key {index} cannot sign a client assertion: RSA keys need 2048 bits "
                "or more, EC keys the P-256 curve"
            )
        keys.append(key)
    problem = unselectable(keys, ASSERTION_ALGORITHMS["private_key_jwt"])
    if problem is not None:
        raise invalid_client_metadata(f"jwks: {problem}")
    return jwks


def _check_federation_metadata(
    body: Mapping[str, Any],
    method: str,
    trusted_issuers: Collection[str],
    metadata: dict[str, Any],
) -> None:
    """
    C{federated_jwt} needs C{federated_identities}, and they need it: at
    least one binding, each to a trusted issuer.
    """
    if method != FEDERATED_JWT:
        if "federated_identities" in body:
            raise invalid_client_metadata(
                "federated_identities: only for token_endpoint_auth_method federated_jwt"
            )
        return
    if not trusted_issuers:
        raise invalid_client_metadata(
            "token_endpoint_auth_method: federated_jwt needs trusted issuers, and this "
            "server has none ([[trusted_issuers]] in its configuration)"
        )
    if "federated_identities" not in body:
        raise invalid_client_metadata(
            "federated_identities: federated_jwt needs the workload identities whose tokens "
            'authenticate the client: [{"issuer": ..., "subject": ...}]'
        )
    identities = federated_identities(body["federated_identities"], trusted_issuers)
    metadata["federated_identities"] = [identity.as_json() for identity in identities]


def federated_identities(
    value: object, trusted_issuers: Collection[str]
) -> tuple[FederatedIdentity, ...]:
    """
    A client's C{federated_identities}: 1 to L{MAX_FEDERATED_IDENTITIES}
    bindings C{{"issuer": ISS, "subject": SUB, "claims": {NAME: VALUE}}},
    each to a trusted issuer (for a SPIFFE trust domain, a SPIFFE ID of it
    as the subject), with at most L{MAX_CONDITIONS} conditions on string
    claims other than those checked on their own (L{CHECKED_CLAIMS}), and
    none given twice.  A member the server does not know is refused, not
    ignored: a misspelt C{claims} would drop the conditions it holds.
    """
    name = "federated_identities"
    if not isinstance(value, list) or not value:
        raise invalid_client_metadata(f"{name}: must be a non-empty array of bindings")
    if len(value) > MAX_FEDERATED_IDENTITIES:
        raise invalid_client_metadata(f"{name}: more than {MAX_FEDERATED_IDENTITIES} bindings")
    found: list[FederatedIdentity] = []
    for index, binding in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(binding, dict):
            raise invalid_client_metadata(f"{where}: must be an object with issuer and subject")
        unknown = sorted(set(binding) - {"issuer", "subject", "claims"})
        if unknown:
            raise invalid_client_metadata(
                f"{where}: unknown member {unknown[0]!r}; a binding has issuer, subject "
                "and claims"
            )
        issuer = _bounded_text(f"{where}.issuer", binding.get("issuer"), MAX_ISSUER_LENGTH)
        if issuer not in trusted_issuers:
            raise invalid_client_metadata(
                f"{where}.issuer: {issuer!r} is not a trusted issuer of this server; "
                "trusted: " + ", ".join(trusted_issuers)
            )
        subject = _bounded_text(f"{where}.subject", binding.get("subject"), MAX_SUBJECT_LENGTH)
        if issuer.startswith("spiffe://") and spiffe_trust_domain(subject) != issuer:
            raise invalid_client_metadata(
                f"{where}.subject: must be a SPIFFE ID of the trust domain {issuer} "
                f"({issuer}/path)"
            )
        claims = binding.get("claims", {})
        if not isinstance(claims, dict) or len(claims) > MAX_CONDITIONS:
            raise invalid_client_metadata(
                f"{where}.claims: must be an object of at most {MAX_CONDITIONS} claims, "
                "each a string the token's claim must equal"
            )
        for claim, wanted in claims.items():
            _bounded_text(f"{where}.claims", claim, MAX_CLAIM_NAME_LENGTH)
            if claim in CHECKED_CLAIMS:
                raise invalid_client_metadata(
                    f"{where}.claims: {claim!r} is checked on its own, not as a condition "
                    "(the issuer and subject are the binding's own)"
                )
            _bounded_text(f"{where}.claims.{claim}", wanted, MAX_CLAIM_VALUE_LENGTH)
        identity = FederatedIdentity(issuer, subject, claims)
        if identity in found:
            raise invalid_client_metadata(f"{where}: the same binding is given twice")
        found.append(identity)
    return tuple(found)


def _bounded_text(name: str, value: object, longest: int) -> str:
    """
    A string of 1 to C{longest} printable characters (L{identifier_problem}:
    what a store key and an operator's terminal can hold).
    """
    problem = identifier_problem(value, longest)
    if problem is not None:
        raise invalid_client_metadata(f"{name} {problem}")
    assert isinstance(value, str)
    return value


def binding_taken(error: BindingTaken) -> OAuthError:
    """
    A binding of the request that the store found another client's.
    """
    identity = error.identity
    assert isinstance(identity, FederatedIdentity)
    conditions = " with these claims" if identity.claims else ""
    return invalid_client_metadata(
        f"federated_identities: the workload identity {identity.subject!r} of "
        f"{identity.issuer}{conditions} is bound to another client already"
    )


def _check_jwks_uri(value: object, policy: AddressPolicy) -> None:
    """
    The server fetches a client's C{jwks_uri}: public addresses over https,
    unless the operator allows more (L{AddressPolicy.check_url}); where a
    host name leads is checked again when it is fetched.
    """
    uri = _string("jwks_uri", value)
    try:
        policy.check_url(uri)
    except RefusedURL as e:
        raise invalid_client_metadata(f"jwks_uri: {e}") from None


def _check_assertion_metadata(
    body: Mapping[str, Any], method: str, metadata: dict[str, Any]
) -> None:
    """
    The metadata of client assertions (RFC 7591 §2): private_key_jwt needs
    the client's public keys (C{jwks} or C{jwks_uri}); the optional
    C{token_endpoint_auth_signing_alg} is one of its method's algorithms.
    """
    if method == "private_key_jwt" and "jwks" not in body and "jwks_uri" not in body:
        raise invalid_client_metadata(
            "jwks: private_key_jwt needs the client's public keys: give jwks or jwks_uri"
        )
    if "token_endpoint_auth_signing_alg" not in body:
        return
    alg = _string("token_endpoint_auth_signing_alg", body["token_endpoint_auth_signing_alg"])
    allowed = ASSERTION_ALGORITHMS.get(method)
    if allowed is None:
        raise invalid_client_metadata(
            "token_endpoint_auth_signing_alg: only for private_key_jwt and client_secret_jwt"
        )
    if alg not in allowed:
        raise invalid_client_metadata(
            f"token_endpoint_auth_signing_alg: {alg!r} is not allowed with {method}; use one of "
            + ", ".join(allowed)
        )
    if "jwks" in metadata and method == "private_key_jwt":
        keys = [jose.import_jwk(jwk).key for jwk in metadata["jwks"]["keys"]]
        if not any(jose.key_fits(alg, key) for key in keys):
            raise invalid_client_metadata(f"jwks: holds no key that signs {alg}")
    metadata["token_endpoint_auth_signing_alg"] = alg


def _secrets_for(client: Client, method: str) -> tuple[str, str | None]:
    """
    What a client keeps of its secret once (the operator) changed its
    method to C{method}: nothing for a method without a secret
    (C{private_key_jwt} and the certificate methods); the digest and the
    encrypted secret for C{client_secret_jwt}; else the digest only.  A
    secret the server no longer has (only a digest, or none) cannot be
    brought back, so a change needing one is refused.
    """
    if method not in SECRET_BEARING_METHODS:
        return "", None
    if method == "client_secret_jwt":
        if client.encrypted_secret is None:
            raise invalid_client_metadata(
                "token_endpoint_auth_method: client_secret_jwt needs a secret the server can "
                "read, and this client's was kept only as a digest: register a new client"
            )
        return client.client_secret_digest, client.encrypted_secret
    if not client.client_secret_digest:
        raise invalid_client_metadata(
            f"token_endpoint_auth_method: this client has no secret for {method}: "
            "register a new client"
        )
    return client.client_secret_digest, None


@frozen
class Registration:
    """
    A new client as the registration endpoint returns it: the client, and
    the secrets the caller sees this once (no client secret for a client
    that proves itself with its keys or its certificate).
    """

    client: Client
    client_secret: str | None = field(repr=False)
    registration_access_token: str = field(repr=False)
    #: the initial access token that registered it, as it is after this
    #: use; None when the master token or the operator did
    initial_access_token: InitialAccessToken | None = None


def client_information(client: Client, issuer: str) -> dict[str, Any]:
    """
    RFC 7591 §3.2.1 / RFC 7592 §3: the client information response, without
    the secrets the server keeps only as digests.
    """
    info: dict[str, Any] = {
        "client_id": client.client_id,
        "client_id_issued_at": client.client_id_issued_at,
        "registration_client_uri": registration_client_uri(issuer, client.client_id),
    }
    if client.client_secret_digest:
        # RFC 7591 §3.2.1: required where a secret was issued
        info["client_secret_expires_at"] = 0
    info.update(client.metadata)
    if client.token_rate_limit is not None:
        info["token_rate_limit"] = client.token_rate_limit.as_json()
    return info


def registration_response(registration: Registration, issuer: str) -> dict[str, Any]:
    """
    RFC 7591 §3.2.1: the answer to a registration, with the secrets the
    caller sees this once; the same for C{POST /client-reg} and C{ccserver
    clients create}.
    """
    document = client_information(registration.client, issuer)
    if registration.client_secret is not None:
        # a private_key_jwt or certificate client has none
        document["client_secret"] = registration.client_secret
    document["registration_access_token"] = registration.registration_access_token
    return document


async def register_client(
    store: IClientStore,
    body: object,
    now: Callable[[], float],
    secret_encryptor: KeyEncryptor | None = None,
    jwks_uri_policy: AddressPolicy = STRICT,
    grant_types: Sequence[str] = GRANT_TYPES,
    trusted_issuers: Collection[str] = (),
    *,
    operator: bool = True,
) -> Registration:
    """
    Check a registration request's metadata (L{validate_metadata}, with
    C{jwks_uri_policy} for where its C{jwks_uri} may point, and the
    C{grant_types} the server offers) and store
    a new client of it, with a new identifier, secret and registration
    access token: the registration itself, the one path for the endpoint
    (once the master token is proven) and the operator's command.

    Only the methods that present a secret (L{SECRET_BEARING_METHODS}) get
    one: a C{private_key_jwt} client proves itself with its keys, a
    C{tls_client_auth} or C{self_signed_tls_client_auth} client with its
    certificate, and a secret they could never use is one more thing to
    leak.  A C{client_secret_jwt} client's secret is long enough for HS512
    and kept encrypted with C{secret_encryptor} too, since checking an HMAC
    needs the secret itself.  Whether C{body} named its method is recorded
    (L{Client.auth_method_named}).

    A C{federated_jwt} client's bindings (C{federated_identities}, to
    C{trusted_issuers} only) are refused if another client has one of them
    already: the store checks, in the same atomic step as it adds the client.

    The operator's fields (L{OPERATOR_FIELDS}: C{token_rate_limit}) are
    taken from C{body} too, if the caller is the operator (C{operator}:
    the master token, the command); from anyone else, they are refused.

    @raise OAuthError: C{invalid_client_metadata} for bad metadata, a
        binding another client has, C{client_secret_jwt} without an
        encryptor, or an operator's field given by another.
    """
    metadata = validate_metadata(body, jwks_uri_policy, grant_types, trusted_issuers)
    rate_limit = operator_fields(body, operator)
    return await _stored(metadata, body, now, secret_encryptor, store.add_client, rate_limit)


async def _stored(
    metadata: dict[str, Any],
    body: object,
    now: Callable[[], float],
    secret_encryptor: KeyEncryptor | None,
    add: Callable[[Client], Awaitable[object]],
    token_rate_limit: TokenRateLimit | None = None,
) -> Registration:
    """
    A new client of checked C{metadata}, with its secrets (see
    L{register_client}) and the operator's C{token_rate_limit}, stored by
    C{add}; a new id is drawn while C{add} finds the id taken.
    """
    method = metadata["token_endpoint_auth_method"]
    client_secret: str | None = None
    encrypted_secret = None
    if method == "client_secret_jwt":
        if secret_encryptor is None:
            raise invalid_client_metadata(
                "token_endpoint_auth_method: client_secret_jwt is not available on this server"
            )
        client_secret = credentials.new_secret(JWT_SECRET_BYTES)
        encrypted_secret = secret_encryptor.encrypt_secret(client_secret)
    elif method in SECRET_BEARING_METHODS:
        client_secret = credentials.new_secret()
    registration_access_token = credentials.new_secret()
    while True:
        client = Client(
            client_id=credentials.new_client_id(),
            client_id_issued_at=int(now()),
            metadata=metadata,
            client_secret_digest=credentials.digest(client_secret) if client_secret else "",
            registration_access_token_digest=credentials.digest(registration_access_token),
            encrypted_secret=encrypted_secret,
            auth_method_named=names_auth_method(body),
            token_rate_limit=token_rate_limit,
        )
        try:
            await add(client)
        except ClientExists:
            continue  # 128 random bits: never in practice, but never an error
        except BindingTaken as e:
            raise binding_taken(e) from None
        return Registration(client, client_secret, registration_access_token)


def check_initial_access_token_limits(
    token: InitialAccessToken, metadata: Mapping[str, Any]
) -> None:
    """
    RFC 7591 §3: the server may limit what a client registered with an
    initial access token gets.  Each limit the token has holds: its
    registered scope values, audiences (and resource server URIs, which say
    whose tokens it may introspect), authentication method and grant types
    are among the token's.

    A client bound to workload identities (C{federated_identities}) is
    registered with the master token only: no limit of the token says which
    workloads its holder may speak for, and a binding, once made, is that
    workload's (no other client may have it).

    @raise OAuthError: C{invalid_client_metadata} naming the first field
        beyond its limit, and what the limit allows.
    """
    if "federated_identities" in metadata:
        raise invalid_client_metadata(
            "federated_identities: an initial access token does not bind clients to "
            "workload identities; ask the operator (the master token, or ccserver "
            "clients create --federated-identity)"
        )
    checks: list[tuple[str, tuple[str, ...] | None, set[str]]] = [
        ("scope", token.scope_limit, set(scope_values(metadata.get("scope")))),
        ("audience", token.audience_limit, set(metadata.get("audience", ()))),
        (
            "resource_server_uris",
            token.audience_limit,
            set(metadata.get("resource_server_uris", ())),
        ),
        (
            "token_endpoint_auth_method",
            token.auth_method_limit,
            {metadata["token_endpoint_auth_method"]},
        ),
        ("grant_types", token.grant_type_limit, set(metadata.get("grant_types", ()))),
    ]
    for name, limit, values in checks:
        if limit is None:
            continue
        beyond = sorted(values - set(limit))
        if beyond:
            allowed = ", ".join(limit) if limit else "none"
            raise invalid_client_metadata(
                f"{name}: {', '.join(beyond)} beyond what this initial access token allows "
                f"({allowed})"
            )


#: Random bytes in an initial access token's identifier (after C{iat_}).
INITIAL_ACCESS_TOKEN_ID_BYTES = 9


def new_initial_access_token(
    now: int,
    *,
    expires_in: int,
    max_uses: int,
    note: str = "",
    scope_limit: Sequence[str] | None = None,
    audience_limit: Sequence[str] | None = None,
    auth_method_limit: Sequence[str] | None = None,
    grant_type_limit: Sequence[str] | None = None,
) -> tuple[str, InitialAccessToken]:
    """
    A new initial access token (RFC 7591 §3): the token, which its holder
    sees once, and what the store keeps of it (its digest, never the
    token).  Its limits are taken as given (the caller checks them).
    """
    token = credentials.new_secret()
    record = InitialAccessToken(
        token_id="iat_" + secrets.token_urlsafe(INITIAL_ACCESS_TOKEN_ID_BYTES),
        token_digest=credentials.digest(token),
        created_at=now,
        expires_at=now + expires_in,
        max_uses=max_uses,
        note=note,
        scope_limit=None if scope_limit is None else sorted(set(scope_limit)),
        audience_limit=None if audience_limit is None else list(dict.fromkeys(audience_limit)),
        auth_method_limit=(
            None if auth_method_limit is None else list(dict.fromkeys(auth_method_limit))
        ),
        grant_type_limit=None if grant_type_limit is None else list(dict.fromkeys(grant_type_limit)),
    )
    return token, record


def initial_access_token_limits(token: InitialAccessToken) -> dict[str, Any]:
    """
    An initial access token's limits, as the audit trail and the operator's
    listing name them (None: no limit).
    """
    return {
        "scope_limit": token.scope_limit,
        "audience_limit": token.audience_limit,
        "auth_method_limit": token.auth_method_limit,
        "grant_type_limit": token.grant_type_limit,
    }


#: What the caller holding an initial access token is told when it no
#: longer registers (L{InitialAccessToken.unusable}).
_UNUSABLE = {
    "revoked": "the initial access token has been revoked",
    "expired": "the initial access token has expired",
    "used_up": "the initial access token has registered as many clients as it may",
}


def registration_client_uri(issuer: str, client_id: str) -> str:
    return f"{issuer}/client-reg/{client_id}"


class ClientRegistry:
    """
    The registration rules over a client store.
    """

    def __init__(
        self,
        store: IClientStore,
        master_token_digest: str,
        now: Callable[[], float],
        *,
        token_max_lifetime: int,
        client_cache_seconds: float,
        authoritative: IClientStore | None = None,
        secret_encryptor: KeyEncryptor | None = None,
        limits: AuthLimits | None = None,
        secret_rotation_grace: int = 1800,
        jwks_uri_policy: AddressPolicy = STRICT,
        grant_types: Sequence[str] = GRANT_TYPES,
        trusted_issuers: Collection[str] = (),
        initial_access_tokens: IInitialAccessTokenStore | None = None,
    ) -> None:
        """
        @param token_max_lifetime: no token lives longer (C{[tokens]
            max_lifetime}): how long a deleted client's revocation mark is kept.
        @param client_cache_seconds: how long another instance may still
            know a deleted client (C{[store] client_cache_seconds}), and so
            issue it tokens: the revocation mark covers them too.
        @param authoritative: the store under C{store}'s cache, if any.  A
            replacement by the client's own token is checked against the
            record read from it, not one cached for up to C{[store]
            client_cache_seconds}: else, on another instance, a client
            could write back privileges the operator has just taken away.
        @param secret_encryptor: encrypts the secrets of C{client_secret_jwt}
            clients for the store (the key-encryption key); without one,
            such clients cannot be registered.
        @param limits: the brute-force limits: the master token, and each
            client's registration access token, have budgets of their own.
        @param secret_rotation_grace: how long a rotated-out secret still
            works (C{[clients] secret_rotation_grace}).
        @param jwks_uri_policy: where a client's C{jwks_uri} may point
            (C{[client_auth] jwks_uri_private_networks}).
        @param grant_types: the grant types the server offers, which a
            client's C{grant_types} may name.
        @param trusted_issuers: the identifiers of the trusted issuers, the
            only ones a client may be bound to (C{federated_identities}).
        @param initial_access_tokens: where initial access tokens are kept
            (RFC 7591 §3); without it, only the master token registers.
        """
        self._store = store
        self._master_token_digest = master_token_digest
        self._now = now
        self._token_max_lifetime = token_max_lifetime
        self._client_cache_seconds = client_cache_seconds
        self._authoritative = authoritative
        self._secret_encryptor = secret_encryptor
        self._limits = limits or AuthLimits(None, now)
        self._secret_rotation_grace = secret_rotation_grace
        self._jwks_uri_policy = jwks_uri_policy
        self._grant_types = tuple(grant_types)
        self._trusted_issuers = tuple(trusted_issuers)
        self._initial_access_tokens = initial_access_tokens

    async def check_master_token(self, token: str | None, source: str = "") -> None:
        """
        @raise OAuthError: C{invalid_token} unless C{token} is the master
            token; 429 once C{source} has made too many wrong attempts.
        """
        if token is None:
            raise bearer_error("registration needs the master token as a bearer token")
        digest = self._master_token_digest

        async def check() -> None:
            if not credentials.check(token, digest):
                raise bearer_error("the bearer token is not valid for registration")

        if not token:
            # a malformed Authorization header: no token was tried, nothing
            # to count
            await check()
        await self._limits.master(source, check)

    async def register(
        self, token: str | None, read_body: Callable[[], object], source: str = ""
    ) -> Registration:
        """
        RFC 7591 §3: register a new client, with the master token (any
        metadata) or an initial access token (within its limits, while it
        has uses left and has neither expired nor been revoked).

        @param read_body: parses the request's metadata; called only once
            the caller is authorised, so that a stranger learns nothing
            from the errors of a bad body.
        """
        request = _Request("register", source)
        return await request.told(self._register(request, token, read_body))

    async def _register(
        self, request: _Request, token: str | None, read_body: Callable[[], object]
    ) -> Registration:
        initial = await self._registration_credential(request, token)
        body = read_body()
        if initial is None:
            registration = await register_client(
                self._store,
                body,
                self._now,
                self._secret_encryptor,
                self._jwks_uri_policy,
                self._grant_types,
                self._trusted_issuers,
            )
        else:
            registration = await self._register_with(request, initial, body)
        client = registration.client
        request.client_id = client.client_id
        audit.emit(
            audit.CLIENT_REGISTERED,
            request.actor,
            request.source,
            **registered_fields(client),
        )
        used = registration.initial_access_token
        if used is not None:
            audit.emit(
                audit.INITIAL_ACCESS_TOKEN_USED,
                request.actor,
                request.source,
                initial_access_token_id=used.token_id,
                client_id=client.client_id,
                uses=used.uses,
                max_uses=used.max_uses,
            )
        return registration

    async def _registration_credential(
        self, request: _Request, token: str | None
    ) -> InitialAccessToken | None:
        """
        The initial access token C{token} is, or None when it is the master
        token.  A wrong token counts against both (L{AuthLimits.initial_registration}).

        @raise OAuthError: C{invalid_token}, for a token that is neither,
            or an initial access token that no longer registers.
        """
        if token is None:
            raise bearer_error(
                "registration needs the master token, or an initial access token, as a "
                "bearer token"
            )
        master_digest = self._master_token_digest
        tokens = self._initial_access_tokens

        async def check(initial: bool, master: bool) -> tuple[InitialAccessToken | None, bool]:
            if credentials.check(token, master_digest if master else None):
                request.actor = audit.MASTER_TOKEN
                return None, True
            found = None
            if initial and tokens is not None and token:
                found = await tokens.get_initial_access_token(credentials.digest(token))
            if found is None:
                raise bearer_error("the bearer token is not valid for registration")
            request.actor = audit.initial_access_token(found.token_id)
            request.initial_access_token_id = found.token_id
            self._check_usable(request, found)
            return found, False

        if not token:
            # a malformed Authorization header: no token was tried, nothing
            # to count
            return (await check(False, False))[0]
        found, _ = await self._limits.initial_registration(request.source or "", check)
        return found

    def _check_usable(self, request: _Request, token: InitialAccessToken) -> None:
        reason = token.unusable(self._now())
        if reason is not None:
            request.reason = reason
            raise bearer_error(_UNUSABLE[reason])

    async def _register_with(
        self, request: _Request, token: InitialAccessToken, body: object
    ) -> Registration:
        """
        Register a client within C{token}'s limits, counting one of its
        uses in the same atomic step as the client is stored.
        """
        tokens = self._initial_access_tokens
        assert tokens is not None  # it was found there
        metadata = validate_metadata(
            body, self._jwks_uri_policy, self._grant_types, self._trusted_issuers
        )
        operator_fields(body, operator=False)
        check_initial_access_token_limits(token, metadata)
        used: list[InitialAccessToken] = []

        async def add(client: Client) -> None:
            now = int(self._now())
            after = await tokens.register_with_initial_access_token(
                token.token_digest, client, now
            )
            if after is None:
                # used up, revoked or expired since it was found
                current = await tokens.get_initial_access_token(token.token_digest)
                request.reason = (current or token).unusable(now) or "used_up"
                raise bearer_error(_UNUSABLE[request.reason])
            used.append(after)

        registration = await _stored(metadata, body, self._now, self._secret_encryptor, add)
        return evolve(registration, initial_access_token=used[-1])

    async def _authorized(
        self, client_id: str, token: str | None, source: str, request: _Request | None = None
    ) -> tuple[Client, bool]:
        """
        RFC 7592 §2: the client whose configuration endpoint this is, if
        C{token} is its registration access token or the master token, and
        whether it was the master token (the operator, who manages any
        client).  An unknown client gets the same answer as a wrong token.
        A wrong token counts against the client's registration access token
        from C{source}, and against the master token tried here (see
        L{AuthLimits.registration}), never against the master token's own
        budget at C{/client-reg}.
        """
        check_client_id(client_id)
        if token is None:
            raise bearer_error("this endpoint needs the client's registration access token")
        if not token:
            # a malformed Authorization header: no token was tried
            authorized = await self._check_token(client_id, token, True, True)
        else:
            authorized = await self._limits.registration(
                client_id,
                source,
                lambda own, master: self._check_token(client_id, token, own, master),
            )
        if request is not None:
            request.actor = (
                audit.MASTER_TOKEN
                if authorized[1]
                else audit.registration_access_token(client_id)
            )
        return authorized

    async def _check_token(
        self, client_id: str, token: str, own: bool, master: bool
    ) -> tuple[Client, bool]:
        """
        @param own: whether the client's registration access token may be
            tried (the limits may have refused it).
        @param master: whether the master token may be tried.
        """
        client = await self._store.get_client(client_id)
        expected = client.registration_access_token_digest if client and own else None
        # Both digests are always compared, in constant time: which one
        # matched must not show in the time taken.
        is_client, is_master = credentials.matches(
            token, (expected, self._master_token_digest if master else None)
        )
        if client is not None and (is_client or is_master):
            return client, is_master
        if is_master:
            # The operator may know: RFC 7592 keeps 401 for a client that
            # does not exist, but the master token was right.
            raise bearer_error(NO_SUCH_CLIENT)
        raise bearer_error("the registration access token is not valid for this client")

    async def read(self, client_id: str, token: str | None, source: str = "") -> Client:
        request = _Request("read", source, client_id)
        client, _ = await request.told(self._authorized(client_id, token, source, request))
        audit.emit(audit.CLIENT_READ, request.actor, request.source, client_id=client_id)
        return client

    async def replace(
        self,
        client_id: str,
        token: str | None,
        read_body: Callable[[], object],
        source: str = "",
    ) -> Client:
        """
        RFC 7592 §2.2: replace the client's metadata with the request's.

        The request replaces the metadata whole: a field left out is
        deleted, or goes back to its default.  With the master token any
        field may change.  With the client's own registration access token
        the L{PRIVILEGED_FIELDS} may not: the request is refused with
        C{invalid_client_metadata} naming each one whose grant would change
        (RFC 7592 §2.2: the server may refuse or replace values).  A field
        counts as unchanged when, after validation fills in the defaults, it
        grants the same as before: the same scope values in another order
        or repeated, a default left out.  A privileged field the operator
        registered with a value of its own and the request leaves out would
        go back to its default, which is a change, and is refused: a client
        repeats it (GET gives it) to keep it.  Kept fields are stored as the
        operator wrote them.
        """
        request = _Request("update", source, client_id)
        return await request.told(self._replace(request, client_id, token, read_body))

    async def _replace(
        self,
        request: _Request,
        client_id: str,
        token: str | None,
        read_body: Callable[[], object],
    ) -> Client:
        source = request.source or ""
        client, is_master = await self._authorized(client_id, token, source, request)
        if not is_master and self._authoritative is not None:
            stored = await self._authoritative.get_client(client_id)
            if stored is None:
                raise bearer_error("the registration access token is not valid for this client")
            client = stored
        body = read_body()
        if not isinstance(body, dict):
            raise invalid_client_metadata("the request body must be a JSON object")
        if body.get("client_id") != client_id:
            raise invalid_request("client_id: must be given and match this client's client_id")
        if "client_secret" in body and not credentials.check(
            str(body["client_secret"]), client.client_secret_digest
        ):
            raise invalid_request("client_secret: does not match; a client cannot choose its secret")
        current = client_information(client, "")
        for name in ("client_id_issued_at", "client_secret_expires_at"):
            if name in body and body[name] != current.get(name):
                raise invalid_request(f"{name}: is set by the server and cannot be changed")
        # a grant type the server stopped offering may stay registered
        metadata = validate_metadata(
            body,
            self._jwks_uri_policy,
            (*self._grant_types, *client.grant_types),
            self._trusted_issuers,
        )
        rate_limit = requested_token_rate_limit(body)
        if not is_master:
            changed = privileged_changes(client.metadata, metadata)
            if rate_limit != client.token_rate_limit:
                changed.append("token_rate_limit")
            if changed:
                raise operator_only(changed)
            for name in PRIVILEGED_FIELDS:
                if name in client.metadata:
                    metadata[name] = client.metadata[name]
                else:
                    metadata.pop(name, None)
        digest, encrypted_secret = _secrets_for(client, metadata["token_endpoint_auth_method"])
        # evolve: a rotation's previous secret and its grace are kept.  The
        # operator's request says again whether the method is named; the
        # client's own keeps what was (it is privileged, as the method is).
        new = evolve(
            client,
            metadata=metadata,
            client_secret_digest=digest,
            encrypted_secret=encrypted_secret,
            auth_method_named=names_auth_method(body) if is_master else client.auth_method_named,
            token_rate_limit=rate_limit,
        )
        try:
            replaced = await self._store.replace_client(new)
        except BindingTaken as e:
            raise binding_taken(e) from None
        if not replaced:
            raise bearer_error(
                NO_SUCH_CLIENT
                if is_master
                else "the registration access token is not valid for this client"
            )
        audit.emit(
            audit.CLIENT_UPDATED,
            request.actor,
            request.source,
            client_id=client_id,
            changed_fields=changed_fields(client.metadata, new.metadata)
            + (["token_rate_limit"] if client.token_rate_limit != new.token_rate_limit else []),
        )
        return new

    async def delete(self, client_id: str, token: str | None, source: str = "") -> None:
        """
        RFC 7592 §2.3: deregister the client; its credentials and
        registration access token stop working, and so do its tokens: the
        store deletes its opaque tokens and marks its tokens issued until
        now as revoked, which introspection checks.

        The mark reaches past now by the client cache's lifetime (and a
        second for rounding): an instance that still holds the client in
        its cache may issue it a token until then.  Client ids are random,
        so no later client with the same id can be hit by it.  The mark is
        kept until the last token it covers has expired.
        """
        request = _Request("delete", source, client_id)
        await request.told(self._authorized(client_id, token, source, request))
        await self.remove(client_id)
        audit.emit(audit.CLIENT_DELETED, request.actor, request.source, client_id=client_id)

    async def remove(self, client_id: str) -> bool:
        """
        Delete a client as L{delete} does, without asking for a token: the
        operator's C{ccserver clients delete}, already trusted.  Fires with
        C{False} if there was no such client (the mark is written anyway).
        """
        issued_before = math.ceil(self._now() + self._client_cache_seconds) + 1
        return await self._store.delete_client(
            client_id, issued_before, issued_before + self._token_max_lifetime
        )

    async def rotate_secret(
        self, client_id: str, token: str | None, source: str = ""
    ) -> SecretRotation:
        """
        Give the client a new secret, for the holder of the master token
        only (the operator; a client's own registration access token cannot:
        a leaked one must not let its holder lock the client out).  The old
        secret keeps working for C{[clients] secret_rotation_grace} seconds.
        An unknown client gets the same answer as a wrong token.
        """
        request = _Request("rotate_secret", source, client_id)
        return await request.told(self._rotate_secret(request, client_id, token))

    async def _rotate_secret(
        self, request: _Request, client_id: str, token: str | None
    ) -> SecretRotation:
        check_client_id(client_id)
        await self.check_master_token(token, request.source or "")
        request.actor = audit.MASTER_TOKEN
        client = await self._store.get_client(client_id)
        rotation = None
        if client is not None:
            rotation = await rotate_secret(
                self._authoritative or self._store,
                client_id,
                self._secret_rotation_grace,
                self._now,
                writer=self._store,
            )
        if rotation is None:
            raise bearer_error(NO_SUCH_CLIENT)
        audit.emit(
            audit.CLIENT_SECRET_ROTATED,
            request.actor,
            request.source,
            client_id=client_id,
            previous_secret_expires_at=rotation.previous_secret_expires_at,
        )
        return rotation


@define
class _Request:
    """
    A request to the registration endpoints, as the audit trail hears of
    it: what it asked, from where, about which client, and who made it,
    once its credential is proven (until then, someone unauthenticated).
    """

    action: str
    source: str | None
    client_id: str | None = None
    actor: audit.Actor = audit.UNAUTHENTICATED
    #: why an initial access token no longer registers
    reason: str | None = None
    initial_access_token_id: str | None = None

    def __attrs_post_init__(self) -> None:
        self.source = self.source or None

    async def told(self, work: Awaitable[T]) -> T:
        """
        C{work}'s result; its refusal (an L{OAuthError}) told to the audit
        trail as C{registration.refused}.
        """
        try:
            return await work
        except OAuthError as error:
            audit.emit(
                audit.REGISTRATION_REFUSED,
                self.actor,
                self.source,
                action=self.action,
                status=error.status,
                error=error.error,
                reason=self.reason,
                client_id=self.client_id,
                initial_access_token_id=self.initial_access_token_id,
            )
            raise


def registered_fields(client: Client) -> dict[str, Any]:
    """
    The fields of a C{client.registered} event: who the client is, and
    what only the master token may change of it (L{PRIVILEGED_FIELDS}).
    """
    metadata = client.metadata
    privileged = {name: metadata[name] for name in PRIVILEGED_FIELDS if name in metadata}
    if client.token_rate_limit is not None:
        privileged["token_rate_limit"] = client.token_rate_limit.as_json()
    return {
        "client_id": client.client_id,
        "client_name": metadata.get("client_name"),
        "privileged": privileged,
    }


def changed_fields(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """
    The names of the metadata fields whose value differs (added, removed
    or changed), sorted: what a C{client.updated} event says, never a value.
    """
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))

