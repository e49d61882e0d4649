"""pyrunner's warm zygote: a long-lived Python that has already imported
numpy, pandas and matplotlib (and PYRUNNER_PRELOAD), and forks one child
per research run, so a run costs a fork (~10 ms) instead of the ~0.6 s
those imports take.

The fork is taken off the run's path: the zygote keeps PYRUNNER_PREFORK
children forked ahead of time (and, with PYRUNNER_ISOLATE=1, already in
their own namespaces: python/isolation.py), hands each request to one of
them, and forks the next while nothing else is asked of it.

The worker talks to it over a SOCK_SEQPACKET socket on file descriptor 3,
one JSON message per packet:

    worker → zygote  {"op": "fork", "run": id, "dir": ..., "env": {...},
                      "isolate": {"uid", "gid", "diskBytes"} (when isolating)}
                     with three descriptors attached (SCM_RIGHTS): the
                     run's channel socket, its stdout and its stderr
    zygote → worker  {"op": "ready", "pid": n}            once, after preloading
                     {"op": "forked", "run": id, "pid": n} or {"op": "fork_failed", "run": id, "error": ...}
                     {"op": "exit", "pid": n, "code": n}  when a child ends (minus the signal if killed)

Each child is a fresh copy of the zygote: new process group, its own
working directory and environment, then harness.serve() on its channel.
Nothing a run does reaches the zygote or the next run.
"""

import ctypes
import gc
import importlib
import json
import os
import random
import selectors
import signal
import socket
import sys
import traceback

import numpy as np
import pandas as pd  # noqa: F401  (preloaded for the children)
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401

import harness  # noqa: E402
import isolation  # noqa: E402

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def preload():
    for name in filter(None, (s.strip() for s in os.environ.get("PYRUNNER_PRELOAD", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:  # a bad preload must not stop the worker
            print(f"zygote: cannot preload {name}: {e}", file=sys.stderr)
    os.environ.pop("PYRUNNER_PRELOAD", None)


def warm_up():
    """Run the harness's code paths once, so the lazy imports and caches of
    pandas, numpy and json they touch are in the zygote, not in every child."""
    cols = [{"name": n, "dtype": "<i8" if n in ("start", "trades") else "<f8"} for n in harness.COLUMNS]
    df = harness.frame_to_df({"rows": 2, "columns": cols}, bytearray(2 * 8 * len(cols)))
    harness.to_jsonable({"a": df, "b": df.close, "c": np.float64(1), "d": df.time.iloc[0], "e": [float("nan")]})
    harness.execute({"code": "result = len(df)"}, df, None)
    gc.collect()
    # Objects alive now are never collected: children skip scanning them,
    # which keeps their pages shared instead of copied on write.
    gc.freeze()


PREFORK = max(1, int(os.environ.pop("PYRUNNER_PREFORK", "2") or 2))
ISOLATE = os.environ.pop("PYRUNNER_ISOLATE", "") == "1"


def standby(sock, zygote_pid, keep, alive_r):
    """In a pre-forked child: get ready (own process group, and when
    ISOLATE its own namespaces: it was forked as PID 1 of a new PID
    namespace), wait on sock for a run, become it, serve it. Never
    returns."""
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
        data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 3)
        if not data or len(fds) != 3:  # the zygote retired this child
            os._exit(0)
        sock.close()
        msg = json.loads(data)
        chan, out, err = fds
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        os.environ.clear()
        os.environ.update(msg.get("env") or {})
        iso = msg.get("isolate")
        if ISOLATE and iso:
            isolation.make_home(msg["dir"], int(iso["uid"]), int(iso["gid"]), int(iso["diskBytes"]))
        elif ISOLATE:
            raise RuntimeError("an isolating zygote got a run without isolation settings")
        else:
            os.chdir(msg["dir"])
        random.seed()
        np.random.seed()
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


def send(ctl, obj):
    ctl.send(json.dumps(obj).encode())


class Zygote:
    """The zygote's state: its control socket and the ready children, each
    a (pid, socket) waiting for a run."""

    def __init__(self, ctl, keep):
        self.ctl = ctl
        self.me = os.getpid()
        self.ready = []
        # Held open by the zygote alone: its children see the pipe hang up
        # when it dies (their parent-death check inside a PID namespace).
        self.alive_r, self.alive_w = os.pipe()
        self.keep = keep + [self.alive_w]  # descriptors a child must not keep
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY) if ISOLATE else None
        if self.own_pidns is not None:
            self.keep.append(self.own_pidns)

    def prefork(self):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
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
            standby(b, self.me, self.keep + [s.fileno() for _, s in self.ready], self.alive_r)
        b.close()
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass  # the child did it first, or already exited
        self.ready.append((pid, a))

    def dispatch(self, data, fds):
        """Hand a fork request to a ready child (making one if none is),
        and answer the worker."""
        msg = json.loads(data)
        try:
            if msg.get("op") != "fork" or len(fds) != 3:
                send(self.ctl, {"op": "fork_failed", "run": msg.get("run"), "error": "bad fork request"})
                return
            for _ in range(3):  # a ready child that died is passed over
                if not self.ready:
                    self.prefork()
                pid, s = self.ready.pop(0)
                try:
                    socket.send_fds(s, [data], fds)
                except OSError:
                    continue
                finally:
                    s.close()
                send(self.ctl, {"op": "forked", "run": msg.get("run"), "pid": pid})
                return
            send(self.ctl, {"op": "fork_failed", "run": msg.get("run"), "error": "no child could take the run"})
        except OSError as e:
            send(self.ctl, {"op": "fork_failed", "run": msg.get("run"), "error": str(e)})
        finally:
            for fd in fds:
                os.close(fd)

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            waiting = [r for r in self.ready if r[0] == pid]
            if waiting:  # a ready child died before it had a run: replaced
                self.ready.remove(waiting[0])
                waiting[0][1].close()
                continue
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            send(self.ctl, {"op": "exit", "pid": pid, "code": code})


def main():
    preload()
    warm_up()
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
    send(ctl, {"op": "ready", "pid": z.me})
    while True:
        # Requests first; with none waiting, fill up the ready children.
        events = sel.select(timeout=0 if len(z.ready) < PREFORK else None)
        if not events:
            z.prefork()
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
                data, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 3)
            except InterruptedError:
                continue
            if not data:  # the worker is gone
                os._exit(0)
            z.dispatch(data, fds)
            z.reap()


if __name__ == "__main__":
    main()
