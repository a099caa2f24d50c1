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
import re
from collections.abc import Callable, Mapping
from urllib.parse import unquote_plus

from attrs import frozen

from ccserver import credentials
from ccserver.errors import OAuthError, invalid_request
from ccserver.interfaces import IClientStore
from ccserver.model import Client

REALM = "ccserver"
_FAILED = "client authentication failed"

# RFC 7235 §2.1: credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ],
# auth-scheme = token (RFC 7230 §3.2.6).  A tab is taken for a space, as
# RFC 7230 §3.5 lets a recipient do between the request line's words; any
# other character after the scheme makes the header malformed.
_CREDENTIALS = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:[ \t]+(.*))?", re.DOTALL)
#: The longest scheme an error description names (IANA's longest registered
#: one, AWS4-HMAC-SHA256, has 16 characters); anything longer may be a
#: credential sent without a scheme, and is never repeated.
_NAMED_SCHEME_LENGTH = 20


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


def split_authorization(header: str) -> tuple[str, str] | None:
    """
    An C{Authorization} header's scheme and the credentials after it
    (empty when there are none), or None when it does not start with a
    scheme token followed by spaces or tabs.
    """
    match = _CREDENTIALS.fullmatch(header.strip(" \t"))
    if match is None:
        return None
    return match.group(1), match.group(2) or ""


def _scheme_named(scheme: str, rest: str) -> str:
    """
    The scheme for an error description.  A header's text is repeated only
    when it is plainly a scheme: a short token with credentials after it.
    A lone word, or a long one, may be a credential sent without a scheme
    (a tab once made the whole header the "scheme"), and is never echoed.
    """
    if rest and len(scheme) <= _NAMED_SCHEME_LENGTH:
        return f"the {scheme!r} authentication scheme"
    return "that authentication scheme"


def _basic(authorization: str) -> ClientCredentials:
    """
    RFC 6749 §2.3.1: the client identifier and secret are form-urlencoded
    before they are joined with a colon and base64-encoded.

    No error description repeats the header's credentials.
    """
    parts = split_authorization(authorization)
    if parts is None:
        raise invalid_client(
            "malformed Authorization header: expected a scheme, a space and credentials"
        )
    scheme, encoded = parts
    if scheme.lower() != "basic":
        raise invalid_client(f"{_scheme_named(scheme, encoded)} is not supported here; use Basic")
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


async def authenticate(
    store: IClientStore, presented: ClientCredentials, *, now: Callable[[], float]
) -> Client:
    """
    The registered client these credentials authenticate.

    The secret is checked in constant time, against a stand-in digest when
    the client is unknown.  After a secret rotation the previous secret
    works too until its grace period ends (C{now} tells when that is): both
    digests are compared on every request, so that the time taken shows
    neither whether the client has a previous secret nor which one matched.
    A client that used a method other than its registered one fails like a
    wrong secret, but is told the right method once its secret has proven
    it is who it says.
    """
    client = await store.get_client(presented.client_id) if presented.client_id else None
    expected = client.client_secret_digest if client else None
    previous = client.previous_secret_digest_at(now()) if client else None
    matches_current = credentials.check(presented.client_secret, expected)
    matches_previous = credentials.check(presented.client_secret, previous)
    if not (matches_current or matches_previous) or client is None:
        raise invalid_client()
    if presented.method != client.token_endpoint_auth_method:
        raise invalid_client(
            f"this client must authenticate with {client.token_endpoint_auth_method}"
        )
    return client
