"""
The purge's pace: expired rows deleted a batch at a time, with a rest
after each batch, so that a purge of millions of rows takes turns with the
requests' own writes instead of holding the store for its whole length.

When every token of a busy hour expires at once, the purge meets millions
of rows.  Deleted a batch a transaction as fast as the store goes, the
purge is a second writer that never stops: on SQLite, whose write lock is
the whole database's, each batch holds back every token written meanwhile;
on PostgreSQL the deletes take a core of a machine the requests share.
Resting after each batch (PostgreSQL: seven times as long as the batch
took, L{SHARE}, an eighth of the store's time at most; SQLite: as long as
it took, L{SQLITE_SHARE}, with batches of fifty rows) bounds what a
purge costs the requests' latency; the purge takes two to eight times as
long (bench/README.md, the growth section's purge row).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

#: The largest share of the store's time a purge takes: after a batch that
#: took t seconds it rests t * (1 - SHARE) / SHARE.  With half, PostgreSQL
#: purging ten million rows at once on the cores its requests shared
#: raised their p99 well past twice its quiet value (bench/README.md).
#: An eighth since its batches go to their rows by C{ctid}, at half the
#: database's CPU a row (L{ccserver.stores.sqlstatements.purge_batch}):
#: the pace a quarter gave by primary key, at half the CPU a second
#: (bench/README.md, run I).
SHARE = 0.125
#: SQLite's share: its batches are small (each holds the write lock
#: briefly), and at a quarter a purge of a million rows took minutes
#: longer than the growth section's purge row allows (bench/README.md).
SQLITE_SHARE = 0.5
#: The longest rest after one batch, in seconds (a store slowed by other
#: load does not make the purge wait minutes).
LONGEST_REST = 1.0


def rest_after(took: float, share: float = SHARE) -> float:
    """
    How long to rest after a batch that took C{took} seconds, so that the
    purge takes at most C{share} of the time.
    """
    return min(max(took, 0.0) * (1 - share) / share, LONGEST_REST)


def share_for(dialect: str) -> float:
    """
    The largest share of the store's time a purge takes on C{dialect}'s
    database.
    """
    return SQLITE_SHARE if dialect == "sqlite" else SHARE


async def rest(clock: IReactorTime, took: float, share: float = SHARE) -> None:
    """
    Rest after a batch that took C{took} seconds, as L{rest_after} says.
    """
    await deferLater(clock, rest_after(took, share), lambda: None)


async def in_turns(
    batch: Callable[[], Awaitable[int]], size: int, clock: IReactorTime, share: float = SHARE
) -> int:
    """
    Run C{batch} (delete at most C{size} rows; return how many went) until
    a batch deletes fewer than C{size}, resting after each full batch as
    L{rest_after} says (for C{share}): how many rows went in all.
    """
    count = 0
    while True:
        started = clock.seconds()
        deleted = await batch()
        count += deleted
        if deleted < size:
            return count
        await rest(clock, clock.seconds() - started, share)
