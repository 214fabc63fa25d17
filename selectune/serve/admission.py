"""What the server lets in, and for how long: body size counted as it arrives, requests in flight per tenant,
a deadline per request, clients that leave, and who may listen without keys. Each limit answers with its own
status (413, 429, 504, 499) so one caller's flood or slow upload never holds the others back."""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
from collections import Counter, deque
from concurrent.futures import Future
from typing import Any, Iterator

from fastapi import HTTPException, Request

_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/-])/[^\s'\"]+")


class RequestDropped(Exception):
    """A request given up before its answer: ``reason`` is ``deadline`` or ``disconnected``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


async def read_body_within(receive, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """Read a request's body messages as they arrive: (messages, True) when the body ended within ``limit`` bytes
    (or the client left), (messages read so far, False) as soon as it passed the limit, without reading on."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, True
        size += len(message.get("body", b""))
        if size > limit:
            return messages, False
        if not message.get("more_body", False):
            return messages, True


def replay(messages: list[dict[str, Any]], receive):
    """An ASGI ``receive`` that gives ``messages`` first, then the connection's own (its disconnect)."""
    pending = deque(messages)

    async def replayed() -> dict[str, Any]:
        return pending.popleft() if pending else await receive()

    return replayed


class TenantSlots:
    """Requests in flight per tenant, at most ``limit`` each, so one key cannot fill the queue for the others."""

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"max_in_flight_per_tenant must be >= 1 (got {limit})")
        self.limit = limit
        self.in_flight: Counter[str] = Counter()  # event loop only: no lock

    @contextlib.contextmanager
    def hold(self, tenant: str | None) -> Iterator[None]:
        """One slot of ``tenant`` while the block runs; 429 with Retry-After when all are taken. None (no --keys):
        no tenants to tell apart, the queue bound alone applies."""
        if tenant is None:
            yield
            return
        if self.in_flight[tenant] >= self.limit:
            raise HTTPException(429, f"tenant {tenant!r} already has {self.limit} requests in flight (the limit per tenant); "
                                     "wait for their answers, then retry", {"Retry-After": "1"})
        self.in_flight[tenant] += 1
        try:
            yield
        finally:
            self.in_flight[tenant] -= 1


async def _client_left(request: Request) -> None:
    # The body was read already, so the next message is the disconnect (uvicorn sends none while the client waits).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer_or_drop(future: Future, request: Request, timeout_s: float) -> Any:
    """The result of a batcher job, waiting at most ``timeout_s``. On the deadline or when the client leaves, the job
    is cancelled (the batcher drops it unless it already runs) and ``RequestDropped`` says why."""
    answer = asyncio.wrap_future(future)
    left = asyncio.ensure_future(_client_left(request))
    try:
        done, _ = await asyncio.wait({answer, left}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
    if answer in done:
        return answer.result()
    # Cancel the batcher's future here, synchronously: wrap_future would only pass the cancel on at the loop's next
    # turn, and by then the 504 may be out and the batcher may have taken the job (it ran once in CI).
    future.cancel()
    answer.cancel()
    if left in done:
        raise RequestDropped("disconnected", "the client closed the connection before its answer")
    raise RequestDropped("deadline", f"no answer within the {timeout_s:g} s request deadline; the server is busy, retry later")


def check_exposure(host: str, keys: str | None, insecure_no_auth: bool) -> None:
    """Refuse to listen beyond this machine (a non-loopback ``host``) without API keys, unless told it is on purpose."""
    if keys is not None or insecure_no_auth or _is_loopback(host):
        return
    raise ValueError(f"--host {host} accepts connections from other machines, and without --keys every model would be open "
                     "to anyone: give --keys FILE, listen on 127.0.0.1, or pass --insecure-no-auth if that is intended")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def redact_paths(message: str, folders: list[str]) -> str:
    """``message`` with server folders (``folders`` and any absolute path) replaced, for callers without an admin key."""
    message = _ABSOLUTE_PATH.sub("<server path>", message)
    for folder in sorted(filter(None, folders), key=len, reverse=True):  # relative ones, e.g. --deltas runs/x
        message = message.replace(folder, "<server path>")
    return message
