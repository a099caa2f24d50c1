"""
--workers N: N processes serve one listening address.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from pathlib import Path

import pytest
import requests
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor, MemoryReactorClock

from ccserver.errors import ConfigError
from ccserver.workers import ParentWatch, listen_address
from tests.process import CCServerProcess, print_figure, run_ccserver, wait_until


class ListenAddressTests(unittest.TestCase):
    """
    L{listen_address} reads the documented C{tcp:}/C{tcp6:} syntax itself,
    as Twisted has no public way to read an endpoint's address back.  This
    test compares it with what Twisted makes of the same strings, as a
    L{MemoryReactor} records the listening it is asked for: it fails if
    Twisted changes its syntax or defaults under the parser.
    """

    DESCRIPTIONS = [
        "tcp:8080",
        "tcp:0:interface=127.0.0.1",
        "tcp:8080:backlog=7:interface=10.0.0.1",
        "tcp:80:1.2.3.4:9",
        "tcp6:8080",
        "tcp6:8080:interface=\\:\\:1:backlog=3",
        "tcp6:443:5:\\:\\:1",
    ]

    def test_same_as_twisted(self) -> None:
        for description in self.DESCRIPTIONS:
            reactor = MemoryReactor()
            serverFromString(reactor, description).listen(Factory())
            [(port, _, backlog, interface)] = reactor.tcpServers
            address = listen_address(description)
            self.assertEqual(
                (address.host, address.port, address.backlog),
                (interface, port, backlog),
                description,
            )
            self.assertEqual(address.family == socket.AF_INET6, description.startswith("tcp6"))

    def test_refused(self) -> None:
        for description, message in [
            ("unix:/tmp/s.sock", "cannot be shared"),
            ("ssl:443", "cannot be shared"),
            ("tcp:http", "is not an endpoint string"),
            ("tcp:80:colour=red", "is not an endpoint string"),
        ]:
            with self.assertRaises(ConfigError) as raised:
                listen_address(description)
            self.assertIn(message, str(raised.exception))


class ParentWatchTests(unittest.TestCase):
    """
    L{ParentWatch} over a real pipe, with the reactor's part played by a
    L{MemoryReactorClock}: end-of-file stops the worker, and ends it
    outright C{grace} seconds later if the clean stop has not.
    """

    def setUp(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.addCleanup(os.close, self.read_end)
        self.reactor = MemoryReactorClock()
        self.stopped: list[None] = []
        self.exits: list[int] = []
        self.watch = ParentWatch(
            self.reactor,
            self.read_end,
            grace=0.5,
            stop=lambda: self.stopped.append(None),
            exit=self.exits.append,
        )
        self.watch.startService()
        [self.pipe] = self.reactor.readers

    def read(self) -> None:
        """
        What the reactor does when the pipe is readable.
        """
        why = self.pipe.doRead()
        if why is not None:
            self.reactor.removeReader(self.pipe)
            self.pipe.connectionLost(why)

    def test_parent_alive(self) -> None:
        os.write(self.write_end, b"anything")
        self.read()
        self.read()  # nothing more to read: not an end either
        os.close(self.write_end)
        self.assertEqual((self.stopped, self.exits), ([], []))

    def test_parent_ended(self) -> None:
        os.close(self.write_end)
        self.read()
        self.assertEqual(self.stopped, [None])
        self.assertEqual(self.exits, [])
        self.reactor.advance(0.49)
        self.assertEqual(self.exits, [])
        self.reactor.advance(0.01)
        self.assertEqual(self.exits, [1])
        self.watch.parent_ended()
        self.assertEqual((self.stopped, self.exits), ([None], [1]))

    def test_stopped_with_the_worker(self) -> None:
        self.watch.stopService()
        self.assertEqual(list(self.reactor.readers), [])
        os.close(self.write_end)


def children(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in result.stdout.split()]


def running(pid: int) -> bool:
    """
    Whether C{pid} is a process that has not ended (a zombie has).
    """
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.process
class WorkersTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-workers-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def start(self) -> CCServerProcess:
        server = CCServerProcess(self.tmp, "--workers", "2", store=f"sqlite:///{self.tmp}/ccserver.db")
        self.addCleanup(server.kill)
        server.start()
        assert server.process is not None
        pid = server.process.pid
        wait_until(lambda: children(pid), interval=0.1, what="a worker started")
        return server

    def test_two_processes_serve(self) -> None:
        server = self.start()
        assert server.process is not None
        workers = children(server.process.pid)
        self.assertEqual(len(workers), 1)
        client = server.register(scope="read")
        with requests.Session() as first, requests.Session() as second:
            for session in (first, second) * 10:
                response = session.post(
                    server.url + "/token",
                    data={"grant_type": "client_credentials"},
                    auth=(client["client_id"], client["client_secret"]),
                    timeout=10,
                )
                self.assertEqual(response.status_code, 200)

    def test_dead_worker_is_started_again_and_sigterm_stops_all(self) -> None:
        server = self.start()
        assert server.process is not None
        [worker] = children(server.process.pid)
        os.kill(worker, signal.SIGKILL)
        pid = server.process.pid
        wait_until(
            lambda: children(pid) not in ([], [worker]), interval=0.1, what="the worker replaced"
        )
        [replacement] = children(pid)
        self.assertNotEqual(replacement, worker)
        self.assertEqual(server.stop(), -15)
        self.assertRaises(ProcessLookupError, os.kill, replacement, 0)

    def test_workers_end_with_a_killed_parent(self) -> None:
        """
        The main process SIGKILLed (the OOM killer, kill -9): its worker
        ends by itself, and nothing listens on the port any more, so that
        a restarted server has it to itself.
        """
        server = self.start()
        assert server.process is not None
        [worker] = children(server.process.pid)
        # serving, not still starting (it would end at its start all the same)
        wait_until(lambda: server.read_log().count("ccserver is ready") >= 2, what="the worker ready")
        os.kill(server.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        server.process.wait()
        wait_until(lambda: not running(worker), interval=0.01, what="the orphaned worker ended")
        ended = time.monotonic() - killed
        print_figure(f"workers: a worker ended {ended:.2f} s after its main process was SIGKILLed")
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", server.port))
            probe.listen()
        self.assertIn("The main process has ended: this worker stops", server.read_log())

    def test_memory_store_refused(self) -> None:
        result = run_ccserver("--workers", "2", "--store", "memory://", cwd=self.tmp)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("workers: processes share clients and keys through the store", result.stderr)

    def test_unshareable_endpoint_refused(self) -> None:
        result = run_ccserver("--workers", "2", "--listen", f"unix:{self.tmp}/s.sock", cwd=self.tmp)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("cannot be shared", result.stderr)
