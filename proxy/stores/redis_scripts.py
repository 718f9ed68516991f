"""Lua for :class:`~proxy.stores.redis.RedisStore`: every dedup and outbox operation is one EVALSHA.

Dedup record ``<ns>:{<key>}:d`` is a hash: ``s`` state (``f`` in flight, ``r`` released, ``d`` done), ``a``
attempt, ``o`` owner token, ``l`` lease end (ms, Redis clock), ``t`` ttl (ms), ``r`` reply, ``w`` "someone is
waiting in settle", ``c`` first seen (ms, Redis clock) and ``x`` the first sighting's trace id. Each script
touches that one key, so it works on Redis Cluster whatever the key's slot; a claim that creates the record
also files it under its lookup aliases (``<ns>:{<alias>}:a`` -> key, extra KEYS), which only a single server
takes in the same script (on a cluster the store writes them apart).

Leases are compared against Redis' own clock (``TIME``), not one passed in: replicas whose clocks disagree by
a second would otherwise disagree on whether a lease expired, and the TTLs (``PEXPIRE``) run on that clock
anyway. Scripts that read ``TIME`` and then write are fine since Redis 5 (effects replication).

``claim`` and ``remember`` are idempotent for their caller's token: redis-py retries a command once when its
connection is lost, and the first run may have been applied with only its reply lost. Without the token the
retry would see its own write: ``claim`` would wait on itself as IN_FLIGHT, ``remember`` would call a genuine
request a replay.

``complete``/``release`` publish the key on the store's channel only when ``w`` is set, so the common case
(nobody waiting) costs no message.

Outbox keys share the hash tag ``{<ns>-outbox}``: ``due`` (zset, score = when due: ``next_at``, or the lease
end while leased), ``created`` (zset of queued items by creation time, for the oldest age), ``dead`` (zset of
dead letters by creation time), ``meta`` (hash id -> JSON with route, attempts, and times as decimal strings
so Lua never rounds them) and ``payload`` (hash id -> bytes). All keys are passed in KEYS.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# claim(k, token, lease, ttl, trace, key, first alias index in KEYS) -> {state, attempt[, reply | ms left]};
# needs ``now`` (_NOW) in scope.
_CLAIM_FN = """
local function claim(k, token, lease, ttl, trace, key, aliases)
  local s, a, l, r, o = unpack(redis.call('HMGET', k, 's', 'a', 'l', 'r', 'o'))
  if not s then
    redis.call('HSET', k, 's', 'f', 'a', 1, 'o', token, 'l', now + lease, 't', ttl, 'c', now, 'x', trace)
    redis.call('PEXPIRE', k, math.max(lease, ttl))
    for i = aliases, #KEYS do redis.call('SET', KEYS[i], key, 'PX', ttl) end
    return {'new', 1}
  end
  if s == 'f' and o == token then
    return {'new', tonumber(a)}
  end
  a = tonumber(a) + 1
  if s == 'd' then
    redis.call('HSET', k, 'a', a, 't', ttl)
    redis.call('PEXPIRE', k, ttl)
    return {'done', a, r}
  end
  if s == 'f' and tonumber(l) > now then
    local left = tonumber(l) - now
    redis.call('HSET', k, 'a', a, 't', ttl)
    redis.call('PEXPIRE', k, math.max(ttl, left))
    return {'in_flight', a, left}
  end
  redis.call('HSET', k, 's', 'f', 'a', a, 'o', token, 'l', now + lease, 't', ttl)
  redis.call('PEXPIRE', k, math.max(lease, ttl))
  return {'new', a}
end
"""

# KEYS: the record, then its aliases; ARGV: token, lease, ttl, trace id, key.
CLAIM = (
    _NOW
    + _CLAIM_FN
    + "return claim(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], 2)"
)

REMEMBER = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if v == ARGV[1] then return 1 end
return 0
"""

