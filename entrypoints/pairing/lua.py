"""The key layout of the pairing app and its Lua scripts (see ``entrypoints/pairing/app.py``).

Every change of state is one script, so it is atomic: TAKE (two tickets from a queue into a worker's
in-flight hash), CREATE (check presence and lobby pointers, then create the pending lobby, or put
the healthy ticket back at the front), COMMIT, ROLLBACK, SETTLE (invalid or duplicate tickets) and
RECOVER (a dead worker's pending lobby rolled back, its tickets back at the front). Each acts only on
tickets still in the caller's in-flight hash: that fences off a worker whose pair was recovered.
Each is also safe to run twice (redis-py resends a command whose reply was lost to a timeout).
The scripts touch keys of several players, so the app runs on one Redis primary (not Cluster).
"""

from __future__ import annotations

QUEUE_PREFIX = "pairing:queue:"
LOBBY_PREFIX = "pairing:lobby:"
INFLIGHT_PREFIX = "pairing:inflight:"
LOBBIES = "pairing:lobbies"  # sorted set: committed lobby id -> created (unix microseconds)
LEASES = "pairing:leases"  # sorted set: worker id -> lease end (Redis time, ms)
OWNERS = "pairing:owners"  # hash: worker id -> {"host", "pid", "started"}
STATS = "pairing:stats"  # hash of pool-wide counters
DEAD = "pairing:dead"  # tickets that are not valid JSON tickets, with the reason


def queue_key(category: str) -> str:
    return f"{QUEUE_PREFIX}{category}"


def presence_key(player_id: str) -> str:
    return f"presence:{player_id}"


def channel(player_id: str) -> str:
    return f"player:{player_id}"


def lobby_pointer(player_id: str) -> str:
    return f"player:{player_id}:lobby"


def lobby_key(lobby_id: str) -> str:
    return f"{LOBBY_PREFIX}{lobby_id}"


def inflight_key(worker_id: str) -> str:
    return f"{INFLIGHT_PREFIX}{worker_id}"


_NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"
TAKE = f"""{_NOW_MS}
local lease = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not lease or tonumber(lease) <= now then return {{'lease'}} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {{'held'}} end  -- a leftover: hand it back first
if redis.call('LLEN', KEYS[1]) < 2 then return {{}} end
local a = redis.call('RPOP', KEYS[1])
local b = redis.call('RPOP', KEYS[1])
redis.call('HSET', KEYS[2], 't:' .. a, KEYS[1], 't:' .. b, KEYS[1])
return {{a, b}}
"""
# An in-flight hash holds 't:' .. <ticket> -> <its queue> per ticket and 'lobby' -> <the pending lobby id>.
# KEYS: in-flight, queue, presence a, presence b, pointer a, pointer b, lobby, stats
# ARGV: ticket a, ticket b, lobby id, worker id, category, players (JSON), ticket ids (JSON)
CREATE = """
if redis.call('HGET', KEYS[1], 'lobby') == ARGV[3] then  -- a retry after a lost reply
  return {'created', redis.call('HGET', KEYS[7], 'created_us')}
end
for i = 1, 2 do
  if redis.call('HEXISTS', KEYS[1], 't:' .. ARGV[i]) == 0 then return {'lost'} end
end
local verdicts, healthy = {}, true
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[2 + i]) == 0 then verdicts[i] = 'gone'; healthy = false
  elseif redis.call('EXISTS', KEYS[4 + i]) == 1 then verdicts[i] = 'busy'; healthy = false
  else verdicts[i] = 'requeued' end
end
if not healthy then
  for i = 2, 1, -1 do  -- b first, so that a (the older ticket) ends up at the very front
    redis.call('HDEL', KEYS[1], 't:' .. ARGV[i])
    if verdicts[i] == 'requeued' then redis.call('RPUSH', KEYS[2], ARGV[i]) end
    redis.call('HINCRBY', KEYS[8], verdicts[i] == 'requeued' and 'requeued' or 'dropped_' .. verdicts[i], 1)
  end
  return {'aborted', verdicts[1], verdicts[2]}
end
local t = redis.call('TIME')
local created = t[1] .. string.format('%06d', tonumber(t[2]))
redis.call('SET', KEYS[5], ARGV[3])
redis.call('SET', KEYS[6], ARGV[3])
redis.call('HSET', KEYS[7], 'lobby_id', ARGV[3], 'category', ARGV[5], 'players', ARGV[6],
  'tickets', ARGV[7], 'status', 'pending', 'owner', ARGV[4], 'created_us', created)
redis.call('HSET', KEYS[1], 'lobby', ARGV[3])
return {'created', created}
"""
# KEYS: in-flight, lobby, lobbies, stats; ARGV: ticket a, ticket b, lobby id, created (us)
COMMIT = """
if redis.call('HGET', KEYS[2], 'status') == 'ready' then return 1 end  -- a retry after a lost reply
if redis.call('HGET', KEYS[1], 'lobby') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[2], 'status', 'ready')
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('HDEL', KEYS[1], 't:' .. ARGV[1], 't:' .. ARGV[2], 'lobby')
redis.call('HINCRBY', KEYS[4], 'lobbies', 1)
return 1
"""
# KEYS: in-flight, queue, pointer a, pointer b, lobby, stats
# ARGV: ticket a, ticket b, lobby id, channel a, channel b, cancellation message
ROLLBACK = """
if redis.call('HGET', KEYS[1], 'lobby') ~= ARGV[3] then return 0 end
for i = 3, 4 do
  if redis.call('GET', KEYS[i]) == ARGV[3] then redis.call('DEL', KEYS[i]) end
end
redis.call('DEL', KEYS[5])
redis.call('RPUSH', KEYS[2], ARGV[2], ARGV[1])
redis.call('HDEL', KEYS[1], 't:' .. ARGV[1], 't:' .. ARGV[2], 'lobby')
redis.call('HINCRBY', KEYS[6], 'rollbacks', 1)
redis.call('HINCRBY', KEYS[6], 'requeued', 2)
redis.call('PUBLISH', ARGV[4], ARGV[6])
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""
# KEYS: in-flight, queue, dead letters, stats; ARGV: (ticket, 'front' | 'dead' | 'drop', record)...
SETTLE = """
for i = 1, #ARGV, 3 do
  if redis.call('HDEL', KEYS[1], 't:' .. ARGV[i]) == 1 then
    local action = ARGV[i + 1]
    if action == 'front' then redis.call('RPUSH', KEYS[2], ARGV[i])
    elseif action == 'dead' then redis.call('LPUSH', KEYS[3], ARGV[i + 2]) end
    local counter = {front = 'requeued', dead = 'dead', drop = 'dropped_duplicate'}
    redis.call('HINCRBY', KEYS[4], counter[action], 1)
  end
