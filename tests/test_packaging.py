"""
The README's first command, C{pip install . && twist ccserver}, installs
every part of the server: the packages setup.cfg lists are the tree's, the
data files go with them, and a copy installed from the source (not the
source tree itself, which every other test runs) serves tokens.
"""

from __future__ import annotations

import configparser
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import basic, temp_dir
from tests.process import REPO, CCServerProcess


def setup_options() -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser["options"]


def listed_packages() -> set[str]:
    return {line.strip() for line in setup_options()["packages"].splitlines() if line.strip()}


def tree_packages() -> set[str]:
    """
    The packages of the source tree: every folder of C{ccserver} with an
    C{__init__.py}, and the Twisted plugin folder (a namespace package's
    portion, which must have none).
    """
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "ccserver").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    return found | {"twisted.plugins"}


def package_data() -> dict[str, list[str]]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return {package: value.split() for package, value in parser["options.package_data"].items()}


class PackageListTests(SynchronousTestCase):
    """
    setup.cfg names every package and data file: a package left out is
    missing from an installed server (C{ModuleNotFoundError} at start),
    while every test run from the tree passes.
    """

    def test_every_package_is_listed(self) -> None:
        self.assertEqual(listed_packages(), tree_packages())

    def test_every_data_file_is_listed(self) -> None:
        """
        Every file of the package that is not Python source (the schema
        migrations, C{py.typed}) is matched by a C{package_data} pattern
        of its package.
        """
        tracked = subprocess.run(
            ["git", "ls-files", "ccserver"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
        data = [Path(name) for name in tracked if not name.endswith(".py")]
        self.assertTrue(data, "the package's data files")
        patterns = package_data()
        unlisted = []
        for path in data:
            covered = False
            for package, globs in patterns.items():
                folder = Path(*package.split("."))
                if folder in path.parents:
                    relative = str(path.relative_to(folder))
                    covered = covered or any(fnmatch.fnmatch(relative, g) for g in globs)
            if not covered:
                unlisted.append(str(path))
        self.assertEqual(unlisted, [])


@pytest.mark.process
class InstalledCopyTests(SynchronousTestCase):
    """
    A copy installed by pip from the source, run from a folder of its own
    with nothing of the source tree on its path, starts, registers a client
    and issues a token; its command runs too.
    """

    def test_installed_copy_issues_a_token(self) -> None:
        folder = temp_dir(self)
        target = folder / "site"
        installed = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--target",
                target,
                ".",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(installed.returncode, 0, installed.stderr)
        env = {"PYTHONPATH": str(target)}
        imported = subprocess.run(
            [sys.executable, "-c", "import ccserver.tap; print(ccserver.__file__)"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(imported.returncode, 0, imported.stderr)
        self.assertTrue(imported.stdout.startswith(str(target)), imported.stdout)
        version = subprocess.run(
            [str(target / "bin" / "ccserver"), "--version"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(version.returncode, 0, version.stderr)
        self.assertIn("0.", version.stdout)

        server = CCServerProcess(folder / "run", env=env)
        self.addCleanup(server.kill)
        server.start()
        client = server.register(scope="read")
        token = requests.post(
            server.url + "/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(client["client_id"], client["client_secret"])},
            timeout=10,
        )
        self.assertEqual(token.status_code, 200, token.text)
        self.assertEqual(token.json()["scope"], "read")
