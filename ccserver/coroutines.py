"""
Running a coroutine to its end without a Deferred of its own.

On the memory store every C{await} of a request's coroutine is of a Deferred
that has already fired, so the coroutine ends on its first step.
C{ensureDeferred} would still make a Deferred, its cancellation status and
a driver for it, and the answer would go through that Deferred's callbacks:
a share of a hot request's cost (bench/README.md, run N).  L{settle} runs
the coroutine itself, as C{ensureDeferred} does: every step in one copy of
the context it was called in (so a C{ContextVar} set in one step can be
reset in a later one), the result of each Deferred it awaits sent in, a
failure thrown in.  It cannot be cancelled.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextvars import Context, copy_context
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def settle(coroutine: Coroutine[Any, Any, Any], done: Callable[..., object], *args: Any) -> None:
    """
    Run C{coroutine} to its end, then call C{done(outcome, *args)} with
    what it returned, or the L{Failure} of what it raised: before this
    returns when the coroutine never waits, else when it ends.
    """
    _Run(coroutine, copy_context(), done, args).step(None)


class _Run:
    """
    One coroutine being run by L{settle}.
    """

    __slots__ = ("_coroutine", "_context", "_done", "_args")

    def __init__(
        self,
        coroutine: Coroutine[Any, Any, Any],
        context: Context,
        done: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        self._coroutine = coroutine
        self._context = context
        self._done = done
        self._args = args

    def step(self, result: object) -> None:
        """
        Send C{result} into the coroutine (throw it in, a L{Failure}), and
        so on while what it awaits is already there; wait for a Deferred
        that is not.
        """
        coroutine, run = self._coroutine, self._context.run
        while True:
            try:
                if isinstance(result, Failure):
                    waiting = run(result.throwExceptionIntoGenerator, coroutine)
                else:
                    waiting = run(coroutine.send, result)
            except StopIteration as stop:
                self._done(stop.value, *self._args)
                return
            except BaseException:
                self._done(Failure(), *self._args)
                return
            if isinstance(waiting, Deferred):
                # A Deferred yields itself only while it has no result:
                # this step ends here, the next begins when it fires.
                waiting.addBoth(self._waited)
                return
            # anything else awaited (a bare yield) is sent back, as
            # Twisted's own driver does
            result = waiting

    def _waited(self, result: object) -> None:
        self.step(result)
