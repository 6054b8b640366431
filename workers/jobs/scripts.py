"""Every script that moves a job between Redis structures (see the room's docstring for the states
and moves), each keyed within one cluster slot: a queue and its bookkeeping keys share its hash tag
(``keys.py``). Run with ``corral.workers.scripts.Script`` (EVALSHA, or EVAL in a cluster pipeline).
"""

# where a job goes onto a list or a set (``how``: 'lpush' at the back, 'rpush' at the front, 'zadd'
# scored by ``score``): the one branch every script that pushes a job shares
PUSH = """
local function push(key, how, job, score)
  if how == 'zadd' then
    redis.call('ZADD', key, score, job)
  elseif how == 'rpush' then
    redis.call('RPUSH', key, job)
  else
    redis.call('LPUSH', key, job)
  end
end
"""

# -- the consumers: take, put back, recover, acknowledge, settle, checkpoint -----------------------

TAKE = """
-- up to ARGV[1] jobs, or fewer when the queue's rate limit (ARGV[3]: microseconds per job, 0: none;
-- ARGV[4]: the burst, in jobs) allows fewer: a GCRA on the server's clock whose state (KEYS[5]: the
-- theoretical arrival time) moves by the jobs actually taken. Held back: minus the wait (us).
local want = tonumber(ARGV[1])
local per_job = tonumber(ARGV[3])
local now, tat
if per_job > 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  tat = math.max(tonumber(redis.call('GET', KEYS[5]) or '0'), now)
  local slack = tonumber(ARGV[4]) * per_job
  local allowed = math.floor((now + slack - tat) / per_job)
  if allowed < 1 then return -(tat + per_job - slack - now) end
  want = math.min(want, allowed)
end
local jobs = redis.call('RPOP', KEYS[1], want)
if not jobs then return false end
if per_job > 0 then
  tat = tat + #jobs * per_job
  redis.call('SET', KEYS[5], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
redis.call('SADD', KEYS[4], ARGV[2])  -- in the same step as the move: recovery can always find it
for i = 1, #jobs, 1000 do  -- unpack() of more than ~8,000 values fails: after the pop
  redis.call('LPUSH', KEYS[2], unpack(jobs, i, math.min(i + 999, #jobs)))
end
if redis.call('EXISTS', KEYS[3]) == 0 then return jobs end
local deaths = {}  -- some job here killed a worker before: how often, for each job taken
for i = 1, #jobs, 1000 do
  local part = redis.call('HMGET', KEYS[3], unpack(jobs, i, math.min(i + 999, #jobs)))
  for _, count in ipairs(part) do deaths[#deaths + 1] = count or 0 end
end
return {jobs, deaths}
"""
PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('RPUSH', KEYS[2], job)
  redis.call('ZREM', KEYS[1], job)
end
return #due
"""
MOVE_ALL = """
local n = 0
-- the newest first, each to the queue's front: the oldest ends up next to be taken again
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do n = n + 1 end
return n
"""
RECOVER = """
-- a dead worker's jobs back to the queue's front, in order, and its death counted (ARGV[2] = '1': it
-- was killed or crashed, not a clean or fenced exit): against the suspect it was handling (KEYS[4],
-- set only while one is in hand), else against every job it held
local died = ARGV[2] == '1'
local marked = redis.call('GET', KEYS[4])
local n = 0
while true do
  local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not job then break end
  if died and not marked then redis.call('HINCRBY', KEYS[3], job, 1) end
  n = n + 1
end
if marked then
  if died then redis.call('HINCRBY', KEYS[3], marked, 1) end
  redis.call('DEL', KEYS[4])
end
redis.call('SREM', KEYS[5], ARGV[1])
return n
"""
ACK = """
-- handled: out of the processing list, and a death count it had goes with it (only if we still
-- held it: a peer that recovered it from us while we were stalled put it back for another try)
local counted = redis.call('EXISTS', KEYS[2]) == 1
local n = 0
for i = 1, #ARGV do
  local removed = redis.call('LREM', KEYS[1], -1, ARGV[i])
  if removed > 0 and counted then redis.call('HDEL', KEYS[2], ARGV[i]) end
  n = n + removed
