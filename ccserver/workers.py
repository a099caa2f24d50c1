"""
Several processes serving one set of listening addresses (C{--workers N}).

The main process binds one socket per process and address with
C{SO_REUSEPORT}, so that the kernel spreads connections across processes,
and starts N-1 worker processes (C{twist ccserver} again, with the same
options) that adopt their sockets.  Workers are started only once the main
process has opened the store and made the signing key, so they find
everything ready; a worker that dies is started again; SIGTERM to the main
process stops the workers first.  Workers share clients and keys through the
store, so C{memory://} cannot be used with them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from ccserver.errors import ConfigError

#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0


@define
class ListenAddress:
    family: socket.AddressFamily
    host: str
    port: int
    backlog: int


def listen_addresses(reactor: Any, descriptions: Sequence[str]) -> list[ListenAddress]:
    """
    The addresses of C{tcp:} and C{tcp6:} endpoint strings, which are the
    ones several processes can share.

    @raise ConfigError: for any other kind of endpoint.
    """
    addresses = []
    for description in descriptions:
        endpoint = serverFromString(reactor, description)
        if isinstance(endpoint, TCP6ServerEndpoint):
            family = socket.AF_INET6
        elif isinstance(endpoint, TCP4ServerEndpoint):
            family = socket.AF_INET
        else:
            raise ConfigError(
                f"workers: listen endpoint {description!r} cannot be shared; "
                "with workers > 1 use tcp: or tcp6: endpoints (put TLS in front)"
            )
        addresses.append(
            ListenAddress(family, endpoint._interface, endpoint._port, endpoint._backlog)
        )
    return addresses


def bind(address: ListenAddress) -> socket.socket:
    """
    A listening socket on C{address} that other processes may bind too.
    """
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((address.host or ("::" if address.family == socket.AF_INET6 else ""), address.port))
    sock.listen(address.backlog)
    sock.setblocking(False)
    return sock


class _Worker(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool.ended(self, reason)


@define
class WorkerPool:
    """
    The worker processes of the main one, each with its own sockets.
    """

    reactor: Any
    argv: Sequence[str]
    sockets: list[list[socket.socket]]
    _workers: dict[int, _Worker] = field(factory=dict)
    _stopping: bool = False

    _log = Logger()

    def start(self) -> None:
        for index in range(len(self.sockets)):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        fds = [s.fileno() for s in self.sockets[index]]
        child_fds: dict[int, int | str] = {0: "w", 1: 1, 2: 2}
        argv = [sys.executable, "-m", "twisted", *self.argv]
        for child_fd, parent_fd in enumerate(fds, start=3):
            child_fds[child_fd] = parent_fd
            argv += ["--inherit-fd", str(child_fd)]
        worker = _Worker(self, index)
        self._workers[index] = worker
        process = self.reactor.spawnProcess(
            worker, sys.executable, argv, env=os.environ, childFDs=child_fds
        )
        self._log.info("Started worker {n} (pid {pid})", n=index + 1, pid=process.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        if not self._stopping:
            self._log.warn(
                "Worker {n} ended ({reason}); starting it again",
                n=worker.index + 1,
                reason=reason.getErrorMessage(),
            )
            self.reactor.callLater(RESTART_DELAY, self._spawn, worker.index)

    async def stop(self) -> None:
        """
        SIGTERM every worker and wait for them to finish their requests.
        """
        self._stopping = True
        workers = list(self._workers.values())
        for worker in workers:
            if worker.transport is not None:
                try:
                    worker.transport.signalProcess(signal.SIGTERM)
                except ProcessExitedAlready:
                    pass
        for worker in workers:
            await worker.ended
        for sockets in self.sockets:
            for sock in sockets:
                sock.close()
