"""
Signing keys: generation, encryption at rest, and the rotation policy (the
current signing key, the published JWK set, activation and retirement).

Keys live in the store, so that every instance signs with and publishes the
same keys and a restart never orphans an issued token.  A private key reaches
the store only encrypted (Fernet) with the key-encryption key, which lives in
a file readable only by the server's user.  How a token is signed with a key
is L{ccserver.jose}'s business; when (inline or in a thread) is the token
minter's.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

from attrs import evolve, field, frozen
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ccserver import audit
from ccserver.interfaces import IKeyStore, ILeaseStore, ITokenStore
from ccserver.jose import JWSSigner, PublicKey, public_jwk, thumbprint
from ccserver.model import StoredKey

#: The algorithms a signing key can be made for.
SIGNING_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
#: RFC 9068 §2.1: the C{typ} of a JWT access token.
ACCESS_TOKEN_TYP = "at+jwt"

#: The lease that lets one process of all those sharing the store rotate
#: the keys at a time (L{ILeaseStore}).
ROTATION_LEASE = "signing-key-rotation"
#: How long a rotation may hold it: far longer than one takes (a key made
#: and a few writes, each bounded by [store] timeout), so that it never
#: runs out under one; short enough that a process that died while holding
#: it delays the next rotation by little.
ROTATION_LEASE_SECONDS = 120.0
#: A key's activation is told (L{Keyring.announce_activations}) only within
#: this long after it: a process that starts later does not tell of keys
#: that became active long before.
ANNOUNCE_WINDOW = 86400

#: What a keyring tells of the keys it changes, or sees change: C{created},
#: C{activated} (its C{active_from} has passed), C{retired} (it stops
#: signing at its C{retired_at}), C{deleted} (no live token needs it).
KeyEvent = Callable[[str, StoredKey], None]

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyDecryptionError(Exception):
    """
    A stored key cannot be decrypted with this server's key-encryption key.
    """


class RotationUnderWay(Exception):
    """
    Another process holds the rotation's lease: it is rotating the keys.
    """


def _no_events(event: str, key: StoredKey) -> None:
    pass


def audit_key_events(actor: audit.Actor) -> KeyEvent:
    """
    A keyring's events as audit events (C{key.created}, C{key.activated},
    C{key.retired}, C{key.deleted}), by C{actor}: the server (the first
    key, a scheduled rotation) or the command's user.
    """

    def told(event: str, key: StoredKey) -> None:
        fields: dict[str, object] = {"kid": key.kid, "alg": key.alg}
        if event == "created":
            fields["active_from"] = key.active_from
        elif event == "retired":
            fields["retired_at"] = key.retired_at
        audit.emit(_KEY_EVENTS[event], actor, None, **fields)

    return told


_KEY_EVENTS = {
    "created": audit.KEY_CREATED,
    "activated": audit.KEY_ACTIVATED,
    "retired": audit.KEY_RETIRED,
    "deleted": audit.KEY_DELETED,
}


def entity_tag(representation: bytes) -> str:
    """
    A strong entity tag (RFC 9110 §8.8.3) of a representation: a digest of
    its bytes, so that every process and instance serving the same bytes
    gives the same tag, and a cache revalidates with any of them.
    """
    digest = hashlib.sha256(representation).digest()[:18]
    return '"' + base64.urlsafe_b64encode(digest).decode("ascii") + '"'


def generate_private_key(alg: str) -> PrivateKey:
    if alg in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"no key type for {alg!r}")


@frozen
class SigningKey:
    """
    A key ready to sign access tokens and to verify them: its private key,
    its public key and JWK, and its JWS signer (header C{alg}, C{kid},
    C{typ: at+jwt}).
    """

    stored: StoredKey
    private_key: PrivateKey = field(repr=False)
    public_key: PublicKey = field(repr=False)
    jwk: dict[str, Any]
    jws: JWSSigner

    @property
    def kid(self) -> str:
        return self.stored.kid

    @property
    def alg(self) -> str:
        return self.stored.alg

    @classmethod
    def from_private_key(cls, stored: StoredKey, private_key: PrivateKey) -> SigningKey:
        jwk = dict(public_jwk(private_key), kid=stored.kid, alg=stored.alg, use="sig")
        jws = JWSSigner.create(stored.alg, private_key, {"kid": stored.kid, "typ": ACCESS_TOKEN_TYP})
        return cls(stored, private_key, private_key.public_key(), jwk, jws)

    def sign(self, claims: dict[str, Any]) -> str:
        """
        A compact JWS of C{claims} with this key (RFC 7515), C{typ: at+jwt}.
        """
        return self.jws.sign(claims)


@frozen
class KeyEncryptor:
    """
    Encrypts private keys for the store and decrypts them back.
    """

    fernet: Fernet
    #: The key-encryption key itself, from which L{derive} makes keys for
    #: other purposes.
    _key: bytes = field(repr=False)

    @classmethod
    def ephemeral(cls) -> KeyEncryptor:
        return cls.from_key(Fernet.generate_key())

    @classmethod
    def from_key(cls, key: bytes) -> KeyEncryptor:
        return cls(Fernet(key), key)

    def derive(self, purpose: bytes) -> bytes:
        """
        A 256-bit key for C{purpose}, derived from the key-encryption key
        with HKDF (RFC 5869): every instance that shares the store shares
        this key already, so it needs no record of its own; and no derived
        key tells anything of the key-encryption key or of another purpose's.
        """
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(
            self._key
        )

    def encrypt(self, private_key: PrivateKey) -> str:
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self.fernet.encrypt(pem).decode("ascii")

    def decrypt(self, stored: StoredKey) -> PrivateKey:
        try:
            pem = self.fernet.decrypt(stored.encrypted_private_key.encode("ascii"))
        except InvalidToken:
            raise KeyDecryptionError(
                f"signing key {stored.kid} cannot be decrypted: the key-encryption "
                "key differs from the one it was stored with"
            ) from None
        key = serialization.load_pem_private_key(pem, password=None)
        assert isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey))
        return key

    def encrypt_secret(self, secret: str) -> str:
        """
        A C{client_secret_jwt} client's secret, for the store: the server
        needs the secret itself (not a digest) to check an HMAC.
        """
        return self.fernet.encrypt(secret.encode("utf-8")).decode("ascii")

    def decrypt_secret(self, encrypted: str) -> str:
        """
        @raise KeyDecryptionError: the key-encryption key is not the one the
            secret was stored with.
        """
        try:
            return self.fernet.decrypt(encrypted.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise KeyDecryptionError(
                "a client secret cannot be decrypted: the key-encryption key differs "
                "from the one it was stored with"
            ) from None


class Keyring:
    """
    The signing keys this process knows, loaded from the store.

    The current signing key for an algorithm is the newest one that is
    active (C{active_from} has passed) and not retired.  The JWK set
    publishes every key that may still verify a live token: all keys not
    retired, and retired ones until C{max_lifetime} after their retirement.
    """

    def __init__(
        self,
        store: IKeyStore,
        encryptor: KeyEncryptor,
        alg: str,
        max_lifetime: int,
        now: Callable[[], float],
        on_event: KeyEvent = _no_events,
    ) -> None:
        """
        @param on_event: told of each key this keyring makes, retires or
            deletes (L{KeyEvent}); and of activations, by
            L{announce_activations}.
        """
        self._store = store
        self._on_event = on_event
        self._encryptor = encryptor
        self._alg = alg
        self._max_lifetime = max_lifetime
        self._now = now
        self._keys: dict[str, SigningKey] = {}
        self._current: SigningKey | None = None
        self._jwks_json = b'{"keys":[]}'
        self._jwks_etag = entity_tag(self._jwks_json)
        #: kids whose activation was told, or found told already
        self._announced: set[str] = set()
        # When the choice of current key or the published set next changes
        # by the clock alone (a pending key activates, a retired one ends).
        self._next_change = float("inf")

    @property
    def alg(self) -> str:
        return self._alg

    @property
    def current(self) -> SigningKey:
        if self._now() >= self._next_change:
            self._install(self._keys)
        if self._current is None:
            raise LookupError(f"no active {self._alg} signing key")
        return self._current

    def keys(self) -> list[SigningKey]:
        return sorted(self._keys.values(), key=lambda k: (k.stored.created_at, k.kid))

    @property
    def jwks_json(self) -> bytes:
        if self._now() >= self._next_change:
            self._install(self._keys)
        return self._jwks_json

    @property
    def jwks_etag(self) -> str:
        """
        The entity tag of L{jwks_json} (L{entity_tag}).
        """
        if self._now() >= self._next_change:
            self._install(self._keys)
        return self._jwks_etag

    def verification_key(self, kid: str) -> SigningKey | None:
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """
        Load the keys from the store again (another instance may have added
        or retired one).
        """
        stored = await self._store.list_keys()
        known = self._keys
        keys: dict[str, SigningKey] = {}
        for record in stored:
            old = known.get(record.kid)
            if old is not None:
                private_key = old.private_key
            else:
                private_key = self._encryptor.decrypt(record)
            keys[record.kid] = SigningKey.from_private_key(record, private_key)
        self._install(keys)

    def _install(self, keys: dict[str, SigningKey]) -> None:
        now = self._now()
        self._keys = keys
        candidates = [
            k
            for k in keys.values()
            if k.alg == self._alg
            and k.stored.active_from <= now
            and (k.stored.retired_at is None or k.stored.retired_at > now)
        ]
        candidates.sort(key=lambda k: (k.stored.active_from, k.stored.created_at, k.kid))
        self._current = candidates[-1] if candidates else None
        published = [k.jwk for k in self.keys() if self._published(k.stored, now)]
        self._jwks_json = json.dumps({"keys": published}, separators=(",", ":")).encode()
        self._jwks_etag = entity_tag(self._jwks_json)
        changes = [k.stored.active_from for k in keys.values() if k.stored.active_from > now]
        changes += [
            k.stored.retired_at + self._max_lifetime
            for k in keys.values()
            if k.stored.retired_at is not None and k.stored.retired_at + self._max_lifetime > now
        ]
        changes += [
            k.stored.retired_at
            for k in keys.values()
            if k.stored.retired_at is not None and k.stored.retired_at > now
        ]
        self._next_change = min(changes, default=float("inf"))

    def _published(self, key: StoredKey, now: float) -> bool:
        """
        A key is published from its creation (before it signs, so that
        caches have it first) until every token it may have signed has
        expired.
        """
        return key.retired_at is None or key.retired_at + self._max_lifetime > now

    def state(self, key: StoredKey) -> str:
        """
        C{pending} (published, not yet signing), C{active}, C{retiring} (no
        longer signing, still published), or C{expired} (no live token needs
        it: it may be deleted).
        """
        now = self._now()
        if key.retired_at is not None and key.retired_at <= now:
            return "retiring" if self._published(key, now) else "expired"
        return "pending" if key.active_from > now else "active"

    async def ensure_signing_key(self) -> bool:
        """
        Make sure there is an active key for the configured algorithm,
        making and storing one if there is none.

        @return: whether a key was made.
        """
        await self.refresh()
        if self._current is not None:
            return False
        await self.add_key(self._alg, active_from=int(self._now()))
        return True

    async def rotate(self, delay: int, alg: str | None = None) -> StoredKey:
        """
        Publish a new key now, to start signing in C{delay} seconds; the
        keys signing now stop then, and stay published until the tokens they
        signed have expired.
        """
        await self.refresh()
        alg = alg or self._alg
        active_from = int(self._now()) + delay
        signing = [k.stored for k in self.keys() if k.alg == alg and k.stored.retired_at is None]
        # the new key first: a rotation cut short after it leaves two keys
        # that may sign (the newer does), never none
        new = await self.add_key(alg, active_from=active_from)
        for key in signing:
            retired = evolve(key, retired_at=active_from)
            if await self._store.replace_key(retired):
                self._on_event("retired", retired)
        await self.refresh()
        return new

    def next_rotation(self, every: int) -> float:
        """
        When the keys are next rotated on a schedule of one rotation every
        C{every} seconds: that long after the newest key of the configured
        algorithm was made (by a rotation, scheduled or not, or at the
        first start), so that the schedule needs no record of its own and
        a rotation by hand starts it anew.  Now, if there is no such key.
        """
        made = [k.stored.created_at for k in self._keys.values() if k.alg == self._alg]
        return max(made) + every if made else self._now()

    def _schedule_due(self, every: int) -> bool:
        now = self._now()
        return now >= self.next_rotation(every) or any(
            self.state(k.stored) == "expired" for k in self._keys.values()
        )

    async def rotate_on_schedule(
        self, every: int, delay: int, leases: ILeaseStore, holder: str
    ) -> StoredKey | None:
        """
        Rotate if the schedule says so (L{next_rotation}), and delete the
        keys no live token needs any more: in one process of all those
        sharing the store.

        What this process knows of the keys decides first, without a round
        trip; if something is due, the rotation's lease is taken
        (L{ROTATION_LEASE}; a process that cannot take it leaves the work
        to the one that has it), the keys are read again under it and the
        schedule asked again, so that a process that took the lease after
        another had rotated finds nothing to do.

        @param holder: who this process is, for the lease (unique to it).
        @return: the key made, if one was.
        """
        if not self._schedule_due(every):
            return None
        if not await leases.take_lease(ROTATION_LEASE, holder, self._now(), ROTATION_LEASE_SECONDS):
            return None
        try:
            await self.refresh()
            new = None
            if self._now() >= self.next_rotation(every):
                new = await self.rotate(delay)
            await self.retire()
            return new
        finally:
            await leases.end_lease(ROTATION_LEASE, holder)

    async def rotate_exclusively(
        self, delay: int, leases: ILeaseStore, holder: str
    ) -> StoredKey:
        """
        L{rotate}, holding the rotation's lease, so that a rotation by hand
        and a scheduled one never run together.

        @raise RotationUnderWay: another process holds the lease.
        """
        if not await leases.take_lease(ROTATION_LEASE, holder, self._now(), ROTATION_LEASE_SECONDS):
            raise RotationUnderWay(
                "another process is rotating the signing keys now; try again in a minute"
            )
        try:
            return await self.rotate(delay)
        finally:
            await leases.end_lease(ROTATION_LEASE, holder)

    async def announce_activations(self, once: ITokenStore) -> None:
        """
        Tell (C{on_event("activated", key)}) of each key that has begun to
        sign within the last L{ANNOUNCE_WINDOW} seconds, once across every
        process sharing the store: a key activates by the clock, with no
        write to say so, so the first process to see it records it with
        L{ITokenStore.use_once} and only that one tells.
        """
        now = self._now()
        for key in self.keys():
            stored = key.stored
            if key.kid in self._announced or stored.active_from > now:
                continue
            if stored.active_from + ANNOUNCE_WINDOW > now:
                first = await once.use_once(
                    f"key-activated:{key.kid}", stored.active_from + ANNOUNCE_WINDOW
                )
                if first:
                    self._on_event("activated", stored)
            self._announced.add(key.kid)

    async def retire(self, kid: str | None = None) -> list[StoredKey]:
        """
        With a C{kid}: stop signing with that key at once (it stays
        published until its tokens have expired).  Without: delete the keys
        no live token needs any more.

        @return: the keys retired or deleted.
        @raise ValueError: the key is unknown, or is the only one that can
            sign with the configured algorithm.
        """
        await self.refresh()
        now = int(self._now())
        if kid is None:
            expired = [k.stored for k in self.keys() if self.state(k.stored) == "expired"]
            deleted = [key for key in expired if await self._store.delete_key(key.kid)]
            for key in deleted:
                self._on_event("deleted", key)
            await self.refresh()
            return deleted
        signing = self._keys.get(kid)
        if signing is None:
            raise ValueError(f"no signing key {kid!r}")
        others = [
            k
            for k in self.keys()
            if k.kid != kid and k.alg == self._alg and self.state(k.stored) == "active"
        ]
        if signing.alg == self._alg and self.state(signing.stored) == "active" and not others:
            raise ValueError(
                f"{kid} is the only active {self._alg} key: "
                "rotate first (ccserver keys rotate --delay 0 replaces it at once)"
            )
        if signing.stored.retired_at is not None and signing.stored.retired_at <= now:
            return []
        retired = evolve(signing.stored, retired_at=now)
        await self._store.replace_key(retired)
        self._on_event("retired", retired)
        await self.refresh()
        return [retired]

    async def add_key(self, alg: str, active_from: int) -> StoredKey:
        private_key = generate_private_key(alg)
        now = int(self._now())
        kid = thumbprint(public_jwk(private_key))
        stored = StoredKey(
            kid=kid,
            alg=alg,
            encrypted_private_key=self._encryptor.encrypt(private_key),
            created_at=now,
            active_from=active_from,
        )
        await self._store.add_key(stored)
        self._on_event("created", stored)
        keys = dict(self._keys)
        keys[kid] = SigningKey.from_private_key(stored, private_key)
        self._install(keys)
        return stored