end
return n
"""
SETTLE = (
    PUSH
    + """
-- one job out of the processing list and to its destination (dead letters, retry set, the queue);
-- nothing if we no longer hold it (recovered away while we were stalled: it is being tried again)
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then return 0 end
push(KEYS[2], ARGV[3], ARGV[2], ARGV[4])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
-- given up on (ARGV[5]: its id when it holds a unique lock, KEYS[5]): the lock goes with it
if ARGV[5] ~= '' and redis.call('GET', KEYS[5]) == ARGV[5] then redis.call('DEL', KEYS[5]) end
return 1
"""
)
RELEASE = """
-- a unique job done: its lock goes, if it still holds it (a lock past its TTL may be another's now)
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
CHECKPOINT = """
-- a job in hand saved its place: the job as held (ARGV[1]) replaced, where it sits in our processing
-- list (KEYS[1]), by itself with the checkpoint (ARGV[2]); its death count (KEYS[2]) and the suspect
-- mark (KEYS[3]) follow it. Nothing if we no longer hold it (recovered away while we stalled).
local at = redis.call('LPOS', KEYS[1], ARGV[1])
if not at then return 0 end
redis.call('LSET', KEYS[1], at, ARGV[2])
local died = redis.call('HGET', KEYS[2], ARGV[1])
if died then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[2], ARGV[2], died)
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('SET', KEYS[3], ARGV[2]) end
-- announced in the same step (ARGV[3], ARGV[4]: a channel and a message): saved and said, or neither
if ARGV[3] then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
"""

# -- the producer -------------------------------------------------------------------------------

# a unique job: its lock taken and the job pushed in one step, or the holder's id and time to live
ENQUEUE_UNIQUE = (
    PUSH
    + """
local holder = redis.call('GET', KEYS[2])
if holder then return {holder, redis.call('PTTL', KEYS[2])} end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
push(KEYS[1], ARGV[4], ARGV[1], ARGV[5])
return false
"""
)

# -- the schedules: a tick fired once across every host ---------------------------------------

FIRE = """
-- KEYS: the fence hash, the list, the unique lock. ARGV: tick (ms), job, job id, lock ttl (ms, 0:
-- no lock), ticks missed before this one, fire (1) or only move the fence (0), now (ms)
local last = tonumber(redis.call('HGET', KEYS[1], 'last_tick_ms') or '-1')
if tonumber(ARGV[1]) <= last then return 0 end
redis.call('HSET', KEYS[1], 'last_tick_ms', ARGV[1])
if tonumber(ARGV[5]) > 0 then redis.call('HINCRBY', KEYS[1], 'missed', ARGV[5]) end
if ARGV[6] ~= '1' then return 2 end
if tonumber(ARGV[4]) > 0 and not redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then
  redis.call('HINCRBY', KEYS[1], 'overlapped', 1)
  return 3
end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[1], 'fired', 1)
redis.call('HSET', KEYS[1], 'last_fired_ms', ARGV[7], 'last_job', ARGV[3])
return 1
"""

# -- the operator: dead letters back onto their queue or stream, or dropped ----------------------

# a wrong-typed destination is checked before anything moves: a script is not rolled back on error
RETRY_JOB = """
local kind = redis.call('TYPE', KEYS[2]).ok
if kind ~= 'list' and kind ~= 'none' then return -1 end
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
RETRY_ENTRY = """
local kind = redis.call('TYPE', KEYS[2]).ok
if (kind ~= 'stream' and kind ~= 'none') or #ARGV < 3 then return -1 end
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
  return 1
end
return 0
"""
DROP_ALL = """
local kind = redis.call('TYPE', KEYS[1]).ok
local n = 0
if kind == 'list' then n = redis.call('LLEN', KEYS[1]) end
if kind == 'stream' then n = redis.call('XLEN', KEYS[1]) end
redis.call('DEL', KEYS[1])
return n
"""
