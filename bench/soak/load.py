"""
The soak's load generator, on Twisted: C{concurrency} slots, each one
request at a time on a kept-alive connection of its own (http.py), paced
so that the whole mix sends at most C{rate} requests a second; beside
them, the
timers that rotate a client's secret and the signing keys, sample the
server's processes, and close each interval (the store's size, the log).

The reactor is passed in (cli.py's main() runs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, gatherResults
from twisted.internet.error import ConnectError
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.threads import deferToThreadPool

from bench.paths import REPO
from bench.soak import procs
from bench.soak.http import Client, ProtocolError, RequestTimeout
from bench.soak.serverlog import LogFollower, LogNews
from bench.soak.sizes import StoreSize
from bench.soak.stats import Interval
from bench.soak.traffic import Request, Traffic

T = TypeVar("T")

#: Seconds a request may take before it counts as a timeout (a failure).
REQUEST_TIMEOUT = 30.0
#: Seconds a `ccserver keys` command may take.
COMMAND_TIMEOUT = 120.0
#: How often, at most, the server's processes are sampled.
SAMPLE_SECONDS = 5.0


class Pacer:
    """
    Spaces the sends of every slot together C{1 / rate} seconds apart; a
    slot that comes late sends at once, and the schedule starts again from
    it (no burst to catch up).  A rate of 0 sends at once, always.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next: float | None = None

    def delay(self, now: float) -> float:
        """
        Seconds to wait from C{now} before the next send, which is booked.
        """
        if self.rate <= 0:
            return 0.0
        start = now if self._next is None else max(self._next, now)
        self._next = start + 1 / self.rate
        return start - now


def answer_of(error: BaseException) -> str:
    """
    What is recorded for a request that got no HTTP answer.
    """
    if isinstance(error, RequestTimeout):
        return "timeout"
    if isinstance(error, ProtocolError):
        return f"bad answer: {error}"
    if isinstance(error, ConnectError):
        return f"no connection: {type(error).__name__}"
    return f"no answer: {type(error).__name__}"


@dataclass
class Observation:
    """
    One interval: what the load saw, and the state of the server and its
    store at its end.
    """

    interval: Interval
    processes: list[procs.ProcessSample]
    store: StoreSize | None
    #: why the store could not be read, if it could not
    store_error: str
    #: the tokens the load holds that are alive (not expired, revoked,
    #: or their client deleted)
    live_tokens: int
    #: clients the load registered and has not deleted
    dynamic_clients: int
    #: keys /jwks.json listed last (None: not asked yet)
    jwks_keys: int | None
    log: LogNews
    #: cores used on average in the interval: server, store, soak, other, machine
    cpu: dict[str, float]
    #: the machine's load average (1, 5, 15 minutes) at its end
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass
class SoakRun:
    """
    Everything a run measured, as the report needs it.
    """

    observations: list[Observation] = field(default_factory=list)
    #: (seconds since the start, the processes then)
    process_samples: list[tuple[float, list[procs.ProcessSample]]] = field(default_factory=list)
    #: seconds the load ran
    ran: float = 0.0
    interrupted: bool = False
    #: what went wrong with the server itself (it exited, a worker was
    #: replaced), each once
    server_problems: list[str] = field(default_factory=list)
    #: the soak's own failures (a bug of the load): the figures are partial
    soak_errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Settings:
    base: str
    duration: float
    interval: float
    concurrency: int
    rate: float
    secret_rotation: float
    key_rotation: float
    #: the server's configuration file and store, for `ccserver keys`
    config: str
    store_url: str
    workdir: str


