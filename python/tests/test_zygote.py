"""The warm zygote as the worker drives it: a real zygote process on a
SOCK_SEQPACKET control socket, a fork request with descriptors attached, and
the harness conversation with the forked child."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import harness

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def zygote(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([sys.executable, "-E", "-s", os.path.join(HERE, "zygote.py")], pass_fds=[theirs.fileno()],
                            env={"PYRUNNER_CONTROL_FD": str(theirs.fileno()), "MPLBACKEND": "Agg",
                                 "MPLCONFIGDIR": str(tmp_path), "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"})
    theirs.close()
    ours.settimeout(60)
    assert json.loads(ours.recv(65536))["op"] == "ready"
    yield ours, proc
    proc.kill()
    proc.wait()


def fork_run(ctl, tmp_path, code):
    chan, child_chan = socket.socketpair()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    socket.send_fds(ctl, [json.dumps({"op": "fork", "run": "t", "dir": str(tmp_path), "env": {"X": "1"}}).encode()],
                    [child_chan.fileno(), out_w, err_w])
    for fd in (out_w, err_w):
        os.close(fd)
    child_chan.close()
    forked = json.loads(ctl.recv(65536))
    assert forked["op"] == "forked" and forked["pid"] > 0
    cols = [{"name": n, "dtype": "<i8" if n in ("start", "trades") else "<f8"} for n in harness.COLUMNS]
    harness.send_msg(chan, {"type": "job", "code": code, "timeoutSec": 10, "frame": {"rows": 2, "columns": cols}},
                     np.zeros(16, dtype="<f8").tobytes())
    result, _ = harness.recv_msg(chan)
    exited = json.loads(ctl.recv(65536))
    stdout = os.read(out_r, 65536).decode()
    os.close(out_r)
    os.close(err_r)
    return forked, result, exited, stdout


def test_fork_runs_and_reports_exit(zygote, tmp_path):
    zygote, _ = zygote
    forked, result, exited, stdout = fork_run(zygote, tmp_path, "import os\nprint('hi')\nresult = [len(df), os.environ['X'], os.getcwd()]")
    assert result["ok"] is True and result["result"] == [2, "1", str(tmp_path)]
    assert stdout == "hi\n"
    assert exited == {"op": "exit", "pid": forked["pid"], "code": 0}


def test_runs_do_not_see_each_other(zygote, tmp_path):
    zygote, _ = zygote
    fork_run(zygote, tmp_path, "import json\njson.leaked = 1\nleak = 1")
    _, result, _, _ = fork_run(zygote, tmp_path, "import json\nresult = [hasattr(json, 'leaked'), 'leak' in globals()]")
    assert result["result"] == [False, False]


def ready_children(zygote_pid):
    with open(f"/proc/{zygote_pid}/task/{zygote_pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_a_ready_child_that_dies_is_replaced(zygote, tmp_path):
    ctl, proc = zygote
    deadline = time.monotonic() + 30
    while len(ready_children(proc.pid)) < 2:  # the zygote forks them ahead of time
        assert time.monotonic() < deadline, "the zygote did not fork its ready children"
        time.sleep(0.01)
    killed = ready_children(proc.pid)
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    while not (len(ready_children(proc.pid)) == 2 and set(ready_children(proc.pid)).isdisjoint(killed)):
        assert time.monotonic() < deadline, "the zygote did not replace its ready children"
        time.sleep(0.01)
    _, result, _, _ = fork_run(ctl, tmp_path, "result = 'after'")
    assert result["ok"] is True and result["result"] == "after"
