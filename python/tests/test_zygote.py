"""The warm zygote as the worker drives it: a real zygote process on a
SOCK_SEQPACKET control socket, ready children handed over with their
sockets, a run given straight to one of them, and the harness conversation
with it."""
import json
import os
import re
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

import harness

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Worker:
    """The worker's side of the control socket: ready children as they
    are handed over, and exits as they are reported."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.ready = []  # (pid, socket), oldest first
        self.exits = {}

    def pump(self):
        data, fds, _, _ = socket.recv_fds(self.ctl, 65536, 1)
        msg = json.loads(data)
        if msg["op"] == "standby":
            assert len(fds) == 1, "a ready child comes with its socket"
            self.ready.append((msg["pid"], socket.socket(fileno=fds[0])))
        elif msg["op"] == "exit":
            self.exits[msg["pid"]] = msg["code"]
            self.ready = [(p, s) for p, s in self.ready if p != msg["pid"]]
        return msg

    def take(self):
        while not self.ready:
            self.pump()
        pid, s = self.ready.pop(0)
        self.ctl.send(json.dumps({"op": "took", "pid": pid}).encode())
        return pid, s

    def exit_of(self, pid):
        while pid not in self.exits:
            self.pump()
        return self.exits.pop(pid)


@pytest.fixture
def zygote(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([sys.executable, "-E", "-s", os.path.join(HERE, "zygote.py")], pass_fds=[theirs.fileno()],
                            env={"PYRUNNER_CONTROL_FD": str(theirs.fileno()), "MPLBACKEND": "Agg",
                                 "MPLCONFIGDIR": str(tmp_path), "PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1"})
    theirs.close()
    ours.settimeout(60)
    assert json.loads(ours.recv(65536))["op"] == "ready"
    yield Worker(ours), proc
    proc.kill()
    proc.wait()


def run_in_child(w, tmp_path, code):
    pid, s = w.take()
    chan, child_chan = socket.socketpair()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    socket.send_fds(s, [json.dumps({"op": "run", "run": "t", "dir": str(tmp_path), "env": {"X": "1"}}).encode()],
                    [child_chan.fileno(), out_w, err_w])
    assert s.recv(1) == b"k", "the child acknowledges its run"
    s.close()
    for fd in (out_w, err_w):
        os.close(fd)
    child_chan.close()
    job = {"type": "job", "code": code, "timeoutSec": 10, "maxImages": 3, "maxImageBytes": 1 << 20, "maxResultBytes": 0,
           "frame": harness.frame_header(2)}
    harness.send_msg(chan, job, np.zeros(2 * len(harness.COLUMNS), dtype="<f8").tobytes())
    result, _ = harness.recv_msg(chan)
    code = w.exit_of(pid)
    stdout = os.read(out_r, 65536).decode()
    os.close(out_r)
    os.close(err_r)
    return pid, result, code, stdout


def test_a_ready_child_runs_and_its_exit_is_reported(zygote, tmp_path):
    w, _ = zygote
    code = "import os\nprint('hi')\nresult = [len(df), os.environ['X'], os.getcwd()]"
    _, result, code, stdout = run_in_child(w, tmp_path, code)
    assert result["ok"] is True and result["result"] == [2, "1", str(tmp_path)]
    assert stdout == "hi\n"
    assert code == 0


def test_runs_do_not_see_each_other(zygote, tmp_path):
    w, _ = zygote
    run_in_child(w, tmp_path, "import json\njson.leaked = 1\nleak = 1")
    _, result, _, _ = run_in_child(w, tmp_path, "import json\nresult = [hasattr(json, 'leaked'), 'leak' in globals()]")
    assert result["result"] == [False, False]


def test_children_are_ready_ahead_and_each_taken_one_is_replaced(zygote, tmp_path):
    w, proc = zygote
    while len(w.ready) < 2:  # PYRUNNER_PREFORK's default, before any run is asked for
        w.pump()
    first = [p for p, _ in w.ready]
    pid, _, _, _ = run_in_child(w, tmp_path, "result = 1")
    assert pid == first[0]
    while len(w.ready) < 2:
        w.pump()
    assert w.ready[0][0] == first[1] and w.ready[1][0] not in first


def test_a_ready_child_that_dies_is_replaced(zygote, tmp_path):
    w, proc = zygote
    while len(w.ready) < 2:
        w.pump()
    killed = [p for p, _ in w.ready]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    while not (len(w.ready) == 2 and {p for p, _ in w.ready}.isdisjoint(killed)):
        w.pump()
    assert all(w.exits.get(p) == -signal.SIGKILL for p in killed)
    _, result, _, _ = run_in_child(w, tmp_path, "result = 'after'")
    assert result["ok"] is True and result["result"] == "after"


def test_a_ready_child_whose_worker_end_closes_exits(zygote, tmp_path):
    w, _ = zygote
    pid, s = w.take()
    s.close()  # the worker retired it
    assert w.exit_of(pid) == 0


def huge_pages_offered():
    """Whether this kernel collapses memory into huge pages on request
    (MADV_COLLAPSE: Linux 6.1, with THP not turned off)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            enabled = f.read()
    except OSError:
        return False
    release = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:2])
    return "[never]" not in enabled and release >= (6, 1)


