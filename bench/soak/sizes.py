"""
How big the store is, and how many opaque-token records it holds, read
from outside the server: SQLite's files (and its rows, read-only),
PostgreSQL's C{pg_database_size} and C{pg_total_relation_size}, Redis's
C{INFO} (C{used_memory}) and C{DBSIZE} (through C{redis-cli}).

Each reader blocks (a file, a query, a process): the load calls them in
a thread.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import NotAvailable

#: The SQL stores' tables whose rows are counted (ccserver/stores/schema/).
TABLES = ("access_tokens", "clients", "used_once", "revoked_jtis", "revoked_clients", "auth_attempts",
          "auth_known_sources", "signing_keys")
#: The Redis store's opaque-token keys (ccserver/stores/redis.py).
REDIS_TOKEN_PATTERN = "ccserver:token:*"
TIMEOUT = 30


@dataclass(frozen=True)
class StoreSize:
    #: the store's size in bytes, as it measures it: the SQLite files, the
    #: PostgreSQL database, Redis's used_memory
    size: int
    #: opaque-token records held now (the live, and the expired ones the
    #: purge has not dropped yet); None if they cannot be counted
    tokens: int | None
    #: the figures behind them: each file, table, relation, INFO field
    detail: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"bytes": self.size, "tokens": self.tokens, "detail": self.detail}


def sqlite_size(path: Path) -> StoreSize:
    """
    The database file with its write-ahead log and shared-memory index,
    and its rows, read through a read-only connection.
    """
    detail = {}
    for suffix in ("", "-wal", "-shm"):
        try:
            detail["file" + suffix] = Path(str(path) + suffix).stat().st_size
        except FileNotFoundError:
            continue
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=TIMEOUT)
    try:
        rows = {f"rows {table}": connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in TABLES}
    finally:
        connection.close()
    return StoreSize(sum(detail.values()), rows["rows access_tokens"], {**detail, **rows})


def postgresql_size(url: str) -> StoreSize:
    """
    C{pg_database_size} of the store's database, C{pg_total_relation_size}
    of the token table (with its index and TOAST), and the rows.
    """
    import psycopg  # noqa: PLC0415 (bench/run's dependency check installs it)

    with psycopg.connect(url, autocommit=True, connect_timeout=TIMEOUT) as connection:
        database, tokens_relation = connection.execute(
            "SELECT pg_database_size(current_database()), pg_total_relation_size('access_tokens')"
        ).fetchone() or (0, 0)
        rows = {f"rows {table}": connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                for table in TABLES}
    return StoreSize(int(database), int(rows["rows access_tokens"]),
                     {"database": int(database), "relation access_tokens": int(tokens_relation), **rows})


def parse_info(text: str) -> dict[str, str]:
    """
    The C{field:value} lines of Redis's C{INFO} answer (sections and
    comments, C{# Memory}, left out).
    """
    fields = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and ":" in line:
            name, _, value = line.partition(":")
            fields[name] = value
    return fields


def parse_keyspace(value: str) -> dict[str, int]:
    """
    One database's line of C{INFO keyspace}: C{keys=12,expires=10,avg_ttl=5000}.
    """
    figures = {}
    for part in value.split(","):
        name, _, number = part.partition("=")
        if number.strip().isdigit():
            figures[name.strip()] = int(number)
    return figures


def redis_size(url: str, run: Callable[[list[str]], str] | None = None) -> StoreSize:
    """
    C{used_memory} (what Redis holds, the size), C{used_memory_rss}, the
    database's keys and keys with an expiry (C{INFO keyspace}), and the
    opaque-token keys (counted with C{SCAN}).
    """
    parsed = urllib.parse.urlsplit(url)
    db = (parsed.path or "/0").strip("/") or "0"
    base = ["-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 6379), "-n", db]
    if parsed.password:
        base += ["--no-auth-warning", "-a", urllib.parse.unquote(parsed.password)]
    run = run or _redis_cli
    info = parse_info(run([*base, "INFO", "memory"]) + "\n" + run([*base, "INFO", "keyspace"]))
    keyspace = parse_keyspace(info.get(f"db{db}", ""))
    tokens = len([line for line in run([*base, "--scan", "--pattern", REDIS_TOKEN_PATTERN])
                  .splitlines() if line.strip()])
    used = int(info["used_memory"])
    return StoreSize(used, tokens, {"used_memory": used, "used_memory_rss": int(info.get("used_memory_rss", 0)),
                                    "keys": keyspace.get("keys", 0), "keys with expiry": keyspace.get("expires", 0),
                                    "token keys": tokens})


def _redis_cli(arguments: list[str]) -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        raise NotAvailable("redis-cli is not installed (Debian's redis-tools, with redis-server)")
    result = subprocess.run([binary, *arguments], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    if result.returncode != 0:
        raise NotAvailable(f"redis-cli {' '.join(arguments[-2:])}: {result.stderr.strip()[:200]}")
    return result.stdout


def reader(store: str, url: str) -> Callable[[], StoreSize]:
    """
    The size reader of a store URL (C{sqlite:///PATH}, C{postgresql://...},
    C{redis://...}).
    """
    if store == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        return lambda: sqlite_size(path)
    if store == "postgresql":
        return lambda: postgresql_size(url)
    if store == "redis":
        return lambda: redis_size(url)
    raise ValueError(f"no size reader for {store!r}")
