"""
The two ways a measurement does not happen.
"""

import subprocess


class NotAvailable(Exception):
    """
    The server refused to start with this set-up: the feature does not
    exist (yet), or something it needs is missing.
    """


class BenchError(Exception):
    """
    Something went wrong during a measurement: loudly reported.
    """


#: What ends one measurement (a row, a section) and not the run: reported,
#: and the run goes on.
MEASUREMENT_ERRORS = (BenchError, NotAvailable, subprocess.TimeoutExpired)
