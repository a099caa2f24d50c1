"""
What the operator does to registered clients, shared by the C{ccserver
clients} command and the HTTP endpoints: list them, show one without its
secrets, and rotate a secret with a grace period.

Nothing here knows of HTTP or of the command line; the rules of who may do
what live with their callers (L{ccserver.oauth.registration} asks for the
master token, the command is the operator).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from attrs import evolve, field, frozen

from ccserver import credentials
from ccserver.errors import OAuthError
from ccserver.interfaces import IClientStore
from ccserver.model import SECRET_METHODS, Client

#: Clients asked of the store per page when listing.
LIST_PAGE_SIZE = 500


@frozen
class SecretRotation:
    """
    A client's new secret, shown this once, and when its previous one stops
    working (None when there was no grace period: it stopped at once).
    """

    client_id: str
    client_secret: str = field(repr=False)
    previous_secret_expires_at: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "previous_secret_expires_at": self.previous_secret_expires_at,
        }




def _not_rotatable(method: str) -> str:
    """
    Why a client of C{method} has no secret to rotate.  Only the secrets
    kept as a digest (L{SECRET_METHODS}) are: a private_key_jwt or
    certificate client has no secret at all (it rotates its keys or
    certificates itself, in its registration); a client_secret_jwt secret
    is kept encrypted, and its grace would need the old one kept readable
    too.
    """
    if method == "client_secret_jwt":
        return (
            "this client authenticates with client_secret_jwt, whose secret cannot be "
            "rotated: register a new client and delete this one"
        )
    proof = "its keys (jwks or jwks_uri)" if method == "private_key_jwt" else "its certificate"
    return (
        f"this client authenticates with {method} and has no client secret to rotate: "
        f"it proves itself with {proof}, which its registration names"
    )


async def rotate_secret(
    store: IClientStore,
    client_id: str,
    grace: int,
    now: Callable[[], float],
    *,
    writer: IClientStore | None = None,
) -> SecretRotation | None:
    """
    Give a client a new secret; its current one keeps working for C{grace}
    seconds (Connect2id's default is 30 minutes), so that the client's
    deployments can change over without an outage.  Only one previous
    secret is kept: rotating again within the grace period ends the older
    one at once.

    The record is read from C{store} (the authoritative store, never a
    cache that may hold a record older than the last change) and written
    through C{writer} (by default C{store}; a cache, so that it forgets the
    client at once).  Other processes follow within their client cache time.

    @return: the rotation, or None if there is no such client.
    """
    client = await store.get_client(client_id)
    if client is None:
        return None
    method = client.token_endpoint_auth_method
    if method not in SECRET_METHODS:
        raise OAuthError("invalid_request", _not_rotatable(method))
    secret = credentials.new_secret()
    expires_at = int(now()) + grace if grace > 0 else None
    rotated = evolve(
        client,
        client_secret_digest=credentials.digest(secret),
        previous_secret_digest=client.client_secret_digest if expires_at else None,
        previous_secret_expires_at=expires_at,
    )
    if not await (writer or store).replace_client(rotated):
        return None  # deleted meanwhile
    return SecretRotation(client_id, secret, expires_at)


def public_view(client: Client, now: float) -> dict[str, Any]:
    """
    What C{ccserver clients show} and C{list --json} print: the client's
    identifier, registration time and metadata, its token rate limit, and
    when a rotated-out secret stops working; never a secret or a digest.
    """
    view: dict[str, Any] = {
        "client_id": client.client_id,
        "client_id_issued_at": client.client_id_issued_at,
    }
    view.update(client.metadata)
    if client.token_rate_limit is not None:
        view["token_rate_limit"] = client.token_rate_limit.as_json()
    if client.previous_secret_digest_at(now) is not None:
        view["previous_secret_expires_at"] = client.previous_secret_expires_at
    return view


async def all_clients(
    store: IClientStore, page_size: int = LIST_PAGE_SIZE
) -> AsyncIterator[Client]:
    """
    Every registered client, a page at a time (never the whole store in
    memory or in one reply), each once: a client a Redis C{SCAN} gives
    again is dropped (only its identifier is remembered).
    """
    seen: set[str] = set()
    cursor = ""
    while True:
        page, cursor = await store.list_clients(cursor, page_size)
        for client in page:
            if client.client_id not in seen:
                seen.add(client.client_id)
                yield client
        if not cursor:
            return
