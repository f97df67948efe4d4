"""A local Slack-webhook stand-in on 127.0.0.1 that answers from a script:
"ok" (200), "429:V" (Retry-After: V, any text), any other status code ("500", "503",
"404"), "hang:N" (answers 200 after N s: delivered, late), "trickle:S" (a 200 whose
head comes one byte every S s, for a minute or until the client hangs up), "reset" (drops the
connection), "flood:N" (200 with a body of N MiB, streamed until the client hangs up),
"garbled" (200 in a charset no one knows). After the script it answers ``then``. Every
body it got is in ``received``."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedWebhook:
    def __init__(self, script: list[str] | None = None, then: str = "ok") -> None:
        self.script = list(script or [])
        self.then = then
        self.attempts: list[tuple[float, str]] = []  # (monotonic time, action)
        self.delivered: list[dict[str, Any]] = []  # bodies answered 200
        self.received: list[dict[str, Any]] = []  # every body, whatever the answer
        self.streamed = 0  # bytes of "flood" answers the client took before it hung up
        self._lock = threading.Lock()
        self.closed = threading.Event()  # set when the stand-in stops: a trickle ends
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with hook._lock:
                    action = hook.script.pop(0) if hook.script else hook.then
                    hook.attempts.append((time.monotonic(), action))
                    hook.received.append(json.loads(body))
                name, _, arg = action.partition(":")
                if name == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                    self.connection.close()
                    return
                if name == "hang":
                    time.sleep(float(arg))
                if name == "trickle":
                    head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"x" * 100_000
                    with contextlib.suppress(OSError):  # (the client hung up)
                        for byte in head[:int(60 / float(arg))]:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            if hook.closed.wait(float(arg)):  # (the pace of the trickle)
                                break
                    return
                status = 200 if name in ("ok", "hang", "flood", "garbled") else int(name)
                if status == 200:
                    with hook._lock:
                        hook.delivered.append(json.loads(body))
                self.send_response(status)
                if name == "429":
                    self.send_header("Retry-After", arg)
                if name == "flood":
                    self.send_header("Content-Length", str(int(arg) << 20))
                    self.end_headers()
                    chunk = b"x" * (1 << 20)
                    with contextlib.suppress(OSError):  # (the client hung up)
                        for _ in range(int(arg)):
                            self.wfile.write(chunk)
                            hook.streamed += len(chunk)
                    return
                if name == "garbled":
                    self.send_header("Content-Type", "text/plain; charset=x-no-such-charset")
                payload = (b"\xff\xfe ok" if name == "garbled" else b"ok" if status == 200
                           else b"no_service")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T0/B0/secret"

    def texts(self) -> list[str]:
        return [body["text"] for body in self.delivered]


@contextmanager
def webhook(script: list[str] | None = None, then: str = "ok") -> Iterator[ScriptedWebhook]:
    hook = ScriptedWebhook(script, then)
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        hook.closed.set()
        hook.server.shutdown()
        hook.server.server_close()
