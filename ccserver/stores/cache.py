"""
A per-process cache of client records in front of a store, so that a known
client costs no store round trip per token.

A record (or the knowledge that there is none) is served for at most
C{seconds}; writes through this process take effect here at once, and
writes through other processes within C{seconds}.  The same holds for the
clients bound to a workload identity (L{IClientStore.clients_bound_to}):
a workload's token then costs no round trip either.

Memory: expired records are dropped as new ones come in, so the cache
holds about the clients seen in the last C{seconds}, and never more than
C{max_entries} (what a record costs: bench/README.md, "Measurements behind
design choices").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
        #: (issuer, subject) -> (until, the ids of the clients bound to it)
        self._bound: dict[tuple[str, str], tuple[float, list[str]]] = {}

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
        if writes == self._writes:
            self._keep(self._entries, client_id, (until, client))
        return client

    def _keep(
        self, entries: dict[Any, tuple[float, Any]], key: Any, entry: tuple[float, Any]
    ) -> None:
        """
        Keep C{entry} (until when, what) under C{key}.  Insertion order is
        age order, and every entry is kept as long, so the expired ones are
        at the front: drop a few of them with each new one (two keep up; a
        few more catch up after a burst), and the oldest when full.
        """
        entries.pop(key, None)
        now = self._now()
        for _ in range(4):
            oldest = next(iter(entries), None)
            if oldest is None or entries[oldest][0] > now:
                break
            del entries[oldest]
        if len(entries) >= self._max_entries:
            del entries[next(iter(entries))]
        entries[key] = entry

    def clients_bound_to(self, issuer: str, subject: str) -> Deferred[list[str]]:
        key = (issuer, subject)
        entry = self._bound.get(key)
        if entry is not None and entry[0] > self._now():
            return succeed(list(entry[1]))
        d = self._store.clients_bound_to(issuer, subject)
        if self._seconds > 0:
            d.addCallback(self._remember_bound, key, self._now() + self._seconds, self._writes)
        return d

    def _remember_bound(
        self, ids: list[str], key: tuple[str, str], until: float, writes: int
    ) -> list[str]:
        if writes == self._writes:
            self._keep(self._bound, key, (until, list(ids)))
        return ids

    def forget(self, client_id: str) -> None:
        self._writes += 1
        self._entries.pop(client_id, None)
        # any client's write may change whose bindings are whose: rare
        # enough to forget them all
        self._bound.clear()

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
