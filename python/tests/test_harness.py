"""Unit tests of the research harness's pure parts, and one whole job over
a real socketpair with a stand-in worker thread; the seccomp filter in a
forked child."""
import base64
import json
import math
import os
import socket
import struct
import threading

import numpy as np
import pandas as pd
import pytest

import harness

COLS = harness.frame_header(0)["columns"]


def encode_frame(rows):
    """Columnar body for a list of 8-tuples, as the worker sends it: time
    is start in nanoseconds."""
    rows = [r + (r[0] * 1_000_000_000,) for r in rows]
    body = b""
    for i, c in enumerate(COLS):
        body += np.array([r[i] for r in rows], dtype=c["dtype"] if i < 8 else "<i8").tobytes()
    return {"rows": len(rows), "columns": COLS}, body


ROWS = [(1735689600 + 60 * i, 1.0 + i, 2.0 + i, 0.5, 1.5, 10.0, float("nan") if i == 1 else 7.0, i) for i in range(3)]


def test_frame_to_df_has_documented_columns_and_dtypes():
    header, body = encode_frame(ROWS)
    df = harness.frame_to_df(header, bytearray(body))
    assert list(df.columns) == harness.COLUMNS and harness.COLUMNS[-1] == "time"
    assert [str(t) for t in df.dtypes] == ["int64"] + ["float64"] * 6 + ["int64", "datetime64[ns, UTC]"]
    assert df.time.iloc[0] == pd.Timestamp("2025-01-01", tz="UTC")
    assert (df.time == pd.to_datetime(df.start, unit="s", utc=True)).all()
    assert list(df.set_index("time").close.resample("2min").count()) == [2, 1]
    assert math.isnan(df.turnover.iloc[1]) and df.open.iloc[2] == 3.0
    df.loc[0, "open"] = 99.0  # the frame is writable


def _mapping(address):
    """The range and VmFlags of the mapping of this process that holds
    address."""
    found = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif head == "VmFlags:" and inside:
                found = (lo, hi, line.split()[1:])
    return found


def _address(buf):
    return np.frombuffer(buf, np.uint8).ctypes.data


def test_a_large_inline_frame_is_received_into_huge_page_memory_and_mapped_as_it_is():
    n = 90_000  # below ShareRows: it comes inline
    start = 1735689600 + 60 * np.arange(n, dtype=np.int64)
    cols = [start if c["dtype"] == "<i8" else np.full(n, 1.5) for c in COLS[:8]] + [start * 1_000_000_000]
    ours, theirs = socket.socketpair()
    body = b"".join(c.tobytes() for c in cols)
    sender = threading.Thread(target=harness.send_msg, args=(ours, harness.frame_header(n), body))
    sender.start()
    header, body = harness.recv_msg(theirs)
    sender.join()
    ours.close()
    theirs.close()
    df = harness.frame_to_df(header, body)
    assert (df.time == pd.to_datetime(start, unit="s", utc=True)).all() and (df.start == start).all()
    # The time column is the received bytes (not a copy), in memory
    # advised for 2 MiB pages.
    address = df.time.array._ndarray.ctypes.data
    assert address == _address(body) + 8 * 8 * n
    assert "hg" in _mapping(address)[2]


def test_a_frame_without_a_column_is_a_protocol_error():
    header, body = encode_frame(ROWS)
    header = dict(header, columns=header["columns"][:8])
    with pytest.raises(ValueError, match="without the columns .'time'."):
        harness.frame_to_df(header, bytearray(body))


