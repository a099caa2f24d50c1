"""
Configuration errors seen from a real C{twist ccserver} process: a wrong
start ends with one line on stderr and a non-zero exit, before anything
listens.  The unit tests are in L{tests.test_config}.
"""

from __future__ import annotations

import os

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import temp_dir
from tests.process import free_port, run_ccserver
from tests.test_config import write

pytestmark = pytest.mark.process


class StartupErrorTests(SynchronousTestCase):
    """
    A wrong start ends with one line on stderr and a non-zero exit, before
    anything listens.
    """

    def setUp(self) -> None:
        self.tmp = temp_dir(self)

    def assert_refused(self, *args: str, message: str) -> None:
        port = free_port()
        result = run_ccserver("--listen", f"tcp:{port}:interface=127.0.0.1", *args, cwd=self.tmp)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotRegex(result.stderr, "[\x00-\x09\x0b-\x1f\x7f-\x9f]")
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("ccserver: "), lines[0])
        self.assertIn(message, lines[0])
        self.assertNotIn("Traceback", result.stdout + result.stderr)

    def test_unknown_toml_key(self) -> None:
        self.assert_refused("--config", write(self.tmp, "colour = 'blue'\n"), message="colour: unknown key")

    def test_control_characters_escaped(self) -> None:
        """
        The one line shows what does not print escaped (ccserver.text), so
        that a key in a configuration file, or a store's message, cannot
        rewrite the operator's terminal.
        """
        config = write(self.tmp, '"col\\u001b[2J\\u009bour" = 1\n')
        self.assert_refused("--config", config, message="col\\u001b[2J\\u009bour: unknown key")

    def test_missing_store_folder(self) -> None:
        self.assert_refused("--store", "sqlite:///missing/x.db", message="'missing' does not exist")

    def test_unreadable_config(self) -> None:
        self.assert_refused("--config", str(self.tmp / "nope.toml"), message="cannot read")

    def test_bad_listen(self) -> None:
        result = run_ccserver("--listen", "carrier-pigeon:42", cwd=self.tmp)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("listen: 'carrier-pigeon:42'", result.stderr)

    def test_unknown_grant_handler(self) -> None:
        self.assert_refused("--grant-handler", "nope", message="available: ")

    def test_nothing_made_on_refusal(self) -> None:
        self.assert_refused("--config", write(self.tmp, "[tokens]\nlifetime = -1\n"), message="lifetime")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["ccserver.toml"])


class UnreachableStoreAtStartTests(SynchronousTestCase):
    """
    A store that cannot be reached at start: a clear line on stderr and a
    clean exit (non-zero) once [store] timeout has passed, nothing listening.
    """

    def test_clean_exit(self) -> None:
        tmp = temp_dir(self)
        (tmp / "ccserver.toml").write_text("[store]\ntimeout = 1\n")
        port = free_port()
        result = run_ccserver(
            "--config", str(tmp / "ccserver.toml"),
            "--store", f"redis://127.0.0.1:{free_port()}/0",
            "--listen", f"tcp:{port}:interface=127.0.0.1",
            cwd=tmp,
        )
        self.assertEqual(result.returncode, 1)
        self.assertRegex(
            result.stderr.strip(),
            r"^ccserver: could not start: redis://127\.0\.0\.1:\d+/0: no answer within 1 s$",
        )
