"""A small threaded TCP proxy on 127.0.0.1 that tests use to watch and break HTTP traffic to S3.

    with FaultProxy("http://127.0.0.1:9000") as proxy:
        storage = S3Storage(bucket, endpoint_url=proxy.endpoint_url, ...)
        proxy.drop_after(100_000, times=3)     # the next 3 GETs: close after 100 kB of response
        proxy.stall(2.0, after=50_000)         # the next GET: stop forwarding for 2 s, then close
        ...
        [r.range for r in proxy.requests]      # what the server was asked for

It forwards bytes unchanged, parses the plain-HTTP requests from the client->server bytes (request line,
headers, Content-Length or chunked bodies, keep-alive) and records each one with the number of response
bytes (and of body bytes, after the response headers) it forwarded back. A fault belongs to one request:
it counts the bytes of that request's response, headers included, forwards exactly `after` of them and
then closes the connection cleanly (FIN after the data, so the client gets every forwarded byte), or
stalls first. Threads are daemons, all sockets are closed on `close()`.
"""

from __future__ import annotations

import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlparse


@dataclass
class Fault:
    """Break one response: forward `after` bytes, then 'drop' (close) or 'stall' `seconds` then close."""

    kind: str
    after: int
    seconds: float = 0.0
    method: str | None = "GET"
    target: str | None = None  # only requests whose target contains this (e.g. ".tar": not the index sidecars)

    def matches(self, method: str, target: str) -> bool:
        return self.method in (None, method) and (self.target is None or self.target in target)


@dataclass
class RequestRecord:
    """One HTTP request seen by the proxy and what came back for it."""

    conn_id: int
    method: str
    target: str
    headers: dict[str, str]
    fault: Fault | None = None
    response_bytes: int = 0
    body_bytes: int = 0
    status: int | None = None
    _head: bytearray = field(default_factory=bytearray, repr=False)
    _head_done: bool = field(default=False, repr=False)

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def range_start(self) -> int | None:
        """The first byte of a 'bytes=a-[b]' Range header (None without one)."""
        r = self.range
        if not r or not r.startswith("bytes="):
            return None
        first = r[len("bytes="):].split("-", 1)[0]
        return int(first) if first else None

    def count_response(self, data: bytes) -> None:
        self.response_bytes += len(data)
        if self._head_done:
            self.body_bytes += len(data)
            return
        self._head += data
        while True:  # skip interim '100 Continue' heads
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(self._head[: self._head.find(b"\r\n")]).decode("latin-1")
            parts = status_line.split()
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            rest = self._head[end + 4:]
            if 100 <= status < 200:
                self._head = bytearray(rest)
                continue
            self.status = status
            self._head_done = True
            self.body_bytes += len(rest)
            self._head = bytearray()
            return


class _RequestParser:
    """Incremental parser of the client->server byte stream of one keep-alive connection."""

    def __init__(self, on_request) -> None:
        self._on_request = on_request
        self._buf = bytearray()
        self._state = "head"  # head | body | chunk-size | chunk-data | trailer
        self._left = 0

    def feed(self, data: bytes) -> None:
        self._buf += data
        while self._buf:
            if self._state == "body":
                take = min(self._left, len(self._buf))
                del self._buf[:take]
                self._left -= take
                if self._left == 0:
                    self._state = "head"
                continue
            if self._state == "chunk-data":
                take = min(self._left, len(self._buf))
                del self._buf[:take]
                self._left -= take
                if self._left == 0:
                    self._state = "chunk-size"
                continue
            if self._state == "chunk-size":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(self._buf[:end]).split(b";")[0].strip()
                del self._buf[: end + 2]
                if not line:  # the CRLF that ends the previous chunk's data
                    continue
                size = int(line, 16)
                if size == 0:
                    self._state = "trailer"
                else:
                    self._state, self._left = "chunk-data", size
                continue
            if self._state == "trailer":
                end = self._buf.find(b"\r\n")
                if end < 0:
                    return
                del self._buf[: end + 2]
                if end == 0:
                    self._state = "head"
                continue
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[: end + 4]
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self._on_request(parts[0], parts[1] if len(parts) > 1 else "", headers)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._state = "chunk-size"
            elif int(headers.get("content-length", "0") or 0) > 0:
                self._state, self._left = "body", int(headers["content-length"])


