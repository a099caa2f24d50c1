"""
pytest's hooks for the whole suite.

The real Redis and PostgreSQL servers of L{tests.servers} are started
lazily, once per test process (once per xdist worker), by the first test
that asks for one; here they are offered as session fixtures to pytest-style
tests, and stopped when the session ends.

C{store_url} and C{ccserver_process} run a test module once per kind of
store (L{servers.STORE_KINDS}): a clean store, and a real C{twist ccserver}
over it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings

from tests import servers
from tests.process import CCServerProcess

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
    process = CCServerProcess(
        folder,
        "--master-token",
        secrets.token_urlsafe(32),
        "--config",
        str(config),
        store=store_url,
    )
    process.start()
    yield process
    process.kill()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    servers.stop_all()
