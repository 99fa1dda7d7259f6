"""Per-key fairness and limits: fair order inside each RQ queue, request rate and jobs in flight.

Fair order (start-time fair queuing over API keys): every queued job gets a tag, one more than
the larger of its key's last tag and the queue's virtual time (the tag of the job a worker took
last), and sits in the RQ list before the first job with a larger tag. A key that queued 1,000
jobs holds tags 1..1,000; another key's single job gets the virtual time + 1 and lands right
behind the job being served next, so it waits for about one job per other active key, not for
the 1,000. Workers take jobs from the head as RQ always does; the only thing that changes is
where a job is inserted, in the same transaction that enqueues it.

Limits per key: a request rate (fixed one-minute windows) and a number of jobs waiting or
running. Both answer with the seconds after which a retry can succeed.
"""

from __future__ import annotations

import math
import time

from redis import Redis
from redis.client import Pipeline

from jobs.contract import KEY_PREFIX

# KEYS: the RQ list, its tags (zset), its keys' last tags (hash), its virtual time.
# ARGV: job id, owner. A later job that is no longer in the list (taken or canceled) is dropped
# from the tags and the next one tried, so stale tags never block an insertion.
_PLACE = """
local vt = tonumber(redis.call('GET', KEYS[4]) or '0')
local last = tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0')
local tag = math.max(vt, last) + 1
redis.call('HSET', KEYS[3], ARGV[2], tag)
redis.call('ZADD', KEYS[2], tag, ARGV[1])
for _ = 1, 16 do
  local later = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. tag, '+inf', 'LIMIT', 0, 1)
  if #later == 0 then return tag end
  if redis.call('LINSERT', KEYS[1], 'BEFORE', later[1], ARGV[1]) > 0 then
    redis.call('LREM', KEYS[1], -1, ARGV[1])
    return tag
  end
  redis.call('ZREM', KEYS[2], later[1])
end
return tag
"""

# KEYS: tags, virtual time. ARGV: job id. The virtual time moves to the tag of the job taken.
_TAKEN = """
local tag = redis.call('ZSCORE', KEYS[1], ARGV[1])
if tag then
  redis.call('ZREM', KEYS[1], ARGV[1])
  local vt = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(tag) > vt then redis.call('SET', KEYS[2], tag) end
end
return tag
"""


def _keys(list_key: str) -> tuple[str, str, str]:
    base = f"{KEY_PREFIX}:fair:{list_key}"
    return f"{base}:tags", f"{base}:owners", f"{base}:vt"


def place(pipeline: Pipeline, list_key: str, job_id: str, owner: str) -> None:
    """Move a just-enqueued job to its fair place (on the submit's transaction)."""
    tags, owners, vt = _keys(list_key)
    pipeline.eval(_PLACE, 4, list_key, tags, owners, vt, job_id, owner)


def taken(connection: Redis, list_key: str, job_id: str) -> None:
    """A worker took the job: advance the queue's virtual time to its tag."""
    tags, _, vt = _keys(list_key)
    connection.eval(_TAKEN, 2, tags, vt, job_id)


def rate_limited(connection: Redis, owner: str, per_minute: int) -> int | None:
    """Count a request of this key; the seconds until the next window if it is over the rate."""
    window = int(time.time() // 60)
    key = f"{KEY_PREFIX}:rate:{owner}:{window}"
    with connection.pipeline(transaction=False) as pipeline:
        pipeline.incr(key)
        pipeline.expire(key, 120)
        count, _ = pipeline.execute()
    if count <= per_minute:
        return None
    return max(1, math.ceil(60 - time.time() % 60))


ENDED = ("finished", "failed", "canceled", "stopped")  # RQ's statuses of a job that has ended


def in_flight_key(owner: str) -> str:
    return f"{KEY_PREFIX}:owner:{owner}:jobs"


def track(pipeline: Pipeline, owner: str, job_id: str, ttl_s: int) -> None:
    """Remember a key's new job (on the submit's transaction) for its jobs-in-flight limit."""
    key = in_flight_key(owner)
    pipeline.zadd(key, {job_id: time.time()})
    pipeline.expire(key, ttl_s)


def jobs_in_flight(connection: Redis, owner: str, limit: int) -> int:
    """How many of the key's jobs wait or run. Jobs are only remembered at submit; the ended
    ones are forgotten here, when the count reaches the limit (so checks stay cheap below it)."""
    key = in_flight_key(owner)
    count = connection.zcard(key)
    if count < limit:
        return count
    members = [m.decode() for m in connection.zrange(key, 0, -1)]
    with connection.pipeline(transaction=False) as pipeline:
        for job_id in members:
            pipeline.hget(f"rq:job:{job_id}", "status")
        statuses = pipeline.execute()
    ended = [m for m, status in zip(members, statuses, strict=True)
             if status is None or status.decode() in ENDED]
    if ended:
        connection.zrem(key, *ended)
    return len(members) - len(ended)
