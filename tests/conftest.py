"""
pytest's hooks for the whole suite.

The real Redis and PostgreSQL servers of L{tests.servers} are started
lazily, once per test process (once per xdist worker), by the first test
that asks for one; here they are offered as session fixtures to pytest-style
tests, and stopped when the session ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.RedisServer]:
    yield servers.redis_server()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.PostgresServer]:
    yield servers.postgres_server()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    servers.stop_all()
