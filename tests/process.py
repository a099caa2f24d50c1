"""
Run a real C{twist ccserver} process (or the C{ccserver} command) for
end-to-end tests: the one base every process test uses.

Waiting for a process to reach a state is the deadline poll of
L{ccserver.testing.polling}, re-exported here (L{wait_until}, L{NotYet},
L{DEADLINE}) for the tests that drive processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import requests

from ccserver.testing.polling import DEADLINE, NotYet, wait_until
from ccserver.testing.servers import free_port

__all__ = [
    "DEADLINE",
    "REPO",
    "MARKER",
    "CCServerProcess",
    "NotYet",
    "UnmarkedProcessTest",
    "audit",
    "require_marker",
    "runs_ccserver",
    "free_port",
    "print_figure",
    "child_env",
    "run_admin",
    "run_ccserver",
    "run_python",
    "wait_until",
]

REPO = Path(__file__).resolve().parent.parent

#: The pytest marker of the tests that run ccserver in a process of its own
#: (C{twist ccserver}, the C{ccserver} command, Python code that imports
#: ccserver): C{python3 -m pytest -m process} runs them alone, C{-m "not
#: process"} the others.  tests/conftest.py fails a test that starts such a
#: process without it.
MARKER = "process"

#: Python code that imports ccserver.
_IMPORTS_CCSERVER = re.compile(r"\b(?:from|import)\s+ccserver\b")

#: A shell command that runs ccserver.
_SHELL_RUNS_CCSERVER = re.compile(
    r"(?:^|[\s;&|(])(?:twist\s+ccserver\b|ccserver(?:\s|$)|-m\s+(?:twisted\s+ccserver|ccserver)\b)"
)


def runs_ccserver(argv: Sequence[object]) -> bool:
    """
    Whether a child process with this command line runs ccserver's code:
    C{twist ccserver}, C{python -m twisted ccserver}, the C{ccserver}
    command, C{python -m ccserver.admin}, C{python -c "from ccserver..."},
    or a shell command that runs one of those.
    """
    args = _strings(argv)
    if not args:
        return False
    program, rest = Path(args[0]).name, args[1:]
    if program == "ccserver":
        return True
    if program == "twist":
        return "ccserver" in rest
    if program.startswith("python"):
        for option, value in zip(rest, rest[1:], strict=False):
            if option == "-m":
                if value == "twisted":
                    return "ccserver" in rest
                return value == "ccserver" or value.startswith("ccserver.")
            if option == "-c":
                return bool(_IMPORTS_CCSERVER.search(value))
        return False
    if program in ("sh", "bash", "dash"):
        return any(_SHELL_RUNS_CCSERVER.search(arg) for arg in rest)
    return False


def _strings(argv: Sequence[object]) -> list[str]:
    return [os.fsdecode(arg) for arg in argv if isinstance(arg, (str, bytes, os.PathLike))]


class UnmarkedProcessTest(Exception):
    """
    A test started ccserver in a process of its own without the L{MARKER}.
    """


#: The test running now in this process (set by tests/conftest.py), or
#: None between tests.
running: pytest.Item | None = None


def require_marker(what: str) -> None:
    """
    Check that the running test carries the L{MARKER}, since it is about
    to start C{what}, a process that runs ccserver.

    @raise UnmarkedProcessTest: it does not.
    """
    if running is not None and running.get_closest_marker(MARKER) is None:
        raise UnmarkedProcessTest(
            f"{running.nodeid} starts ccserver in a process of its own ({what[:200]}) "
            f"without the '{MARKER}' marker: add 'pytestmark = pytest.mark.{MARKER}' "
            f"to its module, or '@pytest.mark.{MARKER}' to its class (docs/development.md)"
        )


def audit(event: str, args: tuple[Any, ...]) -> None:
    """
    A L{sys.addaudithook} hook: L{require_marker} for every child process
    whose command line L{runs_ccserver}.
    """
    if event != "subprocess.Popen" or running is None:
        return
    argv = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
    if runs_ccserver(argv):
        require_marker(" ".join(_strings(argv)))


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
        self.env = child_env(env)
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


def child_env(
    env: dict[str, str] | None = None, pythonpath: Sequence[Path | str] = ()
) -> dict[str, str]:
    """
    The environment of a child process that runs ccserver's code: this
    one's, with the worktree first on C{sys.path} (then C{pythonpath}: a
    third party's plugins), without a master token from the developer's
    shell, then C{env}.
    """
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *map(str, pythonpath)]
        + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH") else [])
    )
    environment.pop("CCSERVER_MASTER_TOKEN", None)
    environment.update(env or {})
    return environment


def run_python(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = DEADLINE,
    pythonpath: Sequence[Path | str] = (),
) -> subprocess.CompletedProcess[str]:
    """
    Run this Python with these arguments over the worktree's ccserver
    (L{child_env}) and return how it ended, its output as text.
    """
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=child_env(env, pythonpath),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_ccserver(
    *args: str, cwd: Path, timeout: float = DEADLINE, pythonpath: Sequence[Path | str] = ()
) -> subprocess.CompletedProcess[str]:
    """
    Run C{twist ccserver} with these arguments and return how it ended
    (for start-up errors, which end the process before it listens).

    @param pythonpath: folders to put on C{sys.path} after the worktree's
        (third-party plugins).
    """
    return run_python(
        "-m", "twisted", "ccserver", *args, cwd=cwd, timeout=timeout, pythonpath=pythonpath
    )


def run_admin(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = DEADLINE,
) -> subprocess.CompletedProcess[str]:
    """
    Run the C{ccserver} command with these arguments (and C{stdin} as its
    standard input) and return how it ended.
    """
    return run_python(
        "-m", "ccserver.admin", *args, cwd=cwd, env=env, stdin=stdin, timeout=timeout
    )
