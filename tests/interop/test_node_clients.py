"""
node's openid-client (6) and oauth4webapi (3), at their defaults, against a
real C{twist ccserver}: through every client authentication method the
discovery document advertises, with and without DPoP, each round getting a
token, introspecting it, revoking it and introspecting it again, all
through the library's own calls (node/client.mjs).

Which library covers what: both implement every method the server
advertises (C{client_secret_basic}, C{client_secret_post},
C{client_secret_jwt}, C{private_key_jwt}, and C{tls_client_auth}, whose
C{TlsClientAuth} serves C{self_signed_tls_client_auth} too, the
certificate presented through undici as their documentation shows), DPoP
(RFC 9449), introspection (RFC 7662) and revocation (RFC 7009).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.interop.node import run_round
from tests.interop.server import ALL_METHODS, CERTIFICATE_METHODS, Credentials, InteropServer

pytestmark = pytest.mark.process

LIBRARIES = ("openid-client", "oauth4webapi")


@pytest.fixture(scope="module")
def server() -> Iterator[InteropServer]:
    running = InteropServer().start()
    yield running
    running.stop()


def node_round(
    server: InteropServer, library: str, credentials: Credentials, *, dpop: bool = False
) -> dict[str, Any]:
    document = {
        "library": library,
        "issuer": server.issuer,
        "scope": "read",
        "dpop": dpop,
        **credentials.node_input(),
    }
    return run_round(server.ca_file, document)


def check_round(result: dict[str, Any], credentials: Credentials, *, dpop: bool) -> None:
    """
    The token was issued to this client with its scope, bound as asked;
    introspection saw it active, and inactive once revoked.
    """
    token = result["token"]
    assert token["token_type"].lower() == ("dpop" if dpop else "bearer")
    assert token["scope"] == "read"
    introspection = result["introspection"]
    assert introspection["active"] is True
    assert introspection["client_id"] == credentials.client_id
    confirmation = introspection.get("cnf", {})
    assert ("jkt" in confirmation) is dpop
    method = credentials.registration["token_endpoint_auth_method"]
    assert ("x5t#S256" in confirmation) is (method in CERTIFICATE_METHODS)
    assert result["after_revocation"] == {"active": False}


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_method(server: InteropServer, library: str, method: str) -> None:
    credentials = server.register(method)
    check_round(node_round(server, library, credentials), credentials, dpop=False)


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("method", ("client_secret_basic", "private_key_jwt"))
def test_dpop(server: InteropServer, library: str, method: str) -> None:
    credentials = server.register(method)
    check_round(node_round(server, library, credentials, dpop=True), credentials, dpop=True)


@pytest.fixture(scope="module")
def nonce_server() -> Iterator[InteropServer]:
    """
    A server that asks for DPoP nonces (C{[dpop] require_nonce}, RFC 9449
    §8): the first proof is refused with C{use_dpop_nonce}, and the
    library retries with the nonce.
    """
    running = InteropServer("[dpop]\nrequire_nonce = true").start()
    yield running
    running.stop()


@pytest.mark.parametrize("library", LIBRARIES)
def test_dpop_nonce(nonce_server: InteropServer, library: str) -> None:
    credentials = nonce_server.register("client_secret_basic")
    result = node_round(nonce_server, library, credentials, dpop=True)
    check_round(result, credentials, dpop=True)


@pytest.mark.parametrize("library", LIBRARIES)
def test_client_registered_without_a_method(server: InteropServer, library: str) -> None:
    """
    The README's first client names no method; openid-client's
    C{discovery(issuer, id, secret)} and oauth4webapi's
    C{ClientSecretPost} post its secret, and it is accepted.
    """
    credentials = server.register(None)
    document = {**credentials.node_input(), "method": "client_secret_post"}
    result = run_round(
        server.ca_file,
        {"library": library, "issuer": server.issuer, "scope": "read", "dpop": False, **document},
    )
    check_round(result, credentials, dpop=False)
