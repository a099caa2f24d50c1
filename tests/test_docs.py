"""
The documents say what the code does, and cannot drift from it unnoticed:

  - the code blocks follow the conventions of tests/docblocks.py, and the
    ones that do not run parse (a TOML block loads as a configuration);
  - docs/configuration.md's tables and etc/ccserver.toml against the
    configuration's classes (every key, its default, no key that does not
    exist), and every C{[table] key} any document names;
  - the layout in docs/architecture.md against the files;
  - every link between the pages, and the README's map of docs/;
  - the README's front door: the two commands, the Python version;
  - NEWS and the news fragments (towncrier builds them; no issue numbers);
  - no measured figure in the code's docstrings or comments (they live in
    bench/README.md, "Measurements behind design choices").

What runs is run by tests/test_docs_process.py.
"""

from __future__ import annotations

import configparser
import io
import json
import re
import subprocess
import sys
import tempfile
import tokenize
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml
from attrs import NOTHING, Factory, fields, has
from twisted.trial.unittest import SynchronousTestCase

from ccserver import config as config_module
from ccserver.config import ANY_TABLE, NOT_IN_FILE, Config, load_config, toml_schema
from ccserver.handlers import webhook
from ccserver.httpchannel import HTTPLimits
from ccserver.oauth.registration import PRIVILEGED_FIELDS
from ccserver.tap import Options
from tests.docblocks import PAGES, Block, problems, read_blocks
from tests.process import REPO

DOCS = REPO / "docs"
README = REPO / "README.md"
EXAMPLE_CONFIG = REPO / "etc" / "ccserver.toml"


def all_blocks() -> Iterator[Block]:
    for page in PAGES:
        yield from read_blocks(page)


def prose(page: Path) -> str:
    """
    A page without its code blocks.
    """
    lines = page.read_text().splitlines()
    for block in read_blocks(page):
        end = block.line + len(block.text.splitlines())
        for i in range(block.line - 1, min(end + 1, len(lines))):
            lines[i] = ""
    return "\n".join(lines)


def table_rows(text: str) -> list[list[str]]:
    """
    The body rows of the Markdown tables in C{text}, as stripped cells.
    """
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[\s|:-]+\|", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return [row for row in rows if row[0] not in ("key", "option", "variable", "store", "page")]


