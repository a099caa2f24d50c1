"""
Configuration: TOML, environment and command line, and the errors that stop
a start before anything listens.  The same errors seen from a real
C{twist ccserver} process are in L{tests.test_config_process}.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import evolve, field, fields, frozen
from twisted.trial.unittest import SynchronousTestCase

from ccserver.config import (
    ANY_TABLE,
    FILE_TYPES,
    KEY_ENCRYPTION_KEY_ENV,
    NOT_IN_FILE,
    ClientsConfig,
    Config,
    ConfigError,
    KeysConfig,
    StoreConfig,
    TokenConfig,
    load_config,
    toml_schema,
)
from tests.helpers import temp_dir


def write(tmp: Path, text: str) -> str:
    path = tmp / "ccserver.toml"
    path.write_text(text)
    return str(path)


class LoadConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = temp_dir(self)

    def load(self, toml: str | None = None, env: dict[str, str] | None = None, **cli: Any) -> Config:
        if toml is not None:
            cli["config"] = write(self.tmp, toml)
        return load_config(cli, env or {})

    def assert_error(self, message: str, toml: str | None = None, **cli: Any) -> None:
        with self.assertRaises(ConfigError) as caught:
            self.load(toml, **cli)
        self.assertIn(message, str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_defaults(self) -> None:
        config = self.load()
        self.assertEqual(config.listen, ("tcp:8080",))
        self.assertEqual(config.issuer, "http://localhost:8080")
        self.assertEqual(config.store.url, "sqlite:///ccserver.db")
        self.assertEqual(config.tokens.format, "jwt")
        self.assertEqual(config.tokens.lifetime, 3600)
        self.assertEqual(config.tokens.signing_alg, "RS256")
        self.assertEqual(config.tokens.rsa_signing, "auto")
        self.assertEqual(config.grant_handler, "registered-scope")
        self.assertIsNone(config.master_token)

    def test_jwks_uri_private_networks(self) -> None:
        config = self.load('[client_auth]\njwks_uri_private_networks = ["127.0.0.0/8", "10.1.2.3"]\n')
        self.assertEqual(config.client_auth.jwks_uri_private_networks, ("127.0.0.0/8", "10.1.2.3"))
        policy = config.client_auth.jwks_uri_policy
        self.assertEqual(policy.check_url("http://127.0.0.1:8080/j"), "http://127.0.0.1:8080/j")
        self.assertEqual(self.load().client_auth.jwks_uri_policy.private_networks, ())
        self.assert_error(
            "[client_auth] jwks_uri_private_networks: 'intranet' is not an IP address or network",
            '[client_auth]\njwks_uri_private_networks = ["intranet"]\n',
        )
        self.assert_error(
            "client_auth.jwks_uri_private_networks: must be a list",
            '[client_auth]\njwks_uri_private_networks = "127.0.0.0/8"\n',
        )

    def test_issuer_follows_port(self) -> None:
        self.assertEqual(self.load(listen=["tcp:9000"]).issuer, "http://localhost:9000")
        self.assertEqual(
            self.load(listen=["tcp:port=9001:interface=127.0.0.1"]).issuer, "http://localhost:9001"
        )

    def test_toml(self) -> None:
        config = self.load(
            """
            listen = ["tcp:9000", "tcp6:9001"]
            issuer = "https://as.example.com/"
            master_token = "0123456789abcdef0123"
            [store]
            url = "memory://"
            timeout = 2
            client_cache_seconds = 0
            [tokens]
            format = "jwt"
            lifetime = 600
            signing_alg = "ES256"
            audience = ["https://api.example.com"]
            [grant_handler]
            name = "registered-scope"
            """
        )
        self.assertEqual(config.listen, ("tcp:9000", "tcp6:9001"))
        self.assertEqual(config.issuer, "https://as.example.com")
        self.assertEqual(config.master_token, "0123456789abcdef0123")
        self.assertEqual((config.store.url, config.store.timeout, config.store.client_cache_seconds), ("memory://", 2.0, 0.0))
        self.assertEqual((config.tokens.lifetime, config.tokens.signing_alg), (600, "ES256"))
        self.assertEqual(config.tokens.audience, ("https://api.example.com",))

    def test_command_line_wins(self) -> None:
        toml = 'issuer = "https://file.example.com"\nmaster_token = "from-the-file-0123456"\n[store]\nurl = "memory://"\n'
        config = self.load(
            toml,
            env={"CCSERVER_MASTER_TOKEN": "from-the-environment-0"},
            issuer="https://cli.example.com",
            store=f"sqlite:///{self.tmp}/x.db",
            listen=["tcp:7000"],
        )
        self.assertEqual(config.issuer, "https://cli.example.com")
        self.assertEqual(config.store.url, f"sqlite:///{self.tmp}/x.db")
        self.assertEqual(config.master_token, "from-the-environment-0")
        self.assertEqual(config.listen, ("tcp:7000",))
        config = self.load(toml, env={"CCSERVER_MASTER_TOKEN": "from-the-environment-0"}, master_token="from-the-command-line")
        self.assertEqual(config.master_token, "from-the-command-line")

    def test_master_token_not_in_repr(self) -> None:
        self.assertNotIn("0123456789abcdef0123", repr(self.load(master_token="0123456789abcdef0123")))

    def test_errors_name_the_key(self) -> None:
        self.assert_error("frobnicate: unknown key", "frobnicate = 1\n")
        self.assert_error("tokens.colour: unknown key", "[tokens]\ncolour = 1\n")
        self.assert_error("tokens.lifetime: must be an integer", '[tokens]\nlifetime = "an hour"\n')
        self.assert_error("[tokens] lifetime: must be greater than 0", "[tokens]\nlifetime = 0\n")
        self.assert_error("[tokens] signing_alg: 'HS256' is not one of", '[tokens]\nsigning_alg = "HS256"\n')
        self.assert_error("[tokens] format: 'paper'", '[tokens]\nformat = "paper"\n')
        self.assert_error(
            "[tokens] rsa_signing: 'gpu' is not one of auto, threads, inline",
            '[tokens]\nrsa_signing = "gpu"\n',
        )
        self.assert_error("store: must be a table", 'store = "memory://"\n')
        self.assert_error("store.timeout: must be a number", '[store]\ntimeout = "soon"\n')
        self.assert_error("[store] url: unknown scheme", '[store]\nurl = "mysql://x"\n')
        self.assert_error("issuer: 'ftp://x' is not an http or https URL", 'issuer = "ftp://x"\n')
        self.assert_error("issuer: 'https://x/?a=b' must have no query", 'issuer = "https://x/?a=b"\n')
        self.assert_error("master_token: must be at least 16", 'master_token = "short"\n')
        self.assert_error("listen: must be a list", 'listen = "tcp:80"\n')

    def test_empty_means_default(self) -> None:
        """
        An empty listen, issuer, store url or handler name is the default; an
        empty master token is an error, not "none given".
        """
        config = self.load('listen = []\nissuer = ""\n[store]\nurl = ""\n[grant_handler]\nname = ""\n')
        self.assertEqual(config, Config())
        self.assert_error("master_token: must be at least 16", 'master_token = ""\n')
        self.assert_error("[grant_handler] name: must be a string", "[grant_handler]\nname = []\n")

    def test_scopes_supported(self) -> None:
        self.assertEqual(self.load().discovery.scopes_supported, ())
        config = self.load('[discovery]\nscopes_supported = ["read", "write"]\n')
        self.assertEqual(config.discovery.scopes_supported, ("read", "write"))
        self.assert_error(
            "[discovery] scopes_supported: 'read write' is not a scope value",
            '[discovery]\nscopes_supported = ["read write"]\n',
        )

    def test_lifetime_errors(self) -> None:
        self.assert_error("[tokens] max_lifetime: must be greater than 0, not -5", "[tokens]\nmax_lifetime = -5\n")
        self.assert_error("[tokens] lifetime: 100000 is more than max_lifetime 86400", "[tokens]\nlifetime = 100000\n")
        self.assert_error("tokens.lifetime: must be an integer, not True", "[tokens]\nlifetime = true\n")
        self.assert_error("[store] timeout: must be greater than 0, not 0.0", "[store]\ntimeout = 0\n")

    def test_redis_wait(self) -> None:
        """
        [store] redis_wait_replicas and redis_wait_timeout: the defaults
        are the store's (1 replica with Sentinel, half the timeout), and a
        wait as long as an operation may take is refused.
        """
        config = self.load("[store]\nredis_wait_replicas = 2\nredis_wait_timeout = 0.5\n")
        self.assertEqual((config.store.redis_wait_replicas, config.store.redis_wait_timeout), (2, 0.5))
        self.assertEqual((Config().store.redis_wait_replicas, Config().store.redis_wait_timeout), (None, None))
        self.assert_error(
            "[store] redis_wait_replicas: must be 0 or more, not -1",
            "[store]\nredis_wait_replicas = -1\n",
        )
        self.assert_error(
            "store.redis_wait_replicas: must be an integer",
            "[store]\nredis_wait_replicas = 1.5\n",
        )
        self.assert_error(
            "[store] redis_wait_timeout: must be greater than 0 and less than [store] timeout (2), not 2",
            "[store]\ntimeout = 2\nredis_wait_timeout = 2\n",
        )
        self.assert_error(
            "[store] redis_wait_timeout: must be greater than 0",
            "[store]\nredis_wait_timeout = 0\n",
        )

    def test_purge_interval(self) -> None:
        """
        [store] purge_interval_seconds: 300 by default, any number of
        seconds greater than 0, or 0 (this instance never purges);
        anything else refused in one line.
        """
        self.assertEqual(Config().store.purge_interval_seconds, 300.0)
        self.assertEqual(self.load("[store]\npurge_interval_seconds = 5\n").store.purge_interval_seconds, 5.0)
        self.assertEqual(self.load("[store]\npurge_interval_seconds = 0.5\n").store.purge_interval_seconds, 0.5)
        self.assertEqual(self.load("[store]\npurge_interval_seconds = 0\n").store.purge_interval_seconds, 0.0)
        for bad in ("-1", "nan", "inf"):
            self.assert_error(
                "[store] purge_interval_seconds: must be a number of seconds greater than 0, or 0 for never, not ",
                f"[store]\npurge_interval_seconds = {bad}\n",
            )
        self.assert_error("store.purge_interval_seconds: must be a number", '[store]\npurge_interval_seconds = "5m"\n')

    def test_precedence(self) -> None:
        """
        Command line over environment over file, key by key; an empty option
        or variable is not given.
        """
        toml = 'master_token = "from-the-file-0123456"\n[grant_handler]\nname = "webhook"\nurl = "u"\n'
        config = self.load(toml, env={"CCSERVER_MASTER_TOKEN": ""}, master_token="", grant_handler="")
        self.assertEqual(config.master_token, "from-the-file-0123456")
        self.assertEqual((config.grant_handler, dict(config.grant_handler_config)), ("webhook", {"url": "u"}))
        config = self.load(toml, grant_handler="registered-scope", workers=0)
        self.assertEqual((config.grant_handler, config.workers), ("registered-scope", 1))

    def test_missing_store_folder(self) -> None:
        self.assert_error("--store: the folder 'no/such/folder' does not exist", store="sqlite:///no/such/folder/x.db")
        self.assert_error("[store] url: the folder", '[store]\nurl = "sqlite:////no/such/x.db"\n')

    def test_unreadable_config(self) -> None:
        self.assert_error("--config: cannot read", config=str(self.tmp / "missing.toml"))
        self.assert_error("is not valid TOML", "this is = = not toml")


class ExampleConfigTests(SynchronousTestCase):
    """
    etc/ccserver.toml is valid and shows every key.
    """

    example = Path(__file__).resolve().parent.parent / "etc" / "ccserver.toml"

    def test_loads(self) -> None:
        config = load_config({"config": str(self.example)}, {})
        self.assertEqual(config.listen, ("tcp:8080",))
        self.assertEqual(config.grant_handler, "registered-scope")

    def test_every_key_shown(self) -> None:
        """
        Every key of the schema derived from the config classes, so a field
        added to one of them fails here until the example shows it.
        """
        text = self.example.read_text()
        for key, value in toml_schema().items():
            if isinstance(value, list):
                self.assertIn(f"[[{key}]]", text)
                for sub in value[0]:
                    self.assertRegex(text, rf"(?m)^#?{sub} = ", f"[[{key}]] {sub}")
            elif isinstance(value, dict) or value is ANY_TABLE:
                self.assertIn(f"[{key}]", text)
                for sub in value or ():
                    self.assertRegex(text, rf"(?m)^#?{sub} = ", f"[{key}] {sub}")
            else:
                self.assertRegex(text, rf"(?m)^#?{key} = ", key)
        self.assertRegex(text, r"(?m)^\[grant_handler\]\n(#.*\n)*name = ")

    def test_example_values_are_the_defaults(self) -> None:
        """
        The example's uncommented values are the defaults it says they are,
        but [keys] rotate_every: off by default (an upgrade changes
        nothing), on in the example that new installations start from.
        """
        defaults = Config()
        self.assertEqual(
            load_config({"config": str(self.example)}, {}),
            evolve(defaults, keys=evolve(defaults.keys, rotate_every=30 * 86400)),
        )


@frozen
class Section:
    """
    A config section as a new feature would add one.
    """

    colour: str = "blue"
    sizes: tuple[int, ...] = ()
    limit: float | None = None
    spelled: tuple[str, ...] = field(default=(), metadata={FILE_TYPES: (str, list)})
    hidden: int = field(default=0, metadata={NOT_IN_FILE: True})


@frozen
class Whole:
    verbose: bool = False
    section: Section = Section()


class SchemaTests(SynchronousTestCase):
    """
    The TOML schema is derived from the config classes, where every default
    is written once.
    """

    def test_a_new_field_is_a_key(self) -> None:
        self.assertEqual(
            toml_schema(Whole),
            {
                "verbose": (bool,),
                "section": {
                    "colour": (str,),
                    "sizes": (list,),
                    "limit": (float,),
                    "spelled": (str, list),
                },
            },
        )

    def test_every_field_of_config(self) -> None:
        schema = toml_schema()
        for attribute in fields(Config):
            if attribute.name == "grant_handler_config":
                self.assertNotIn(attribute.name, schema)
            else:
                self.assertIn(attribute.name, schema)
        for section, cls in (
            ("store", StoreConfig),
            ("tokens", TokenConfig),
            ("keys", KeysConfig),
            ("clients", ClientsConfig),
        ):
            self.assertEqual(
                sorted(schema[section]),
                sorted(a.name for a in fields(cls) if not a.metadata.get(NOT_IN_FILE)),
            )
        self.assertIs(schema["grant_handler"], ANY_TABLE)

    def test_the_schema_checks_files(self) -> None:
        """
        load_config checks a file against the derived schema.
        """
        self.assertEqual(toml_schema()["store"]["timeout"], (float,))
        self.assertEqual(toml_schema()["tokens"]["audience"], (str, list))
        self.assertEqual(toml_schema()["master_token"], (str,))

    def test_defaults_written_once(self) -> None:
        """
        With nothing given, load_config gives exactly the classes' defaults.
        """
        self.assertEqual(load_config({}, {}), Config())

    def test_default_issuer_follows_listen(self) -> None:
        self.assertEqual(Config().issuer, "http://localhost:8080")
        self.assertEqual(Config(listen=("tcp:9000",)).issuer, "http://localhost:9000")
        self.assertEqual(Config(listen=("unix:/run/ccserver.sock",)).issuer, "http://localhost")


class ClientsAndKeyConfigTests(SynchronousTestCase):
    def test_secret_rotation_grace(self) -> None:
        """
        [clients] secret_rotation_grace: 1800 s by default, from the file,
        never negative.
        """
        self.assertEqual(load_config({}, {}).clients.secret_rotation_grace, 1800)
        tmp = temp_dir(self)
        config = load_config({"config": write(tmp, "[clients]\nsecret_rotation_grace = 60\n")}, {})
        self.assertEqual(config.clients.secret_rotation_grace, 60)
        with self.assertRaises(ConfigError) as caught:
            load_config({"config": write(tmp, "[clients]\nsecret_rotation_grace = -1\n")}, {})
        self.assertIn("[clients] secret_rotation_grace", str(caught.exception))

    def test_key_encryption_key_from_the_environment_only(self) -> None:
        """
        CCSERVER_KEY_ENCRYPTION_KEY sets the key; a file cannot (it is no
        key of the schema), and the key is in no repr.
        """
        config = load_config({}, {KEY_ENCRYPTION_KEY_ENV: "the-key"})
        self.assertEqual(config.keys.encryption_key, "the-key")
        self.assertNotIn("the-key", repr(config))
        self.assertNotIn("encryption_key", toml_schema()["keys"])
        with self.assertRaises(ConfigError):
            load_config({"config": write(temp_dir(self), '[keys]\nencryption_key = "x"\n')}, {})
