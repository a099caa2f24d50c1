"""
Run a real C{twist ccserver} process for end-to-end tests, and wait for it
(or any real process or server) to reach a state by polling with a deadline:
never by sleeping a fixed time, which is too long on a quiet machine and too
short on a loaded one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import requests

REPO = Path(__file__).resolve().parent.parent

#: How long a real process may take to reach a state.  Generous: a loaded CI
#: machine (load average 20 on 2 cores) is slow, and waiting by polling costs
#: a quiet one nothing.
DEADLINE = 60.0

T = TypeVar("T")


#: The file that L{print_figure} adds its lines to, for the summary at the
#: end of the run (tests/conftest.py); set by the run.
FIGURES_ENV = "CCSERVER_TEST_FIGURES"


def print_figure(line: str) -> None:
    """
    Print a figure a test measured (a failover's length), and keep it for
    the summary that ends the run: measured, never asserted, as timings are.
    """
    print(line)
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as figures:
            figures.write(line + "\n")


class NotYet(Exception):
    """
    Raised by a L{wait_until} predicate for "not yet, and here is why": the
    message is kept for the error raised at the deadline.
    """


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEADLINE,
    interval: float = 0.02,
    *,
    what: str = "the condition",
    tolerate: tuple[type[BaseException], ...] = (),
) -> T:
    """
    Call C{predicate} every C{interval} seconds until it returns a true
    value, and return that value.

    An exception in C{tolerate} (or L{NotYet}) counts as "not yet".

    @raise AssertionError: at C{timeout} seconds, naming C{what} and the last
        tolerated error.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = predicate()
        except (NotYet, *tolerate) as e:
            last = e
        else:
            if result:
                return result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"{what} did not happen within {timeout:g} s"
                + (f" (last: {last!r})" if last is not None else "")
            )
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CCServerProcess:
    """
    A C{twist ccserver} child process listening on a free loopback port,
    run in C{folder}.
    """

    def __init__(
        self,
        folder: Path,
        *args: str,
        store: str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        issuer: str | None = None,
    ) -> None:
        """
        @param issuer: its issuer identifier; by default the plain
            listener's URL (L{url}).
        """
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.issuer = issuer or self.url
        self.args = list(args)
        if store is not None:
            self.args += ["--store", store]
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + ([self.env["PYTHONPATH"]] if self.env.get("PYTHONPATH") else [])
        )
        self.env.pop("CCSERVER_MASTER_TOKEN", None)
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.folder / f"ccserver-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "twisted",
            "--log-format=text",
            "ccserver",
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            "--issuer",
            self.issuer,
            *self.args,
        ]

    def start(self, timeout: float = DEADLINE) -> CCServerProcess:
        """
        Start the process and return once it answers HTTP.  Until
        C{timeout}, any failed request (refused, reset, or slow on a loaded
        machine) means "not ready yet"; the process ending means it never
        will be.
        """
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            self.command(), cwd=self.folder, env=self.env, stdout=self.log, stderr=subprocess.PIPE
        )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(
                    f"ccserver exited with {self.process.returncode}: {err}\n{self.read_log()}"
                )
            requests.get(self.url + "/jwks.json", timeout=5)
            return True

        try:
            wait_until(
                ready, timeout, 0.05, what="ccserver answering", tolerate=(requests.RequestException,)
            )
        except AssertionError as e:
            self.kill()
            raise RuntimeError(f"{e}:\n{self.read_log()}") from None
        return self

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def master_token(self) -> str:
        for i, arg in enumerate(self.args):
            if arg == "--master-token":
                return self.args[i + 1]
        return (self.folder / "ccserver.master-token").read_text().strip()

    def stop(self, timeout: float = DEADLINE) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.log.close()
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if hasattr(self, "log"):
            self.log.close()

    def register(self, **metadata: Any) -> dict[str, Any]:
        # the plain listener, whatever the issuer: the TLS one would ask
        # the caller to trust its certificate
        response = requests.post(
            self.url + "/client-reg",
            json=metadata,
            headers={"Authorization": f"Bearer {self.master_token}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def __enter__(self) -> CCServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def run_ccserver(
    *args: str, cwd: Path, timeout: float = DEADLINE, pythonpath: Sequence[Path] = ()
) -> subprocess.CompletedProcess[str]:
    """
    Run C{twist ccserver} with these arguments and return how it ended
    (for start-up errors, which end the process before it listens).

    @param pythonpath: folders to put on C{sys.path} after the worktree's
        (third-party plugins).
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, [REPO, *pythonpath])))
    env.pop("CCSERVER_MASTER_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "twisted", "ccserver", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
