"""
Group lookup: many small reads of the same kind, one store round trip for
all those that arrive while the previous ones are under way; the read-side
twin of L{ccserver.stores.groupcommit}.

Introspection (RFC 7662) reads an opaque token's record for each request,
and a JWT's deny-list entry and its client's revocation mark.  One round
trip a lookup costs the SQL stores a hand-off to a pool thread and a query
each, and the Redis store a command each: more than the lookup itself.
Here the first lookup of an idle store goes at once (no added latency, no
timer), and those that arrive while C{concurrency} batches are in flight
wait and go together as the next batch, so the batches grow with the load
by themselves.

Freshness, the rule that revocation rests on: a lookup never joins a batch
already sent.  A lookup waits for the next batch, which is sent only after
the lookup was asked for; so a lookup that starts after a revocation or a
deletion has been committed always reads after it, and never gets an
answer read before the write.  Nothing is kept once a batch is answered:
this is no cache.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from itertools import islice
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class GroupLookup(Generic[K, V]):
    """
    Looks keys up with C{fetch(keys)}, at most C{concurrency} batches at
    once (the store's connections that may read at the same time) and at
    most C{max_batch} distinct keys a batch.

    @ivar fetch: reads a batch of distinct keys in one round trip; its
        Deferred fires with a mapping of the keys found to their values (a
        key missing from it is answered with None), or fails, and then
        every lookup of the batch fails with the same failure.
    @ivar batches: how many batches were sent (each one round trip).
    @ivar lookups: how many lookups were asked for.
    """

    def __init__(
        self,
        fetch: Callable[[list[K]], Deferred[Mapping[K, V]]],
        *,
        concurrency: int = 1,
        max_batch: int = 100,
    ) -> None:
        if concurrency < 1 or max_batch < 1:
            raise ValueError("concurrency and max_batch are 1 or more")
        self._fetch = fetch
        self._concurrency = concurrency
        self._max_batch = max_batch
        #: the keys not sent yet, in the order first asked, each with its
        #: lookups' Deferreds (a key asked twice is fetched once)
        self._pending: dict[K, list[Deferred[V | None]]] = {}
        self._in_flight = 0
        self.batches = 0
        self.lookups = 0

    def get(self, key: K) -> Deferred[V | None]:
        """
        A Deferred that fires with C{key}'s value, None if the store has
        none, read by a batch sent after this call.
        """
        self.lookups += 1
        d: Deferred[V | None] = Deferred()
        waiting = self._pending.get(key)
        if waiting is None:
            self._pending[key] = [d]
        else:
            waiting.append(d)
        if self._in_flight < self._concurrency:
            self._send()
        return d

    def _send(self) -> None:
        pending = self._pending
        if len(pending) <= self._max_batch:
            batch, self._pending = pending, {}
        else:
            batch = {key: pending.pop(key) for key in list(islice(pending, self._max_batch))}
        self._in_flight += 1
        self.batches += 1
        fetched = maybeDeferred(self._fetch, list(batch))
        fetched.addBoth(self._answer, batch)

    def _answer(self, result: Mapping[K, V] | Failure, batch: dict[K, list[Deferred[V | None]]]) -> None:
        # the next batch goes to the store before this one's answers are
        # given, so that the two overlap
        self._in_flight -= 1
        while self._pending and self._in_flight < self._concurrency:
            self._send()
        if isinstance(result, Failure):
            for waiting in batch.values():
                for d in waiting:
                    d.errback(result)
            return
        for key, waiting in batch.items():
            value = result.get(key)
            for d in waiting:
                d.callback(value)
