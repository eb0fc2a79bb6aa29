"""The engine: a queue per model, micro-batches under a token budget, runs on a small executor.

A request's token rows become a `Job`. Batching workers (one per allowed concurrent run) take a
window of queued rows, sort it by length, cut it into batches whose padded cost stays under the
token budget, and run each on the onnxruntime executor; rows that arrive while a run is in flight
batch together on the next turn. Admission by time (admission.py), dropped jobs, faults confined
to their batch and restarted workers: docs/architecture.md, "The service, room by room".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_embed.core import memory
from edge_embed.core.batching import RUN_COST_TOKENS, BatchPolicy, cut_sorted, padded_width
from edge_embed.core.encoder import BundleModel
from edge_embed.core.feeds import I64
from edge_embed.core.pooling import F32

from .admission import RUNNING_SHARE_LEFT, Meter, judge
from .errors import ApiError, ClientGone, InternalError, Overloaded, Unavailable
from .limits import QueueLimits
from .metrics import Metrics

log = logging.getLogger("edge_embed.engine")

# A worker takes this many batches' worth of queued rows per turn: enough rows to sort by length
# across requests, few enough that a request arriving meanwhile waits for at most two batches.
WINDOW_BATCHES = 2
# The window over which batching-worker deaths are counted against `worker_restarts`.
RESTART_WINDOW_S = 60.0
# The warm-up's calibration run is this many inputs of the model's full length (at most the
# batch token budget): long inputs are what fills a queue, so their rate is the one to know
# before the first request. One: per token, one 256-token input ran as fast as four together
# (MiniLM int8, one thread: 140 against 164 us a token), and four cost a quarter of a second of
# start-up on 2 busy cores (docs/measurements.md, "Start-up").
CALIBRATION_ROWS = 1
ARENA_SHRINK_KEY = "memory.enable_memory_arena_shrinkage"
# After this long without a model run, following runs, the engine gives the arena back (one
# short run with arena shrinkage) and glibc's free pages: the memory a burst of large batches
# took returns when the burst ends, while a steady stream (a lone client sends far more often)
# never pays for it. Figures: docs/measurements.md, "Memory".
IDLE_SETTLE_S = 1.0


@dataclass(eq=False)
class Ticket:
    """A request's place in the queue from admission to submit (while it is tokenized)."""

    inputs: int
    tokens: int  # estimated until submit
    open: bool = True


@dataclass(eq=False)
class Job:
    rows: Sequence[I64]
    dimensions: int
    future: asyncio.Future[F32]
    request_id: str = ""
    # A transport that reports closing means the client went away.
    is_gone: Callable[[], bool] = lambda: False
    tokens: int = 0
    taken: int = 0  # rows handed to a worker so far
    done_rows: int = 0
    dropped: str | None = None
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None
    inference_s: float = 0.0
    # the runs it took part in: (start, end, inputs in the run), perf_counter seconds; read by
    # the request's trace (service/tracing.py)
    runs: list[tuple[float, float, int]] = field(default_factory=list)
    result: F32 | None = None

    def __post_init__(self) -> None:
        self.result = np.empty((len(self.rows), self.dimensions), dtype=np.float32)

    @property
    def queue_s(self) -> float:
        return (self.started or time.perf_counter()) - self.submitted

    def alive(self) -> bool:
        return self.dropped is None and not self.future.done()


class InFlight:
    """Model runs in flight, all engines together (they share the CPUs and the executor).

    Touched only from the event loop, so a plain count is exact: a run that finds it at zero is
    alone, and takes its model's lone session (every thread) where the model has one.
    """

    def __init__(self) -> None:
        self.runs = 0


def shrinking_run() -> ort.RunOptions:
    """Run options that give the arena's free chunks back to the system when the run ends."""
    options = ort.RunOptions()
    options.add_run_config_entry(ARENA_SHRINK_KEY, "cpu:0")
    return options


def _fail(job: Job, error: ApiError) -> None:
    """Fail `job`'s request; its handler may be gone already, so never log it as unretrieved."""
    if not job.future.done():
        job.future.set_exception(error)
        job.future.exception()  # marks it retrieved: a departed handler is not an error


