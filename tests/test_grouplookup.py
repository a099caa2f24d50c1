"""
L{ccserver.stores.grouplookup}: lookups that arrive while batches are in
flight go together in the next one, each answered with its own value, and
none is ever answered by a batch sent before it was asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ccserver.errors import StoreUnavailable
from ccserver.stores.grouplookup import GroupLookup


class FakeStore:
    """
    A store whose batches are answered by hand: C{answer(n)} answers the
    n-th batch from what C{values} holds then.
    """

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.batches: list[list[str]] = []
        self.replies: list[Deferred[Mapping[str, int]]] = []

    def fetch(self, keys: list[str]) -> Deferred[Mapping[str, int]]:
        self.batches.append(list(keys))
        d: Deferred[Mapping[str, int]] = Deferred()
        self.replies.append(d)
        return d

    def answer(self, n: int, read: Mapping[str, int] | None = None) -> None:
        """
        Answer batch C{n} with C{read} (what the store read when the batch
        reached it), by default what it holds now.
        """
        values = self.values if read is None else read
        self.replies[n].callback({k: values[k] for k in self.batches[n] if k in values})


class GroupLookupTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.store = FakeStore()
        self.store.values = {f"k{i}": i for i in range(10)}

    def test_idle_lookup_goes_at_once(self) -> None:
        """
        The first lookup of an idle store is sent at once, alone.
        """
        group = GroupLookup(self.store.fetch)
        d = group.get("k1")
        self.assertEqual(self.store.batches, [["k1"]])
        self.assertNoResult(d)
        self.store.answer(0)
        self.assertEqual(self.successResultOf(d), 1)

    def test_missing_key_is_none(self) -> None:
        group = GroupLookup(self.store.fetch)
        d = group.get("nothing")
        self.store.answer(0)
        self.assertIsNone(self.successResultOf(d))

    def test_lookups_during_a_batch_go_together(self) -> None:
        """
        Lookups asked for while a batch is in flight wait and go together
        in one next batch, each answered with its own value.
        """
        group = GroupLookup(self.store.fetch)
        first = group.get("k0")
        waiting = {k: group.get(k) for k in ("k1", "k2", "k3", "unknown")}
        self.assertEqual(self.store.batches, [["k0"]])
        for d in waiting.values():
            self.assertNoResult(d)
        self.store.answer(0)
        self.assertEqual(self.successResultOf(first), 0)
        self.assertEqual(self.store.batches[1], ["k1", "k2", "k3", "unknown"])
        for d in waiting.values():
            self.assertNoResult(d)
        self.store.answer(1)
        self.assertEqual(
            {k: self.successResultOf(d) for k, d in waiting.items()},
            {"k1": 1, "k2": 2, "k3": 3, "unknown": None},
        )
        self.assertEqual((group.lookups, group.batches), (5, 2))

    def test_duplicates_asked_once(self) -> None:
        """
        A key asked for several times in one batch is fetched once, and
        each lookup gets the answer.
        """
        group = GroupLookup(self.store.fetch)
        group.get("k0")
        twice = [group.get("k4"), group.get("k5"), group.get("k4"), group.get("k4")]
        self.store.answer(0)
        self.assertEqual(self.store.batches[1], ["k4", "k5"])
        self.store.answer(1)
        self.assertEqual([self.successResultOf(d) for d in twice], [4, 5, 4, 4])

    def test_max_batch_splits(self) -> None:
        """
        At most C{max_batch} distinct keys a batch; the rest go in the
        batches after it, in the order asked.
        """
        group = GroupLookup(self.store.fetch, max_batch=3)
        group.get("k0")
        waiting = [group.get(f"k{i}") for i in range(1, 8)] + [group.get("k1")]
        self.store.answer(0)
        self.assertEqual(self.store.batches[1:], [["k1", "k2", "k3"]])
        self.store.answer(1)
        self.assertEqual(self.store.batches[2:], [["k4", "k5", "k6"]])
        self.store.answer(2)
        self.assertEqual(self.store.batches[3:], [["k7"]])
        self.store.answer(3)
        self.assertEqual([self.successResultOf(d) for d in waiting], [1, 2, 3, 4, 5, 6, 7, 1])

    def test_concurrency(self) -> None:
        """
        Up to C{concurrency} batches are in flight at once, each of the
        first ones sent as it comes; then lookups wait for a free slot.
        """
        group = GroupLookup(self.store.fetch, concurrency=2)
        a, b = group.get("k0"), group.get("k1")
        self.assertEqual(self.store.batches, [["k0"], ["k1"]])
        c, d = group.get("k2"), group.get("k3")
        self.assertEqual(len(self.store.batches), 2)
        self.store.answer(1)
        self.assertEqual(self.successResultOf(b), 1)
        self.assertEqual(self.store.batches[2:], [["k2", "k3"]])
        e = group.get("k4")
        self.assertEqual(len(self.store.batches), 3)
        self.store.answer(0)
        self.assertEqual(self.store.batches[3:], [["k4"]])
        self.store.answer(2)
        self.store.answer(3)
        self.assertEqual([self.successResultOf(x) for x in (a, c, d, e)], [0, 2, 3, 4])

    def test_failed_batch_fails_each_lookup(self) -> None:
        """
        A batch that fails fails each of its lookups with the same failure
        (a store that is unavailable stays so for each request), and the
        batch waiting behind it still goes.
        """
        group = GroupLookup(self.store.fetch)
        first = group.get("k0")
        waiting = [group.get("k1"), group.get("k2"), group.get("k1")]
        self.store.replies[0].errback(StoreUnavailable("gone"))
        self.failureResultOf(first, StoreUnavailable)
        self.assertEqual(self.store.batches[1], ["k1", "k2"])
        later = group.get("k3")
        self.store.replies[1].errback(StoreUnavailable("still gone"))
        failures = [self.failureResultOf(d, StoreUnavailable) for d in waiting]
        self.assertEqual({str(f.value) for f in failures}, {"still gone"})
        self.assertEqual(self.store.batches[2], ["k3"])
        self.store.answer(2)
        self.assertEqual(self.successResultOf(later), 3)

    def test_fetch_that_raises(self) -> None:
        """
        A fetch that raises instead of failing its Deferred fails its
        lookups the same way, and frees its slot.
        """

        def broken(keys: list[str]) -> Deferred[Mapping[str, int]]:
            raise StoreUnavailable("not open")

        group: GroupLookup[str, int] = GroupLookup(broken)
        self.failureResultOf(group.get("k0"), StoreUnavailable)
        self.failureResultOf(group.get("k1"), StoreUnavailable)
        self.assertEqual(group.batches, 2)

    def test_lookup_after_a_write_never_joins_a_batch_sent_before(self) -> None:
        """
        The revocation rule: a batch is sent, then a token is revoked
        (deleted), then a lookup of it starts.  The lookup is not answered
        by the batch already in flight, which may have read before the
        deletion, though it holds the same key, but by a batch sent after.
        """
        group = GroupLookup(self.store.fetch)
        before = group.get("k1")
        read_before = dict(self.store.values)
        del self.store.values["k1"]  # the deletion commits
        after = group.get("k1")
        self.assertEqual(self.store.batches, [["k1"]])
        # the batch in flight had read the token before the deletion
        self.store.answer(0, read_before)
        self.assertEqual(self.successResultOf(before), 1)
        self.assertNoResult(after)
        self.assertEqual(self.store.batches[1], ["k1"])
        self.store.answer(1)
        self.assertIsNone(self.successResultOf(after))

    def test_lookup_after_a_write_with_every_slot_busy(self) -> None:
        """
        The same with several batches in flight and one waiting: a lookup
        joins the batch that has not been sent yet, never one that has.
        """
        group = GroupLookup(self.store.fetch, concurrency=2)
        group.get("k1")
        group.get("k2")
        waiting = group.get("k3")
        read_before = dict(self.store.values)
        del self.store.values["k1"], self.store.values["k3"]
        after = [group.get("k1"), group.get("k3")]
        self.store.answer(0, read_before)
        self.assertEqual(self.store.batches[2], ["k3", "k1"])
        self.store.answer(1, read_before)
        self.store.answer(2)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual([self.successResultOf(d) for d in after], [None, None])

    def test_lookup_asked_while_answering(self) -> None:
        """
        A lookup asked for by a callback of an answer (the next request)
        goes in a batch of its own, sent after the answer was read.
        """
        group = GroupLookup(self.store.fetch)
        chained: list[Deferred[int | None]] = []
        group.get("k0").addCallback(lambda _: chained.append(group.get("k1")))
        self.store.answer(0)
        self.assertEqual(self.store.batches[1], ["k1"])
        self.store.answer(1)
        self.assertEqual(self.successResultOf(chained[0]), 1)

    def test_bad_sizes(self) -> None:
        with self.assertRaises(ValueError):
            GroupLookup(self.store.fetch, concurrency=0)
        with self.assertRaises(ValueError):
            GroupLookup(self.store.fetch, max_batch=0)

    def test_failure_is_the_batch_failure(self) -> None:
        """
        Each lookup of a failed batch gets the batch's own failure.
        """
        group = GroupLookup(self.store.fetch)
        group.get("k0")
        a, b = group.get("k1"), group.get("k2")
        self.store.answer(0)
        error = StoreUnavailable("timed out")
        self.store.replies[1].errback(Failure(error))
        self.assertIs(self.failureResultOf(a).value, error)
        self.assertIs(self.failureResultOf(b).value, error)
