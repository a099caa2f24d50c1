"""
Dynamic client registration (RFC 7591) and client configuration (RFC 7592).

Metadata validation lives here; so do the rules of who may read, replace and
delete a registration.  Nothing here knows of HTTP.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

from attrs import evolve, frozen

from ccserver import credentials
from ccserver.clients import SecretRotation, rotate_secret
from ccserver.errors import ClientExists, OAuthError, invalid_client_metadata, invalid_request
from ccserver.interfaces import IClientStore
from ccserver.model import CLIENT_CREDENTIALS, Client, scope_values

#: The grant types this server issues tokens for.
GRANT_TYPES = (CLIENT_CREDENTIALS,)
#: How clients may authenticate at the token endpoint.
AUTH_METHODS = ("client_secret_basic", "client_secret_post")

# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")

_URI_FIELDS = ("client_uri", "logo_uri", "tos_uri", "policy_uri", "jwks_uri")
_STRING_FIELDS = ("client_name", "software_id", "software_version")
# RFC 7591 §2.2: human-readable fields may carry a language tag, "client_name#fr".
_LOCALIZABLE = ("client_name", "client_uri", "logo_uri", "tos_uri", "policy_uri")
_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$")

#: Fields the server sets; a client cannot choose them.
SERVER_FIELDS = (
    "client_id",
    "client_secret",
    "client_id_issued_at",
    "client_secret_expires_at",
    "registration_access_token",
    "registration_client_uri",
)

#: Metadata that carries privilege: what the client's tokens grant (C{scope},
#: C{audience}, C{access_token_lifetime}), which tokens it may introspect
#: (C{resource_server_uris}), and how it gets and proves itself
#: (C{grant_types}, C{token_endpoint_auth_method}).  The operator sets them
#: with the master token; a client's own registration access token cannot
#: change them (RFC 7592 §2.2 lets the server refuse metadata values).
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
)

#: What a privileged field's absence means to the rest of the server (see
#: L{ccserver.model.Client}), so that leaving a field out and sending its
#: default compare equal.
_WHEN_ABSENT: dict[str, Any] = {
    "audience": [],
    "resource_server_uris": [],
    "grant_types": [],
    "token_endpoint_auth_method": "client_secret_basic",
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
        return frozenset(value)
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


def _absolute_uri(name: str, value: object) -> str:
    uri = _string(name, value)
    parts = split_uri(uri)
    if parts is None or parts.scheme not in ("https", "http") or not parts.netloc:
        raise invalid_client_metadata(f"{name}: {uri!r} is not an absolute http(s) URI")
    return uri


def is_resource_uri(uri: str) -> bool:
    """
    RFC 8707 §2: a resource indicator is an absolute URI with no fragment.
    """
    parts = split_uri(uri)
    return (
        parts is not None
        and bool(parts.scheme)
        and bool(parts.netloc or parts.path)
        and "#" not in uri
    )


def _resource_uris(name: str, value: object) -> list[str]:
    uris = _string_list(name, value)
    for uri in uris:
        if not is_resource_uri(uri):
            raise invalid_client_metadata(f"{name}: {uri!r} is not an absolute URI without fragment")
    return list(dict.fromkeys(uris))


def check_scope(name: str, scope: str) -> str:
    values = scope.split(" ")
    if not scope or not all(SCOPE_TOKEN.fullmatch(v) for v in values):
        raise invalid_client_metadata(
            f"{name}: must be scope values separated by single spaces (RFC 6749 §3.3)"
        )
    return " ".join(dict.fromkeys(values))


def validate_metadata(body: object) -> dict[str, Any]:
    """
    Check a registration request's metadata and fill in the defaults.

    Metadata this server does not understand is ignored (RFC 7591 §2).

    @raise OAuthError: C{invalid_client_metadata}, naming the field.
    """
    if not isinstance(body, dict):
        raise invalid_client_metadata("the request body must be a JSON object")
    if "software_statement" in body:
        raise OAuthError(
            "invalid_software_statement", "software statements are not accepted here"
        )
    metadata: dict[str, Any] = {}

    method = body.get("token_endpoint_auth_method", "client_secret_basic")
    method = _string("token_endpoint_auth_method", method)
    if method not in AUTH_METHODS:
        raise invalid_client_metadata(
            f"token_endpoint_auth_method: {method!r} is not supported; use one of "
            + ", ".join(AUTH_METHODS)
        )
    metadata["token_endpoint_auth_method"] = method

    grant_types = _string_list("grant_types", body.get("grant_types", list(GRANT_TYPES)))
    for grant_type in grant_types:
        if grant_type not in GRANT_TYPES:
            raise invalid_client_metadata(
                f"grant_types: this server does not issue {grant_type!r}; it issues "
                + ", ".join(GRANT_TYPES)
            )
    metadata["grant_types"] = list(dict.fromkeys(grant_types))

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
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            raise invalid_client_metadata("access_token_lifetime: must be a positive integer")
        metadata["access_token_lifetime"] = lifetime

    if "redirect_uris" in body:
        metadata["redirect_uris"] = [
            _absolute_uri("redirect_uris", uri)
            for uri in _string_list("redirect_uris", body["redirect_uris"])
        ]
    if "contacts" in body:
        metadata["contacts"] = _string_list("contacts", body["contacts"])
    if "jwks" in body:
        jwks = body["jwks"]
        if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
            raise invalid_client_metadata("jwks: must be a JWK set, an object with 'keys'")
        metadata["jwks"] = jwks
    if "jwks" in body and "jwks_uri" in body:
        raise invalid_client_metadata("jwks_uri: must not be given together with jwks")

    for key, value in body.items():
        field, _, tag = key.partition("#")
        if tag and (field not in _LOCALIZABLE or not _LANGUAGE_TAG.match(tag)):
            continue
        if field in _URI_FIELDS:
            metadata[key] = _absolute_uri(key, value)
        elif field in _STRING_FIELDS:
            metadata[key] = _string(key, value)
    return metadata


@frozen
class Registration:
    """
    A new client as the registration endpoint returns it: the client, and
    the secrets the caller sees this once.
    """

    client: Client
    client_secret: str
    registration_access_token: str


def client_information(client: Client, issuer: str) -> dict[str, Any]:
    """
    RFC 7591 §3.2.1 / RFC 7592 §3: the client information response, without
    the secrets the server keeps only as digests.
    """
    info: dict[str, Any] = {
        "client_id": client.client_id,
        "client_id_issued_at": client.client_id_issued_at,
        "client_secret_expires_at": 0,
        "registration_client_uri": registration_client_uri(issuer, client.client_id),
    }
    info.update(client.metadata)
    return info


def registration_response(registration: Registration, issuer: str) -> dict[str, Any]:
    """
    RFC 7591 §3.2.1: the answer to a registration, with the secrets the
    caller sees this once; the same for C{POST /client-reg} and C{ccserver
    clients create}.
    """
    document = client_information(registration.client, issuer)
    document["client_secret"] = registration.client_secret
    document["registration_access_token"] = registration.registration_access_token
    return document


async def register_client(
    store: IClientStore, metadata: Mapping[str, Any], now: Callable[[], float]
) -> Registration:
    """
    Store a new client of validated C{metadata}, with a new identifier,
    secret and registration access token: the registration itself, for the
    endpoint (once the master token is proven) and the operator's command.
    """
    client_secret = credentials.new_secret()
    registration_access_token = credentials.new_secret()
    while True:
        client = Client(
            client_id=credentials.new_client_id(),
            client_id_issued_at=int(now()),
            metadata=metadata,
            client_secret_digest=credentials.digest(client_secret),
            registration_access_token_digest=credentials.digest(registration_access_token),
        )
        try:
            await store.add_client(client)
        except ClientExists:
            continue  # 128 random bits: never in practice, but never an error
        return Registration(client, client_secret, registration_access_token)


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
        secret_rotation_grace: int = 1800,
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
        @param secret_rotation_grace: how long a rotated-out secret still
            works (C{[clients] secret_rotation_grace}).
        """
        self._store = store
        self._master_token_digest = master_token_digest
        self._now = now
        self._token_max_lifetime = token_max_lifetime
        self._client_cache_seconds = client_cache_seconds
        self._authoritative = authoritative
        self._secret_rotation_grace = secret_rotation_grace

    def check_master_token(self, token: str | None) -> None:
        if token is None:
            raise bearer_error("registration needs the master token as a bearer token")
        if not credentials.check(token, self._master_token_digest):
            raise bearer_error("the bearer token is not valid for registration")

    async def register(self, token: str | None, read_body: Callable[[], object]) -> Registration:
        """
        RFC 7591 §3: register a new client.

        @param read_body: parses the request's metadata; called only once
            the caller is authorised, so that a stranger learns nothing
            from the errors of a bad body.
        """
        self.check_master_token(token)
        return await register_client(self._store, validate_metadata(read_body()), self._now)

    async def _authorized(self, client_id: str, token: str | None) -> tuple[Client, bool]:
        """
        RFC 7592 §2: the client whose configuration endpoint this is, if
        C{token} is its registration access token or the master token, and
        whether it was the master token (the operator, who manages any
        client).  An unknown client gets the same answer as a wrong token.
        """
        if token is None:
            raise bearer_error("this endpoint needs the client's registration access token")
        client = await self._store.get_client(client_id)
        expected = client.registration_access_token_digest if client else None
        # Both digests are always compared, in constant time: which one
        # matched must not show in the time taken.
        is_client = credentials.check(token, expected)
        is_master = credentials.check(token, self._master_token_digest)
        if client is not None and (is_client or is_master):
            return client, is_master
        raise bearer_error("the registration access token is not valid for this client")

    async def read(self, client_id: str, token: str | None) -> Client:
        client, _ = await self._authorized(client_id, token)
        return client

    async def replace(
        self, client_id: str, token: str | None, read_body: Callable[[], object]
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
        client, is_master = await self._authorized(client_id, token)
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
            if name in body and body[name] != current[name]:
                raise invalid_request(f"{name}: is set by the server and cannot be changed")
        metadata = validate_metadata(body)
        if not is_master:
            changed = privileged_changes(client.metadata, metadata)
            if changed:
                one = len(changed) == 1
                raise invalid_client_metadata(
                    ", ".join(changed)
                    + ": only the master token (the operator) may change "
                    + ("this field" if one else "these fields")
                    + "; with the client's registration access token, send the "
                    + ("registered value" if one else "registered values")
                    + " to keep "
                    + ("it" if one else "them")
                )
            for name in PRIVILEGED_FIELDS:
                if name in client.metadata:
                    metadata[name] = client.metadata[name]
                else:
                    metadata.pop(name, None)
        # evolve: the secrets' digests (and a rotation's grace) are kept
        new = evolve(client, metadata=metadata)
        if not await self._store.replace_client(new):
            raise bearer_error("the registration access token is not valid for this client")
        return new

    async def delete(self, client_id: str, token: str | None) -> None:
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
        await self._authorized(client_id, token)
        await self.remove(client_id)

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

    async def rotate_secret(self, client_id: str, token: str | None) -> SecretRotation:
        """
        Give the client a new secret, for the holder of the master token
        only (the operator; a client's own registration access token cannot:
        a leaked one must not let its holder lock the client out).  The old
        secret keeps working for C{[clients] secret_rotation_grace} seconds.
        An unknown client gets the same answer as a wrong token.
        """
        if token is None:
            raise bearer_error("rotating a secret needs the master token as a bearer token")
        # Always both comparisons' cost, whatever the client (see _authorized).
        client = await self._store.get_client(client_id)
        if not credentials.check(token, self._master_token_digest):
            raise bearer_error("the bearer token is not valid for rotating secrets")
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
            raise bearer_error("the bearer token is not valid for this client")
        return rotation

