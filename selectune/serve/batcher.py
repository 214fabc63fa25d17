"""The dynamic batcher: one worker thread turns queued requests (of any deltas) into forward passes.

A batch closes when it holds ``max_batch_size`` examples or ``max_wait_s`` has passed since its first
request arrived, whichever comes first; whole requests are never split. Model changes (hot load and
unload) travel through the same FIFO queue as requests, so they run between batches, after every request
queued before them: a request accepted before an unload is still answered, and one accepted after a load
sees the new delta. Nothing else touches the model, so no lock is needed.

At most ``max_queued`` requests wait (``submit`` raises ``QueueFull`` past it; controls are never refused), and a
request whose future was cancelled while it waited (its client left, or its deadline passed) is dropped unrun.
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
    operation: str = "predict"
    """``predict`` (one forward pass: labels, scores) or ``generate`` (greedy decoding, one forward per new token)."""
    task: Any = None
    """The task that formats the answer when not the delta's own (a ``/v1/score`` request naming its labels)."""
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Control:
    """A change to what is served, run by the worker between batches; its return value arrives on ``future``."""

    action: Callable[[], Any]
    future: Future = field(default_factory=Future)


_STOP = object()


class QueueFull(RuntimeError):
    """``max_queued`` requests already wait for the batcher: the caller should retry later."""


class DynamicBatcher:
    """``run_batch(jobs)`` is called on the worker thread with up to ``max_batch_size`` examples and must set
    every job's future."""

    def __init__(self, run_batch: Callable[[list[Job]], None], max_batch_size: int = 32, max_wait_s: float = 0.005,
                 max_queued: int | None = None):
        if max_batch_size < 1 or max_wait_s < 0 or (max_queued is not None and max_queued < 1):
            raise ValueError("max_batch_size must be >= 1, max_wait >= 0 and max_queued >= 1")
        self.run_batch, self.max_batch_size, self.max_wait_s = run_batch, max_batch_size, max_wait_s
        self.max_queued = max_queued
        self._waiting = 0  # requests submitted and not yet taken into a batch (or dropped)
        self._waiting_lock = threading.Lock()  # submit runs on the event loop, the worker takes on its thread
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

    @property
    def alive(self) -> bool:
        """True while the worker thread runs (it never dies of a failed batch)."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, job: Job | Control) -> Future:
        if isinstance(job, Job):
            if len(job.examples) > self.max_batch_size:
                raise ValueError(f"a request of {len(job.examples)} examples exceeds max_batch_size {self.max_batch_size}")
            with self._waiting_lock:
                if self.max_queued is not None and self._waiting >= self.max_queued:
                    raise QueueFull(f"the queue is full: {self._waiting} requests already wait for the model (the limit is {self.max_queued})")
                self._waiting += 1
        self._queue.put(job)
        return job.future

    @property
    def queued(self) -> int:
        return self._queue.qsize() + len(self._carry)

    def _next(self, timeout: float | None) -> Any:
        if self._carry:
            return self._carry.popleft()
        return self._queue.get(timeout=timeout)

    def _admit(self, job: Job) -> bool:
        """Take ``job`` off the waiting count; False when it was cancelled while it waited (dropped, never run)."""
        with self._waiting_lock:
            self._waiting -= 1
        return job.future.set_running_or_notify_cancel()

    def _work(self) -> None:
        while True:
            item = self._next(None)
            if item is _STOP:
                return
            if isinstance(item, Control):
                self._control(item)
                continue
            if not self._admit(item):
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
                if not self._admit(nxt):
                    continue
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
