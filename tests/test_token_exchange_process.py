"""
Token exchange (RFC 8693) end to end: a real C{twist ccserver} over every
store (memory, SQLite, PostgreSQL, Redis: real servers from
L{ccserver.testing.servers}), driven by real OAuth client libraries at their defaults
(requests-oauth2client's C{token_exchange}, Authlib's C{fetch_token}).

The chain A -> B -> C with real tokens: A gets a token for B's API; B
exchanges it for one C accepts; C sees C{sub} = A and C{act.sub} = B.  Each
refusal the exchange names, on each store; a token made by exchange dies
with the token it was made from, however many were made at once, and
across the processes of C{--workers 2}.  The server's tokens are opaque
(kept in the store, so the store's columns for exchanged tokens are
exercised), and JWTs when asked (C{requested_token_type}).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from requests_oauth2client import (
    InvalidRequest,
    InvalidScope,
    InvalidTarget,
    OAuth2Client,
    UnauthorizedClient,
)

from ccserver.model import ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE
from ccserver.testing import servers
from tests.process import CCServerProcess, wait_until

pytestmark = pytest.mark.process

A_API = "https://a.example/api"
B_API = "https://b.example/api"
C_API = "https://c.example/api"
D_API = "https://d.example/api"

#: Exchanges made at once in the burst tests.
BURST = 24


def _config(folder: Path) -> Path:
    config = folder / "ccserver.toml"
    # opaque tokens, so that every exchanged token is a record of the
    # store; a budget the deliberate failures never reach
    config.write_text(
        '[tokens]\nformat = "opaque"\n\n[limits]\nfailed_auth_per_minute = 1000000\n'
    )
    return config


@pytest.fixture(scope="module")
def server(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CCServerProcess]:
    folder = tmp_path_factory.mktemp("exchange")
    process = CCServerProcess(
        folder,
        "--master-token",
        secrets.token_urlsafe(32),
        "--config",
        str(_config(folder)),
        store=store_url,
    )
    process.start()
    yield process
    process.kill()


def credentials(client: dict[str, Any]) -> dict[str, str]:
    """
    client_secret_post (the clients here named no method: either works).
    """
    return {"client_id": client["client_id"], "client_secret": client["client_secret"]}


class Services:
    """
    A, B, C and D registered on a server, each as a library client.
    """

    def __init__(self, server: CCServerProcess) -> None:
        self.server = server
        # registered without a method, so that the libraries' default
        # (they post the secret) works as registered
        self.a = server.register(
            client_name="A", scope="orders:read orders:write", audience=[B_API]
        )
        self.b = server.register(
            client_name="B",
            scope="orders:read",
            grant_types=[TOKEN_EXCHANGE],
            resource_server_uris=[B_API],
            audience=[C_API],
        )
        self.c = server.register(
            client_name="C",
            scope="orders:read",
            grant_types=[TOKEN_EXCHANGE],
            resource_server_uris=[C_API],
            audience=[D_API],
        )

    def library(self, client: dict[str, Any]) -> OAuth2Client:
        """
        requests-oauth2client, from the discovery document (http here, on
        loopback: testing=True lets it be).
        """
        return OAuth2Client.from_discovery_endpoint(
            issuer=self.server.url,
            client_id=client["client_id"],
            client_secret=client["client_secret"],
            testing=True,
        )

    def a_token(self) -> str:
        return str(self.library(self.a).client_credentials(scope="orders:read orders:write"))

    def introspect(self, token: str, caller: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(
            self.server.url + "/token/introspect",
            data={"token": token, **credentials(caller)},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def revoke(self, token: str, caller: dict[str, Any]) -> None:
        response = requests.post(
            self.server.url + "/token/revoke",
            data={"token": token, **credentials(caller)},
            timeout=30,
        )
        assert response.status_code == 200, response.text

    def exchange(self, client: dict[str, Any], **form: str) -> requests.Response:
        return requests.post(
            self.server.url + "/token",
            data={"grant_type": TOKEN_EXCHANGE, **form, **credentials(client)},
            timeout=30,
        )


@pytest.fixture
def services(server: CCServerProcess) -> Services:
    return Services(server)


def test_chain(services: Services) -> None:
    """
    B exchanges the token A sent it for one C accepts, with
    requests-oauth2client's token_exchange; C introspects it: sub = A,
    act.sub = B.
    """
    a_token = services.a_token()
    for_c = services.library(services.b).token_exchange(
        subject_token=a_token,
        subject_token_type=ACCESS_TOKEN_TYPE,
        audience=C_API,
        scope="orders:read",
    )
    assert for_c.token_type.lower() == "bearer"
    assert for_c.kwargs["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert for_c.scope == "orders:read"
    seen = services.introspect(str(for_c), services.c)
    assert seen["active"] is True
    assert seen["sub"] == services.a["client_id"]
    assert seen["act"] == {"sub": services.b["client_id"]}
    assert seen["client_id"] == services.b["client_id"]
    assert seen["aud"] == C_API
    assert seen["scope"] == "orders:read"
    subject = services.introspect(a_token, services.b)
    assert seen["exp"] <= subject["exp"]


def test_chain_jwt_with_authlib(services: Services) -> None:
    """
    The same with Authlib, asking for a JWT, which C verifies with the
    published keys; then C exchanges it in turn for D: act nests B in C.
    """
    a_token = services.a_token()
    # Authlib's default: client_secret_basic
    session = OAuth2Session(services.b["client_id"], services.b["client_secret"])
    answer = session.fetch_token(
        services.server.url + "/token",
        grant_type=TOKEN_EXCHANGE,
        subject_token=a_token,
        subject_token_type=ACCESS_TOKEN_TYPE,
        requested_token_type=JWT_TOKEN_TYPE,
        audience=C_API,
    )
    assert answer["issued_token_type"] == JWT_TOKEN_TYPE
    keys = jwt.PyJWKClient(services.server.url + "/jwks.json")
    token = answer["access_token"]
    claims = jwt.decode(
        token,
        keys.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience=C_API,
        issuer=services.server.url,
    )
    assert (claims["sub"], claims["act"]) == (services.a["client_id"], {"sub": services.b["client_id"]})
    for_d = services.library(services.c).token_exchange(
        subject_token=token, subject_token_type=ACCESS_TOKEN_TYPE, audience=D_API
    )
    seen = services.introspect(str(for_d), services.c)
    assert seen["sub"] == services.a["client_id"]
    assert seen["act"] == {"sub": services.c["client_id"], "act": {"sub": services.b["client_id"]}}


def test_refusals(services: Services) -> None:
    """
    Every refusal of RFC 8693 §2.2.2 and the policy, as the library raises
    it.
    """
    a_token = services.a_token()
    b = services.library(services.b)
    with pytest.raises(UnauthorizedClient):
        services.library(services.a).token_exchange(
            subject_token=a_token, subject_token_type=ACCESS_TOKEN_TYPE
        )
    for subject_token in ("not-a-token", a_token[:-2] + "xx"):
        with pytest.raises(InvalidRequest):
            b.token_exchange(subject_token=subject_token, subject_token_type=ACCESS_TOKEN_TYPE)
    with pytest.raises(InvalidRequest):
        b.token_exchange(subject_token=a_token, subject_token_type=JWT_TOKEN_TYPE)
    with pytest.raises(InvalidRequest):  # not for C
        services.library(services.c).token_exchange(
            subject_token=a_token, subject_token_type=ACCESS_TOKEN_TYPE
        )
    with pytest.raises(InvalidScope):  # more than B registered
        b.token_exchange(
            subject_token=a_token, subject_token_type=ACCESS_TOKEN_TYPE, scope="orders:write"
        )
    with pytest.raises(InvalidTarget):
        b.token_exchange(
            subject_token=a_token, subject_token_type=ACCESS_TOKEN_TYPE, audience=D_API
        )
    with pytest.raises(InvalidScope):  # more than the subject token has
        write_only = str(services.library(services.a).client_credentials(scope="orders:write"))
        b.token_exchange(
            subject_token=write_only, subject_token_type=ACCESS_TOKEN_TYPE, scope="orders:read"
        )
    for actor_token in ("not-a-token", a_token[:-2] + "xx"):
        with pytest.raises(InvalidRequest):
            b.token_exchange(
                subject_token=a_token,
                subject_token_type=ACCESS_TOKEN_TYPE,
                actor_token=actor_token,
                actor_token_type=ACCESS_TOKEN_TYPE,
            )
    for form in ({}, {"subject_token": a_token}, {"subject_token_type": ACCESS_TOKEN_TYPE}):
        response = services.exchange(services.b, **form)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def test_deleted_clients_subject_token(services: Services) -> None:
    """
    A subject token whose client has since been deleted is refused as
    invalid (RFC 8693 §2.2.2), on every store.
    """
    gone = services.server.register(scope="orders:read", audience=[B_API])
    token = str(services.library(gone).client_credentials())
    deleted = requests.delete(
        gone["registration_client_uri"],
        headers={"Authorization": f"Bearer {gone['registration_access_token']}"},
        timeout=30,
    )
    assert deleted.status_code == 204, deleted.text
    with pytest.raises(InvalidRequest):
        services.library(services.b).token_exchange(
            subject_token=token, subject_token_type=ACCESS_TOKEN_TYPE
        )


def test_revoked_and_expired_subject_tokens(services: Services) -> None:
    a_token = services.a_token()
    services.revoke(a_token, services.a)
    response = services.exchange(
        services.b, subject_token=a_token, subject_token_type=ACCESS_TOKEN_TYPE
    )
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    short = services.server.register(scope="orders:read", audience=[B_API], access_token_lifetime=1)
    short_token = str(services.library(short).client_credentials())

    def refused() -> bool:
        response = services.exchange(
            services.b, subject_token=short_token, subject_token_type=ACCESS_TOKEN_TYPE
        )
        return response.status_code == 400 and response.json()["error"] == "invalid_request"

    wait_until(refused, timeout=30, interval=0.2, what="the one-second token expiring")


def exchanged_at_once(services: Services, a_token: str) -> list[str]:
    """
    BURST exchanges of the same subject token, all in flight together.
    """
    b = services.library(services.b)

    def exchange(_: int) -> str:
        return str(
            b.token_exchange(
                subject_token=a_token, subject_token_type=ACCESS_TOKEN_TYPE, audience=C_API
            )
        )

    with ThreadPoolExecutor(BURST) as pool:
        tokens = list(pool.map(exchange, range(BURST)))
    assert len(set(tokens)) == BURST
    return tokens


def assert_all_dead(services: Services, tokens: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda token: services.introspect(token, services.c), tokens))
    assert answers == [{"active": False}] * len(tokens)


def test_derived_tokens_die_with_the_subject(services: Services) -> None:
    """
    A burst of exchanges of one token, then the token is revoked: every
    token made from it is inactive, and so is a token made from one of them.
    """
    a_token = services.a_token()
    tokens = exchanged_at_once(services, a_token)
    onward = str(
        services.library(services.c).token_exchange(
            subject_token=tokens[0], subject_token_type=ACCESS_TOKEN_TYPE, audience=D_API
        )
    )
    assert services.introspect(onward, services.c)["active"] is True
    services.revoke(a_token, services.a)
    assert_all_dead(services, [*tokens, onward])


def test_derived_tokens_die_with_the_subjects_client(services: Services) -> None:
    a = services.server.register(scope="orders:read", audience=[B_API])
    a_token = str(services.library(a).client_credentials())
    tokens = exchanged_at_once(services, a_token)
    response = requests.delete(
        services.server.url + f"/client-reg/{a['client_id']}",
        headers={"Authorization": f"Bearer {services.server.master_token}"},
        timeout=30,
    )
    assert response.status_code == 204
    assert_all_dead(services, tokens)


@pytest.fixture(params=("sqlite", "postgresql", "redis"))
def workers(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[CCServerProcess]:
    """
    C{twist ccserver --workers 2} over a store the workers share.
    """
    cleanups: list[tuple[Callable[..., object], tuple[object, ...]]] = []
    url = servers.clean_store_url(
        request.param,
        lambda function, *args: cleanups.append((function, args)),
        redis_name="exchange",
        redis_db=2,
    )
    process = CCServerProcess(
        tmp_path,
        "--workers",
        "2",
        "--master-token",
        secrets.token_urlsafe(32),
        "--config",
        str(_config(tmp_path)),
        store=url,
    )
    try:
        process.start()
        yield process
        # SIGTERM: the main process stops its workers (a SIGKILL would
        # leave them running)
        process.stop()
    finally:
        process.kill()
        for function, args in reversed(cleanups):
            function(*args)


def test_derived_tokens_die_across_workers(workers: CCServerProcess) -> None:
    """
    With two processes serving, exchanges land on both; the revocation,
    on either, ends every token made from the subject.
    """
    services = Services(workers)
    a_token = services.a_token()
    tokens = exchanged_at_once(services, a_token)
    with ThreadPoolExecutor(8) as pool:
        assert all(
            answer["active"]
            for answer in pool.map(lambda token: services.introspect(token, services.c), tokens)
        )
    services.revoke(a_token, services.a)
    assert_all_dead(services, tokens)
