"""The Lua scripts behind ``JobStore``: every state change of a request is one atomic script in Redis."""

START = """
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_QUEUE' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'IN_PROGRESS', 'started_at', ARGV[1], 'worker', ARGV[2], 'run_token', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[3])
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[5], '*', 'kind', 'status', 'status', 'IN_PROGRESS')
return 1
"""

# KEYS: request, running, queued, heartbeat, events, webhooks_due, stats, retention, owner's in-flight set
# ARGV: completed_at, result, error, metrics, ttl, expected status or '', request id, maxlen,
#       storage keys to delete (JSON list), run token or '', seconds until those are deleted, stats fields...
COMPLETE = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'COMPLETED' then return 0 end
if ARGV[6] ~= '' and status ~= ARGV[6] then return 0 end
if ARGV[10] ~= '' and redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[10] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'COMPLETED', 'completed_at', ARGV[1],
           'result', ARGV[2], 'error', ARGV[3], 'metrics', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[7])
redis.call('ZREM', KEYS[3], ARGV[7])
redis.call('DEL', KEYS[4])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[8], '*', 'kind', 'status', 'status', 'COMPLETED')
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[5], ARGV[5])
if ARGV[9] ~= '[]' then
  redis.call('ZADD', KEYS[8], ARGV[1] + ARGV[11], ARGV[7])
  redis.call('HSET', KEYS[8] .. ':keys', ARGV[7], ARGV[9])
end
redis.call('SREM', KEYS[9], ARGV[7])
if (redis.call('HGET', KEYS[1], 'webhook_url') or '') ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[1], ARGV[7])
end
for i = 12, #ARGV do redis.call('HINCRBYFLOAT', KEYS[7], ARGV[i], 1) end
return 1
"""

# A runner failure with retries left: back to IN_QUEUE, unless a heartbeat came back meanwhile.
# KEYS: request, running, queued, heartbeat, events.
# ARGV: queued deadline, request id, maxlen, log line before the attempt number, timestamp, after it
REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'IN_PROGRESS' then return 0 end
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
local attempts = redis.call('HINCRBY', KEYS[1], 'runner_attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'IN_QUEUE', 'worker', '', 'run_token', '')
redis.call('HDEL', KEYS[1], 'started_at')
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'log', 'level', 'WARN', 'message',
           ARGV[4] .. attempts .. ARGV[6], 'timestamp', ARGV[5])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'kind', 'status', 'status', 'IN_QUEUE')
return attempts
"""

# Refresh a heartbeat only for the attempt that owns the request.
BEAT = """
if redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'XX')
return 1
"""

# Claim up to ARGV[2] due webhooks: move them from the due set to the in-flight set with a lease.
CLAIM_WEBHOOKS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZADD', KEYS[2], ARGV[3], id)
end
return ids
"""

RESTORE_EXPIRED_LEASES = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZADD', KEYS[1], ARGV[1], id)
end
return #ids
"""
