"""A fault-injecting S3 endpoint for tests and benchmarks: a loopback HTTP proxy in front of a real S3-protocol server.

Every request is forwarded to the upstream server (moto) unchanged, except the ones a fault picks. Faults are
deterministic, by request number (1, 2, 3, ... in arrival order), so a run with the same plan injects the same number
of faults of each kind:

- `slowdown_every=k`: every k-th request is answered `503 SlowDown` (what S3 answers under load);
- `drop_every=k`: every k-th request's connection is closed before any response (a reset);
- `cut_every=k`: every k-th GET whose body is at least `cut_min_bytes` sends its headers and half its body, then the
  connection closes (a drop in the middle of a response body);
- `rules`: targeted faults, e.g. cut the first GET of one object, or fail the next N requests to it;
- `latency_s`: a first-byte delay added to every request (what a remote store costs per request).

It counts requests per (method, object key) and keeps a log of what it answered, so tests can assert request counts
(GETs per shard, multipart parts) at the server side. Used by the `s3_faults` fixture in tests/conftest.py.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message><RequestId>djray-test</RequestId></Error>")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect", "content-length"}


@dataclass
class Rule:
    """A targeted fault: the `nth` (1-based) and the following `count - 1` matching requests get `kind`.

    kind: "slowdown" | "drop" | "cut" (cut needs a GET with a body; it sends `cut_at` bytes, default half).
    """

    kind: str
    method: str = "GET"
    key: str = ""  # substring of the object key ("bucket/key"); empty matches every object
    nth: int = 1
    count: int = 1
    cut_at: int | None = None
    seen: int = 0

    def take(self, method: str, key: str) -> bool:
        if method != self.method or self.key not in key:
            return False
        self.seen += 1
        return self.nth <= self.seen < self.nth + self.count


@dataclass
class Record:
    n: int
    method: str
    key: str
    query: str
    range: str | None
    status: int
    fault: str | None
    body_bytes: int  # bytes of the request body (uploads)


@dataclass
class FaultPlan:
    slowdown_every: int = 0
    drop_every: int = 0
    cut_every: int = 0
    cut_min_bytes: int = 4096
    latency_s: float = 0.0
    rules: list[Rule] = field(default_factory=list)


class FaultyS3:
    """The proxy. `url` is the endpoint to give clients; `plan` may be replaced between runs (`reset`)."""

    def __init__(self, upstream: str, plan: FaultPlan | None = None):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.plan = plan or FaultPlan()
        self.lock = threading.Lock()
        self.log: list[Record] = []
        self._n = 0
        self._cuts = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def reset(self, plan: FaultPlan | None = None) -> None:
        with self.lock:
            self.plan = plan or FaultPlan()
            self.log = []
            self._n = 0
            self._cuts = 0

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- what was asked ----------------------------------------------------------------------------------------

    def requests(self, method: str | None = None, key: str | None = None, *, ok: bool | None = None) -> list[Record]:
        """Records matching a method and an exact object key; ok=True: answered 2xx without a fault."""
        with self.lock:
            out = [r for r in self.log if (method is None or r.method == method) and (key is None or r.key == key)]
        if ok is not None:
            out = [r for r in out if (r.fault is None and 200 <= r.status < 300) == ok]
        return out

    def counts(self) -> Counter:
        with self.lock:
            return Counter((r.method, r.key) for r in self.log)

    def faults(self) -> Counter:
        with self.lock:
            return Counter(r.fault for r in self.log if r.fault)

    # ---- choosing a fault ----------------------------------------------------------------------------------------

    def _next(self, method: str, key: str) -> tuple[int, str | None, int | None]:
        with self.lock:
            self._n += 1
            n, plan = self._n, self.plan
            for rule in plan.rules:
                if rule.take(method, key):
                    return n, rule.kind, rule.cut_at
            if plan.drop_every and n % plan.drop_every == 0:
                return n, "drop", None
            if plan.slowdown_every and n % plan.slowdown_every == 0:
                return n, "slowdown", None
            return n, None, None

    def _maybe_cut(self, method: str, size: int) -> bool:
        with self.lock:
            if method != "GET" or not self.plan.cut_every or size < self.plan.cut_min_bytes:
                return False
            self._cuts += 1
            return self._cuts % self.plan.cut_every == 0

    def _record(self, rec: Record) -> None:
        with self.lock:
            self.log.append(rec)


def _object_key(path: str) -> str:
    """'/bucket/a/b.tar' → 'bucket/a/b.tar' (path-style addressing, as clients with an endpoint override use)."""
    return unquote(path.lstrip("/"))


def _handler(proxy: FaultyS3) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` is answered for uploads

        def log_message(self, *args) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(length) if length else b""

        def _forward(self) -> None:
            url = urlsplit(self.path)
            key = _object_key(url.path)
            body = self._body()
            n, fault, cut_at = proxy._next(self.command, key)
            rng = self.headers.get("Range")
            if proxy.plan.latency_s:
                time.sleep(proxy.plan.latency_s)
            if fault == "drop":
                proxy._record(Record(n, self.command, key, url.query, rng, 0, "drop", len(body)))
                self._drop()
                return
            if fault == "slowdown":
                proxy._record(Record(n, self.command, key, url.query, rng, 503, "slowdown", len(body)))
                self.send_response(503, "Slow Down")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(SLOWDOWN_BODY)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(SLOWDOWN_BODY)
                return
            status, reason, headers, data = self._upstream(url, body)
            cut = fault == "cut" or (fault is None and proxy._maybe_cut(self.command, len(data)))
            cut = cut and self.command == "GET" and len(data) > 1
            proxy._record(Record(n, self.command, key, url.query, rng, status, "cut" if cut else None, len(body)))
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
            self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
            self.end_headers()
            if self.command == "HEAD":  # the upstream's length of the object, no body
                return
            if cut:
                self.wfile.write(data[: cut_at if cut_at is not None else len(data) // 2])
                self.wfile.flush()
                self._drop()
                return
            self.wfile.write(data)

        def _upstream(self, url, body: bytes):
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                target = url.path + (f"?{url.query}" if url.query else "")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, target, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.reason, resp.getheaders(), data
            finally:
                conn.close()

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    return Handler


def parts_of(records: list[Record]) -> list[int]:
    """Body sizes of the successful UploadPart requests among `records`."""
    return [r.body_bytes for r in records
            if r.method == "PUT" and "partNumber" in parse_qs(r.query) and r.fault is None and r.status == 200]


class FaultyBucket:
    """A bucket on the upstream server, seen through the proxy (what the `s3_faults` fixture yields)."""

    def __init__(self, proxy: FaultyS3, upstream: str, bucket: str):
        import boto3

        self.proxy, self.upstream, self.bucket = proxy, upstream, bucket
        self.url = proxy.url
        self.client = boto3.client("s3", endpoint_url=upstream, region_name="us-east-1")  # direct: not counted

    def upload(self, local_dir, prefix: str) -> dict[str, int]:
        """Upload every file under `local_dir` to `prefix/`; returns {object key "bucket/prefix/name": size}."""
        from pathlib import Path

        sizes = {}
        for f in sorted(p for p in Path(local_dir).rglob("*") if p.is_file()):
            key = f"{prefix}/{f.relative_to(local_dir).as_posix()}"
            self.client.upload_file(str(f), self.bucket, key)
            sizes[f"{self.bucket}/{key}"] = f.stat().st_size
        return sizes

    def fs(self, retries: int = 10):
        """A pyarrow S3 filesystem through the proxy, built the way djray builds its own."""
        from djray.models.weights import s3_filesystem

        return s3_filesystem(self.url, "us-east-1", retries=retries)
