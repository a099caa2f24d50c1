"""
The JWT bearer grant (RFC 7523 §2.1) for workload identity federation:

    POST /token
    grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<the workload's JWT>

The assertion is a workload's token from a trusted issuer (a Kubernetes
service-account token, a SPIFFE JWT-SVID, a CI job's OIDC token), checked
as a C{federated_jwt} client assertion is (L{ccserver.oauth.federation}),
and it is what authenticates the client: the client bound to the
workload, which must be registered for this grant type.  C{client_id} may
name it (a workload bound to several clients must); no other client
credentials may be sent.  The token is issued as for client credentials:
the same scope rules and grant handler, which sees the workload's claims.

Every way the assertion fails is 400 C{invalid_grant} (RFC 7521 §4.1.1:
"If the assertion is not valid ... the authorization server constructs an
error response ... the value of the error parameter MUST be the
invalid_grant error code"), counted by the brute-force limits as a failed
client authentication is, by the workload identity the assertion names.
"""

from __future__ import annotations

from collections.abc import Mapping

from ccserver.errors import OAuthError, invalid_grant, invalid_request
from ccserver.model import Authenticated
from ccserver.oauth.assertions import JWT_BEARER, ClientAssertion
from ccserver.oauth.clientauth import MAX_ASSERTION_BYTES, ClientAuthenticator

#: Form parameters that would authenticate the client another way.
_OTHER_CREDENTIALS = ("client_secret", "client_assertion", "client_assertion_type")


async def assertion_caller(
    authenticator: ClientAuthenticator,
    form: Mapping[str, str],
    authorization: str | None,
    source: str,
) -> Authenticated:
    """
    The client the request's C{assertion} authenticates, and the workload
    token it is, verified; see the module docstring.

    @param authenticator: the one authenticator, whose federation checks
        the assertion and whose limits count its failures.
    @raise OAuthError: C{invalid_request} for a request without an
        assertion or with other client credentials; C{invalid_grant} for an
        assertion that is not valid; 429 past the limits; 503 when its
        issuer's keys cannot be had.
    """
    federation = authenticator.federation
    if federation is None:
        raise invalid_grant("assertion: this server trusts no issuer of workload tokens")
    given = [name for name in _OTHER_CREDENTIALS if name in form]
    if authorization is not None or given:
        raise invalid_request(
            "the JWT bearer grant's assertion authenticates the client: send no other "
            "client credentials (" + ", ".join(given or ["Authorization header"]) + "); "
            "client_id may name the client"
        )
    assertion = form.get("assertion")
    if assertion is None:
        raise invalid_request("assertion: missing")
    if len(assertion) > MAX_ASSERTION_BYTES:
        raise invalid_grant(f"assertion: longer than {MAX_ASSERTION_BYTES} bytes")
    try:
        recognised = federation.recognise(
            ClientAssertion(form.get("client_id"), assertion, JWT_BEARER)
        )
        if recognised is None:
            raise invalid_grant("assertion: not a token of an issuer this server trusts")
        return await authenticator.workload(recognised, source)
    except OAuthError as error:
        if error.error != "invalid_client":
            raise
        description = error.description
        if description.startswith("client_assertion:"):
            description = "assertion:" + description[len("client_assertion:") :]
        raise invalid_grant(description) from None
