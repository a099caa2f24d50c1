"""
The Redis store, over txredisapi, for several ccserver instances sharing
one Redis.

Layout (every key under the C{ccserver:} prefix, so that the database can be
shared with other data):

  - C{ccserver:client:<client_id>}: one JSON object per client, the whole
    record, so that a write is one command and a reader never sees half of
    one.  C{add_client} is C{SET NX} (a taken id fails atomically) and
    C{replace_client} is C{SET XX} (a client deleted meanwhile is not
    brought back);
  - C{ccserver:keys}: a hash of C{kid} to the key as JSON; C{replace_key} is a
    Lua script, C{HSET} only if the field exists, atomic in Redis;
  - C{ccserver:token:<digest>}: an opaque access token as JSON, and
    C{ccserver:revoked:<jti>}: a deny-list entry; both expire with the token
    (C{SET ... EXAT}, so Redis 6.2 or later; a token's key, if the purge
    has not deleted it by then, a lifetime and a part of a quarter of one
    after it, L{kept_until});
  - C{ccserver:client_tokens:<client_id>}: a sorted set of the client's
    opaque token digests, scored by expiry, written in the same script as
    the token and trimmed there of entries whose keys Redis has let go
    (L{trimmed_before}), so that deleting the client can delete its tokens
    and the purge
    (C{purge_expired}, paced as the SQL stores' is) finds the expired ones
    in order; it expires as the last of their keys does.  C{ccserver:token_clients}
    (L{TOKEN_CLIENTS_KEY}): the set of the clients that have one.  The
    tokens issued while one such script call is under way go together in
    the next (L{GroupCommit}, as the SQL stores do): one round trip and one
    script run for the batch, each token answered only once its batch's
    call has (L{RedisStore.add_token}).  Its keys are all in C{KEYS}, but
    a batch's span several clients, hence hash slots, which Redis Cluster
    would refuse;
  - C{ccserver:revoked_client:<client_id>}: a deleted client's revocation
    mark, C{"<issued_before> <expires_at>"}, expiring at C{expires_at};
    C{get_token} reads it with the token, in one script (for a batch of
    tokens: L{GroupLookup}).
    C{delete_client} writes it, deletes the tokens and the client in one
    script: atomic, as every script is in Redis (it names the token keys it
    deletes only at run time, which Redis Cluster would refuse; a single
    Redis, as used here, does not);
  - C{ccserver:once:<key>}: a one-time record (C{use_once}), C{SET NX
    EXAT}, gone at its expiry; a client's record (above) may carry
    C{encrypted_secret}, for C{client_secret_jwt} clients only;
  - C{ccserver:auth_attempts:<key>}: a brute-force limit's counter or cap
    (a digest names it), a hash of its slots and its window's end, written
    by one script per reservation and one per release; Redis forgets it a
    second after its window ends.  C{ccserver:known_source:<key>}: a source
    known for a credential (exempt from the cap), gone at its expiry;
  - C{ccserver:bindings:<binding key>}: the federated identities of one
    issuer and subject (L{ccserver.model.binding_key}): a hash of each
    binding's conditions key to its client, so that a workload's token
    finds its client with one C{HVALS}; and
    C{ccserver:client_bindings:<client_id>}, the set of a client's
    bindings (C{"<binding key>:<conditions key>"}), so that replacing or
    deleting the client removes them.  A client with bindings is added and
    replaced by a script that checks every binding is free (or its own)
    and writes the client and its bindings together, atomically;
  - C{ccserver:token_bucket:<key>}: a limited client's token bucket (a
    digest names it), a hash of its tokens and when they were counted,
    expiring when it would be full again;
  - C{ccserver:lease:<name>}: a lease (L{ILeaseStore}), its holder,
    expiring (C{PX}) when its time ends;
  - C{ccserver:iat:<digest>}: an initial access token as JSON (its
    C{uses} and C{revoked_at} as written when it was made), with
    C{ccserver:iat_uses:<digest>} its count of uses and
    C{ccserver:iat_revoked:<digest>} its revocation's time, all three
    expiring at its expiry; C{ccserver:iat_ids}, a hash of each token's id
    to its digest (an id whose token has expired is dropped when the
    tokens are listed).  A registration with one is one script: the checks,
    the client's C{SET NX} and the use's C{INCR};
  - C{ccserver:schema_version}: the layout's version (2, since federated
    identities; a store of version 1 is brought up to it on open, as it
    holds none), so that a later ccserver can tell what it opens.

The JSON of a client, a key and a token is L{ccserver.stores.codec}'s.

Scripts go as C{EVALSHA} once a connection has run them: txredisapi's
C{eval} does so by itself, and sends the text again after a C{NOSCRIPT}
(a restarted Redis, a C{SCRIPT FLUSH}).

Connections (L{ccserver.stores.redisconnection}): a lazy pool of
L{POOL_SIZE} connections to the primary that reconnects by itself, with
C{convertNumbers=False}: otherwise txredisapi turns every numeric-looking
string into a number, and a client id "12345" would come back as an int.
Every operation fires within C{timeout} seconds, with its result or with
L{StoreUnavailable}; a reply that does not come within it also drops the
connection (txredisapi's C{replyTimeout}), which is then made anew.

Where the primary is: at the address of a C{redis://} URL, or, with a
C{redis+sentinel://} URL, where Redis Sentinel says it is now
(L{ccserver.stores.sentinel}); a failover is followed at the sentinels'
C{+switch-master} announcement, a lost connection, or a C{READONLY} reply.

Durability is Redis' own: run it with C{appendonly yes} and C{appendfsync
always} (or C{everysec}, losing up to a second of registrations at a crash).
Replication is asynchronous, so a write the primary has answered can be
lost when a replica that did not have it yet is promoted.  So the writes
that must survive a failover (clients, keys, opaque tokens, revocations,
one-time records) are answered only once C{wait_replicas} replicas have
acknowledged them (C{WAIT}, on the connection that wrote), within
C{wait_timeout} seconds, or fail with L{StoreUnavailable}; the opaque
tokens' batch waits once for all its tokens.  The brute-force limits'
counts (C{reserve_attempt}, C{release_attempt}) do not wait: they are on
the path of every authentication, and a failover may forget the last few.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar, cast

import txredisapi
from attrs import evolve, frozen
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred, ensureDeferred, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ccserver.errors import BindingTaken, ClientExists, ConfigError, StoreUnavailable
from ccserver.interfaces import IStore
from ccserver.model import (
    AttemptKeys,
    AttemptRelease,
    Client,
    InitialAccessToken,
    Reservation,
    StoredKey,
    TokenGrant,
    TokenRecord,
    binding_key,
)
from ccserver.stores.codec import CLIENTS, INITIAL_ACCESS_TOKENS, KEYS, TOKENS
from ccserver.stores.groupcommit import GroupCommit
from ccserver.stores.grouplookup import GroupLookup
from ccserver.stores.guard import OperationGuard, url_secrets
from ccserver.stores.purging import rest
from ccserver.stores.redisconnection import PrimaryConnections
from ccserver.stores.sentinel import NoPrimary
from ccserver.stores.urls import RedisAddress, redis_address

T = TypeVar("T")

#: Connections in the pool.  Commands that need no connection to themselves
#: are pipelined on any of them, so a few suffice.
POOL_SIZE = 4

#: The oldest Redis with C{SET ... EXAT}, which token records need.
MINIMUM_REDIS = (6, 2)

#: The version of the key layout described above.
LAYOUT_VERSION = 2

PREFIX = "ccserver:"
SCHEMA_VERSION_KEY = PREFIX + "schema_version"
KEYS_KEY = PREFIX + "keys"

#: Redis' error replies that mean "not now", not "wrong": a server loading
#: its data after a restart, a replica after a failover, a busy script.
_TRANSIENT_REPLIES = ("LOADING", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN")

_REPLACE_KEY_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
    return 1
end
return 0
"""