class ModelEngine:
    """One model's queue and batching workers."""

    def __init__(self, name: str, model: BundleModel, executor: Executor, metrics: Metrics, *,
                 batching: BatchPolicy, queue: QueueLimits, workers: int = 1,
                 arena_shrink: bool = False, worker_restarts: int = 5,
                 in_flight: InFlight | None = None) -> None:
        self.name = name
        self.model = model
        self.executor = executor
        self.metrics = metrics
        self.batching = batching
        self.queue = queue
        self.n_workers = workers
        self.worker_restarts = worker_restarts
        self.run_options: ort.RunOptions | None = shrinking_run() if arena_shrink else None
        self._jobs: deque[Job] = deque()
        self._wake = asyncio.Event()
        # The express lane: one more run, on its own thread, for short jobs only, so that a
        # sentence never waits for the long runs in flight (they take a second on a busy box).
        self._express_wake = asyncio.Event()
        self._express: asyncio.Task[None] | None = None
        self._express_executor = ThreadPoolExecutor(1, thread_name_prefix="edge-embed-express")
        self._settler: asyncio.Task[None] | None = None
        self._unsettled = False  # runs since the arena was last given back
        self._last_run = 0.0  # event-loop time the last run ended
        self.settles = 0
        self._long: set[Job] = set()  # jobs over one batch's budgets, queued or running
        self._workers: set[asyncio.Task[None]] = set()
        self._restarts: deque[float] = deque()
        self._stopping = False
        self.queued_inputs = 0
        self.queued_tokens = 0
        self.pending_inputs = 0  # held by admitted requests still being tokenized
        self.pending_tokens = 0
        self.running = 0
        self.running_cost = 0.0
        self.in_flight = in_flight or InFlight()
        self.lone_runs = 0  # runs on the lone session (every thread)
        self.side_runs = 0  # runs on the side-by-side session
        self.faults = 0
        self.last_fault: dict[str, Any] | None = None
        self.worker_deaths = 0
        self.dead = False
        self.warmed = False
        self.meter = Meter(batching, workers)
        self._queue_gauge = metrics.queue_inputs.labels(name)

    # ---- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        for _ in range(self.n_workers):
            self._spawn()
        self._spawn_express()
        self._settler = asyncio.get_running_loop().create_task(self._settle_when_idle(),
                                                              name=f"settler:{self.name}")

    def _spawn_express(self) -> None:
        self._express = asyncio.get_running_loop().create_task(
            self._express_worker(), name=f"express:{self.name}")
        self._express.add_done_callback(self._on_express_done)

    def _on_express_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        log.error("express worker for %s died; restarting it", self.name,
                  exc_info=task.exception())
        self._spawn_express()

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher:{self.name}")
        self._workers.add(task)
        task.add_done_callback(self._on_worker_done)

    def _on_worker_done(self, task: asyncio.Task[None]) -> None:
        self._workers.discard(task)
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        self.worker_deaths += 1
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) > self.worker_restarts:
            log.error("batching worker for %s died %d times in %.0f s; engine marked dead",
                      self.name, len(self._restarts), RESTART_WINDOW_S, exc_info=exc)
            self.dead = True
            self._fail_queued(Unavailable("The model's engine stopped; the server must be "
                                          "restarted.", headers={"Retry-After": "5"}))
            return
        log.error("batching worker for %s died; restarting it", self.name, exc_info=exc)
        self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self._workers,
                 *(t for t in (self._express, self._settler) if t is not None)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._express_executor.shutdown(wait=False, cancel_futures=True)
        self._fail_queued(Unavailable("The server is shutting down.",
                                      headers={"Retry-After": "1"}))

    async def warmup(self) -> None:
        """Runs before /ready turns 200: one so that the first client does not pay for session
        set-up, then a timed batch of full-length inputs that seeds the throughput estimate
        admission decides by. The last run gives the arena back: the calibration's peak would
        otherwise stay for good in a server that may never see such a batch (figures:
        docs/measurements.md, "Memory")."""
        loop = asyncio.get_running_loop()
        short = self.model.tokenizer.encode(["warm up"])[0].ids
        await loop.run_in_executor(self.executor, self.model.run, [short])
        limit = self.model.manifest.max_tokens
        long = self.model.tokenizer.encode(["warm up " * limit])[0].ids
        rows = [long] * max(1, min(CALIBRATION_ROWS, self.batching.max_tokens // len(long),
                                   self.batching.max_inputs))
        # Timed the second time: the first run of a new shape also pays for its buffers.
        for settle in (None, shrinking_run()):
            start = time.perf_counter()
            await loop.run_in_executor(self.executor, self.model.run, rows, settle)
        self.meter.record(RUN_COST_TOKENS + len(long) * len(rows), time.perf_counter() - start)
        self.warmed = True

    @property
    def alive(self) -> bool:
        return not self.dead and (self._stopping or len(self._workers) > 0)

    def health(self) -> dict[str, Any]:
        return {"alive": self.alive, "workers": len(self._workers), "faults": self.faults,
                "last_fault": self.last_fault, "worker_deaths": self.worker_deaths,
                "queued_inputs": self.queued_inputs, "queued_tokens": self.queued_tokens,
                "running": self.running,
                # which session the runs took: a lone run has every thread
                # the arena given back after the load stopped (IDLE_SETTLE_S)
                "idle_settles": self.settles,
                "runs": {"lone": self.lone_runs, "side_by_side": self.side_runs,
                         "threads": self.model.sessions.threads()},
                # what admission decides by: the measured rate and the work it sees ahead
                "throughput_tokens_per_s": round(self.meter.rate),
                "work_ahead_s": round(self.meter.seconds(self.work_ahead()), 3)}

    # ---- admission --------------------------------------------------------------------------
    def waiting(self) -> tuple[int, int]:
        """Inputs and tokens queued or held by requests still being tokenized."""
        return (self.queued_inputs + self.pending_inputs,
                self.queued_tokens + self.pending_tokens)

    def work_ahead(self) -> float:
        """Cost units queued, being tokenized, and left of the runs in flight."""
        inputs, tokens = self.waiting()
        waiting = self.meter.cost(tokens, inputs) if inputs else 0.0
        return waiting + RUNNING_SHARE_LEFT * self.running_cost

    def admit(self, inputs: int, tokens: int, *, time_left_s: float, timeout_s: float) -> Ticket:
        """Admit a request of `inputs` and (estimated) `tokens`, or refuse it (429) at once.

        Admitted when the work ahead of it and its own end within the queue's share of the time
        the request has left, and the queue's memory bounds hold. The ticket holds the request's
        place while it is tokenized; `submit` turns it into queued rows.
        """
        if self.dead or self._stopping:
            raise Unavailable("The model's engine is not running.", headers={"Retry-After": "5"})
        ahead = self.work_ahead()
        verdict = judge(self.meter, self.queue, ahead=ahead,
                        own=self.meter.cost(tokens, inputs), time_left_s=time_left_s,
                        timeout_s=timeout_s)
        queued_inputs, queued_tokens = self.waiting()
        # An empty queue admits any request the per-request limits allowed, however large.
        full = queued_inputs > 0 and (queued_inputs + inputs > self.queue.max_inputs
                                      or queued_tokens + tokens > self.queue.max_tokens)
        if full or not verdict.admit:
            self.metrics.rejected.labels("overloaded").inc()
            retry = verdict.retry_after_s
            why = (f"{queued_inputs} inputs, {queued_tokens} tokens queued" if full else
                   f"the work ahead and this request's would end in ~{verdict.eta_s:.1f} s, "
                   f"past {self.queue.deadline_share:.0%} of the {time_left_s:.1f} s it has")
            raise Overloaded(f"The server is overloaded for '{self.name}' ({why}); retry in "
                             f"{retry} s.", headers={"Retry-After": str(retry)})
        self.pending_inputs += inputs
        self.pending_tokens += tokens
        return Ticket(inputs, tokens)

    def release(self, ticket: Ticket) -> None:
        """Give back a ticket's place (its request failed before submit, or was submitted)."""
        if ticket.open:
            ticket.open = False
            self.pending_inputs -= ticket.inputs
            self.pending_tokens -= ticket.tokens

    @contextlib.contextmanager
    def admitted(self, inputs: int, tokens: int, *, time_left_s: float,
                 timeout_s: float) -> Iterator[Ticket]:
        ticket = self.admit(inputs, tokens, time_left_s=time_left_s, timeout_s=timeout_s)
        try:
            yield ticket
        finally:
            self.release(ticket)

    def submit(self, rows: Sequence[I64], ticket: Ticket, *, request_id: str = "",
               is_gone: Callable[[], bool] | None = None) -> Job:
        """Queue an admitted request's token rows; the exact count replaces the estimate."""
        if self.dead or self._stopping:
            raise Unavailable("The model's engine is not running.", headers={"Retry-After": "5"})
        self.release(ticket)
        tokens = sum(len(r) for r in rows)
        loop = asyncio.get_running_loop()
        job = Job(rows=rows, dimensions=self.model.manifest.dimensions,
                  future=loop.create_future(), request_id=request_id,
                  is_gone=is_gone or (lambda: False), tokens=tokens)
        self._jobs.append(job)
        self.queued_inputs += len(rows)
        self.queued_tokens += tokens
        self._queue_gauge.set(self.queued_inputs)
        self._wake.set()
        if self._short(job):
            self._express_wake.set()
        else:
            self._long.add(job)
            job.future.add_done_callback(lambda _: self._long.discard(job))
        return job

    def _short(self, job: Job) -> bool:
        return job.tokens <= self.batching.max_tokens and len(job.rows) <= self.batching.max_inputs

    def drop(self, job: Job, reason: str) -> None:
        """Drop the rows of `job` not yet run (its request timed out, was cancelled, went away)."""
        if job.dropped is not None:
            return
        job.dropped = reason
        self._long.discard(job)
        untaken = len(job.rows) - job.taken
        if untaken:
            self.queued_inputs -= untaken
            self.queued_tokens -= sum(len(r) for r in job.rows[job.taken:])
            self._queue_gauge.set(self.queued_inputs)
            self.metrics.dropped.labels(self.name, reason).inc(untaken)
            job.taken = len(job.rows)

    def _fail_queued(self, error: ApiError) -> None:
        while self._jobs:
            job = self._jobs.popleft()
            _fail(job, error)
            self.drop(job, "shutdown")

    # ---- batching ---------------------------------------------------------------------------
    def _take_short(self) -> tuple[list[tuple[Job, int]], int]:
        """Whole short jobs (each within one batch's budgets), in arrival order, up to one
        batch's worth: a sentence is not queued behind other requests' long documents, and
        those still get the rest of every window."""
        budget, rows = self.batching.max_tokens, self.batching.max_inputs
        window: list[tuple[Job, int]] = []
        tokens = 0
        taken: list[Job] = []
        for job in self._jobs:
            if tokens >= budget or len(window) >= rows:
                break
            if (job.taken or not job.alive() or not self._short(job)
                    or job.tokens > budget - tokens or len(job.rows) > rows - len(window)):
                continue
            window += [(job, r) for r in range(len(job.rows))]
            tokens += job.tokens
            job.taken = len(job.rows)
            taken.append(job)
        for job in taken:
            self._jobs.remove(job)
            self.queued_inputs -= len(job.rows)
            self.queued_tokens -= job.tokens
        if taken:
            self._queue_gauge.set(self.queued_inputs)
        return window, tokens

    def _take_window(self) -> list[tuple[Job, int]]:
        """Short jobs first (`_take_short`), then queued rows in arrival order, up to
        WINDOW_BATCHES batches' worth."""
        max_rows = self.batching.max_inputs * WINDOW_BATCHES
        max_tokens = self.batching.max_tokens * WINDOW_BATCHES
        # Short first only where long jobs wait: a stream of short jobs alone keeps its order.
        window, tokens = self._take_short() if self._long else ([], 0)
        while self._jobs and len(window) < max_rows and tokens < max_tokens:
            job = self._jobs[0]
            if not job.alive() or job.is_gone():
                self._check_gone(job)
                self.drop(job, job.dropped or "cancelled")
                self._jobs.popleft()
                continue
            while job.taken < len(job.rows) and len(window) < max_rows and tokens < max_tokens:
                n = len(job.rows[job.taken])
                window.append((job, job.taken))
                job.taken += 1
                tokens += n
                self.queued_inputs -= 1
                self.queued_tokens -= n
            if job.taken >= len(job.rows):
                self._jobs.popleft()
        self._queue_gauge.set(self.queued_inputs)
        return window

    def _form_batches(self, window: list[tuple[Job, int]]) -> list[list[tuple[Job, int]]]:
        """Sort by length, then cut into the batches of least total cost (core.batching)."""
        items = sorted(window, key=lambda item: len(item[0].rows[item[1]]))
        lengths = [len(job.rows[row]) for job, row in items]
        return [items[i:j] for i, j in cut_sorted(lengths, self.batching,
                                                  self.model.manifest.max_tokens)]

    def _padded(self, width: int, count: int) -> int:
        return padded_width(width, count, self.batching, self.model.manifest.max_tokens)

    def _check_gone(self, job: Job) -> None:
        if job.dropped is None and not job.future.done() and job.is_gone():
            self.drop(job, "client_gone")
            _fail(job, ClientGone("The client closed the connection."))

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._jobs:
                self._wake.clear()
                await self._wake.wait()
                delay_s = self.batching.delay_ms / 1000
                if delay_s > 0 and self.queued_inputs < self.batching.max_inputs:
                    await asyncio.sleep(delay_s)
            window = self._take_window()
            if not window:
                continue
            try:
                # A window runs whole: short jobs arriving meanwhile go to the express lane
                # while long runs fill the workers, or head the next window (taken mid-window,
                # they starved the window's long batches: p99 and batched throughput fell).
                for batch in self._form_batches(window):
                    await self._run(loop, batch)
            except BaseException as exc:
                self._fail_window(window, exc)
                raise

    async def _express_worker(self) -> None:
        """Runs short jobs as soon as they are queued while every batching worker is busy and
        long jobs wait (a stream of short jobs alone is batched by the workers as before)."""
        loop = asyncio.get_running_loop()
        while True:
            self._express_wake.clear()
            await self._express_wake.wait()
            while self.running >= self.n_workers and self._long:
                short, _ = self._take_short()
                if not short:
                    break
                try:
                    for batch in self._form_batches(short):
                        await self._run(loop, batch, self._express_executor)
                except BaseException as exc:
                    self._fail_window(short, exc)
                    raise

    def _fail_window(self, window: list[tuple[Job, int]], exc: BaseException) -> None:
        """Whatever ended a worker, no job it held may hang until its timeout."""
        stopping = isinstance(exc, asyncio.CancelledError)
        for job, _ in window:
            _fail(job, Unavailable("The server is shutting down.",
                                   headers={"Retry-After": "1"}) if stopping else
                  InternalError(f"The batching worker failed (request id "
                                f"{job.request_id}).",
                                extra={"request_id": job.request_id}))

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Job, int]],
                   executor: Executor | None = None) -> None:
        live: list[tuple[Job, int]] = []
        for job, row in batch:
            self._check_gone(job)
            if job.alive():
                live.append((job, row))
            else:
                self.metrics.dropped.labels(self.name, job.dropped or "cancelled").inc()
        if not live:
            return
        rows = [job.rows[row] for job, row in live]
        longest = max(len(r) for r in rows)
        width = self._padded(longest, len(rows))
        start = time.perf_counter()
        for job, _ in live:
            if job.started is None:
                job.started = start
                self.metrics.queue_seconds.labels(self.name).observe(start - job.submitted)
        cost = RUN_COST_TOKENS + width * len(rows)
        lone = self.model.sessions.layered and self._alone(live)
        if lone:
            self.lone_runs += 1
        else:
            self.side_runs += 1
        self.running += 1
        self.running_cost += cost
        self.in_flight.runs += 1
        try:
            pooled = await loop.run_in_executor(executor or self.executor, self._run_sync, rows,
                                                width, lone)
        except Exception as exc:  # an onnxruntime fault: fail this batch only
            self._fault(live, exc)
            return
        finally:
            self.running -= 1
            self.running_cost -= cost
            self.in_flight.runs -= 1
            self._unsettled = True
            self._last_run = loop.time()
        elapsed = time.perf_counter() - start
        real = sum(len(r) for r in rows)
        m = self.metrics
        m.batches.labels(self.name).inc()
        m.batch_size.labels(self.name).observe(len(rows))
        m.batch_tokens.labels(self.name, "real").inc(real)
        m.batch_tokens.labels(self.name, "padding").inc(width * len(rows) - real)
        m.inference_seconds.labels(self.name).observe(elapsed)
        # The meter's rate is per side-by-side run; a lone run had the threads of all of them.
        self.meter.record(cost / self.n_workers if lone else cost, elapsed)
        # A request's inference time is the wall time of the runs it took part in: once per run,
        # however many of its rows that run carried.
        for job in {id(j): j for j, _ in live}.values():
            job.inference_s += elapsed
            job.runs.append((start, start + elapsed, len(rows)))
        for i, (job, row) in enumerate(live):
            if job.future.done() or job.result is None:
                continue
            job.result[row] = pooled[i]
            job.done_rows += 1
            if job.done_rows == len(job.rows):
                job.future.set_result(job.result)

    async def _settle_when_idle(self) -> None:
        """Gives the arena and the heaps' free pages back once no run has ended for
        IDLE_SETTLE_S and nothing is queued, running or being tokenized."""
        loop = asyncio.get_running_loop()
        short = self.model.tokenizer.encode(["settle"])[0].ids
        while True:
            await asyncio.sleep(IDLE_SETTLE_S)
            idle = (self.running == 0 and not self._jobs and self.pending_inputs == 0
                    and loop.time() - self._last_run >= IDLE_SETTLE_S)
            if not (self._unsettled and idle):
                continue
            self._unsettled = False
            self.in_flight.runs += 1
            try:
                await loop.run_in_executor(self.executor, self._settle, short)
                self.settles += 1
            except Exception:  # a fault here costs memory, not answers
                log.exception("giving the arena back failed for %s", self.name)
            finally:
                self.in_flight.runs -= 1

    def _settle(self, short: I64) -> None:
        self.model.run([short], shrinking_run())
        memory.trim()

    def _alone(self, live: list[tuple[Job, int]]) -> bool:
        """The load is one request: this run carries one request's rows, no other run is in
        flight (any model), nothing but that request's other rows is queued, and nothing is
        being tokenized.

        Each condition keeps 2-thread runs out of concurrent load, where they share the CPUs
        with the next run (figures: docs/measurements.md#modelengine_alone).
        """
        jobs = {id(job) for job, _ in live}
        return (len(jobs) == 1 and self.in_flight.runs == 0 and self.pending_inputs == 0
                and all(id(job) in jobs for job in self._jobs))

    def _run_sync(self, rows: list[I64], width: int, lone: bool) -> F32:
        return self.model.run(rows, self.run_options, width, lone=lone)

    def _fault(self, live: list[tuple[Job, int]], exc: Exception) -> None:
        self.faults += 1
        self.metrics.engine_faults.labels(self.name).inc()
        ids = sorted({job.request_id for job, _ in live})
        self.last_fault = {"time": time.time(), "error": f"{type(exc).__name__}: {exc}"[:500],
                           "request_ids": ids[:16]}
        log.error("model run failed for %s (requests %s)", self.name, ", ".join(ids),
                  exc_info=exc)
        for job, _ in live:
            _fail(job, InternalError(
                f"The model failed on this request; request id {job.request_id}.",
                extra={"request_id": job.request_id}))
            self.drop(job, "fault")


# The running engines by model id; created and stopped by the app's clean-up context.
Engines = dict[str, ModelEngine]
