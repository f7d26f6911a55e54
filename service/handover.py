"""Results handed over within one process: a synchronous request whose job a worker of its own
process runs takes the result from that worker, not through Redis.

Redis still decides everything else: the job is queued, read, marked and finished there as
always (the first finish wins, a cancelled job stays cancelled). What stays in the process is
the hand-over of a won finish's result: the finish does not push it to the request's list
(p:done:{id}), and the request does not wait on that list (BLPOP). That saves the event loop the
wait's command and its answer, with the result read back from JSON, on every request.

A request learns that a worker of its process took its job before it starts to wait on Redis:
when such a worker is idle (waiting for new entries) as the job is queued, the request waits up
to CLAIM_WAIT_S for it to take the job; otherwise (busy workers, workers in other processes)
it waits on Redis as before. Each job the request registers (`expect`) goes through:

  expecting  queued; the request waits for a local worker to take it
  claimed    a worker of this process read it (`claim`); the request waits for its result here
  finishing  its finish is being sent without the push to Redis (`finishing`, by the finish's
             token); the result comes here, or word that it lost once no other local finish
             of the job is under way. A worker that stops with Redis away hands over the
             results it could not record (whether their finish ran is unknown)
  redis      the request waits on Redis: no local worker took it in time, the request's wait
             ended, or its worker let it go (`release`: a hung batch, a failure, a stop), so
             another worker's finish (a takeover) reaches it there

`finishing` and `release` may be called from the model thread and the event loop at once; a
lock makes each move atomic, so a finish either hands a result over here or pushes it to Redis,
never neither.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Iterable

from .contract import JobResult

CLAIM_WAIT_S = 0.005  # how long a request waits for an idle worker of its process to take its job
EXPECTING, CLAIMED, FINISHING, REDIS = "expecting", "claimed", "finishing", "redis"


@dataclass(eq=False)
class Wait:
    """One request's hand-over, on the event loop that `expect` ran on."""

    job_id: str
    loop: asyncio.AbstractEventLoop
    state: str = EXPECTING
    owner: str | None = None  # the worker that claimed it
    finishes: set = field(default_factory=set)  # the local finishes under way (their tokens)
    claimed: asyncio.Future = field(init=False)  # True once claimed (False: no claim in time)
    done: asyncio.Future = field(init=False)  # the result; None: wait on Redis

    def __post_init__(self):
        self.claimed, self.done = self.loop.create_future(), self.loop.create_future()


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)


def _schedule(wait: Wait, value) -> None:
    """Resolve a wait's `done` on its event loop (from any thread); a loop already closed (the
    process stops) has no request left to tell."""
    try:
        wait.loop.call_soon_threadsafe(_resolve, wait.done, value)
    except RuntimeError:
        pass


class Handover:
    """The synchronous requests of one process that wait for a result, and its workers' claims."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waits: dict[str, Wait] = {}
        self.idle_readers = 0  # workers of this process waiting for new entries right now

    def expect(self, job_id: str) -> Wait:
        """Register a synchronous request's job before it is queued (on the event loop)."""
        wait = Wait(job_id, asyncio.get_running_loop())
        with self._lock:
            self._waits[job_id] = wait
        return wait

    def forget(self, wait: Wait) -> None:
        """The request is done waiting (answered, failed or gone)."""
        with self._lock:
            if self._waits.get(wait.job_id) is wait:
                del self._waits[wait.job_id]
            wait.state = REDIS

    def claim(self, job_ids: Iterable[str], owner: str) -> None:
        """A worker of this process read these jobs (on the event loop): those whose request still
        waits for a claim will be handed over here."""
        with self._lock:
            for job_id in job_ids:
                wait = self._waits.get(job_id)
                if wait is not None and wait.state == EXPECTING:
                    wait.state, wait.owner = CLAIMED, owner
                    _resolve(wait.claimed, True)

    def finishing(self, job_ids: Iterable[str], token: str) -> set[str]:
        """Of these jobs, those whose result is handed over here: the finish named `token` must
        not push it to Redis. Call it just before sending the finish (from any thread); asking
        again, for the same finish sent again, gives the same answer."""
        local = set()
        with self._lock:
            for job_id in job_ids:
                wait = self._waits.get(job_id)
                if wait is not None and wait.state in (CLAIMED, FINISHING):
                    wait.state = FINISHING
                    wait.finishes.add(token)
                    local.add(job_id)
        return local

    def deliver(self, job_id: str, token: str, result: JobResult | None) -> None:
        """The finish named `token`, which `finishing` kept here, was sent (from any thread): its
        result when the finish won, else None (the winner, a cancel or another worker, answered
        on Redis). A loss is passed on only when no other local finish of the job is under way:
        with two workers of this process finishing one job (one took it over from the other),
        the winner's result comes from the other one."""
        with self._lock:  # decided and scheduled under the lock: a loss never overtakes a result from another thread
            wait = self._waits.get(job_id)
            if wait is None:
                return
            wait.finishes.discard(token)
            if result is None and wait.finishes:
                return
            _schedule(wait, result)

    def release(self, job_ids: Iterable[str] | None = None, owner: str | None = None) -> int:
        """A worker lets jobs go before finishing them (the given ones, or all it claimed): their
        requests wait on Redis from now on, where a worker that takes them over answers. Jobs
        already finishing are not let go: their finish is under way. Returns how many moved."""
        wanted = None if job_ids is None else set(job_ids)
        moved = []
        with self._lock:
            for wait in self._waits.values():
                if wait.state == CLAIMED and (wanted is None or wait.job_id in wanted) and (owner is None or wait.owner == owner):
                    wait.state = REDIS
                    moved.append(wait)
            for wait in moved:
                _schedule(wait, None)
        return len(moved)

    async def take(self, wait: Wait, timeout_s: float) -> tuple[bool, JobResult | None]:
        """Wait for the job's result here. Returns (True, result) when handed over here; (True, None)
        when timeout_s passed with the job still finishing here (the result may yet come: see
        `after_timeout`); (False, None) when the request must wait on Redis instead."""
        loop = wait.loop
        if wait.state == EXPECTING:
            if self.idle_readers == 0:  # no worker of this process will take it now
                return self._to_redis(wait), None
            timer = loop.call_later(CLAIM_WAIT_S, _resolve, wait.claimed, False)
            try:
                await wait.claimed
            finally:
                timer.cancel()
            if wait.state == EXPECTING:
                return self._to_redis(wait), None
        if wait.state == REDIS:
            return False, None
        await asyncio.wait((wait.done,), timeout=max(0.0, timeout_s))
        if not wait.done.done():
            return self._to_redis(wait), None
        result = wait.done.result()
        return (True, result) if result is not None else (False, None)

    async def after_timeout(self, wait: Wait, timeout_s: float) -> JobResult | None:
        """The result of a job whose request's wait ended while its finish was under way here (the
        finish won as the deadline passed): it comes within timeout_s, or None."""
        if wait.state != FINISHING:
            return None
        await asyncio.wait((wait.done,), timeout=timeout_s)
        return wait.done.result() if wait.done.done() else None

    def _to_redis(self, wait: Wait) -> bool:
        """Move a waiting request to Redis unless its finish is already under way here; False when
        it moved (then it waits on Redis)."""
        with self._lock:
            if wait.state in (EXPECTING, CLAIMED):
                wait.state = REDIS
            return wait.state == FINISHING
