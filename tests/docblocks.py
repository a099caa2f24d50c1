"""
The code blocks of README.md and docs/*.md, read and run as a reader
would: what tests/test_docs_process.py runs and tests/test_docs.py checks.

The conventions (docs/development.md, "Documentation that runs"): a fenced
block's info string is its language, then markers.

  - C{sh} and C{python} blocks run, in the order of the page, in one POSIX
    shell (C{sh}, with C{set -eu}) in a fresh folder of the page's own: a
    variable set or a file written by one block is there for the next.  A
    C{python} block runs as C{python3 -} (its text on standard input) in
    that shell's folder and environment: the folder comes first on
    C{sys.path}, as for a snippet a reader saves there and runs.
  - C{server}: an C{sh} block that starts a server in the foreground, as a
    reader does in a terminal of its own.  It runs in the background until
    the end of the page (or the next C{server} block); the page goes on once
    the server answers C{/health/ready} on the port that stands for 8080.
    C{twist ccserver} without C{--listen} gets C{--listen} with that port
    (C{tcp:8080}, the default, is what a reader's server listens on).  It
    runs in the page's folder.
  - C{file=PATH}: the block is a file's content, written to PATH in the
    page's folder (not run): a plugin, a web service, a configuration.
  - C{no-run}: shown only (an install command, a proxy's configuration).
    Any language but those named here needs it.
  - C{toml}, C{json} and C{yaml} blocks are parsed (tests/test_docs.py); a
    C{toml} one is loaded as a ccserver configuration, so it names only keys
    that exist.  A block without a language (or C{text}) is output, shown.

Each page gets free ports for 8080, 8443, 9000 and 9108: the harness writes
the free port wherever a block says one of those numbers.  C{twist},
C{ccserver}, C{python3} and C{curl} are the test's own (its interpreter,
with the worktree on C{PYTHONPATH}); C{curl} runs with C{--fail-with-body},
so that an HTTP error answer fails the block even in a pipe.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from attrs import frozen

from tests.process import DEADLINE, REPO, free_port, require_marker, wait_until

#: The pages whose blocks are read: the README and every page of docs/.
PAGES = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))

#: Languages whose blocks run.
RUN = frozenset({"sh", "python"})
#: Languages whose blocks are parsed (tests/test_docs.py).
CHECKED = frozenset({"toml", "json", "yaml"})
#: Blocks that are output a reader sees, never run.
OUTPUT = frozenset({"", "text"})
MARKERS = frozenset({"no-run", "server"})

#: The ports the documents name, each replaced by a free one per page.
PORTS = (8080, 8443, 9000, 9108)

_FENCE = re.compile(r"^( *)```(.*)$")


@frozen
class Block:
    page: Path
    #: The line of the opening fence, from 1.
    line: int
    language: str
    markers: frozenset[str]
    #: Where a C{file=} block is written, relative to the page's folder.
    file: str | None
    text: str

    @property
    def where(self) -> str:
        page = self.page.relative_to(REPO) if self.page.is_relative_to(REPO) else self.page
        return f"{page}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.language in RUN and "no-run" not in self.markers and self.file is None


def read_blocks(page: Path) -> list[Block]:
    """
    The fenced code blocks of a Markdown page, in order.

    @raise ValueError: for a fence never closed.
    """
    blocks = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, info = opening.group(1), opening.group(2).split()
        language = info[0] if info else ""
        markers = frozenset(word for word in info[1:] if not word.startswith("file="))
        files = [word.split("=", 1)[1] for word in info[1:] if word.startswith("file=")]
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        if j == len(lines):
            raise ValueError(f"{page}:{i + 1}: a code block is never closed")
        blocks.append(
            Block(page, i + 1, language, markers, files[0] if files else None, "\n".join(body) + "\n")
        )
        i = j + 1
    return blocks


def problems(block: Block) -> Iterator[str]:
    """
    What is wrong with a block's info string under the conventions.
    """
    unknown = block.markers - MARKERS
    if unknown:
        yield f"{block.where}: unknown marker {', '.join(sorted(unknown))}"
    known = RUN | CHECKED | OUTPUT
    if block.language not in known and "no-run" not in block.markers:
        yield f"{block.where}: a {block.language!r} block must be marked no-run"
    if "server" in block.markers and block.language != "sh":
        yield f"{block.where}: only an sh block can start a server"
    if "server" in block.markers and len(block.text.strip().splitlines()) != 1:
        yield f"{block.where}: a server block is one command"


class BlockFailed(AssertionError):
    pass


class PageRun:
    """
    One page's blocks, run in order in a folder of their own.
    """

    def __init__(self, page: Path, folder: Path) -> None:
        self.page = page
        self.folder = folder
        self.work = folder / ".docs"
        self.work.mkdir(parents=True)
        self.ports = {documented: free_port() for documented in PORTS}
        self.failures = self.work / "curl-failures"
        self.env = self._environment()
        self.servers: list[tuple[Block, subprocess.Popen[bytes], Path]] = []
        # its blocks run twist ccserver and the ccserver command
        require_marker(f"a shell running the blocks of {page.name}")
        self.shell = subprocess.Popen(
            ["sh"],
            cwd=folder,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.selector = selectors.DefaultSelector()
        assert self.shell.stdout is not None
        os.set_blocking(self.shell.stdout.fileno(), False)
        self.selector.register(self.shell.stdout, selectors.EVENT_READ)
        self.shell_output = b""
        self._send("set -eu\n")

    def _environment(self) -> dict[str, str]:
        """
        The reader's environment, with the test's own tools first on PATH.
        """
        bin_dir = self.work / "bin"
        bin_dir.mkdir()
        python = sys.executable
        real_curl = shutil.which("curl")
        assert real_curl, "curl is not installed (.ci/apt-packages)"
        # The worktree first on the path, even where a block sets PYTHONPATH
        # (a reader's installed ccserver needs none).
        path = f'PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" '
        tools = {
            "python3": f'{path}exec "{python}" "$@"\n',
            "python": f'{path}exec "{python}" "$@"\n',
            "twist": f'{path}exec "{python}" -m twisted "$@"\n',
            "ccserver": f'{path}exec "{python}" -c "from ccserver.admin import main; main()" "$@"\n',
            # An HTTP error answer fails curl (with the body shown), and is
            # written down for the harness, which a pipe would hide.
            "curl": (
                f'"{real_curl}" --fail-with-body "$@" && exit 0\n'
                "status=$?\n"
                f'echo "curl $* -> exit status $status" >> "{self.failures}"\n'
                "exit $status\n"
            ),
        }
        for name, body in tools.items():
            path = bin_dir / name
            path.write_text("#!/bin/sh\n" + body)
            path.chmod(0o755)
        env = dict(os.environ)
        for variable in ("CCSERVER_MASTER_TOKEN", "CCSERVER_KEY_ENCRYPTION_KEY"):
            env.pop(variable, None)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONPATH", None)
        env["HOME"] = str(self.folder)
        return env

    def port(self, documented: int = 8080) -> int:
        return self.ports[documented]

    def text(self, block: Block) -> str:
        """
        The block as it runs here: the documented ports replaced by this
        page's own.
        """
        text = block.text
        for documented, port in self.ports.items():
            text = re.sub(rf"(?<![0-9]){documented}(?![0-9])", str(port), text)
        return text

    def _send(self, command: str) -> None:
        assert self.shell.stdin is not None
        self.shell.stdin.write(command.encode())
        self.shell.stdin.flush()

    def _wait_for(self, marker: bytes, timeout: float) -> bool:
        """
        Read the shell's output until C{marker}; False if the shell ended
        first.
        """
        deadline = time.monotonic() + timeout
        while marker not in self.shell_output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BlockFailed(f"no end within {timeout:g} s")
            for key, _ in self.selector.select(min(remaining, 1.0)):
                chunk = key.fileobj.read()  # type: ignore[union-attr]
                if chunk == b"":
                    self.selector.unregister(key.fileobj)
                    return False
                if chunk:
                    self.shell_output += chunk
            if self.shell.poll() is not None and not self.selector.get_map():
                return False
        return True

    def run(self, block: Block, number: int) -> None:
        """
        Run one block (or write it, for a C{file=} block).

        @raise BlockFailed: naming the block, with its output.
        """
        if block.file is not None:
            path = self.folder / block.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.text(block))
            return
        if "server" in block.markers:
            self.start_server(block, number)
            return
        output = self.work / f"block-{number}.out"
        if block.language == "python":
            # from standard input, so that the folder is first on sys.path,
            # as for a reader's saved snippet run there
            script = self.work / f"block-{number}.py"
            command = f'python3 - < "{script}"'
        else:
            script = self.work / f"block-{number}.sh"
            command = f'. "{script}" < /dev/null'
        script.write_text(self.text(block))
        marker = f"@@ block {number} done"
        self._send(f'{command} > "{output}" 2>&1\necho "{marker}"\n')
        try:
            finished = self._wait_for(marker.encode(), DEADLINE)
        except BlockFailed as e:
            self.fail(block, output, str(e))
        if not finished:
            self.fail(block, output, f"exit status {self.shell.wait()}")
        if self.failures.exists() and self.failures.read_text():
            self.fail(block, output, self.failures.read_text())

    def start_server(self, block: Block, number: int) -> None:
        """
        Start a C{server} block in the background and wait until it is
        ready: the previous server, if any, is stopped first.
        """
        self.stop_servers()
        command = self.text(block).strip()
        if "twist ccserver" in command and "--listen" not in command:
            command = command.replace(
                "twist ccserver",
                f"twist ccserver --listen tcp:{self.port()}:interface=127.0.0.1",
                1,
            )
        log = self.work / f"server-{number}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                ["sh", "-euc", command],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.servers.append((block, process, log))

        def ready() -> bool:
            if process.poll() is not None:
                self.fail(block, log, f"the server ended with status {process.returncode}")
            response = requests.get(f"http://127.0.0.1:{self.port()}/health/ready", timeout=5)
            return response.status_code == 200

        try:
            wait_until(ready, what="the server ready", tolerate=(requests.RequestException,))
        except AssertionError as e:
            self.fail(block, log, str(e))

    def stop_servers(self) -> None:
        while self.servers:
            _, process, _ = self.servers.pop()
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()

    def fail(self, block: Block, output: Path, why: str) -> None:
        shown = output.read_text(errors="replace") if output.exists() else ""
        servers = "".join(
            f"\n--- the server of {server.where} ---\n{_tail(log)}"
            for server, _, log in self.servers
        )
        raise BlockFailed(
            f"{block.where}: the block failed ({why.strip()}):\n{block.text}"
            f"--- its output ---\n{shown}{servers}"
        )

    def close(self) -> None:
        """
        Stop the servers, end the shell, and end whatever the blocks left
        running in the background (a web service started with C{&}).
        """
        self.stop_servers()
        if self.shell.poll() is None:
            try:
                self._send("exit 0\n")
            except BrokenPipeError:
                pass
            try:
                self.shell.wait(10)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.shell, signal.SIGKILL)
        self.shell.wait()
        self.selector.close()
        for stream in (self.shell.stdin, self.shell.stdout):
            if stream is not None:
                stream.close()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def run_page(page: Path, folder: Path) -> int:
    """
    Run every block of C{page} that runs, in order, in C{folder}; return how
    many ran.

    @raise BlockFailed: at the first that fails.
    """
    run = PageRun(page, folder)
    count = 0
    try:
        for number, block in enumerate(read_blocks(page)):
            if block.runs or block.file is not None:
                run.run(block, number)
                count += block.runs
    finally:
        run.close()
    return count
