"""
The C{ccserver clients} command, run as a process against SQLite and real
Redis and PostgreSQL servers; and the start-up checks of packaging and
configuration: psycopg missing, and a second instance without the shared
key-encryption key.
"""

from __future__ import annotations

import json
import os
import stat
import unittest
from pathlib import Path
from typing import Any

import pytest
import requests

from ccserver.testing.servers import clean_store_url, redis_server
from tests.process import REPO, CCServerProcess, run_admin, run_ccserver, run_python, wait_until
from tests.test_escaping import HOSTILE, raw_characters

pytestmark = pytest.mark.process


def token(server: CCServerProcess, client_id: str, secret: str) -> int:
    return requests.post(
        server.url + "/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=10,
    ).status_code


class ClientsCommandMixin:
    """
    Every action of C{ccserver clients} on one kind of store.
    """

    kind = ""
    tmp: Path
    url: str

    def setUp(self) -> None:
        import tempfile

        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-cli-"))
        import shutil

        self.addCleanup(shutil.rmtree, self.tmp, True)  # type: ignore[attr-defined]
        self.url = clean_store_url(self.kind, self.addCleanup)  # type: ignore[attr-defined]

    def run_ok(self, *args: str) -> str:
        done = run_admin("--store", self.url, "clients", *args, cwd=self.tmp)
        self.assertEqual(done.returncode, 0, done.stderr)  # type: ignore[attr-defined]
        self.assertEqual(done.stderr, "")  # type: ignore[attr-defined]
        return done.stdout

    def create(self, name: str = "billing", scope: str = "read write") -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.run_ok("create", "--name", name, "--scope", scope))
        return document

    def test_create_list_show_rotate_delete(self) -> None:
        t: Any = self
        created = self.create()
        t.assertEqual(created["client_name"], "billing")
        t.assertEqual(created["scope"], "read write")
        for key in ("client_id", "client_secret", "registration_access_token",
                    "registration_client_uri", "client_id_issued_at"):
            t.assertIn(key, created)
        others = [self.create(name=f"c{i}")["client_id"] for i in range(3)]
        client_id = created["client_id"]

        listed = json.loads(self.run_ok("list", "--json"))
        t.assertEqual(sorted(c["client_id"] for c in listed), sorted([client_id, *others]))
        table = self.run_ok("list")
        t.assertIn(client_id, table)
        t.assertIn("billing / read write", table)

        shown = json.loads(self.run_ok("show", client_id))
        t.assertEqual(shown["client_id"], client_id)
        t.assertEqual(shown["scope"], "read write")
        text = json.dumps(listed) + json.dumps(shown) + table
        t.assertNotIn(created["client_secret"], text)
        t.assertNotIn(created["registration_access_token"], text)
        t.assertNotIn("digest", text)

        rotation = json.loads(self.run_ok("rotate-secret", client_id, "--grace", "120"))
        t.assertEqual(sorted(rotation), ["client_id", "client_secret", "previous_secret_expires_at"])
        t.assertEqual(rotation["client_id"], client_id)
        t.assertNotEqual(rotation["client_secret"], created["client_secret"])
        t.assertIsInstance(rotation["previous_secret_expires_at"], int)
        shown = json.loads(self.run_ok("show", client_id))
        t.assertEqual(shown["previous_secret_expires_at"], rotation["previous_secret_expires_at"])
        t.assertNotIn(rotation["client_secret"], json.dumps(shown))

        t.assertIn("deleted", self.run_ok("delete", client_id))
        listed = json.loads(self.run_ok("list", "--json"))
        t.assertEqual(sorted(c["client_id"] for c in listed), sorted(others))

    def test_unknown_client_one_line(self) -> None:
        t: Any = self
        for action in ("show", "delete", "rotate-secret"):
            # a client id may start with "-": it is never taken for an option
            done = run_admin("--store", self.url, "clients", action, "-nobody", cwd=self.tmp)
            t.assertEqual(done.returncode, 1, done.stderr)
            t.assertEqual(done.stderr, "ccserver: no client '-nobody'\n")

    def test_grant_types(self) -> None:
        """
        The operator grants token exchange (a privileged grant) from the
        command; a grant type no plugin offers is refused in one line.
        """
        t: Any = self
        exchange = "urn:ietf:params:oauth:grant-type:token-exchange"
        created = json.loads(
            self.run_ok(
                "create", "--name", "b", "--scope", "read",
                "--grant-type", exchange, "--grant-type", "client_credentials",
            )
        )
        t.assertEqual(created["grant_types"], [exchange, "client_credentials"])
        t.assertEqual(json.loads(self.run_ok("create", "--name", "c", "--scope", "read"))["grant_types"], ["client_credentials"])
        done = run_admin(
            "--store", self.url, "clients", "create", "--name", "x", "--scope", "read",
            "--grant-type", "password", cwd=self.tmp,
        )
        t.assertEqual(done.returncode, 1)
        t.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        t.assertIn("invalid_client_metadata: grant_types: this server does not issue 'password'", done.stderr)

    def test_hostile_name_escaped(self) -> None:
        """
        A client's name holds what its registrant chose: every output shows
        its control and bidi characters escaped, and the JSON ones still
        give the name itself.
        """
        t: Any = self
        created = self.run_ok("create", "--name", HOSTILE, "--scope", "read")
        client_id = json.loads(created)["client_id"]
        outputs = {
            "create": created,
            "list": self.run_ok("list"),
            "list --json": self.run_ok("list", "--json"),
            "show": self.run_ok("show", client_id),
        }
        for action, output in outputs.items():
            t.assertEqual(raw_characters(output.replace("\n", "")), set(), action)
        t.assertIn("Billing\\u001b[2J\\u001b[31m\\u000dOK", outputs["list"])
        t.assertIn("\\u009b2J\\u202egnillib", outputs["show"])
        for action in ("create", "list --json", "show"):
            document = json.loads(outputs[action])
            name = (document[0] if isinstance(document, list) else document)["client_name"]
            t.assertEqual(name, HOSTILE, action)

    def test_unstorable_client_id_one_line(self) -> None:
        """
        A client id that could be no client's is refused before the store is
        asked (a lone surrogate, from bytes that are not UTF-8, cannot even
        be encoded for it), in one line that does not repeat it.
        """
        t: Any = self
        actions = ("show", "delete", "rotate-secret")
        for index, client_id in enumerate(("a\x1b[2Jb", "a\x9bb", "a\u202eb", "a\udcffb", "a" * 257)):
            action = actions[index % len(actions)]
            done = run_admin("--store", self.url, "clients", action, client_id, cwd=self.tmp)
            t.assertEqual(done.returncode, 1, done.stderr)
            t.assertRegex(done.stderr, r"^ccserver: client_id must be [^\n]*\n$", action)

    def test_bad_metadata_one_line(self) -> None:
        t: Any = self
        done = run_admin(
            "--store", self.url, "clients", "create", "--name", "x", "--scope", 'a "b', cwd=self.tmp
        )
        t.assertEqual(done.returncode, 1)
        t.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        t.assertIn("invalid_client_metadata: scope", done.stderr)


