"""pyrunner's warm zygote: a long-lived Python that has already imported
numpy, pandas and matplotlib (and PYRUNNER_PRELOAD), and forks the
processes research runs execute in, so a run costs no import (~0.6 s)
and no fork (~2 ms plus ~3 ms of copy-on-write faults in the child).

Children are forked ahead of time: the zygote keeps PYRUNNER_PREFORK of
them ready (with PYRUNNER_ISOLATE=1 already in namespaces of their own:
python/isolation.py); one that no run takes at once walks a run's code
paths on a dummy frame while it waits (get_ready). It hands each ready
child's socket to the worker, which gives it a run directly, with nothing
in between; the zygote forks the next child while nothing else is asked
of it. Its heap is on huge pages where the kernel allows it (huge_pages),
which makes each fork and each child's exit cheaper.

The worker talks to the zygote over a SOCK_SEQPACKET socket on file
descriptor 3, one JSON message per packet (protocol.py has them all):

    zygote → worker  ready        once, after preloading
                     standby      a ready child, with its socket attached (SCM_RIGHTS)
                     fork_failed  no child could be forked
                     exit         a child ended (minus the signal if killed)
    worker → zygote  took         that child has a run now: fork another

and to a ready child over its socket, once:

    worker → child   run          with three descriptors attached: the run's
                                  channel socket, its stdout and its stderr

Each child is a fresh copy of the zygote: new process group, its own
working directory and environment, then harness.serve() on its channel.
Nothing a run does reaches the zygote or the next run.
"""

import ctypes
import errno
import gc
import importlib
import json
import os
import random  # noqa: F401  (imported, it reseeds itself in every forked child)
import select
import selectors
import signal
import socket
import struct
import sys
import traceback

import numpy as np
import pandas as pd  # noqa: F401  (preloaded for the children)
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401

