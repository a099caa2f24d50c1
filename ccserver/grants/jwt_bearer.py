"""
The JWT bearer grant (RFC 7523 §2.1) for workload identity federation: a
workload's token from a trusted issuer (a Kubernetes service-account
token, a SPIFFE JWT-SVID, a CI job's OIDC token) as the grant's
C{assertion}, issued a token as its bound client would be by client
credentials: the same scope rules, binding and grant handler, which sees
the workload's claims.

    authenticate_assertion -> bind -> GrantRequest -> grant handler -> token

The assertion's checks, and the client it finds, are the endpoint's
(L{ccserver.interfaces.ITokenEndpoint.authenticate_assertion}): the
federation's, as for a C{federated_jwt} client assertion
(docs/workload-identity.md).
"""

from __future__ import annotations

from collections.abc import Awaitable

from zope.interface import implementer

from ccserver.grants.client_credentials import ClientCredentialsGrant
from ccserver.interfaces import IGrantType
from ccserver.model import Authenticated, TokenRequest


@implementer(IGrantType)
class JWTBearerGrant(ClientCredentialsGrant):
    """
    Issues access tokens to the clients bound to the workloads whose tokens
    come as the grant's assertion.
    """

    def authenticated(self, request: TokenRequest) -> Awaitable[Authenticated]:
        return self._endpoint.authenticate_assertion(request)
