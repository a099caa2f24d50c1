"""
The benchmark's HTTP floor (bench/floor.py): ccserver's HTTP layer
answering the benchmark's requests with constants, and the note that says
where the floor is.  Figures are never checked: only what they are made
of.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from bench import floor
from bench.introspection import floor_note
from bench.rounds import Round
from bench.servers import Floor


def answer(raw: bytes) -> tuple[bytes, bytes]:
    from ccserver.web import CCServerSite

    site = CCServerSite(floor.floor_resource(), reactor=Clock())
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    channel = site.buildProtocol(transport.getPeer())
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    head, _, body = transport.value().partition(b"\r\n\r\n")
    channel.connectionLost(None)
    return head, body


def post(path: bytes, form: bytes) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic Zmxvb3I6Zmxvb3I=\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(form) + form
    )


class FloorServerTests(SynchronousTestCase):
    def test_introspection_answer(self) -> None:
        """
        What introspect.lua counts: an active answer, with the headers of
        ccserver's, in one write of known length.
        """
        head, body = answer(post(b"/token/introspect", b"token=" + floor.TOKEN.encode()))
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"), head)
        self.assertIn(b"Content-Length: %d" % len(body), head)
        self.assertIn(b"Cache-Control: no-store", head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertIs(json.loads(body)["active"], True)

    def test_token_answer(self) -> None:
        head, body = answer(post(b"/token", b"grant_type=client_credentials&scope=read"))
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"), head)
        document = json.loads(body)
        self.assertEqual((document["access_token"], document["token_type"]), (floor.TOKEN, "Bearer"))

    def test_discovery_answers_a_get(self) -> None:
        head, _ = answer(b"GET /.well-known/openid-configuration HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"), head)

    def test_wrong_method(self) -> None:
        head, _ = answer(b"GET /token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 405 "), head)

    def test_command(self) -> None:
        server = Floor("HTTP floor", Path("w"))
        argv, env, _ = server.command()
        self.assertEqual(argv, [sys.executable, "-m", "bench.floor", "--port", str(server.port)])
        self.assertIn(str(Path(floor.__file__).parent.parent), env["PYTHONPATH"])
        self.assertTrue(server.basic)


def rounds(per_core: float) -> list[Round]:
    return [
        Round("s", per_core, 1, 1, requests=int(per_core), cpu_cores=1.0, other_cores=0.0, cpu_seconds=1.0)
        for _ in range(3)
    ]


class FloorNoteTests(SynchronousTestCase):
    def test_what_the_target_leaves_above_the_floor(self) -> None:
        """
        Issuance at 160 us a request allows an introspection of 160 / 1.5
        = 107 us; the floor at 80 us leaves 27 us above it, against the
        introspection's 115 - 80 = 35 us now.
        """
        note = floor_note(rounds(1e6 / 115), rounds(1e6 / 160), rounds(1e6 / 80), 1.5)
        self.assertEqual(
            note,
            "server CPU a request: issuance 160 us, introspection 115 us, HTTP floor 80 us; "
            "at 1.50x an introspection may cost 107 us, which leaves 27 us above the floor "
            "for ccserver's own work (now 35 us)",
        )
