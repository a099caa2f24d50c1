"""
L{ccserver.stores.groupcommit}: writes that arrive while a batch is being
committed share the next transaction, and each one's Deferred fires only
once its own batch is committed.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ccserver.stores.groupcommit import GroupCommit


class FakeDatabase:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.commits: list[Deferred[None]] = []

    def write(self, items: list[int]) -> Deferred[None]:
        self.batches.append(list(items))
        d: Deferred[None] = Deferred()
        self.commits.append(d)
        return d


class GroupCommitTests(SynchronousTestCase):
    def test_idle_write_goes_at_once(self) -> None:
        """
        The first write of an idle store is not held back.
        """
        db = FakeDatabase()
        group = GroupCommit(db.write)
        d = group.add(1)
        self.assertEqual(db.batches, [[1]])
        self.assertNoResult(d)
        db.commits[0].callback(None)
        self.assertIsNone(self.successResultOf(d))

    def test_writes_during_commit_share_one_batch(self) -> None:
        """
        Writes that arrive while a batch commits go together in the next
        one, and none fires before its own batch is committed.
        """
        db = FakeDatabase()
        group = GroupCommit(db.write)
        first = group.add(0)
        waiting = [group.add(i) for i in range(1, 6)]
        self.assertEqual(db.batches, [[0]])
        db.commits[0].callback(None)
        self.successResultOf(first)
        self.assertEqual(db.batches, [[0], [1, 2, 3, 4, 5]])
        for d in waiting:
            self.assertNoResult(d)
        db.commits[1].callback(None)
        for d in waiting:
            self.assertIsNone(self.successResultOf(d))

    def test_failed_batch_fails_each_write(self) -> None:
        """
        A batch that fails to commit fails every write in it, and only
        those; the next batch goes on.
        """
        db = FakeDatabase()
        group = GroupCommit(db.write)
        first = group.add(0)
        second, third = group.add(1), group.add(2)
        db.commits[0].callback(None)
        later = group.add(3)
        db.commits[1].errback(RuntimeError("disk full"))
        self.successResultOf(first)
        for d in (second, third):
            self.failureResultOf(d, RuntimeError)
        self.assertEqual(db.batches[-1], [3])
        db.commits[2].callback(None)
        self.successResultOf(later)

    def test_raising_writer(self) -> None:
        """
        A writer that raises instead of returning a Deferred fails its
        batch the same way.
        """

        def write(items: list[int]) -> Deferred[None]:
            raise ValueError("bad row")

        d = GroupCommit(write).add(1)
        self.failureResultOf(d, ValueError)

    def test_concurrency_and_max_batch(self) -> None:
        """
        At most C{concurrency} batches are in flight, each of at most
        C{max_batch} writes.
        """
        db = FakeDatabase()
        group = GroupCommit(db.write, concurrency=2, max_batch=3)
        ds = [group.add(i) for i in range(9)]
        self.assertEqual(db.batches, [[0], [1]])
        db.commits[0].callback(None)
        self.assertEqual(db.batches, [[0], [1], [2, 3, 4]])
        db.commits[1].callback(None)
        self.assertEqual(db.batches[-1], [5, 6, 7])
        db.commits[2].callback(None)
        db.commits[3].callback(None)
        self.assertEqual(db.batches[-1], [8])
        db.commits[4].callback(None)
        for d in ds:
            self.successResultOf(d)

    def test_synchronous_writer(self) -> None:
        """
        A writer whose Deferred has already fired (a memory store) still
        answers every write, in order.
        """
        seen: list[list[int]] = []

        def write(items: list[int]) -> Deferred[None]:
            seen.append(items)
            return succeed(None)

        group = GroupCommit(write)
        for i in range(3):
            self.successResultOf(group.add(i))
        self.assertEqual(seen, [[0], [1], [2]])

    def test_bounds(self) -> None:
        with self.assertRaises(ValueError):
            GroupCommit(FakeDatabase().write, concurrency=0)


class HoldTests(SynchronousTestCase):
    """
    Under load, a commit waits up to C{hold} for its batch to fill.
    """

    def loaded(self) -> tuple[FakeDatabase, GroupCommit[int], Clock]:
        """
        A group whose last batch held 5 items, just committed.
        """
        db, clock = FakeDatabase(), Clock()
        group = GroupCommit(db.write, clock=clock, hold=0.002)
        group.add(0)
        for i in range(1, 6):
            group.add(i)
        db.commits[0].callback(None)
        db.commits[1].callback(None)
        self.assertEqual(db.batches, [[0], [1, 2, 3, 4, 5]])
        return db, group, clock

    def test_waits_for_as_many_as_the_last_batch(self) -> None:
        """
        After a batch of 5, the next commit waits until 5 are waiting, and
        goes at once then.
        """
        db, group, clock = self.loaded()
        ds = [group.add(i) for i in range(10, 14)]
        self.assertEqual(len(db.batches), 2)
        ds.append(group.add(14))
        self.assertEqual(db.batches[2], [10, 11, 12, 13, 14])
        db.commits[2].callback(None)
        for d in ds:
            self.assertIsNone(self.successResultOf(d))
        # and waits again for the next: one timer, no more
        self.assertEqual(len(clock.getDelayedCalls()), 1)

    def test_waits_no_longer_than_hold(self) -> None:
        """
        Fewer than that: the commit goes when the hold is over.
        """
        db, group, clock = self.loaded()
        d = group.add(10)
        clock.advance(0.0019)
        self.assertEqual(len(db.batches), 2)
        clock.advance(0.0001)
        self.assertEqual(db.batches[2], [10])
        db.commits[2].callback(None)
        self.assertIsNone(self.successResultOf(d))

    def test_nothing_comes(self) -> None:
        """
        If nothing comes during the hold, the next write goes at once.
        """
        db, group, clock = self.loaded()
        clock.advance(0.002)
        group.add(10)
        self.assertEqual(db.batches[2], [10])

    def test_light_load_never_waits(self) -> None:
        """
        After batches of fewer than HOLD_AFTER items, nothing waits.
        """
        db, clock = FakeDatabase(), Clock()
        group = GroupCommit(db.write, clock=clock, hold=0.002)
        group.add(0)
        group.add(1)
        group.add(2)
        db.commits[0].callback(None)
        db.commits[1].callback(None)
        group.add(3)
        self.assertEqual(db.batches, [[0], [1, 2], [3]])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_not_after_a_failure(self) -> None:
        """
        A failed batch frees the store for the next at once.
        """
        db, clock = FakeDatabase(), Clock()
        group = GroupCommit(db.write, clock=clock, hold=0.002)
        group.add(0)
        failed = [group.add(i) for i in range(1, 6)]
        db.commits[0].callback(None)
        db.commits[1].errback(RuntimeError("down"))
        for d in failed:
            self.failureResultOf(d, RuntimeError)
        group.add(10)
        self.assertEqual(db.batches[2], [10])

    def test_stop_ends_the_wait(self) -> None:
        """
        stop() ends a wait at once: what waited goes, and no timer is left.
        """
        db, group, clock = self.loaded()
        group.add(10)
        group.stop()
        self.assertEqual(db.batches[2], [10])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_hold_needs_a_clock(self) -> None:
        with self.assertRaises(ValueError):
            GroupCommit(FakeDatabase().write, hold=0.002)