def test_fresh_memory_is_zeroed_unshared_and_each_processes_own():
    n = harness.ARENA_MIN
    a, b = harness.fresh_memory(n), harness.fresh_memory(n)
    assert bytes(a) == bytes(n) and bytes(b) == bytes(n)
    a[:] = b"\x01" * n
    assert bytes(b) == bytes(n)  # no overlap
    small = harness.fresh_memory(100)
    assert len(small) == 100 and bytes(small) == bytes(100)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        c = harness.fresh_memory(n)
        same = _mapping(_address(c))[:2] == _mapping(_address(b))[:2]
        os.write(w, b"1" if bytes(c) == bytes(n) and not same else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1", "a forked child carved its parent's chunk"


def test_empty_frame_keeps_columns():
    df = harness.frame_to_df({"rows": 0, "columns": COLS}, bytearray())
    assert len(df) == 0 and [str(t) for t in df.dtypes][-1] == "datetime64[ns, UTC]"


@pytest.mark.parametrize("value,expected", [
    (np.int64(3), 3), (np.float32(0.5), 0.5), (float("nan"), None), (np.inf, None),
    (np.array([1.0, np.nan]), [1.0, None]), (pd.Timestamp("2025-01-01", tz="UTC"), "2025-01-01T00:00:00+00:00"),
    (pd.NaT, None), ({1: np.bool_(True)}, {"1": True}), ((1, 2), [1, 2]),
    (pd.Series([1, 2]), [1, 2]), (pd.Series([1.5], index=["a"]), {"a": 1.5}),
    (pd.DataFrame({"a": [1, None]}), [{"a": 1.0}, {"a": None}]),
])
def test_to_jsonable(value, expected):
    assert harness.to_jsonable(value) == expected


def test_unconvertible_result_is_a_clear_error():
    with pytest.raises(TypeError, match="cannot be converted to JSON"):
        harness.to_jsonable(object())


# What the worker sends in every job (pkg/config owns the defaults).
LIMITS = {"timeoutSec": 0, "maxImages": 3, "maxImageBytes": 1 << 20, "maxResultBytes": 0}


def run(code, **job):
    header, body = encode_frame(ROWS)
    df = harness.frame_to_df(header, bytearray(body))
    return harness.execute({**LIMITS, "code": code, **job}, df, None)


def test_user_exception_names_type_message_and_line(capsys):
    msg = run("a = 1\nb = a / 0\n")
    assert msg["ok"] is False and msg["error"] == "ZeroDivisionError: division by zero"
    err = capsys.readouterr().err
    assert 'File "<user_code>", line 2' in err and "b = a / 0" in err and "harness.py" not in err


def test_timeout_is_not_swallowed_by_user_except():
    msg = run("while True:\n    try:\n        pass\n    except Exception:\n        pass\n", timeoutSec=1)
    assert msg == {**msg, "ok": False, "error": "timeout after 1s", "timedOut": True}
    assert run("raise SystemExit(3)")["timedOut"] is False


def test_images_limits_and_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"0" * 10).decode()
    msg = run("import matplotlib.pyplot as plt\nplt.plot([1, 2])\n"
              f"images = [{{'data': '{png}', 'mimeType': 'image/png', 'name': 'a.png'}}]\n"
              f"image_base64 = ['{png}', '{png}', '{png}']\n")
    assert [i["name"] for i in msg["images"]] == ["a.png", "image-base64-1.png", "image-base64-2.png"]
    assert any("figure-1.png dropped" in w for w in msg["warnings"])
    msg = run("import matplotlib.pyplot as plt\nplt.plot([1, 2])\n", maxImageBytes=100)
    assert msg["images"] == [] and "over the limit of 100 bytes" in msg["warnings"][0]
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []  # figures are closed after a run


def _send(sock, header, body=b""):
    h = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(h)) + h + struct.pack(">Q", len(body)) + body)


def test_serve_whole_job_with_load_kline():
    ours, theirs = socket.socketpair()
    header, body = encode_frame(ROWS)
    got = {}

    def worker():
        _send(ours, {**LIMITS, "type": "job", "frame": header,
                     "code": "x = load_kline('a', 'b', '1m', 0, 10)\nresult = {'df': len(df), 'x': len(x)}"}, body)
        req, _ = harness.recv_msg(ours)
        got["request"] = req
        h2, b2 = encode_frame(ROWS[:2])
        _send(ours, {"type": "frame", "frame": h2}, b2)
        got["result"], _ = harness.recv_msg(ours)

    t = threading.Thread(target=worker)
    t.start()
    harness.serve(theirs)
    t.join(5)
    assert got["request"] == {"type": "load_kline", "exchange": "a", "symbol": "b", "binSize": "1m",
                              "start": 0, "end": 10, "limit": 0}
    assert got["result"]["ok"] is True and got["result"]["result"] == {"df": 3, "x": 2}


