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

The first write of an idle store goes at once (no added latency), and
those that arrive meanwhile wait for it and go together, so the batches
grow with the load by themselves (the tokens of a commit's few
milliseconds).

Under load, a commit may wait a little (C{hold}) for its batch to fill:
when the batch just committed held several items and fewer are waiting,
the first few to come would otherwise take a whole commit (and a sync,
which all the processes on one SQLite file take in turn) while the answers
just sent bring their clients back with the next requests.  The wait ends
as soon as as many are waiting as the last batch held, and never lasts
longer than C{hold}; a lightly loaded store, whose batches hold fewer
than L{HOLD_AFTER} items, never waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")

#: A commit waits for its batch to fill (C{hold}) only after a batch of at
#: least this many items: under load, not for a client now and then.
HOLD_AFTER = 4


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
        clock: IReactorTime | None = None,
        hold: float = 0.0,
    ) -> None:
        if concurrency < 1 or max_batch < 1:
            raise ValueError("concurrency and max_batch are 1 or more")
        if hold and clock is None:
            raise ValueError("a hold needs a clock")
        self._write = write
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._clock = clock
        self._hold = hold
        self._pending: list[tuple[T, Deferred[None]]] = []
        self._in_flight = 0
        #: while a commit waits for its batch to fill: the items it waits
        #: for, and the call that ends the wait
        self._wanted = 0
        self._holding: IDelayedCall | None = None

    def add(self, item: T) -> Deferred[None]:
        """
        A Deferred that fires once C{item} is committed (or fails as its
        batch did).
        """
        d: Deferred[None] = Deferred()
        self._pending.append((item, d))
        if self._holding is not None:
            if len(self._pending) >= self._wanted:
                self._holding.cancel()
                self._release()
        elif self._in_flight < self._concurrency:
            self._flush()
        return d

    def stop(self) -> None:
        """
        End a wait for a batch to fill at once, so that no timer outlives
        the store.
        """
        if self._holding is not None:
            self._holding.cancel()
            self._release()

    def _release(self) -> None:
        self._holding = None
        self._in_flight -= 1
        while self._pending and self._in_flight < self._concurrency:
            self._flush()

    def _flush(self) -> None:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._in_flight += 1
        written = maybeDeferred(self._write, [item for item, _ in batch])
        written.addBoth(self._committed, batch)

    def _committed(self, result: object, batch: list[tuple[T, Deferred[None]]]) -> None:
        # the next batch goes to the database before this one's answers
        # are written, so that the two overlap
        wanted = len(batch)
        if (
            self._hold
            and self._holding is None
            and wanted >= HOLD_AFTER
            and len(self._pending) < wanted
            and not isinstance(result, Failure)
        ):
            # the slot stays taken while the commit waits for its batch
            assert self._clock is not None
            self._wanted = wanted
            self._holding = self._clock.callLater(self._hold, self._release)
        else:
            self._in_flight -= 1
            while self._pending and self._in_flight < self._concurrency:
                self._flush()
        for _, d in batch:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)
