"""Peak memory beyond the weights, measured around a block of code in this process.

CUDA: the allocator's peak minus what was allocated at entry. CPU (Linux): the process's peak resident set
(VmHWM, reset at entry by writing 5 to /proc/self/clear_refs) minus the resident set at entry, after freed
heap pages were handed back to the system (glibc ``malloc_trim``), so memory a previous run freed but the
allocator kept does not hide this run's growth. Elsewhere: None (not measured), never a made-up number.
"""
from __future__ import annotations

import ctypes
import gc
import os

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets VmHWM, so the peak of loading the model does not count.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def release_free_heap() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to hand back
        pass


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.bytes_beyond_start`` (None where it cannot be measured)."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.bytes_beyond_start: int | None = None
        self.how = ""

    def __enter__(self) -> "PeakMemory":
        release_free_heap()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.how = "CUDA max_memory_allocated minus allocated at start"
        elif os.path.exists("/proc/self/clear_refs"):
            try:
                reset_peak_rss()
                self._start = rss_bytes()
                self.how = "peak RSS (VmHWM, reset at start) minus RSS at start, after malloc_trim"
            except OSError:
                self._start = None
        else:
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is None:
            self.how = "not measured on this platform"
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes_beyond_start = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self.bytes_beyond_start = peak_rss_bytes() - self._start
