"""
The purge's pace (L{ccserver.stores.purging}): batches until one is not
full, a rest after each full batch as long as it took, on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ccserver.stores import purging, sql
from ccserver.stores.purging import LONGEST_REST, in_turns, rest_after


class RestTests(SynchronousTestCase):
    def test_seven_times_the_batch(self) -> None:
        """
        An eighth of the store's time at most: a batch of 0.1 s, then a
        rest of 0.7 s.
        """
        self.assertAlmostEqual(rest_after(0.1), 0.7)
        self.assertEqual(rest_after(0.0), 0.0)

    def test_bounded(self) -> None:
        self.assertEqual(rest_after(30.0), LONGEST_REST)

    def test_clock_going_back(self) -> None:
        self.assertEqual(rest_after(-1.0), 0.0)

    def test_share(self) -> None:
        self.assertAlmostEqual(rest_after(0.3, share=0.75), 0.1)


class InTurnsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.batches: list[Deferred[int]] = []

    def batch(self) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.batches.append(d)
        return d

    def test_rests_after_each_full_batch(self) -> None:
        """
        A batch that took 0.1 s is followed by 0.7 s of rest, not by the
        next batch at once; the purge ends with the first batch that is not
        full, and says how many rows went.
        """
        purged = ensureDeferred(in_turns(self.batch, 10, self.clock))
        self.assertEqual(len(self.batches), 1)
        self.clock.advance(0.1)
        self.batches[0].callback(10)
        self.assertEqual(len(self.batches), 1)  # resting
        self.clock.advance(0.69)
        self.assertEqual(len(self.batches), 1)
        self.clock.advance(0.02)
        self.assertEqual(len(self.batches), 2)
        self.clock.advance(0.05)
        self.batches[1].callback(10)
        self.clock.advance(0.34)
        self.assertEqual(len(self.batches), 2)
        self.clock.advance(0.02)
        self.assertEqual(len(self.batches), 3)
        self.batches[2].callback(3)
        self.assertEqual(self.successResultOf(purged), 23)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_nothing_to_purge(self) -> None:
        """
        An empty first batch ends the purge at once, with no rest.
        """
        purged = ensureDeferred(in_turns(self.batch, 10, self.clock))
        self.batches[0].callback(0)
        self.assertEqual(self.successResultOf(purged), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failure_ends_it(self) -> None:
        purged = ensureDeferred(in_turns(self.batch, 10, self.clock))
        self.batches[0].callback(10)
        self.clock.advance(0)
        self.batches[1].errback(RuntimeError("store gone"))
        self.failureResultOf(purged, RuntimeError)


class ShareTests(SynchronousTestCase):
    def test_sqlite_half(self) -> None:
        """
        SQLite's purge takes up to half the store's time (its batches are
        small; at a quarter a million rows took longer than the growth
        section's purge row allows), PostgreSQL's an eighth (its batches by
        C{ctid} cost half what they did by primary key).
        """
        self.assertEqual(purging.share_for("sqlite"), 0.5)
        self.assertEqual(purging.share_for("postgresql"), 0.125)
        self.assertAlmostEqual(rest_after(0.2, purging.share_for("sqlite")), 0.2)

    def test_in_turns_share(self) -> None:
        """
        L{in_turns} rests after each batch as its share says.
        """
        clock = Clock()
        calls: list[float] = []

        def batch() -> Deferred[int]:
            calls.append(clock.seconds())
            clock.advance(0.1)  # the batch takes a tenth of a second
            return succeed(10 if len(calls) < 3 else 0)

        purged = ensureDeferred(in_turns(batch, 10, clock, 0.5))
        clock.pump([0.01] * 100)
        self.assertEqual(self.successResultOf(purged), 20)
        self.assertEqual([round(t, 2) for t in calls], [0.0, 0.2, 0.4])


class BatchSizeTests(SynchronousTestCase):
    def test_sqlite_smaller(self) -> None:
        """
        SQLite's write lock is the whole database's: its batches are 50
        rows (on a million rows a batch of 1,000 held the lock a median
        24.5 ms, one of 250 2.6 ms with a tenth of them over 16 ms, one of
        50 0.7 ms; with 250 the purge row's worst p99 was 4.06x the quiet
        one, with 50 1.64x: bench/README.md, run H).
        """
        self.assertEqual(sql.purge_batch("postgresql"), 5_000)
        self.assertEqual(sql.purge_batch("sqlite"), 50)
        self.assertEqual(sql.purge_batch("sqlite"), sql.SQLITE_PURGE_BATCH)
