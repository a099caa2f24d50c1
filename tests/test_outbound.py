"""
Outbound HTTP (L{ccserver.outbound}): where a request may go, checked in
the resolver the connection is made with (a L{MemoryReactorClock} and a
fake resolver: no packet leaves the process), the one private Twisted name
it needs, and how failures are described.  The real thing, a server
process fetching from a loopback server, is in
L{tests.test_jwks_uri_process}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IHostResolution,
    IResolutionReceiver,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import _newclient
from twisted.web.http_headers import Headers
from zope.interface import implementer

from ccserver.outbound import (
    AddressPolicy,
    BodyTooLarge,
    RefusedAddress,
    RefusedURL,
    RequestNotSent,
    describe_failure,
    http_client,
    refused_range,
)

STRICT = AddressPolicy.public()


class TwistedNamesTests(SynchronousTestCase):
    def test_request_not_sent_is_what_twisted_raises(self) -> None:
        """
        L{RequestNotSent} (reached in C{twisted.web._newclient}, which
        Twisted does not export) is what a request on a connection already
        lost fails with, the case the webhook retries.  This fails if
        Twisted moves, renames or stops raising it.
        """
        protocol = _newclient.HTTP11ClientProtocol()
        protocol.makeConnection(StringTransport())
        protocol.connectionLost(Failure(ConnectionDone()))
        sent = protocol.request(_newclient.Request(b"GET", b"/", Headers(), None))
        self.failureResultOf(sent, RequestNotSent)


class RefusedRangeTests(SynchronousTestCase):
    def test_refused(self) -> None:
        """
        Every special-purpose range a client-supplied URL may not reach,
        the cloud metadata addresses among them, and the IPv6 forms that
        carry an IPv4 address of one.
        """
        for address in (
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.100.100.200",  # Alibaba Cloud metadata
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",  # AWS, GCP, Azure, OpenStack metadata
            "169.254.170.2",  # ECS task metadata
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.192",  # Oracle Cloud metadata
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2001::1",  # Teredo
            "2001:db8::1",
            "fc00::1",
            "fd00:ec2::254",  # AWS metadata over IPv6
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ):
            self.assertIsNotNone(refused_range(ipaddress.ip_address(address)), address)

    def test_public(self) -> None:
        for address in (
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:808:808::1",
        ):
            self.assertIsNone(refused_range(ipaddress.ip_address(address)), address)


class AddressPolicyTests(SynchronousTestCase):
    def test_allowed_networks(self) -> None:
        """
        The operator's networks may be reached over https or http, in their
        IPv6 forms too; nothing else private, and plain http only there.
        """
        policy = AddressPolicy.public(["127.0.0.0/8", "10.20.0.5"])
        for address in ("127.0.0.1", "127.9.9.9", "10.20.0.5", "::ffff:127.0.0.1"):
            for scheme in ("https", "http"):
                self.assertIsNone(policy.refusal(ipaddress.ip_address(address), scheme))
        for address in ("10.20.0.6", "::1", "169.254.169.254"):
            self.assertIn("is ", policy.refusal(ipaddress.ip_address(address), "https") or "")
        self.assertIsNone(policy.refusal(ipaddress.ip_address("8.8.8.8"), "https"))
        self.assertIn(
            "plain http", policy.refusal(ipaddress.ip_address("8.8.8.8"), "http") or ""
        )

    def test_any_address(self) -> None:
        policy = AddressPolicy.any_address()
        for address in ("127.0.0.1", "169.254.169.254", "8.8.8.8"):
            self.assertIsNone(policy.refusal(ipaddress.ip_address(address), "http"))
        self.assertEqual(policy.check_url("http://10.0.0.1:6379/"), "http://10.0.0.1:6379/")

    def test_check_url(self) -> None:
        good = ("https://client.example/jwks.json", "https://8.8.8.8:8443/j?x=1#f", "https://[2606:4700::1111]/")
        for url in good:
            self.assertEqual(STRICT.check_url(url), url)
        for url, reason in (
            ("http://client.example/jwks", "must be https"),
            ("https://127.0.0.1/", "loopback"),
            ("https://localhost:8443/", "loopback"),
            ("https://a.LOCALHOST./", "loopback"),
            ("https://[::ffff:169.254.169.254]/", "link-local"),
            ("https://127.1/", "non-standard form"),
            ("https://017700000001/", "non-standard form"),
            ("https://0x7f.0.0.1/", "non-standard form"),
            ("https://[fe80::1%25eth0]/", "without a zone"),
            ("https://client.example/a b", "visible ASCII"),
            ("https://client.example/\r\nX: y", "visible ASCII"),
            ("https://clïent.example/", "visible ASCII"),
            ("https://u:p@client.example/", "credentials"),
            ("https://client.example:99999/", "not an absolute"),
            ("https://client.example:x/", "not an absolute"),
            ("ftp://client.example/", "not an absolute"),
            ("//client.example/", "not an absolute"),
        ):
            with self.assertRaises(RefusedURL, msg=url) as refused:
                STRICT.check_url(url)
            self.assertIn(reason, str(refused.exception), url)

    def test_check_url_with_allowed_networks(self) -> None:
        policy = AddressPolicy.public(["127.0.0.0/8"])
        for url in ("http://127.0.0.1:8080/j", "https://localhost/j", "http://jwks.internal/j"):
            self.assertEqual(policy.check_url(url), url)
        for url in ("http://10.0.0.1/", "https://[::1]/", "http://8.8.8.8/"):
            self.assertRaises(RefusedURL, policy.check_url, url)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


class FakeDNS:
    """
    An L{IHostnameResolver} answering from C{names} (name -> the addresses
    of each lookup in turn, the last one repeated); a literal address
    answers itself, as getaddrinfo does.
    """

    def __init__(self, names: dict[str, list[list[str]]]) -> None:
        self.names = names
        self.lookups: list[str] = []

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        self.lookups.append(hostName)
        answers = self.names.get(hostName, [[hostName]])
        addresses = answers.pop(0) if len(answers) > 1 else answers[0]
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        for address in addresses:
            if ipaddress.ip_address(address).version == 4:
                resolutionReceiver.addressResolved(IPv4Address("TCP", address, portNumber))
            else:
                resolutionReceiver.addressResolved(IPv6Address("TCP", address, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


class ResolverTests(SynchronousTestCase):
    """
    The check made where the connection is made: a name is resolved, its
    addresses checked, and only checked addresses connected to.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.dns = FakeDNS(
            {
                "public.example": [["93.184.216.34"]],
                "inward.example": [["127.0.0.1"]],
                "metadata.example": [["169.254.169.254"]],
                "mixed.example": [["93.184.216.34", "10.0.0.1"]],
                "v6.example": [["::ffff:127.0.0.1"]],
                "rebinding.example": [["93.184.216.34"], ["127.0.0.1"]],
            }
        )
        self.reactor.installNameResolver(self.dns)

    def get(self, url: str, policy: AddressPolicy = STRICT) -> object:
        http, _ = http_client(self.reactor, connect_timeout=5, policy=policy)
        return http.get(url, reactor=self.reactor)

    def connected_to(self) -> list[tuple[str, int]]:
        return [(host, port) for host, port, *_ in self.reactor.tcpClients]

    def assert_refused(self, url: str, policy: AddressPolicy = STRICT) -> str:
        failure = self.failureResultOf(self.get(url, policy), RefusedAddress)  # type: ignore[arg-type]
        self.assertEqual(self.connected_to(), [])
        return str(failure.value)

    def test_name_resolving_inward_refused(self) -> None:
        """
        A name that resolves to loopback, to the metadata address, or to an
        IPv4-mapped loopback address: no connection is even tried.
        """
        for name in ("inward.example", "metadata.example", "v6.example"):
            self.assertIn(f"{name} resolves to", self.assert_refused(f"https://{name}/jwks"))

    def test_one_refused_address_refuses_the_name(self) -> None:
        self.assertIn("10.0.0.1 is private", self.assert_refused("https://mixed.example/jwks"))

    def test_literal_address_checked_too(self) -> None:
        """
        A URL that names an address (whatever let it through before) is
        checked in the same resolver.
        """
        self.assert_refused("https://169.254.169.254/latest/meta-data/")
        self.assert_refused("http://127.0.0.1:6379/")

    def test_public_name_connected_to_the_checked_address(self) -> None:
        self.get("https://public.example/jwks")
        self.assertEqual(self.connected_to(), [("93.184.216.34", 443)])

    def test_rebinding(self) -> None:
        """
        A name whose second answer is inward: the first connection goes to
        the address checked then, the next lookup is checked again.
        """
        http, _ = http_client(self.reactor, connect_timeout=5, policy=STRICT)
        http.get("https://rebinding.example/jwks", reactor=self.reactor)
        self.assertEqual(self.connected_to(), [("93.184.216.34", 443)])
        second = http.get("https://rebinding.example/jwks", reactor=self.reactor)
        self.failureResultOf(second, RefusedAddress)
        self.assertEqual(self.connected_to(), [("93.184.216.34", 443)])
        self.assertEqual(self.dns.lookups, ["rebinding.example"] * 2)

    def test_plain_http_only_to_allowed_networks(self) -> None:
        self.assertIn("plain http", self.assert_refused("http://public.example/jwks"))
        policy = AddressPolicy.public(["127.0.0.0/8"])
        self.get("http://inward.example:8080/jwks", policy)
        self.assertEqual(self.connected_to(), [("127.0.0.1", 8080)])

    def test_any_address_for_the_operator(self) -> None:
        self.get("http://metadata.example/", AddressPolicy.any_address())
        self.assertEqual(self.connected_to(), [("169.254.169.254", 80)])

    def test_unknown_name(self) -> None:
        """
        A name with no address is not a refusal: it fails as DNS does.
        """
        self.dns.names["nowhere.example"] = [[]]
        self.failureResultOf(self.get("https://nowhere.example/"), DNSLookupError)  # type: ignore[arg-type]


class DescribeFailureTests(SynchronousTestCase):
    def test_described(self) -> None:
        cases = [
            (RefusedAddress("x.example resolves to 127.0.0.1 is loopback"), "refused: x.example"),
            (BodyTooLarge("the answer is longer than 10 bytes"), "longer than 10 bytes"),
            (ConnectionRefusedError(), "could not connect"),
            (DNSLookupError("nowhere"), "could not connect"),
            (RequestNotSent(), "the exchange failed"),
        ]
        for error, words in cases:
            self.assertIn(words, describe_failure(Failure(error)) or "", error)
        self.assertIsNone(describe_failure(Failure(ZeroDivisionError())))
