"""
The help the real commands print, in child processes.
"""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import temp_dir
from tests.process import REPO, run_ccserver
from tests.test_help import assert_plain


class HelpProcessTests(SynchronousTestCase):
    def test_twist_ccserver_help(self) -> None:
        result = run_ccserver("--help", cwd=temp_dir(self))
        self.assertEqual(result.returncode, 0, result.stderr)
        assert_plain(self, result.stdout, "twist ccserver --help")

    def test_ccserver_help(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "ccserver.admin", "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        assert_plain(self, result.stdout, "ccserver --help")