_REVOKE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if (not current) or tonumber(ARGV[1]) > tonumber(current) then
    redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[1])
end
return 1
"""

#: L{RedisStore.reserve_attempt}, atomic as every script is.
#:
#:  - C{KEYS}: the counter, the cap (or the counter again, unused, when there
#:    is no cap), the known-source key;
#:  - C{ARGV}: now and the end of a window opened now (milliseconds since
#:    the epoch, as the caller's clock says), the counter's budget, the
#:    cap's (0: no cap).
#:
#: A counter is a hash: C{n} slots, its window ending at C{e}; an ended
#: window counts as empty.  The key expires a second after C{e} (a
#: relative expiry, so that Redis' clock does not matter).  A refusal
#: writes nothing.  Returns granted (1/0), the counter's slots, its window's
#: end, the cap's window's end (-1: not counted), capped (1/0).
_RESERVE_ATTEMPT_SCRIPT = """
local now = tonumber(ARGV[1])
local function load(key)
    local v = redis.call('HMGET', key, 'n', 'e')
    local e = tonumber(v[2])
    if (not e) or e <= now then
        return 0, ARGV[2]
    end
    return tonumber(v[1]), v[2]
end
local function take(key, n, e)
    redis.call('HSET', key, 'n', n + 1, 'e', e)
    redis.call('PEXPIRE', key, tonumber(e) - now + 1000)
end
local n, e = load(KEYS[1])
if n >= tonumber(ARGV[3]) then
    return {0, n, e, -1, 0}
end
local cap_e = -1
if tonumber(ARGV[4]) > 0 and redis.call('EXISTS', KEYS[3]) == 0 then
    local cn, ce = load(KEYS[2])
    if cn >= tonumber(ARGV[4]) then
        return {0, n, e, ce, 1}
    end
    take(KEYS[2], cn, ce)
    cap_e = ce
end
take(KEYS[1], n, e)
return {1, n + 1, e, cap_e, 0}
"""

#: L{RedisStore.release_attempt}: C{KEYS} the known-source key (or
#: C{ccserver:none}, unused), then the slots' keys; C{ARGV} how many
#: milliseconds the source stays known (0: not recorded), then each slot's
#: window end.  A slot goes back only to the window it was taken in; a known
#: source keeps the later of two expiries.
_RELEASE_ATTEMPT_SCRIPT = """
local keep = tonumber(ARGV[1])
if keep > 0 and redis.call('PTTL', KEYS[1]) < keep then
    redis.call('SET', KEYS[1], '1', 'PX', keep)
end
for i = 2, #KEYS do
    local v = redis.call('HMGET', KEYS[i], 'n', 'e')
    if v[2] == ARGV[i] and tonumber(v[1]) > 0 then
        redis.call('HINCRBY', KEYS[i], 'n', -1)
    end
end
return 1
"""

#: L{RedisStore.take_tokens}, atomic as every script is: C{KEYS} the
#: bucket; C{ARGV} tokens a second, the burst, the tokens wanted, now
#: (milliseconds since the epoch, by the caller's clock).  The bucket is a
#: hash: C{t} tokens (a fraction) counted at C{c}; a bucket that is not
#: there is full.  It expires (Redis' clock) when it would be full again.
#: Returns the tokens taken and, when fewer than wanted, the milliseconds
#: until one more (as L{ccserver.stores.buckets.take} counts).
_TAKE_TOKENS_SCRIPT = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local wanted, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local v = redis.call('HMGET', KEYS[1], 't', 'c')
local tokens, counted = tonumber(v[1]), tonumber(v[2])
if (not tokens) or (not counted) then
    tokens, counted = burst, now
elseif now > counted then
    tokens = tokens + (now - counted) * rate / 1000
    counted = now
end
if tokens > burst then
    tokens = burst
end
local taken = math.min(wanted, math.floor(tokens + 1e-9))
tokens = math.max(0, tokens - taken)
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'c', string.format('%d', counted))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
local retry = 0
if taken < wanted then
    retry = math.ceil(math.max(0, 1 - tokens) * 1000 / rate)
end
return {taken, retry}
"""

#: L{RedisStore.take_lease}: C{KEYS} the lease, C{ARGV} the holder and the
#: lease's duration in milliseconds.  Redis' own clock ends it (C{PX}):
#: taken when nobody holds it, or by its holder again.
_TAKE_LEASE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