@pytest.mark.skipif(not huge_pages_offered(), reason="the kernel has no MADV_COLLAPSE or THP is off")
def test_the_zygote_heap_is_on_huge_pages_and_children_still_copy_on_write(zygote, tmp_path):
    w, proc = zygote
    with open(f"/proc/{proc.pid}/smaps_rollup") as f:
        huge_kb = int(re.search(r"AnonHugePages:\s+(\d+) kB", f.read()).group(1))
    # Where the zygote pins the pages children write, the heap around
    # them (all of it, in practice) stays on small pages.
    pinned = any("io_uring" in os.readlink(f"/proc/{proc.pid}/fd/{f}") for f in os.listdir(f"/proc/{proc.pid}/fd"))
    assert huge_kb >= 4096 or pinned, f"the zygote's heap has {huge_kb} kB on huge pages and nothing pinned"
    # A run that writes all over the heap it shares with the zygote
    # changes nothing the next run sees.
    run_in_child(w, tmp_path, "import gc\nfor o in gc.get_objects()[:200000]:\n    pass\nimport json\njson.dumps_x = 1")
    _, result, _, _ = run_in_child(w, tmp_path, "import json\nresult = hasattr(json, 'dumps_x')")
    assert result["ok"] is True and result["result"] is False


def test_pinned_pages_are_copied_into_a_child_at_fork():
    import mmap
    import struct

    import zygote
    page = zygote.PAGE
    region = mmap.mmap(-1, 8 * page, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(8):
        region[i * page] = 1  # present
    base = np.frombuffer(region, dtype=np.uint8).ctypes.data
    ring = zygote.pin_pages([base + i * page for i in (1, 2, 5)])
    if ring is None:
        pytest.skip("this kernel lets no process pin pages (io_uring)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # before writing anything there: which pages are the child's alone?
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        entries = struct.unpack("<8Q", os.pread(fd, 64, 8 * (base // page)))
        os.write(w, bytes((e >> 56) & 1 for e in entries))
        os._exit(0)
    os.close(w)
    alone = os.read(r, 8)
    os.waitpid(pid, 0)
    os.close(r)
    os.close(ring)
    assert list(alone) == [0, 1, 1, 0, 0, 1, 0, 0], "pinned pages are the child's own copies, the others still shared"


def test_the_zygote_pins_what_children_write_and_no_run_sees_its_ring(zygote, tmp_path):
    w, proc = zygote
    rings = [f for f in os.listdir(f"/proc/{proc.pid}/fd") if "io_uring" in os.readlink(f"/proc/{proc.pid}/fd/{f}")]
    assert len(rings) == 1, "the zygote holds its pinned pages in one ring"
    code = ("import os\nresult = sorted(os.readlink('/proc/self/fd/' + f) "
            "for f in os.listdir('/proc/self/fd') if os.path.exists('/proc/self/fd/' + f))")
    _, result, _, _ = run_in_child(w, tmp_path, code)
    assert result["ok"] is True, result
    assert not [f for f in result["result"] if "io_uring" in f], result["result"]
