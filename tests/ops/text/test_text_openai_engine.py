"""The OpenAI-compatible engine through the op, against a scripted OpenAI-protocol server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest

from djray import schema as S
from djray.ops.text.engines import EngineUnavailable
from djray.ops.text.params import TextParams
from djray.ops.text.rewrite import TEXT_FALLBACK_REASON, TextRewriteOp
from djray.ops.text.validate import Fallback

KEY = "sk-test-secret-5f2b9c"
TIMEOUT = 1.0


class Script:
    def __init__(self):
        self.lock = threading.Lock()
        self.attempts: Counter = Counter()
        self.in_flight = self.max_in_flight = 0
        self.auth: list[str | None] = []
        self.paths: list[str] = []
        self.bodies: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers

    def log_message(self, *args):
        pass

    def reply(self, status, payload=None, headers=()):
        data = json.dumps(payload if payload is not None else {"error": {"message": f"scripted {status}"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def completion(self, text, finish="stop"):
        self.reply(200, {"id": "x", "object": "chat.completion", "model": "tiny-test",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": finish}]})

    def do_POST(self):  # noqa: N802
        s: Script = self.server.script
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
            s.auth.append(self.headers.get("Authorization"))
            s.paths.append(self.path)
            s.bodies.append(body)
        try:
            user = body["messages"][-1]["content"]
            caption = user.split("<caption>", 1)[1].rsplit("</caption>", 1)[0]
            marker = re.search(r"mk_[a-z0-9]+", caption).group(0)
            with s.lock:
                s.attempts[marker] += 1
                n = s.attempts[marker]
            good = caption.replace("teh", "the").replace("dgo", "dog").capitalize() + "."
            kind = marker.rstrip("0123456789")
            if kind == "mk_good" or kind == "mk_hold":
                if kind == "mk_hold":
                    time.sleep(0.05)
                self.completion(good)
            elif kind == "mk_empty":
                self.completion("")
            elif kind == "mk_echo":
                self.completion(user)
            elif kind == "mk_inject":
                self.completion("HACKED")
            elif kind == "mk_refuse":
                self.completion("I'm sorry, but I can't help with that request.")
            elif kind == "mk_length":
                self.completion("A dog on the", finish="length")
            elif kind == "mk_slow":
                if n == 1:
                    time.sleep(TIMEOUT * 2.5)
                self.completion(good)
            elif kind == "mk_fivehundredtwice":
                self.reply(500) if n <= 2 else self.completion(good)
            elif kind == "mk_ratelimit":
                self.reply(429, headers=[("Retry-After", "0")]) if n == 1 else self.completion(good)
            elif kind == "mk_badrequest":
                self.reply(400)
            elif kind == "mk_down":
                self.reply(503)
            elif kind == "mk_unauth":
                self.reply(401)
            else:
                self.reply(500)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and closed the connection
        finally:
            with s.lock:
                s.in_flight -= 1


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.script = Script()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", httpd.script
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("DJRAY_TEST_LLM_KEY", KEY)
    return "DJRAY_TEST_LLM_KEY"


def make_op(endpoint, api_key_env="DJRAY_TEST_LLM_KEY", **kw):
    p = TextParams(**{"mode": "rewrite", "engine": "openai", "model": "tiny-test", "endpoint": endpoint,
                      "api_key_env": api_key_env, "timeout_s": TIMEOUT, "max_retries": 3, "concurrency": 4,
                      "max_new_tokens": 64, **kw})
    op = TextRewriteOp(p, engine_options={"backoff_base_s": 0.01, "backoff_max_s": 0.05})
    op.setup()
    return op


def table(captions, evidence=None, rejected=()):
    n = len(captions)
    cols = {S.CAPTION_RAW: pa.array(captions, pa.string()),
            S.REJECT_REASON: pa.array([S.Reason.CORRUPT_IMAGE if i in rejected else None for i in range(n)],
                                      pa.string())}
    if evidence is not None:
        cols[S.VIS_EVIDENCE] = pa.array(evidence, pa.list_(pa.string()))
    return pa.table(cols)


EXPECT = {  # marker: (caption_source, fallback reason, requests the server sees)
    "mk_good": ("rewrite", None, 1),
    "mk_empty": ("fallback", Fallback.EMPTY_OUTPUT, 1),
    "mk_echo": ("fallback", Fallback.ECHOED_PROMPT, 1),
    "mk_inject": ("fallback", Fallback.UNRELATED, 1),
    "mk_refuse": ("fallback", Fallback.REFUSAL, 1),
    "mk_length": ("fallback", Fallback.TRUNCATED_OUTPUT, 1),
    "mk_slow": ("rewrite", None, 2),  # timed out once, then answered
    "mk_fivehundredtwice": ("rewrite", None, 3),
    "mk_ratelimit": ("rewrite", None, 2),
    "mk_badrequest": ("fallback", Fallback.ENGINE_ERROR, 1),  # a 4xx other than 429 is not retried
}


def test_scripted_server_validation_retries_and_accounting(server, api_key, caplog):
    endpoint, script = server
    captions = [f"a dgo on teh beach {m}" for m in EXPECT] + ["rejected mk_good", ""]
    evidence = [["golden retriever"]] * len(EXPECT) + [["x"], ["dog"]]
    n = len(captions)
    op = make_op(endpoint)
    with caplog.at_level(logging.DEBUG):
        out = op(table(captions, evidence, rejected={n - 2}))
    cap, src, why = (out[k].to_pylist() for k in (S.CAPTION, S.CAPTION_SOURCE, TEXT_FALLBACK_REASON))
    for i, (marker, (source, reason, requests)) in enumerate(EXPECT.items()):
        assert (src[i], why[i]) == (source, reason), marker
        assert script.attempts[marker] == requests, marker
        if source == "rewrite":
            assert cap[i] == f"A dog on the beach {marker}."
        else:
            assert cap[i] == captions[i]  # normalised caption (already normal), never empty
    assert (cap[n - 2], src[n - 2], why[n - 2]) == (None, None, None)  # rejected row untouched, never sent
    assert (cap[n - 1], src[n - 1], why[n - 1]) == ("", "original", Fallback.EMPTY_INPUT)  # never sent
    assert "rejected" not in json.dumps(script.bodies)
    total = sum(r for _, _, r in EXPECT.values())
    assert len(script.auth) == total and op.engine.stats["requests"] == total
    assert op.engine.stats["retries"] == total - len(EXPECT)
    assert set(script.auth) == {f"Bearer {KEY}"}
    assert set(script.paths) == {"/v1/chat/completions"}
    body = script.bodies[0]
    assert (body["model"], body["temperature"], body["max_tokens"], body["n"]) == ("tiny-test", 0, 64, 1)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    d = op.describe()
    assert d["engine_info"]["api_key_set"] is True and d["engine_info"]["api_key_env"] == "DJRAY_TEST_LLM_KEY"
    assert KEY not in json.dumps(d) and KEY not in repr(op.engine) and KEY not in caplog.text
    op.close()


def test_server_failing_after_retries_raises_engine_unavailable(server, api_key):
    endpoint, script = server
    op = make_op(endpoint)
    with pytest.raises(EngineUnavailable, match="503") as e:
        op(table(["a cat mk_down", "a dog mk_good"], [["cat"], ["dog"]]))
    assert KEY not in str(e.value)
    assert script.attempts["mk_down"] == 1 + 3  # first try + max_retries
    op.close()


def test_auth_error_is_not_retried(server, api_key):
    endpoint, script = server
    op = make_op(endpoint)
    with pytest.raises(EngineUnavailable, match="HTTP 401"):
        op(table(["a cat mk_unauth"]))
    assert script.attempts["mk_unauth"] == 1
    op.close()


def test_concurrency_bound_is_respected(server, api_key):
    endpoint, script = server
    op = make_op(endpoint, concurrency=3)
    captions = [f"cat number {i} mk_hold{i}" for i in range(24)]
    cap, src = (op(table(captions))[k].to_pylist() for k in (S.CAPTION, S.CAPTION_SOURCE))
    assert src == ["rewrite"] * 24
    assert 2 <= script.max_in_flight <= 3
    assert len(script.auth) == 24
    op.close()


def test_no_key_in_environment_sends_no_authorization(server, monkeypatch):
    endpoint, script = server
    monkeypatch.delenv("DJRAY_TEST_LLM_KEY", raising=False)
    op = make_op(endpoint)
    assert op(table(["teh cat mk_good"]))[S.CAPTION_SOURCE].to_pylist() == ["rewrite"]
    assert script.auth == [None] and op.describe()["engine_info"]["api_key_set"] is False
    op.close()


def test_unreachable_server_raises_after_retries(api_key):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: connections are refused
    op = make_op(f"http://127.0.0.1:{port}/v1", max_retries=2)
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable, match="gave up after 3 attempts"):
        op(table(["a cat"]))
    assert time.monotonic() - t0 < 5
    assert op.engine.stats["requests"] == 3
    op.close()
