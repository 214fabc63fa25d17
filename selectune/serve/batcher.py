"""The dynamic batcher: one worker thread turns queued requests (of any deltas) into forward passes.

A batch closes when it holds ``max_batch_size`` examples or ``max_wait_s`` has passed since its first
request arrived, whichever comes first; whole requests are never split. Model changes (hot load and
unload) travel through the same FIFO queue as requests, so they run between batches, after every request
queued before them: a request accepted before an unload is still answered, and one accepted after a load
sees the new delta. Nothing else touches the model, so no lock is needed.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger("selectune.serve")


@dataclass
class Job:
    """One request: ``examples`` (already encoded) for delta ``name``; the answer arrives on ``future``."""

    name: str
    examples: list[Any]
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Control:
    """A change to what is served, run by the worker between batches; its return value arrives on ``future``."""

    action: Callable[[], Any]
    future: Future = field(default_factory=Future)


_STOP = object()


class DynamicBatcher:
    """``run_batch(jobs)`` is called on the worker thread with up to ``max_batch_size`` examples and must set
    every job's future."""

    def __init__(self, run_batch: Callable[[list[Job]], None], max_batch_size: int = 32, max_wait_s: float = 0.005):
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and max_wait >= 0")
        self.run_batch, self.max_batch_size, self.max_wait_s = run_batch, max_batch_size, max_wait_s
        self._queue: queue.Queue = queue.Queue()
        self._carry: deque = deque()  # an item taken from the queue that did not fit the batch being built
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="selectune-batcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Answer everything queued so far, then end the worker."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job | Control) -> Future:
        if len(getattr(job, "examples", ())) > self.max_batch_size:
            raise ValueError(f"a request of {len(job.examples)} examples exceeds max_batch_size {self.max_batch_size}")
        self._queue.put(job)
        return job.future

    @property
    def queued(self) -> int:
        return self._queue.qsize() + len(self._carry)

    def _next(self, timeout: float | None) -> Any:
        if self._carry:
            return self._carry.popleft()
        return self._queue.get(timeout=timeout)

    def _work(self) -> None:
        while True:
            item = self._next(None)
            if item is _STOP:
                return
            if isinstance(item, Control):
                self._control(item)
                continue
            jobs, size = [item], len(item.examples)
            deadline = item.queued_at + self.max_wait_s
            while size < self.max_batch_size:
                try:
                    nxt = self._next(max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if not isinstance(nxt, Job) or size + len(nxt.examples) > self.max_batch_size:
                    self._carry.append(nxt)  # a control, the stop mark, or a request for the next batch
                    break
                jobs.append(nxt)
                size += len(nxt.examples)
            try:
                self.run_batch(jobs)
            except BaseException as err:  # never let the worker die: the failure goes to these requests only
                log.exception("batch of %d request(s) failed", len(jobs))
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)

    @staticmethod
    def _control(item: Control) -> None:
        try:
            item.future.set_result(item.action())
        except BaseException as err:
            item.future.set_exception(err)
