"""
Authorization server metadata (RFC 8414) and OpenID Provider metadata
(OpenID Connect Discovery 1.0 §3): one document, served at both well-known
paths.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ccserver.model import FEDERATED_JWT
from ccserver.oauth.assertions import ASSERTION_ALGORITHMS
from ccserver.oauth.mtls import BOUND_TOKENS, MTLS_METHODS
from ccserver.oauth.registration import AUTH_METHODS, GRANT_TYPES

#: RFC 8414 §2: the JWS algorithms of client assertions (private_key_jwt
#: and client_secret_jwt), the same at every client-authenticating endpoint.
AUTH_SIGNING_ALGS = [alg for algs in ASSERTION_ALGORITHMS.values() for alg in algs]


def metadata(
    issuer: str,
    signing_alg: str,
    scopes: Iterable[str] = (),
    dpop_signing_algs: Iterable[str] = (),
    *,
    mtls: bool = False,
    mtls_base_url: str | None = None,
    federation: bool = False,
    grant_types: Iterable[str] = GRANT_TYPES,
) -> dict[str, Any]:
    """
    @param scopes: the scope values to list as C{scopes_supported} (RFC 8414
        §2, recommended): the operator's C{[discovery] scopes_supported}.
        Not the union of the registered scopes: that would tell any caller
        every client's scopes, and grow with every registration.  Left out
        when there are none.
    @param grant_types: the grant types offered: those of the grant type
        plugins loaded.
    @param mtls: whether clients can present certificates (a TLS listener,
        or a trusted proxy's header): RFC 8705 §2 and §3.3 are then
        advertised.
    @param mtls_base_url: the https address of the TLS listener (C{[tls]
        base_url}), for RFC 8705 §5 C{mtls_endpoint_aliases}.
    @param federation: whether the server trusts issuers of workload
        tokens (C{[[trusted_issuers]]}): C{federated_jwt} is then
        advertised (and the JWT bearer grant, RFC 7523 §2.1, among the
        C{grant_types}, whose plugin is offered only then).
    """
    methods = [
        m
        for m in AUTH_METHODS
        if (mtls or m not in MTLS_METHODS) and (federation or m != FEDERATED_JWT)
    ]
    document: dict[str, Any] = {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "registration_endpoint": f"{issuer}/client-reg",
        "jwks_uri": f"{issuer}/jwks.json",
        "introspection_endpoint": f"{issuer}/token/introspect",
        "introspection_endpoint_auth_methods_supported": methods,
        "introspection_endpoint_auth_signing_alg_values_supported": AUTH_SIGNING_ALGS,
        "revocation_endpoint": f"{issuer}/token/revoke",
        "revocation_endpoint_auth_methods_supported": methods,
        "revocation_endpoint_auth_signing_alg_values_supported": AUTH_SIGNING_ALGS,
        "grant_types_supported": list(grant_types),
        "token_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": AUTH_SIGNING_ALGS,
        # This server has no authorization endpoint; OpenID Discovery makes
        # response_types_supported required, so it is present and empty.
        "response_types_supported": [],
        "response_modes_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [],
        "access_token_signing_alg_values_supported": [signing_alg],
        # RFC 9449 §5.1
        "dpop_signing_alg_values_supported": list(dpop_signing_algs),
    }
    if mtls:
        document[BOUND_TOKENS] = True
    if mtls_base_url:
        document["mtls_endpoint_aliases"] = {
            "token_endpoint": f"{mtls_base_url}/token",
            "introspection_endpoint": f"{mtls_base_url}/token/introspect",
            "revocation_endpoint": f"{mtls_base_url}/token/revoke",
        }
    scopes = sorted(set(scopes))
    if scopes:
        document["scopes_supported"] = scopes
    return document