import harness  # noqa: E402
import isolation  # noqa: E402
import protocol  # noqa: E402

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def preload():
    for name in filter(None, (s.strip() for s in os.environ.get("PYRUNNER_PRELOAD", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:  # a bad preload must not stop the worker
            print(f"zygote: cannot preload {name}: {e}", file=sys.stderr)
    os.environ.pop("PYRUNNER_PRELOAD", None)


def dummy_df(rows):
    """A DataFrame of rows zero candles, built as a run's df is."""
    cols = [{"name": n, "dtype": "<i8" if n in ("start", "trades") else "<f8"} for n in harness.COLUMNS]
    return harness.frame_to_df({"rows": rows, "columns": cols}, bytearray(rows * 8 * len(cols)))


def warm_up_job():
    """A job that walks a run's code paths, under no limit."""
    return {"code": "result = len(df)", "timeoutSec": 0, "maxImages": 0, "maxImageBytes": 0, "maxResultBytes": 0}


def warm_up():
    """Run the harness's code paths once, so the lazy imports and caches of
    pandas, numpy and json they touch are in the zygote, not in every child."""
    df = dummy_df(2)
    harness.to_jsonable({"a": df, "b": df.close, "c": np.float64(1), "d": df.time.iloc[0], "e": [float("nan")]})
    harness.execute(warm_up_job(), df, None)
    np.random.seed()  # no cached normal deviate for children to share (reseed_numpy)
    gc.collect()
    # Objects alive now are never collected: children skip scanning them,
    # which keeps their pages shared instead of copied on write.
    gc.freeze()


HUGE_PAGE = 1 << 21
MADV_COLLAPSE = 25  # Linux 6.1+


def huge_pages(min_present=0.5):
    """Back the zygote's heap with transparent huge pages where it is
    dense (MADV_COLLAPSE, whatever the system's THP policy short of
    "never"), and return how many 2 MiB pages it made. A fork copies one
    entry per huge page instead of 512 page-table entries, and a child's
    exit tears down as few: the kernel work that dominates a short run's
    CPU. A child that writes into a huge page gets the page table split
    and copies 4 KiB, as before. A kernel without it changes nothing."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return 0
        maps = open("/proc/self/maps").read().splitlines()
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return 0
    madvise = _libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    pages = HUGE_PAGE // os.sysconf("SC_PAGE_SIZE")
    made = 0
    try:
        for line in maps:
            f = line.split()
            if not f[1].startswith("rw") or (len(f) > 5 and f[5] != "[heap]"):
                continue  # only the anonymous heap: private, writable, nameless
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            a = (lo + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
            for a in range(a, hi - HUGE_PAGE + 1, HUGE_PAGE):
                entries = os.pread(pagemap, 8 * pages, 8 * (a // (HUGE_PAGE // pages)))
                present = sum(e >> 63 for (e,) in struct.iter_unpack("<Q", entries))
                if present < min_present * pages:
                    continue  # mostly unused: a huge page would waste memory
                if madvise(a, HUGE_PAGE, MADV_COLLAPSE) == 0:
                    made += 1
                elif ctypes.get_errno() == errno.EINVAL:
                    return made  # a kernel without MADV_COLLAPSE
    finally:
        os.close(pagemap)
    return made


def get_ready():
    """In a pre-forked child whose run has not come within IDLE: walk the
    run's code paths once on a dummy frame. A forked child pays for every
    page of the zygote it writes to (copy on write: reference counts,
    caches); paying here, while it waits, takes ~2 ms off the run's path.
    It also costs ~1.5 ms of CPU the run would not have spent, so a child
    that a run takes at once (a busy worker, where CPU is what bounds the
    rate) skips it."""
    harness.execute(warm_up_job(), dummy_df(1000), None)
    harness.linecache.cache.pop(harness.USER_FILENAME, None)


# Where numpy's global RandomState keeps its Mersenne Twister: 624 words
# of key, then the position in it (None: a numpy that hides it).
try:
    _MT = np.random.mtrand._rand._bit_generator.ctypes.state_address
    if type(np.random.mtrand._rand._bit_generator).__name__ != "MT19937":
        _MT = None
except AttributeError:
    _MT = None
_MT_KEY = 624 * 4


def reseed_numpy():
    """Give numpy's global random generator (np.random.random & co.) a
    fresh state from the OS, as np.random.seed() would: 624 random words
    of key and a spent position, so the next draw twists them. Written in
    place, because np.random.seed() in a freshly forked child costs ~5 ms
    and ~200 copy-on-write faults (its seeding machinery is Python code
    and temporary arrays), more than the rest of a trivial run. The
    normal deviate numpy caches is not touched: warm_up() left none (the
    zygote draws none after it)."""
    if _MT is None:
        np.random.seed()
        return
    ctypes.memmove(_MT, os.urandom(_MT_KEY), _MT_KEY)
    ctypes.c_int.from_address(_MT + _MT_KEY).value = 624


PREFORK = max(1, int(os.environ.pop("PYRUNNER_PREFORK", "2") or 2))
# The nice value of the zygote's work (forking, getting children ready)
# and of a child's exit after its result: background work, which a run in
# progress gets the CPU before. The worker sets a taken child back to 0.
NICE = int(os.environ.pop("PYRUNNER_NICE", "0") or 0)
# How long a ready child waits for a run before it gets ready on a dummy
# frame (get_ready).
IDLE = 0.005
ISOLATE = os.environ.pop("PYRUNNER_ISOLATE", "") == "1"


def standby(sock, zygote_pid, keep, alive_r):
    """In a pre-forked child: get ready (own process group, and when
    ISOLATE its own namespaces: it was forked as PID 1 of a new PID
    namespace), wait on sock for a run from the worker, become it, serve
    it. Never returns."""
    code = 0
    try:
        if ISOLATE:
            isolation.become_init(alive_r)
        else:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != zygote_pid:  # the zygote died between fork and prctl
                os._exit(1)
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        for fd in keep:
            os.close(fd)
        reseed_numpy()  # each child its own (random reseeds itself after a fork)
        if not select.select([sock], [], [], IDLE)[0]:
            get_ready()  # no run came at once: the machine has time for it
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        if not data or len(fds) != 3:  # the worker retired this child
            os._exit(0)
        sock.send(b"k")  # the worker learns the run was taken (should this child die)
        sock.close()
        msg = json.loads(data)
        if msg["op"] != protocol.RUN:
            raise ValueError(f"expected a run, got {msg['op']!r}")
        chan, out, err = fds
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        os.environ.clear()
        os.environ.update(msg["env"])
        iso = msg.get("isolate")
        if ISOLATE and iso:
            isolation.make_home(msg["dir"], int(iso["uid"]), int(iso["gid"]), int(iso["diskBytes"]))
        elif ISOLATE:
            raise RuntimeError("an isolating zygote got a run without isolation settings")
        else:
            os.chdir(msg["dir"])
        harness.serve(socket.socket(fileno=chan))
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def send(ctl, obj, fds=()):
    socket.send_fds(ctl, [json.dumps(obj).encode()], list(fds))


class Zygote:
    """The zygote's state: its control socket and the pids of its ready
    children (handed to the worker, not yet taken)."""

    def __init__(self, ctl, keep):
        self.ctl = ctl
        self.me = os.getpid()
        self.ready = set()
        # Held open by the zygote alone: its children see the pipe hang up
        # when it dies (their parent-death check inside a PID namespace).
        self.alive_r, self.alive_w = os.pipe()
        self.keep = keep + [self.alive_w]  # descriptors a child must not keep
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY) if ISOLATE else None
        if self.own_pidns is not None:
            self.keep.append(self.own_pidns)

    def prefork(self):
        """Fork a ready child and hand its socket to the worker."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if self.own_pidns is not None:
                isolation.pidns_for_next_child(self.own_pidns)
            pid = -1
            try:
                pid = os.fork()
            finally:
                if self.own_pidns is not None and pid != 0:
                    isolation.reset_pidns(self.own_pidns)
            if pid == 0:
                a.close()
                standby(b, self.me, self.keep, self.alive_r)
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass  # the child did it first, or already exited
            self.ready.add(pid)
            send(self.ctl, protocol.message(protocol.STANDBY, pid=pid), [a.fileno()])
        finally:
            a.close()
            b.close()

    def control(self, data):
        """A message from the worker."""
        msg = json.loads(data)
        if msg["op"] == protocol.TOOK:
            self.ready.discard(int(msg["pid"]))

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.ready.discard(pid)  # a ready child that died is replaced
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            send(self.ctl, protocol.message(protocol.EXIT, pid=pid, code=code))


def main():
    preload()
    warm_up()
    huge_pages()
    if NICE > 0:
        os.nice(NICE)
        harness.EXIT_NICE = NICE
    ctl = socket.socket(fileno=int(os.environ.pop("PYRUNNER_CONTROL_FD", "3")))
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, "ctl")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    z = Zygote(ctl, [ctl.fileno(), wake_r, wake_w, sel.fileno()])
    send(ctl, protocol.message(protocol.READY, pid=z.me))
    retry = 0.0  # after a failed fork: how long to wait before the next
    while True:
        # Messages first; with none waiting, fill up the ready children.
        want = len(z.ready) < PREFORK
        events = sel.select(timeout=retry if want else None)
        if not events:
            try:
                z.prefork()
                retry = 0.0
            except OSError as e:
                send(ctl, protocol.message(protocol.FORK_FAILED, error=f"{type(e).__name__}: {e}"))
                retry = min(max(retry * 2, 0.05), 2.0)
            continue
        for key, _ in events:
            if key.data == "wake":
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                z.reap()
                continue
            try:
                data = ctl.recv(1 << 16)
            except InterruptedError:
                continue
            if not data:  # the worker is gone
                os._exit(0)
            z.control(data)
            z.reap()


if __name__ == "__main__":
    main()