def sections(text: str, level: str) -> dict[str, str]:
    """
    The text under each heading of C{level} (e.g. C{"###"}), by heading.
    """
    parts = re.split(rf"(?m)^{level} (.+)$", text)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def toml_literal(value: Any) -> str:
    """
    A default as a TOML file writes it.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise TypeError(value)


#: The default of a key made from other values (the issuer's, from the port).
COMPUTED = object()

#: The arrays of tables of the file ([[name]]), and the class of each table.
ARRAYS_OF_TABLES = {
    name: get_args(annotation)[0]
    for name, annotation in get_type_hints(Config).items()
    if get_origin(annotation) is tuple and has(get_args(annotation)[0])
}


def file_keys() -> dict[str | None, dict[str, Any]]:
    """
    Every key of the file and its default, by table (None: the top level),
    from the configuration's classes: L{NOTHING} for a key unset by default,
    L{COMPUTED} for one made from other values.
    """
    keys: dict[str | None, dict[str, Any]] = {None: {}}
    for attribute in fields(Config):
        if attribute.metadata.get(NOT_IN_FILE):
            continue
        default = attribute.default
        if attribute.name == "grant_handler":
            keys["grant_handler"] = {"name": default}
        elif attribute.name in ARRAYS_OF_TABLES:
            # [[name]], each table of its class; a key that must be given
            # (an empty string by default) counts as unset
            keys[attribute.name] = {
                sub.name: (NOTHING if sub.default in (None, "") else sub.default)
                for sub in fields(ARRAYS_OF_TABLES[attribute.name])
            }
        elif has(type(default)):
            keys[attribute.name] = {
                sub.name: (NOTHING if sub.default is None else sub.default)
                for sub in fields(type(default))
                if not sub.metadata.get(NOT_IN_FILE)
            }
        elif isinstance(default, Factory):
            keys[None][attribute.name] = COMPUTED
        else:
            keys[None][attribute.name] = NOTHING if default is None else default
    return keys


class BlockTests(SynchronousTestCase):
    def test_conventions(self) -> None:
        """
        Every block's info string is one the harness knows: a language it
        runs, parses or shows, and known markers.
        """
        found = [problem for block in all_blocks() for problem in problems(block)]
        self.assertEqual(found, [])

    def test_toml_blocks_are_configurations(self) -> None:
        """
        Each TOML block loads as a ccserver configuration: every key it
        names exists, with a value of the right kind.
        """
        checked = 0
        for block in all_blocks():
            if block.language != "toml":
                continue
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                f.write(block.text)
                f.flush()
                try:
                    load_config({"config": f.name}, {})
                except Exception as e:
                    self.fail(f"{block.where}: {e}")
            checked += 1
        self.assertGreaterEqual(checked, 5)

    def test_json_and_yaml_blocks_parse(self) -> None:
        checked = 0
        for block in all_blocks():
            try:
                if block.language == "json":
                    json.loads(block.text)
                elif block.language == "yaml":
                    yaml.safe_load(block.text)
                else:
                    continue
            except ValueError as e:
                self.fail(f"{block.where}: {e}")
            checked += 1
        self.assertGreaterEqual(checked, 5)


class ConfigurationTableTests(SynchronousTestCase):
    """
    docs/configuration.md's tables against the configuration's classes.
    """

    page = (DOCS / "configuration.md").read_text()

    def documented(self) -> dict[str | None, dict[str, str]]:
        file_part = self.page.split("\n## The file\n", 1)[1].split("\n## ", 1)[0]
        tables: dict[str | None, dict[str, str]] = {}
        for heading, text in sections(file_part, "###").items():
            match = re.fullmatch(r"`\[\[?(\w+)\]\]?`", heading)
            table = match.group(1) if match else None
            if table is None:
                self.assertEqual(heading, "Top-level keys")
            rows = {}
            for row in table_rows(text):
                self.assertRegex(row[0], r"^`\w+`$", f"[{table}]")
                rows[row[0].strip("`")] = row[1]
            tables[table] = rows
        return tables

    def test_every_key_documented_and_none_else(self) -> None:
        documented = self.documented()
        expected = file_keys()
        self.assertEqual(
            {t: sorted(keys) for t, keys in documented.items()},
            {t: sorted(keys) for t, keys in expected.items()},
        )

    def test_defaults(self) -> None:
        """
        A key's default cell starts with its default as TOML writes it; a
        key unset by default says "none".
        """
        documented = self.documented()
        for table, keys in file_keys().items():
            for key, default in keys.items():
                cell = documented[table][key]
                where = f"[{table}] {key}" if table else key
                if default is NOTHING:
                    self.assertTrue(cell.startswith("none"), f"{where}: {cell}")
                elif default is not COMPUTED:
                    self.assertTrue(
                        cell.startswith(f"`{toml_literal(default)}`"),
                        f"{where}: the default is {toml_literal(default)}, the docs say {cell}",
                    )

    def test_command_line(self) -> None:
        """
        The options table: every option of C{twist ccserver} (but the
        internal --inherit-fd), the key each sets, and its default.
        """
        options = {
            name.removeprefix("opt_").replace("_", "-")
            for name in dir(Options)
            if name.startswith("opt_")
        }
        options |= {parameter[0] for parameter in Options.optParameters}
        options.discard("inherit-fd")
        part = sections(self.page, "##")["The command line"]
        rows = {re.match(r"`--([\w-]+)", row[0]).group(1): row for row in table_rows(part)}  # type: ignore[union-attr]
        self.assertEqual(sorted(rows), sorted(options))
        for option, path in config_module._COMMAND_LINE.items():
            key = path[0] if len(path) == 1 else f"[{path[0]}] {path[1]}"
            self.assertEqual(rows[option.replace("_", "-")][1], f"`{key}`", option)
        defaults = {
            "listen": Config().listen[0],
            "store": Config().store.url,
            "grant-handler": Config().grant_handler,
            "workers": Config().workers,
        }
        for option, value in defaults.items():
            self.assertTrue(rows[option][2].startswith(f"`{value}`"), rows[option])

    def test_environment(self) -> None:
        part = sections(self.page, "##")["The environment"]
        rows = {row[0].strip("`"): row[1] for row in table_rows(part)}
        expected = {
            variable: f"`{path[0]}`" if len(path) == 1 else f"`[{path[0]}] {path[1]}`"
            for variable, path in config_module._ENVIRONMENT.items()
        }
        self.assertEqual(rows, expected)

    def test_grant_handler_keys(self) -> None:
        """
        The webhook's keys in docs/grant-handlers.md are the ones it takes.
        """
        page = (DOCS / "grant-handlers.md").read_text()
        part = sections(page, "##")["The webhook handler"].split("\n### ", 1)[0]
        keys = [row[0].strip("`") for row in table_rows(part)]
        self.assertEqual(sorted(keys), sorted(webhook._KEYS))
        self.assertRegex(page, rf"(?m)^timeout = {toml_literal(webhook.DEFAULT_TIMEOUT)} ")
        self.assertIn(f"default {toml_literal(webhook.DEFAULT_TIMEOUT)}:", page)

    def test_http_limits_table(self) -> None:
        """
        docs/security.md's table of HTTP limits names each [http] key
        with its default.
        """
        page = (DOCS / "security.md").read_text()
        named = dict(re.findall(r"`(\w+) = (\d+)`", sections(page, "##")["HTTP limits"]))
        self.assertEqual(
            named,
            {a.name: toml_literal(a.default) for a in fields(HTTPLimits)},
        )


#: C{[table] key} as a document names a key, e.g. C{[tokens] max_lifetime}.
_NAMED_KEY = re.compile(r"\[(\w+)\] `?(\w+)`?")


class NamedKeysTests(SynchronousTestCase):
    def test_every_named_key_exists(self) -> None:
        """
        Wherever a page names a key as C{[table] key}, the key exists (a
        renamed or removed key leaves no page pointing at it).
        """
        keys = file_keys()
        schema = toml_schema()
        for page in (*PAGES, EXAMPLE_CONFIG):
            text = page.read_text()
            for span in re.findall(r"`([^`\n]+)`", text) + re.findall(r"\(`?(\[\w+\] \w+)", text):
                for table, key in _NAMED_KEY.findall(span):
                    # [grant_handler]'s keys are the handler's own: each
                    # plugin says which (the webhook's: test_grant_handler_keys)
                    if table not in schema or schema[table] is ANY_TABLE:
                        continue
                    # the environment's keys too ([keys] encryption_key)
                    section = getattr(Config(), table)
                    allowed = set(keys[table]) | {a.name for a in fields(type(section))}
                    self.assertIn(key, allowed, f"{page.relative_to(REPO)}: [{table}] {key}")

    def test_privileged_fields(self) -> None:
        """
        docs/clients.md names every privileged field, as the code has them.
        """
        part = sections((DOCS / "clients.md").read_text(), "##")["What a client may change"]
        paragraph = part.split("**privileged fields**")[1].split("are the\noperator's")[0]
        named = set(re.findall(r"`(\w+)`", paragraph))
        self.assertEqual(named, set(PRIVILEGED_FIELDS))


class ExampleConfigTests(SynchronousTestCase):
    """
    etc/ccserver.toml: every key (tests/test_config.py checks that it shows
    each, at its default), each with a comment, and nothing else.
    """

    text = EXAMPLE_CONFIG.read_text()

    def key_lines(self) -> Iterator[tuple[int, str | None, str]]:
        """
        (line number, table, key) for each key, set or commented out.
        """
        table = None
        for number, line in enumerate(self.text.splitlines()):
            # a table, or an array of tables (commented out: an example)
            heading = re.fullmatch(r"\[(\w+)\]|#?\[\[(\w+)\]\]", line)
            if heading:
                table = heading.group(1) or heading.group(2)
                continue
            key = re.match(r"#?(\w+) = ", line)
            if key:
                yield number, table, key.group(1)

    def test_every_key_commented(self) -> None:
        """
        Right above each key, a comment says what it is.
        """
        lines = self.text.splitlines()
        for number, table, key in self.key_lines():
            self.assertTrue(
                lines[number - 1].startswith("# "), f"[{table}] {key} has no comment above it"
            )

    def test_no_key_that_does_not_exist(self) -> None:
        keys = file_keys()
        for _, table, key in self.key_lines():
            if table == "grant_handler":
                self.assertIn(key, {"name", *webhook._KEYS})
            else:
                self.assertIn(key, keys[table], f"[{table}] {key}")

    def test_extras_named_install_something(self) -> None:
        """
        Every C{pip install '...[extra]'} a page or the example names is an
        extra of setup.cfg that installs something (the Redis driver is a
        plain dependency: C{[redis]} installs nothing).
        """
        setup = configparser.ConfigParser()
        setup.read(REPO / "setup.cfg")
        extras = {
            name: value.split("\n")
            for name, value in setup["options.extras_require"].items()
        }
        for page in (*PAGES, EXAMPLE_CONFIG):
            for extra in re.findall(r"pip install '[\w.]*\[(\w+)\]'", page.read_text()):
                self.assertTrue(
                    any(line.strip() for line in extras.get(extra, [])),
                    f"{page.relative_to(REPO)}: the [{extra}] extra installs nothing",
                )

    def test_stores_built_in_or_extra(self) -> None:
        """
        docs/stores.md says a store is built in exactly when its driver is
        a dependency of the package.
        """
        setup = configparser.ConfigParser()
        setup.read(REPO / "setup.cfg")
        required = setup["options"]["install_requires"]
        drivers = {"redis": "txredisapi", "postgresql": "psycopg"}
        rows = table_rows((DOCS / "stores.md").read_text())
        for scheme, driver in drivers.items():
            [row] = [row for row in rows if row[0].startswith(f"`{scheme}://")]
            self.assertEqual(row[2].startswith("built in"), driver in required, row)


class LayoutTests(SynchronousTestCase):
    """
    docs/architecture.md's layout is the tree as it is.
    """

    def entries(self) -> list[str]:
        """
        The paths the layout block names: one entry a line, nested by two
        spaces; longer indentation continues a description.
        """
        page = (DOCS / "architecture.md").read_text()
        layout = sections(page, "##")["Layout"]
        [block] = re.findall(r"```\n(.*?)```", layout, re.DOTALL)
        paths: list[str] = []
        parents: list[str] = []
        for line in block.splitlines():
            indent = len(line) - len(line.lstrip(" "))
            if indent % 2 or indent > 6 or not line.strip():
                continue
            name = line.split()[0]
            parents = parents[: indent // 2]
            path = "".join(parents) + name
            paths.append(path)
            if name.endswith("/"):
                parents.append(name)
        return paths

    def test_every_path_exists(self) -> None:
        for path in self.entries():
            self.assertTrue((REPO / path).exists(), f"{path} is in the layout, not in the tree")

    def test_every_module_listed(self) -> None:
        listed = set(self.entries())
        for module in sorted((REPO / "ccserver").rglob("*.py")):
            path = str(module.relative_to(REPO))
            if module.name == "__init__.py" and module.parent.name != "ccserver":
                path = str(module.parent.relative_to(REPO)) + "/"
            self.assertIn(path, listed, f"{path} is in the tree, not in the layout")
        for folder in sorted(p for p in (REPO / "ccserver").rglob("*") if p.is_dir()):
            if folder.name != "__pycache__":
                self.assertIn(str(folder.relative_to(REPO)) + "/", listed)


def slug(heading: str) -> str:
    """
    GitHub's anchor for a heading.
    """
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", prose(page)):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


class LinkTests(SynchronousTestCase):
    def test_links_resolve(self) -> None:
        """
        Every relative link of the README and docs/ names a file that
        exists, and a heading of it that exists.
        """
        checked = 0
        for page in PAGES:
            for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                linked = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(REPO)}: {target}"
                self.assertTrue(linked.exists(), where)
                if anchor:
                    self.assertEqual(linked.suffix, ".md", where)
                    self.assertIn(anchor, anchors(linked), where)
                checked += 1
        self.assertGreater(checked, 50)

    def test_readme_maps_every_page(self) -> None:
        """
        The README's map of docs/ links every page of docs/ (a new page
        gets a row), and lists nothing that is not there.
        """
        part = sections(README.read_text(), "##")["Documentation"]
        linked = set(re.findall(r"\]\(docs/([^)#]+)\)", part))
        pages = {p.name for p in DOCS.iterdir() if p.suffix in (".md", ".yaml")}
        self.assertEqual(linked, pages)


class FrontDoorTests(SynchronousTestCase):
    def test_two_commands(self) -> None:
        """
        The README's first block is the two commands, and CI runs the
        second.
        """
        first = read_blocks(README)[0]
        self.assertEqual(first.text, "pip install . && twist ccserver\nsh tests/run.sh\n")
        self.assertIn("tests/run.sh", (REPO / ".ci" / "run").read_text())

    def test_python_version(self) -> None:
        setup = configparser.ConfigParser()
        setup.read(REPO / "setup.cfg")
        version = setup["options"]["python_requires"].removeprefix(">=").strip()
        self.assertIn(f"Python {version} or later", prose(README))

    def test_apt_packages_named(self) -> None:
        """
        The README names what the test command installs.
        """
        text = prose(README)
        for package in ("redis-server", "curl", "sqlite3"):
            self.assertIn(package, (REPO / ".ci" / "apt-packages").read_text())
            self.assertIn(f"`{package}`", text)


class GuaranteeTests(SynchronousTestCase):
    """
    What the README and docs/security.md say the brute-force limits
    guarantee is what the defaults give: 60 x B guesses an hour from one
    address, 60 x min(N x B, C) from N addresses together, with the
    defaults they name.
    """

    def test_guesses_an_hour(self) -> None:
        from ccserver.config import LimitsConfig

        limits = LimitsConfig()
        per_address = 60 * limits.failed_auth_per_minute
        per_credential = 60 * limits.failed_auth_per_client_per_minute
        readme = " ".join(prose(README).split())
        self.assertIn(f"failed_auth_per_minute = {limits.failed_auth_per_minute}`", readme)
        self.assertIn(
            f"failed_auth_per_client_per_minute = {limits.failed_auth_per_client_per_minute}`",
            readme,
        )
        self.assertIn(f"{per_address:,} guesses an hour at a credential from one", readme)
        self.assertIn(f"{per_credential:,} an hour from any number of addresses", readme)
        self.assertEqual(limits.known_source_seconds, 86400)
        self.assertIn("in the last day keep working", readme)
        security = " ".join((REPO / "docs" / "security.md").read_text().split())
        self.assertIn(f"60 x B guesses an hour ({per_address:,} by default)", security)
        self.assertIn(f"(min({per_address:,} N, {per_credential:,}) by default)", security)


class NewsTests(SynchronousTestCase):
    """
    NEWS is release notes, built by towncrier from newsfragments/.
    """

    def test_towncrier_builds(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "towncrier", "build", "--draft", "--version", "0.0.0"],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("0.0.0", result.stdout)
        fragments = sorted((REPO / "newsfragments").glob("+*.md"))
        self.assertTrue(fragments)
        for fragment in fragments:
            first_line = fragment.read_text().strip().splitlines()[0]
            self.assertIn(first_line[:40], result.stdout, fragment.name)

    def test_fragment_names(self) -> None:
        config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["towncrier"]
        types = {kind["directory"] for kind in config["type"]}
        for fragment in (REPO / "newsfragments").iterdir():
            if fragment.name == "README.md":
                continue
            self.assertRegex(fragment.name, r"^\+[a-z0-9-]+\.(\w+)\.md$")
            self.assertIn(fragment.name.split(".")[-2], types, fragment.name)

    def test_no_issue_numbers(self) -> None:
        """
        Release notes speak to users: no issue numbers, in the fragments
        or in NEWS.
        """
        issue = re.compile(r"(?i)\bissues? \d+|#\d+\b|\bgh-\d+")
        for path in [REPO / "NEWS", *(REPO / "newsfragments").glob("+*.md")]:
            self.assertIsNone(issue.search(path.read_text()), path.name)

    def test_no_benchmark_figures_in_news(self) -> None:
        """
        Figures go to bench/README.md, not to NEWS.
        """
        figure = re.compile(r"tokens/s|tokens per CPU|µs\b|\bp99\b|RSS|callgrind")
        for path in [REPO / "NEWS", *(REPO / "newsfragments").glob("+*.md")]:
            self.assertIsNone(figure.search(path.read_text()), path.name)


#: A measured figure: a time, a size, a rate, a percentage, a ratio.
_FIGURE = re.compile(
    r"~\s?\d"
    r"|\d[\d,.]*\s?(µs|us|ms|KiB|MiB|GiB|kB|MB|GB|tokens/s|requests/s|%)(?!\w)"
    r"|\d+(\.\d+)? times (faster|cheaper|slower|more|less|as)"
)


class FiguresTests(SynchronousTestCase):
    def test_no_figures_in_the_code(self) -> None:
        """
        The code's docstrings and comments say why a choice was made and
        point to bench/README.md for the figures, which go stale.
        """
        found = []
        for path in sorted((REPO / "ccserver").rglob("*.py")):
            source = io.StringIO(path.read_text()).readline
            for token in tokenize.generate_tokens(source):
                docstring = token.type == tokenize.STRING and token.string.lstrip("rbuf")[:3] in (
                    '"""',
                    "'''",
                )
                if token.type == tokenize.COMMENT or docstring:
                    for match in _FIGURE.finditer(token.string):
                        found.append(f"{path.relative_to(REPO)}:{token.start[0]}: {match.group()}")
        self.assertEqual(found, [])

    def test_design_measurements_section(self) -> None:
        """
        Where the code points for its figures is there.
        """
        bench = (REPO / "bench" / "README.md").read_text()
        self.assertIn("\n## Measurements behind design choices\n", bench)
