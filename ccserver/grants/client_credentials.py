"""
The client credentials grant (RFC 6749 §4.4): a client trades its own
credentials for a token, as the grant handler decides.

    authenticate -> bind -> GrantRequest -> grant handler -> token

The hot path: one coroutine, and no object made that the request does not
need.
"""

from __future__ import annotations

from collections.abc import Awaitable

from zope.interface import implementer

from ccserver.errors import invalid_request
from ccserver.grants.parameters import requested_resources, requested_scope
from ccserver.interfaces import IGrantType, ITokenEndpoint
from ccserver.model import (
    CREDENTIAL_PARAMS,
    Authenticated,
    GrantRequest,
    IssuedToken,
    TokenRequest,
)

#: Form parameters a handler is not shown in C{params}: how the client
#: authenticated (the JWT bearer grant's assertion among them), and what the
#: grant reads itself.
_NOT_PARAMS = CREDENTIAL_PARAMS | {"grant_type", "scope", "assertion"}


@implementer(IGrantType)
class ClientCredentialsGrant:
    """
    Issues access tokens to clients that authenticate with their own
    credentials.
    """

    def __init__(self, endpoint: ITokenEndpoint) -> None:
        self._endpoint = endpoint
        self._issuer: str = endpoint.issuer

    def authenticated(self, request: TokenRequest) -> Awaitable[Authenticated]:
        """
        Who the request authenticates as: by the client's own credentials
        (or its workload's token, C{federated_jwt}).
        """
        return self._endpoint.authenticated(request)

    async def token(self, request: TokenRequest) -> IssuedToken:
        endpoint = self._endpoint
        caller = await self.authenticated(request)
        client = caller.client
        binding = await endpoint.bind(request, client)
        form = request.form
        params = {k: v for k, v in form.items() if k not in _NOT_PARAMS}
        if request.audience:
            # RFC 8693 made audience repeatable; here it is what it was
            # before, one parameter the handler reads from params
            if len(request.audience) > 1:
                raise invalid_request("audience: given more than once")
            params["audience"] = request.audience[0]
        grant = GrantRequest(
            client=client,
            scope=requested_scope(form),
            params=params,
            issuer=self._issuer,
            resource=requested_resources(request.resource),
            grant_type=request.grant_type,
            workload=caller.workload,
        )
        decision = await endpoint.decide(grant)
        return await endpoint.mint(request, client, decision, binding)
