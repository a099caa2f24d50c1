"""
What is measured, and the targets of issue 6 a measurement is held to.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    alg: str
    format: str
    #: ccserver's tokens/s over node-oidc-provider's, at least
    target: float


CASES = {
    "es256": Case("es256", "ES256 JWT", "ES256", "jwt", 1.25),
    "eddsa": Case("eddsa", "EdDSA JWT", "EdDSA", "jwt", 1.25),
    "rs256": Case("rs256", "RS256 JWT", "RS256", "jwt", 1.0),
    "opaque": Case("opaque", "opaque", "ES256", "opaque", 1.25),
}
STORES = ("memory", "sqlite", "redis", "postgresql")
#: Store tokens/s within 10% of the memory store.
STORE_TARGET = 0.90
#: The population section: tokens/s with the large population at least 95%
#: (noise) of the tokens/s with SMALL_POPULATION clients.
POPULATION_TARGET = 0.95
SMALL_POPULATION = 100
#: Clients whose credentials the token load rotates over, in either population.
ROTATED_CLIENTS = 100
#: The body of every registration (also in register.lua).
REGISTRATION = {"client_name": "bench", "scope": "read write"}
