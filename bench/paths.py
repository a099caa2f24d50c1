"""
Where the bench's files are: the checkout it measures, and the Lua and
JavaScript it hands to wrk and node.
"""

from pathlib import Path

BENCH = Path(__file__).resolve().parent
#: The checkout under test: ccserver runs from here (PYTHONPATH), never
#: from an installed copy.
REPO = BENCH.parent
LUA = BENCH / "token.lua"
INTROSPECT_LUA = BENCH / "introspect.lua"
REGISTER_LUA = BENCH / "register.lua"
PEER_SCRIPT = BENCH / "peer" / "provider.mjs"
