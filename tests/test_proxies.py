"""
The one reading of trusted proxy addresses, shared by the limits'
X-Forwarded-For and mTLS's certificate header.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ccserver.proxies import hop_address, peer_is_trusted, trusted_networks


class PeerIsTrustedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.trusted = trusted_networks(["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"])

    def test_addresses_and_networks(self) -> None:
        for host in ("127.0.0.1", "10.1.2.3", "2001:db8::7"):
            self.assertTrue(peer_is_trusted(host, self.trusted), host)
        for host in ("127.0.0.2", "192.0.2.1", "2001:db9::1"):
            self.assertFalse(peer_is_trusted(host, self.trusted), host)

    def test_ipv4_seen_through_an_ipv6_socket(self) -> None:
        """
        A proxy at 127.0.0.1 connecting to a tcp6: listener is the peer
        ::ffff:127.0.0.1: the same proxy, trusted for both headers.
        """
        self.assertTrue(peer_is_trusted("::ffff:127.0.0.1", self.trusted))
        self.assertFalse(peer_is_trusted("::ffff:192.0.2.1", self.trusted))

    def test_no_ip_address(self) -> None:
        for host in (None, "/run/ccserver.sock", "", "not an address"):
            self.assertFalse(peer_is_trusted(host, self.trusted), host)

    def test_nothing_trusted(self) -> None:
        self.assertFalse(peer_is_trusted("127.0.0.1", ()))

    def test_hop_with_port(self) -> None:
        self.assertEqual(str(hop_address("192.0.2.1:4711")), "192.0.2.1")
        self.assertEqual(str(hop_address("[2001:db8::1]:4711")), "2001:db8::1")
        self.assertIsNone(hop_address("unknown"))

    def test_bad_network_named(self) -> None:
        with self.assertRaises(ValueError) as raised:
            trusted_networks(["10.0.0.0/33"])
        self.assertIn("10.0.0.0/33", str(raised.exception))