def serve_with_markets(code, answers):
    """Serve a job whose code calls load_klines; the worker's side reads
    every request before it answers any (as load_klines must allow), then
    answers them in order: a row count gives a frame, a string an error."""
    ours, theirs = socket.socketpair()
    header, body = encode_frame(ROWS)
    got = {"requests": []}

    def worker():
        _send(ours, {**LIMITS, "type": "job", "frame": header, "code": code}, body)
        for _ in answers:
            req, _ = harness.recv_msg(ours)
            got["requests"].append(req)
        for a in answers:
            if isinstance(a, str):
                _send(ours, {"type": "error", "error": a})
            else:
                h, b = encode_frame(ROWS[:a])
                _send(ours, {"type": "frame", "frame": h}, b)
        got["result"], _ = harness.recv_msg(ours)

    t = threading.Thread(target=worker)
    t.start()
    harness.serve(theirs)
    t.join(5)
    return got


def test_load_klines_asks_for_every_market_before_reading_answers_in_order():
    code = ("d = load_klines([('a', 'X'), ('b', 'Y'), ('a', 'Z')], '1m', 0, 10, limit=5)\n"
            "result = [[e, s, len(f)] for (e, s), f in d.items()]")
    got = serve_with_markets(code, [1, 3, 2])
    assert [(r["exchange"], r["symbol"], r["limit"]) for r in got["requests"]] == [("a", "X", 5), ("b", "Y", 5),
                                                                                   ("a", "Z", 5)]
    assert got["result"]["ok"] is True
    assert got["result"]["result"] == [["a", "X", 1], ["b", "Y", 3], ["a", "Z", 2]]


def test_load_klines_reads_every_answer_then_raises_the_failed_market():
    code = "try:\n    load_klines([('a', 'X'), ('b', 'Y')], '1m', 0, 10)\nexcept ValueError as e:\n    result = str(e)"
    got = serve_with_markets(code, ["no such market", 2])
    assert got["result"]["ok"] is True and got["result"]["result"] == "a:X: no such market"


@pytest.mark.parametrize("value", [None, True, False, 0, -12, 3.25, 1e300, "", "plain", "é\n\"\\\x7f",
                                   [], {}, [1, [2, [3]]], {"a": {"b": []}, "c": [None, "x" * 100]},
                                   ["y" * 1000] * 50])
def test_json_size_is_the_size_of_the_json_sent(value):
    assert harness.json_size(value) == len(json.dumps(value, separators=(",", ":")))


def test_a_result_over_the_limit_is_refused_with_its_size():
    msg = harness.execute({**LIMITS, "code": "print('kept')\nresult = 'x' * 5000", "maxResultBytes": 4096}, None, None)
    assert msg["ok"] is False and msg["result"] is None
    assert msg["error"] == "result too large: 5002 bytes (limit 4096)"
    msg = harness.execute({**LIMITS, "code": "result = 'x' * 4000", "maxResultBytes": 4096}, None, None)
    assert msg["ok"] is True and len(msg["result"]) == 4000


def test_the_seccomp_filter_refuses_terminal_input_and_namespaces():
    import ctypes
    import subprocess
    import isolation
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the filter is for good: install it in a child
        os.close(r)
        before = isolation.refused_tiocsti()
        isolation.lock_down()
        got = [before, isolation.refused_tiocsti(), ctypes.CDLL(None, use_errno=True).unshare(0x10000000),
               subprocess.run(["true"]).returncode]
        os.write(w, repr(got).encode())
        os._exit(0)
    os.close(w)
    got = os.read(r, 1000).decode()
    os.waitpid(pid, 0)
    # TIOCSTI allowed (ENOTTY on /dev/null) before, refused after; no user
    # namespace; processes still start.
    assert got == "[False, True, -1, 0]"
