"""
A per-process cache of client records in front of a store, so that a known
client costs no store round trip per token.

A record (or the knowledge that there is none) is served for at most
C{seconds}; writes through this process take effect here at once, and
writes through other processes within C{seconds}.

Memory: expired records are dropped as new ones come in, so the cache
holds about the clients seen in the last C{seconds}, and never more than
C{max_entries} (what a record costs: bench/README.md, "Measurements behind
design choices").
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from ccserver.interfaces import IClientStore
from ccserver.model import Client


@implementer(IClientStore)
class CachingClientStore:
    def __init__(
        self,
        store: IClientStore,
        now: Callable[[], float],
        seconds: float,
        max_entries: int = 100_000,
    ) -> None:
        self._store = store
        self._now = now
        self._seconds = seconds
        self._max_entries = max_entries
        self._entries: dict[str, tuple[float, Client | None]] = {}
        # Counts writes through this process, so that a read which raced a
        # write does not cache what the write replaced.
        self._writes = 0

    def get_client(self, client_id: str) -> Deferred[Client | None]:
        entry = self._entries.get(client_id)
        if entry is not None and entry[0] > self._now():
            return succeed(entry[1])
        d = self._store.get_client(client_id)
        if self._seconds > 0:
            d.addCallback(self._remember, client_id, self._now() + self._seconds, self._writes)
        return d

    def __len__(self) -> int:
        """
        The records cached now, expired ones not yet dropped included.
        """
        return len(self._entries)

    def _remember(
        self, client: Client | None, client_id: str, until: float, writes: int
    ) -> Client | None:
        if writes != self._writes:
            return client
        entries = self._entries
        entries.pop(client_id, None)
        # Insertion order is age order, and every record is kept as long,
        # so the expired ones are at the front: drop a few of them with
        # each new one (two keep up; a few more catch up after a burst).
        now = self._now()
        for _ in range(4):
            oldest = next(iter(entries), None)
            if oldest is None or entries[oldest][0] > now:
                break
            del entries[oldest]
        if len(entries) >= self._max_entries:
            del entries[next(iter(entries))]
        entries[client_id] = (until, client)
        return client

    def forget(self, client_id: str) -> None:
        self._writes += 1
        self._entries.pop(client_id, None)

    def add_client(self, client: Client) -> Deferred[None]:
        self.forget(client.client_id)
        return self._store.add_client(client)

    def replace_client(self, client: Client) -> Deferred[bool]:
        self.forget(client.client_id)
        d = self._store.replace_client(client)
        d.addBoth(self._forget_after, client.client_id)
        return d

    def list_clients(self, cursor: str, count: int) -> Deferred[tuple[list[Client], str]]:
        # A listing is for the operator: always from the store, never cached.
        return self._store.list_clients(cursor, count)

    def delete_client(
        self, client_id: str, issued_before: int, mark_expires_at: int
    ) -> Deferred[bool]:
        self.forget(client_id)
        d = self._store.delete_client(client_id, issued_before, mark_expires_at)
        d.addBoth(self._forget_after, client_id)
        return d

    def _forget_after(self, result: object, client_id: str) -> object:
        self.forget(client_id)
        return result
