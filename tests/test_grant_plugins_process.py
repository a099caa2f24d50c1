"""
Grant type plugins in a real C{twist ccserver}: a third party's grant,
dropped into a C{ccserver/plugins/} folder on the path, is offered and
used end to end; one that cannot be loaded stops the start with one line.
The unit tests are in L{tests.test_grant_plugins}.
"""

from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest
import requests

from tests.process import REPO, CCServerProcess, run_ccserver
from tests.test_grant_plugins import (
    BREAK_GLASS,
    BROKEN_GRANTS,
    GRANT_PLUGIN,
    GRANT_PLUGIN_MODULE,
)
from tests.test_handlers import write_plugins
from tests.test_handlers_process import assert_refused_in_one_line

pytestmark = pytest.mark.process


def test_third_party_grant_end_to_end(tmp_path: Path) -> None:
    site = write_plugins(tmp_path / "site", {GRANT_PLUGIN_MODULE: GRANT_PLUGIN})
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    with CCServerProcess(tmp_path / "run", store="sqlite:///ccserver.db", env=env) as server:
        discovery = requests.get(server.url + "/.well-known/oauth-authorization-server", timeout=30)
        assert BREAK_GLASS in discovery.json()["grant_types_supported"]
        client = server.register(client_name="on-call", scope="ops:write", grant_types=[BREAK_GLASS])
        response = requests.post(
            server.url + "/token",
            data={"grant_type": BREAK_GLASS, "incident": "INC-4711"},
            auth=(client["client_id"], client["client_secret"]),
            timeout=30,
        )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        key = jwt.PyJWKClient(server.url + "/jwks.json").get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=server.url)
        assert (claims["client_id"], claims["scope"]) == (client["client_id"], "ops:write")
        refused = requests.post(
            server.url + "/token",
            data={"grant_type": BREAK_GLASS, "incident": "a fire somewhere"},
            auth=(client["client_id"], client["client_secret"]),
            timeout=30,
        )
        assert refused.json() == {
            "error": "invalid_request",
            "error_description": "incident: expected an incident number, such as INC-1234",
        }
        # registration now knows the grant; an unknown one is still refused
        unknown = requests.post(
            server.url + "/client-reg",
            json={"grant_types": ["urn:example:params:oauth:grant-type:nope"]},
            headers={"Authorization": f"Bearer {server.master_token}"},
            timeout=30,
        )
        assert unknown.json()["error"] == "invalid_client_metadata"
    assert "Traceback" not in server.read_log()


@pytest.mark.parametrize("case", sorted(BROKEN_GRANTS))
def test_broken_grant_stops_start_with_one_line(tmp_path: Path, case: str) -> None:
    modules, expected = BROKEN_GRANTS[case]
    site = write_plugins(tmp_path / "site", modules)
    run = tmp_path / "run"
    run.mkdir()
    result = run_ccserver("--store", "sqlite:///ccserver.db", cwd=run, pythonpath=[site])
    assert_refused_in_one_line(result, run, expected)


def test_help_lists_grant_types(tmp_path: Path) -> None:
    site = write_plugins(tmp_path / "site", {GRANT_PLUGIN_MODULE: GRANT_PLUGIN})
    result = run_ccserver("--help", cwd=tmp_path, pythonpath=[site])
    assert result.returncode == 0, result.stderr
    assert BREAK_GLASS in result.stdout
    assert "urn:ietf:params:oauth:grant-type:token-exchange" in result.stdout
    assert "an on-call client's token for an open incident" in result.stdout
