"""
What is measured, and the targets (issues 6 and 14) a measurement is held to.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    alg: str
    format: str
    #: ccserver over node-oidc-provider, at least: tokens per CPU-second
    #: (one process each), and tokens/s with every core used (JWTs)
    target: float


CASES = {
    "es256": Case("es256", "ES256 JWT", "ES256", "jwt", 1.25),
    "eddsa": Case("eddsa", "EdDSA JWT", "EdDSA", "jwt", 1.25),
    "rs256": Case("rs256", "RS256 JWT", "RS256", "jwt", 1.05),
    "opaque": Case("opaque", "opaque", "ES256", "opaque", 1.1),
}
#: The durable section: opaque tokens on a store, at least this share of
#: JWT ES256 tokens/s on the same store and workers.
DURABLE_TARGET = 0.80
DURABLE_STORES = ("sqlite", "postgresql", "redis")
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
