"""pyrunner's research harness: runs one snippet of user code against a
K-line DataFrame and reports what came of it.

The worker starts (or, in warm mode, forks) a Python process with a
connected socket on file descriptor 3 and speaks a tiny framed protocol on
it. Every message is::

    u32 big-endian header length | header JSON | u64 big-endian body length | body

1. worker → harness  ``job``, body = the ``df`` frame
2. harness → worker  ``load_kline`` whenever user code calls load_kline or
   load_klines; the worker answers each, in the order asked, with ``frame``
   (the frame as body) or ``error``. load_klines sends all its requests
   before it reads an answer, and the worker loads them concurrently
3. harness → worker  ``result``, once

The messages and their fields are in protocol.py (and, for Go, in
pkg/executor/protocol.go). Every limit comes in the job: none is
defaulted here.

A frame body is each column's raw little-endian bytes, back to back, in
the order the frame header lists them, so numpy maps it without parsing.
User code never sees a database credential: only this socket.
"""

import base64
import datetime as _dt
import decimal
import io
import json
import linecache
import math
import mmap
import os
import resource
import signal
import socket
import struct
import sys
import traceback

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python -I leaves it out
import isolation  # noqa: E402
import protocol  # noqa: E402

USER_FILENAME = "<user_code>"
COLUMNS = [name for name, _ in protocol.FRAME_COLUMNS]  # df's, "time" last
MAX_CHUNK = 1 << 22
# The nice value a warm child takes once its result is sent (the zygote
# sets it; 0: none).
EXIT_NICE = 0


# ---------------------------------------------------------------- protocol

def recv_exact(sock, n, fresh=bytearray):
    """Read exactly n bytes into a fresh writable buffer (fresh(n))."""
    buf = fresh(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], min(n - got, MAX_CHUNK))
        if k == 0:
            raise EOFError("worker closed the channel")
        got += k
    return buf


def recv_msg(sock):
    """One message. A frame sent as a sealed memory file (a large one; the
    header's frame has "shm") has no body: the file follows, passed as a
    descriptor, and is mapped copy-on-write as the body, so user code may
    write to its DataFrame without touching the worker's copy."""
    (hlen,) = struct.unpack(">I", recv_exact(sock, 4))
    header = json.loads(bytes(recv_exact(sock, hlen)))
    (blen,) = struct.unpack(">Q", recv_exact(sock, 8))
    body = recv_exact(sock, blen, fresh_memory) if blen else bytearray()
    shm = (header.get("frame") or {}).get("shm")
    if shm:
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        if len(fds) != 1:
            raise EOFError("worker sent a shared frame without its file")
        try:
            body = mmap.mmap(fds[0], int(shm), flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            for fd in fds:
                os.close(fd)
    return header, body


def send_msg(sock, header, body=b""):
    h = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(h)) + h + struct.pack(">Q", len(body)))
    if body:
        sock.sendall(body)


# ------------------------------------------------------------ fresh memory

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
ARENA_MIN = 256 << 10  # smaller buffers come from malloc, whose pages are reused
ARENA_CHUNK = 8 << 20


