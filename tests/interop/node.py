"""
The node side of the interoperability tests: the client libraries pinned in
C{node/package.json} and C{node/package-lock.json}, installed with C{npm ci}
(tests/run.sh does it; L{installed} does it too when they are missing or
not the pinned versions, so that C{python3 -m pytest} alone runs them), and
C{node/client.mjs}, which drives one library through one round.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent / "node"
#: How long one npm install or one round may take on a loaded machine.
TIMEOUT = 300


def _pinned() -> dict[str, str]:
    """
    Every package of the lock file and its version.
    """
    lock = json.loads((FOLDER / "package-lock.json").read_text())
    return {
        path: entry["version"]
        for path, entry in lock["packages"].items()
        if path.startswith("node_modules/")
    }


def _is_installed() -> bool:
    for path, version in _pinned().items():
        manifest = FOLDER / path / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text())["version"] != version:
            return False
    return True


def installed() -> Path:
    """
    The node folder, with the pinned packages installed (C{npm ci}, once:
    concurrent test processes wait for the one that installs).
    """
    with open(FOLDER / ".install-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_installed():
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=FOLDER,
                check=True,
                capture_output=True,
                timeout=TIMEOUT,
            )
    return FOLDER


class NodeClientFailed(AssertionError):
    """
    The node library's round failed; the message is what it said.
    """


def run_round(ca_file: Path, document: dict[str, Any]) -> dict[str, Any]:
    """
    One round of C{node/client.mjs}: the token response and the
    introspection answers before and after revocation.

    @param ca_file: the CA of the server's certificate, which node trusts
        through C{NODE_EXTRA_CA_CERTS}, as any node program would.
    """
    folder = installed()
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=str(ca_file))
    result = subprocess.run(
        ["node", "client.mjs"],
        cwd=folder,
        input=json.dumps(document),
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )
    if result.returncode != 0:
        raise NodeClientFailed(
            f"{document['library']} with {document['method']}: {result.stderr.strip()}"
        )
    return json.loads(result.stdout)  # type: ignore[no-any-return]