class _Connection:
    def __init__(self, proxy: FaultProxy, conn_id: int, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.conn_id = conn_id
        self.client = client
        self.upstream = upstream
        self.current: RequestRecord | None = None
        self.closed = threading.Event()
        self.parser = _RequestParser(self._on_request)

    def _on_request(self, method: str, target: str, headers: dict[str, str]) -> None:
        rec = RequestRecord(self.conn_id, method, target, headers)
        rec.fault = self.proxy._take_fault(method, target)
        self.proxy._record(rec)
        self.current = rec

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def pump_requests(self) -> None:
        try:
            while not self.closed.is_set():
                data = self.client.recv(65536)
                if not data:
                    break
                self.parser.feed(data)  # records the request (and picks its fault) before forwarding
                self.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def pump_responses(self) -> None:
        try:
            while not self.closed.is_set():
                data = self.upstream.recv(65536)
                if not data:
                    break
                rec = self.current
                fault = rec.fault if rec is not None else None
                if fault is not None and rec.response_bytes + len(data) >= fault.after:
                    head = data[: max(fault.after - rec.response_bytes, 0)]
                    if head:
                        self.client.sendall(head)
                        rec.count_response(head)
                    if fault.kind == "stall":
                        self.proxy._stop.wait(fault.seconds)
                    break
                self.client.sendall(data)
                if rec is not None:
                    rec.count_response(data)
        except OSError:
            pass
        finally:
            self.close()


class FaultProxy:
    """Forward 127.0.0.1:<port> to an HTTP endpoint, record requests, inject drops and stalls."""

    def __init__(self, upstream_url: str, host: str = "127.0.0.1") -> None:
        u = urlparse(upstream_url)
        if u.scheme != "http":
            raise ValueError(f"FaultProxy forwards plain HTTP only, not {upstream_url!r}")
        self._upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._faults: deque[Fault] = deque()
        self._forever: Fault | None = None
        self._records: list[RequestRecord] = []
        self._conns: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.host, self.port = self._listener.getsockname()[:2]
        self.endpoint_url = f"http://{self.host}:{self.port}"
        self._spawn(self._accept_loop, "faultproxy-accept")

    # -- control ----------------------------------------------------------------------------------

    def drop_after(self, nbytes: int, times: int | None = 1, method: str | None = "GET",
                   target: str | None = None) -> None:
        """Close the connection after `nbytes` of response to each of the next `times` matching requests
        (`times=None`: every matching request until `clear_faults`); `target`: only targets containing it."""
        self._add(Fault("drop", int(nbytes), 0.0, method, target), times)

    def stall(self, seconds: float, after: int = 0, times: int | None = 1, method: str | None = "GET",
              target: str | None = None) -> None:
        """After `after` bytes of response, forward nothing for `seconds`, then close the connection."""
        self._add(Fault("stall", int(after), float(seconds), method, target), times)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._forever = None

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()

    @property
    def requests(self) -> list[RequestRecord]:
        """The requests seen so far, in arrival order."""
        with self._lock:
            return list(self._records)

    def gets(self, key_contains: str = "") -> list[RequestRecord]:
        """The GET requests whose target contains `key_contains`."""
        return [r for r in self.requests if r.method == "GET" and key_contains in r.target]

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    # -- internals --------------------------------------------------------------------------------

    def _add(self, fault: Fault, times: int | None) -> None:
        with self._lock:
            if times is None:
                self._forever = fault
            else:
                self._faults.extend([fault] * int(times))

    def _take_fault(self, method: str, target: str = "") -> Fault | None:
        with self._lock:
            if self._faults and self._faults[0].matches(method, target):
                return self._faults.popleft()
            if self._forever is not None and self._forever.matches(method, target):
                return self._forever
            return None

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)

    def _spawn(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()]
            self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        conn_id = 0
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                upstream = socket.create_connection(self._upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            conn_id += 1
            conn = _Connection(self, conn_id, client, upstream)
            with self._lock:
                self._conns.append(conn)
            if self._stop.is_set():
                conn.close()
                break
            self._spawn(conn.pump_requests, f"faultproxy-c2s-{conn_id}")
            self._spawn(conn.pump_responses, f"faultproxy-s2c-{conn_id}")

    def close(self) -> None:
        """Stop accepting, close every socket and wait (briefly) for the threads."""
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for c in conns:
            c.close()
        for t in threads:
            t.join(timeout=2)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
