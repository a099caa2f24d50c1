"""
The servers under test, each a process group the bench starts on a free
loopback port and stops by its id: ccserver (run from this checkout) and
node-oidc-provider (the peer, installed by install.py).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench.cases import REGISTRATION, Case
from bench.errors import BenchError, NotAvailable
from bench.paths import REPO

START_TIMEOUT = 60.0
STOP_TIMEOUT = 35.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def basic(client_id: str, client_secret: str) -> str:
    """
    RFC 6749 §2.3.1: form-urlencoded, joined by a colon, base64.
    """
    joined = urllib.parse.quote_plus(client_id) + ":" + urllib.parse.quote_plus(client_secret)
    return base64.b64encode(joined.encode()).decode("ascii")


def http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def toml_text(tables: dict[str, dict[str, Any]]) -> str:
    """
    A TOML document of C{tables} (table name -> key -> value; the table
    "" is the top level).  The values are strings, numbers, booleans and
    lists of them, whose JSON is TOML too.
    """
    lines = [f"{key} = {json.dumps(value)}" for key, value in tables.get("", {}).items()]
    for name, values in tables.items():
        if name and values:
            lines += ["", f"[{name}]", *(f"{key} = {json.dumps(value)}" for key, value in values.items())]
    return "\n".join(lines) + "\n"


def _b64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


class Server:
    """
    One server under test: a process group we started, listening on
    127.0.0.1:port, with a client whose Basic credentials are C{basic}.
    """

    kind = "?"
    #: where it answers RFC 7662 introspection
    introspection_path = "/token/introspect"

    def __init__(self, label: str, workdir: Path) -> None:
        self.label = label
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.basic = ""
        self.log_path = workdir / "stdout.log"
        self.err_path = workdir / "stderr.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pgid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        raise NotImplementedError

    def start(self) -> None:
        argv, env, cwd = self.command()
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out, open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NotAvailable(self.refusal())
            try:
                status, _ = http("GET", self.base + "/.well-known/openid-configuration")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.label} did not answer within {START_TIMEOUT} s; see {self.err_path}")

    def refusal(self) -> str:
        """
        Why the server exited while starting: its one C{ccserver: ...} line,
        or else its last line on stderr.
        """
        text = self.err_path.read_text(errors="replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for line in lines:
            if line.startswith("ccserver:"):
                return line
        return lines[-1] if lines else f"exited with status {self.process.returncode if self.process else '?'}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        # whatever is left of the group we made (workers), by its id
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()

    def token(self) -> dict[str, Any]:
        status, body = http(
            "POST",
            self.base + "/token",
            b"grant_type=client_credentials&scope=read",
            {
                "Authorization": "Basic " + self.basic,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        if status != 200:
            raise BenchError(f"{self.label}: POST /token answered {status}: {body[:300]!r}")
        document: dict[str, Any] = json.loads(body)
        return document

    def check_token(self, case: Case) -> str:
        """
        Get one token and check it is what the case is about: a JWT signed
        with the algorithm under test, or an opaque token.
        """
        document = self.token()
        token = document.get("access_token", "")
        if document.get("token_type", "").lower() != "bearer" or not token:
            raise BenchError(f"{self.label}: not a bearer token answer: {document}")
        parts = token.split(".")
        header = None
        if len(parts) == 3:
            try:
                header = _b64json(parts[0])
            except ValueError:
                header = None
        if case.format == "jwt":
            if not isinstance(header, dict):
                raise BenchError(f"{self.label}: the access token is not a JWT: {token[:40]}...")
            if header.get("alg") != case.alg:
                raise BenchError(f"{self.label}: the JWT is signed with {header.get('alg')}, not {case.alg}")
            return f"JWT {json.dumps(header, separators=(',', ':'))}, {len(token)} chars"
        if isinstance(header, dict) and "alg" in header:
            raise BenchError(f"{self.label}: asked for opaque tokens, got a JWT ({header})")
        return f"opaque, {len(token)} chars"


class CCServer(Server):
    kind = "ccserver"

    def __init__(
        self,
        label: str,
        workdir: Path,
        case: Case,
        store_url: str,
        workers: int = 1,
        client_cache_seconds: float | None = None,
        encryption_key_file: Path | None = None,
        access_log: bool = True,
        settings: dict[str, dict[str, Any]] | None = None,
        tracing_endpoint: str | None = None,
    ) -> None:
        super().__init__(label, workdir)
        #: [tracing] endpoint (--tracing): every span exported there
        self.tracing_endpoint = tracing_endpoint
        self.case = case
        self.store_url = store_url
        self.workers = workers
        #: None: ccserver's default ([store] client_cache_seconds not written)
        self.client_cache_seconds = client_cache_seconds
        #: None: ccserver's default, next to the SQLite file or in the
        #: server's folder; servers that share a store must share this file
        self.encryption_key_file = encryption_key_file
        self.master_token = secrets.token_urlsafe(32)
        #: ccserver's own default is on, and so is the bench's headline;
        #: node-oidc-provider logs nothing per request (--access-log)
        self.access_log = access_log
        #: more configuration: table ("" for the top level) -> key -> value
        self.settings = settings or {}

    @property
    def config_path(self) -> Path:
        return self.workdir / "ccserver.toml"

    def configuration(self) -> str:
        """
        The server's ccserver.toml.
        """
        # the access log goes to standard output, a file here, as it would
        # go to a file or to journald in production (--access-log)
        tables: dict[str, dict[str, Any]] = {
            "": {"access_log": self.access_log},
            "tokens": {"signing_alg": self.case.alg},
        }
        if self.workers != 1:
            tables[""]["workers"] = self.workers
        if self.case.format != "jwt":
            tables["tokens"]["format"] = self.case.format
        if self.client_cache_seconds is not None:
            tables.setdefault("store", {})["client_cache_seconds"] = float(self.client_cache_seconds)
        if self.encryption_key_file is not None:
            tables.setdefault("keys", {})["encryption_key_file"] = str(self.encryption_key_file)
        if self.tracing_endpoint is not None:
            tables["tracing"] = {"endpoint": self.tracing_endpoint, "sampling": 1.0}
        for table, values in self.settings.items():
            tables.setdefault(table, {}).update(values)
        return toml_text(tables)

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.config_path
        config.write_text(self.configuration())
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        env.pop("CCSERVER_MASTER_TOKEN", None)
        argv = [
            sys.executable,
            "-m",
            "twisted",
            "ccserver",
            "--config",
            str(config),
            "--store",
            self.store_url,
            "--listen",
            f"tcp:port={self.port}:interface=127.0.0.1",
            "--issuer",
            self.base,
            "--master-token",
            self.master_token,
        ]
        return argv, env, self.workdir

    def start(self) -> None:
        super().start()
        try:
            self.basic = basic(*self.register_client())
        except BenchError:
            self.stop()
            raise

    def register_client(self) -> tuple[str, str]:
        """
        Register one client with C{POST /client-reg}: its id and secret.
        """
        status, body = http(
            "POST",
            self.base + "/client-reg",
            json.dumps(REGISTRATION).encode(),
            {"Authorization": "Bearer " + self.master_token, "Content-Type": "application/json"},
        )
        if status != 201:
            raise BenchError(f"{self.label}: registration answered {status}: {body[:300]!r}")
        client = json.loads(body)
        return str(client["client_id"]), str(client["client_secret"])


class Peer(Server):
    kind = "node-oidc-provider"
    introspection_path = "/token/introspection"

    def __init__(self, label: str, workdir: Path, peer_dir: Path, case: Case, workers: int = 1) -> None:
        super().__init__(label, workdir)
        self.peer_dir = peer_dir
        self.case = case
        #: more than 1: a node:cluster of this many workers on one port
        self.workers = workers
        self.client_id = "bench-" + secrets.token_hex(4)
        self.client_secret = secrets.token_urlsafe(32)
        self.basic = basic(self.client_id, self.client_secret)

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        env = dict(os.environ, NODE_ENV="production")
        argv = [
            "node",
            str(self.peer_dir / "provider.mjs"),
            "--port",
            str(self.port),
            "--alg",
            self.case.alg,
            "--format",
            self.case.format,
            # --name=value: a secret may start with "-", which node's
            # parseArgs would take for an option
            f"--client-id={self.client_id}",
            f"--client-secret={self.client_secret}",
            f"--workers={self.workers}",
        ]
        return argv, env, self.peer_dir

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        super().start()
        # a cluster answers as soon as its first worker listens: wait for
        # the primary's "ready", once all of them do
        deadline = time.monotonic() + START_TIMEOUT
        while not self.log_path.read_text(errors="replace").startswith("ready"):
            if not self.alive():
                raise BenchError(f"{self.label} exited after starting; see {self.err_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{self.label}: not every worker listened within {START_TIMEOUT} s")
            time.sleep(0.05)



class Floor(Server):
    """
    The HTTP floor (bench/floor.py): ccserver's HTTP layer on twisted.web
    answering constants, no OAuth work.  Its token answer is a constant
    too; any Basic credentials do.
    """

    kind = "floor"

    def __init__(self, label: str, workdir: Path) -> None:
        super().__init__(label, workdir)
        self.basic = basic("floor", "floor")

    def command(self) -> tuple[list[str], dict[str, str], Path]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
        return [sys.executable, "-m", "bench.floor", "--port", str(self.port)], env, self.workdir
