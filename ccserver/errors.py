"""
The errors of ccserver, raised where they are found and rendered in one
place (L{ccserver.web}).
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen

#: The realm of the server's C{WWW-Authenticate} challenges.
REALM = "ccserver"

#: Every error code this server sends, the one list: the metrics label
#: their counts by it (L{ccserver.metrics}), so that a code added anywhere
#: must be added here (tests/test_error_codes.py finds every code the
#: code can send and checks it is listed).  A grant handler may answer with
#: a code of its own, passed on as it is; that one is not listed (it is
#: counted as C{other}, so that labels stay a small set).
ERROR_CODES = (
    # RFC 6749 §5.2: the token endpoint's (invalid_grant is a grant
    # handler's, as the webhook's answer may be)
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    # RFC 8707 §2: a resource indicator
    "invalid_target",
    # RFC 6749 §4.1.2.1: a store or grant handler that does not answer; a bug
    "temporarily_unavailable",
    "server_error",
    # RFC 9449 §5, §8: DPoP proofs and server nonces
    "invalid_dpop_proof",
    "use_dpop_nonce",
    # RFC 6750 §3.1: a bearer token (the master or a registration access
    # token) that is missing or wrong
    "invalid_token",
    # RFC 7591 §3.2.2: registration
    "invalid_client_metadata",
    "invalid_software_statement",
    # a path no route serves (404)
    "not_found",
)


@frozen(eq=False)
class OAuthError(Exception):
    """
    An error that an OAuth 2.0 endpoint reports to its caller.

    @ivar error: the error code (RFC 6749 §5.2, RFC 7591 §3.2.2, ...).
    @ivar description: the human-readable C{error_description}.
    @ivar status: the HTTP status code.
    @ivar headers: extra response headers, such as C{WWW-Authenticate}.
    """

    error: str
    description: str
    status: int = 400
    headers: Mapping[str, str] = field(factory=dict)

    def __str__(self) -> str:
        return f"{self.error}: {self.description}"

    def as_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def invalid_request(description: str) -> OAuthError:
    return OAuthError("invalid_request", description)


def invalid_client_metadata(description: str) -> OAuthError:
    return OAuthError("invalid_client_metadata", description)


def invalid_dpop_proof(description: str) -> OAuthError:
    """
    RFC 9449 §5: the DPoP proof of a token request is invalid; an error
    response per RFC 6749 §5.2, so 400 and no C{WWW-Authenticate} (the
    C{DPoP} challenge of §7.1 is a resource server's, on a 401).
    """
    return OAuthError("invalid_dpop_proof", description)


def use_dpop_nonce(description: str, nonce: str) -> OAuthError:
    """
    RFC 9449 §8: 400 C{use_dpop_nonce}, with the nonce to use next in one
    C{DPoP-Nonce} header.
    """
    return OAuthError("use_dpop_nonce", description, headers={"DPoP-Nonce": nonce})


def invalid_client(description: str = "client authentication failed") -> OAuthError:
    """
    RFC 6749 §5.2: C{invalid_client}, as 401 with a C{WWW-Authenticate}
    challenge for the Basic scheme (RFC 7235 §3.1 asks for one on every 401).
    Raised by client authentication, and passed on from a grant handler that
    denies a client this way.
    """
    return OAuthError(
        "invalid_client",
        description,
        status=401,
        headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
    )


def invalid_grant(description: str) -> OAuthError:
    """
    RFC 6749 §5.2: 400 C{invalid_grant}; for the JWT bearer grant, an
    assertion that is not valid (RFC 7521 §4.1.1), whatever is wrong with it.
    """
    return OAuthError("invalid_grant", description)


def temporarily_unavailable(description: str) -> OAuthError:
    """
    RFC 6749 §5.2: 503 C{temporarily_unavailable}, with C{Retry-After: 1}
    (RFC 9110 §10.2.3): what a client gets while the store or a grant
    handler's service cannot answer, never a 500.
    """
    return OAuthError(
        "temporarily_unavailable", description, status=503, headers={"Retry-After": "1"}
    )


class ConfigError(Exception):
    """
    The configuration is wrong; the message names the key and what is wrong.
    """


class GrantUnavailable(Exception):
    """
    Raised by a grant type plugin's C{makeGrant} when the grant cannot be
    offered with this server's configuration (its grant handler cannot
    decide it, say): the server starts without it, and logs the message,
    one line that says why and what would make it available.
    """


class GrantNotConfigured(GrantUnavailable):
    """
    A L{GrantUnavailable} for a grant whose feature the operator has not
    configured (the JWT bearer grant without C{[[trusted_issuers]]}): the
    normal case for most servers, so logged at the info level, not as a
    warning.
    """


class StoreUnavailable(Exception):
    """
    The store could not be reached, or did not answer in time.
    """


class ClientExists(Exception):
    """
    A client with that identifier is already registered.
    """


class BindingTaken(Exception):
    """
    A federated identity (issuer, subject and conditions) is bound to
    another client already.

    @ivar identity: that identity (a L{ccserver.model.FederatedIdentity}).
    """

    def __init__(self, identity: object) -> None:
        super().__init__(identity)
        self.identity = identity


def answered_with(error: BaseException) -> tuple[str, int]:
    """
    The error code (RFC 6749 §5.2) and HTTP status an error is answered
    with (L{ccserver.web.render_failure}): an L{OAuthError} its own, an
    unreachable store 503 C{temporarily_unavailable}, anything else 500
    C{server_error}.  For the metrics' labels and the audit trail.
    """
    if isinstance(error, OAuthError):
        return error.error, error.status
    if isinstance(error, StoreUnavailable):
        return "temporarily_unavailable", 503
    return "server_error", 500
