"""A seeded, fault-injecting HTTP proxy for putting in front of the moto S3 server.

The pipeline talks to it exactly as to a real endpoint (``endpoint_url``); each request the
client sends is either forwarded to the upstream server unchanged, or answered with a fault
drawn from a seeded random generator:

- ``reset``: the connection is reset (RST) before the request reaches the server;
- ``reset_after``: the server applies the request, then the connection is reset before the
  answer arrives (the write happened, the client does not know);
- ``500`` / ``503``: an S3 ``InternalError`` / ``SlowDown`` answer, the server never sees it;
- ``truncate``: the server's answer is sent with its full ``Content-Length`` but only half of
  its body, then the connection is closed (a GET of an object, a LIST page);
- ``delay``: the request is held ``fault_delay_s`` seconds, then forwarded.

``delays`` holds requests of a method class (``LIST``, ``HEAD``, ``GET``, ``PUT``, ``POST``,
``DELETE``) for a fixed time on every request, e.g. ``delays={"DELETE": 1.0}`` makes every
DELETE slow; ``paths`` limits faults and delays to requests whose path contains one of the
given substrings. ``down = True`` resets every connection as soon as it is accepted (a store
that is down). Counters of what was seen and injected are kept in ``requests`` and
``injected``; ``sent`` lists every request (method and target, query included), ``agents``
its client (User-Agent: botocore for s3fs, aws-sdk-cpp for pyarrow's native reader).

The sequence of decisions is fixed by the seed; which request gets which decision also depends
on the order in which concurrent clients' requests arrive.

    with FaultProxy(s3_server.endpoint_url, seed=1, fault_rate=0.1) as proxy:
        options = {**s3_server.storage_options, "endpoint_url": proxy.endpoint_url}
        ...
        assert proxy.injected.total() > 0
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from typing import Mapping
from urllib.parse import urlsplit

FAULT_KINDS = ("reset", "reset_after", "500", "503", "truncate", "delay")
# What the tests use by default: every kind except ``reset_after``, which makes a create-only
# (If-None-Match) write look as if someone else created the object: real, but a different test.
DEFAULT_KINDS = ("reset", "500", "503", "truncate", "delay")
METHOD_CLASSES = ("LIST", "HEAD", "GET", "PUT", "POST", "DELETE")

_ERROR_ANSWERS = {
    "500": (500, "Internal Server Error", "InternalError",
            "We encountered an internal error. Please try again."),
    "503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


def method_class(method: str, target: str) -> str:
    """LIST for a bucket-level GET (ListObjects, ListObjectsV2, ListMultipartUploads),
    otherwise the HTTP method."""
    if method != "GET":
        return method
    path, _, query = target.partition("?")
    key = path.lstrip("/").partition("/")[2]
    return "LIST" if not key or "list-type=" in query else "GET"


class FaultProxy:
    """A threaded HTTP/1.1 proxy on 127.0.0.1 that injects seeded faults (see module doc)."""

    def __init__(self, upstream_host: str, upstream_port: int | None = None, *, seed: int = 0,
                 fault_rate: float = 0.0, kinds: tuple[str, ...] = DEFAULT_KINDS,
                 delays: Mapping[str, float] | None = None, fault_delay_s: float = 0.5,
                 methods: tuple[str, ...] = METHOD_CLASSES,
                 paths: tuple[str, ...] = ()) -> None:
        if "://" in upstream_host:
            parts = urlsplit(upstream_host)
            upstream_host, upstream_port = parts.hostname or "127.0.0.1", parts.port
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or upstream_port is None:
            raise ValueError(f"unknown fault kinds {sorted(unknown)} or no upstream port")
        self.upstream = (upstream_host, int(upstream_port))
        self.fault_rate = fault_rate
        self.kinds = tuple(kinds)
        self.delays = {k.upper(): float(v) for k, v in (delays or {}).items()}
        self.fault_delay_s = fault_delay_s
        self.methods = tuple(m.upper() for m in methods)
        self.paths = tuple(paths)
        self.down = False
        self.requests: Counter[str] = Counter()  # method class -> requests seen
        self.injected: Counter[str] = Counter()  # fault kind -> times injected
        self.log: list[tuple[str, str, str]] = []  # (method class, target, fault or "ok")
        self.sent: list[tuple[str, str]] = []  # (HTTP method, target with its query), in order
        self.agents: list[str] = []  # each request's User-Agent, in the order of ``sent``
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint_url(self) -> str:
        if self._listener is None:
            raise RuntimeError("proxy not started")
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> "FaultProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self._listener = listener
        self._spawn(self._accept_loop)
        return self

    def close(self) -> None:
        self._closing = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            try:  # wakes the thread blocked reading it (a close alone does not, on Linux)
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            _close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def summary(self) -> str:
        """One line of counters, for a test's failure message or a report."""
        return (f"requests {dict(sorted(self.requests.items()))}, "
                f"injected {dict(sorted(self.injected.items()))}")

    # ------------------------------------------------------------------ internals
    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.down:
                with self._lock:
                    self.injected["down"] += 1
                _reset(client)
                continue
            with self._lock:
                self._open.add(client)
            self._spawn(self._serve, client)

    def _decide(self, kind: str, target: str) -> str | None:
        """The fault for this request (or None), counting the request."""
        with self._lock:
            self.requests[kind] += 1
            draw = self._rng.random()
            pick = self._rng.choice(self.kinds) if self.kinds else None
        if kind not in self.methods or (self.paths and not any(p in target for p in self.paths)):
            return None
        if draw >= self.fault_rate or pick is None:
            return None
        if pick == "truncate" and kind == "HEAD":
            pick = "reset"  # an answer without a body cannot be cut short
        return pick

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        reader = client.makefile("rb")
        try:
            while not self._closing:
                request = _read_request(reader, client)
                if request is None:
                    return
                if self.down:  # a keep-alive connection opened before the store went down
                    with self._lock:
                        self.injected["down"] += 1
                    _reset(client)
                    return
                method, target, head, body, keep_alive = request
                with self._lock:
                    self.sent.append((method, target))
                    self.agents.append(_user_agent(head))
                kind = method_class(method, target)
                fault = self._decide(kind, target)
                self._record(kind, target, fault)
                delay = self.delays.get(kind, 0.0)
                if delay and (not self.paths or any(p in target for p in self.paths)):
                    time.sleep(delay)
                if fault == "delay":
                    time.sleep(self.fault_delay_s)
                if fault == "reset":
                    _reset(client)
                    return
                if fault in _ERROR_ANSWERS:
                    client.sendall(_error_answer(fault, target, with_body=method != "HEAD"))
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=60)
                upstream.sendall(head + body)
                answer = http.client.HTTPResponse(upstream, method=method)
                answer.begin()
                payload = answer.read()
                if answer.will_close:
                    _close(upstream)
                    upstream = None
                if fault == "reset_after":
                    _reset(client)
                    return
                out_head = _answer_head(answer, payload, method)
                if fault == "truncate":
                    if not payload:
                        _reset(client)
                        return
                    client.sendall(out_head + payload[: len(payload) // 2])
                    _close(client)
                    return
                client.sendall(out_head + payload)
                if not keep_alive:
                    return
        except (OSError, http.client.HTTPException):
            return
        finally:
            reader.close()
            if upstream is not None:
                _close(upstream)
            with self._lock:
                self._open.discard(client)
            _close(client)

    def _record(self, kind: str, target: str, fault: str | None) -> None:
        with self._lock:
            if fault:
                self.injected[fault] += 1
            self.log.append((kind, target.partition("?")[0], fault or "ok"))


def _user_agent(head: bytes) -> str:
    for line in head.decode("latin-1").splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "user-agent":
            return value.strip()
    return ""


def _read_request(reader, client: socket.socket):
    """(method, target, raw head, raw body, keep-alive) of the next request; None at EOF."""
    line = reader.readline(65537)
    if not line:
        return None
    lines = [line]
    headers: dict[str, str] = {}
    while True:
        header = reader.readline(65537)
        if not header:
            return None
        lines.append(header)
        if header in (b"\r\n", b"\n"):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    method, target, version = line.decode("latin-1").split(" ", 2)
    if headers.get("expect", "").lower() == "100-continue":
        client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _read_chunked(reader)
    else:
        body = reader.read(int(headers.get("content-length", "0") or 0))
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" and not (version.strip() == "HTTP/1.0"
                                                and connection != "keep-alive")
    return method.upper(), target, b"".join(lines), body, keep_alive


def _read_chunked(reader) -> bytes:
    """The raw bytes of a chunked body (forwarded as sent)."""
    raw = []
    while True:
        size_line = reader.readline(65537)
        raw.append(size_line)
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while True:  # trailers up to the blank line
                trailer = reader.readline(65537)
                raw.append(trailer)
                if trailer in (b"\r\n", b"\n", b""):
                    return b"".join(raw)
        raw.append(reader.read(size + 2))


def _answer_head(answer: http.client.HTTPResponse, payload: bytes, method: str) -> bytes:
    """Status line and headers for ``payload``, re-framed with a Content-Length."""
    lines = [f"HTTP/1.1 {answer.status} {answer.reason}\r\n"]
    bodiless = method == "HEAD" or answer.status in (204, 304)
    for name, value in answer.getheaders():
        lowered = name.lower()
        if lowered in ("transfer-encoding", "connection") or \
                (lowered == "content-length" and not bodiless):
            continue
        lines.append(f"{name}: {value}\r\n")
    if not bodiless:
        lines.append(f"Content-Length: {len(payload)}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


def _error_answer(fault: str, target: str, with_body: bool = True) -> bytes:
    """An S3 error answer (a HEAD's answer has headers only, as S3 sends it)."""
    status, reason, code, message = _ERROR_ANSWERS[fault]
    resource = target.partition("?")[0]
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><Resource>{resource}</Resource>"
            "<RequestId>fault-proxy</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body if with_body else head


def _reset(sock: socket.socket) -> None:
    """Close with an RST rather than a FIN: the peer sees 'connection reset by peer'."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
