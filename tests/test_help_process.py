"""
The help the real commands print, in child processes.
"""

from __future__ import annotations

import pytest
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import temp_dir
from tests.process import REPO, run_admin, run_ccserver
from tests.test_help import assert_plain

pytestmark = pytest.mark.process


class HelpProcessTests(SynchronousTestCase):
    def test_twist_ccserver_help(self) -> None:
        result = run_ccserver("--help", cwd=temp_dir(self))
        self.assertEqual(result.returncode, 0, result.stderr)
        assert_plain(self, result.stdout, "twist ccserver --help")

    def test_ccserver_help(self) -> None:
        result = run_admin("--help", cwd=REPO)
        self.assertEqual(result.returncode, 0, result.stderr)
        assert_plain(self, result.stdout, "ccserver --help")
