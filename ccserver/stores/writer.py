"""
One database connection in one thread of its own, for a stream of small
operations whose cost is mostly the hand-off: the SQL stores' opaque
tokens' writes (the token writer), and introspection's lookups (the
reader).

adbapi's pool serves any number of threads and connections through
Twisted's thread pool, whose coordinator, context and callback wrappers
cost more CPU per operation than SQLite spends on a batch of a few token
rows (bench/README.md, "Measurements behind design choices").  Here one
operation is a C{SimpleQueue.put} in the reactor's thread, and a
C{callFromThread} back.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure

from ccserver.errors import StoreUnavailable

T = TypeVar("T")
C = TypeVar("C")


class ConnectionThread(Generic[C]):
    """
    Runs C{work(connection)} in its thread, in the order given, each with
    the thread's one connection, made by C{connect()} when first needed.

    A connection that C{is_stale} finds dead is made anew before it is
    used; one on which C{work} raised one of C{lost_errors} is closed and
    made anew for the next.
    """

    def __init__(
        self,
        reactor: IReactorThreads,
        connect: Callable[[], C],
        *,
        name: str,
        is_stale: Callable[[C], bool],
        lost_errors: tuple[type[BaseException], ...],
    ) -> None:
        self._reactor = reactor
        self._connect = connect
        self._is_stale = is_stale
        self._lost_errors = lost_errors
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Callable[[C], Any], Deferred[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._closed = False

    def run(self, work: Callable[[C], T]) -> Deferred[T]:
        """
        A Deferred that fires, in the reactor's thread, with C{work}'s
        result, or fails with what it raised.
        """
        if self._closed:
            return fail(StoreUnavailable(f"{self._name}: closed"))
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        d: Deferred[T] = Deferred()
        self._queue.put((work, d))
        return d

    def close(self, timeout: float) -> None:
        """
        Let the thread finish what it was given, close its connection and
        end; wait for it at most C{timeout} seconds.
        """
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def _serve(self) -> None:
        connection: C | None = None
        call = self._reactor.callFromThread
        try:
            while (item := self._queue.get()) is not None:
                work, d = item
                try:
                    if connection is not None and self._is_stale(connection):
                        connection = self._drop(connection)
                    if connection is None:
                        connection = self._connect()
                    result = work(connection)
                except Exception as e:
                    failure = Failure()
                    if connection is not None and isinstance(e, self._lost_errors):
                        connection = self._drop(connection)
                    call(d.errback, failure)
                else:
                    call(d.callback, result)
        finally:
            if connection is not None:
                self._drop(connection)

    @staticmethod
    def _drop(connection: Any) -> None:
        try:
            connection.close()
        except Exception:
            pass
        return None
