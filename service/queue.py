"""The request queue: a Redis Stream read by workers through one consumer group.

Keys, under a prefix p (default "fewstep"):
  p:requests      the stream; one entry per request (field "job": a contract.Job). Entries are
                  deleted once finished (or cancelled before a worker started them), so its length
                  is the queue depth (waiting + running) and bounds the queue.
  group "workers" delivers each entry to one worker. A worker keeps the entries it holds fresh
                  (`touch`) while it works; an entry left idle for claim_idle_ms belongs to a dead
                  worker and is taken over (XAUTOCLAIM). An entry delivered more than
                  max_deliveries times is failed and copied to the dead-letter stream.
  p:dead          the dead-letter stream: requests that ended their workers too often (job, reason).
  p:job:{id}      hash: status (queued, running, succeeded, failed, cancelled), stream id, times,
                  the token of the finish that won;
                  a synchronous request's expires HANDOVER_TTL_S after its finish (until then a
                  retried submit of it stays a no-op); nothing deletes it on the request's path.
  p:result:{id}   an asynchronous job's result (a contract.JobResult), kept job_ttl_s.
  p:done:{id}     a synchronous request's result, handed over to the request waiting on it
                  (BLPOP); kept HANDOVER_TTL_S at most.
  p:events:{id}   stream: an asynchronous job's progress events (started, each step with its
                  preview), for GET /v1/jobs/{id}/events; capped, kept job_ttl_s.
  p:workers       sorted set: worker name -> time of its last heartbeat.
The first finish wins: a later one (a worker that was thought dead) changes nothing, and a
cancelled request stays cancelled. Submitting is idempotent by job id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.retry import Retry as SyncRetry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .contract import BadEntry, Job, JobResult, read_job, read_result

log = logging.getLogger("fewstep.queue")
GROUP = "workers"
HANDOVER_TTL_S = 60  # a synchronous result waits this long for its request at most
DEAD_LETTER_MAXLEN = 10_000
EVENTS_MAXLEN = 64  # progress events kept per job (8 steps and a few more)

_SUBMIT = """
local known = redis.call('HGET', KEYS[2], 'stream_id')
if known then return known end
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
local won = 0
if st == 'queued' or st == 'running' then
  won = 1
  if ARGV[9] ~= '' then  -- a dead letter, recorded with the finish that fails it (once)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[12], '*', 'job', ARGV[10], 'reason', ARGV[9], 'deliveries', ARGV[11], 'stream_id', ARGV[5], 'time', ARGV[4])
  end
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished', ARGV[4], 'finish', ARGV[13])
  if ARGV[7] == '1' then
    redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
    redis.call('EXPIRE', KEYS[1], ARGV[3])
  else
    redis.call('LPUSH', KEYS[3], ARGV[1])
    redis.call('EXPIRE', KEYS[3], ARGV[8])
    redis.call('EXPIRE', KEYS[1], ARGV[8])
  end
elseif st and redis.call('HGET', KEYS[1], 'finish') == ARGV[13] then
  won = 1  -- this very finish, sent again after its reply was lost: it won the first time
end
redis.call('XACK', KEYS[4], ARGV[6], ARGV[5])
redis.call('XDEL', KEYS[4], ARGV[5])
return won
"""

_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'queued' or st == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished', ARGV[2])
  if st == 'queued' then  -- no worker started it: nobody else will remove its entry
    local sid = redis.call('HGET', KEYS[1], 'stream_id')
    redis.call('XACK', KEYS[2], ARGV[1], sid)
    redis.call('XDEL', KEYS[2], sid)
  end
  redis.call('LPUSH', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return 'cancelled'
end
return st
"""

_TOUCH = """
local held = {}
for i, sid in ipairs(ARGV) do
  if i > 1 then
    local p = redis.call('XPENDING', KEYS[1], 'workers', sid, sid, 1)
    if p[1] and p[1][2] == ARGV[1] then
      redis.call('XCLAIM', KEYS[1], 'workers', ARGV[1], 0, sid, 'JUSTID')
      table.insert(held, sid)
    end
  end
end
return held
"""

_PRUNE = """
local gone = {}
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], 'workers')
if not ok then return gone end
for _, c in ipairs(consumers) do
  local f = {}
  for i = 1, #c, 2 do f[c[i]] = c[i + 1] end
  if (ARGV[2] == '' or f['name'] == ARGV[2]) and tonumber(f['pending']) == 0 and tonumber(f['idle']) >= tonumber(ARGV[1]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], 'workers', f['name'])
    table.insert(gone, f['name'])
  end
end
return gone
"""

CANCELLED = JobResult.failed(409, "the request was cancelled")


