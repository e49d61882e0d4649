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
of it. The pages a child writes as it runs (reference counts, caches:
~1 350 of them, found by two children that walk a run at start) are
pinned, so each fork copies them into the child at once instead of each
costing the child a copy-on-write fault (pin_hot_pages: a third of a
trivial run's CPU on a virtual machine); the rest of its heap is on huge
pages where the kernel allows it (huge_pages), which makes each fork and
each child's exit cheaper.

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
    return harness.frame_to_df(harness.frame_header(rows), bytearray(rows * 8 * len(harness.COLUMNS)))


# The signals a child takes back from the zygote's handlers.
CHILD_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE)


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


PAGE = os.sysconf("SC_PAGE_SIZE")
SYS_IO_URING_SETUP, SYS_IO_URING_REGISTER, IORING_REGISTER_BUFFERS = 425, 427, 0  # the same on x86-64 and arm64


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _private_writable(maps_text):
    """The (lo, hi) of each private, writable mapping: anonymous memory,
    and the data of the interpreter and its libraries (CPython's static
    objects, None and the small ints among them, live there)."""
    for line in maps_text.splitlines():
        f = line.split()
        named = len(f) > 5 and f[5].startswith("[")  # [heap], [stack], [vvar]…
        if f[1].startswith("rw") and f[1][3] == "p" and (not named or f[5] in ("[heap]", "[stack]")):
            yield tuple(int(x, 16) for x in f[0].split("-"))


def written_by_a_child(walk):
    """The pages of the zygote that a child copies on write while it runs
    walk(): a child is forked, walks, and waits while its page map is
    compared with the zygote's (a page present in both at the same address
    that the child maps alone is one it copied)."""
    done_r, done_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(done_r)
            os.close(go_w)
            walk()
            os.write(done_w, b"x")
            os.read(go_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(done_w)
    os.close(go_r)
    pages = []
    try:
        if os.read(done_r, 1) != b"x":
            return pages
        with open(f"/proc/{pid}/maps") as f:
            spans = list(_private_writable(f.read()))
        theirs = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        mine = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            for lo, hi in spans:
                n = (hi - lo) // PAGE
                t = os.pread(theirs, 8 * n, 8 * (lo // PAGE))
                m = os.pread(mine, 8 * n, 8 * (lo // PAGE))
                for i, ((a,), (b,)) in enumerate(zip(struct.iter_unpack("<Q", t), struct.iter_unpack("<Q", m))):
                    # bit 63: present; bit 56: mapped by this process alone
                    if a >> 63 and (a >> 56) & 1 and b >> 63:
                        pages.append(lo + i * PAGE)
        finally:
            os.close(theirs)
            os.close(mine)
    finally:
        os.close(done_r)
        os.close(go_w)
        os.waitpid(pid, 0)
    return pages


def pin_pages(pages):
    """Pin pages (long-term, as io_uring's registered buffers are) and
    return the ring that holds them, or None when the kernel will not (no
    io_uring, a seccomp profile that forbids it).
    A fork copies a pinned page into the child at once instead of sharing
    it copy-on-write: a memcpy instead of a page fault in the child (and
    one in the zygote, when it next writes the page), which on a virtual
    machine costs twenty times the copy."""
    if not pages:
        return None
    spans = []
    for p in sorted(set(pages)):
        if spans and spans[-1][0] + spans[-1][1] == p:
            spans[-1][1] += PAGE
        else:
            spans.append([p, PAGE])
    syscall = _libc.syscall
    syscall.restype = ctypes.c_long
    params = (ctypes.c_char * 120)()  # struct io_uring_params, zeroed
    ring = syscall(ctypes.c_long(SYS_IO_URING_SETUP), ctypes.c_uint(1), params)
    if ring < 0:
        return None
    # Without CAP_IPC_LOCK the pages count against RLIMIT_MEMLOCK: pin
    # what it allows (the pages first written are the likeliest).
    while spans:
        iov = (_IOVec * len(spans))(*[_IOVec(a, n) for a, n in spans])
        if syscall(ctypes.c_long(SYS_IO_URING_REGISTER), ctypes.c_int(ring), ctypes.c_uint(IORING_REGISTER_BUFFERS),
                   iov, ctypes.c_uint(len(spans))) == 0:
            return ring
        if ctypes.get_errno() != errno.ENOMEM:
            break
        spans = spans[: len(spans) // 2]
    os.close(ring)
    return None


def pin_hot_pages():
    """Pin the pages a run's child writes (two children walk a run's code
    paths; their pages together), so forks copy them eagerly (pin_pages).
    Returns the ring holding them (to keep open, and out of children) and
    the pages pinned; (None, set()) where pinning is not possible."""
    def walk():  # what standby() and harness.serve() do with a run, on socket pairs
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for s in CHILD_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        reseed_numpy()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        socket.send_fds(ours, [json.dumps({"op": protocol.RUN, "env": dict(os.environ)}).encode()], [devnull] * 3)
        select.select([theirs], [], [], 0)
        data, fds, _, _ = socket.recv_fds(theirs, 1 << 20, 3)
        theirs.send(b"k")
        os.environ.clear()
        os.environ.update(json.loads(data)["env"])
        chan, worker = socket.socketpair()
        job = dict(warm_up_job(), type=protocol.JOB, frame=harness.frame_header(1000))
        harness.send_msg(worker, job, bytes(1000 * 8 * len(harness.COLUMNS)))
        job, body = harness.recv_msg(chan)
        df = harness.frame_to_df(job["frame"], body)
        harness.apply_limits(job)
        harness.send_msg(chan, harness.execute(job, df, harness.make_loaders(chan)))
        harness.recv_msg(worker)

    try:
        pages = set(written_by_a_child(walk)) | set(written_by_a_child(walk))
        ring = pin_pages(pages)
    except OSError:
        return None, set()
    return (ring, pages) if ring is not None else (None, set())


HUGE_PAGE = harness.HUGE_PAGE
MADV_COLLAPSE = 25  # Linux 6.1+


def huge_pages(min_present=0.5, pinned=frozenset()):
    """Back the zygote's heap with transparent huge pages where it is
    dense (MADV_COLLAPSE, whatever the system's THP policy short of
    "never"), and return how many 2 MiB pages it made. A fork copies one
    entry per huge page instead of 512 page-table entries, and a child's
    exit tears down as few: the kernel work that dominates a short run's
    CPU. A child that writes into a huge page gets the page table split
    and copies 4 KiB, as before. A kernel without it changes nothing.
    The 2 MiB around a pinned page stay small pages: a fork would copy a
    pinned huge page whole."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return 0
        maps = open("/proc/self/maps").read().splitlines()
        pagemap = os.open("/proc/self/pagemap", os.O_RDONLY)
    except OSError:
        return 0
    pinned_huge = {p & ~(HUGE_PAGE - 1) for p in pinned}
    madvise = _libc.madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    pages = HUGE_PAGE // PAGE
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
                if a in pinned_huge:
                    continue
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
        for s in CHILD_SIGNALS:
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
    ring, pinned = pin_hot_pages()
    huge_pages(pinned=pinned)
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
    z = Zygote(ctl, [ctl.fileno(), wake_r, wake_w, sel.fileno()] + ([ring] if ring is not None else []))
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
