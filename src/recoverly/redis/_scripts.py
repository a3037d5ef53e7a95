"""The Lua sources run by Redis: one script for the breaker, one for the rate limiter.

Both read the server's clock with ``TIME`` (never a client clock), so every
process agrees on when an OPEN breaker may probe and when a token is free.
Times travel as strings (``%.17g``): Redis truncates Lua numbers to integers.

The breaker's state is one hash with the fields

====  =====================================================================
s     state: ``closed``, ``open``, ``half_open``, ``forced_open``, ``disabled``
g     generation, incremented on every state change (the permits)
c     consecutive counted failures
f     counted failures since the hash was created
t     consecutive trips without a successful probe
p     probe slots taken in HALF_OPEN (counted across all processes)
u     server time at which an OPEN breaker may probe
l     server time after which the probe slots are presumed lost and reclaimed
====  =====================================================================

and every change of generation is published on the breaker's channel as
``"<generation> <state> <consecutive> <seconds left open>"``.
"""

from __future__ import annotations

__all__ = ["BREAKER", "GCRA", "GCRA_EPOCH"]

#: KEYS: hash, channel. ARGV: op, permit, failure threshold (0: off), recovery
#: timeout, backoff factor, cap on the open duration (-1: none), largest open
#: duration, probes allowed at a time, probe lease seconds, target state (force).
#: Reply: permit (-1: rejected), state, generation, consecutive, seconds left
#: open ("" unless OPEN), failed calls, trips, probes in flight, then four
#: fields per state change: previous, new, failures, open duration ("" unless OPEN).
BREAKER = """
local key, channel = KEYS[1], KEYS[2]
local op = ARGV[1]
local permit = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local h = redis.call('HMGET', key, 's', 'g', 'c', 'f', 't', 'p', 'u', 'l')
local state = h[1] or 'closed'
local gen = tonumber(h[2]) or 0
local gen0 = gen
local cons = tonumber(h[3]) or 0
local failed = tonumber(h[4]) or 0
local trips = tonumber(h[5]) or 0
local probes = tonumber(h[6]) or 0
local open_until = tonumber(h[7]) or 0
local lease = tonumber(h[8]) or 0
local changes = {}
local dirty = false
local admitted = -1

local function fmt(x) return string.format('%.17g', x) end

local function move(new, failures, duration)
  changes[#changes + 1] = state
  changes[#changes + 1] = new
  changes[#changes + 1] = failures
  changes[#changes + 1] = duration
  state = new
  gen = gen + 1
  probes = 0
  dirty = true
end

local function open(failures)
  trips = trips + 1
  local duration = tonumber(ARGV[4])
  local backoff = tonumber(ARGV[5])
  if backoff > 1 and trips > 1 then duration = duration * backoff ^ (trips - 1) end
  local largest = tonumber(ARGV[7])
  if duration > largest then duration = largest end
  local cap = tonumber(ARGV[6])
  if cap >= 0 and duration > cap then duration = cap end
  open_until = now + duration
  move('open', failures, fmt(duration))
end

local function close()
  local previous = state
  if previous ~= 'closed' then move('closed', 0, '') else gen = gen + 1 end
  cons = 0
  trips = 0
  probes = 0
  dirty = true
end

local function half_open_if_due()
  if state == 'open' and now >= open_until then move('half_open', 0, '') end
end

if op == 'acquire' then
  if state == 'closed' or state == 'disabled' then
    admitted = gen
  elseif state == 'open' then
    half_open_if_due()
  end
  if state == 'half_open' then
    local allowed = tonumber(ARGV[8])
    if probes >= allowed and now >= lease then probes = 0 end
    if probes < allowed then
      probes = probes + 1
      lease = now + tonumber(ARGV[9])
      admitted = gen
      dirty = true
    end
  end
elseif op == 'poll' then
  half_open_if_due()
elseif op == 'success' then
  if permit == gen then
    if state == 'closed' and cons ~= 0 then
      cons = 0
      dirty = true
    elseif state == 'half_open' then
      close()
    end
  end
elseif op == 'failure' then
  if state ~= 'disabled' then
    failed = failed + 1
    dirty = true
    if permit == gen then
      if state == 'half_open' then
        cons = cons + 1
        open(cons)
      elseif state == 'closed' then
        cons = cons + 1
        local threshold = tonumber(ARGV[3])
        if threshold > 0 and cons >= threshold then open(cons) end
      end
    end
  end
elseif op == 'release' then
  if permit == gen and state == 'half_open' and probes > 0 then
    probes = probes - 1
    dirty = true
  end
elseif op == 'force' then
  local target = ARGV[10]
  if target == 'closed' then
    close()
  else
    if state ~= target then move(target, 0, '') else gen = gen + 1 end
    probes = 0
    dirty = true
  end
end

if dirty then
  redis.call('HSET', key, 's', state, 'g', gen, 'c', cons, 'f', failed, 't', trips,
    'p', probes, 'u', fmt(open_until), 'l', fmt(lease))
end
local left = ''
if state == 'open' then
  local seconds = open_until - now
  if seconds < 0 then seconds = 0 end
  left = fmt(seconds)
end
if gen ~= gen0 then
  redis.call('PUBLISH', channel, gen .. ' ' .. state .. ' ' .. cons .. ' ' .. left)
end
local reply = {admitted, state, gen, cons, left, failed, trips, probes}
for i = 1, #changes do reply[#reply + 1] = changes[i] end
return reply
"""

#: Times in the limiter's keys count seconds from this Unix time: smaller
#: numbers keep a double's resolution near a nanosecond instead of 0.24 us.
GCRA_EPOCH = 1_700_000_000

#: GCRA (generic cell rate algorithm). KEYS: the limiter's key. ARGV: emission
#: interval (seconds per token), burst (tokens), cost (tokens; 0 only reads).
#: Reply: admitted (1 or 0), seconds until the cost would be admitted ("0" when
#: admitted), seconds of refill owed before this call. The key holds the
#: theoretical arrival time and expires when that time has passed. A wait
#: under one microsecond (the resolution of ``TIME``) counts as none.
GCRA = """
local clock = redis.call('TIME')
local now = (tonumber(clock[1]) - EPOCH) + tonumber(clock[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local owed = string.format('%.17g', tat - now)
if cost == 0 then return {1, '0', owed} end
local new_tat = tat + cost * interval
local wait = new_tat - burst * interval - now
if wait > 1e-6 then
  return {0, string.format('%.17g', wait), owed}
end
local ttl = math.ceil((new_tat - now) * 1000) + 1
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', ttl)
return {1, '0', owed}
""".replace("EPOCH", str(GCRA_EPOCH))