SOCKET_TIMEOUT_S = 10.0  # a command without an answer this long fails (RedisTimeoutError)
THREAD_TIMEOUT_S = 2.0  # a finish sent from the model thread waits this long, then the event loop takes over
THREAD_PAUSE_S = 10.0  # after a finish from the model thread failed, none is sent from it for this long


def connect(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client that notices a dead connection: connect and read timeouts, TCP keepalive and a
    health check. `blocking`: no read timeout, for the long BLPOP waits of synchronous requests
    (those carry their own timeout).

    A command that finds its connection closed is sent once more on a new one: after a Redis
    restart every pooled connection is dead, and without it the first command on each failed
    (a request answered 503 with Redis back up). A command that Redis ran before the connection
    closed then runs twice: submit and start are idempotent, a finish sent again reports the
    win of its first run (its token), a cancel sent again finds the job cancelled, and a
    progress event written again reaches its readers twice. A read whose reply was lost is lost
    either way: a stream entry so read is taken over later, a hand-over so taken (BLPOP) ends
    in a 504."""
    tcp = {} if url.startswith("unix:") else {"socket_keepalive": True}  # a unix socket has no keepalive
    once = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    return aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=None if blocking else SOCKET_TIMEOUT_S, health_check_interval=5, retry=once, **tcp)


def connect_sync(url: str) -> redis.Redis:
    """A synchronous client for the one command a worker's model thread sends: the finish of a
    batch of synchronous requests, as soon as its images are encoded (no hop back to the event
    loop first). It tries once and briefly (THREAD_TIMEOUT_S): a finish it could not send is
    sent again from the event loop, with the same token, by the worker's usual retries."""
    tcp = {} if url.startswith("unix:") else {"socket_keepalive": True}
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=THREAD_TIMEOUT_S, retry=SyncRetry(NoBackoff(), 0), **tcp)


class QueueFull(Exception):
    """The queue holds `capacity` requests already."""


@dataclass
class Entry:
    stream_id: str
    job: Job | None  # None: an entry that is not a job of this format (`problem` says why)
    problem: BadEntry | None = None
    deliveries: int = 1  # how many times the group delivered it (2 and more: taken over)
    raw: bytes | str | None = None  # the entry's job field as stored (for the dead-letter stream)

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
        raw = fields.get("job")
        try:
            out.append(Entry(_decode(sid), read_job(raw), raw=raw))
        except BadEntry as exc:
            out.append(Entry(_decode(sid), None, exc, raw=raw))
    return out