end
return 1
"""
# KEYS: in-flight, leases, owners, stats; ARGV: worker id, mode ('expired' | 'dead' | 'self' | 'leave').
# The pending lobby's own keys are derived from the in-flight hash (single Redis, not Cluster).
RECOVER = f"""{_NOW_MS}
if ARGV[2] == 'expired' then
  local lease = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if lease and tonumber(lease) > now then return -1 end
end
local lobby_id = redis.call('HGET', KEYS[1], 'lobby')
if lobby_id then
  local lobby = '{LOBBY_PREFIX}' .. lobby_id
  local players = cjson.decode(redis.call('HGET', lobby, 'players') or '[]')
  local cancelled = cjson.encode({{type = 'lobby_cancelled', lobby_id = lobby_id}})
  for _, player in ipairs(players) do
    local pointer = 'player:' .. player .. ':lobby'
    if redis.call('GET', pointer) == lobby_id then redis.call('DEL', pointer) end
    redis.call('PUBLISH', 'player:' .. player, cancelled)
  end
  redis.call('DEL', lobby)
  redis.call('HDEL', KEYS[1], 'lobby')
  redis.call('HINCRBY', KEYS[4], 'recovered_lobbies', 1)
end
local held, tickets = redis.call('HGETALL', KEYS[1]), {{}}
for i = 1, #held, 2 do
  local raw = string.sub(held[i], 3)  -- ticket fields are 't:' .. ticket
  local ok, ticket = pcall(cjson.decode, raw)
  local joined = ok and type(ticket) == 'table' and tonumber(ticket.joined_at) or 0
  table.insert(tickets, {{raw, held[i + 1], joined}})
end
table.sort(tickets, function(x, y) return x[3] > y[3] end)  -- the oldest pushed last: frontmost
for _, ticket in ipairs(tickets) do redis.call('RPUSH', ticket[2], ticket[1]) end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= 'self' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
redis.call('HINCRBY', KEYS[4], 'recovered_tickets', #tickets)
return #tickets
"""
