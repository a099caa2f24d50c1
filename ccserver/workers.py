"""
Several processes serving one set of listening addresses (C{--workers N}).

The main process binds one socket per process and address with
C{SO_REUSEPORT}, so that the kernel spreads connections across processes,
and starts N-1 worker processes (C{twist ccserver} again, with the same
options) that adopt their sockets.  Workers are started only once the main
process has opened the store and made the signing key, so they find
everything ready; a worker that dies is started again; SIGTERM to the main
process stops the workers along with it.  Workers share clients and keys through the
store, so C{memory://} cannot be used with them.

A worker never outlives the main process, however that ends (a SIGKILL,
the OOM killer, a supervisor's hard stop outside a cgroup): its standard
input is a pipe whose other end only the main process holds, and the
worker watches it (L{ParentWatch}).  At end-of-file it stops listening,
gives its requests in flight L{ORPHAN_GRACE} seconds, and ends.  An orphan
would otherwise keep serving on the port with whatever it had loaded, and
share the port with a restarted server.  (Linux's C{PR_SET_PDEATHSIG}
would be a second way; the pipe works everywhere, and has no race with a
parent that dies before the child has asked for the signal.)
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from attrs import define
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost, ProcessExitedAlready
from twisted.internet.interfaces import IReadDescriptor, IStreamServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ccserver.errors import ConfigError

#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0

#: Seconds a worker whose main process ended gives its requests in flight
#: before it ends (and drops those still unanswered).
ORPHAN_GRACE = 0.5

#: The worker's file descriptor of the pipe from the main process: its
#: standard input.
PARENT_PIPE_FD = 0


@define
class ListenAddress:
    family: socket.AddressFamily
    host: str
    port: int
    backlog: int


def _split(description: str) -> list[str]:
    """
    The colon-separated fields of an endpoint string, with backslash
    escapes undone (C{tcp6:8080:interface=\\:\\:1}).
    """
    fields = [""]
    characters = iter(description)
    for character in characters:
        if character == "\\":
            fields[-1] += next(characters, "")
        elif character == ":":
            fields.append("")
        else:
            fields[-1] += character
    return fields


#: The parameters of C{tcp:} and C{tcp6:} endpoint strings, in their
#: positional order, with their defaults, as Twisted's endpoint string
#: documentation gives them (see L{twisted.internet.endpoints.serverFromString}).
_TCP_PARAMETERS = {
    "tcp": (socket.AF_INET, ("port", "interface", "backlog"), {"interface": "", "backlog": "50"}),
    "tcp6": (socket.AF_INET6, ("port", "backlog", "interface"), {"interface": "::", "backlog": "50"}),
}


def listen_address(description: str) -> ListenAddress:
    """
    The address of a C{tcp:} or C{tcp6:} endpoint string
    (C{tcp:PORT:interface=HOST:backlog=N}, or the same fields by position),
    the kinds several processes can share.

    Twisted makes the endpoint but gives no public way to read its address
    back, so the documented syntax is read here; a test checks the result
    against the endpoints Twisted makes from the same strings.

    @raise ConfigError: for any other kind of endpoint, or a malformed one.
    """
    kind, *arguments = _split(description)
    if kind.lower() not in _TCP_PARAMETERS:
        raise ConfigError(
            f"workers: listen endpoint {description!r} cannot be shared; "
            "with workers > 1 use tcp: or tcp6: endpoints (put TLS in front)"
        )
    family, positional, defaults = _TCP_PARAMETERS[kind.lower()]
    values = dict(defaults)
    try:
        for index, argument in enumerate(arguments):
            name, equals, value = argument.partition("=")
            if equals:
                values[name] = value
            else:
                values[positional[index]] = argument
        if set(values) != set(positional):
            raise ValueError(f"unknown parameter {sorted(set(values) - set(positional))}")
        return ListenAddress(family, values["interface"], int(values["port"]), int(values["backlog"]))
    except (ValueError, KeyError, IndexError) as e:
        raise ConfigError(f"listen: {description!r} is not an endpoint string: {e}") from None


def listen_addresses(descriptions: Sequence[str]) -> list[ListenAddress]:
    """
    The addresses of C{tcp:} and C{tcp6:} endpoint strings (L{listen_address}).
    """
    return [listen_address(description) for description in descriptions]


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


def inherited_endpoint(reactor: Any, fd: int) -> IStreamServerEndpoint:
    """
    An endpoint serving the listening socket C{fd} handed down by the main
    process; listening adopts a copy of it and closes C{fd}.
    """
    with socket.socket(fileno=os.dup(fd)) as sock:
        family = sock.family
    return AdoptedStreamServerEndpoint(reactor, fd, family)


@implementer(IReadDescriptor)
class _PipeFromParent:
    """
    The read end of the pipe from the main process, which never writes to
    it: what arrives is discarded; end-of-file means the main process has
    ended.
    """

    def __init__(self, fd: int, on_end: Callable[[], None]) -> None:
        self.fd = fd
        self.on_end = on_end

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError as e:
            return Failure(ConnectionLost(str(e)))
        return None if data else Failure(ConnectionDone())

    def connectionLost(self, reason: Failure) -> None:
        self.on_end()

    def logPrefix(self) -> str:
        return "parent-pipe"


class ParentWatch(Service):
    """
    In a worker: ends this process soon after the main process has ended,
    however it ended.

    @param fd: the pipe from the main process (L{PARENT_PIPE_FD}).
    @param stop: stops this process cleanly (the reactor's C{stop}): it
        stops listening and waits for the requests in flight.
    @param exit: ends this process at once, C{grace} seconds later, if the
        clean stop has not ended it by then.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        fd: int = PARENT_PIPE_FD,
        *,
        grace: float = ORPHAN_GRACE,
        stop: Callable[[], None] | None = None,
        exit: Callable[[int], None] = os._exit,
    ) -> None:
        self.reactor = reactor
        self.grace = grace
        self._stop = reactor.stop if stop is None else stop
        self._exit = exit
        self._pipe = _PipeFromParent(fd, self.parent_ended)
        self.ended = False

    def startService(self) -> None:
        super().startService()
        os.set_blocking(self._pipe.fd, False)
        self.reactor.addReader(self._pipe)

    def stopService(self) -> None:
        super().stopService()
        self.reactor.removeReader(self._pipe)

    def parent_ended(self) -> None:
        if self.ended:
            return
        self.ended = True
        self._log.warn(
            "The main process has ended: this worker stops (its requests in flight "
            "have {grace} s)",
            grace=self.grace,
        )
        self.reactor.callLater(self.grace, self._exit, 1)
        self._stop()


