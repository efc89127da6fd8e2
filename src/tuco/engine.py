"""The serving loop behind ``tuco serve``: continuous batching, TuCo on every token.

    >>> engine = Engine(pair, max_batch=32, max_batch_tokens=65536)
    >>> engine.start()
    >>> job = engine.submit(ids, Sampling(max_new_tokens=20), alpha=1.0, deliver=print)
    ...                                            # deliver(TokenEvent | Exception), from the thread
    >>> job.cancel()                               # the client went away: the row leaves at the next step
    >>> engine.stop()

One worker thread owns the model and runs ``tuco.batcher``'s steps: a request joins the running
batch at the next step (its prefill between the others' decoding steps, chunked if long), whatever
its alpha and sampling settings, and leaves as it finishes or is cancelled; a result does not
depend on what ran beside it or when it came. When the engine is idle it waits ``window`` seconds
for more requests, so that a burst is prefilled together.

Bounds, all explicit: at most ``max_batch`` rows run at once, and at most ``max_batch_tokens`` KV
cache slots: rows x the longest row's prompt + max_tokens (the padded cache's worst case, per cache:
the PT blocks keep a second one when they run at every step). A request that does not fit now
waits; one that could never fit is refused (``TooLarge``, the server's 400); past ``max_queue``
waiting or running, ``submit`` raises ``Overloaded`` (the server answers 503 with Retry-After).
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
from .batcher import Batcher
from .pair import ModelPair
from .rows import PromptTuco, TokenEvent
from .sampling import Sampling

log = logging.getLogger("tuco")


class Overloaded(Exception):
    """Too many requests waiting or running: try again later."""


class ClientLeft(Exception):
    """The client disconnected before its answer was ready."""


class TooLarge(ValueError):
    """A request whose prompt + max_tokens could never fit the KV budget (``max_batch_tokens``)."""


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
    prompt_first: bool = True  # False: the first token may go before the prompt's TuCo (a PromptTuco after)
    cancelled: bool = False
    finished: bool = False
    call: Callable[[], Any] | None = None  # a job for the model's thread that is not decoding

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def reserved(self) -> int:
        """The KV cache slots its row may hold: its prompt and every token it may add."""
        return len(self.ids) + self.sampling.max_new_tokens


@dataclass
class Stats:
    """What the engine has done, for ``/metrics`` and ``/health``."""

    steps: int = 0  # decoding steps run (each: one token for every running row, and prefills)
    tokens: int = 0
    last_tokens_per_second: float = 0.0
    rows: int = 0  # running now
    peak_rows: int = 0  # the most that ran in one step


class Engine:
    def __init__(
        self,
        pair: ModelPair,
        *,
        monitor: str = "tokens",
        max_batch: int = 8,
        window: float = 0.02,
        max_queue: int = 64,
        max_batch_tokens: int = 65536,
        prefill_tokens: int = 2048,
        first_token: str = "ride",
    ):
        if max_batch < 1 or max_queue < max_batch:
            raise ValueError(f"need 1 <= max_batch ({max_batch}) <= max_queue ({max_queue})")
        if max_batch_tokens < 1 or prefill_tokens < 1:
            raise ValueError("max_batch_tokens and prefill_tokens must be positive")
        self.pair, self.monitor = pair, monitor
        self.max_batch, self.window, self.max_queue = max_batch, window, max_queue
        self.max_batch_tokens, self.prefill_tokens = max_batch_tokens, prefill_tokens
        self.first_token = first_token
        self.stats = Stats()
        self._waiting: deque[Submission] = deque()
        self._jobs: dict[int, Submission] = {}  # running: the batcher's rows, by index
        self._count = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batcher = self._new_batcher()

    def _new_batcher(self) -> Batcher:
        return Batcher(
            self.pair,
            monitor=self.monitor,
            prefill_tokens=self.prefill_tokens,
            first_token=self.first_token,
            cancelled=lambda index: self._jobs[index].cancelled,
        )

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
        prompt_first: bool = True,
    ) -> Submission:
        """``prompt_first=False``: nothing waits for the prompt's TuCo (no guard), so the first token
        is sent as soon as it is chosen and the prompt's TuCo follows (``PromptTuco``)."""
        job = Submission(ids, sampling, alpha, deliver, on_first, on_token, prompt_first)
        if job.reserved > self.max_batch_tokens:
            raise TooLarge(
                f"the prompt's {len(ids)} tokens + max_tokens {sampling.max_new_tokens} are more than this "
                f"server's KV budget of {self.max_batch_tokens} tokens (--max-batch-tokens): ask for fewer"
            )
        return self._enqueue(job)

    def submit_call(self, call: Callable[[], Any], deliver: Callable[[Any], None]) -> Submission:
        """Run ``call()`` on the model's thread between decoding steps; ``deliver`` gets its result
        or its error."""
        return self._enqueue(Submission([], Sampling(), 1.0, deliver, call=call))

    def _enqueue(self, job: Submission) -> Submission:
        with self._lock:
            if self.load >= self.max_queue:
                raise Overloaded(f"{self.load} requests waiting or running (--max-queue {self.max_queue})")
            self._waiting.append(job)
            self._lock.notify_all()
        return job

    async def call_async(self, call: Callable[[], Any], disconnected: Callable[[], Awaitable[bool]]) -> Any:
        """``call()`` run on the model's thread between decoding steps, awaited: its result (its
        exception is raised here; ``ClientLeft`` if the client left while it waited)."""
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
            running = sum(not (j.cancelled or j.finished) for j in self._jobs.values())
            return self.waiting + running

    @property
    def waiting(self) -> int:
        with self._lock:
            return sum(not j.cancelled for j in self._waiting)

    # ------------------------------------------------------------------ the worker thread
    def _loop(self) -> None:
        with progress.inner():  # the model's thread of a server: no progress bars on its terminal
            while True:
                with self._lock:
                    while not self._stopping and not self._waiting and not self._jobs:
                        self._lock.wait()
                    if self._stopping:
                        break
                    if not self._jobs:  # idle: a moment for a burst to come whole, prefilled together
                        deadline = time.monotonic() + self.window
                        while len(self._waiting) < self.max_batch:
                            if (left := deadline - time.monotonic()) <= 0:
                                break
                            self._lock.wait(left)
                    call = self._admit()
                if call is not None:
                    self._call(call)
                elif self._jobs:
                    self._step()
        self._fail_all(RuntimeError("the server stopped before this request finished"))

    def _admit(self) -> Submission | None:
        """Under the lock: move waiting requests into the batcher while they fit (in order); a call
        at the head of the queue is returned instead, to run now."""
        while self._waiting:
            head = self._waiting[0]
            if head.cancelled:
                self._waiting.popleft()
                continue
            if head.call is not None:
                return self._waiting.popleft()
            longest = max([head.reserved, *(j.reserved for j in self._jobs.values())])
            if len(self._jobs) >= self.max_batch or (len(self._jobs) + 1) * longest > self.max_batch_tokens:
                return None  # it waits for rows to leave
            self._waiting.popleft()
            index, self._count = self._count, self._count + 1
            self._jobs[index] = head
            try:
                self.batcher.add(index, head.ids, head.sampling, head.alpha, head.prompt_first)
            except ValueError as error:  # checked by the server before: a caller of the engine's own
                del self._jobs[index]
                head.finished = True
                head.deliver(error)
        return None

    def _step(self) -> None:
        """One step of the batcher: the prefills' first tokens are delivered before the decoding
        step runs (a newcomer's time to first token does not wait for the others' step), and those
        that ride it before the PT blocks run for their prompts' TuCo (``settle``)."""
        started, tokens = time.monotonic(), 0
        rows = len(self._jobs)
        try:
            tokens += self._deliver(self.batcher.prefill())
            tokens += self._deliver(self.batcher.decode())
            self._deliver(self.batcher.settle())
        except Exception as error:  # the step failed: every request in it hears why
            log.exception("tuco serve: a decoding step of %d rows failed", rows)
            self._fail_all(error)
            return
        elapsed = time.monotonic() - started
        with self._lock:
            live = self.batcher.indices()
            self._jobs = {i: j for i, j in self._jobs.items() if i in live and not j.finished}
            self.stats.steps += 1
            self.stats.tokens += tokens
            self.stats.last_tokens_per_second = tokens / elapsed if elapsed > 0 else 0.0
            self.stats.rows = len(self._jobs)
            self.stats.peak_rows = max(self.stats.peak_rows, rows)

    def _deliver(self, events: list) -> int:
        """Hand each event (``TokenEvent``, ``PromptTuco``) to its request: the tokens generated."""
        tokens = 0
        for event in events:
            job = self._jobs[event.index]
            if isinstance(event, PromptTuco):  # after the first token: nothing can be blocked now
                if job.on_first is not None:
                    job.on_first(event)  # type: ignore[arg-type]
                job.deliver(event)
                continue
            if event.error is not None:  # this row failed alone: the others go on
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
        return tokens

    def _fail_all(self, error: Exception) -> None:
        """Every running request hears ``error``; the batcher starts afresh."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
            self.batcher = self._new_batcher()
            self.stats.rows = 0
        for job in jobs:
            if not (job.finished or job.cancelled):
                job.finished = True
                job.deliver(error)

    def _call(self, job: Submission) -> None:
        try:
            if not job.cancelled:
                job.deliver(job.call())  # type: ignore[misc]
        except Exception as error:
            log.exception("tuco serve: a call failed")
            job.deliver(error)
        finally:
            job.finished = True
