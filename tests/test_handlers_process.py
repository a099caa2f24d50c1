"""
Grant handlers at start-up, in a real C{twist ccserver} process: the help
lists them, a wrong choice or configuration stops the start, and a
third-party plugin dropped into a C{ccserver/plugins/} folder is found and
used.  The unit tests are in L{tests.test_handlers}.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from ccserver.handlers import available
from tests.process import REPO, CCServerProcess, run_ccserver, run_python
from tests.test_handlers import (
    BROKEN_PLUGINS,
    RECORDER_PLUGIN,
    _make,
    policy_module,
    write_plugin,
    write_plugins,
)

pytestmark = pytest.mark.process


def test_help_lists_handlers(tmp_path: Path) -> None:
    result = run_ccserver("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name, factory in available().items():
        assert name in result.stdout
        assert " ".join(factory.description.split()[:3]) in " ".join(result.stdout.split())


def test_unknown_handler_stops_start(tmp_path: Path) -> None:
    result = run_ccserver("--grant-handler", "nope", "--store", "memory://", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "ccserver: [grant_handler] name: no grant handler called 'nope'; "
        "available: registered-scope, webhook\n"
    )


@pytest.mark.parametrize("case", sorted(BROKEN_PLUGINS))
def test_broken_plugin_stops_start_with_one_line(tmp_path: Path, case: str) -> None:
    """
    A plugin dropped into a ccserver/plugins/ folder that fails at start,
    in any way (tests.test_handlers.BROKEN_PLUGINS), ends twist ccserver
    with one line naming it and what to change, status 2, no traceback,
    before anything is made or listens.
    """
    modules, name, expected = BROKEN_PLUGINS[case]
    site = write_plugins(tmp_path / "site", modules)
    run = tmp_path / "run"
    run.mkdir()
    result = run_ccserver(
        "--grant-handler", name, "--store", "sqlite:///ccserver.db", cwd=run, pythonpath=[site]
    )
    assert_refused_in_one_line(result, run, expected)


def assert_refused_in_one_line(
    result: subprocess.CompletedProcess[str], run: Path, expected: tuple[str, ...]
) -> None:
    """
    The start ended with status 2 and one line on stderr holding each of
    C{expected}, no traceback, and nothing made in C{run}.
    """
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith("ccserver: "), line
    for fragment in expected:
        assert fragment in line
    assert "Traceback" not in result.stdout + result.stderr
    assert list(run.iterdir()) == []


def test_broken_module_beside_the_chosen_plugin(tmp_path: Path) -> None:
    """
    A module that fails to import does not keep another plugin from
    serving: no traceback, one line in the log.
    """
    site = write_plugins(
        tmp_path / "site",
        {
            "policy.py": policy_module(_make("return Handler()")),
            "broken.py": "from ccserver.interfaces import IGrantHandlerFactoryV2\n",
        },
    )
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    server = CCServerProcess(tmp_path / "run", "--grant-handler", "policy", store="memory://", env=env)
    with server:
        client = server.register(client_name="My House App", scope="read write")
        response = token_request(server, client)
        assert (response.status_code, response.json()["scope"]) == (200, "read")
        assert server.stop() == -signal.SIGTERM  # twist ends by the signal
    assert server.process is not None and server.process.stderr is not None
    assert server.process.stderr.read() == b""
    log = server.read_log()
    assert "Traceback" not in log
    [line] = [line for line in log.splitlines() if "was not loaded" in line]
    assert "broken.py could not be imported: ImportError: cannot import name" in line


def test_service_handler_stopped_with_the_server(tmp_path: Path) -> None:
    """
    A third-party handler that provides IService (here one called
    "recording") starts before the server listens and stops on SIGTERM,
    after the last request.
    """
    site = write_plugins(tmp_path / "site", {"recording.py": RECORDER_PLUGIN})
    record = tmp_path / "record"
    config = tmp_path / "ccserver.toml"
    config.write_text(f'[grant_handler]\nname = "recording"\nrecord = "{record}"\n')
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    server = CCServerProcess(tmp_path / "run", "--config", str(config), store="memory://", env=env)
    with server:
        assert record.read_text() == "started\n"
        assert server.stop() == -signal.SIGTERM  # twist ends by the signal
    assert record.read_text() == "started\nstopped\n"


def test_handler_config_error_stops_start(tmp_path: Path) -> None:
    config = tmp_path / "ccserver.toml"
    config.write_text(
        '[grant_handler]\nname = "webhook"\nurl = "http://127.0.0.1:9/"\ntimeout = "soon"\n'
    )
    result = run_ccserver("--config", str(config), "--store", "memory://", cwd=tmp_path)
    assert result.returncode != 0
    assert "[grant_handler] timeout: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    """
    A child process environment whose C{sys.path} holds a folder with the
    example plugin in C{ccserver/plugins/}.
    """
    root = write_plugin(tmp_path / "site")
    return {"PYTHONPATH": os.pathsep.join([str(REPO), str(root)])}


@pytest.fixture
def read_only_server(tmp_path: Path, plugin_env: dict[str, str]) -> Iterator[CCServerProcess]:
    config = tmp_path / "ccserver.toml"
    config.write_text('[grant_handler]\nname = "read-only"\ntier = "gold"\n')
    process = CCServerProcess(
        tmp_path / "run", "--config", str(config), store="memory://", env=plugin_env
    )
    with process:
        yield process


def token_request(
    server: CCServerProcess, client: dict[str, Any], **form: str
) -> requests.Response:
    return requests.post(
        server.url + "/token",
        data={"grant_type": "client_credentials", **form},
        auth=(client["client_id"], client["client_secret"]),
        timeout=30,
    )


def test_third_party_plugin_named_in_config(read_only_server: CCServerProcess) -> None:
    """
    The plugin's decision is in the next token: its scope, lifetime and
    claims, from its configuration.
    """
    server = read_only_server
    client = server.register(client_name="My House App", scope="read write")
    response = token_request(server, client)
    assert response.status_code == 200, response.text
    assert (response.json()["scope"], response.json()["expires_in"]) == ("read", 300)
    access_token = response.json()["access_token"]
    key = jwt.PyJWKClient(server.url + "/jwks.json").get_signing_key_from_jwt(access_token)
    claims = jwt.decode(
        access_token, key.key, algorithms=["RS256"], audience=server.url, issuer=server.url
    )
    assert (claims["scope"], claims["tier"], claims["exp"] - claims["iat"]) == ("read", "gold", 300)
    assert claims["client_id"] == client["client_id"]

    denied = token_request(server, client, scope="read write")
    assert denied.status_code == 400
    assert denied.json() == {
        "error": "invalid_scope",
        "error_description": "this server grants read only",
    }


def test_third_party_plugin_named_on_command_line(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    with CCServerProcess(
        tmp_path / "run", "--grant-handler", "read-only", store="memory://", env=plugin_env
    ) as server:
        client = server.register(client_name="My House App", scope="read write")
        response = token_request(server, client)
        assert response.status_code == 200, response.text
        claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
        assert (claims["scope"], claims["tier"]) == ("read", "free")


def test_third_party_plugin_in_help(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    result = run_python("-m", "twisted", "ccserver", "--help", cwd=tmp_path, env=plugin_env)
    assert result.returncode == 0, result.stderr
    assert "read-only" in result.stdout
    assert "grants 'read' and nothing else" in " ".join(result.stdout.split())
