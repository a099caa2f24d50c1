"""
Help texts are for people: plain text, never the epytext markup of the
docstrings they are sometimes written beside.
"""

from __future__ import annotations

import contextlib
import io
import re

from twisted.trial.unittest import SynchronousTestCase

from ccserver.admin import main
from ccserver.tap import Options

#: Epytext that must never reach a user's terminal.
MARKUP = ("C{", "L{", "I{", "B{", "U{", "@param", "@ivar", "@return")


def assert_plain(case: SynchronousTestCase, text: str, what: str) -> None:
    case.assertTrue(text.strip(), f"{what}: no help printed")
    for markup in MARKUP:
        case.assertNotIn(markup, text, f"{what} prints epytext {markup!r}:\n{text}")


def admin_help(*command: str) -> str:
    """
    What C{ccserver COMMAND... --help} prints.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main([*command, "--help"])
    return out.getvalue()


def subcommands(usage: str) -> list[str]:
    """
    The subcommands an argparse help text offers: its C{{a,b,c}} choices.
    """
    found = re.search(r"\{([\w,-]+)\}", usage)
    return found.group(1).split(",") if found else []


class AdminHelpTests(SynchronousTestCase):
    def test_every_command_plain(self) -> None:
        """
        C{ccserver --help} and every subcommand's C{--help}, found by walking
        the choices each help offers, so a new subcommand is covered too.
        """
        seen = []
        pending: list[tuple[str, ...]] = [()]
        while pending:
            command = pending.pop()
            text = admin_help(*command)
            assert_plain(self, text, " ".join(("ccserver", *command, "--help")))
            seen.append(command)
            pending.extend((*command, sub) for sub in subcommands(text))
        self.assertIn(("keys", "rotate"), seen)
        self.assertIn(("clients", "rotate-secret"), seen)
        self.assertGreaterEqual(len(seen), 5)

    def test_description(self) -> None:
        self.assertIn("ccserver: the administration command", admin_help())


class TwistHelpTests(SynchronousTestCase):
    def test_plain(self) -> None:
        """
        usage.Options prints opt_ docstrings as written.
        """
        text = Options().getUsage()
        assert_plain(self, text, "twist ccserver --help")
        self.assertIn("--workers", text)

    def test_no_docstring_indentation(self) -> None:
        """
        A docstring over several lines would print its indentation inside
        the help text: in the options, the only run of spaces in a line is
        the one between an option and its help.
        """
        options = Options().getUsage().split("Options:\n", 1)[1].split("\n\n", 1)[0]
        for line in options.splitlines():
            gaps = len(re.findall(r"\S {2,}\S", line.strip()))
            self.assertLessEqual(gaps, 1 if line.lstrip().startswith("-") else 0, line)