# The replay cache for one signed request in one round trip; both keys share the signed values' hash tag, so
# it runs on a cluster too. remember_signed(with body, alone, token, ttl ms) -> new | repeat | forged; a
# forgery writes nothing (sent again, it is refused again). The token plays the part it plays in REMEMBER: a
# retried script recognises its own writes.
_REMEMBER_SIGNED_FN = """
local function remember_signed(kb, ks, token, ttl)
  local v = redis.call('GET', kb)
  if v and v ~= token then return 'repeat' end
  local w = redis.call('GET', ks)
  if w and w ~= token then return 'forged' end
  if not v then redis.call('SET', kb, token, 'PX', ttl) end
  if not w then redis.call('SET', ks, token, 'PX', ttl) end
  return 'new'
end
"""

REMEMBER_SIGNED = _REMEMBER_SIGNED_FN + "return remember_signed(KEYS[1], KEYS[2], ARGV[1], ARGV[2])"

# Both for one verified request: the replay cache, then (unless forged) the dedup claim, with one token.
# KEYS: signed values with the body, signed values alone, the dedup record, its aliases; ARGV: token, lease,
# ttl, replay ttl, trace id, key.
# Returns {sighting} when forged (no claim), else {sighting, state, attempt[, reply | ms left]}.
CLAIM_SIGNED = (
    _NOW
    + _CLAIM_FN
    + _REMEMBER_SIGNED_FN
    + """
local seen = remember_signed(KEYS[1], KEYS[2], ARGV[1], ARGV[4])
if seen == 'forged' then return {seen} end
local c = claim(KEYS[3], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[5], ARGV[6], 4)
table.insert(c, 1, seen)
return c
"""
)

COMPLETE = """
local k = KEYS[1]
local s, o, a, w = unpack(redis.call('HMGET', k, 's', 'o', 'a', 'w'))
if s == 'd' then return 0 end
redis.call('HSET', k, 's', 'd', 'r', ARGV[2], 't', ARGV[3], 'a', a or 1)
redis.call('HDEL', k, 'o', 'l', 'w')
redis.call('PEXPIRE', k, ARGV[3])
if w then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
if s == 'f' and o == ARGV[1] then return 1 end
return 0
"""

RELEASE = """
local k = KEYS[1]
local s, o, t, w = unpack(redis.call('HMGET', k, 's', 'o', 't', 'w'))
if s ~= 'f' or o ~= ARGV[1] then return 0 end
redis.call('HSET', k, 's', 'r')
redis.call('HDEL', k, 'o', 'l', 'w')
redis.call('PEXPIRE', k, t)
if w then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1
"""

SETTLE = (
    _NOW
    + """
local k, token, lease = KEYS[1], ARGV[1], tonumber(ARGV[2])
local s, a, l, r, t = unpack(redis.call('HMGET', k, 's', 'a', 'l', 'r', 't'))
if not s then
  redis.call('HSET', k, 's', 'f', 'a', 1, 'o', token, 'l', now + lease, 't', lease, 'c', now)
  redis.call('PEXPIRE', k, lease)
  return {'new', 1}
end
a = tonumber(a)
if s == 'd' then return {'done', a, r} end
if s == 'f' and tonumber(l) > now then
  redis.call('HSET', k, 'w', 1)
  return {'in_flight', a, tonumber(l) - now}
end
redis.call('HSET', k, 's', 'f', 'o', token, 'l', now + lease)
redis.call('PEXPIRE', k, math.max(lease, tonumber(t)))
return {'new', a}
"""
)

# For wxgate lookup: {state, attempt, lease end, reply, first seen, trace, ms to live, now} (times: ms).
INSPECT = (
    _NOW
    + """
local s, a, l, r, c, x = unpack(redis.call('HMGET', KEYS[1], 's', 'a', 'l', 'r', 'c', 'x'))
if not s then return false end
return {s, a, l or false, r or false, c or false, x or '', redis.call('PTTL', KEYS[1]), now}
"""
)

# -- outbox: KEYS = due, created, dead, meta, payload ---------------------------------------------------------
OUTBOX_PUT = """
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return 1
"""

