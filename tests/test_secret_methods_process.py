"""
Which secret method a client may use, against a real C{twist ccserver}
over each of the four stores (the C{ccserver_process} fixture): a client
whose registration named no method may present its secret in a Basic
header or in the form body; one that named a method is held to it.  Whether
the method was named is stored with the client, so every instance and
every restart sees it (the store contract tests the record itself).
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.helpers import basic
from tests.process import CCServerProcess

pytestmark = pytest.mark.process

GRANT = {"grant_type": "client_credentials"}


def by_basic(server: CCServerProcess, client: dict[str, Any]) -> requests.Response:
    return requests.post(
        server.url + "/token",
        data=GRANT,
        headers={"Authorization": basic(client["client_id"], client["client_secret"])},
        timeout=10,
    )


def by_post(server: CCServerProcess, client: dict[str, Any]) -> requests.Response:
    form = {**GRANT, "client_id": client["client_id"], "client_secret": client["client_secret"]}
    return requests.post(server.url + "/token", data=form, timeout=10)


def test_unnamed_method_takes_either(ccserver_process: CCServerProcess) -> None:
    client = ccserver_process.register(scope="read")
    assert client["token_endpoint_auth_method"] == "client_secret_basic"
    for send in (by_basic, by_post):
        response = send(ccserver_process, client)
        assert response.status_code == 200, (send.__name__, response.text)


def test_named_method_is_held(ccserver_process: CCServerProcess) -> None:
    for method, wrong in (("client_secret_basic", by_post), ("client_secret_post", by_basic)):
        client = ccserver_process.register(scope="read", token_endpoint_auth_method=method)
        response = wrong(ccserver_process, client)
        assert response.status_code == 401, response.text
        assert response.json()["error_description"] == (
            f"this client must authenticate with {method}"
        )


def test_operator_names_it_later(ccserver_process: CCServerProcess) -> None:
    """
    The operator's replacement that names the method holds the client to
    it from then on: the flag is written on every store, not only read.
    """
    client = ccserver_process.register(scope="read")
    response = requests.put(
        client["registration_client_uri"],
        json={
            "client_id": client["client_id"],
            "scope": "read",
            "token_endpoint_auth_method": "client_secret_basic",
        },
        headers={"Authorization": f"Bearer {ccserver_process.master_token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    # every instance follows within [store] client_cache_seconds; this one
    # forgot the client when it replaced it
    assert by_post(ccserver_process, client).status_code == 401
    assert by_basic(ccserver_process, client).status_code == 200
