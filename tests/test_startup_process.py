"""
Failures to start, in real C{twist ccserver} processes, on every kind of
store: a busy port, an unreachable store, a bad key-encryption key, a bad
configuration or command line each end the process with one line on stderr,
no traceback, and a non-zero status: 2 for a mistake found before anything
is made, 1 for a failure once the server runs.  None may leave a process
running: L{run_ccserver} fails the test if it does not end.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from cryptography.fernet import Fernet

from ccserver.testing.servers import STORE_KINDS, clean_store_url
from tests.process import free_port, run_admin, run_ccserver

pytestmark = pytest.mark.process

#: Nothing here should come near the deadline: each ends at once, or after
#: [store] timeout (1 s).
TIMEOUT = 60.0


#: The stores that keep signing keys across starts.
PERSISTENT = tuple(kind for kind in STORE_KINDS if kind != "memory")


def _clean_store(kind: str) -> Iterator[str]:
    cleanups: list[tuple[Callable[..., object], tuple[object, ...]]] = []
    yield clean_store_url(kind, lambda function, *args: cleanups.append((function, args)))
    for function, args in reversed(cleanups):
        function(*args)


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """
    A clean store of each kind.
    """
    yield from _clean_store(request.param)


@pytest.fixture(params=PERSISTENT)
def persistent_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """
    A clean store of each kind that keeps what it holds across starts.
    """
    yield from _clean_store(request.param)


def start(folder: Path, *args: str) -> CompletedProcess[str]:
    folder.mkdir(exist_ok=True)
    config = folder / "timeout.toml"
    if not config.exists():
        config.write_text("[store]\ntimeout = 1\n")
    return run_ccserver(
        "--config", str(config), "--master-token", "m" * 32, *args, cwd=folder, timeout=TIMEOUT
    )


def assert_one_line(result: CompletedProcess[str], status: int, pattern: str) -> None:
    assert result.returncode == status, result
    assert re.fullmatch(f"ccserver: {pattern}\n", result.stderr), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_busy_port(tmp_path: Path, store: str) -> None:
    """
    A port another process listens on: status 1, on every store, the
    memory store too (it opens at once, before twist runs the reactor,
    so the listener fails before the reactor can be stopped: the process
    used to run on, listening on nothing).
    """
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = start(tmp_path, "--store", store, "--listen", f"tcp:{port}:interface=127.0.0.1")
    assert_one_line(
        result,
        1,
        re.escape(f"could not start: Couldn't listen on 127.0.0.1:{port}: ")
        + r"\[Errno 98\] Address already in use\.",
    )


def test_bad_config(tmp_path: Path, store: str) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "timeout.toml").write_text("[store]\ntimeout = 1\n[tokens]\nlifetime = -1\n")
    result = start(tmp_path, "--store", store, "--listen", f"tcp:{free_port()}")
    assert_one_line(result, 2, r"\[tokens\] lifetime: .*")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["timeout.toml"]


def test_bad_key_file(tmp_path: Path, store: str) -> None:
    """
    A key-encryption key file that holds no key: status 2, nothing made.
    """
    key_file = tmp_path / "kek"
    key_file.write_text("not a key\n")
    (tmp_path / "timeout.toml").write_text(
        f'[store]\ntimeout = 1\n[keys]\nencryption_key_file = "{key_file}"\n'
    )
    result = start(tmp_path, "--store", store, "--listen", f"tcp:{free_port()}")
    assert_one_line(
        result, 2, re.escape(f"[keys] encryption_key_file: '{key_file}' holds no Fernet key")
    )


def test_key_of_another_server(tmp_path: Path, persistent_store: str) -> None:
    """
    A store whose signing keys another key-encryption key encrypted (a
    second instance given a key of its own): status 1, once the store is
    open.  (A memory store starts empty: no key of another server.)
    """
    store = persistent_store
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "kek").write_bytes(Fernet.generate_key())
        (folder / "timeout.toml").write_text(
            f'[store]\ntimeout = 1\n[keys]\nencryption_key_file = "{folder / "kek"}"\n'
        )
    admin = run_admin("--config", str(first / "timeout.toml"), "--store", store, "keys", "rotate", cwd=first)
    assert admin.returncode == 0, admin
    result = start(second, "--store", store, "--listen", f"tcp:{free_port()}")
    assert_one_line(result, 1, "could not start: .*key-encryption key.*")


#: A store that cannot be reached or opened, of each kind but memory, and
#: what the line says; {port} is a port nothing listens on.
UNREACHABLE = {
    "redis": ("redis://127.0.0.1:{port}/0", r"redis://127\.0\.0\.1:\d+/0: no answer within 1 s"),
    "postgresql": (
        "postgresql://ccserver@127.0.0.1:{port}/ccserver",
        r"postgresql://ccserver@127\.0\.0\.1:\d+/ccserver: OperationalError: .*Connection refused.*",
    ),
    "sqlite": ("sqlite:///not-a-database.db", "file is not a database"),
}


@pytest.mark.parametrize("kind", PERSISTENT)
def test_unreachable_store(tmp_path: Path, kind: str) -> None:
    """
    A store that cannot be reached or opened: status 1, once [store]
    timeout has passed at most.  (A memory store cannot be unreachable.)
    """
    url, message = UNREACHABLE[kind]
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "not-a-database.db").write_text("these are not the pages of a database\n")
    result = start(tmp_path, "--store", url.format(port=free_port()), "--listen", f"tcp:{free_port()}")
    assert_one_line(result, 1, f"could not start: {message}")


def test_unknown_option(tmp_path: Path) -> None:
    """
    One line and a pointer to --help, not twist's whole usage.
    """
    result = run_ccserver("--nosuch", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "ccserver: option --nosuch not recognized; twist ccserver --help lists the options\n"
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--workers", "two"], "--workers: 'two' is not a whole number"),
        (["--inherit-fd", "x"], "--inherit-fd: 'x' is not a file descriptor number"),
        (["--listen"], "option --listen requires argument"),
    ],
)
def test_bad_option_value(tmp_path: Path, option: list[str], message: str) -> None:
    result = run_ccserver(*option, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"ccserver: {message}; twist ccserver --help lists the options\n"