class SQLiteClientsCommandTests(ClientsCommandMixin, unittest.TestCase):
    kind = "sqlite"

    def test_running_server_follows(self) -> None:
        """
        A running server follows the command's changes within its client
        cache time: a created client gets tokens; after a rotation both
        secrets work until the grace ends; a deleted client gets none.
        """
        config = self.tmp / "ccserver.toml"
        config.write_text("[store]\nclient_cache_seconds = 0\n")
        with CCServerProcess(
            self.tmp, "--config", str(config), "--master-token", "m" * 32, store=self.url
        ) as server:
            created = self.create()
            client_id, old = created["client_id"], created["client_secret"]
            self.assertEqual(token(server, client_id, old), 200)
            rotation = json.loads(self.run_ok("rotate-secret", client_id, "--grace", "2"))
            new = rotation["client_secret"]
            self.assertEqual(token(server, client_id, new), 200)
            self.assertEqual(token(server, client_id, old), 200)
            # the old secret works until its grace ends, then is refused
            wait_until(
                lambda: token(server, client_id, old) == 401,
                interval=0.2,
                what="the old secret refused once its grace ended",
            )
            self.assertEqual(token(server, client_id, new), 200)
            # the same over HTTP, for the master token's holder
            response = requests.post(
                f"{server.url}/client-reg/{client_id}/rotate-secret",
                headers={"Authorization": f"Bearer {server.master_token}"},
                timeout=10,
            )
            self.assertEqual(response.status_code, 200, response.text)
            newest = response.json()["client_secret"]
            self.assertEqual(token(server, client_id, newest), 200)
            self.assertEqual(token(server, client_id, new), 200)  # in its grace
            self.run_ok("delete", client_id)
            self.assertEqual(token(server, client_id, newest), 401)


    def test_new_database_private(self) -> None:
        """
        The command makes a new SQLite file readable by its owner only, as
        the server does: it will hold digests and encrypted keys.
        """
        old = os.umask(0o022)
        self.addCleanup(os.umask, old)
        for command in ("clients", "keys"):
            path = self.tmp / f"new-{command}.db"
            done = run_admin("--store", f"sqlite:///{path}", command, "list", cwd=self.tmp)
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600, command)