#: L{RedisStore.end_lease}: deleted only by its holder.
_END_LEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
end
return 1
"""

#: L{RedisStore.add_initial_access_token}: C{KEYS} the record, its uses,
#: the id index; C{ARGV} the record's JSON, its id, its digest, its expiry.
_ADD_INITIAL_ACCESS_TOKEN_SCRIPT = """
redis.call('SET', KEYS[1], ARGV[1], 'EXAT', ARGV[4])
redis.call('SET', KEYS[2], '0', 'EXAT', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
return 1
"""

#: L{RedisStore.revoke_initial_access_token}: C{KEYS} the id index;
#: C{ARGV} the token's id, the record and revocation keys' prefixes, now.
#: The first revocation's time is kept (C{NX}).
_REVOKE_INITIAL_ACCESS_TOKEN_SCRIPT = """
local digest = redis.call('HGET', KEYS[1], ARGV[1])
if not digest then
    return 0
end
local text = redis.call('GET', ARGV[2] .. digest)
if not text then
    redis.call('HDEL', KEYS[1], ARGV[1])
    return 0
end
local record = cjson.decode(text)
redis.call('SET', ARGV[3] .. digest, ARGV[4], 'NX', 'EXAT',
    string.format('%d', record['expires_at']))
return 1
"""

#: Opaque tokens written by one script call at most.  A batch is the tokens
#: issued during the previous batch's round trip, far fewer than this under
#: the bench's load; the bound keeps the script's C{unpack} well below Lua's
#: stack limit (8000 values) and its run, during which Redis serves no one
#: else, short.
TOKEN_BATCH = 256
#: Expired entries of a client's set a batch trims at most, for each of
#: that client's tokens it adds.  A client's tokens of a busy hour expire
#: together: trimmed in one command, a million entries would hold Redis
#: (one command at a time, for every client) for most of a second.  A
#: fixed 1,000 a batch was no better: with ten million expired together,
#: every batch (hundreds a second) spent milliseconds of Redis's one thread
#: trimming, and the requests queued behind it for seconds (bench/README.md,
#: the growth section's purge row).  In proportion to the batch, the trim
#: costs Redis a few microseconds a token, still removes expired entries
#: faster than the client's new tokens come, and so keeps the set's size
#: to the client's live tokens plus what a past burst left, shrinking.
TRIM_PER_TOKEN = 4

#: How long past its expiry a token's key stays, as a share of the token's
#: lifetime, if the purge (L{RedisStore.purge_expired}) has not deleted it
#: first: L{EXPIRY_DELAY}, then a part of L{EXPIRY_SPREAD} that its digest
#: sets (L{kept_until}).  The delay leaves the tokens of a busy hour to the
#: purge, at its pace: with keys going at most a quarter of a lifetime
#: after their expiry, Redis's expiry cycle took ten million expired
#: tokens in bursts while the purge was still at them, and the requests
#: waited (bench/README.md, the growth section's purge row).  The spread
#: keeps the keys of tokens that expire together from going in the same
#: second when no purge runs.  An expired token's key is never answered as
#: active (the introspection checks the record's expiry,
#: L{ccserver.oauth.introspection}): it only takes room.
EXPIRY_DELAY = 1.0
EXPIRY_SPREAD = 0.25

#: The set of the clients whose set of tokens may hold some
#: (C{client_tokens_key}), so that the purge finds them without a C{SCAN}
#: of every key.  A client stays in it until the purge finds its set gone.
TOKEN_CLIENTS_KEY = PREFIX + "token_clients"
#: Expired tokens one call of the purge's script deletes at most: Redis
#: serves no one else while it runs (a few milliseconds for this many).
PURGE_BATCH = 500
#: The largest share of the time the purge's calls take (L{rest}).  What
#: deleting a token costs Redis (its key, its entry) is CPU the requests
#: need on a busy machine: at a quarter, in batches of 200, a purge of
#: a million tokens raised the requests' p99 well past twice its quiet
#: value; at a tenth it left it as it was, and still went faster than the
#: full server issues tokens (bench/README.md, the growth section's purge
#: row).
PURGE_SHARE = 0.1
#: Clients' sets a purge's C{SSCAN} of L{TOKEN_CLIENTS_KEY} asks for at a time.
PURGE_CLIENTS = 100


def kept_until(token_digest: str, issued_at: int, expires_at: int) -> int:
    """
    When Redis forgets the key of the token C{token_digest}, unless the
    purge deletes it first: L{EXPIRY_DELAY} of its lifetime after its
    expiry, plus a part of L{EXPIRY_SPREAD} of its lifetime that its digest
    sets (its last 8 hex digits, of a hash: evenly spread), so that the
    keys of tokens expiring together go over that time.
    """
    lifetime = expires_at - issued_at
    if lifetime <= 0:
        return expires_at
    spread = int(lifetime * EXPIRY_SPREAD)
    kept = expires_at + int(lifetime * EXPIRY_DELAY)
    if spread <= 0:
        return kept
    try:
        part = int(token_digest[-8:], 16)
    except ValueError:  # not a digest of ours: any stable number will do
        part = zlib.crc32(token_digest.encode())
    return kept + part % spread


def trimmed_before(issued_at: int, expires_at: int) -> int:
    """
    The entries of a client's set (L{client_tokens_key}) that expired
    before this time are trimmed as a token of that client, issued at
    C{issued_at} and expiring at C{expires_at}, is written: those of tokens
    whose keys Redis has let go by then (L{kept_until}), if they lived no
    longer.  The earlier ones are the purge's (L{RedisStore.purge_expired},
    which deletes the keys with their entries at its own pace): a trim in
    the token's own script that deleted keys too cost Redis three times
    as much a token while a busy hour's tokens expired (bench/README.md);
    this one bounds the set of a client that issues all the time when no
    purge runs.
    """
    return issued_at - int((expires_at - issued_at) * (EXPIRY_DELAY + EXPIRY_SPREAD))


#: L{RedisStore.add_token}'s batch, in one script: Redis runs it atomically.
#:
#:  - C{KEYS}: the C{n} token keys, then L{TOKEN_CLIENTS_KEY}, then the set
#:    of each distinct client of the batch;
#:  - C{ARGV[1]}: C{n}; C{ARGV[2]}: L{TRIM_PER_TOKEN}; C{ARGV[3]}: the
#:    time; then per token its JSON and when its key goes
#:    (L{kept_until}); then per client (in the order
#:    of its key) its id, the time before which its entries are trimmed
#:    (L{trimmed_before}), the latest time one of its tokens' keys goes,
#:    their count C{c}, and C{c} pairs of expiry and digest.
#:
#: Each token is C{SET ... EXAT} at L{kept_until}; each client's
#: set gets all its digests by one C{ZADD}, and the client is named in
#: L{TOKEN_CLIENTS_KEY} (for the purge); the set is trimmed of at most
#: L{TRIM_PER_TOKEN} times C{c} of the entries of tokens whose keys Redis
#: has let go by then (L{trimmed_before}).  The set goes when the last of
#: its tokens' keys would (C{TTL}, not C{EXPIRETIME}, which Redis 6.2
#: lacks), so that the purge finds every expired token whose key is still
#: there.
_ADD_TOKENS_SCRIPT = """
local n, trim, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local at = 4
for i = 1, n do
    redis.call('SET', KEYS[i], ARGV[at], 'EXAT', ARGV[at + 1])
    at = at + 2
end
for i = n + 2, #KEYS do
    local client, before = ARGV[at], ARGV[at + 1]
    local kept, count = tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
    redis.call('ZADD', KEYS[i], unpack(ARGV, at + 4, at + 3 + 2 * count))
    redis.call('SADD', KEYS[n + 1], client)
    at = at + 4 + 2 * count
    local expired = math.min(redis.call('ZCOUNT', KEYS[i], '-inf', '(' .. before), trim * count)
    if expired > 0 then
        redis.call('ZREMRANGEBYRANK', KEYS[i], 0, expired - 1)
    end
    local ttl = redis.call('TTL', KEYS[i])
    if ttl < 0 or now + ttl < kept then
        redis.call('EXPIREAT', KEYS[i], kept)
    end
