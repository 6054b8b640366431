"""The queues' Lua: every move of a job between Redis structures is one of these scripts, keyed
within one cluster slot (a queue and its bookkeeping keys share its hash tag, see ``keys.py``)."""

TAKE = """
local jobs = redis.call('RPOP', KEYS[1], ARGV[1])
if jobs then redis.call('LPUSH', KEYS[2], unpack(jobs)) end
return jobs
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
while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'RIGHT') do n = n + 1 end
return n
"""
ACK = """
local n = 0
for i = 1, #ARGV do n = n + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return n
"""
