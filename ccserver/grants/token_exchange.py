"""
Token exchange (RFC 8693): a client presents a token it was given (the
subject token) and gets one for another audience, that says both whose it
is (C{sub}) and who acts (C{act}).

Service A calls service B with a token; B must call C on A's behalf. B
exchanges A's token for one C accepts: narrowed to what B may ask for,
with C{sub} = A and C{act.sub} = B.

The rules the server enforces, whatever the grant handler decides (the
handler decides scope, audience, lifetime and extra claims: see
L{ccserver.handlers.registered_scope} for the default policy):

  - the client must be registered for the grant (C{unauthorized_client});
  - the subject token (and the actor token, if any) must be valid: for this
    server's access tokens, what introspection checks (signature, expiry,
    revocation, a deleted client); else C{invalid_request} (§2.2.2);
  - the client must be one the subject token is for: its audience names the
    client (its C{client_id} or one of its C{resource_server_uris}), or its
    C{may_act} claim (§4.4) names the actor; else C{invalid_request};
  - an actor token must be an access token of this server issued to the
    exchanging client (without one, the client itself is the actor);
  - the new token's C{sub} is the subject token's, its C{client_id} the
    exchanging client, its C{act} the actor with the subject token's own
    C{act} nested in it (§4.1), its C{exp} no later than the subject
    token's; it dies with the subject token (L{ccserver.model.EXCHANGED_FROM});
  - its binding (DPoP, certificate) follows the exchanging client's
    registration, as for any token;
  - a chain of exchanges is at most L{MAX_CHAIN} tokens long.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import evolve
from zope.interface import implementer

from ccserver.errors import OAuthError, invalid_request
from ccserver.grants.parameters import requested_resources, requested_scope, required
from ccserver.interfaces import IGrantType, ITokenEndpoint
from ccserver.model import (
    ACCESS_TOKEN_TYPE,
    CREDENTIAL_PARAMS,
    JWT_TOKEN_TYPE,
    Client,
    Delegation,
    IssuedToken,
    TokenExchangeRequest,
    TokenRequest,
    VerifiedToken,
)

#: The most tokens a token made by exchange may have been made from: a
#: chain of services each exchanging what it was given, at most this long.
#: Each link costs a store lookup whenever the token is checked.
MAX_CHAIN = 8
#: The longest subject or actor token accepted, in bytes: this server's
#: tokens take a few hundred; anything far longer is refused before it is
#: decoded.
MAX_TOKEN_BYTES = 8 * 1024
#: The token types a client may ask for (RFC 8693 §2.1
#: C{requested_token_type}): an access token, of the server's format, or a
#: JWT access token.
REQUESTED_TOKEN_TYPES = (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE)

#: Form parameters a handler is not shown in C{params}: how the client
#: authenticated, and what the grant reads itself (the tokens among them).
_NOT_PARAMS = CREDENTIAL_PARAMS | {
    "grant_type",
    "scope",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
}


@implementer(IGrantType)
class TokenExchangeGrant:
    """
    RFC 8693 §2: the token exchange grant.
    """

    def __init__(self, endpoint: ITokenEndpoint) -> None:
        self._endpoint = endpoint
        self._issuer: str = endpoint.issuer

    async def token(self, request: TokenRequest) -> IssuedToken:
        endpoint = self._endpoint
        client = await endpoint.authenticate(request)
        form = request.form
        subject_token = required(form, "subject_token")
        subject_type = required(form, "subject_token_type")
        actor_token, actor_type = form.get("actor_token"), form.get("actor_token_type")
        if actor_token is not None and actor_type is None:
            # RFC 8693 §2.1: "REQUIRED when the actor_token parameter is present"
            raise invalid_request("actor_token_type: missing; it is required with actor_token")
        if actor_token is None and actor_type is not None:
            # §2.1: "MUST NOT be included otherwise"
            raise invalid_request("actor_token_type: given without actor_token")
        requested_type = form.get("requested_token_type", ACCESS_TOKEN_TYPE)
        if requested_type not in REQUESTED_TOKEN_TYPES:
            raise invalid_request(
                f"requested_token_type: {requested_type!r} is not issued here; ask for "
                + " or ".join(REQUESTED_TOKEN_TYPES)
            )
        scope = requested_scope(form)
        resource = requested_resources(request.resource)
        subject = await self._verified("subject_token", subject_token, subject_type)
        actor = (
            None
            if actor_token is None or actor_type is None
            else await self._verified("actor_token", actor_token, actor_type)
        )
        acting = self._acting(client, actor)
        self._check_presented(client, subject, acting)
        binding = await endpoint.bind(request, client)
        exchange = TokenExchangeRequest(
            client=client,
            subject=subject,
            actor=actor,
            scope=scope,
            audience=tuple(dict.fromkeys(request.audience)),
            resource=resource,
            requested_token_type=requested_type,
            params={k: v for k, v in form.items() if k not in _NOT_PARAMS},
            issuer=self._issuer,
        )
        decision = await endpoint.decide(exchange)
        if requested_type == JWT_TOKEN_TYPE:
            if decision.token_format not in (None, "jwt"):
                raise invalid_request(
                    f"requested_token_type: this exchange is for a {decision.token_format} "
                    f"token, not a JWT; ask for {ACCESS_TOKEN_TYPE}"
                )
            decision = evolve(decision, token_format="jwt")
        delegation = Delegation(
            subject=_subject(subject),
            actor=_act(acting, subject),
            exchanged_from=subject.lineage,
            expires_at_most=subject.expires_at,
        )
        issued = await endpoint.mint(request, client, decision, binding, delegation)
        return evolve(issued, issued_token_type=requested_type)

    async def _verified(self, name: str, token: str, token_type: str) -> VerifiedToken:
        """
        The token, checked by the validator of its type; every refusal an
        C{invalid_request} naming the parameter (RFC 8693 §2.2.2).
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid_request(f"{name}: longer than {MAX_TOKEN_BYTES} bytes")
        try:
            return await self._endpoint.verify_token(token, token_type)
        except OAuthError as e:
            if e.error != "invalid_request":
                raise
            raise invalid_request(f"{name}: {e.description}") from None

    def _acting(self, client: Client, actor: VerifiedToken | None) -> dict[str, str]:
        """
        Who acts, as C{act} names it (RFC 8693 §4.1): the exchanging client,
        or the subject of the actor token it presented, which must have
        been issued to it.  An actor token lends no one else's identity: a
        client cannot name another as the actor.
        """
        if actor is None:
            return {"sub": client.client_id}
        if actor.token_type != ACCESS_TOKEN_TYPE or actor.claims.get("iss") != self._issuer:
            raise invalid_request(
                f"actor_token: must be an access token of this server "
                f"(actor_token_type {ACCESS_TOKEN_TYPE})"
            )
        if actor.claims.get("client_id") != client.client_id:
            raise invalid_request("actor_token: was not issued to this client")
        if "act" in actor.claims:
            raise invalid_request(
                "actor_token: was made by a token exchange (it has act); present a token "
                "of the actor's own"
            )
        sub = actor.subject
        if sub is None:
            raise invalid_request("actor_token: has no sub")
        return {"sub": sub}

    def _check_presented(
        self, client: Client, subject: VerifiedToken, acting: Mapping[str, str]
    ) -> None:
        """
        The client may exchange the subject token: the token is for it (its
        audience names the client's C{client_id} or one of its
        C{resource_server_uris}), or the token's C{may_act} names the actor
        (RFC 8693 §4.4); and the chain is not too long.
        """
        if _subject(subject) == "":
            raise invalid_request("subject_token: has no sub")
        if len(subject.lineage) > MAX_CHAIN:
            raise invalid_request(
                f"subject_token: made by a chain of {len(subject.lineage) - 1} token "
                f"exchanges; a token is exchanged at most {MAX_CHAIN} times over"
            )
        names = {client.client_id, *client.metadata.get("resource_server_uris", ())}
        if not names.isdisjoint(subject.audience):
            return
        if self._may_act(subject.claims.get("may_act"), client, acting):
            return
        raise invalid_request(
            "subject_token: is not for this client: its audience does not name the client "
            "(its client_id or one of its resource_server_uris), nor does its may_act "
            "name the actor"
        )

    def _may_act(self, may_act: object, client: Client, acting: Mapping[str, str]) -> bool:
        """
        Whether C{may_act} (RFC 8693 §4.4) names the actor: each of its
        members equals the actor's (C{sub}, C{iss}: this server, and
        C{client_id}: the exchanging client's).
        """
        if not isinstance(may_act, Mapping) or not isinstance(may_act.get("sub"), str):
            return False
        identity = {"iss": self._issuer, "client_id": client.client_id, **acting}
        return all(identity.get(name) == value for name, value in may_act.items())


def _subject(subject: VerifiedToken) -> str:
    return subject.subject or ""


def _act(acting: Mapping[str, str], subject: VerifiedToken) -> dict[str, Any]:
    """
    RFC 8693 §4.1: the actor, and within it, as the prior actors, the
    subject token's own C{act}.
    """
    act: dict[str, Any] = dict(acting)
    prior = subject.claims.get("act")
    if isinstance(prior, Mapping):
        act["act"] = prior
    return act
