"""
The soak's entry point: C{python3 bench/soak [options]} or
C{python3 -m bench.soak [options]} (see bench/README.md, "Soak").
"""

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as C{python3 bench/soak}, Python puts bench/soak itself first on
    # the path, where its modules would shadow top-level ones (and the
    # standard library's): the checkout instead, as bench/run does.
    sys.path[0] = str(Path(__file__).resolve().parent.parent.parent)

from bench.soak.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
