"""pyrunner's warm zygote: a long-lived Python that has already imported
numpy, pandas and matplotlib (and PYRUNNER_PRELOAD), and forks one child
per research run, so a run costs a fork (~10 ms) instead of the ~0.6 s
those imports take.

The worker talks to it over a SOCK_SEQPACKET socket on file descriptor 3,
one JSON message per packet:

    worker → zygote  {"op": "fork", "run": id, "dir": ..., "env": {...}}
                     with three descriptors attached (SCM_RIGHTS): the
                     run's channel socket, its stdout and its stderr
    zygote → worker  {"op": "ready", "pid": n}            once, after preloading
                     {"op": "forked", "run": id, "pid": n} or {"op": "fork_failed", "run": id, "error": ...}
                     {"op": "exit", "pid": n, "code": n}  when a child ends (minus the signal if killed)

Each child is a fresh copy of the zygote: new process group, its own
working directory and environment, then
harness.serve() on its channel. Nothing a run does reaches the zygote or
the next run.
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


def child(msg, fds, zygote_pid, keep):
    """In the forked child: become the run, then serve it. Never returns."""
    code = 0
    try:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != zygote_pid:  # the zygote died between fork and prctl
            os._exit(1)
        os.setpgid(0, 0)
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        for fd in keep:
            os.close(fd)
        chan, out, err = fds
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        os.chdir(msg["dir"])
        os.environ.clear()
        os.environ.update(msg.get("env") or {})
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


def reap(ctl):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        send(ctl, {"op": "exit", "pid": pid, "code": code})


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
    me = os.getpid()
    send(ctl, {"op": "ready", "pid": me})
    while True:
        for key, _ in sel.select():
            if key.data == "wake":
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                reap(ctl)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 3)
            except InterruptedError:
                continue
            if not data:  # the worker is gone
                os._exit(0)
            msg = json.loads(data)
            if msg.get("op") != "fork" or len(fds) != 3:
                for fd in fds:
                    os.close(fd)
                send(ctl, {"op": "fork_failed", "run": msg.get("run"), "error": "bad fork request"})
                continue
            try:
                pid = os.fork()
            except OSError as e:
                for fd in fds:
                    os.close(fd)
                send(ctl, {"op": "fork_failed", "run": msg.get("run"), "error": str(e)})
                continue
            if pid == 0:
                child(msg, fds, me, [ctl.fileno(), wake_r, wake_w, sel.fileno()])
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass  # the child did it first, or already exited
            for fd in fds:
                os.close(fd)
            send(ctl, {"op": "forked", "run": msg.get("run"), "pid": pid})
            reap(ctl)


if __name__ == "__main__":
    main()
