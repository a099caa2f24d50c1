"""
pytest's hooks for the whole suite.

The real Redis and PostgreSQL servers of L{ccserver.testing.servers} are started
lazily, once per test process (once per xdist worker), by the first test
that asks for one; here they are offered as session fixtures to pytest-style
tests, and stopped when the session ends.

C{store_url} and C{ccserver_process} run a test module once per kind of
store (L{servers.STORE_KINDS}): a clean store, and a real C{twist ccserver}
over it.

The run leaves no process behind.  Each run has its own temporary folder
(C{TMPDIR}), under which the throwaway servers keep their data and the
C{twist} processes run, and every process a test starts inherits a mark
in its environment (L{RUN_MARK_ENV}): at the end of the run, any C{twist},
C{redis-server} or C{postgres} process working in that folder or carrying
that mark (Redis and PostgreSQL write their process titles over their
environment, hence both) fails the run, named, and is killed.  The
figures tests measured (L{tests.process.print_figure}) are printed at the
end.

The tests are of two kinds: those that run ccserver in a process of its
own carry the C{process} marker (L{tests.process.MARKER}), the others run
in the test process.  A test that starts a ccserver process without the
marker fails at that moment (L{tests.process.audit}, a L{sys.addaudithook}
hook on C{subprocess.Popen}), so C{-m "not process"} never starts one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from ccserver.testing import servers
from ccserver.testing.polling import wait_until
from tests import process
from tests.process import FIGURES_ENV, CCServerProcess

#: The mark of this run's processes, in their environment.
RUN_MARK_ENV = "CCSERVER_TEST_RUN"

#: Seconds the processes of a test that has just ended may take to go.
LEFTOVER_GRACE = 10.0

# Property tests: random in development, the same examples every run in CI
# (where a failure must be reproducible from its log alone).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    yield servers.redis_server()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.PostgresServer]:
    yield servers.postgres_server()


@pytest.fixture(scope="module", params=servers.STORE_KINDS)
def store_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """
    The URL of a clean store, once for each kind; kept for the module.

    Redis is a server of its own ("apps"), since the contract suite
    flushes the shared one before each of its tests.
    """
    cleanups: list[tuple[Callable[..., object], tuple[object, ...]]] = []
    url = servers.clean_store_url(
        request.param,
        lambda function, *args: cleanups.append((function, args)),
        redis_name="apps",
        redis_db=1,
    )
    yield url
    for function, args in reversed(cleanups):
        function(*args)


@pytest.fixture(scope="module")
def ccserver_process(
    store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CCServerProcess]:
    """
    A real C{twist ccserver} over C{store_url}, for the module.
    """
    folder = tmp_path_factory.mktemp("ccserver")
    # The modules on this server send hundreds of deliberately wrong
    # credentials from one address: a budget they never reach, so that the
    # counting runs on every store without refusing them (the limits have
    # their own tests, tests/test_limits.py).
    config = folder / "limits.toml"
    config.write_text(
        "[limits]\nfailed_auth_per_minute = 1000000\nfailed_auth_per_client_per_minute = 1000000\n"
    )
    server = CCServerProcess(
        folder,
        "--master-token",
        secrets.token_urlsafe(32),
        "--config",
        str(config),
        store=store_url,
    )
    server.start()
    yield server
    server.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    # setUpClass and module fixtures run inside the protocol of the first
    # test that needs them, so a process they start is that test's
    process.running = item
    try:
        yield
    finally:
        process.running = None


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(process.audit)
    # Set once, by the first process of the run (under xdist the controller,
    # before it starts its workers, which inherit them).
    if RUN_MARK_ENV not in os.environ:
        os.environ[RUN_MARK_ENV] = secrets.token_hex(8)
        folder = tempfile.mkdtemp(prefix=f"ccserver-run-{os.environ[RUN_MARK_ENV]}-")
        # PostgreSQL runs as its own user (ccserver/testing/servers.py): it must reach
        # its folder in here
        os.chmod(folder, 0o711)
        os.environ["TMPDIR"] = folder
        os.environ[FIGURES_ENV] = str(Path(folder, "figures.txt"))
    tempfile.tempdir = os.environ["TMPDIR"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    servers.stop_all()
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller checks, once they have all ended
    leftovers = _wait_for_leftovers(os.environ[RUN_MARK_ENV], Path(os.environ["TMPDIR"]))
    if leftovers:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"  pid {pid}: {command}" for pid, command in leftovers]
        message = "processes started by the tests outlived them (now killed):\n" + "\n".join(lines)
        if reporter is not None:
            reporter.ensure_newline()
            reporter.write_line(message, red=True)
        for pid, _ in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if hasattr(terminalreporter.config, "workerinput"):
        return
    path = Path(os.environ.get(FIGURES_ENV, ""))
    if path.is_file():
        terminalreporter.section("figures measured")
        for line in path.read_text(encoding="utf-8").splitlines():
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["TMPDIR"], ignore_errors=True)


def _wait_for_leftovers(mark: str, folder: Path) -> list[tuple[int, str]]:
    """
    This run's server processes still running after L{LEFTOVER_GRACE}
    seconds (those that are ending go meanwhile).
    """
    try:
        wait_until(lambda: not _servers_of_the_run(mark, folder), LEFTOVER_GRACE, 0.05)
    except AssertionError:
        return _servers_of_the_run(mark, folder)
    return []


def _servers_of_the_run(mark: str, folder: Path) -> list[tuple[int, str]]:
    """
    The C{twist}, C{redis-server} and C{postgres} processes (zombies aside)
    working in C{folder} or carrying this run's mark in their environment.
    """
    wanted = f"{RUN_MARK_ENV}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            name = (entry / "comm").read_text().strip()
            twist = "twisted" in argv or Path(argv[0]).name == "twist"
            if not (twist or name.startswith(("redis", "postgres"))):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            ours = wanted in (entry / "environ").read_bytes().split(b"\0") or (
                folder in Path(os.readlink(entry / "cwd")).parents
            )
        except OSError:
            continue
        if ours and state != "Z":
            found.append((int(entry.name), " ".join(argv).strip()))
    return found
