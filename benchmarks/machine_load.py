"""Whether this machine is quiet enough for timing figures, shared by every benchmark that writes them.

The machines are shared: a benchmark timed while other jobs run measures them as much as selectune. So each such
benchmark reads the load average before it starts, refuses to run (and so to write results) when the 1-minute
figure exceeds the cores this process may use, and records the reading in its JSON. ``--busy-ok REASON`` runs anyway
and writes REASON beside the figures (a smoke run, a test), so such a result can never pass for an idle one.

Only the reading before the run decides: during and after it the load average counts the benchmark's own threads
(a 2-thread forward pass alone holds it near 2 on 2 cores). The reading at the end is recorded as well.
"""
from __future__ import annotations

import argparse
import os
from typing import Any


class MachineBusy(SystemExit):
    """The load average is above the threshold and no reason to go on was given. A ``SystemExit``: a benchmark run
    from the command line ends with this message and exit status 1, no traceback."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def cores() -> int:
    """CPU cores this process may run on (its affinity, which a container or `taskset` may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_load_flags(parser: argparse.ArgumentParser) -> None:
    """``--busy-ok REASON`` and ``--max-load N`` on a benchmark's command line (default: refuse a busy machine)."""
    parser.add_argument("--busy-ok", metavar="REASON", default=None,
                        help="run and write results even when the load average exceeds --max-load, recording REASON "
                             "in the JSON (e.g. 'smoke run, not for the README'); by default a busy machine is refused")
    parser.add_argument("--max-load", type=float, default=None, metavar="N",
                        help="highest 1-minute load average to start at (default: the number of cores)")


def check_machine(args: argparse.Namespace) -> dict[str, Any]:
    """``machine_load`` for a command line with ``add_load_flags``: call it before loading or timing anything."""
    return machine_load(args.busy_ok, args.max_load)


def machine_load(busy_ok: str | None = None, threshold: float | None = None) -> dict[str, Any]:
    """The load average now, against ``threshold`` (default: the core count), as a record for a result's JSON.

    Raises ``MachineBusy`` when the 1-minute load average exceeds ``threshold`` and ``busy_ok`` gives no reason.
    """
    if busy_ok is not None and not busy_ok.strip():
        raise ValueError("--busy-ok needs a reason, e.g. --busy-ok 'smoke run, not for the README'")
    limit = float(cores() if threshold is None else threshold)
    one, five, fifteen = os.getloadavg()
    busy = one > limit
    if busy and busy_ok is None:
        raise MachineBusy(f"the machine is busy: load average {one:.2f} over the last minute exceeds {limit:g} "
                          f"({'the core count' if threshold is None else 'the threshold'}), so timings would measure other "
                          "jobs too. Run again when it is idle (see `uptime`), or pass --busy-ok REASON to run anyway "
                          "with REASON recorded beside the figures.")
    return {"load_average": {"1min": one, "5min": five, "15min": fifteen}, "cores": cores(), "threshold": limit,
            "busy": busy, "busy_ok": busy_ok}


def finished(at_start: dict[str, Any]) -> dict[str, Any]:
    """The result's ``machine_load`` field: the reading that let the run start, and the load average as it ends (which
    counts the benchmark itself, so it never refuses)."""
    one, five, fifteen = os.getloadavg()
    return {"at_start": at_start, "at_end": {"1min": one, "5min": five, "15min": fifteen}}
