"""
Minting access tokens: JWTs per RFC 9068, signed with the current key.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from attrs import frozen

from ccserver.keys import Keyring
from ccserver.model import Client, GrantAuthorization, IssuedToken


@frozen
class TokenMinter:
    """
    Turns a grant handler's decision into a signed access token.

    @ivar issuer: the C{iss} claim.
    @ivar lifetime: the lifetime of a token whose grant names none.
    @ivar audience: the C{aud} of a token whose grant names none.
    """

    keyring: Keyring
    issuer: str
    lifetime: int
    audience: tuple[str, ...]
    now: Callable[[], float]

    def mint(self, client: Client, authorization: GrantAuthorization) -> IssuedToken:
        """
        RFC 9068 §2.2: C{iss}, C{exp}, C{aud}, C{sub}, C{client_id}, C{iat},
        C{jti}, and C{scope} when any was granted; the handler's extra claims
        beside them.
        """
        issued_at = int(self.now())
        lifetime = authorization.lifetime or self.lifetime
        audience = authorization.audience or self.audience or (self.issuer,)
        claims: dict[str, Any] = dict(authorization.claims)
        claims.update(
            iss=self.issuer,
            sub=client.client_id,
            client_id=client.client_id,
            aud=audience[0] if len(audience) == 1 else list(audience),
            iat=issued_at,
            exp=issued_at + lifetime,
            jti=secrets.token_urlsafe(16),
        )
        if authorization.scope:
            claims["scope"] = " ".join(sorted(authorization.scope))
        token = self.keyring.current.sign(claims)
        return IssuedToken(access_token=token, expires_in=lifetime, scope=authorization.scope)
