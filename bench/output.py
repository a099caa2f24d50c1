"""
What the bench prints: a line at a time, flushed, so that a long run shows
its progress; errors loudly, so that no one reads past them.
"""


def say(message: str = "") -> None:
    print(message, flush=True)


def loud(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!! ERROR: {message}\n{bar}\n", flush=True)
