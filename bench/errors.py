"""
The two ways a measurement does not happen.
"""


class NotAvailable(Exception):
    """
    The server refused to start with this set-up: the feature does not
    exist (yet), or something it needs is missing.
    """


class BenchError(Exception):
    """
    Something went wrong during a measurement: loudly reported.
    """
