"""
Wait for a real process or server to reach a state by polling with a
deadline: never by sleeping a fixed time, which is too long on a quiet
machine and too short on a loaded one.

One rule, two faces: L{wait_until} blocks (for a test that drives real
processes from the test runner's thread), L{eventually} waits on a clock
(for a test running under the reactor, which must keep turning).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

#: How long a real process or server may take to reach a state.  Generous:
#: a loaded CI machine (load average 20 on 2 cores) is slow, and waiting by
#: polling costs a quiet one nothing.
DEADLINE = 60.0

#: How often a state is asked for, by default.
INTERVAL = 0.02

T = TypeVar("T")


class NotYet(Exception):
    """
    Raised by a predicate for "not yet, and here is why": the message is
    kept for the error raised at the deadline.
    """


class Deadline:
    """
    The rule both faces share: what ends a wait, and when it has lasted
    too long.
    """

    def __init__(
        self,
        timeout: float,
        what: str,
        tolerate: tuple[type[BaseException], ...],
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.what = what
        self.now = now
        self.ends = now() + timeout
        self.not_yet: tuple[type[BaseException], ...] = (NotYet, *tolerate)
        #: the last reason it was not over yet
        self.last: BaseException | None = None

    def done(self, outcome: object) -> bool:
        """
        Whether C{outcome} (a predicate's value, or the exception it
        raised) ends the wait: a true value does; an exception of
        C{not_yet} is kept as the reason to wait on; any other is raised.

        @raise AssertionError: the wait is not over, and the deadline has
            passed: naming C{what} and the last reason.
        """
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, self.not_yet):
                raise outcome
            self.last = outcome
        elif outcome:
            return True
        if self.now() >= self.ends:
            raise AssertionError(
                f"{self.what} did not happen within {self.timeout:g} s"
                + (f" (last: {self.last!r})" if self.last is not None else "")
            )
        return False


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEADLINE,
    interval: float = INTERVAL,
    *,
    what: str = "the condition",
    tolerate: tuple[type[BaseException], ...] = (),
) -> T:
    """
    Call C{predicate} every C{interval} seconds until it returns a true
    value, and return that value.

    An exception in C{tolerate} (or L{NotYet}) counts as "not yet"; any
    other ends the wait at once.

    @raise AssertionError: at C{timeout} seconds, naming C{what} and the
        last tolerated error.
    """
    deadline = Deadline(timeout, what, tolerate)
    while True:
        outcome: T | BaseException
        try:
            outcome = predicate()
        except BaseException as e:
            outcome = e
        if deadline.done(outcome):
            return cast(T, outcome)
        time.sleep(interval)


async def eventually(
    predicate: Callable[[], T | Awaitable[T]],
    clock: IReactorTime,
    timeout: float = DEADLINE,
    interval: float = INTERVAL,
    *,
    what: str = "the condition",
    tolerate: tuple[type[BaseException], ...] = (),
) -> T:
    """
    L{wait_until} for a test under the reactor: C{predicate} may return
    an awaitable (a store's Deferred), and the wait between two calls is
    on C{clock}, so the reactor turns meanwhile; so is the deadline.
    """
    deadline = Deadline(timeout, what, tolerate, clock.seconds)
    while True:
        outcome: T | Awaitable[T] | BaseException
        try:
            outcome = predicate()
            if isinstance(outcome, Awaitable):
                outcome = await outcome
        except BaseException as e:
            outcome = e
        if deadline.done(outcome):
            return cast(T, outcome)
        await deferLater(clock, interval, lambda: None)
