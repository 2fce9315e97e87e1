"""An HTTP proxy that fails requests between S3 clients and a loopback S3 server.

Two kinds of faults, both answered by the proxy itself (a failed request never reaches the server):

- random: a fraction ``fail_rate`` of all requests gets either a 503 SlowDown (as S3 answers when
  overloaded) or a dropped connection (no response at all); botocore's retries absorb these;
- rules: :class:`Rule` fails the requests of one method whose path contains a substring, every
  time or the first ``times`` times, so that a fault can outlast the client's retries (a source
  that can never be read, a write that fails until the whole task is retried), or holds such a
  request until the test has done something (``stall``: kill the worker mid-write).

Every request is logged (:attr:`FaultProxy.log`): method, path, status, ``If-None-Match`` and the
response ETag, so that a test can count, say, how often each record was created.  Test helper; it
listens on 127.0.0.1 and forwards to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
FAULTS = ("503", "dropped", "stall")


@dataclass
class Rule:
    """Fail requests with ``method`` whose (unquoted) path contains ``path``.

    ``fault``: "503" (SlowDown), "dropped" (connection closed, no response) or "stall" (hold the
    request until :meth:`FaultProxy.release` or ``stall_s`` seconds, then drop it; the server
    never sees it).  ``times``: fail only the first ``times`` matching requests (None: all).
    """

    method: str
    path: str
    fault: str = "503"
    times: int | None = None
    stall_s: float = 60.0
    hits: int = 0  # matching requests failed so far

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"fault {self.fault!r} is not one of {FAULTS}")

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self.path in path


@dataclass(frozen=True)
class Request:
    """One request as the proxy saw it; ``status`` is "dropped" or "stalled" without a response."""

    method: str
    path: str  # unquoted, without the query string: /bucket/key
    status: int | str
    if_none_match: str | None
    etag: str | None  # the response's ETag (a PUT's: md5 of the bytes written)
    injected: bool  # the proxy answered (a fault), not the server


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        fail_rate: float = 0.2,
        seed: int = 0,
        rules: list[Rule] | tuple[Rule, ...] = (),
    ):
        self.upstream_port, self.fail_rate = upstream_port, fail_rate
        self.rules = list(rules)
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "503": 0, "dropped": 0}  # random faults only
        self.log: list[Request] = []
        self.stalled = threading.Event()  # set when a "stall" rule holds a request
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _record(self, status, *, etag=None, injected=True):
                path = unquote(urlsplit(self.path).path)
                inm = self.headers.get("If-None-Match")
                with proxy.lock:
                    proxy.log.append(Request(self.command, path, status, inm, etag, injected))

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault, rule = proxy._draw(self.command, unquote(urlsplit(self.path).path))
                if fault == "stall":
                    self._record("stalled")
                    proxy.stalled.set()
                    proxy._release.wait(rule.stall_s)
                    fault = "dropped"
                elif fault is not None:
                    self._record("dropped" if fault == "dropped" else 503)
                if fault == "dropped":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    self.close_connection = True
                    return
                self._forward(body)

            def _forward(self, body):
                up = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    # Keep the client's Host header: SigV4 signed it.
                    up.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_BY_HOP:
                            up.putheader(name, value)
                    up.endheaders(body)
                    resp = up.getresponse()
                    data = resp.read()
                finally:
                    up.close()
                self._record(resp.status, etag=resp.getheader("ETag"), injected=False)
                self.send_response(resp.status, resp.reason)
                for name, value in resp.getheaders():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _draw(self, method: str, path: str) -> tuple[str | None, Rule | None]:
        """The fault for this request and its rule: the first rule that still fires, else a
        random fault (rule None), else (None, None)."""
        with self.lock:
            self.counts["requests"] += 1
            for rule in self.rules:
                if rule.matches(method, path) and (rule.times is None or rule.hits < rule.times):
                    rule.hits += 1
                    return rule.fault, rule
            if self.rng.random() >= self.fail_rate:
                return None, None
            fault = self.rng.choice(["503", "dropped"])
            self.counts[fault] += 1
            return fault, None

    def requests(self, method: str | None = None, path: str = "") -> list[Request]:
        """Logged requests with ``method`` (any if None) whose path contains ``path``."""
        with self.lock:
            return [
                q for q in self.log if (method is None or q.method == method) and path in q.path
            ]

    def release(self) -> None:
        """Let stalled requests go (they are dropped, never forwarded)."""
        self._release.set()

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
