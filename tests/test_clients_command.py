"""
The C{ccserver clients} command, run as a process against SQLite and real
Redis and PostgreSQL servers; and the start-up checks of packaging and
configuration: psycopg missing, and a second instance without the shared
key-encryption key.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import unittest
from pathlib import Path
from typing import Any

import pytest
import requests

from ccserver.testing.servers import clean_store_url, redis_server
from tests.process import REPO, CCServerProcess, run_admin, run_ccserver, run_python, wait_until
from tests.test_escaping import HOSTILE, raw_characters

pytestmark = pytest.mark.process


class Ran(subprocess.CompletedProcess[str]):
    """
    How a run of the command ended, and the audit events it wrote (on its
    standard error: C{[audit] log = "-"}, the default), apart from the rest
    of its standard error.
    """

    audit: list[dict[str, Any]]


def ccserver(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> Ran:
    """
    Run the C{ccserver} command with these arguments (and C{stdin} as its
    standard input).  Its audit events are taken out of its standard
    error (L{Ran.audit}), which keeps everything else.
    """
    done = run_admin(*args, cwd=cwd, env=env, stdin=stdin)
    ran = Ran(done.args, done.returncode, done.stdout, "")
    ran.audit = []
    for line in done.stderr.splitlines(keepends=True):
        if line.startswith('{"audit_version":'):
            ran.audit.append(json.loads(line))
        else:
            ran.stderr += line
    return ran


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
        done = ccserver("--store", self.url, "clients", *args, cwd=self.tmp)
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
            done = ccserver("--store", self.url, "clients", action, "-nobody", cwd=self.tmp)
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
        done = ccserver(
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
            done = ccserver("--store", self.url, "clients", action, client_id, cwd=self.tmp)
            t.assertEqual(done.returncode, 1, done.stderr)
            t.assertRegex(done.stderr, r"^ccserver: client_id must be [^\n]*\n$", action)

    def test_bad_metadata_one_line(self) -> None:
        t: Any = self
        done = ccserver(
            "--store", self.url, "clients", "create", "--name", "x", "--scope", 'a "b', cwd=self.tmp
        )
        t.assertEqual(done.returncode, 1)
        t.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        t.assertIn("invalid_client_metadata: scope", done.stderr)
        t.assertEqual(done.audit, [])

    def run_audited(self, *args: str) -> tuple[str, list[dict[str, Any]]]:
        options = list(args[:2]) if args[0] == "--config" else []
        done = ccserver(*options, "--store", self.url, *args[len(options):], cwd=self.tmp)
        self.assertEqual(done.returncode, 0, done.stderr)  # type: ignore[attr-defined]
        self.assertEqual(done.stderr, "")  # type: ignore[attr-defined]
        return done.stdout, done.audit

    def test_actions_told_to_the_audit_trail(self) -> None:
        """
        Each action that reads or changes a client is one event on standard
        error (with [audit] log = "-"), by the command's user; never a
        secret.
        """
        t: Any = self
        out, events = self.run_audited("clients", "create", "--name", "billing", "--scope", "read")
        created = json.loads(out)
        client_id = created["client_id"]
        me = {"type": "cli", "user": pwd.getpwuid(os.geteuid()).pw_name}
        [registered] = events
        t.assertEqual(registered["type"], "client.registered")
        t.assertEqual(registered["actor"], me)
        t.assertNotIn("source", registered)
        t.assertEqual(registered["client_id"], client_id)
        t.assertEqual(registered["privileged"]["scope"], "read")
        _, [read] = self.run_audited("clients", "show", client_id)
        t.assertEqual((read["type"], read["client_id"]), ("client.read", client_id))
        out, [rotated] = self.run_audited("clients", "rotate-secret", client_id, "--grace", "60")
        t.assertEqual(rotated["type"], "client.secret_rotated")
        t.assertEqual(rotated["previous_secret_expires_at"], json.loads(out)["previous_secret_expires_at"])
        _, [deleted] = self.run_audited("clients", "delete", client_id)
        t.assertEqual((deleted["type"], deleted["actor"]), ("client.deleted", me))
        _, listed = self.run_audited("clients", "list")
        t.assertEqual(listed, [])
        secrets = [created["client_secret"], created["registration_access_token"], json.loads(out)["client_secret"]]
        text = json.dumps([registered, read, rotated, deleted])
        for secret in secrets:
            t.assertNotIn(secret, text)

    def test_sudo_user(self) -> None:
        t: Any = self
        done = ccserver(
            "--store", self.url, "clients", "create", "--name", "x", cwd=self.tmp,
            env={"SUDO_USER": "alice"},
        )
        t.assertEqual(done.audit[0]["actor"]["sudo_user"], "alice")

    def test_keys_told_to_the_audit_trail(self) -> None:
        t: Any = self
        _, listed = self.run_audited("keys", "list")
        t.assertEqual(listed, [])
        _, [first] = self.run_audited("keys", "rotate", "--delay", "0")
        t.assertEqual(first["type"], "key.created")
        _, events = self.run_audited("keys", "rotate", "--delay", "0")
        t.assertEqual([e["type"] for e in events], ["key.created", "key.retired"])
        new, old = events
        t.assertEqual(old["kid"], first["kid"])
        t.assertEqual(new["active_from"], old["retired_at"])
        t.assertEqual(new["actor"]["type"], "cli")
        # a key of another algorithm than the configured one, retired now
        config = self.tmp / "es256.toml"
        config.write_text('[tokens]\nsigning_alg = "ES256"\n')
        _, [other] = self.run_audited("--config", str(config), "keys", "rotate", "--delay", "0")
        t.assertEqual(other["alg"], "ES256")
        _, [retired] = self.run_audited("keys", "retire", other["kid"])
        t.assertEqual((retired["type"], retired["kid"]), ("key.retired", other["kid"]))

    def test_unwritable_audit_trail_does_nothing(self) -> None:
        t: Any = self
        config = self.tmp / "audit.toml"
        config.write_text(f'[audit]\nlog = "{self.tmp / "missing" / "audit.log"}"\n')
        done = ccserver(
            "--config", str(config), "--store", self.url, "clients", "create", "--name", "x",
            cwd=self.tmp,
        )
        t.assertEqual(done.returncode, 1)
        t.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
        t.assertIn("[audit] log: cannot write the audit trail", done.stderr)
        t.assertEqual(json.loads(self.run_ok("list", "--json")), [])

    def test_audit_trail_to_a_file(self) -> None:
        t: Any = self
        log = self.tmp / "audit.log"
        config = self.tmp / "audit.toml"
        config.write_text(f'[audit]\nlog = "{log}"\n')
        done = ccserver(
            "--config", str(config), "--store", self.url, "clients", "create", "--name", "x",
            cwd=self.tmp,
        )
        t.assertEqual((done.returncode, done.stderr, done.audit), (0, "", []))
        [line] = log.read_text().splitlines()
        t.assertEqual(json.loads(line)["type"], "client.registered")

    def test_registration_tokens(self) -> None:
        """
        create prints the token once (and its id, limits, expiry and
        uses); list shows each without the token; revoke ends it; each
        told to the audit trail.
        """
        t: Any = self
        out, [created_event] = self.run_audited(
            "registration-tokens", "create", "--scope-limit", "read write", "--expires", "7d",
            "--uses", "10", "--note", "payments team", "--audience-limit", "https://api.example",
            "--auth-method-limit", "private_key_jwt", "--grant-type-limit", "client_credentials",
            "--json",
        )
        created = json.loads(out)
        token_id = created["id"]
        t.assertTrue(token_id.startswith("iat_"))
        t.assertGreaterEqual(len(created["initial_access_token"]), 43)
        t.assertEqual(
            {k: created[k] for k in ("uses", "max_uses", "note", "state", "scope_limit",
                                     "audience_limit", "auth_method_limit", "grant_type_limit")},
            {
                "uses": 0, "max_uses": 10, "note": "payments team", "state": "active",
                "scope_limit": ["read", "write"], "audience_limit": ["https://api.example"],
                "auth_method_limit": ["private_key_jwt"], "grant_type_limit": ["client_credentials"],
            },
        )
        t.assertLess(abs(created["expires_at"] - created["created_at"] - 7 * 86400), 1)
        t.assertEqual(created_event["type"], "initial_access_token.created")
        t.assertEqual(created_event["initial_access_token_id"], token_id)
        t.assertEqual(created_event["scope_limit"], ["read", "write"])
        t.assertEqual(created_event["note"], "payments team")
        t.assertNotIn(created["initial_access_token"], json.dumps(created_event))
        _, [other_event] = self.run_audited("registration-tokens", "create", "--json")
        out, events = self.run_audited("registration-tokens", "list", "--json")
        t.assertEqual(events, [])
        listed = json.loads(out)
        # oldest first, by the second each was made, then by id (two made
        # within one second come in the order of their ids)
        other_id = other_event["initial_access_token_id"]
        t.assertEqual({entry["id"] for entry in listed}, {token_id, other_id})
        t.assertEqual(listed, sorted(listed, key=lambda entry: (entry["created_at"], entry["id"])))
        [other] = [entry for entry in listed if entry["id"] == other_id]
        t.assertEqual(other["max_uses"], 1)
        t.assertLess(abs(other["expires_at"] - other["created_at"] - 86400), 1)
        t.assertNotIn(created["initial_access_token"], out)
        table, _ = self.run_audited("registration-tokens", "list")
        t.assertIn(token_id, table)
        t.assertIn("0/10", table)
        t.assertIn("payments team / scope: read write; audience: https://api.example", table)
        out, [revoked] = self.run_audited("registration-tokens", "revoke", token_id)
        t.assertIn("revoked", out)
        t.assertEqual(
            (revoked["type"], revoked["initial_access_token_id"]),
            ("initial_access_token.revoked", token_id),
        )
        listed = json.loads(self.run_audited("registration-tokens", "list", "--json")[0])
        # by id: the other may be listed first (made within the same second)
        [revoked_entry] = [entry for entry in listed if entry["id"] == token_id]
        t.assertEqual(revoked_entry["state"], "revoked")
        t.assertIsInstance(revoked_entry["revoked_at"], int)
        plain = ccserver("--store", self.url, "registration-tokens", "create", cwd=self.tmp)
        t.assertEqual(len(plain.stdout.splitlines()), 1)
        t.assertIn("registers 1 client until", plain.stderr)

    def test_registration_tokens_mistakes(self) -> None:
        t: Any = self
        for args, message in [
            (("--expires", "soon"), "--expires: 'soon' is not a duration"),
            (("--uses", "0"), "--uses: must be 1 to"),
            (("--note", "a\x1b[2Jb"), "--note: must be printable"),
            (("--scope-limit", 'a "b'), "--scope-limit: must be scope values"),
            (("--audience-limit", "not a uri"), "--audience-limit: 'not a uri'"),
            (("--auth-method-limit", "magic"), "--auth-method-limit: 'magic' is not one of"),
            (("--grant-type-limit", "password"), "--grant-type-limit: 'password' is not one of"),
        ]:
            done = ccserver("--store", self.url, "registration-tokens", "create", *args, cwd=self.tmp)
            t.assertEqual(done.returncode, 1, done.stderr)
            t.assertEqual(len(done.stderr.splitlines()), 1, done.stderr)
            t.assertIn(message, done.stderr)
        done = ccserver("--store", self.url, "registration-tokens", "revoke", "iat_nope", cwd=self.tmp)
        t.assertEqual((done.returncode, done.stderr), (1, "ccserver: no initial access token 'iat_nope'\n"))
        t.assertEqual(json.loads(self.run_audited("registration-tokens", "list", "--json")[0]), [])


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
            done = ccserver("--store", f"sqlite:///{path}", command, "list", cwd=self.tmp)
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
        listed = ccserver("--store", self.url, "keys", "list", cwd=second_dir)
        self.assertEqual(listed.returncode, 1)
        self.assertIn("copy the key file", listed.stderr)
        self.assertFalse((second_dir / "ccserver.key-encryption-key").exists())

        env = {"CCSERVER_KEY_ENCRYPTION_KEY": key}
        with CCServerProcess(second_dir, "--master-token", "m" * 32, store=self.url, env=env) as second:
            self.assertEqual(requests.get(second.url + "/jwks.json", timeout=10).status_code, 200)
        self.assertFalse((second_dir / "ccserver.key-encryption-key").exists())
        listed = ccserver("--store", self.url, "keys", "list", cwd=second_dir, env=env)
        self.assertEqual(listed.returncode, 0, listed.stderr)

    def test_bad_key_in_the_environment_not_echoed(self) -> None:
        done = ccserver("--store", self.url, "keys", "list", cwd=self.tmp,
                        env={"CCSERVER_KEY_ENCRYPTION_KEY": "not-a-fernet-key"})
        self.assertEqual(done.returncode, 1)
        self.assertIn("CCSERVER_KEY_ENCRYPTION_KEY: is not a Fernet key", done.stderr)
        self.assertNotIn("not-a-fernet-key", done.stderr)
