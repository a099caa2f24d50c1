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
from typing import TypeVar

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
    The bookkeeping both faces share: when the wait ends, and the last
    reason it was not over yet.
    """

    def __init__(self, timeout: float, what: str) -> None:
        self.timeout = timeout
        self.what = what
        self.ends = time.monotonic() + timeout
        self.last: BaseException | None = None

    def passed(self) -> bool:
        return time.monotonic() >= self.ends

    def error(self) -> AssertionError:
        """
        The error to raise at the deadline, naming C{what} and the last
        tolerated error.
        """
        return AssertionError(
            f"{self.what} did not happen within {self.timeout:g} s"
            + (f" (last: {self.last!r})" if self.last is not None else "")
        )


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
    deadline = Deadline(timeout, what)
    not_yet: tuple[type[BaseException], ...] = (NotYet, *tolerate)
    while True:
        try:
            result = predicate()
        except not_yet as e:
            deadline.last = e
        else:
            if result:
                return result
        if deadline.passed():
            raise deadline.error()
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
    on C{clock}, so the reactor turns meanwhile.
    """
    deadline = Deadline(timeout, what)
    not_yet: tuple[type[BaseException], ...] = (NotYet, *tolerate)
    while True:
        try:
            result = predicate()
            if isinstance(result, Awaitable):
                result = await result
        except not_yet as e:
            deadline.last = e
        else:
            if result:
                return result
        if deadline.passed():
            raise deadline.error()
        await deferLater(clock, interval, lambda: None)
