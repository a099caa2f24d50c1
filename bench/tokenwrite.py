"""
What one batch of opaque tokens costs to write on PostgreSQL, timed apart
from everything else: a throwaway PostgreSQL server as the bench runs it,
ccserver's schema, then C{--statements} batches of each size of C{--sizes}
written with the store's statement (one JSON parameter,
L{ccserver.stores.sqlstatements.upsert_json}) and, for comparison, the
C{VALUES} list it replaced (a parameter a value,
L{ccserver.stores.sqlstatements.upsert_many}).  It prints, a statement,
the client's CPU (this process: psycopg and the parameters' making, as the
token writer's thread spends it) and the backend's (from C{/proc}, so the
server must run on this machine).

  python3 -m bench.tokenwrite --sizes 4,17,64 --statements 1000
"""

from __future__ import annotations

import argparse
import functools
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.inprocess import user_cpu
from bench.purgebatch import backend_seconds, prepare
from ccserver.model import TokenRecord
from ccserver.stores.codec import TOKENS
from ccserver.stores.sqldialects import postgresql_dialect
from ccserver.stores.sqlstatements import json_rows, upsert_json, upsert_many
from ccserver.testing.servers import PostgresServer

#: A statement and its parameters for a batch of rows (L{KINDS}).
Form = Callable[[list[tuple[Any, ...]]], tuple[str, tuple[Any, ...]]]


_DIALECT = postgresql_dialect()


@functools.cache
def _values_statement(size: int) -> str:
    # made once a size, as the store does
    return _DIALECT.translate(upsert_many("access_tokens", TOKENS, size))


def _values(rows: list[tuple[Any, ...]]) -> tuple[str, tuple[Any, ...]]:
    return _values_statement(len(rows)), tuple(value for row in rows for value in row)


_JSON = _DIALECT.translate(upsert_json("access_tokens", TOKENS))


def _json(rows: list[tuple[Any, ...]]) -> tuple[str, tuple[Any, ...]]:
    return _JSON, (json_rows(TOKENS, rows),)


KINDS: dict[str, Form] = {"one JSON parameter (the store's)": _json, "VALUES list (before)": _values}


def batch(size: int, now: int) -> list[tuple[Any, ...]]:
    """
    C{size} rows of new opaque tokens, as the store writes them.
    """
    return [
        tuple(TOKENS.to_row(TokenRecord(
            token_digest=secrets.token_hex(38),
            client_id=secrets.token_urlsafe(16),
            scope=frozenset({"read"}),
            audience=("https://api.example",),
            issued_at=now,
            expires_at=now + 3600,
            jti=secrets.token_urlsafe(16),
            claims={},
        )))
        for _ in range(size)
    ]


def measure(url: str, form: Form, size: int, statements: int) -> tuple[float, float]:
    """
    (client, backend) CPU seconds a statement of C{form}, C{size} rows,
    over C{statements} of them after a tenth as many to warm up (psycopg
    prepares a statement run five times).
    """
    import psycopg  # noqa: PLC0415 (the PostgreSQL extra)

    now = int(time.time())
    warm = max(5, statements // 10)
    batches = [batch(size, now) for _ in range(warm + statements)]
    with psycopg.connect(url, autocommit=True) as connection:
        row: Any = connection.execute(b"SELECT pg_backend_pid()").fetchone()
        pid = int(row[0])
        for rows in batches[:warm]:
            connection.execute(*form(rows))
        client, backend = user_cpu(), backend_seconds(pid)
        for rows in batches[warm:]:
            connection.execute(*form(rows))
        return (user_cpu() - client) / statements, (backend_seconds(pid) - backend) / statements


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4,17,64", help="rows a statement, comma-separated")
    parser.add_argument("--statements", type=int, default=1000)
    args = parser.parse_args(argv)
    server = PostgresServer()
    server.start()
    try:
        url = server.url_for(server.create_database())
        prepare(url)
        for size in (int(s) for s in args.sizes.split(",")):
            for label, form in KINDS.items():
                client, backend = measure(url, form, size, args.statements)
                print(f"{size:4d} rows, {label}: client {client * 1e6:7.1f} µs, "
                      f"backend {backend * 1e6:7.1f} µs a statement", flush=True)
    finally:
        server.remove()


if __name__ == "__main__":
    main()
