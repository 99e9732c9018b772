"""OpenAI-compatible chat engine: ``POST {endpoint}/chat/completions`` on any server speaking the protocol (vLLM's
``vllm serve``, TGI, SGLang, llama.cpp server, Ollama, OpenAI itself).

Standard library only (``http.client`` + a thread pool): one persistent keep-alive connection per worker thread,
at most `concurrency` requests in flight per engine (per actor). Request body::

    {"model": M, "messages": [...], "max_tokens": N, "temperature": 0, "n": 1}

Failure handling, per request:

* connection errors, timeouts (`timeout_s` applies to the connect and to every socket read), HTTP 408, 429 and
  5xx → retried up to `max_retries` times with exponential backoff and jitter (a ``Retry-After`` header in seconds is
  honoured, capped at `backoff_max_s`); still failing → `EngineUnavailable` (the shard fails, resumable);
* HTTP 401 / 403 / 404 (bad key, no permission, wrong model or route) → `EngineUnavailable` at once: every request
  would fail the same way;
* any other 4xx (400 prompt too long, 422 …) or a malformed 200 body → ``None`` for this request only (the row
  falls back with ``engine_error``); the op turns a batch where most requests fail this way into `EngineUnavailable`;
* ``finish_reason == "length"`` → `Truncated`.

The API key is read once from the environment variable named by `api_key_env` and sent as
``Authorization: Bearer …``; it is never logged, put in an exception message or returned by `describe()`.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import ssl
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable
from urllib.parse import urlsplit

from djray.ops.text.engines import EngineUnavailable, Truncated

log = logging.getLogger(__name__)

ROUTE = "/chat/completions"
RETRY_STATUS = frozenset({408, 429})
FATAL_STATUS = frozenset({401, 403, 404})


class OpenAIChatEngine:
    name = "openai"

    def __init__(self, endpoint: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 max_new_tokens: int = 96, concurrency: int = 16, timeout_s: float = 60.0, max_retries: int = 4,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep):
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"text.endpoint {endpoint!r} is not an http(s) URL")
        self.model, self.max_new_tokens = model, max_new_tokens
        self.concurrency, self.timeout_s, self.max_retries = concurrency, timeout_s, max_retries
        self.backoff_base_s, self.backoff_max_s, self._sleep = backoff_base_s, backoff_max_s, sleep
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = parts.path.rstrip("/") + ROUTE
        self._url = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{self._path}"
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "djray"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._local = threading.local()
        self._conns: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="djray-openai")
        self.stats = {"requests": 0, "retries": 0, "row_errors": 0}

    # ---- interface --------------------------------------------------------------------------------------------
    def generate(self, conversations: list[list[dict[str, str]]]) -> list[str | None]:
        self._abort.clear()
        futures = [self._pool.submit(self._one, conv) for conv in conversations]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        if pending or any(f.exception() is not None for f in futures):
            self._abort.set()  # the other requests stop retrying
            for f in pending:
                f.cancel()
            wait(pending)
            errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
            raise next((e for e in errors if not isinstance(e, _Aborted)), errors[0])  # the cause, not an echo
        return [f.result() for f in futures]

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "url": self._url, "model": self.model, "route": ROUTE,
                "concurrency": self.concurrency, "timeout_s": self.timeout_s, "max_retries": self.max_retries,
                "api_key_env": self.api_key_env, "api_key_set": "Authorization" in self._headers}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatEngine(url={self._url!r}, model={self.model!r})"

    # ---- one request ------------------------------------------------------------------------------------------
    def _body(self, conversation: list[dict[str, str]]) -> bytes:
        return json.dumps({"model": self.model, "messages": conversation, "max_tokens": self.max_new_tokens,
                           "temperature": 0, "n": 1}, ensure_ascii=False).encode("utf-8")

    def _one(self, conversation: list[dict[str, str]]) -> str | None:
        body = self._body(conversation)
        last, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if self._abort.is_set():
                raise _Aborted(f"{self._url}: stopped after another request failed")
            if attempt:
                self._count("retries")
                self._sleep(self._delay(attempt, retry_after))
            self._count("requests")
            try:
                status, headers, data = self._post(body)
            except (OSError, http.client.HTTPException) as e:  # refused, reset, timeout (TimeoutError is OSError)
                self._drop_connection()
                last, retry_after = f"{type(e).__name__}: {e}", None
                continue
            if status == 200:
                return self._parse(data)
            snippet = data[:200].decode("utf-8", "replace").replace("\n", " ")
            if status in RETRY_STATUS or 500 <= status <= 599:
                last, retry_after = f"HTTP {status} {snippet}", _retry_after(headers.get("retry-after"))
                continue
            if status in FATAL_STATUS:
                raise EngineUnavailable(f"{self._url} answered HTTP {status}: {snippet} (check text.endpoint, "
                                        f"text.model and the key in ${self.api_key_env})")
            log.warning("text engine: %s answered HTTP %s for one request: %s", self._url, status, snippet)
            self._count("row_errors")
            return None
        raise EngineUnavailable(f"{self._url}: {last} (gave up after {self.max_retries + 1} attempts)")

    def _parse(self, data: bytes) -> str | None:
        try:
            choice = json.loads(data)["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            log.warning("text engine: %s returned a malformed chat completion: %.200r", self._url, data)
            self._count("row_errors")
            return None
        if not isinstance(text, str):
            self._count("row_errors")
            return None
        return Truncated(text) if finish == "length" else text

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        d = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        d = d / 2 + random.uniform(0, d / 2)  # jitter: spread out clients that failed together
        return min(self.backoff_max_s, max(d, retry_after or 0.0))

    def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._https:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout_s,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        conn.request("POST", self._path, body=body, headers=self._headers)
        resp = conn.getresponse()
        data = resp.read()
        headers = {k.lower(): v for k, v in resp.getheaders()}
        if resp.will_close:
            self._drop_connection()
        return resp.status, headers, data

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1


class _Aborted(EngineUnavailable):
    """Raised by requests that stop because another request of the same batch failed."""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: use the backoff