end
return n
"""

#: L{RedisStore.purge_expired}'s batch, in one script: C{KEYS[1]} is
#: L{TOKEN_CLIENTS_KEY}, C{KEYS[1 + i]} the set of the client
#: C{ARGV[3 + i]}; C{ARGV[1]} the time, C{ARGV[2]} how many tokens to
#: delete at most, C{ARGV[3]} the token keys' prefix.  The tokens that
#: expired before the time go from each set in turn, their keys with them
#: (a key Redis has already expired is simply not there), until that many
#: have gone; a client whose set is gone (emptied, expired with the last
#: of its tokens' keys, or deleted with the client) leaves
#: L{TOKEN_CLIENTS_KEY}.  The expired
#: entries are a set's first (it is sorted by expiry): they go by rank,
#: without naming them again.  Answers how many went, and how many of the
#: sets are done with (the next batch starts after them).
_PURGE_TOKENS_SCRIPT = """
local now, most, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local deleted, done = 0, 0
for i = 2, #KEYS do
    local gone = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', '(' .. now, 'LIMIT', 0, most - deleted)
    if #gone > 0 then
        for j = 1, #gone do
            gone[j] = prefix .. gone[j]
        end
        redis.call('UNLINK', unpack(gone))
        redis.call('ZREMRANGEBYRANK', KEYS[i], 0, #gone - 1)
        deleted = deleted + #gone
    end
    if deleted >= most then
        break
    end
    if redis.call('EXISTS', KEYS[i]) == 0 then
        redis.call('SREM', KEYS[1], ARGV[2 + i])
    end
    done = done + 1
end
return {deleted, done}
"""

#: L{RedisStore.get_token}'s batch (L{GroupLookup}), in one script: the
#: tokens C{KEYS}, each unless its client's revocation mark (C{ARGV[1]}, the
#: marks' key prefix, and the client id) covers it, as an array in the order
#: of C{KEYS} with C{false} (a nil reply) for one missing or covered.  Its
#: C{MGET} reads the tokens and the marks' C{GET}s after it in one atomic
#: run.  A record that cjson cannot read (never written by this server) is
#: answered as it is.
_GET_TOKENS_SCRIPT = """
local texts = redis.call('MGET', unpack(KEYS))
for i = 1, #KEYS do
    local text = texts[i]
    if text then
        local ok, record = pcall(cjson.decode, text)
        if ok and type(record) == 'table' and type(record['client_id']) == 'string' then
            local mark = redis.call('GET', ARGV[1] .. record['client_id'])
            if mark then
                local before = tonumber(string.match(mark, '^(%d+)'))
                if before and tonumber(record['issued_at']) <= before then
                    texts[i] = false
                end
            end
        end
    end
end
return texts
"""

#: Lookups in one batch at most (L{GroupLookup}): those asked for during
#: the previous batch's round trip; the bound keeps C{unpack} and C{MGET}
#: far below Lua's stack limit, and a script's run short.
LOOKUP_BATCH = 128

#: Every binding of C{ARGV[first..]} (C{"<binding key>:<conditions key>"},
#: both 64 hex digits) is free or the client's own (C{ARGV[2]}), else the
#: script returns the negative index of the first taken one; the client's
#: current bindings (the set C{KEYS[2]}) removed; its new ones written.
#: Shared by the scripts that set and delete a client, whose C{ARGV[2]} is
#: its id and C{ARGV[3]} the bindings' key prefix.
_REBIND_LUA = """
local function taken(first)
    for i = first, #ARGV do
        local owner = redis.call('HGET', ARGV[3] .. string.sub(ARGV[i], 1, 64), string.sub(ARGV[i], 66))
        if owner and owner ~= ARGV[2] then
            return -(i - first + 1)
        end
    end
    return nil
end
local function unbind()
    local old = redis.call('SMEMBERS', KEYS[2])
    for i = 1, #old do
        local key, field = ARGV[3] .. string.sub(old[i], 1, 64), string.sub(old[i], 66)
        if redis.call('HGET', key, field) == ARGV[2] then
            redis.call('HDEL', key, field)
        end
    end
    redis.call('DEL', KEYS[2])
end
local function bind(first)
    for i = first, #ARGV do
        redis.call('HSET', ARGV[3] .. string.sub(ARGV[i], 1, 64), string.sub(ARGV[i], 66), ARGV[2])
        redis.call('SADD', KEYS[2], ARGV[i])
    end
end
"""

#: A client with bindings added, or any client replaced: C{KEYS[1]} its
#: record, C{KEYS[2]} the set of its bindings; C{ARGV[1]} its JSON,
#: C{ARGV[2]} its id, C{ARGV[3]} the bindings' key prefix, C{ARGV[4]}
#: C{add} or C{replace}, C{ARGV[5..]} its bindings.  0: no such client to
#: replace, or its id taken when adding; negative: a binding is taken; 1:
#: stored, with its bindings in place of those it had.
_SET_CLIENT_SCRIPT = _REBIND_LUA + """
local exists = redis.call('EXISTS', KEYS[1]) == 1
if exists ~= (ARGV[4] == 'replace') then
    return 0
end
local refused = taken(5)
if refused then
    return refused
end
if exists then
    unbind()
end
redis.call('SET', KEYS[1], ARGV[1])
bind(5)
return 1
"""

#: L{RedisStore.register_with_initial_access_token}: C{KEYS} the client's
#: record and the set of its bindings (as L{_REBIND_LUA} wants them), the
#: token's record, uses and revocation; C{ARGV} the client's JSON, its id,
#: the bindings' key prefix, now, its bindings.  Returns {0} (the token may
#: not register), {-1} (the client id is taken), {-2, i} (its binding i,
#: from 1, is taken), else the uses now counted and the token's record.
_REGISTER_WITH_INITIAL_ACCESS_TOKEN_SCRIPT = _REBIND_LUA + """
local text = redis.call('GET', KEYS[3])
if (not text) or redis.call('EXISTS', KEYS[5]) == 1 then
    return {0}
end
local record = cjson.decode(text)
if tonumber(record['expires_at']) <= tonumber(ARGV[4]) then
    return {0}
end
local uses = tonumber(redis.call('GET', KEYS[4]) or '0')
if uses >= tonumber(record['max_uses']) then
    return {0}
end
if redis.call('EXISTS', KEYS[1]) == 1 then
    return {-1}
end
local refused = taken(5)
if refused then
    return {-2, -refused}
end
redis.call('SET', KEYS[1], ARGV[1])
bind(5)
return {redis.call('INCR', KEYS[4]), text}
"""

#: C{KEYS}: the client's record, the set of its bindings, its opaque tokens'
#: digests, its revocation mark; C{ARGV}: the mark's C{issued_before}, the
#: client's id, the bindings' key prefix (as L{_REBIND_LUA} wants them), the
#: mark's expiry, the token keys' prefix.
_DELETE_CLIENT_SCRIPT = _REBIND_LUA + """
local before, expires = tonumber(ARGV[1]), tonumber(ARGV[4])
local current = redis.call('GET', KEYS[4])
if current then
    local b, e = string.match(current, '^(%d+) (%d+)$')
    if b then
        before = math.max(before, tonumber(b))
        expires = math.max(expires, tonumber(e))
    end
end
redis.call('SET', KEYS[4], string.format('%d %d', before, expires), 'EXAT', expires)
local digests = redis.call('ZRANGE', KEYS[3], 0, -1)
for i = 1, #digests do
    redis.call('DEL', ARGV[5] .. digests[i])
end
redis.call('DEL', KEYS[3])
unbind()
return redis.call('DEL', KEYS[1])
"""

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    txredisapi.ConnectionError,  # TimeoutError included
    NoPrimary,
    internet_error.ConnectError,
    internet_error.ConnectionLost,
    internet_error.ConnectionDone,
)


@frozen
class _PendingToken:
    """
    An opaque token waiting for its batch, encoded already: a token that
    cannot be encoded fails alone, not its batch.
    """

    digest: str
    client_id: str
    text: str
    expires_at: str
    issued_at: int
    #: when Redis forgets its key (L{kept_until})
    kept_until: str


def used_once_key(key: str) -> str:
    return f"{PREFIX}once:{key}"


def client_key(client_id: str) -> str:
    return f"{PREFIX}client:{client_id}"


def token_key(token_digest: str) -> str:
    return f"{PREFIX}token:{token_digest}"


def revoked_key(jti: str) -> str:
    return f"{PREFIX}revoked:{jti}"


def client_tokens_key(client_id: str) -> str:
    return f"{PREFIX}client_tokens:{client_id}"


def revoked_client_key(client_id: str) -> str:
    return f"{PREFIX}revoked_client:{client_id}"


def initial_access_token_key(token_digest: str) -> str:
    return f"{PREFIX}iat:{token_digest}"


def initial_access_token_uses_key(token_digest: str) -> str:
    return f"{PREFIX}iat_uses:{token_digest}"


def initial_access_token_revoked_key(token_digest: str) -> str:
    return f"{PREFIX}iat_revoked:{token_digest}"


INITIAL_ACCESS_TOKEN_IDS_KEY = PREFIX + "iat_ids"


def _initial_access_token_keys(token_digest: str) -> list[str]:
    """
    An initial access token's record, uses and revocation keys.
    """
    return [
        initial_access_token_key(token_digest),
        initial_access_token_uses_key(token_digest),
        initial_access_token_revoked_key(token_digest),
    ]


def auth_attempts_key(key: str) -> str:
    return f"{PREFIX}auth_attempts:{key}"


def known_source_key(key: str) -> str:
    return f"{PREFIX}known_source:{key}"


#: The prefix of the hash of one issuer and subject's bindings.
BINDINGS_PREFIX = f"{PREFIX}bindings:"


def client_bindings_key(client_id: str) -> str:
    return f"{PREFIX}client_bindings:{client_id}"


def _bindings(client: Client) -> list[str]:
    """
    The client's bindings as the scripts take them.
    """
    return [f"{i.key}:{i.conditions_key}" for i in client.federated_identities]


def bucket_key(key: str) -> str:
    return f"{PREFIX}token_bucket:{key}"


def lease_key(name: str) -> str:
    return f"{PREFIX}lease:{name}"


def _found(
    replies: list[Any], keys: list[str], read: Callable[[Any], T]
) -> Mapping[str, T]:
    """
    A batch's replies (one for each of C{keys}, in order; None for a key
    not found), as C{read} makes each found one, by key.
    """
    return {key: read(reply) for key, reply in zip(keys, replies, strict=True) if reply is not None}


def _redis_version(info: str) -> tuple[int, ...]:
    """
    The server's version from the answer to C{INFO server}.
    """
    for line in info.splitlines():
        if line.startswith("redis_version:"):
            return tuple(int(part) for part in line.split(":", 1)[1].strip().split(".")[:2])
    return (0,)


@implementer(IStore)
class RedisStore:
    """
    A store in Redis.  Make one with L{RedisStore.from_url}.

    @ivar url: the URL, with any password masked.
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        reactor: IReactorCore | IReactorTime | IReactorThreads,
        *,
        timeout: float,
        wait_replicas: int | None = None,
        wait_timeout: float | None = None,
    ) -> None:
        """
        @param wait_replicas: how many replicas must acknowledge a write
            before it is answered; by default 1 with Sentinel, else 0.
        @param wait_timeout: seconds a write waits for them; by default
            half of C{timeout}.
        """
        self.address: RedisAddress = redis_address(url)
        self.url = self.address.url
        self.timeout = timeout
        self.wait_replicas = (
            (1 if self.address.sentinel else 0) if wait_replicas is None else wait_replicas
        )
        self.wait_timeout = timeout / 2 if wait_timeout is None else wait_timeout
        self._reactor = reactor
        self._guard = OperationGuard(
            reactor=cast(IReactorTime, reactor),
            timeout=timeout,
            url=self.url,
            unavailable=_UNAVAILABLE,
            secrets=url_secrets(url),
        )
        self._connections = PrimaryConnections(
            self.address, cast(IReactorTime, reactor), size=POOL_SIZE, timeout=timeout
        )
        self._redis: Any = None
        # Introspection's reads: one round trip for the lookups of a kind
        # asked for during the previous one's (one at a time: Redis runs
        # one command at a time anyway, and fuller batches cost less).
        #: opaque tokens by digest (public, so that tests and operators can
        #: read how many batches carried how many lookups)
        self.token_lookups: GroupLookup[str, TokenRecord] = GroupLookup(
            self._get_tokens, max_batch=LOOKUP_BATCH
        )
        #: deny-list entries by jti
        self.revoked_jti_lookups: GroupLookup[str, bool] = GroupLookup(
            self._revoked_jtis, max_batch=LOOKUP_BATCH
        )
        #: deleted clients' revocation marks by client id
        self.revoked_client_lookups: GroupLookup[str, int] = GroupLookup(
            self._revoked_clients, max_batch=LOOKUP_BATCH
        )
        #: opaque tokens, one script call for those issued during the
        #: previous one's round trip
        self._tokens: GroupCommit[_PendingToken] = GroupCommit(
            self._add_tokens, concurrency=1, max_batch=TOKEN_BATCH
        )

    @classmethod
    def from_url(
        cls,
        url: str,
        reactor: IReactorCore | IReactorTime | IReactorThreads,
        *,
        timeout: float,
        wait_replicas: int | None = None,
        wait_timeout: float | None = None,
    ) -> RedisStore:
        """
        Make (but do not connect) the store of a
        C{redis://[[user]:password@]host[:port][/db]} or
        C{redis+sentinel://[[user]:password@]host:port[,host:port...]/service[?db=N]}
        URL.
        """
        return cls(
            url, reactor, timeout=timeout, wait_replicas=wait_replicas, wait_timeout=wait_timeout
        )

    def __repr__(self) -> str:
        return f"<RedisStore {self.url}>"

    # lifetime

    def open(self) -> Deferred[None]:
        """
        Start the connection pool, and check (or write) the layout version.
        """
        if self._redis is None:
            self._redis = self._connections.open()
        return Deferred.fromCoroutine(self._check_layout())

    async def _check_layout(self) -> None:
        info = await self._call("execute_command", "INFO", "server")
        version = _redis_version(str(info))
        if version < MINIMUM_REDIS:
            raise ConfigError(
                f"[store] url: {self.url} is Redis {'.'.join(map(str, version))}; "
                f"ccserver needs {'.'.join(map(str, MINIMUM_REDIS))} or later (SET ... EXAT)"
            )
        await self._call("set", SCHEMA_VERSION_KEY, str(LAYOUT_VERSION), only_if_not_exists=True)
        layout = await self._call("get", SCHEMA_VERSION_KEY)
        if int(layout) > LAYOUT_VERSION:
            raise ConfigError(
                f"[store] url: {self.url} holds ccserver data of layout version {layout}, "
                f"newer than this ccserver knows ({LAYOUT_VERSION}): upgrade ccserver"
            )
        if int(layout) < LAYOUT_VERSION:
            # version 1 has no bindings: its (empty) index is up to date
            await self._call("set", SCHEMA_VERSION_KEY, str(LAYOUT_VERSION))
            self._log.info(
                "Brought {url} to layout version {version}", url=self.url, version=LAYOUT_VERSION
            )

    def close(self) -> Deferred[None]:
        """
        Stop reconnecting and close the connections.
        """
        if self._redis is None:
            return succeed(None)
        self._redis = None
        return self._connections.close()

    def _call(self, command: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run one txredisapi command, bounded in time, with unavailability as
        L{StoreUnavailable}.
        """
        if self._redis is None:
            # closed (at shutdown, with requests still in flight), or not
            # opened yet
            return fail(StoreUnavailable(f"{self.url}: not open"))
        d: Deferred[Any] = getattr(self._redis, command)(*args, **kwargs)
        d.addErrback(self._transient_reply)
        return self._guard(d)

    def _write(self, command: str, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        L{_call} for a write that must survive a failover: answered only
        once C{wait_replicas} replicas have acknowledged it.
        """
        if not self.wait_replicas:
            return self._call(command, *args, **kwargs)
        return self._call(
            "replicated",
            command,
            *args,
            replicas=self.wait_replicas,
            timeout=self.wait_timeout,
            **kwargs,
        )

    def _transient_reply(self, failure: Failure) -> Failure:
        """
        Turn Redis' "not now" error replies into L{StoreUnavailable}; at
        C{READONLY} (the server is a replica now), reconnect to the primary.
        """
        if isinstance(failure.value, txredisapi.ResponseError) and str(failure.value).startswith(
            _TRANSIENT_REPLIES
        ):
            if str(failure.value).startswith("READONLY"):
                self._connections.demoted()
            raise StoreUnavailable(str(failure.value)) from None
        return failure

    # IClientStore

    def add_client(self, client: Client) -> Deferred[None]:
        """
        C{SET NX}, one command; a client with bindings, L{_SET_CLIENT_SCRIPT}.
        """
        bindings = _bindings(client)
        if bindings:
            d = self._set_client(client, "add", bindings)
        else:
            d = self._write(
                "set",
                client_key(client.client_id),
                CLIENTS.to_json(client),
                only_if_not_exists=True,
            )
            d.addCallback(lambda reply: reply is not None)

        def stored(done: bool) -> None:
            if not done:
                raise ClientExists(client.client_id)

        added: Deferred[None] = d.addCallback(stored)
        return added

    @staticmethod
    def _bound(reply: object, client: Client) -> bool:
        """
        What L{_SET_CLIENT_SCRIPT} answered: nothing stored (0), a taken
        binding (negative: its index from 1), or stored.
        """
        answer = int(str(reply))
        if answer < 0:
            raise BindingTaken(client.federated_identities[-answer - 1])
        return answer == 1

    def clients_bound_to(self, issuer: str, subject: str) -> Deferred[list[str]]:
        d = self._call("hvals", BINDINGS_PREFIX + binding_key(issuer, subject))
        d.addCallback(lambda ids: [str(i) for i in ids])
        return d

    def get_client(self, client_id: str) -> Deferred[Client | None]:
        d = self._call("get", client_key(client_id))
        d.addCallback(lambda text: None if text is None else CLIENTS.from_json(text))
        return d

    def replace_client(self, client: Client) -> Deferred[bool]:
        """
        One script: the client, and its bindings in place of those it had
        (C{SET XX} would leave the old ones in the index).
        """
        return self._set_client(client, "replace", _bindings(client))

    def _set_client(self, client: Client, mode: str, bindings: list[str]) -> Deferred[bool]:
        """
        L{_SET_CLIENT_SCRIPT}: fires with whether the client was stored.
        """
        d = self._write(
            "eval",
            _SET_CLIENT_SCRIPT,
            [client_key(client.client_id), client_bindings_key(client.client_id)],
            [CLIENTS.to_json(client), client.client_id, BINDINGS_PREFIX, mode, *bindings],
        )
        d.addCallback(self._bound, client)
        return d

    @inlineCallbacks
    def list_clients(
        self, cursor: str, count: int
    ) -> Generator[Deferred[Any], Any, tuple[list[Client], str]]:
        """
        C{SCAN} over the client keys (the cursor is SCAN's; it never blocks
        Redis as C{KEYS} would), then one C{MGET} for the page's records.
        A client deleted between the two is left out.
        """
        reply = yield self._call(
            "scan", int(cursor or "0"), pattern=client_key("*"), count=max(1, count)
        )
        next_cursor, keys = str(reply[0]), list(reply[1])
        clients: list[Client] = []
        if keys:
            texts = yield self._call("mget", keys)
            clients = [CLIENTS.from_json(text) for text in texts if text is not None]
        return clients, "" if next_cursor == "0" else next_cursor

    def delete_client(
        self, client_id: str, issued_before: int, mark_expires_at: int
    ) -> Deferred[bool]:
        d = self._write(
            "eval",
            _DELETE_CLIENT_SCRIPT,
            [
                client_key(client_id),
                client_bindings_key(client_id),
                client_tokens_key(client_id),
                revoked_client_key(client_id),
            ],
            [
                str(issued_before),
                client_id,
                BINDINGS_PREFIX,
                str(mark_expires_at),
                token_key(""),
            ],
        )
        d.addCallback(lambda count: int(count) > 0)
        return d

    # IKeyStore

    def list_keys(self) -> Deferred[list[StoredKey]]:
        d = self._call("hgetall", KEYS_KEY)

        def keys(fields: Mapping[str, str]) -> list[StoredKey]:
            found = [KEYS.from_json(text) for text in fields.values()]
            return sorted(found, key=lambda k: (k.created_at, k.kid))

        d.addCallback(keys)
        return d

    def add_key(self, key: StoredKey) -> Deferred[None]:
        # A kid taken already is replaced, as MemoryStore does.
        d = self._write("hset", KEYS_KEY, key.kid, KEYS.to_json(key))
        d.addCallback(lambda _: None)
        return d

    def replace_key(self, key: StoredKey) -> Deferred[bool]:
        d = self._write("eval", _REPLACE_KEY_SCRIPT, [KEYS_KEY], [key.kid, KEYS.to_json(key)])
        d.addCallback(lambda replaced: int(replaced) == 1)
        return d

    def delete_key(self, kid: str) -> Deferred[bool]:
        d = self._write("hdel", KEYS_KEY, kid)
        d.addCallback(lambda count: int(count) > 0)
        return d

    # ITokenStore: every record carries a Redis TTL (EXAT) past its expiry
    # (kept_until), so Redis forgets it by itself; purge_expired
    # deletes expired opaque tokens before that, at its own pace.

    def add_token(self, token: TokenRecord) -> Deferred[None]:
        """
        Written with the other tokens of its batch (L{_add_tokens}); fires
        once the batch's script has answered, so the token is in Redis
        before its answer is sent, or fails as the batch did.
        """
        return self._tokens.add(
            _PendingToken(
                digest=token.token_digest,
                client_id=token.client_id,
                text=TOKENS.to_json(token),
                expires_at=str(token.expires_at),
                issued_at=token.issued_at,
                kept_until=str(
                    kept_until(token.token_digest, token.issued_at, token.expires_at)
                ),
            )
        )

    def _add_tokens(self, tokens: list[_PendingToken]) -> Deferred[None]:
        """
        The tokens of L{add_token}'s batch, in one call of
        L{_ADD_TOKENS_SCRIPT}: one round trip and one script run for the
        lot, where one token at a time cost one each.
        """
        keys = [token_key(t.digest) for t in tokens]
        keys.append(TOKEN_CLIENTS_KEY)
        now = int(cast(IReactorTime, self._reactor).seconds())
        args = [str(len(tokens)), str(TRIM_PER_TOKEN), str(now)]
        by_client: dict[str, list[_PendingToken]] = {}
        for t in tokens:
            args += (t.text, t.kept_until)
            by_client.setdefault(t.client_id, []).append(t)
        for client_id, own in by_client.items():
            keys.append(client_tokens_key(client_id))
            # at most TRIM_PER_TOKEN entries for each of its tokens in the
            # batch are trimmed from the client's set
            before = min(trimmed_before(t.issued_at, int(t.expires_at)) for t in own)
            kept = max(int(t.kept_until) for t in own)
            args += (client_id, str(before), str(kept), str(len(own)))
            for t in own:
                args += (t.expires_at, t.digest)
        d = self._write("eval", _ADD_TOKENS_SCRIPT, keys, args)
        d.addCallback(lambda _: None)
        return d

    def get_token(self, token_digest: str) -> Deferred[TokenRecord | None]:
        """
        Read with the other lookups of its batch (L{GroupLookup}): one
        script call for those asked for during the previous one's round
        trip.
        """
        return self.token_lookups.get(token_digest)

    def _get_tokens(self, digests: list[str]) -> Deferred[Mapping[str, TokenRecord]]:
        d = self._call(
            "eval", _GET_TOKENS_SCRIPT, [token_key(digest) for digest in digests], [revoked_client_key("")]
        )
        return d.addCallback(_found, digests, TOKENS.from_json)

    def delete_token(self, token_digest: str) -> Deferred[bool]:
        d = self._write("delete", token_key(token_digest))
        d.addCallback(lambda count: int(count) > 0)
        return d

    def revoke_jti(self, jti: str, expires_at: int) -> Deferred[None]:
        # kept until the later of two expiries, atomically
        d = self._write("eval", _REVOKE_SCRIPT, [revoked_key(jti)], [str(expires_at)])
        d.addCallback(lambda _: None)
        return d

    def is_revoked(self, jti: str) -> Deferred[bool]:
        return self.revoked_jti_lookups.get(jti).addCallback(bool)

    def _revoked_jtis(self, jtis: list[str]) -> Deferred[Mapping[str, bool]]:
        d = self._call("mget", [revoked_key(jti) for jti in jtis])
        return d.addCallback(_found, jtis, lambda _: True)

    def client_revoked_before(self, client_id: str) -> Deferred[int | None]:
        return self.revoked_client_lookups.get(client_id)

    def _revoked_clients(self, client_ids: list[str]) -> Deferred[Mapping[str, int]]:
        d = self._call("mget", [revoked_client_key(c) for c in client_ids])
        return d.addCallback(_found, client_ids, lambda mark: int(str(mark).split()[0]))

    def use_once(self, key: str, expires_at: int) -> Deferred[bool]:
        """
        C{SET key 1 NX EXAT expires_at}: atomic in Redis, and Redis forgets
        the record at its expiry (at once, if C{expires_at} is past:
        callers refuse an expired assertion before they ask).
        """
        d = self._write(
            "execute_command",
            "SET",
            used_once_key(key),
            "1",
            "NX",
            "EXAT",
            str(max(int(expires_at), 1)),
        )
        d.addCallback(lambda reply: reply is not None)
        return d

    def purge_expired(self, now: int) -> Deferred[int]:
        """
        Delete the opaque tokens that expired before C{now}, found along
        their clients' sets (sorted by expiry; L{TOKEN_CLIENTS_KEY} names
        the clients), L{PURGE_BATCH} a script call, with a rest after each
        (L{rest}; the calls take at most L{PURGE_SHARE} of the time), so that the
        tokens of a busy hour go at a pace the requests share Redis with,
        as the SQL stores' purge goes, instead of in Redis's own expiry
        cycle's bursts.  Fires with how many tokens went.

        Everything else here carries a Redis TTL and goes by itself, as
        does a token's key the purge misses (none is missed unless the
        purge does not run): at L{kept_until}.
        """
        return ensureDeferred(self._purge(now))

    async def _purge(self, now: int) -> int:
        clock = cast(IReactorTime, self._reactor)
        count, cursor = 0, 0
        while True:
            reply = await self._call("sscan", TOKEN_CLIENTS_KEY, cursor, count=PURGE_CLIENTS)
            cursor, clients = int(reply[0]), [str(c) for c in reply[1]]
            while clients:
                # the page's clients not done with yet, each batch
                keys = [TOKEN_CLIENTS_KEY, *(client_tokens_key(c) for c in clients)]
                started = clock.seconds()
                deleted, done = await self._write(
                    "eval", _PURGE_TOKENS_SCRIPT, keys, [str(now), str(PURGE_BATCH), token_key(""), *clients]
                )
                count += int(deleted)
                clients = clients[int(done):]
                if int(deleted):
                    await rest(clock, clock.seconds() - started, PURGE_SHARE)
            if cursor == 0:
                return count

    # IInitialAccessTokenStore

    def add_initial_access_token(self, token: InitialAccessToken) -> Deferred[None]:
        digest = token.token_digest
        d = self._write(
            "eval",
            _ADD_INITIAL_ACCESS_TOKEN_SCRIPT,
            [
                initial_access_token_key(digest),
                initial_access_token_uses_key(digest),
                INITIAL_ACCESS_TOKEN_IDS_KEY,
            ],
            [
                INITIAL_ACCESS_TOKENS.to_json(token),
                token.token_id,
                digest,
                str(token.expires_at),
            ],
        )
        d.addCallback(lambda _: None)
        return d

    @staticmethod
    def _initial_access_token(
        text: str | None, uses: str | None, revoked: str | None
    ) -> InitialAccessToken | None:
        if text is None:
            return None
        token = INITIAL_ACCESS_TOKENS.from_json(text)
        return evolve(
            token,
            uses=int(uses or 0),
            revoked_at=int(revoked) if revoked is not None else token.revoked_at,
        )

    def get_initial_access_token(self, token_digest: str) -> Deferred[InitialAccessToken | None]:
        d = self._call("mget", _initial_access_token_keys(token_digest))
        d.addCallback(lambda reply: self._initial_access_token(*reply))
        return d

    @inlineCallbacks
    def list_initial_access_tokens(
        self,
    ) -> Generator[Deferred[Any], Any, list[InitialAccessToken]]:
        """
        The id index, then one C{MGET} for every token's keys; the ids of
        tokens that have expired are dropped from the index.
        """
        ids: Mapping[str, str] = yield self._call("hgetall", INITIAL_ACCESS_TOKEN_IDS_KEY)
        if not ids:
            return []
        names = list(ids)
        keys = [key for token_id in names for key in _initial_access_token_keys(ids[token_id])]
        reply = yield self._call("mget", keys)
        tokens, gone = [], []
        for n, token_id in enumerate(names):
            token = self._initial_access_token(*reply[3 * n : 3 * n + 3])
            if token is None:
                gone.append(token_id)
            else:
                tokens.append(token)
        if gone:
            yield self._call("hdel", INITIAL_ACCESS_TOKEN_IDS_KEY, gone)
        return sorted(tokens, key=lambda t: (t.created_at, t.token_id))

    def revoke_initial_access_token(self, token_id: str, now: int) -> Deferred[bool]:
        d = self._write(
            "eval",
            _REVOKE_INITIAL_ACCESS_TOKEN_SCRIPT,
            [INITIAL_ACCESS_TOKEN_IDS_KEY],
            [
                token_id,
                initial_access_token_key(""),
                initial_access_token_revoked_key(""),
                str(now),
            ],
        )
        d.addCallback(lambda done: int(done) == 1)
        return d

    def register_with_initial_access_token(
        self, token_digest: str, client: Client, now: int
    ) -> Deferred[InitialAccessToken | None]:
        """
        One script (L{_REGISTER_WITH_INITIAL_ACCESS_TOKEN_SCRIPT}), one
        round trip, answered once replicas have it: a use counted, and the
        client stored, must survive a failover together.
        """
        d = self._write(
            "eval",
            _REGISTER_WITH_INITIAL_ACCESS_TOKEN_SCRIPT,
            [
                client_key(client.client_id),
                client_bindings_key(client.client_id),
                *_initial_access_token_keys(token_digest),
            ],
            [
                CLIENTS.to_json(client),
                client.client_id,
                BINDINGS_PREFIX,
                str(now),
                *_bindings(client),
            ],
        )

        def registered(reply: list[Any]) -> InitialAccessToken | None:
            uses = int(reply[0])
            if uses == 0:
                return None
            if uses == -1:
                raise ClientExists(client.client_id)
            if uses == -2:
                raise BindingTaken(client.federated_identities[int(reply[1]) - 1])
            return self._initial_access_token(str(reply[1]), str(uses), None)

        d.addCallback(registered)
        return d

    # IAuthAttemptStore

    def reserve_attempt(self, keys: AttemptKeys, now: float, window: float) -> Deferred[Reservation]:
        """
        One script (L{_RESERVE_ATTEMPT_SCRIPT}), one round trip.
        """
        now_ms = int(now * 1000)
        d = self._call(
            "eval",
            _RESERVE_ATTEMPT_SCRIPT,
            [
                auth_attempts_key(keys.counter),
                auth_attempts_key(keys.cap or keys.counter),
                known_source_key(keys.known),
            ],
            [
                str(now_ms),
                str(now_ms + max(1, int(window * 1000))),
                str(keys.budget),
                str(keys.cap_budget if keys.cap is not None else 0),
            ],
        )

        def reservation(reply: list[Any]) -> Reservation:
            granted, count, ends, cap_ends, capped = (int(value) for value in reply)
            return Reservation(
                granted == 1,
                count,
                ends / 1000,
                None if cap_ends < 0 else cap_ends / 1000,
                capped == 1,
            )

        d.addCallback(reservation)
        return d

    def release_attempt(self, release: AttemptRelease, now: float) -> Deferred[None]:
        """
        One script (L{_RELEASE_ATTEMPT_SCRIPT}), one round trip.  The
        window ends go as Redis keeps them, integer milliseconds.
        """
        known = release.known is not None
        keys = [known_source_key(release.known) if release.known is not None else PREFIX + "none"]
        args = [str(max(1, int(release.known_for * 1000)) if known else 0)]
        keys += [auth_attempts_key(key) for key, _ in release.slots]
        args += [str(round(ends * 1000)) for _, ends in release.slots]
        d = self._call("eval", _RELEASE_ATTEMPT_SCRIPT, keys, args)
        d.addCallback(lambda _: None)
        return d

    # IRateLimitStore

    def take_tokens(
        self, key: str, tokens_per_second: float, burst: int, wanted: int, now: float
    ) -> Deferred[TokenGrant]:
        """
        One script (L{_TAKE_TOKENS_SCRIPT}), one round trip.
        """
        d = self._call(
            "eval",
            _TAKE_TOKENS_SCRIPT,
            [bucket_key(key)],
            [repr(float(tokens_per_second)), str(burst), str(wanted), str(int(now * 1000))],
        )

        def grant(reply: list[Any]) -> TokenGrant:
            taken, retry_ms = (int(value) for value in reply)
            return TokenGrant(taken, retry_ms / 1000)

        d.addCallback(grant)
        return d

    # ILeaseStore

    def take_lease(self, name: str, holder: str, now: float, duration: float) -> Deferred[bool]:
        """
        One script (L{_TAKE_LEASE_SCRIPT}).  The lease's time is counted by
        Redis' clock from when the script runs, not from C{now}: the same
        length, without a clock skew between this process and Redis.
        """
        d = self._call(
            "eval",
            _TAKE_LEASE_SCRIPT,
            [lease_key(name)],
            [holder, str(max(1, int(duration * 1000)))],
        )
        d.addCallback(lambda taken: int(taken) == 1)
        return d

    def end_lease(self, name: str, holder: str) -> Deferred[None]:
        d = self._call("eval", _END_LEASE_SCRIPT, [lease_key(name)], [holder])
        d.addCallback(lambda _: None)
        return d
