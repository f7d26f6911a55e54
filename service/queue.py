"""The request queue: a Redis Stream read by workers through one consumer group.

Keys, under a prefix p (default "fewstep"):
  p:requests      the stream; one entry per request (field "job": a contract.Job). Entries are deleted
                  once finished or cancelled, so its length is the queue depth (waiting + running)
                  and bounds the queue.
  group "workers" delivers each entry to one worker. An entry a worker read but never
                  acknowledged (the worker died mid-batch) is taken over by another with XAUTOCLAIM.
  p:job:{id}      hash: status (queued, running, succeeded, failed, cancelled), stream id, times.
  p:result:{id}   the result (a contract.JobResult); expires after job_ttl_s.
  p:done:{id}     a list that a waiting HTTP request blocks on (BLPOP); it receives the result.
  p:workers       sorted set: worker name -> time of its last heartbeat.
Finishing is idempotent: a request completed twice (a slow worker and the one that took it
over) stores the same result twice, and a cancelled request stays cancelled.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from .contract import BadEntry, Job, JobResult, read_job, read_result

GROUP = "workers"

_SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
local sid = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
redis.call('HSET', KEYS[2], 'status', 'queued', 'stream_id', sid, 'created', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return sid
"""

_START = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'queued' or st == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started', ARGV[2])
  return 1
end
return 0
"""

_FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if st and st ~= 'cancelled' then  -- not cancelled, not expired
  redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('LPUSH', KEYS[3], ARGV[1])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
redis.call('XACK', KEYS[4], ARGV[6], ARGV[5])
redis.call('XDEL', KEYS[4], ARGV[5])
return st
"""

_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'queued' or st == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', ARGV[2])
  local sid = redis.call('HGET', KEYS[1], 'stream_id')
  redis.call('XACK', KEYS[2], ARGV[1], sid)
  redis.call('XDEL', KEYS[2], sid)
  redis.call('LPUSH', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return 'cancelled'
end
return st
"""


class QueueFull(Exception):
    """The queue holds `capacity` requests already."""


CANCELLED = JobResult.failed(409, "the request was cancelled")


@dataclass
class Entry:
    stream_id: str
    job: Job | None  # None: an entry that is not a job of this format (`problem` says why)
    problem: BadEntry | None = None

    @property
    def job_id(self) -> str | None:
        return self.job.id if self.job is not None else self.problem.job_id


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entries(raw) -> list[Entry]:
    out = []
    for sid, fields in raw or []:
        if fields is None:  # deleted while pending (Redis 6.2 reports it so)
            continue
        fields = {_decode(k): v for k, v in fields.items()}
        try:
            out.append(Entry(_decode(sid), read_job(fields.get("job"))))
        except BadEntry as exc:
            out.append(Entry(_decode(sid), None, exc))
    return out


class RedisQueue:
    def __init__(self, client: aioredis.Redis, prefix: str = "fewstep", job_ttl_s: int = 3600, waiter: aioredis.Redis | None = None):
        """`waiter`: a client without a socket timeout for the long blocking waits (default: client)."""
        self.redis = client
        self.waiter = waiter or client
        self.prefix = prefix
        self.job_ttl_s = job_ttl_s
        self.stream = f"{prefix}:requests"
        self.workers_key = f"{prefix}:workers"
        self._submit = client.register_script(_SUBMIT)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def result_key(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def done_key(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def submit(self, job: Job, capacity: int) -> str:
        """Queue a job; raise QueueFull beyond `capacity` requests."""
        sid = await self._submit(
            keys=[self.stream, self.job_key(job.id)],
            args=[capacity, job.model_dump_json(), time.time(), self.job_ttl_s],
        )
        if sid is None:
            raise QueueFull(f"the queue holds {capacity} requests")
        return _decode(sid)

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer; block_ms None returns at once."""
        raw = await self.redis.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return _entries(raw[0][1]) if raw else []

    async def claim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries another consumer read but left unacknowledged for min_idle_ms."""
        reply = await self.redis.xautoclaim(self.stream, GROUP, consumer, min_idle_ms, start_id="0-0", count=count)
        return _entries(reply[1])

    async def start(self, job_ids: list[str], consumer: str) -> list[bool]:
        """Mark jobs running (one round trip); False for those cancelled or expired (skip them)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                await self._start(keys=[self.job_key(job_id)], args=[consumer, now], client=pipe)
            return [bool(ok) for ok in await pipe.execute()]

    async def finish(self, done: list[tuple[Entry, JobResult]]) -> None:
        """Store results, wake their waiters, acknowledge the entries (an entry without a readable
        job id is only acknowledged and deleted)."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry, result in done:
                job_id = entry.job_id or "-"
                await self._finish(
                    keys=[self.job_key(job_id), self.result_key(job_id), self.done_key(job_id), self.stream],
                    args=[result.model_dump_json(), result.status, self.job_ttl_s, now, entry.stream_id, GROUP],
                    client=pipe,
                )
            await pipe.execute()

    async def wait(self, job_id: str, timeout_s: float) -> JobResult | None:
        """Block until the job finishes (its result) or timeout_s passes (None)."""
        if timeout_s <= 0:
            return await self.result(job_id)
        try:
            done = await asyncio.wait_for(self.waiter.blpop([self.done_key(job_id)], timeout=timeout_s), timeout_s + 5)
        except asyncio.TimeoutError:  # a Redis that stopped answering
            return None
        if done is None:
            return None
        return read_result(done[1])

    async def result(self, job_id: str) -> JobResult | None:
        raw = await self.redis.get(self.result_key(job_id))
        return read_result(raw) if raw is not None else None

    async def status(self, job_id: str) -> dict | None:
        raw = await self.redis.hgetall(self.job_key(job_id))
        return {_decode(k): _decode(v) for k, v in raw.items()} if raw else None

    async def position(self, stream_id: str) -> int:
        """How many requests are ahead of this one (waiting or running)."""
        ahead = await self.redis.xrange(self.stream, "-", f"({stream_id}")
        return len(ahead)

    async def cancel(self, job_id: str) -> str | None:
        """'cancelled', or the status of a job that had already ended; None if unknown."""
        st = await self._cancel(keys=[self.job_key(job_id), self.stream, self.done_key(job_id)], args=[GROUP, time.time(), self.job_ttl_s, CANCELLED.model_dump_json()])
        return _decode(st) if st is not None else None

    async def depth(self) -> int:
        return await self.redis.xlen(self.stream)

    async def heartbeat(self, worker: str) -> None:
        await self.redis.zadd(self.workers_key, {worker: time.time()})

    async def leave(self, worker: str) -> None:
        await self.redis.zrem(self.workers_key, worker)

    async def live_workers(self, window_s: float) -> int:
        now = time.time()
        await self.redis.zremrangebyscore(self.workers_key, "-inf", now - 10 * window_s)
        return await self.redis.zcount(self.workers_key, now - window_s, "+inf")
