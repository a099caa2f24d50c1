"""
The documents' commands, run as written: README.md's walk-through and the
runnable blocks of every page of docs/, in order, against real C{twist
ccserver} processes in a fresh folder per page (the conventions:
tests/docblocks.py, and docs/development.md).  A block that fails (a
non-zero exit, an HTTP error answer from curl, an exception in a Python
snippet) fails its page's test, naming the block.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.docblocks import PAGES, BlockFailed, read_blocks, run_page
from tests.process import REPO

pytestmark = pytest.mark.process

RUNNABLE = [page for page in PAGES if any(block.runs for block in read_blocks(page))]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(REPO)) for p in RUNNABLE])
def test_page_runs(page: Path, tmp_path: Path) -> None:
    ran = run_page(page, tmp_path)
    assert ran == sum(block.runs for block in read_blocks(page))


def test_the_readme_walk_through_runs() -> None:
    """
    The README is among them, with a server of its own and the commands
    that talk to it.
    """
    blocks = read_blocks(REPO / "README.md")
    assert REPO / "README.md" in RUNNABLE
    assert [b.text.strip() for b in blocks if "server" in b.markers] == ["twist ccserver"]
    assert sum(b.runs and b.language == "sh" for b in blocks) >= 4
    assert sum(b.runs and b.language == "python" for b in blocks) >= 2


# The harness itself: a page that should fail does, naming its block.


@pytest.fixture
def http_server() -> Iterator[int]:
    """
    A web server on a free port: 200 at /ok, 404 elsewhere.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"ok": true}' if self.path == "/ok" else b'{"error": "not_found"}'
            self.send_response(200 if self.path == "/ok" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def page(tmp_path: Path, text: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def run(tmp_path: Path, text: str) -> int:
    folder = tmp_path / "run"
    return run_page(page(tmp_path, text), folder)


def test_blocks_share_a_shell_and_a_folder(tmp_path: Path) -> None:
    """
    A variable or a file one block makes is there for the next; a Python
    block runs in that folder, with the worktree's ccserver; a block that
    reads standard input reads nothing, and the page goes on.
    """
    ran = run(
        tmp_path,
        "```sh\nGREETING=hello\necho made > made.txt\ncat\n```\n\n"
        "```sh\ntest \"$GREETING\" = hello\n```\n\n"
        "```python\nimport ccserver\nopen(\"where.txt\", \"w\").write(ccserver.__file__)\n"
        "assert open(\"made.txt\").read() == \"made\\n\"\n```\n\n"
        "```text\nnot run\n```\n",
    )
    assert ran == 3
    where = (tmp_path / "run" / "where.txt").read_text()
    assert where == str(REPO / "ccserver" / "__init__.py")


@pytest.mark.parametrize(
    "text",
    [
        "```sh\nfalse\necho not here\n```\n",
        "```sh\necho $NEVER_SET\n```\n",
        "```python\nraise SystemExit(3)\n```\n",
    ],
    ids=["exit status", "unset variable", "python"],
)
def test_a_failing_block_fails_the_page(tmp_path: Path, text: str) -> None:
    """
    The second block fails: the page fails there, naming it.
    """
    with pytest.raises(BlockFailed, match=r"page\.md:5: the block failed"):
        run(tmp_path, "```sh\necho first\n```\n\n" + text)


def test_an_http_error_fails_even_in_a_pipe(tmp_path: Path, http_server: int) -> None:
    """
    curl with an HTTP error answer fails the block, though a pipe hides
    its exit status; the same request that succeeds does not.
    """
    assert run(tmp_path / "ok", f"```sh\ncurl -s http://127.0.0.1:{http_server}/ok | cat\n```\n") == 1
    with pytest.raises(BlockFailed, match="exit status 22") as failed:
        run(tmp_path / "no", f"```sh\ncurl -s http://127.0.0.1:{http_server}/nope | cat\n```\n")
    assert "not_found" in str(failed.value)


def test_a_block_that_never_ends_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tests.docblocks.DEADLINE", 1.0)
    with pytest.raises(BlockFailed, match="no end within 1 s"):
        run(tmp_path, "```sh\nsleep 30\n```\n")


def test_documented_ports_are_replaced(tmp_path: Path) -> None:
    run(tmp_path, "```sh\necho http://localhost:8080 tcp:8443 > ports.txt\n```\n")
    written = (tmp_path / "run" / "ports.txt").read_text()
    assert "8080" not in written and "8443" not in written
    assert written.startswith("http://localhost:")
