"""Real headless Chromium, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: NUL-terminated JSON on fds 3 and 4; no websocket,
no extra package). Opens a page, collects console errors, exceptions and every
network request, and evaluates an expression in it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome")


def chromium_binary() -> str | None:
    return next((p for p in map(shutil.which, BINARIES) if p), None)


@dataclass
class PageLoad:
    """What happened while a page loaded: console errors and exceptions (text), the URLs
    it requested, and the value of the evaluated expression."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: Any = None


class Browser:
    """One headless Chromium with a DevTools session on a pipe. Use as a context manager."""

    def __init__(self, binary: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--remote-debugging-pipe", "--host-resolver-rules=MAP * ~NOTFOUND",
                "--window-size=1100,1400", "about:blank"]

        def pipe_fds() -> None:
            """In the child: Chromium reads commands on fd 3 and writes replies on fd 4
            (duplicated first, so neither end is overwritten by the other's move)."""
            read_end, write_end = os.dup(to_chrome_r), os.dup(from_chrome_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        # close_fds=False: fds 3 and 4 are made in the child; Python's own fds are not
        # inheritable (PEP 446), so nothing else leaks in.
        self._proc = subprocess.Popen([binary, *args], close_fds=False, preexec_fn=pipe_fds,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already gone
            self._send("Browser.close", {})
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        os.close(self._to_chrome)
        os.close(self._from_chrome)

    # -- the protocol ----------------------------------------------------------------

    def _send(self, method: str, params: dict[str, Any], session: str | None = None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        return self._next_id

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if ready:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\0", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        """Send a command and wait for its reply (events meanwhile are kept)."""
        cid = self._send(method, params or {}, session)
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._receive(deadline)
            if msg.get("id") == cid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self._events.append(msg)

    def _wait_event(self, method: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method for e in self._events):
            self._events.append(self._receive(deadline))

    # -- a page ----------------------------------------------------------------------

    def load(self, url: str, expression: str) -> PageLoad:
        """Open ``url`` in a fresh tab, wait for its load event, evaluate ``expression``
        (its JSON value comes back) and report errors and requests."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self._events.clear()
        self.call("Page.navigate", {"url": url}, session=session)
        self._wait_event("Page.loadEventFired")
        value = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                          session=session)["result"].get("value")
        out = PageLoad(value=value)
        for e in self._events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.errors.append(details.get("exception", {}).get("description")
                                  or details.get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                 "assert"):
                out.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                           for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.errors.append(params["entry"].get("text", "log error"))
            elif method == "Network.requestWillBeSent":
                out.requests.append(params.get("request", {}).get("url", ""))
        self.call("Target.closeTarget", {"targetId": target})
        return out

    def screenshot(self, url: str, path: Path, width: int, height: int) -> None:
        """A PNG of the top ``width`` x ``height`` CSS pixels of ``url``."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        self._events.clear()
        self.call("Page.navigate", {"url": url}, session=session)
        self._wait_event("Page.loadEventFired")
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        path.write_bytes(base64.b64decode(data))
        self.call("Target.closeTarget", {"targetId": target})
