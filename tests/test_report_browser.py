"""The report in a real browser: headless Chromium (Debian `chromium`) driven over the DevTools protocol.

The protocol runs over a pipe (``--remote-debugging-pipe``: commands in on fd 3, replies out on fd 4,
each message JSON ended by a NUL byte), so no port, no extra package: the test collects console
messages, uncaught exceptions, log entries and every network request while the page loads, then takes
a full-page screenshot. A negative control proves that the same check catches a page with a JS error.
"""
from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium; ``load(url)`` returns (screenshot PNG bytes, problems seen while loading)."""

    def __init__(self, profile: Path, width: int = 1280):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # in the child: fd 3 = commands in, fd 4 = replies out
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)  # fresh numbers first: a pipe end may itself be 3 or 4
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.width = width
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--hide-scrollbars",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=wire_fds,
            pass_fds=(3, 4))  # kept open when the other inherited descriptors are closed, after wire_fds
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer, self._id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for seen in self.events:
            if seen.get("method") == event:
                return seen
        while True:
            message = self._read_message(deadline)
            self.events.append(message)
            if message.get("method") == event:
                return message

    def drain(self, seconds: float) -> None:
        """Collect events that arrive during SECONDS (late errors, lazy requests)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.events.append(self._read_message(deadline))
        except TimeoutError:
            pass

    def load(self, url: str) -> tuple[bytes, list[str], list[str]]:
        """(full-page PNG, problems: console errors/warnings, exceptions, error log entries; requested URLs)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.events.clear()
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        self.drain(0.5)
        height = int(self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"])
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}},
                         session=session, timeout=60)
        problems, requests = [], []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                problems.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                problems.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                problems.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
            elif method == "Network.loadingFailed":
                problems.append(f"network failure: {params.get('errorText')}")
            elif method == "Network.requestWillBeSent":
                requests.append(params.get("request", {}).get("url", ""))
        return base64.b64decode(shot["data"]), problems, requests

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except Exception:  # already gone: fall through to terminate
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


def ink(png: bytes) -> tuple[float, float, tuple[int, int]]:
    """(share of pixels that are not near-white, grey-level standard deviation, size) of a screenshot."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float((image < 235).mean()), float(image.std()), image.shape[::-1]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed; `bash scripts/test.sh` installs Debian's chromium for this test")
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def gated_report(gated_tabular_runs, tmp_path_factory):
    from selectune.report import report

    return report(gated_tabular_runs["update"], gate=gated_tabular_runs["gate"], out=str(tmp_path_factory.mktemp("report") / "r"))


def test_negative_control_catches_a_script_error_and_an_external_request(browser, tmp_path):
    # The check must be able to fail: a page with a JS error, a console error and a remote image.
    page = tmp_path / "broken.html"
    page.write_text('<html><body><h1>broken</h1><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("boom"); notDefined();</script></body></html>')
    png, problems, requests = browser.load(page.as_uri())
    assert any("console.error: boom" in p for p in problems), problems
    assert any("notDefined" in p for p in problems), problems
    assert any(r.startswith("http://127.0.0.1:9/") for r in requests), requests
    # And an empty page reads as blank.
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    png, problems, _ = browser.load(blank.as_uri())
    assert ink(png)[0] < 0.001 and not problems


def test_report_renders_in_chromium_without_errors(browser, gated_report, tmp_path):
    html = Path(gated_report["html"])
    png, problems, requests = browser.load(html.as_uri())
    assert problems == [], problems
    # Only the page itself and its inline data: images; nothing from the network.
    assert all(r.startswith(("file://", "data:")) for r in requests), [r for r in requests if not r.startswith(("file://", "data:"))]
    assert any(r.startswith("data:image/png") for r in requests)
    inked, spread, (width, height) = ink(png)
    assert width == 1280 and height > 3000, (width, height)  # the whole report, not one screen
    assert inked > 0.05 and spread > 20, (inked, spread)  # text, tables and figures, not a blank page
    shot = Path(os.environ.get("SELECTUNE_REPORT_SCREENSHOT", tmp_path / "report.png"))
    shot.write_bytes(png)
