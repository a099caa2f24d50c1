"""
Every error code the server sends is in L{ccserver.errors.ERROR_CODES},
the one list, and has a metrics label of its own: the codes are found in
the source (every C{OAuthError} made with a literal code, and every error
document written by hand), so that a new code cannot be sent uncounted.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from ccserver.errors import ERROR_CODES
from ccserver.metrics import OTHER_ERROR
from tests.test_metrics import new_metrics

PACKAGE = Path(__file__).resolve().parent.parent / "ccserver"

#: The one place a code that is not a literal is sent: the webhook grant
#: handler passes on its web service's own code (counted as "other").
PASSED_ON = {("handlers/webhook.py", "denial_from_answer")}


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


class _CodeFinder(ast.NodeVisitor):
    """
    Collects the codes of one module, and the functions that send a code
    which is not a literal.
    """

    def __init__(self, module: str) -> None:
        self.module = module
        self.functions = ["<module>"]
        self.codes: set[str] = set()
        self.computed: set[tuple[str, str]] = set()

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Call(self, node: ast.Call) -> None:
        if _called(node) == "OAuthError":
            argument = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg == "error"), None
            )
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                self.codes.add(argument.value)
            else:
                self.computed.add((self.module, self.functions[-1]))
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if (
                isinstance(key, ast.Constant)
                and key.value == "error"
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                self.codes.add(value.value)
        self.generic_visit(node)


def sent_codes() -> tuple[set[str], set[tuple[str, str]]]:
    """
    The error codes the package's source sends: the literal first
    argument (or C{error=}) of every C{OAuthError(...)}, and the literal
    C{"error"} of every dict written as an error document.  And where a
    code is not a literal: (module, function).
    """
    codes: set[str] = set()
    computed: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        finder = _CodeFinder(path.relative_to(PACKAGE).as_posix())
        finder.visit(ast.parse(path.read_text(), str(path)))
        codes |= finder.codes
        computed |= finder.computed
    return codes, computed


class ErrorCodesTests(SynchronousTestCase):
    def test_every_code_sent_is_listed(self) -> None:
        codes, computed = sent_codes()
        # the search finds what it should: the DPoP codes among them
        self.assertIn("invalid_dpop_proof", codes)
        self.assertIn("use_dpop_nonce", codes)
        self.assertEqual(sorted(codes - set(ERROR_CODES)), [])
        self.assertEqual(computed - PASSED_ON, set(), "a code that is not a literal")

    def test_listed_once(self) -> None:
        self.assertEqual(len(set(ERROR_CODES)), len(ERROR_CODES))
        self.assertNotIn(OTHER_ERROR, ERROR_CODES)

    def test_every_code_has_its_own_label(self) -> None:
        metrics = new_metrics()
        for code in ERROR_CODES:
            metrics.token_failed(code)
        for code in ERROR_CODES:
            self.assertEqual(
                metrics.registry.get_sample_value("ccserver_token_errors_total", {"error": code}),
                1,
                code,
            )
        self.assertEqual(
            metrics.registry.get_sample_value("ccserver_token_errors_total", {"error": OTHER_ERROR}),
            0,
        )
