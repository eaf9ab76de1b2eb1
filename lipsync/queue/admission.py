"""Per-key admission: a request rate limit and a cap on requests in flight, shared by every API replica.

One Lua script decides and records atomically. The rate limit is a sliding window of one minute (a sorted
set of admission times per key). In-flight requests are a set per key; completion removes its request (see
lipsync.queue.jobs), and the script also drops members whose request has finished or expired, so the count
heals itself after a crash between admission and queueing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from lipsync.queue.records import PREFIX

WINDOW_S = 60.0

# KEYS: rate zset, inflight set. ARGV: now, rate limit (0 = off), in-flight cap (0 = off), request id, prefix
_ADMIT = """
local now, rate, cap, rid = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if cap > 0 then
  for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local status = redis.call('HGET', ARGV[5] .. ':req:' .. member, 'status')
    if (not status) or status == 'COMPLETED' then redis.call('SREM', KEYS[2], member) end
  end
  if redis.call('SCARD', KEYS[2]) >= cap then return {'inflight', '5'} end
end
if rate > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
  if redis.call('ZCARD', KEYS[1]) >= rate then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
    return {'rate', tostring(math.ceil(tonumber(oldest) + 60 - now))}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('EXPIRE', KEYS[1], 61)
end
if cap > 0 then redis.call('SADD', KEYS[2], rid) end
return {'ok', '0'}
"""


def inflight_key(owner: str) -> str:
    return f"{PREFIX}:inflight:{owner}"


@dataclass(frozen=True)
class Refusal:
    reason: str  # "rate" | "inflight"
    retry_after_s: int


class Admission:
    def __init__(self, connection: redis.Redis, *, rate_per_minute: int, max_inflight: int):
        self.rate_per_minute = rate_per_minute
        self.max_inflight = max_inflight
        self._admit = connection.register_script(_ADMIT)

    @property
    def enabled(self) -> bool:
        return self.rate_per_minute > 0 or self.max_inflight > 0

    def admit(self, owner: str, rid: str | None = None) -> Refusal | None:
        """Record an admission for ``owner`` and return None, or say why not and when to retry."""
        if not self.enabled:
            return None
        keys = [f"{PREFIX}:rate:{owner}", inflight_key(owner)]
        args = [time.time(), self.rate_per_minute, self.max_inflight, rid or str(uuid.uuid4()), PREFIX]
        verdict, retry = self._admit(keys=keys, args=args)
        verdict = verdict.decode() if isinstance(verdict, bytes) else verdict
        return None if verdict == "ok" else Refusal(verdict, max(1, int(retry)))