class _Arena:
    """Fresh memory for a frame's body that comes inline (recv_msg; a
    frame of 4k-100k rows), in 2 MiB pages.

    A buffer numpy or bytearray allocates for a column of 100 000 rows is
    new memory, each of whose 4 KiB pages costs a page fault when first
    written. On a VM one costs 6-20 us: writing a column of a 100k-row
    frame took 2.5 ms of the 3 ms a freshly forked child spent building
    its DataFrame. Carved from a mapping the kernel backs with huge pages
    (MADV_HUGEPAGE), the same bytes cost one fault per 2 MiB: 20 such
    columns took 6 ms instead of 47. A chunk is unmapped once nothing
    carved from it is referenced. Each process has its own: a forked child
    starts anew (carving the parent's would copy its 2 MiB pages)."""

    def __init__(self):
        self.pid, self.view, self.off, self.end = 0, None, 0, 0

    def take(self, n):
        """A writable memoryview of n zeroed bytes: carved from a chunk
        (64-byte aligned) when n is ARENA_MIN or more."""
        if n < ARENA_MIN:
            return memoryview(bytearray(n))
        if self.pid != os.getpid() or self.end - self.off < n:
            size = max(ARENA_CHUNK, -(-n // HUGE_PAGE) * HUGE_PAGE)
            try:
                m = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            except OSError:  # the run's address space is nearly spent: no room to spare
                return memoryview(bytearray(n))
            try:
                m.madvise(MADV_HUGEPAGE)
            except OSError:
                pass  # 4 KiB pages then, as malloc's
            address = np.frombuffer(m, dtype=np.uint8, count=1).ctypes.data
            self.pid, self.view = os.getpid(), memoryview(m)
            self.off = -address % HUGE_PAGE
            self.end = self.off + size
        v = self.view[self.off:self.off + n]
        self.off += -(-n // 64) * 64
        return v


fresh_memory = _Arena().take


# ------------------------------------------------------------------ frames

_UTC = pd.DatetimeTZDtype(tz="UTC")


def frame_header(rows):
    """The header of a frame of rows candles, as the worker sends it."""
    return {"rows": rows, "columns": [{"name": n, "dtype": d} for n, d in protocol.FRAME_COLUMNS]}


def frame_to_df(header, body):
    """Build the documented DataFrame from a frame header and its body.
    Columns map the body's bytes (numpy.frombuffer), they are not parsed
    or copied: "time" too, whose nanoseconds come from the worker (in a
    large frame's memory file, or received into 2 MiB pages)."""
    n = int(header.get("rows", 0))
    offsets = header.get("offsets")  # a shared frame: where each column starts
    cols = {}
    off = 0
    for i, c in enumerate(header["columns"]):
        dt = np.dtype(c["dtype"])
        if offsets:
            off = int(offsets[i])
        if n:
            cols[c["name"]] = np.frombuffer(body, dtype=dt, count=n, offset=off)
        else:
            cols[c["name"]] = np.empty(0, dtype=dt)
        off += n * dt.itemsize
    missing = [name for name in COLUMNS if name not in cols]
    if missing:
        raise ValueError(f"protocol: a frame without the columns {missing}")
    cols = {name: cols[name] for name in COLUMNS}
    cols["start"] = cols["start"].astype("int64", copy=False)
    cols["trades"] = cols["trades"].astype("int64", copy=False)
    cols["time"] = _utc(cols["time"])
    return pd.DataFrame(cols, copy=False)


def _utc(ns):
    """datetime64[ns, UTC] of datetime64[ns] values, wrapped as they are:
    pandas' public constructors copy them (10M rows: 80 MB)."""
    try:
        return pd.arrays.DatetimeArray._simple_new(ns, dtype=_UTC)
    except (AttributeError, TypeError):  # another pandas: the public way
        return pd.to_datetime(ns, utc=True)


def make_loaders(sock):
    """The K-line functions user code gets: load_kline and load_klines."""

    def ask(exchange, symbol, binSize, start, end, limit):
        send_msg(sock, protocol.message(protocol.LOAD_KLINE, exchange=str(exchange), symbol=str(symbol),
                                        binSize=str(binSize), start=int(start), end=int(end), limit=int(limit)))

    def answer():
        header, body = recv_msg(sock)
        if header["type"] == protocol.ERROR:
            return ValueError(header["error"])
        return frame_to_df(header["frame"], body)

    def load_kline(exchange, symbol, binSize, start, end, limit=0):
        """Load another market's K-lines, in the same shape as df."""
        ask(exchange, symbol, binSize, start, end, limit)
        got = answer()
        if isinstance(got, Exception):
            raise got
        return got

    def load_klines(markets, binSize, start, end, limit=0):
        """Load many markets' K-lines at once, each in the same shape as
        df: markets is a list of (exchange, symbol) pairs; the result is a
        dict from each pair to its DataFrame, in the order asked. The
        worker loads them concurrently, so twenty markets cost far less
        than twenty load_kline calls. A market that cannot be loaded
        raises its error once all are in."""
        pairs = [(str(e), str(s)) for e, s in markets]
        for exchange, symbol in pairs:  # every request first: the worker works on them meanwhile
            ask(exchange, symbol, binSize, start, end, limit)
        got = [answer() for _ in pairs]
        for (exchange, symbol), g in zip(pairs, got):
            if isinstance(g, Exception):
                raise ValueError(f"{exchange}:{symbol}: {g}")
        return dict(zip(pairs, got))

    return {"load_kline": load_kline, "load_klines": load_klines}


# ----------------------------------------------------------------- results

def _key(k):
    if isinstance(k, str):
        return k
    v = to_jsonable(k)
    return v if isinstance(v, str) else json.dumps(v)


def to_jsonable(o):
    """Convert a result to plain JSON values: numpy scalars and arrays,
    pandas objects, NaN/Inf (→ None), datetimes (→ ISO 8601 strings)."""
    if o is None or isinstance(o, (bool, str)):
        return o
    if isinstance(o, int):
        return o
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is pd.NaT:
        return None
    if isinstance(o, np.generic):
        if isinstance(o, np.datetime64):
            return None if np.isnat(o) else pd.Timestamp(o).isoformat()
        if isinstance(o, np.timedelta64):
            return None if np.isnat(o) else pd.Timedelta(o).total_seconds()
        return to_jsonable(o.item())
    if isinstance(o, dict):
        return {_key(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        if o.dtype.kind in "Mm":
            return [to_jsonable(v) for v in o]
        return to_jsonable(o.tolist())
    if isinstance(o, pd.DataFrame):
        if not isinstance(o.index, pd.RangeIndex):
            o = o.reset_index()
        return [to_jsonable(r) for r in o.to_dict(orient="records")]
    if isinstance(o, pd.Series):
        if isinstance(o.index, pd.RangeIndex):
            return [to_jsonable(v) for v in o.tolist()]
        return {_key(k): to_jsonable(v) for k, v in o.items()}
    if isinstance(o, pd.Index):
        return [to_jsonable(v) for v in o.tolist()]
    if isinstance(o, (pd.Timestamp, _dt.datetime, _dt.date, _dt.time)):
        return o.isoformat()
    if isinstance(o, (pd.Timedelta, _dt.timedelta)):
        return o.total_seconds()
    if isinstance(o, decimal.Decimal):
        return to_jsonable(float(o))
    if isinstance(o, (bytes, bytearray)):
        return base64.b64encode(bytes(o)).decode()
    raise TypeError(f"result of type {type(o).__module__}.{type(o).__qualname__} cannot be converted to JSON")


# ------------------------------------------------------------------ images

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml", ".webp": "image/webp"}


def _mime_of(path):
    return _MIME.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


def collect_images(g, max_images, max_bytes, warnings):
    """Gather images from every form python-runner accepted, then open
    matplotlib figures; keep at most max_images of at most max_bytes each."""
    sources = []  # (name, mime, loader)

    def from_path(p):
        p = str(p)
        sources.append((os.path.basename(p) or p, _mime_of(p), lambda: open(p, "rb").read()))

    def from_b64(data, mime, name):
        sources.append((name, mime or "image/png", lambda: base64.b64decode(data, validate=True)))

    imgs = g.get("images")
    if imgs is not None:
        for i, it in enumerate(imgs if isinstance(imgs, (list, tuple)) else [imgs]):
            if isinstance(it, dict) and it.get("path"):
                from_path(it["path"])
            elif isinstance(it, dict) and it.get("data"):
                mime = it.get("mimeType") or it.get("mime_type") or "image/png"
                ext = {"image/jpeg": "jpg", "image/svg+xml": "svg"}.get(mime, mime.split("/")[-1])
                from_b64(it["data"], mime, it.get("name") or f"image-{i + 1}.{ext}")
            elif isinstance(it, (str, os.PathLike)):
                from_path(it)
            else:
                warnings.append(f"images[{i}] ignored: give {{'path': ...}} or {{'data': ..., 'mimeType': ...}}")
    if g.get("image_path"):
        from_path(g["image_path"])
    for p in g.get("image_paths") or []:
        from_path(p)
    b64 = g.get("image_base64")
    for i, d in enumerate([b64] if isinstance(b64, str) else (b64 or [])):
        from_b64(d, "image/png", f"image-base64-{i + 1}.png")

    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        for num in plt.get_fignums():
            fig = plt.figure(num)

            def render(fig=fig):
                buf = io.BytesIO()
                fig.savefig(buf, format="png", bbox_inches="tight")
                return buf.getvalue()
            sources.append((f"figure-{num}.png", "image/png", render))

    out = []
    for name, mime, load in sources:
        if not mime.startswith("image/"):  # as python-runner: only images are kept
            warnings.append(f"image {name} dropped: {mime} is not an image type")
            continue
        if len(out) >= max_images:
            warnings.append(f"image {name} dropped: only {max_images} images are kept")
            continue
        try:
            data = load()
        except FileNotFoundError:
            warnings.append(f"image {name} dropped: file not found")
            continue
        except Exception as e:  # bad base64, unreadable file, failing figure
            warnings.append(f"image {name} dropped: {type(e).__name__}: {e}")
            continue
        if len(data) > max_bytes:
            warnings.append(f"image {name} dropped: {len(data)} bytes is over the limit of {max_bytes} bytes")
            continue
        out.append({"name": name, "mimeType": mime, "data": base64.b64encode(data).decode()})
    if plt is not None:
        plt.close("all")
    return out


# --------------------------------------------------------------- execution

class RunTimeout(BaseException):
    """Raised inside user code when its time is up (a BaseException, so a
    bare ``except Exception`` in user code cannot swallow it)."""


def _on_alarm(signum, frame):
    raise RunTimeout()


def format_user_traceback(exc):
    """The traceback from the user's code down, without harness frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != USER_FILENAME:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def error_text(exc):
    msg = str(exc)
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def apply_limits(job):
    """Bound the run before user code starts (soft = hard: no raising them)."""
    for name, key, scale in (("RLIMIT_AS", "memoryBytes", 1), ("RLIMIT_FSIZE", "fileBytes", 1),
                             ("RLIMIT_NOFILE", "openFiles", 1), ("RLIMIT_NPROC", "processes", 1)):
        v = int(job.get(key) or 0)
        if v > 0 and hasattr(resource, name):
            try:
                resource.setrlimit(getattr(resource, name), (v * scale, v * scale))
            except (ValueError, OSError) as e:
                print(f"pyrunner: could not set {name}: {e}", file=sys.stderr)


def drop_privileges(job):
    """Run user code as the job's uid/gid (the worker sends them when it is
    root), after the limits are set and before any user code runs. The
    kernel clears the parent-death signal when the uid changes, so it is
    set again (and a parent that died in between is noticed)."""
    uid, gid = job.get("uid"), job.get("gid")
    ppid = os.getppid()
    if gid is not None and os.getgid() != gid:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None and os.getuid() != uid:
        os.setuid(uid)
    if job.get("isolate"):
        isolation.rearm_parent_death()
    elif ppid > 1:
        isolation.set_parent_death()
        if os.getppid() != ppid:
            os._exit(1)


def json_size(o):
    """The size of the JSON text of o (plain JSON values, as to_jsonable
    returns), counted without building it: a result of gigabytes is
    measured, and refused, in the memory it already has."""
    total = 0
    seen = {}
    stack = [o]
    while stack:
        v = stack.pop()
        if v is None or v is True:
            total += 4
        elif v is False:
            total += 5
        elif isinstance(v, str):
            n = seen.get(id(v)) if len(v) > 64 else None
            if n is None:
                if v.isascii() and v.isprintable() and '"' not in v and "\\" not in v:
                    n = len(v) + 2
                else:
                    n = len(json.dumps(v))
                if len(v) > 64:
                    seen[id(v)] = n
            total += n
        elif isinstance(v, (int, float)):
            total += len(repr(v)) if isinstance(v, int) else len(json.dumps(v))
        elif isinstance(v, dict):
            total += 1 + 2 * len(v) if v else 2  # braces, colons, commas
            for k, x in v.items():
                stack.append(k)
                stack.append(x)
        else:  # list
            total += 1 + len(v) if v else 2  # brackets, commas
            stack.extend(v)
    return total


def execute(job, df, loaders):
    """Run the job's code with df and loaders (make_loaders: the K-line
    functions, None for none); return the result message (never raises)."""
    code = job["code"]
    timeout = float(job["timeoutSec"])
    warnings = []
    g = {"__name__": "__main__", "__builtins__": __builtins__, "df": df, "pd": pd, "np": np,
         "load_kline": None, "load_klines": None, **(loaders or {})}
    linecache.cache[USER_FILENAME] = (len(code), None, code.splitlines(True), USER_FILENAME)
    ok, error, timed_out = True, None, False
    try:
        compiled = compile(code, USER_FILENAME, "exec")
        if timeout > 0:
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(compiled, g)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except RunTimeout:
        ok, error, timed_out = False, f"timeout after {job['timeoutSec']}s", True
    except SystemExit as e:
        if e.code not in (None, 0):
            ok, error = False, f"SystemExit: {e.code}"
    except BaseException as e:  # noqa: BLE001 - user code may raise anything
        ok, error = False, error_text(e)
        sys.stderr.write(format_user_traceback(e))
    result = None
    if ok:
        try:
            result = to_jsonable(g.get("result"))
        except BaseException as e:  # noqa: BLE001
            ok, error, result = False, f"result could not be converted to JSON: {error_text(e)}", None
    limit = int(job["maxResultBytes"])
    if ok and limit > 0:
        n = json_size(result)
        if n > limit:
            ok, error, result = False, f"result too large: {n} bytes (limit {limit})", None
    images = []
    try:
        images = collect_images(g, int(job["maxImages"]), int(job["maxImageBytes"]), warnings)
    except BaseException as e:  # noqa: BLE001
        warnings.append(f"images dropped: {error_text(e)}")
    return protocol.message(protocol.RESULT, ok=ok, error=error, timedOut=timed_out, result=result, images=images,
                            warnings=warnings)


def serve(sock):
    """Take one job from sock, run it, send the result."""
    job, body = recv_msg(sock)
    if job["type"] != protocol.JOB:
        raise ValueError(f"expected a job, got {job['type']!r}")
    if job.get("isolate"):
        isolation.enter(job)  # from here on: PID 1 of the run's own namespaces
    df = frame_to_df(job["frame"], body)
    del body
    apply_limits(job)
    drop_privileges(job)
    if job.get("isolate"):
        isolation.lock_down()
    msg = execute(job, df, make_loaders(sock))
    sys.stdout.flush()
    sys.stderr.flush()
    # Close the output before the result: the worker takes the two
    # together as the end of the run, without waiting for this process
    # (and its namespaces) to be torn down.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        send_msg(sock, msg)
    except (TypeError, ValueError) as e:  # a value to_jsonable let through
        send_msg(sock, protocol.message(protocol.RESULT, ok=False, timedOut=False, result=None, images=msg["images"],
                                        error=f"result could not be converted to JSON: {error_text(e)}",
                                        warnings=msg["warnings"]))
    if EXIT_NICE:  # what is left (the exit, its namespaces' teardown) is background work
        os.setpriority(os.PRIO_PROCESS, 0, EXIT_NICE)


def main():
    fd = int(os.environ.pop("PYRUNNER_CHANNEL_FD", "3"))
    sock = socket.socket(fileno=fd)
    try:
        serve(sock)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
