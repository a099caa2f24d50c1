"""
Group commit: many small writes of the same kind, one transaction (and so
one sync to disk) for all those that arrive while the previous transaction
is being committed.

An opaque access token is one row in the store, and the token must be on
disk before its answer is sent (RFC 6749 §5.1 gives the client a token it
may use at once; a token answered and then lost to a crash would be refused
at introspection).  With one transaction per token, SQLite (WAL,
C{synchronous=FULL}) syncs once per token and the disk sets the rate: a
few thousand tokens a second at best, against ten thousand for JWTs (issue
14).  With a group commit, each write still fires its Deferred only after
the transaction that holds it has committed, so no answered token is ever
lost to a SIGKILL; the syncs are shared.

There is no timer: the first write of an idle store goes at once (no added
latency), and those that arrive meanwhile wait for it and go together, so
the batches grow with the load by themselves (the tokens of a commit's few
milliseconds).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """
    Writes items with C{write(items)}, at most C{concurrency} batches at
    once (the store's connections that may write at the same time) and at
    most C{max_batch} items a batch.

    @ivar write: writes a batch in one transaction; its Deferred fires once
        the transaction is committed, or fails, and then every item of the
        batch fails with it.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Deferred[None]],
        *,
        concurrency: int = 1,
        max_batch: int = 256,
    ) -> None:
        if concurrency < 1 or max_batch < 1:
            raise ValueError("concurrency and max_batch are 1 or more")
        self._write = write
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._pending: list[tuple[T, Deferred[None]]] = []
        self._in_flight = 0

    def add(self, item: T) -> Deferred[None]:
        """
        A Deferred that fires once C{item} is committed (or fails as its
        batch did).
        """
        d: Deferred[None] = Deferred()
        self._pending.append((item, d))
        if self._in_flight < self._concurrency:
            self._flush()
        return d

    def _flush(self) -> None:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._in_flight += 1
        written = maybeDeferred(self._write, [item for item, _ in batch])
        written.addBoth(self._committed, batch)

    def _committed(self, result: object, batch: list[tuple[T, Deferred[None]]]) -> None:
        self._in_flight -= 1
        # the next batch goes to the database before this one's answers
        # are written, so that the two overlap
        while self._pending and self._in_flight < self._concurrency:
            self._flush()
        for _, d in batch:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
