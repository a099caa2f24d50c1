"""
Where the server listens: the C{--listen} and C{[tls] listen} endpoints,
parsed and checked before anything is made, and which sockets this process
takes at start: its own endpoints, the sockets the main process handed
down (a worker's C{--inherit-fd}), or its share of the sockets it binds for
its workers (C{--workers N}).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from ccserver.config import Config
from ccserver.errors import ConfigError
from ccserver.tls import ClientCertificateRequesting
from ccserver.workers import ListenAddress, WorkerPool, inherited_endpoint, listen_addresses

#: An endpoint, made when its listener starts (so that a socket handed down
#: or bound by the worker pool is taken only then).
EndpointMaker = Callable[[], IStreamServerEndpoint]


@frozen
class Listener:
    """
    One listener of this process: what the log calls it, its endpoint, and
    whether it speaks TLS (C{[tls] listen}).
    """

    description: str
    endpoint: EndpointMaker
    tls: bool


@frozen
class Listening:
    """
    Where the server listens.

    @ivar endpoints: each C{--listen} endpoint, then each C{[tls] listen}
        one, with its description.
    @ivar tls_count: how many of them, at the end, are C{[tls] listen}.
    @ivar tls_context: the TLS listeners' context, if there are any.
    @ivar inherited: the listening sockets a worker was handed down (its
        C{--inherit-fd} options), in the order of the endpoints.
    @ivar shared: in the main process of C{--workers N}, the addresses it
        binds once per process.
    @ivar workers: C{--workers}.
    @ivar metrics: the metrics listener's description and endpoint; only
        the main process serves metrics.
    """

    endpoints: tuple[tuple[str, IStreamServerEndpoint], ...]
    tls_count: int
    tls_context: ClientCertificateRequesting | None
    inherited: tuple[int, ...]
    shared: tuple[ListenAddress, ...]
    workers: int
    metrics: tuple[str, IStreamServerEndpoint] | None

    def worker_pool(
        self, reactor: Any, argv: Sequence[str], on_exit: Callable[[int], None] | None
    ) -> WorkerPool | None:
        """
        The pool of worker processes this process starts, if it starts any.

        @param argv: the command line of C{twist} after its name, which the
            workers run again.
        """
        if not self.shared:
            return None
        return WorkerPool(reactor, argv, self.shared, self.workers, on_exit=on_exit)

    def listeners(self, reactor: Any, pool: WorkerPool | None) -> list[Listener]:
        """
        This process's listeners: on the sockets handed down, on its share
        of the pool's, or on its own endpoints.
        """
        first_tls = len(self.endpoints) - self.tls_count
        makers: list[tuple[str, EndpointMaker]]
        if self.inherited:
            # The main process hands down the plain listeners' sockets, then
            # the TLS ones, in the order of the (same) configuration.
            makers = [(f"fd:{fd}", _inherited(reactor, fd)) for fd in self.inherited]
        elif pool is not None:
            makers = [(d, _shared(pool, i)) for i, (d, _) in enumerate(self.endpoints)]
        else:
            makers = [(d, _given(e)) for d, e in self.endpoints]
        return [
            Listener(
                f"{description} (TLS)" if index >= first_tls else description,
                endpoint,
                tls=index >= first_tls,
            )
            for index, (description, endpoint) in enumerate(makers)
        ]


def listening(
    config: Config,
    reactor: Any,
    inherited: Sequence[int],
    tls_context: ClientCertificateRequesting | None,
) -> Listening:
    """
    Parse and check every endpoint of C{config}.

    @param inherited: the sockets this process was handed down, if it is a
        worker.
    @raise ConfigError: naming an endpoint string that is wrong, or one that
        workers cannot share.
    """
    descriptions = (*config.listen, *config.tls.listen)
    endpoints = tuple((d, _endpoint(reactor, "listen", d)) for d in descriptions)
    # Checked in the workers too, which share the main process's configuration.
    addresses = listen_addresses(descriptions) if config.workers > 1 else []
    metrics = None
    if config.metrics.listen is not None and not inherited:
        metrics = (
            f"{config.metrics.listen} (metrics)",
            _endpoint(reactor, "metrics", config.metrics.listen),
        )
    return Listening(
        endpoints,
        len(config.tls.listen),
        tls_context,
        tuple(inherited),
        () if inherited else tuple(addresses),
        config.workers,
        metrics,
    )


def _endpoint(reactor: Any, key: str, description: str) -> IStreamServerEndpoint:
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{key}: {description!r} is not an endpoint string: {e}") from None
    return endpoint


def _given(endpoint: IStreamServerEndpoint) -> EndpointMaker:
    return lambda: endpoint


def _inherited(reactor: Any, fd: int) -> EndpointMaker:
    return lambda: inherited_endpoint(reactor, fd)


def _shared(pool: WorkerPool, index: int) -> EndpointMaker:
    return lambda: pool.endpoint(index)
