"""
Throwaway Redis and PostgreSQL servers for the store sections: the same
real servers the tests use (L{ccserver.testing.servers}), on free loopback
ports in temporary folders, installed with apt-get if
their binaries are missing, and removed at the end of each section.

Their CPU, with their descendants' (PostgreSQL backends each lead a
session of their own), is counted as the bench's, not as other load.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.errors import NotAvailable
from bench.install import apt_install
from bench.output import say
from ccserver.testing import servers

#: The Debian package of each server, installed if its binary is missing.
PACKAGES = {"redis": "redis-server", "postgresql": "postgresql-15"}


def start(store: str, support: list[servers.ThrowawayServer], store_groups: dict[str, int]) -> str:
    """
    Start a throwaway C{store} ("redis" or "postgresql") server; return the
    URL of a fresh database on it.  The server joins C{support} (for
    L{remove}) and its first process C{store_groups} (for the CPU count).

    @raise NotAvailable: it cannot be installed or started.
    """
    kinds: dict[str, Callable[[], servers.ThrowawayServer]] = {
        "redis": servers.RedisServer,
        "postgresql": servers.PostgresServer,
    }
    if store not in kinds:
        raise SystemExit(f"bench: unknown store {store!r}")
    try:
        try:
            server = kinds[store]()
        except servers.ServerBinaryMissing:
            apt_install(PACKAGES[store])
            server = kinds[store]()
        support.append(server)
        server.start()
        if server.pid is not None:
            store_groups[f"{store} {server.port}"] = server.pid
        if isinstance(server, servers.RedisServer):
            return server.url_for(0)
        assert isinstance(server, servers.PostgresServer)
        return server.url_for(server.create_database())
    except (servers.ServerBinaryMissing, RuntimeError, OSError) as e:
        raise NotAvailable(f"could not start a throwaway {store} server: {e}") from None


def remove(support: list[servers.ThrowawayServer], store_groups: dict[str, int]) -> None:
    """
    Remove every server of C{support}, and stop counting its CPU.
    """
    for server in support:
        for name, pid in list(store_groups.items()):
            if server.pid == pid:
                del store_groups[name]
        try:
            server.remove()
        except Exception as e:  # a clean-up problem must not hide the figures
            say(f"  (could not remove {server}: {e})")
