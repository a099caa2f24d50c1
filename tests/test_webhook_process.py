"""
The C{webhook} grant handler end to end: a real ccserver process against a
real HTTP service on the loopback interface.  The unit tests, over a stubbed
service and a L{Clock}, are in L{tests.test_webhook}.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from attrs import define

from tests.process import REPO, CCServerProcess, free_port, wait_until
from tests.test_webhook import HANG, WEBHOOK_TOKEN

pytestmark = pytest.mark.process

# End to end: a real ccserver process and a real HTTP service.

#: The handler timeout in the end-to-end configuration, in seconds.
E2E_TIMEOUT = 1.0
#: A generous bound on "answers within about the timeout" on a slow machine.
E2E_BOUND = E2E_TIMEOUT + 4.0


@define
class Seen:
    headers: dict[str, str]
    body: Any
    port: int


class PolicyService:
    """
    A real HTTP/1.1 service on a free loopback port, in a thread.  Its
    C{answer} is a C{(code, document or bytes)} pair, or L{HANG} (it waits
    until closed).
    """

    def __init__(self) -> None:
        self.answer: Any = (200, {"scope": ["read"]})
        self.seen: list[Seen] = []
        self.release = threading.Event()
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                service.seen.append(
                    Seen(dict(self.headers.items()), json.loads(body), self.client_address[1])
                )
                answer = service.answer
                if answer is HANG:
                    service.release.wait(30)
                    self.close_connection = True
                    return
                code, document = answer
                payload = document if isinstance(document, bytes) else json.dumps(document).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/decide"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def write_config(folder: Path, url: str) -> Path:
    path = folder / "ccserver.toml"
    path.write_text(
        "[grant_handler]\n"
        'name = "webhook"\n'
        f'url = "{url}"\n'
        f'token = "{WEBHOOK_TOKEN}"\n'
        f"timeout = {E2E_TIMEOUT}\n"
    )
    return path


@pytest.fixture(scope="module")
def service() -> Iterator[PolicyService]:
    service = PolicyService()
    yield service
    service.close()


@pytest.fixture(scope="module")
def ccserver(
    tmp_path_factory: pytest.TempPathFactory, service: PolicyService
) -> Iterator[CCServerProcess]:
    folder = tmp_path_factory.mktemp("webhook-e2e")
    process = CCServerProcess(
        folder, "--config", str(write_config(folder, service.url)), store="memory://"
    )
    with process:
        yield process


@pytest.fixture
def client(ccserver: CCServerProcess, service: PolicyService) -> dict[str, Any]:
    service.answer = (200, {"scope": ["read"]})
    service.seen.clear()
    return ccserver.register(client_name="My House App", scope="read write")


def token_request(
    ccserver: CCServerProcess, client: dict[str, Any], **form: str
) -> requests.Response:
    return requests.post(
        ccserver.url + "/token",
        data={"grant_type": "client_credentials", **form},
        auth=(client["client_id"], client["client_secret"]),
        timeout=30,
    )


def decode(ccserver: CCServerProcess, access_token: str, audience: str) -> dict[str, Any]:
    key = jwt.PyJWKClient(ccserver.url + "/jwks.json").get_signing_key_from_jwt(access_token)
    return jwt.decode(
        access_token, key.key, algorithms=["RS256"], audience=audience, issuer=ccserver.url
    )


def wait_for_log(ccserver: CCServerProcess, text: str) -> str:
    """
    The server's log, once it holds C{text} (log lines may trail the answer).
    """

    def holding() -> str:
        log = ccserver.read_log()
        return log if text in log else ""

    log = wait_until(holding, what=f"{text!r} in the log")
    assert WEBHOOK_TOKEN not in log
    return log


def assert_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert "access_token" not in response.json()


def test_e2e_decision_changes_without_restart(
    ccserver: CCServerProcess, service: PolicyService, client: dict[str, Any]
) -> None:
    service.answer = (
        200,
        {"scope": ["read"], "access_token": {"lifetime": 600, "claims": {"tier": "gold"}}},
    )
    first = token_request(
        ccserver, client, scope="read write", resource="https://api.example.com", tenant="t1"
    )
    assert first.status_code == 200, first.text
    assert first.json()["scope"] == "read"
    claims = decode(ccserver, first.json()["access_token"], ccserver.url)
    assert (claims["tier"], claims["exp"] - claims["iat"], claims["scope"]) == ("gold", 600, "read")

    service.answer = (
        200,
        {
            "scope": ["read", "write"],
            "access_token": {"audience": ["https://api.example.com"], "claims": {"tier": "silver"}},
        },
    )
    second = token_request(ccserver, client, scope="read write")
    assert second.status_code == 200, second.text
    claims = decode(ccserver, second.json()["access_token"], "https://api.example.com")
    assert (claims["tier"], claims["scope"]) == ("silver", "read write")

    first_seen, second_seen = service.seen
    assert first_seen.headers["Authorization"] == f"Bearer {WEBHOOK_TOKEN}"
    assert first_seen.body == {
        "grant_type": "client_credentials",
        "client_id": client["client_id"],
        "client": {
            key: client[key]
            for key in (
                "client_name",
                "scope",
                "grant_types",
                "response_types",
                "application_type",
                "token_endpoint_auth_method",
            )
        },
        "scope": ["read", "write"],
        "resource": ["https://api.example.com"],
        "params": {"tenant": "t1"},
        "issuer": ccserver.url,
    }
    assert (second_seen.body["resource"], second_seen.body["params"]) == ([], {})
    # One kept-alive connection served both: the connection pool is persistent.
    assert first_seen.port == second_seen.port


def test_e2e_denial(
    ccserver: CCServerProcess, service: PolicyService, client: dict[str, Any]
) -> None:
    service.answer = (403, {"error": "unauthorized_client", "error_description": "suspended"})
    response = token_request(ccserver, client)
    assert response.status_code == 400
    assert response.json() == {"error": "unauthorized_client", "error_description": "suspended"}

    service.answer = (401, {"error": "invalid_client", "error_description": "revoked"})
    response = token_request(ccserver, client)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic ")


def test_e2e_5xx(ccserver: CCServerProcess, service: PolicyService, client: dict[str, Any]) -> None:
    service.answer = (500, b"Internal Server Error")
    assert_unavailable(token_request(ccserver, client))
    wait_for_log(ccserver, "it answered 500")


def test_e2e_malformed_json(
    ccserver: CCServerProcess, service: PolicyService, client: dict[str, Any]
) -> None:
    service.answer = (200, b'{"scope": ["read"')
    assert_unavailable(token_request(ccserver, client))
    wait_for_log(ccserver, "malformed answer: the body is not JSON")


def test_e2e_timeout(
    ccserver: CCServerProcess, service: PolicyService, client: dict[str, Any]
) -> None:
    service.answer = HANG
    started = time.monotonic()
    response = token_request(ccserver, client)
    elapsed = time.monotonic() - started
    assert_unavailable(response)
    assert elapsed < E2E_BOUND
    wait_for_log(ccserver, f"no answer within {E2E_TIMEOUT:g}s")

    # and the next decision is made as usual
    service.answer = (200, {"scope": ["write"]})
    response = token_request(ccserver, client)
    assert (response.status_code, response.json().get("scope")) == (200, "write"), response.text


def test_e2e_refused(tmp_path: Path) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/decide"
    with CCServerProcess(
        tmp_path, "--config", str(write_config(tmp_path, nobody)), store="memory://"
    ) as process:
        client = process.register(client_name="My House App", scope="read")
        started = time.monotonic()
        response = token_request(process, client)
        assert time.monotonic() - started < E2E_BOUND
        assert_unavailable(response)
        wait_for_log(process, "could not connect")


def documented_policy() -> str:
    """
    The example service of docs/grant-handlers.md.
    """
    doc = (REPO / "docs" / "grant-handlers.md").read_text()
    [source] = re.findall(r"```python[^\n]*\n(# policy\.py.*?)```", doc, re.DOTALL)
    return source


def test_e2e_documented_example_service(tmp_path: Path) -> None:
    """
    The example service of the documentation works as it says.
    """
    port = free_port()
    source = documented_policy()
    [token] = re.findall(r'^TOKEN = "(.+?)"', source, re.MULTILINE)
    (tmp_path / "policy.py").write_text(source.replace("9000", str(port)))
    policy = subprocess.Popen(
        [sys.executable, "policy.py"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listening() -> bool:
            assert policy.poll() is None, "the example service ended"
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True

        wait_until(listening, what="the example service listening", tolerate=(OSError,))
        config = tmp_path / "ccserver.toml"
        config.write_text(
            '[grant_handler]\nname = "webhook"\n'
            f'url = "http://127.0.0.1:{port}/grant"\ntoken = "{token}"\n'
        )
        with CCServerProcess(
            tmp_path / "run", "--config", str(config), store="memory://"
        ) as server:
            plain = server.register(client_name="Plain", scope="read write")
            trusted = server.register(client_name="Trusted", scope="read", software_id="trusted")

            response = token_request(server, plain, tenant="t1")
            assert response.status_code == 200, response.text
            assert (response.json()["scope"], response.json()["expires_in"]) == ("read", 900)
            claims = decode(server, response.json()["access_token"], server.url)
            assert claims["tenant"] == "t1"

            response = token_request(server, plain, scope="write")
            assert response.status_code == 400
            assert response.json() == {
                "error": "invalid_scope",
                "error_description": "allowed: read",
            }

            # the service is authoritative: more than the client registered
            response = token_request(server, trusted)
            assert (response.status_code, response.json()["scope"]) == (200, "read write")
    finally:
        policy.terminate()
        policy.wait(10)
