"""The serving loop behind ``tuco serve``: concurrent requests decoded together, TuCo on every token.

    >>> engine = Engine(pair, max_batch=8)
    >>> engine.start()
    >>> job = engine.submit(ids, Sampling(max_new_tokens=20), alpha=1.0, deliver=print)
    ...                                            # deliver(TokenEvent | Exception), from the thread
    >>> job.cancel()                               # the client went away: the row leaves its batch
    >>> engine.stop()

One worker thread owns the model. It waits for a request, then up to ``window`` seconds for more
(never past ``max_batch``), and decodes the requests that share the first one's alpha as one batch
(``ModelPair.decode``): each with its own sampling settings, rows leaving the batch as they
finish or are cancelled, so a result does not depend on its batch. Requests that arrive meanwhile
wait for the next batch; past ``max_queue`` waiting or running, ``submit`` raises ``Overloaded``
(the server answers 503 with Retry-After) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import progress
from .decoding import TokenEvent
from .pair import ModelPair
from .sampling import Sampling

log = logging.getLogger("tuco")


class Overloaded(Exception):
    """Too many requests waiting or running: try again later."""


class ClientLeft(Exception):
    """The client disconnected before its answer was ready."""


class RowError(RuntimeError):
    """One request's row failed while its batch decoded (the others went on); ``overflow``: its
    logits were not finite (its alpha too far from 1 for this model), the request's own doing."""

    def __init__(self, message: str, overflow: bool = False):
        super().__init__(message)
        self.overflow = overflow


@dataclass
class Submission:
    """One request: its prompt ids, settings and where its events go (``deliver``, called from the
    worker thread with each ``TokenEvent``, or with an exception if the batch failed)."""

    ids: list[int]
    sampling: Sampling
    alpha: float
    deliver: Callable[[Any], None]  # a TokenEvent, an exception, or the server's own items
    on_first: Callable[[TokenEvent], bool] | None = None  # True: stop here (the guard blocked it)
    on_token: Callable[[TokenEvent], bool] | None = None  # True: stop after this token (not sent)
    cancelled: bool = False
    finished: bool = False
    call: Callable[[], Any] | None = None  # a job for the model's thread that is not decoding

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Stats:
    """What the engine has done, for ``/metrics`` and ``/health``."""

    batches: int = 0
    tokens: int = 0
    last_tokens_per_second: float = 0.0