class Soak:
    """
    One run of the load against one server.

    @param leader: the server's main process (its process group's leader).
    @param alive: whether the server's main process still runs.
    @param size: reads the store's size (blocking: called in a thread).
    @param show: called with each interval's L{Observation} as it closes.
    """

    def __init__(
        self,
        reactor: Any,
        settings: Settings,
        traffic: Traffic,
        leader: int,
        alive: Callable[[], bool],
        size: Callable[[], StoreSize],
        log: LogFollower,
        show: Callable[[Observation], None],
        store_roots: set[int] | None = None,
    ) -> None:
        self.reactor = reactor
        self.settings = settings
        self.traffic = traffic
        self.leader = leader
        self.alive = alive
        self.size = size
        self.log = log
        self.show = show
        self.store_roots = store_roots or set()
        self.pacer = Pacer(settings.rate)
        self.clients: list[Client] = []
        self.result = SoakRun()
        self.stopping = False
        self._started = 0.0
        self._current = Interval(0.0, 0.0)
        self._sleeping: Deferred[None] | None = None
        self._workers: set[int] | None = None
        self._cpu: procs.CpuReading | None = None

    # -- the clock -------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def stop_early(self) -> None:
        """
        Stop the load now (SIGINT): the interval under way closes, and the
        report covers what ran.
        """
        self.result.interrupted = True
        if self._sleeping is not None:
            self._sleeping.cancel()

    # -- the run ---------------------------------------------------------

    async def run(self) -> SoakRun:
        settings = self.settings
        self.log.skip_to_end()
        self._cpu = procs.read_cpu(self.leader, self.store_roots)
        self._started = time.monotonic()
        slots = [ensureDeferred(self._slot(self._client())) for _ in range(settings.concurrency)]
        # a request a minute or less often: a new connection each
        rotations = self._client(persistent=False)
        timers = [
            self._every(min(SAMPLE_SECONDS, settings.interval / 4), self._sample, now=True),
            self._every(settings.secret_rotation, lambda: self._rotate_secret(rotations)),
            self._every(settings.key_rotation, self._rotate_keys),
        ]
        boundary = 0.0
        try:
            while boundary < settings.duration and not self.stopping:
                boundary = min(boundary + settings.interval, settings.duration)
                self._sleeping = deferLater(self.reactor, max(0.0, boundary - self.elapsed()))
                try:
                    await self._sleeping
                except CancelledError:
                    boundary = self.elapsed()
                    self.stopping = True
                if boundary >= settings.duration or not self.alive():
                    self.stopping = True
                if self.stopping:
                    await gatherResults(slots)
                    for timer, done in timers:
                        if timer.running:
                            timer.stop()
                        await done
                await self._close(boundary)
        finally:
            self.stopping = True
            self.result.ran = self.elapsed()
            for client in self.clients:
                await client.close()
        return self.result

    def _client(self, persistent: bool = True) -> Client:
        """
        A client of its own for a slot: one connection, kept alive from its
        first request to the end, so that the server's open files do not
        change with the load's timing.
        """
        client = Client(self.reactor, self.settings.base, REQUEST_TIMEOUT, persistent)
        self.clients.append(client)
        return client

    def _every(
        self, seconds: float, work: Callable[[], Awaitable[None] | None], now: bool = False
    ) -> tuple[LoopingCall, Deferred[Any]]:
        """
        A timer calling C{work} every C{seconds} (it waits for a Deferred it
        returns); and the Deferred that fires once it is stopped.
        """

        def failed(failure: Any) -> None:
            self.result.soak_errors.append(f"a timer failed: {failure.type.__name__}: {failure.getErrorMessage()}")

        def call() -> Deferred[None] | None:
            try:
                result = work()
            except Exception as e:
                self.result.soak_errors.append(f"a timer failed: {type(e).__name__}: {e}")
                return None
            if result is None:
                return None
            return ensureDeferred(result).addErrback(failed)  # type: ignore[arg-type]

        timer = LoopingCall(call)
        timer.clock = self.reactor
        return timer, timer.start(seconds, now=now)

    async def _slot(self, client: Client) -> None:
        try:
            while not self.stopping:
                delay = self.pacer.delay(self.reactor.seconds())
                if delay > 0:
                    await deferLater(self.reactor, delay)
                if self.stopping:
                    break
                await self._send(client, self.traffic.next_request(time.time()))
        except Exception as e:
            # the soak's own bug: stop it, keep what it measured, say so
            self.result.soak_errors.append(f"a load slot failed: {type(e).__name__}: {e}")
            self.stop_now()

    def stop_now(self) -> None:
        self.stopping = True
        if self._sleeping is not None:
            self._sleeping.cancel()

    async def _send(self, client: Client, request: Request) -> None:
        sent, started = time.time(), time.perf_counter()
        latency: float | None = None
        try:
            response = await client.request(request.method, request.path, request.headers, request.body)
            latency = time.perf_counter() - started
            answer = str(response.status)
            if response.status == request.expected and request.on_answer is not None:
                try:
                    answer = request.on_answer(response.body, sent, time.time()) or answer
                except (ValueError, KeyError, TypeError) as e:
                    answer = f"bad answer: {type(e).__name__}"
        except Exception as e:
            answer = answer_of(e)
        finally:
            self.traffic.finished(request)
        self._current.record(request.kind, answer, latency)

    def _in_thread(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), work, *args, **kwargs)

    # -- the timers ------------------------------------------------------

    def _sample(self) -> None:
        samples = procs.sample(self.leader)
        self.result.process_samples.append((self.elapsed(), samples))
        workers = {s.pid for s in samples if s.role == "worker"}
        if not any(s.role == "main" for s in samples) or not self.alive():
            self._problem("the server's main process exited")
            self.stop_now()
        elif self._workers is None:
            self._workers = workers
        elif workers != self._workers:
            self._problem(f"the workers changed: pids {sorted(self._workers)} became {sorted(workers)}")
            self._workers = workers

    def _problem(self, text: str) -> None:
        if text not in self.result.server_problems:
            self.result.server_problems.append(text)

    async def _rotate_secret(self, client: Client) -> None:
        if self.stopping:
            return
        request = self.traffic.rotation(time.time())
        if request is not None:
            await self._send(client, request)

    async def _rotate_keys(self) -> None:
        """
        C{ccserver keys rotate}, then C{ccserver keys retire} (which deletes
        the keys no live token needs), against the server's store, as an
        operator would run them.
        """
        for action in ("rotate", "retire"):
            if self.stopping:
                return
            started = time.perf_counter()
            argv = [sys.executable, "-m", "ccserver.admin", "--config", self.settings.config,
                    "--store", self.settings.store_url, "keys", action]
            try:
                done = await self._in_thread(
                    subprocess.run, argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                    env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=self.settings.workdir, check=False,
                )
                answer = f"exit {done.returncode}"
                if done.returncode != 0:
                    answer += ": " + (done.stderr.strip().splitlines() or ["?"])[-1][:200]
            except subprocess.TimeoutExpired:
                answer = "timeout"
            self._current.record(f"keys_{action}", answer, time.perf_counter() - started)

    async def _close(self, boundary: float) -> None:
        """
        Close the interval ending at C{boundary}: read the store's size (in
        a thread), the log, the processes, and show it.
        """
        interval, self._current = self._current, Interval(boundary, boundary)
        interval.end = boundary
        store, error = None, ""
        try:
            store = await self._in_thread(self.size)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:300]
            problem = f"the store's size could not be read: {error}"
            if problem not in self.result.soak_errors:
                self.result.soak_errors.append(problem)
        reading = procs.read_cpu(self.leader, self.store_roots)
        assert self._cpu is not None
        used = procs.cores(self._cpu, reading, interval.end - interval.start, os.cpu_count() or 1)
        self._cpu = reading
        observation = Observation(
            interval,
            procs.sample(self.leader),
            store,
            error,
            self.traffic.tokens.count(time.time()),
            len([c for c in self.traffic.dynamic if not c.leaving]),
            self.traffic.jwks_keys,
            self.log.read(),
            used,
            os.getloadavg(),
        )
        self.result.observations.append(observation)
        self.show(observation)