class _Worker(ProcessProtocol):
    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.pool.ended(self, reason)


class WorkerPool(Service):
    """
    The worker processes of the main one, as a service.

    Starting binds one socket per process and address (C{SO_REUSEPORT}),
    keeps the first set for this process (L{endpoint}) and starts a worker
    for each other set; a worker that dies is started again.  Stopping
    sends SIGTERM to every worker and fires once they have all ended (each
    finishes its requests in flight first).

    @param argv: the command line of C{twist} after its name, which every
        worker runs again with C{--inherit-fd} options added.
    @param count: how many processes serve, this one included.
    @param on_exit: called with the pid of each worker that ended.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        argv: Sequence[str],
        addresses: Sequence[ListenAddress],
        count: int,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.on_exit = on_exit
        self.reactor = reactor
        self.argv = list(argv)
        self.addresses = list(addresses)
        self.count = count
        self._own: list[socket.socket] = []
        self._sockets: list[list[socket.socket]] = []
        self._workers: dict[int, _Worker] = {}
        self._stopping = False

    def _bind(self) -> None:
        """
        Bind every process's sockets, once: when the pool starts, or when
        this process's listeners ask for theirs first.
        """
        if self._own or self._sockets:
            return
        sockets = [[bind(address) for address in self.addresses] for _ in range(self.count)]
        self._own, self._sockets = sockets[0], sockets[1:]

    def startService(self) -> None:
        self._bind()
        super().startService()
        for index in range(len(self._sockets)):
            self._spawn(index)

    def endpoint(self, index: int) -> IStreamServerEndpoint:
        """
        An endpoint serving this process's socket for the C{index}th
        address (binding the sockets if the pool has not yet); each may be
        taken once.
        """
        self._bind()
        sock = self._own[index]
        return AdoptedStreamServerEndpoint(self.reactor, sock.detach(), sock.family)

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        fds = [s.fileno() for s in self._sockets[index]]
        # stdin: a pipe whose write end only this process holds (ParentWatch)
        child_fds: dict[int, int | str] = {PARENT_PIPE_FD: "w", 1: 1, 2: 2}
        argv = [sys.executable, "-m", "twisted", *self.argv]
        for child_fd, parent_fd in enumerate(fds, start=3):
            child_fds[child_fd] = parent_fd
            argv += ["--inherit-fd", str(child_fd)]
        worker = _Worker(self, index)
        self._workers[index] = worker
        process = self.reactor.spawnProcess(
            worker, sys.executable, argv, env=os.environ, childFDs=child_fds
        )
        worker.pid = process.pid
        self._log.info("Started worker {n} (pid {pid})", n=index + 1, pid=process.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.index) is worker:
            del self._workers[worker.index]
        if self.on_exit is not None and worker.pid is not None:
            self.on_exit(worker.pid)
        if not self._stopping:
            self._log.warn(
                "Worker {n} ended ({reason}); starting it again",
                n=worker.index + 1,
                reason=reason.getErrorMessage(),
            )
            self.reactor.callLater(RESTART_DELAY, self._spawn, worker.index)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
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
        for sockets in self._sockets:
            for sock in sockets:
                sock.close()
