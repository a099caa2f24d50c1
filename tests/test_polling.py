"""
The one deadline poll (L{ccserver.testing.polling}): what ends a wait, and
what it says when it lasts too long.
"""

from __future__ import annotations

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from ccserver.testing.polling import NotYet, eventually, wait_until


class Answers:
    """
    A predicate that answers from a list, one answer (a value, or an
    exception to raise) a call.
    """

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class WaitUntilTests(SynchronousTestCase):
    def test_first_true_value(self) -> None:
        answers = Answers(None, NotYet("starting"), ConnectionRefusedError(), "up")
        self.assertEqual(
            wait_until(answers, interval=0, tolerate=(ConnectionRefusedError,)), "up"
        )
        self.assertEqual(answers.calls, 4)

    def test_other_error_at_once(self) -> None:
        answers = Answers(NotYet("starting"), RuntimeError("the server ended"))
        with self.assertRaises(RuntimeError):
            wait_until(answers, interval=0, tolerate=(OSError,))
        self.assertEqual(answers.calls, 2)

    def test_deadline(self) -> None:
        with self.assertRaises(AssertionError) as raised:
            wait_until(Answers(NotYet("still loading")), 0, 0, what="the server ready")
        self.assertEqual(
            str(raised.exception),
            "the server ready did not happen within 0 s (last: NotYet('still loading'))",
        )


class EventuallyTests(SynchronousTestCase):
    """
    L{eventually} waits on the clock it is given, for the wait between two
    calls and for its deadline alike.
    """

    def test_waits_on_the_clock(self) -> None:
        clock = Clock()
        answers = Answers(False, False, "done")
        d = ensureDeferred(eventually(answers, clock, 10, 1))
        self.assertEqual(answers.calls, 1)
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(self.successResultOf(d), "done")
        self.assertEqual(answers.calls, 3)

    def test_awaits_the_answer(self) -> None:
        clock = Clock()
        d = ensureDeferred(eventually(lambda: deferLater(clock, 2, lambda: "stored"), clock))
        clock.advance(2)
        self.assertEqual(self.successResultOf(d), "stored")

    def test_deadline_on_the_clock(self) -> None:
        clock = Clock()
        d = ensureDeferred(
            eventually(Answers(NotYet("no primary")), clock, 5, 1, what="a write accepted")
        )
        clock.pump([1] * 4)
        self.assertNoResult(d)
        clock.advance(1)
        failure = self.failureResultOf(d, AssertionError)
        self.assertIn("a write accepted did not happen within 5 s", str(failure.value))
