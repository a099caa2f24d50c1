"""
L{ccserver.coroutines.settle}: a coroutine run to its end as
C{ensureDeferred} runs it, with no Deferred of its own when it never waits.
"""

from __future__ import annotations

import gc
from contextvars import ContextVar
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ccserver.coroutines import settle

_VAR: ContextVar[str] = ContextVar("test_coroutines", default="outside")


class Outcomes:
    def __init__(self) -> None:
        self.seen: list[tuple[object, tuple[Any, ...]]] = []

    def __call__(self, outcome: object, *args: Any) -> None:
        self.seen.append((outcome, args))


class SettleTests(SynchronousTestCase):
    def test_a_coroutine_that_never_waits_ends_at_once(self) -> None:
        async def call() -> int:
            first = await succeed(1)
            return first + await succeed(2)

        done = Outcomes()
        settle(call(), done, "request")
        self.assertEqual(done.seen, [(3, ("request",))])

    def test_what_it_raises_is_a_failure(self) -> None:
        async def call() -> int:
            await succeed(None)
            raise ValueError("no")

        done = Outcomes()
        settle(call(), done)
        [(outcome, _)] = done.seen
        assert isinstance(outcome, Failure)
        self.assertIsInstance(outcome.value, ValueError)

    def test_it_waits_for_a_deferred_and_goes_on(self) -> None:
        first: Deferred[int] = Deferred()
        second: Deferred[int] = Deferred()

        async def call() -> int:
            return await first + await succeed(10) + await second

        done = Outcomes()
        settle(call(), done)
        self.assertEqual(done.seen, [])
        first.callback(1)
        self.assertEqual(done.seen, [])
        second.callback(100)
        self.assertEqual(done.seen, [(111, ())])

    def test_a_failure_it_awaits_is_thrown_into_it(self) -> None:
        waiting: list[Deferred[int]] = [Deferred()]

        async def call() -> str:
            try:
                await waiting[0]
            except KeyError as error:
                return f"caught {error}"
            return "not caught"

        done = Outcomes()
        settle(call(), done)
        waiting[0].errback(KeyError("k"))
        self.assertEqual(done.seen, [("caught 'k'", ())])
        # the failure was handled: nothing is logged when it is collected
        waiting.clear()
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_a_failure_it_does_not_catch_is_the_outcome(self) -> None:
        waiting: list[Deferred[int]] = [Deferred()]

        async def call() -> int:
            return await waiting[0]

        done = Outcomes()
        settle(call(), done)
        waiting[0].errback(KeyError("k"))
        [(outcome, _)] = done.seen
        assert isinstance(outcome, Failure)
        self.assertIsInstance(outcome.value, KeyError)
        waiting.clear()
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_every_step_runs_in_one_copy_of_the_context(self) -> None:
        """
        A C{ContextVar} set before a wait can be reset after it (a token
        of one context is refused by another), and the caller's context
        never sees it.
        """
        waiting: Deferred[None] = Deferred()
        seen: list[str] = []

        async def call() -> str:
            token = _VAR.set("inside")
            await waiting
            seen.append(_VAR.get())
            _VAR.reset(token)
            return _VAR.get()

        done = Outcomes()
        settle(call(), done)
        self.assertEqual(_VAR.get(), "outside")
        waiting.callback(None)
        self.assertEqual(seen, ["inside"])
        self.assertEqual(done.seen, [("outside", ())])
        self.assertEqual(_VAR.get(), "outside")

    def test_it_starts_in_the_callers_context(self) -> None:
        async def call() -> str:
            return _VAR.get()

        token = _VAR.set("caller")
        try:
            done = Outcomes()
            settle(call(), done)
        finally:
            _VAR.reset(token)
        self.assertEqual(done.seen, [("caller", ())])
