"""
Python's client libraries, at their defaults, against a real C{twist
ccserver}: Authlib, requests-oauth2client and requests-oauthlib, each
through every client authentication method and feature it implements
itself, used as its documentation shows.

Which library covers what:

  - Authlib (C{OAuth2Session}): C{client_secret_basic} (its default),
    C{client_secret_post}, C{client_secret_jwt} and C{private_key_jwt}
    (its C{ClientSecretJWT} and C{PrivateKeyJWT}, registered on the
    session), introspection and revocation.  It has no DPoP and no mutual
    TLS method.  Its introspection and revocation authenticate with
    C{revocation_endpoint_auth_method}, which is C{client_secret_basic}
    whenever there is a secret, whatever the token endpoint's method; a
    client held to another method sets it to its own, as Authlib documents.
  - requests-oauth2client (C{OAuth2Client}): C{client_secret_post} (its
    default for C{auth=(client_id, secret)}), C{client_secret_basic},
    C{client_secret_jwt}, C{private_key_jwt}, the two certificate methods
    (its C{PublicApp} over a session holding the certificate, as its
    documentation says for client certificates), DPoP, introspection and
    revocation.
  - requests-oauthlib (C{OAuth2Session} with a C{BackendApplicationClient}):
    C{client_secret_basic} (its default), C{client_secret_post}
    (C{include_client_id=True}), and both certificate methods (its
    C{cert} argument, "for OAuth 2.0 Mutual-TLS Client Authentication").
    It has no assertion methods, no DPoP, no introspection or revocation.

Each round gets a token, introspects it and revokes it (where the library
can), and checks the server's view through the introspection endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from authlib.oauth2.rfc7523 import ClientSecretJWT, PrivateKeyJWT
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauth2client import (
    ClientSecretBasic,
    ClientSecretJwt,
    OAuth2Client,
    PrivateKeyJwt,
    PublicApp,
)
from requests_oauthlib import OAuth2Session as OAuthlibSession

from tests.interop.server import CERTIFICATE_METHODS, Credentials, InteropServer

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def server() -> Iterator[InteropServer]:
    running = InteropServer().start()
    yield running
    running.stop()


@pytest.fixture
def trusted(server: InteropServer, monkeypatch: pytest.MonkeyPatch) -> InteropServer:
    """
    The server, its certificate trusted as requests trusts any: through
    C{REQUESTS_CA_BUNDLE}, no option of the library's.
    """
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
    return server


@pytest.fixture(scope="module")
def endpoints(server: InteropServer) -> dict[str, Any]:
    """
    The discovery document (RFC 8414), for the libraries that take
    endpoints rather than an issuer.
    """
    response = requests.get(
        server.issuer + "/.well-known/oauth-authorization-server",
        verify=str(server.ca_file),
        timeout=10,
    )
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def check_introspection(
    answer: dict[str, Any], credentials: Credentials, *, dpop: bool = False
) -> None:
    assert answer["active"] is True, answer
    assert answer["client_id"] == credentials.client_id
    assert answer["scope"] == "read"
    confirmation = answer.get("cnf", {})
    assert ("jkt" in confirmation) is dpop
    method = credentials.registration["token_endpoint_auth_method"]
    assert ("x5t#S256" in confirmation) is (method in CERTIFICATE_METHODS)


# Authlib


def authlib_session(
    endpoints: dict[str, Any], credentials: Credentials, method: str | None
) -> AuthlibSession:
    """
    An Authlib session as its documentation makes one for C{method}
    (None: its defaults).
    """
    token_endpoint = endpoints["token_endpoint"]
    if method is None:
        return AuthlibSession(credentials.client_id, credentials.client_secret, scope="read")
    if method == "client_secret_post":
        return AuthlibSession(
            credentials.client_id,
            credentials.client_secret,
            scope="read",
            token_endpoint_auth_method=method,
            revocation_endpoint_auth_method=method,
        )
    if method == "client_secret_jwt":
        session = AuthlibSession(
            credentials.client_id,
            credentials.client_secret,
            scope="read",
            token_endpoint_auth_method=method,
            revocation_endpoint_auth_method=method,
        )
        session.register_client_auth_method(ClientSecretJWT(token_endpoint))
        return session
    assert method == "private_key_jwt"
    session = AuthlibSession(
        credentials.client_id,
        credentials.private_key_pem,
        scope="read",
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
    )
    session.register_client_auth_method(PrivateKeyJWT(token_endpoint))
    return session


AUTHLIB_CASES = {
    # the README's first client: no method named; Authlib's default (Basic)
    "defaults": (None, None),
    "client_secret_basic": ("client_secret_basic", None),
    "client_secret_post": ("client_secret_post", "client_secret_post"),
    "client_secret_jwt": ("client_secret_jwt", "client_secret_jwt"),
    # Authlib's PrivateKeyJWT signs RS256 by default: an RSA key
    "private_key_jwt": ("private_key_jwt", "private_key_jwt"),
}


@pytest.mark.parametrize("case", AUTHLIB_CASES)
def test_authlib(trusted: InteropServer, endpoints: dict[str, Any], case: str) -> None:
    registered, method = AUTHLIB_CASES[case]
    credentials = trusted.register(registered, key_type="RSA")
    session = authlib_session(endpoints, credentials, method)
    token = session.fetch_token(endpoints["token_endpoint"], grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "read"
    introspection = session.introspect_token(
        endpoints["introspection_endpoint"], token=token["access_token"]
    )
    assert introspection.status_code == 200, introspection.text
    check_introspection(introspection.json(), credentials)
    revocation = session.revoke_token(endpoints["revocation_endpoint"], token=token["access_token"])
    assert revocation.status_code == 200, revocation.text
    after = session.introspect_token(
        endpoints["introspection_endpoint"], token=token["access_token"]
    )
    assert after.json() == {"active": False}


# requests-oauth2client


def oauth2client(server: InteropServer, credentials: Credentials, method: str | None) -> OAuth2Client:
    """
    An C{OAuth2Client} from the discovery document, as its documentation
    makes one for C{method} (None: C{auth=(client_id, secret)}, its
    default, which posts the secret).
    """
    issuer = server.issuer
    if method is None or method == "client_secret_post":
        return OAuth2Client.from_discovery_endpoint(
            issuer=issuer, auth=(credentials.client_id, credentials.client_secret)
        )
    if method == "client_secret_basic":
        auth: Any = ClientSecretBasic(credentials.client_id, credentials.client_secret)
    elif method == "client_secret_jwt":
        auth = ClientSecretJwt(credentials.client_id, credentials.client_secret)
    elif method == "private_key_jwt":
        auth = PrivateKeyJwt(credentials.client_id, credentials.private_jwk)
    else:
        assert method in CERTIFICATE_METHODS and credentials.cert_files is not None
        session = requests.Session()
        session.cert = credentials.cert_files
        return OAuth2Client.from_discovery_endpoint(
            issuer=issuer, auth=PublicApp(credentials.client_id), session=session
        )
    return OAuth2Client.from_discovery_endpoint(issuer=issuer, auth=auth)


OAUTH2CLIENT_METHODS = (
    None,
    "client_secret_basic",
    "client_secret_post",
    "client_secret_jwt",
    "private_key_jwt",
    *CERTIFICATE_METHODS,
)


def oauth2client_round(
    server: InteropServer, registered: str | None, *, dpop: bool
) -> None:
    credentials = server.register(registered)
    client = oauth2client(server, credentials, registered)
    token = client.client_credentials(scope="read", dpop=dpop)
    assert token.token_type.lower() == ("dpop" if dpop else "bearer")
    check_introspection(client.introspect_token(token.access_token), credentials, dpop=dpop)
    assert client.revoke_access_token(token.access_token) is True
    assert client.introspect_token(token.access_token) == {"active": False}


@pytest.mark.parametrize("method", OAUTH2CLIENT_METHODS, ids=lambda m: m or "defaults")
def test_requests_oauth2client(trusted: InteropServer, method: str | None) -> None:
    oauth2client_round(trusted, method, dpop=False)


@pytest.mark.parametrize("method", (None, "private_key_jwt"), ids=lambda m: m or "defaults")
def test_requests_oauth2client_dpop(trusted: InteropServer, method: str | None) -> None:
    oauth2client_round(trusted, method, dpop=True)


@pytest.fixture(scope="module")
def nonce_server() -> Iterator[InteropServer]:
    """
    A server that asks for DPoP nonces (C{[dpop] require_nonce}, RFC 9449 §8).
    """
    running = InteropServer("[dpop]\nrequire_nonce = true").start()
    yield running
    running.stop()


def test_requests_oauth2client_dpop_nonce(
    nonce_server: InteropServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(nonce_server.ca_file))
    oauth2client_round(nonce_server, None, dpop=True)


# requests-oauthlib


def introspect(server: InteropServer, credentials: Credentials, access_token: str) -> dict[str, Any]:
    """
    The server's view of a token, asked by its own client over the
    server's certificate listener (requests-oauthlib cannot introspect).
    """
    method = credentials.registration["token_endpoint_auth_method"]
    if credentials.cert_files is not None:
        auth = None
        data = {"token": access_token, "client_id": credentials.client_id}
    elif method == "client_secret_post":
        auth = None
        data = {
            "token": access_token,
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
        }
    else:
        auth = (credentials.client_id, credentials.client_secret)
        data = {"token": access_token}
    response = requests.post(
        server.issuer + "/token/introspect",
        data=data,
        auth=auth,
        cert=credentials.cert_files,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


OAUTHLIB_METHODS = (None, "client_secret_basic", "client_secret_post", *CERTIFICATE_METHODS)


@pytest.mark.parametrize("method", OAUTHLIB_METHODS, ids=lambda m: m or "defaults")
def test_requests_oauthlib(
    trusted: InteropServer, endpoints: dict[str, Any], method: str | None
) -> None:
    credentials = trusted.register(method)
    session = OAuthlibSession(client=BackendApplicationClient(client_id=credentials.client_id))
    token_url = endpoints["token_endpoint"]
    if method in CERTIFICATE_METHODS:
        # its documented mutual-TLS use: the certificate, client_id in the body
        token = session.fetch_token(
            token_url, include_client_id=True, cert=credentials.cert_files, scope=["read"]
        )
    elif method == "client_secret_post":
        token = session.fetch_token(
            token_url,
            client_secret=credentials.client_secret,
            include_client_id=True,
            scope=["read"],
        )
    else:
        token = session.fetch_token(
            token_url, client_secret=credentials.client_secret, scope=["read"]
        )
    assert token["token_type"] == "Bearer"
    check_introspection(introspect(trusted, credentials, token["access_token"]), credentials)


# token exchange (RFC 8693)

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


@pytest.mark.parametrize("dpop", (False, True), ids=("bearer", "dpop"))
def test_requests_oauth2client_token_exchange(trusted: InteropServer, dpop: bool) -> None:
    """
    requests-oauth2client's token_exchange, at its defaults, from the
    discovery document: B exchanges the token A sent it for one for C
    (bound to B's own DPoP key when it asks), and C sees sub = A, act.sub =
    B.  An introspection by C and a revocation of A's token end it.
    """
    a = trusted.register(None, audience=["https://b.example/api"])
    b = trusted.register(
        None,
        grant_types=[EXCHANGE],
        resource_server_uris=["https://b.example/api"],
        audience=["https://c.example/api"],
    )
    c = trusted.register(None, resource_server_uris=["https://c.example/api"])
    a_token = oauth2client(trusted, a, None).client_credentials(scope="read")
    exchanged = oauth2client(trusted, b, None).token_exchange(
        subject_token=a_token,  # a BearerToken: its type is the library's guess
        audience="https://c.example/api",
        dpop=dpop,
    )
    assert exchanged.token_type.lower() == ("dpop" if dpop else "bearer")
    assert exchanged.kwargs["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    by_c = oauth2client(trusted, c, None)
    seen = by_c.introspect_token(exchanged.access_token)
    assert seen["active"] is True
    assert (seen["sub"], seen["act"]) == (a.client_id, {"sub": b.client_id})
    assert seen["aud"] == "https://c.example/api"
    assert ("jkt" in seen.get("cnf", {})) is dpop
    assert oauth2client(trusted, a, None).revoke_access_token(a_token.access_token) is True
    assert by_c.introspect_token(exchanged.access_token) == {"active": False}
