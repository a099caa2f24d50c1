"""
Client authentication at the token endpoint (RFC 6749 §2.3): who is calling.

Exactly one method per request: C{client_secret_basic} (the HTTP Basic
scheme) or C{client_secret_post} (C{client_id} and C{client_secret} in the
form body).  Every failure is the same C{invalid_client} error, so that an
unknown client cannot be told from a wrong secret.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from urllib.parse import unquote_plus

from attrs import frozen

from ccserver import credentials
from ccserver.errors import OAuthError, invalid_request
from ccserver.interfaces import IClientStore
from ccserver.model import Client

REALM = "ccserver"
_FAILED = "client authentication failed"


def invalid_client(description: str = _FAILED) -> OAuthError:
    """
    RFC 6749 §5.2: C{invalid_client}, as 401 with a C{WWW-Authenticate}
    challenge for the Basic scheme (RFC 7235 §3.1 asks for one on every 401).
    """
    return OAuthError(
        "invalid_client",
        description,
        status=401,
        headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
    )


@frozen
class ClientCredentials:
    """
    The credentials a request presented, and how.
    """

    method: str
    client_id: str
    client_secret: str


def _basic(authorization: str) -> ClientCredentials:
    """
    RFC 6749 §2.3.1: the client identifier and secret are form-urlencoded
    before they are joined with a colon and base64-encoded.
    """
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        raise invalid_client(f"the {scheme!r} authentication scheme is not supported here")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_client("malformed Basic credentials") from None
    client_id, colon, client_secret = decoded.partition(":")
    if not colon:
        raise invalid_client("malformed Basic credentials")
    return ClientCredentials(
        "client_secret_basic", unquote_plus(client_id), unquote_plus(client_secret)
    )


def presented_credentials(
    authorization: str | None, form: Mapping[str, str]
) -> ClientCredentials:
    """
    The credentials of a token request, from its C{Authorization} header
    and form.

    @raise OAuthError: C{invalid_request} when more than one method is used,
        C{invalid_client} when none is, or the header is malformed.
    """
    if authorization is not None:
        if "client_secret" in form:
            raise invalid_request(
                "the client authenticated with more than one method "
                "(Authorization header and client_secret)"
            )
        presented = _basic(authorization)
        if "client_id" in form and form["client_id"] != presented.client_id:
            raise invalid_request("client_id in the body differs from the Basic credentials")
        return presented
    if "client_secret" in form:
        if "client_id" not in form:
            raise invalid_request("client_secret was given without client_id")
        return ClientCredentials("client_secret_post", form["client_id"], form["client_secret"])
    raise invalid_client("no client authentication was included")


async def authenticate(store: IClientStore, presented: ClientCredentials) -> Client:
    """
    The registered client these credentials authenticate.

    The secret is checked in constant time, against a stand-in digest when
    the client is unknown.  A client that used a method other than its
    registered one fails like a wrong secret, but is told the right method
    once its secret has proven it is who it says.
    """
    client = await store.get_client(presented.client_id) if presented.client_id else None
    expected = client.client_secret_digest if client else None
    if not credentials.check(presented.client_secret, expected) or client is None:
        raise invalid_client()
    if presented.method != client.token_endpoint_auth_method:
        raise invalid_client(
            f"this client must authenticate with {client.token_endpoint_auth_method}"
        )
    return client