class Engine:
    def __init__(
        self,
        pair: ModelPair,
        *,
        monitor: str = "tokens",
        max_batch: int = 8,
        window: float = 0.02,
        max_queue: int = 64,
    ):
        if max_batch < 1 or max_queue < max_batch:
            raise ValueError(f"need 1 <= max_batch ({max_batch}) <= max_queue ({max_queue})")
        self.pair, self.monitor = pair, monitor
        self.max_batch, self.window, self.max_queue = max_batch, window, max_queue
        self.stats = Stats()
        self._waiting: deque[Submission] = deque()
        self._running: list[Submission] = []
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------ the server's side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tuco-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()

    def submit(
        self,
        ids: list[int],
        sampling: Sampling,
        *,
        alpha: float,
        deliver: Callable[[Any], None],
        on_first: Callable[[TokenEvent], bool] | None = None,
        on_token: Callable[[TokenEvent], bool] | None = None,
    ) -> Submission:
        return self._enqueue(Submission(ids, sampling, alpha, deliver, on_first, on_token))

    def submit_call(self, call: Callable[[], Any], deliver: Callable[[Any], None]) -> Submission:
        """Run ``call()`` on the model's thread between batches; ``deliver`` gets its result or error."""
        return self._enqueue(Submission([], Sampling(), 1.0, deliver, call=call))

    def _enqueue(self, job: Submission) -> Submission:
        with self._lock:
            if self.load >= self.max_queue:
                raise Overloaded(f"{self.load} requests waiting or running (--max-queue {self.max_queue})")
            self._waiting.append(job)
            self._lock.notify_all()
        return job

    async def call_async(self, call: Callable[[], Any], disconnected: Callable[[], Awaitable[bool]]) -> Any:
        """``call()`` run on the model's thread between batches, awaited: its result (its exception
        is raised here; ``ClientLeft`` if the client left while it waited)."""
        loop, done = asyncio.get_running_loop(), asyncio.Queue[Any]()

        def deliver(result: Any) -> None:  # from the engine's thread
            loop.call_soon_threadsafe(done.put_nowait, result)

        job = self.submit_call(call, deliver)
        while True:
            try:
                result = await asyncio.wait_for(done.get(), timeout=0.25)
            except TimeoutError:
                if await disconnected():
                    job.cancel()
                    raise ClientLeft from None
                continue
            if isinstance(result, BaseException):
                raise result
            return result

    @property
    def load(self) -> int:
        """Requests waiting or running (cancelled ones have freed their slot)."""
        with self._lock:  # reentrant: submit holds it too
            running = sum(not (j.cancelled or j.finished) for j in self._running)
            return self.waiting + running

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(not j.cancelled for j in self._waiting)

    # ------------------------------------------------------------------ the worker thread
    def _next_batch(self) -> list[Submission] | None:
        with self._lock:
            while not self._stopping and not self._waiting:
                self._lock.wait()
            if self._stopping:
                return None
            deadline = time.monotonic() + self.window
            while len(self._waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            head = self._waiting[0]
            if head.call is not None:  # a call runs alone
                batch = [head]
            else:
                alike = [j for j in self._waiting if j.call is None and j.alpha == head.alpha]
                batch = [j for j in alike if not j.cancelled][: self.max_batch]
            taken = set(map(id, batch))
            self._waiting = deque(j for j in self._waiting if id(j) not in taken and not j.cancelled)
            self._running = batch
            return batch

    def _loop(self) -> None:
        with progress.inner():  # the model's thread of a server: no progress bars on its terminal
            while (batch := self._next_batch()) is not None:
                if batch:
                    self._run(batch)

    def _run(self, batch: list[Submission]) -> None:
        if batch[0].call is not None:
            self._call(batch[0])
            return
        started, tokens = time.monotonic(), 0
        try:
            steps = self.pair.decode(
                [j.ids for j in batch],
                [j.sampling for j in batch],
                alpha=batch[0].alpha,
                monitor=self.monitor,
                cancelled=lambda i: batch[i].cancelled,
            )
            for events in steps:
                for event in events:
                    job = batch[event.index]
                    if event.error is not None:  # this row failed alone: the batch goes on
                        job.finished = True
                        job.deliver(RowError(event.error, event.overflow))
                        continue
                    tokens += 1
                    if event.prompt_tuco is not None and job.on_first is not None and job.on_first(event):
                        job.cancelled = True  # blocked: its first token is not sent
                        continue
                    if job.on_token is not None and job.on_token(event):
                        job.cancelled = True  # stopped by the answer rule: this token is not sent
                        continue
                    job.finished = event.finish_reason is not None
                    job.deliver(event)
        except Exception as error:  # the batch failed: every request still waiting on it hears why
            log.exception("tuco serve: a batch of %d failed", len(batch))
            for job in batch:
                if not (job.finished or job.cancelled):
                    job.finished = True
                    job.deliver(error)
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                self._running = []
                self.stats.batches += 1
                self.stats.tokens += tokens
                self.stats.last_tokens_per_second = tokens / elapsed if elapsed > 0 else 0.0

    def _call(self, job: Submission) -> None:
        try:
            if not job.cancelled:
                job.deliver(job.call())  # type: ignore[misc]
        except Exception as error:
            log.exception("tuco serve: a call failed")
            job.deliver(error)
        finally:
            job.finished = True
            with self._lock:
                self._running = []
