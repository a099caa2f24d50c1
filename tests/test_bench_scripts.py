"""
The bench's stand-alone measurements (bench/README.md points to each), run
small, each in a process of its own as a user runs it: that they still run
against today's code and print their figures.  (bench/audit_cost.py still
called an attribute of the token endpoint that had been renamed, and
nothing said so until it was next run.)
What they print is not checked: figures are for bench/README.md, never for
a test.
"""

from __future__ import annotations

import re

from twisted.trial.unittest import SynchronousTestCase

from tests.process import REPO, run_python


class ScriptTests(SynchronousTestCase):
    def run_module(self, *args: str) -> str:
        done = run_python("-m", *args, cwd=REPO, pythonpath=[REPO], timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        return done.stdout

    def test_audit_cost(self) -> None:
        out = self.run_module("bench.audit_cost", "--tokens", "20", "--rounds", "1")
        self.assertRegex(out, r'writer, token_issued = "all" +[\d.]+ µs')

    def test_inprocess(self) -> None:
        for kind in ("token-opaque", "introspect-opaque", "introspect-es256", "bare"):
            out = self.run_module("bench.inprocess", kind, "--requests", "20", "--runs", "1",
                                  "--access-log")
            self.assertRegex(out, rf"^{kind}: [\d.]+ us user CPU per request .*HTTP/1.1 200 OK")

    def test_purgebatch(self) -> None:
        out = self.run_module("bench.purgebatch", "--rows", "12000", "--rounds", "1")
        self.assertEqual(len(re.findall(r"^round 1 .*: 12,000 rows in 3 batches", out, re.M)), 2, out)

    def test_tokenwrite(self) -> None:
        out = self.run_module("bench.tokenwrite", "--sizes", "1,60", "--statements", "10")
        self.assertEqual(len(re.findall(r"^ +(1|60) rows, .*: client +[\d.]+ µs, backend", out, re.M)),
                         4, out)
