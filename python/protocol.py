"""The messages between the worker (Go) and pyrunner's Python side: their
names and their fields, in one place. pkg/executor/protocol.go is the one
Go side; its TestProtocolMirror fails when the two disagree.

A run's channel (harness.py) carries messages with a "type"; the zygote's
sockets (zygote.py) carry messages with an "op". Build every message with
message(), which refuses a field the protocol does not have and a missing
one it needs, so a change made on one side only fails loudly.
"""

# A run's channel.
JOB = "job"  # worker → harness, body = the df frame
LOAD_KLINE = "load_kline"  # harness → worker: user code called load_kline
FRAME = "frame"  # worker → harness: the frame it asked for, as body
ERROR = "error"  # worker → harness: why there is no frame
RESULT = "result"  # harness → worker, once: how the run ended

# The zygote's sockets.
READY = "ready"  # zygote → worker, once it has preloaded
STANDBY = "standby"  # zygote → worker: a ready child, its socket attached
FORK_FAILED = "fork_failed"  # zygote → worker: no child could be forked
EXIT = "exit"  # zygote → worker: a child ended (minus the signal if killed)
TOOK = "took"  # worker → zygote: that child has a run, fork another
RUN = "run"  # worker → child: the run, its descriptors attached

CHANNEL = (JOB, LOAD_KLINE, FRAME, ERROR, RESULT)

# Every message's fields; OPTIONAL are those the sender may leave out.
FIELDS = {
    JOB: ("type", "code", "timeoutSec", "maxImages", "maxImageBytes", "maxResultBytes", "memoryBytes",
          "fileBytes", "openFiles", "uid", "gid", "processes", "isolate", "frame"),
    LOAD_KLINE: ("type", "exchange", "symbol", "binSize", "start", "end", "limit"),
    FRAME: ("type", "frame"),
    ERROR: ("type", "error"),
    RESULT: ("type", "ok", "error", "timedOut", "result", "images", "warnings"),
    READY: ("op", "pid"),
    STANDBY: ("op", "pid"),
    FORK_FAILED: ("op", "error"),
    EXIT: ("op", "pid", "code"),
    TOOK: ("op", "pid"),
    RUN: ("op", "run", "dir", "env", "isolate"),
}
OPTIONAL = {
    JOB: ("uid", "gid", "processes", "isolate"),
    LOAD_KLINE: ("binSize", "limit"),  # as in a research request: 1m, and the server's maximum
    RUN: ("isolate",),
}
# A frame's columns on the wire, in df's order, each with its numpy dtype
# (pkg/frame's Columns). "time" is start in nanoseconds, written by the
# worker with the rest, so user code gets it without computing it.
FRAME_COLUMNS = (("start", "<i8"), ("open", "<f8"), ("high", "<f8"), ("low", "<f8"), ("close", "<f8"),
                 ("volume", "<f8"), ("turnover", "<f8"), ("trades", "<i8"), ("time", "<M8[ns]"))
# The fields of a job's (and a run's) "isolate".
ISOLATE_FIELDS = ("uid", "gid", "diskBytes")


def message(kind, **fields):
    """The message kind with fields (its "type" or "op" is set here)."""
    key = "type" if kind in CHANNEL else "op"
    fields[key] = kind
    allowed = FIELDS[kind]
    unknown = set(fields) - set(allowed)
    missing = set(allowed) - set(fields) - set(OPTIONAL.get(kind, ()))
    if unknown or missing:
        raise ValueError(f"protocol: {kind} message with unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    return fields


def mirror():
    """What TestProtocolMirror compares with the Go side."""
    return {"fields": FIELDS, "optional": OPTIONAL, "isolate": ISOLATE_FIELDS,
            "frameColumns": [{"name": n, "dtype": d} for n, d in FRAME_COLUMNS]}
