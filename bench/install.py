"""
What the bench needs, installed if missing: wrk (apt-get, as root),
ccserver's Python dependencies (pip, only if one cannot be imported), the
node peer (npm, into the run's temporary folder), and the Redis and
PostgreSQL servers of the store sections (apt-get).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.errors import NotAvailable
from bench.output import say
from bench.paths import PEER_SCRIPT, REPO

PEER_PACKAGE = "oidc-provider@9"


def run_quiet(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


_apt_updated = False


def apt_install(*packages: str) -> None:
    global _apt_updated
    if os.geteuid() != 0:
        raise NotAvailable(f"{' '.join(packages)} missing, and not root to apt-get install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        say(f"apt-get update (to install {' '.join(packages)})")
        run_quiet(["apt-get", "update", "-qq"], env=env)
        _apt_updated = True
    say(f"apt-get install {' '.join(packages)}")
    result = run_quiet(["apt-get", "install", "-y", "-qq", *packages], env=env)
    if result.returncode != 0:
        raise NotAvailable(f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-300:]}")


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        apt_install("wrk")
        wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("bench: wrk is not installed and could not be installed")
    return wrk


def ensure_python_dependencies() -> None:
    """
    ccserver runs from this checkout (PYTHONPATH), so only its dependencies
    must be installed: those of setup.cfg, with the redis and postgresql
    extras.  Installed with pip only if one cannot be imported.
    """
    probe = "import twisted, klein, treq, attrs, zope.interface, jwt, cryptography, txredisapi, psycopg"
    if run_quiet([sys.executable, "-c", probe]).returncode == 0:
        return
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    requirements = [
        line.strip()
        for key in ("install_requires",)
        for line in parser.get("options", key, fallback="").splitlines()
        if line.strip()
    ]
    for extra in ("redis", "postgresql"):
        requirements += [
            line.strip()
            for line in parser.get("options.extras_require", extra, fallback="").splitlines()
            if line.strip()
        ]
    say("pip install " + " ".join(requirements))
    result = run_quiet([sys.executable, "-m", "pip", "install", "-q", *requirements])
    if result.returncode != 0:
        raise SystemExit(f"bench: pip install failed:\n{result.stderr[-2000:]}")


def install_peer(workdir: Path) -> str:
    """
    npm install oidc-provider@9 into C{workdir}; copy the peer's script
    there.  Returns the installed version.
    """
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is not installed (Node.js 20 or later and npm are needed)")
    (workdir / "package.json").write_text(
        json.dumps({"name": "ccserver-bench-peer", "private": True, "type": "module"})
    )
    say(f"npm install {PEER_PACKAGE} into {workdir}")
    result = run_quiet(
        ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", PEER_PACKAGE],
        cwd=workdir,
        timeout=600,
    )
    if result.returncode != 0:
        raise SystemExit(f"bench: npm install {PEER_PACKAGE} failed:\n{result.stderr[-2000:]}")
    shutil.copy(PEER_SCRIPT, workdir / "provider.mjs")
    package = json.loads((workdir / "node_modules" / "oidc-provider" / "package.json").read_text())
    return str(package["version"])

