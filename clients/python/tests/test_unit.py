"""The client's own logic, without a stack: times, params, result
decoding, and its retries against a stand-in HTTP server."""

import datetime as dt
import http.server
import json
import threading
import time
import traceback

import pytest

import pyrunner
from pyrunner import Client, PyrunnerError, ResearchResult, to_epoch, with_params


@pytest.mark.parametrize("t", [1735689600, 1735689600.0, "1735689600", "2025-01-01", "2025-01-01 00:00:00",
                               "2025-01-01T00:00:00Z", "2025-01-01T08:00:00+08:00", dt.date(2025, 1, 1),
                               dt.datetime(2025, 1, 1), dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)])
def test_times(t):
    assert to_epoch(t) == 1735689600


def test_bad_time_says_what_to_give():
    with pytest.raises(ValueError, match="unix seconds"):
        to_epoch("yesterday")


@pytest.mark.parametrize("code", ["x = 1\ny = x / 0\n", "import os\n\ny = 1 / 0", "for i in range(1):\n    1 / 0\n",
                                  "# a comment\n1 / 0\n", "@staticmethod\ndef f(): pass\n1/0\n", "   \n1/0"])
def test_params_keep_the_code_s_line_numbers(code):
    """A ZeroDivisionError on line N of the code is on line N of the run."""
    src = with_params(code, {"n": 3, "s": 'q"uote\n'})
    g = {}
    with pytest.raises(ZeroDivisionError) as e:
        exec(compile(src, "<user_code>", "exec"), g)
    assert g["params"] == {"n": 3, "s": 'q"uote\n'}
    line = traceback.extract_tb(e.value.__traceback__)[-1].lineno
    lines = code.split("\n")
    want = lines.index(next(x for x in lines if "/" in x)) + 1
    shift = 0 if code[0] not in " #@f" else 1  # a first line params cannot share
    assert line == want + shift


def test_result_decoding():
    body = {"id": "r1", "status": "succeeded", "ok": True, "error": None, "result": {"rows": 3}, "stdout": "hi\n",
            "stderr": "", "stdoutTruncated": False, "stderrTruncated": True, "meta": {"worker": "w:1"},
            "images": [{"name": "figure-1.png", "mimeType": "image/png", "data": "iVBORw0KGgo="}]}
    r = ResearchResult.from_json(body)
    assert r.finished and r.ok and r.result == {"rows": 3} and r.stderr_truncated and r.meta["worker"] == "w:1"
    assert r.images[0]._repr_png_() == b"\x89PNG\r\n\x1a\n" and r.raise_for_error() is r
    pending = ResearchResult.from_json({"id": "r2", "status": "running", "poll": "/v1/research/runs/r2"})
    assert not pending.finished
    with pytest.raises(pyrunner.ResearchFailed):
        pending.raise_for_error()


class _Stub(http.server.BaseHTTPRequestHandler):
    """429 with Retry-After: 1, then 503, then the answer."""
    calls = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        _Stub.calls.append((time.monotonic(), self.headers.get("Authorization")))
        n = len(_Stub.calls)
        status, body, extra = {1: (429, {"detail": "the research queue is full"}, {"Retry-After": "1"}),
                               2: (503, {"detail": "redis is unavailable"}, {})}.get(
            n, (200, {"id": "x", "status": "succeeded", "ok": True, "result": 1}, {}))
        b = json.dumps(body).encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(b)), **extra}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(b)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    _Stub.calls = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_retries_honour_retry_after(stub):
    r = Client(stub, token="t0k", backoff=0.05).research("result = 1", symbol="X", start=0, end=1)
    assert r.ok and len(_Stub.calls) == 3
    assert _Stub.calls[1][0] - _Stub.calls[0][0] >= 0.9  # Retry-After: 1
    assert all(auth == "Bearer t0k" for _, auth in _Stub.calls)


def test_no_retries_left_is_the_error(stub):
    with pytest.raises(PyrunnerError) as e:
        Client(stub, retries=0).research("result = 1", symbol="X", start=0, end=1)
    assert e.value.status == 429 and e.value.detail == "the research queue is full" and e.value.retry_after == 1


def test_url_and_token_from_the_environment(monkeypatch):
    monkeypatch.setenv("PYRUNNER_URL", "http://example.invalid:1/")
    monkeypatch.setenv("PYRUNNER_TOKEN", "abc")
    c = Client()
    assert c.url == "http://example.invalid:1" and c.token == "abc"