class RedisClientsCommandTests(ClientsCommandMixin, unittest.TestCase):
    kind = "redis"


class PostgreSQLClientsCommandTests(ClientsCommandMixin, unittest.TestCase):
    kind = "postgresql"


class PackagingTests(unittest.TestCase):
    def setUp(self) -> None:
        import shutil
        import tempfile

        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-pkg-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_postgresql_without_psycopg_one_line(self) -> None:
        """
        --store postgresql:// without psycopg installed: one line naming
        the extra to install, no traceback, from twist ccserver and from
        the ccserver command alike.
        """
        url = "postgresql://ccserver@127.0.0.1:1/ccserver"
        blocked = "import sys; sys.modules['psycopg'] = None; "
        for code in (
            blocked + f"from ccserver.tap import main; main(['--store', {url!r}])",
            blocked + f"from ccserver.admin import main; main(['--store', {url!r}, 'clients', 'list'])",
        ):
            done = run_python("-c", code, cwd=self.tmp)
            self.assertNotEqual(done.returncode, 0)
            self.assertNotIn("Traceback", done.stderr)
            self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
            self.assertIn("pip install 'ccserver[postgresql]'", done.stderr)

    def test_txredisapi_is_a_plain_dependency(self) -> None:
        import configparser

        setup = configparser.ConfigParser()
        setup.read(REPO / "setup.cfg")
        requires = setup["options"]["install_requires"]
        self.assertIn("txredisapi", requires)


class SharedKeyTests(unittest.TestCase):
    """
    A second instance on a shared store needs the first one's
    key-encryption key: without it, it stops with one line and leaves no
    key file of its own behind; with CCSERVER_KEY_ENCRYPTION_KEY it starts.
    """

    def setUp(self) -> None:
        import shutil
        import tempfile

        self.tmp = Path(tempfile.mkdtemp(prefix="ccserver-kek-"))
        self.addCleanup(shutil.rmtree, self.tmp, True)
        server = redis_server()
        server.flushall()
        self.url = server.url_for(5)

    def test_second_instance_without_the_key(self) -> None:
        first_dir, second_dir = self.tmp / "first", self.tmp / "second"
        second_dir.mkdir()
        with CCServerProcess(first_dir, "--master-token", "m" * 32, store=self.url):
            pass
        key = (first_dir / "ccserver.key-encryption-key").read_text().strip()

        done = run_ccserver("--listen", "tcp:0:interface=127.0.0.1", "--store", self.url,
                            "--master-token", "m" * 32, cwd=second_dir)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertNotIn("Traceback", done.stderr)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
        self.assertIn("copy the key file", done.stderr)
        self.assertIn("CCSERVER_KEY_ENCRYPTION_KEY", done.stderr)
        self.assertFalse((second_dir / "ccserver.key-encryption-key").exists())

        # the command refuses too, and leaves no file either
        listed = run_admin("--store", self.url, "keys", "list", cwd=second_dir)
        self.assertEqual(listed.returncode, 1)
        self.assertIn("copy the key file", listed.stderr)
        self.assertFalse((second_dir / "ccserver.key-encryption-key").exists())

        env = {"CCSERVER_KEY_ENCRYPTION_KEY": key}
        with CCServerProcess(second_dir, "--master-token", "m" * 32, store=self.url, env=env) as second:
            self.assertEqual(requests.get(second.url + "/jwks.json", timeout=10).status_code, 200)
        self.assertFalse((second_dir / "ccserver.key-encryption-key").exists())
        listed = run_admin("--store", self.url, "keys", "list", cwd=second_dir, env=env)
        self.assertEqual(listed.returncode, 0, listed.stderr)

    def test_bad_key_in_the_environment_not_echoed(self) -> None:
        done = run_admin("--store", self.url, "keys", "list", cwd=self.tmp,
                        env={"CCSERVER_KEY_ENCRYPTION_KEY": "not-a-fernet-key"})
        self.assertEqual(done.returncode, 1)
        self.assertIn("CCSERVER_KEY_ENCRYPTION_KEY: is not a Fernet key", done.stderr)
        self.assertNotIn("not-a-fernet-key", done.stderr)
