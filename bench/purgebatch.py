"""
What one batch of the purge costs PostgreSQL, timed apart from everything
else: a throwaway PostgreSQL server as the bench runs it, C{--rows} expired
tokens bulk-loaded as the growth section fills them (L{bench.populate}),
then deleted L{ccserver.stores.sql.PURGE_BATCH} a statement until none is
left, with the store's own statement (by C{ctid}) and, for comparison, the
statement by primary key it replaced; C{--rounds} of each, alternating.
It prints the CPU of the statement's backend a row (from C{/proc}, so the
server must run on this machine) and the batches' times.

  python3 -m bench.purgebatch --rows 2000000 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from bench import cpu, populate
from ccserver.stores.sql import PURGE_BATCH
from ccserver.stores.sqldialects import postgresql_dialect
from ccserver.stores.sqlmigrations import Schema, load_migrations
from ccserver.stores.sqlstatements import statements
from ccserver.testing.servers import PostgresServer

#: The statement each batch ran before the store's went by C{ctid}.
BY_PRIMARY_KEY = (
    "DELETE FROM access_tokens WHERE token_digest = ANY(ARRAY(SELECT token_digest "
    "FROM access_tokens WHERE expires_at < %s ORDER BY expires_at LIMIT %s))"
)


def backend_seconds(pid: int) -> float:
    """
    The CPU seconds (user + system) a backend process has used.
    """
    return cpu.process_ticks(Path(f"/proc/{pid}/stat").read_text()).ticks / cpu.CLK_TCK


def prepare(url: str) -> None:
    """
    ccserver's schema, as the store makes it.
    """
    import psycopg  # noqa: PLC0415 (the PostgreSQL extra)

    with psycopg.connect(url, autocommit=True) as connection:
        Schema(postgresql_dialect(), load_migrations(), url, 30.0).apply_all(connection.cursor())


def one_round(url: str, rows: int, statement: str) -> tuple[int, float, list[float]]:
    """
    Fill, then purge with C{statement}: (rows deleted, the backend's CPU
    seconds, each batch's seconds).
    """
    import psycopg  # noqa: PLC0415 (the PostgreSQL extra)

    now = int(time.time())
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(b"TRUNCATE access_tokens")
    populate.fill("postgresql", url, populate.Shape.of(rows, now - 10, "http://bench", "own", time.time()))
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(b"CHECKPOINT")
        row: Any = connection.execute(b"SELECT pg_backend_pid()").fetchone()
        pid = int(row[0])
        used_seconds, deleted = 0.0, 0
        batches: list[float] = []
        while True:
            before, started = backend_seconds(pid), time.perf_counter()
            count = connection.execute(statement.encode(), (now, PURGE_BATCH)).rowcount
            took, used = time.perf_counter() - started, backend_seconds(pid) - before
            if count == 0:
                return deleted, used_seconds, batches
            deleted += count
            used_seconds += used
            batches.append(took)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    store = statements(postgresql_dialect())["purge_tokens"]
    kinds = {"by ctid (the store's)": store, "by primary key (before)": BY_PRIMARY_KEY}
    server = PostgresServer()
    server.start()
    try:
        url = server.url_for(server.create_database())
        prepare(url)
        for round_ in range(args.rounds):
            for label, statement in kinds.items():
                deleted, seconds, batches = one_round(url, args.rows, statement)
                ordered = sorted(batches)
                print(f"round {round_ + 1} {label}: {deleted:,} rows in {len(batches)} batches; "
                      f"backend CPU {seconds:.2f} s ({seconds / max(1, deleted) * 1e6:.1f} µs a row); "
                      f"batch median {statistics.median(batches) * 1000:.1f} ms, "
                      f"90th percentile {ordered[int(len(ordered) * 0.9)] * 1000:.1f} ms", flush=True)
    finally:
        server.remove()


if __name__ == "__main__":
    main()