# ARGV: now, lease end, limit. A leased item's due score moves to the lease end: lapsed means due again.
OUTBOX_LEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[4], id)
  out[#out + 1] = redis.call('HGET', KEYS[5], id)
end
return out
"""

OUTBOX_ACK = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
return 1
"""

OUTBOX_RETRY = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local m = cjson.decode(redis.call('HGET', KEYS[4], ARGV[1]))
m['attempts'] = m['attempts'] + 1
m['next_at'] = ARGV[2]
m['last_error'] = ARGV[3]
redis.call('HSET', KEYS[4], ARGV[1], cjson.encode(m))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# Handed back untried: due again at ARGV[2], attempts unchanged.
OUTBOX_DEFER = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local m = cjson.decode(redis.call('HGET', KEYS[4], ARGV[1]))
m['next_at'] = ARGV[2]
m['last_error'] = ARGV[3]
redis.call('HSET', KEYS[4], ARGV[1], cjson.encode(m))
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

OUTBOX_BURY = """
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local m = cjson.decode(redis.call('HGET', KEYS[4], ARGV[1]))
m['last_error'] = ARGV[2]
redis.call('HSET', KEYS[4], ARGV[1], cjson.encode(m))
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], m['created_at'], ARGV[1])
return 1
"""

# ARGV: 'dead' | 'queued', limit. Queued in due order, dead letters oldest first.
OUTBOX_LIST = """
local zset = KEYS[1]
if ARGV[1] == 'dead' then zset = KEYS[3] end
local ids = redis.call('ZRANGE', zset, 0, tonumber(ARGV[2]) - 1)
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[4], id)
  out[#out + 1] = redis.call('HGET', KEYS[5], id)
end
return out
"""

OUTBOX_GET = """
return {redis.call('HGET', KEYS[4], ARGV[1]), redis.call('HGET', KEYS[5], ARGV[1])}
"""

# ARGV: now, 'one' | 'all', id, chunk. Returns {revived, looked at}; 'all' is called until a short chunk.
OUTBOX_REVIVE = """
local ids = {ARGV[3]}
if ARGV[2] == 'all' then ids = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[4]) - 1) end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', KEYS[3], id) then
    redis.call('ZREM', KEYS[3], id)
    local raw = redis.call('HGET', KEYS[4], id)
    if raw then
      local m = cjson.decode(raw)
      m['attempts'] = 0
      m['next_at'] = ARGV[1]
      m['created_at'] = ARGV[1]
      redis.call('HSET', KEYS[4], id, cjson.encode(m))
      redis.call('ZADD', KEYS[1], ARGV[1], id)
      redis.call('ZADD', KEYS[2], ARGV[1], id)
      n = n + 1
    end
  end
end
return {n, #ids}
"""

# ARGV: 'dead' | 'queued', 'one' | 'all', id, chunk. Returns {deleted, looked at}.
OUTBOX_PURGE = """
local zset = KEYS[1]
if ARGV[1] == 'dead' then zset = KEYS[3] end
local ids = {ARGV[3]}
if ARGV[2] == 'all' then ids = redis.call('ZRANGE', zset, 0, tonumber(ARGV[4]) - 1) end
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', zset, id) then
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[5], id)
    n = n + 1
  end
end
return {n, #ids}
"""

OUTBOX_STATS = """
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
return {redis.call('ZCARD', KEYS[1]), oldest[2] or false, redis.call('ZCARD', KEYS[3])}
"""


@dataclass(frozen=True, slots=True)
class Scripts:
    """The scripts registered on one client (SHA computed once; loaded on first NOSCRIPT)."""

    claim: AsyncScript
    remember: AsyncScript
    remember_signed: AsyncScript
    claim_signed: AsyncScript
    complete: AsyncScript
    release: AsyncScript
    settle: AsyncScript
    inspect: AsyncScript
    outbox_put: AsyncScript
    outbox_lease: AsyncScript
    outbox_ack: AsyncScript
    outbox_retry: AsyncScript
    outbox_defer: AsyncScript
    outbox_bury: AsyncScript
    outbox_list: AsyncScript
    outbox_get: AsyncScript
    outbox_revive: AsyncScript
    outbox_purge: AsyncScript
    outbox_stats: AsyncScript

    @classmethod
    def register(cls, client: Redis | RedisCluster) -> Scripts:
        return cls(**{f.name: client.register_script(globals()[f.name.upper()]) for f in fields(cls)})