class RedisQueue:
    def __init__(self, client: aioredis.Redis, prefix: str = "fewstep", job_ttl_s: int = 3600, waiter: aioredis.Redis | None = None,
                 sync: redis.Redis | None = None):
        """`waiter`: a client without a socket timeout for the long blocking waits (default: client).
        `sync`: a synchronous client (`connect_sync`) for `finish_from_thread`; without it a
        worker finishes every batch from its event loop."""
        self.redis = client
        self.waiter = waiter or client
        self.sync = sync
        self._sync_paused_until = 0.0  # monotonic: a finish from the thread failed, the event loop finishes until then
        self.prefix = prefix
        self.job_ttl_s = job_ttl_s
        self.stream = f"{prefix}:requests"
        self.dead = f"{prefix}:dead"
        self.workers_key = f"{prefix}:workers"
        self._submit = client.register_script(_SUBMIT)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._cancel = client.register_script(_CANCEL)
        self._touch = client.register_script(_TOUCH)
        self._prune = client.register_script(_PRUNE)
        self._claim_cursor = "0-0"  # where the next takeover scan of the pending list starts
        self._no_info = False  # INFO refused (then takeover cannot wait out a restart)

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def result_key(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def done_key(self, job_id: str) -> str:
        return f"{self.prefix}:done:{job_id}"

    def events_key(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    async def add_events(self, job_id: str, events: list[dict]) -> None:
        """Append progress events (JSON objects with a "type") to a job's event stream."""
        key = self.events_key(job_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(key, {"event": json.dumps(event)}, maxlen=EVENTS_MAXLEN, approximate=True)
            pipe.expire(key, self.job_ttl_s)
            await pipe.execute()

    async def read_events(self, job_id: str, after: str, block_ms: int | None = None) -> list[tuple[str, dict]]:
        """The job's events after stream id `after` ("0-0": all), waiting up to block_ms for one."""
        client = self.waiter if block_ms else self.redis
        raw = await client.xread({self.events_key(job_id): after}, block=block_ms)
        out = []
        for _key, items in raw or []:
            for sid, fields in items:
                event = {_decode(k): v for k, v in fields.items()}.get("event")
                if event is not None:
                    out.append((_decode(sid), json.loads(_decode(event))))
        return out

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def submit(self, job: Job, capacity: int) -> str:
        """Queue a job; raise QueueFull beyond `capacity` requests. Idempotent by job id: submitting
        a job again (a retry after a timeout) returns its stream id and queues nothing."""
        now = time.time()
        ttl = max(self.job_ttl_s, int(job.deadline - now) + HANDOVER_TTL_S)  # the status outlives the job's deadline
        sid = await self._submit(
            keys=[self.stream, self.job_key(job.id)],
            args=[capacity, job.model_dump_json(), now, ttl],
        )
        if sid is None:
            raise QueueFull(f"the queue holds {capacity} requests")
        return _decode(sid)

    async def read(self, consumer: str, count: int, block_ms: int | None) -> list[Entry]:
        """New entries for this consumer; block_ms None returns at once."""
        raw = await self.redis.xreadgroup(GROUP, consumer, {self.stream: ">"}, count=count, block=block_ms)
        return _entries(raw[0][1]) if raw else []

    async def claim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries another consumer read but left untouched for min_idle_ms (it died);
        each comes with its delivery count. The scan goes on from where the last one stopped, so
        dead workers' entries behind many live ones are reached too. Until Redis has been up for
        min_idle_ms, nothing is taken: after a restart every pending entry looks idle for the
        whole downtime, and live workers need a moment to refresh theirs."""
        if await self._uptime_ms() < min_idle_ms:
            return []
        reply = await self.redis.xautoclaim(self.stream, GROUP, consumer, min_idle_ms, start_id=self._claim_cursor, count=count)
        self._claim_cursor = _decode(reply[0])  # "0-0" once the scan reached the end
        entries = _entries(reply[1])
        if entries:
            async with self.redis.pipeline(transaction=False) as pipe:
                for e in entries:
                    pipe.xpending_range(self.stream, GROUP, min=e.stream_id, max=e.stream_id, count=1)
                for e, pending in zip(entries, await pipe.execute()):
                    e.deliveries = int(pending[0]["times_delivered"]) if pending else 1
        return entries

    async def _uptime_ms(self) -> float:
        """How long Redis has been up; infinite where INFO is not allowed or says nothing (a managed
        Redis, a renamed command): takeover then does not wait, as before the check existed."""
        if self._no_info:
            return float("inf")
        try:
            return int((await self.redis.info("server"))["uptime_in_seconds"]) * 1000
        except (ResponseError, KeyError, ValueError) as exc:
            self._no_info = True
            log.warning("Redis INFO is not available (%s): takeover will not wait out a Redis restart", exc)
            return float("inf")

    async def touch(self, consumer: str, stream_ids: list[str]) -> set[str]:
        """Reset the idle time of entries this consumer still holds (a live worker's work is
        never taken over); returns those it holds. Delivery counts are not changed."""
        if not stream_ids:
            return set()
        return {_decode(sid) for sid in await self._touch(keys=[self.stream], args=[consumer, *stream_ids])}

    async def start(self, job_ids: list[str], consumer: str) -> list[bool]:
        """Mark jobs running (one round trip); False for those cancelled or expired (skip them)."""
        now = time.time()
        if len(job_ids) == 1:  # a pipeline would first ask whether its scripts exist: one round trip more
            return [bool(await self._start(keys=[self.job_key(job_ids[0])], args=[consumer, now]))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                await self._start(keys=[self.job_key(job_id)], args=[consumer, now], client=pipe)
            return [bool(ok) for ok in await pipe.execute()]

    async def finish(self, done: list[tuple[Entry, JobResult]], dead_letter: str | None = None, token: str | None = None) -> list[bool]:
        """Record results and acknowledge the entries: an asynchronous job's result is stored, a
        synchronous one handed to its waiting request. The first finish wins; returns, per entry,
        whether this one did (an entry without a readable job id is only acknowledged). With
        `dead_letter` (the reason), each entry whose finish wins is also copied, in the same
        script, to the dead-letter stream for an operator to read (XRANGE p:dead - +).

        `token` names this finish: one sent again with the same token (its reply was lost)
        reports the win of its first run instead of a loss. Give the same one to every try."""
        calls = self._finish_calls(done, dead_letter, token or uuid.uuid4().hex)
        if len(calls) == 1:  # no pipeline: it would first ask whether its scripts exist (a round trip)
            return [bool(await self._finish(**calls[0]))]
        async with self.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                await self._finish(**call, client=pipe)
            return [bool(won) for won in await pipe.execute()]

    def can_finish_from_thread(self) -> bool:
        """Whether `finish_from_thread` is worth a try: a synchronous client, and no failure of it
        in the last THREAD_PAUSE_S (each try may wait THREAD_TIMEOUT_S per round trip, on the
        model thread that the process's workers share)."""
        return self.sync is not None and time.monotonic() >= self._sync_paused_until

    def finish_from_thread(self, done: list[tuple[Entry, JobResult]], token: str) -> list[bool]:
        """`finish`, blocking, on the synchronous client: for a worker's model thread. Raises
        what redis-py raises (Redis away or slow; then `can_finish_from_thread` says no for a
        while): send it again with the same token then."""
        sync = self.sync
        if sync is None:
            raise RedisConnectionError("no synchronous client (closed)")
        calls = self._finish_calls(done, None, token)

        def send() -> list[bool]:
            with sync.pipeline(transaction=False) as pipe:  # plain EVALSHA: a script pipeline first asks SCRIPT EXISTS (a round trip)
                for call in calls:
                    pipe.evalsha(self._finish.sha, len(call["keys"]), *call["keys"], *call["args"])
                return [bool(won) for won in pipe.execute()]

        try:
            try:
                return send()
            except NoScriptError:  # Redis restarted and lost its scripts; none of the batch ran
                sync.script_load(_FINISH)
                return send()
        except (RedisError, OSError):
            self._sync_paused_until = time.monotonic() + THREAD_PAUSE_S
            raise

    def close_sync(self) -> None:
        """Close the synchronous client; a finish from the model thread raises from then on."""
        sync, self.sync = self.sync, None
        if sync is not None:
            sync.close()

    def _finish_calls(self, done: list[tuple[Entry, JobResult]], dead_letter: str | None, token: str) -> list[dict]:
        """The finish script's keys and arguments, per entry."""
        now, calls = time.time(), []
        for entry, result in done:
            job_id = entry.job_id or "-"
            store = entry.job is not None and entry.job.store_result
            calls.append({
                "keys": [self.job_key(job_id), self.result_key(job_id), self.done_key(job_id), self.stream, self.dead],
                "args": [result.model_dump_json(), result.status, self.job_ttl_s, now, entry.stream_id, GROUP, int(store), HANDOVER_TTL_S,
                         dead_letter or "", entry.raw or "", entry.deliveries, DEAD_LETTER_MAXLEN, f"{token}:{entry.stream_id}"],
            })
        return calls

    async def wait(self, job_id: str, timeout_s: float) -> JobResult | None:
        """Block until a synchronous job's result is handed over, or timeout_s passes (None). A
        Redis that goes away meanwhile (a restart) is waited for, up to the same deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return await self.handed_over(job_id)
            try:
                done = await asyncio.wait_for(self.waiter.blpop([self.done_key(job_id)], timeout=max(left, 0.01)), left + 5)
            except asyncio.TimeoutError:  # a Redis that stopped answering
                return None
            except (ConnectionError, OSError, RedisConnectionError, RedisTimeoutError):
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            if done is None:
                return None
            return read_result(done[1])

    async def handed_over(self, job_id: str) -> JobResult | None:
        """A synchronous job's result if it is waiting to be taken (no blocking)."""
        raw = await self.redis.lpop(self.done_key(job_id))
        return read_result(raw) if raw is not None else None

    async def result(self, job_id: str) -> JobResult | None:
        """An asynchronous job's stored result."""
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
        st = await self._cancel(keys=[self.job_key(job_id), self.stream, self.done_key(job_id)], args=[GROUP, time.time(), HANDOVER_TTL_S, CANCELLED.model_dump_json()])
        return _decode(st) if st is not None else None

    async def depth(self) -> int:
        return await self.redis.xlen(self.stream)

    async def heartbeat(self, worker: str) -> None:
        await self.redis.zadd(self.workers_key, {worker: time.time()})

    async def leave(self, worker: str) -> None:
        """A worker stops: forget its heartbeat, and its consumer unless it still holds entries
        (deleting it would drop them from the group: another worker takes them over first)."""
        await self.redis.zrem(self.workers_key, worker)
        await self.prune_consumers(only=worker)

    async def prune_consumers(self, idle_ms: int = 0, only: str | None = None) -> list[str]:
        """Delete consumers that hold no entries and have been idle for idle_ms: workers that are
        gone (a live one deleted while it waits is recreated by its next read). Checked and
        deleted in one script, so an entry delivered meanwhile is never dropped. Returns their names."""
        gone = await self._prune(keys=[self.stream], args=[idle_ms, only or ""])
        return [_decode(name) for name in gone]

    async def live_workers(self, window_s: float) -> int:
        now = time.time()
        await self.redis.zremrangebyscore(self.workers_key, "-inf", now - 10 * window_s)
        return await self.redis.zcount(self.workers_key, now - window_s, "+inf")
