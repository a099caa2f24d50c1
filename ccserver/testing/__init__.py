"""
Helpers for testing ccserver and code that runs with it, shipped with the
package as Twisted ships C{twisted.internet.testing} and treq
C{treq.testing}: throwaway Redis and PostgreSQL servers on free loopback
ports (L{ccserver.testing.servers}), and the one way to wait for a real
process or server to reach a state (L{ccserver.testing.polling}).

ccserver's own tests and its benchmark both use them, which is why they
live here and not under C{tests/}: the benchmark imports nothing from the
tests.  No module of the server imports this package
(C{tests/test_layers.py} checks it).
"""
