"""Loopback HTTP servers for fault injection (the only fakes the project allows) and request counting.

`FaultServer` answers chat-completion requests by following a script of faults (429 with Retry-After, 5xx,
hung connections, invalid JSON bodies, truncated bodies, slow replies, 4xx), then a default action; a `route`
function may instead pick the fault (or a delay) from the request itself, e.g. to slow down one conversation. It
counts the requests in flight at once. `CountingProxy` forwards to a real server and counts the requests that
reach it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def completion(text: str, model: str = "fault-model", finish_reason: str = "stop") -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
    ).encode()


class FaultServer:
    def __init__(
        self,
        script: list[str] | None = None,
        default: str = "ok",
        reply: str = "Rating: [[7]]",
        route: Callable[[dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.script = list(script or [])
        self.default = default
        self.reply = reply
        self.route = route  # request body -> action (None: the script's); may sleep or wait to delay the reply
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # set to end hung connections
        self.in_flight = 0
        self.peak_in_flight = 0  # most requests the server held at once
        server = self

        class Handler(BaseHTTPRequestHandler):
            counted = False  # this request is in server.in_flight

            def log_message(self, *args: Any) -> None:
                pass

            def _done(self) -> None:
                """Leave the in-flight count before the reply goes out: once the client has it, its next request
                may arrive before this thread runs again."""
                if self.counted:
                    self.counted = False
                    with server.lock:
                        server.in_flight -= 1

            def do_GET(self) -> None:
                self._send(200, json.dumps({"data": [{"id": "fault-model"}]}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                entry = {"body": body, "auth": self.headers.get("Authorization"), "t": time.monotonic()}
                with server.lock:
                    server.requests.append(entry)
                    server.in_flight += 1
                    server.peak_in_flight = max(server.peak_in_flight, server.in_flight)
                    if server.route is None:  # the script in arrival order
                        entry["action"] = server.next_action()
                self.counted = True
                try:
                    if server.route is not None:
                        routed = server.route(body)
                        with server.lock:
                            entry["action"] = routed if routed is not None else server.next_action()
                    server.act(self, entry["action"], body)
                finally:
                    self._done()

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self._done()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.handler = Handler
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True

    def next_action(self) -> str:
        """The script's next fault, then the default (call with the lock held)."""
        return self.script.pop(0) if self.script else self.default

    def act(self, h: Any, action: str, request: dict[str, Any] | None = None) -> None:
        name, _, arg = action.partition(":")
        if name == "ok":
            h._send(200, completion(arg or self.reply))
        elif name == "cut":  # a complete HTTP reply whose text max_tokens ended (finish_reason "length")
            h._send(200, completion(arg or self.reply, finish_reason="length"))
        elif name == "echo":  # "re: " + the last user turn, so a test can tell which turn a reply answers
            users = [m["content"] for m in (request or {}).get("messages", []) if m.get("role") == "user"]
            h._send(200, completion("re: " + (users[-1] if users else "")))
        elif name == "429":
            h._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": arg or "1"})
        elif name.isdigit():
            h._send(int(name), json.dumps({"error": {"message": f"injected {name}"}}).encode())
        elif name == "garbage":
            h._send(200, b"<html>this is not json")
        elif name == "truncated":
            body = completion(self.reply)
            h._done()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
        elif name == "hang":
            self.release.wait(float(arg or 30))
        elif name == "slow":
            time.sleep(float(arg or 1))
            h._send(200, completion(self.reply))
        else:
            raise ValueError(f"unknown fault {action}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FaultServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def counting_proxy(target: str) -> Iterator[dict[str, Any]]:
    """Forward POSTs to `target` (a real server's /v1 URL); yields {'base_url', 'count'} with a live count."""
    state: dict[str, Any] = {"count": 0}
    lock = threading.Lock()

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                state["count"] += 1
            req = urllib.request.Request(
                target + self.path.removeprefix("/v1"), data=data, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=120) as resp:
                body = resp.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["base_url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
