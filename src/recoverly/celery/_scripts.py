"""Lua sources of the task store; each runs atomically inside Redis.

Keys of one idempotency key ``k`` under the prefix ``p`` share the hash tag
``{k}`` so that they land on one Redis Cluster slot:

- ``p:{k}:fence``   the fencing counter (INCR: every new owner gets a larger token)
- ``p:{k}:lease``   the current owner's token, with a TTL the heartbeat renews
- ``p:{k}:result``  the finished task's result (JSON)
- ``p:{k}:state``   a hash: ``started``, ``finished``, ``failures``, ``dead``
- ``p:{k}:history`` a list of JSON delivery records
"""

from __future__ import annotations

__all__ = ["BEGIN", "COMMIT", "FINISH", "RENEW"]

#: KEYS: result, lease, fence, state, history.
#: ARGV: lease ttl ms, state ttl ms (0 = keep), cap on lost deliveries (-1 = none),
#: the "started" history entry as a JSON object ('' = none; token and losses are added).
#: Returns {"done", result} | {"dead", losses, newly marked 1/0} | {"busy", pttl} |
#: {"owner", token, losses, failures}.
BEGIN = """
local res = redis.call('GET', KEYS[1])
if res then return {'done', res} end
local started = tonumber(redis.call('HGET', KEYS[4], 'started') or '0')
local finished = tonumber(redis.call('HGET', KEYS[4], 'finished') or '0')
local losses = started - finished
if redis.call('HGET', KEYS[4], 'dead') then return {'dead', tostring(losses), '0'} end
local ttl = redis.call('PTTL', KEYS[2])
if ttl ~= -2 then return {'busy', tostring(ttl)} end
local cap = tonumber(ARGV[3])
if cap >= 0 and losses > cap then
  redis.call('HSET', KEYS[4], 'dead', '1')
  return {'dead', tostring(losses), '1'}
end
local token = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[2], token, 'PX', ARGV[1])
redis.call('HINCRBY', KEYS[4], 'started', 1)
if ARGV[4] ~= '' then
  local entry = string.sub(ARGV[4], 1, -2) .. ', "token": ' .. token ..
    ', "lost_before": ' .. losses .. '}'
  redis.call('RPUSH', KEYS[5], entry)
  redis.call('LTRIM', KEYS[5], -100, -1)
end
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[3], ARGV[2])
  redis.call('PEXPIRE', KEYS[4], ARGV[2])
  redis.call('PEXPIRE', KEYS[5], ARGV[2])
end
local failures = redis.call('HGET', KEYS[4], 'failures') or '0'
return {'owner', tostring(token), tostring(losses), failures}
"""

#: KEYS: lease. ARGV: token, lease ttl ms. Returns 1 when renewed, 0 when lost.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

#: KEYS: fence, lease, result, state, history.
#: ARGV: token, payload, result ttl ms (0 = keep), history entry ('' = none).
#: Writes the result only while ``token`` is the newest fencing token. Returns 1 or 0.
COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[3], ARGV[2])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('HINCRBY', KEYS[4], 'finished', 1)
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[5], ARGV[4])
  redis.call('LTRIM', KEYS[5], -100, -1)
end
return 1
"""

#: KEYS: lease, state, history. ARGV: token, outcome, history entry ('' = none).
#: Ends a delivery that stored no result: counts it finished and frees the lease.
#: outcome "retry" counts a failed attempt, "gave-up" starts the count afresh (a
#: later submission of the same work gets every attempt again), "" leaves it.
FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('HINCRBY', KEYS[2], 'finished', 1)
if ARGV[2] == 'retry' then redis.call('HINCRBY', KEYS[2], 'failures', 1) end
if ARGV[2] == 'gave-up' then redis.call('HSET', KEYS[2], 'failures', 0) end
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('LTRIM', KEYS[3], -100, -1)
end
return 1
"""
