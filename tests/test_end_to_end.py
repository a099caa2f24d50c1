"""
End to end: a real `twist ccserver` process, real HTTP, real clients
(requests, requests-oauthlib, Authlib, PyJWT, curl), against every store.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import unittest
from pathlib import Path

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session

from ccserver.testing.servers import postgres_server, redis_server
from tests.process import DEADLINE, CCServerProcess, wait_until

pytestmark = pytest.mark.process


class EndToEndMixin:
    """
    The tests every store passes.  Subclasses say which store.
    """

    durable = True

    def store_url(self) -> str:
        raise NotImplementedError

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-e2e-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        self.url = self.store_url()
        self.server = self.start()

    def start(self, *args: str) -> CCServerProcess:
        server = CCServerProcess(self.tmp, *args, store=self.url)
        self.addCleanup(server.kill)  # type: ignore[attr-defined]
        return server.start()

    def restart(self) -> None:
        port = self.server.port
        self.assert_clean_stop()
        self.server = CCServerProcess(self.tmp, store=self.url, port=port)
        self.addCleanup(self.server.kill)  # type: ignore[attr-defined]
        self.server.start()

    def assert_clean_stop(self) -> None:
        """
        SIGTERM: the server stops listening, finishes what is in flight,
        closes the store, and ends by that signal (as twist does; systemd
        counts it as a clean stop).
        """
        self.assertEqual(self.server.stop(), -15)  # type: ignore[attr-defined]
        self.assertIn("ccserver stopped", self.server.read_log())  # type: ignore[attr-defined]

    def token(self, client: dict, scope: str | None = None) -> requests.Response:  # type: ignore[type-arg]
        data = {"grant_type": "client_credentials"}
        if scope is not None:
            data["scope"] = scope
        return requests.post(
            self.server.url + "/token",
            data=data,
            auth=(client["client_id"], client["client_secret"]),
            timeout=10,
        )

    def verify(self, access_token: str) -> dict:  # type: ignore[type-arg]
        """
        Verify the way a resource server would: PyJWT's PyJWKClient on the
        published JWK set.
        """
        signing_key = jwt.PyJWKClient(self.server.url + "/jwks.json").get_signing_key_from_jwt(
            access_token
        )
        return jwt.decode(
            access_token,
            signing_key,
            algorithms=["RS256"],
            audience=self.server.url,
            issuer=self.server.url,
        )

    def test_walkthrough(self) -> None:
        """
        The README's walk-through: register "My House App", get a token,
        verify it against /jwks.json.
        """
        client = self.server.register(client_name="My House App", scope="read write")
        response = self.token(client, "read")
        self.assertEqual(response.status_code, 200, response.text)  # type: ignore[attr-defined]
        self.assertEqual(response.headers["Cache-Control"], "no-store")  # type: ignore[attr-defined]
        claims = self.verify(response.json()["access_token"])
        self.assertEqual(claims["client_id"], client["client_id"])  # type: ignore[attr-defined]
        self.assertEqual(claims["scope"], "read")  # type: ignore[attr-defined]

    def test_requests_oauthlib_backend_application_client(self) -> None:
        client = self.server.register(client_name="batch job", scope="read write")
        os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain HTTP on loopback
        session = OAuth2Session(client=BackendApplicationClient(client_id=client["client_id"]))
        token = session.fetch_token(
            self.server.url + "/token",
            client_id=client["client_id"],
            client_secret=client["client_secret"],
        )
        self.assertEqual(token["token_type"], "Bearer")  # type: ignore[attr-defined]
        self.assertEqual(token["scope"], ["read", "write"])  # type: ignore[attr-defined]
        self.verify(token["access_token"])

    def test_authlib_client_secret_post(self) -> None:
        client = self.server.register(
            client_name="device", scope="read", token_endpoint_auth_method="client_secret_post"
        )
        session = AuthlibSession(
            client["client_id"],
            client["client_secret"],
            token_endpoint_auth_method="client_secret_post",
            scope="read",
        )
        token = session.fetch_token(self.server.url + "/token", grant_type="client_credentials")
        self.assertEqual(token["scope"], "read")  # type: ignore[attr-defined]
        self.verify(token["access_token"])

    def test_curl(self) -> None:
        """
        The README's curl commands, as a shell runs them.
        """
        master_token = self.server.master_token
        registered = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                self.server.url + "/client-reg",
                "-H",
                f"Authorization: Bearer {master_token}",
                "-H",
                "Content-Type: application/json",
                "-d",
                '{"client_name": "My House App", "scope": "read write"}',
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        client = json.loads(registered.stdout)
        issued = subprocess.run(
            [
                "curl",
                "-sS",
                "-u",
                f"{client['client_id']}:{client['client_secret']}",
                "-d",
                "grant_type=client_credentials",
                "-d",
                "scope=read",
                self.server.url + "/token",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        self.assertEqual(self.verify(json.loads(issued.stdout)["access_token"])["scope"], "read")  # type: ignore[attr-defined]

    def test_update_and_delete(self) -> None:
        client = self.server.register(scope="read", grant_types=[])
        self.assertEqual(self.token(client).json()["error"], "unauthorized_client")  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {client['registration_access_token']}"}
        update = {"client_id": client["client_id"], "scope": "read", "grant_types": ["client_credentials"]}
        # Granting a grant type is the operator's: the client's own token is refused.
        response = requests.put(client["registration_client_uri"], json=update, headers=headers, timeout=10)
        self.assertEqual(response.status_code, 400, response.text)  # type: ignore[attr-defined]
        response = requests.put(
            client["registration_client_uri"],
            json=update,
            headers={"Authorization": f"Bearer {self.server.master_token}"},
            timeout=10,
        )
        self.assertEqual(response.status_code, 200, response.text)  # type: ignore[attr-defined]
        self.assertEqual(self.token(client).status_code, 200)  # type: ignore[attr-defined]
        self.assertEqual(
            requests.delete(
                client["registration_client_uri"], headers=headers, timeout=10
            ).status_code,
            204,
        )  # type: ignore[attr-defined]
        self.assertEqual(self.token(client).status_code, 401)  # type: ignore[attr-defined]
        self.assertEqual(
            requests.get(
                client["registration_client_uri"], headers=headers, timeout=10
            ).status_code,
            401,
        )  # type: ignore[attr-defined]

    def test_secrets_never_logged(self) -> None:
        client = self.server.register(scope="read")
        self.token(client)
        requests.post(
            self.server.url + "/token?client_secret=" + client["client_secret"], timeout=10
        )
        self.assert_clean_stop()
        log = self.server.read_log()
        self.assertIn("/token", log)  # type: ignore[attr-defined]
        for secret in (
            client["client_secret"],
            client["registration_access_token"],
            self.server.master_token,
        ):
            self.assertNotIn(secret, log)  # type: ignore[attr-defined]

    def test_restart_keeps_clients_and_keys(self) -> None:
        if not self.durable:
            return
        client = self.server.register(scope="read")
        before = self.token(client).json()["access_token"]
        self.restart()
        self.assertEqual(self.verify(before)["client_id"], client["client_id"])  # type: ignore[attr-defined]
        self.assertEqual(self.token(client).status_code, 200)  # type: ignore[attr-defined]

    def test_sigkill_loses_no_client(self) -> None:
        if not self.durable:
            return
        clients = [self.server.register(scope="read") for _ in range(5)]
        self.server.kill()
        self.server = CCServerProcess(self.tmp, store=self.url, port=self.server.port)
        self.addCleanup(self.server.kill)  # type: ignore[attr-defined]
        self.server.start()
        for client in clients:
            self.assertEqual(self.token(client).status_code, 200)  # type: ignore[attr-defined]


class MemoryEndToEnd(EndToEndMixin, unittest.TestCase):
    durable = False

    def store_url(self) -> str:
        return "memory://"


class SQLiteEndToEnd(EndToEndMixin, unittest.TestCase):
    def store_url(self) -> str:
        return f"sqlite:///{self.tmp}/ccserver.db"

    def test_master_token_file(self) -> None:
        """
        With no master token configured, one is made on first start, kept
        beside the database readable only by its owner, and the log names
        the file, never the token.
        """
        path = self.tmp / "ccserver.master-token"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        token = path.read_text().strip()
        self.assertGreaterEqual(len(token), 43)
        self.assertIn(str(path), self.server.read_log())
        self.assertNotIn(token, self.server.read_log())
        self.restart()
        self.assertEqual(self.server.master_token, token)
        self.server.register(client_name="after restart")

    def test_private_keys_encrypted_at_rest(self) -> None:
        import sqlite3

        self.assertEqual(stat.S_IMODE((self.tmp / "ccserver.db").stat().st_mode), 0o600)
        key_file = self.tmp / "ccserver.key-encryption-key"
        self.assertEqual(stat.S_IMODE(key_file.stat().st_mode), 0o600)
        with sqlite3.connect(self.tmp / "ccserver.db") as db:
            dump = "\n".join(db.iterdump())
        self.assertNotIn("PRIVATE KEY", dump)

    def test_files_open_to_others_warned(self) -> None:
        """
        Files of secrets that already exist with group or other permissions
        are left as they are, and each gets one warning line at start naming
        it and what to run; the log never holds what they hold.
        """
        files = [
            self.tmp / "ccserver.db",
            self.tmp / "ccserver.key-encryption-key",
            self.tmp / "ccserver.master-token",
        ]
        self.assertNotIn("chmod 600", self.server.read_log())
        self.assert_clean_stop()
        for path in files:
            path.chmod(0o644)
        self.restart()
        warnings = [line for line in self.server.read_log().splitlines() if "chmod 600" in line]
        self.assertEqual(len(warnings), 3, warnings)
        for path, line in zip(files, warnings, strict=True):
            self.assertIn(f"{path.resolve()} is open to its group or others (mode 0644)", line)
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o644)
        log = self.server.read_log()
        self.assertNotIn(self.server.master_token, log)
        self.assertNotIn((self.tmp / "ccserver.key-encryption-key").read_text().strip(), log)

    def test_master_token_on_command_line_warned(self) -> None:
        token = "command-line-master-token-0123456789"
        server = self.start("--master-token", token)
        server.register(client_name="x")
        log = server.read_log()
        self.assertIn("--master-token on the command line can be read by every local user", log)
        self.assertIn("CCSERVER_MASTER_TOKEN", log)
        self.assertNotIn(token, log)
        self.assertNotIn("--master-token on the command line", self.server.read_log())

    def test_default_store_in_working_folder(self) -> None:
        """
        `twist ccserver` with no options keeps everything in the working
        folder: sqlite:///ccserver.db.
        """
        folder = self.tmp / "default"
        server = CCServerProcess(folder)
        self.addCleanup(server.kill)
        server.start()
        server.register(client_name="x")
        self.assertTrue((folder / "ccserver.db").exists())
        self.assertTrue((folder / "ccserver.master-token").exists())


class RedisEndToEnd(EndToEndMixin, unittest.TestCase):
    def store_url(self) -> str:
        server = redis_server()
        server.flushall()
        return server.url_for(0)


class PostgreSQLEndToEnd(EndToEndMixin, unittest.TestCase):
    def store_url(self) -> str:
        server = postgres_server()
        return server.url_for(server.create_database())


class GracefulStopTests(unittest.TestCase):
    """
    SIGTERM while a token request is in flight (its grant handler is a web
    service that answers only when the test lets it): the server stops
    listening, the request is answered, then the server stops.
    """

    def test_request_in_flight_is_finished(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        asked = threading.Event()
        release = threading.Event()

        class SlowPolicy(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                asked.set()
                release.wait(DEADLINE)
                payload = b'{"scope": ["read"]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        policy = ThreadingHTTPServer(("127.0.0.1", 0), SlowPolicy)
        threading.Thread(target=policy.serve_forever, daemon=True).start()
        self.addCleanup(policy.server_close)
        self.addCleanup(policy.shutdown)
        self.addCleanup(release.set)
        tmp = Path(tempfile.mkdtemp(prefix="ccserver-stop-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        config = tmp / "ccserver.toml"
        config.write_text(
            '[grant_handler]\nname = "webhook"\n'
            f'url = "http://127.0.0.1:{policy.server_address[1]}/decide"\ntimeout = {DEADLINE}\n'
        )
        server = CCServerProcess(tmp, "--config", str(config), store="memory://")
        self.addCleanup(server.kill)
        server.start()
        client = server.register(scope="read")
        answers: list[requests.Response] = []
        request = threading.Thread(
            target=lambda: answers.append(
                requests.post(
                    server.url + "/token",
                    data={"grant_type": "client_credentials"},
                    auth=(client["client_id"], client["client_secret"]),
                    timeout=2 * DEADLINE,
                )
            )
        )
        request.start()
        self.assertTrue(asked.wait(DEADLINE))
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)

        def refused() -> bool:
            try:
                requests.get(server.url + "/jwks.json", timeout=2)
            except requests.ConnectionError:
                return True
            return False

        wait_until(refused, what="the listener closed", tolerate=(requests.Timeout,))
        self.assertTrue(request.is_alive())
        release.set()
        request.join(DEADLINE)
        self.assertEqual(len(answers), 1, server.read_log())
        self.assertEqual(answers[0].status_code, 200, answers[0].text)
        self.assertEqual(server.process.wait(DEADLINE), -15)
        self.assertIn("ccserver stopped", server.read_log())
