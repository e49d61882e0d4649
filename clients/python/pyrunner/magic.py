"""The IPython extension: ``%load_ext pyrunner``, then

    %%pyrunner --exchange binance --symbol BTCUSDT --bin-size 1h \
               --start 2025-01-01 --end 2025-02-01 [--timeout 60] [-o name]

sends the cell to pyrunner as research code (``df`` is those K-lines),
prints its stdout and stderr, shows its charts under the cell, shows the
error and the traceback (its lines are the cell's) when it fails, and
stores the result object in ``name`` and ``_pyrunner``.
``%pyrunner_config url=... token=...`` points the magic at an API.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any, Dict, Optional

from .client import Client, ResearchResult

_config: Dict[str, Optional[str]] = {"url": None, "token": None}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="%%pyrunner", add_help=False)
    p.add_argument("--exchange", default="binance")
    p.add_argument("--symbol", required=True)
    p.add_argument("--bin-size", default="1m")
    p.add_argument("--start", required=True)
    p.add_argument("--end", required=True)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--timeout", type=int, default=30)
    p.add_argument("-o", "--out", default=None, help="the variable that gets the result object")
    return p


def client() -> Client:
    """The client the magics use (``%pyrunner_config``, else the environment)."""
    return Client(_config["url"], _config["token"])


def run_cell(line: str, cell: str, shell: Any = None) -> Optional[ResearchResult]:
    """The body of ``%%pyrunner``: run cell with the options on line."""
    try:
        opts = _parser().parse_args(shlex.split(line))
    except SystemExit:  # argparse has printed the usage
        return None
    r = client().research(cell, exchange=opts.exchange, symbol=opts.symbol, bin_size=opts.bin_size,
                          start=opts.start, end=opts.end, limit=opts.limit, timeout=opts.timeout)
    if r.stdout:
        sys.stdout.write(r.stdout)
    if r.stderr:
        sys.stderr.write(r.stderr)
    if r.stdout_truncated or r.stderr_truncated:
        print("[pyrunner: output truncated]", file=sys.stderr)
    if not r.ok:
        print(f"pyrunner: {r.error} (run {r.id}, status {r.status})", file=sys.stderr)
    if r.images:
        try:
            from IPython.display import display
        except ImportError:  # not in IPython: nothing to show the charts in
            pass
        else:
            for img in r.images:
                display(img)
    if shell is not None:
        shell.user_ns["_pyrunner"] = r
        if opts.out:
            shell.user_ns[opts.out] = r
    return r


def config(line: str) -> None:
    """The body of ``%pyrunner_config url=... token=...``."""
    for word in shlex.split(line):
        key, sep, value = word.partition("=")
        if not sep or key not in _config:
            print(f"pyrunner_config: expected url=... or token=..., not {word!r}", file=sys.stderr)
            return
        _config[key] = value or None
    print(f"pyrunner: {client().url}" + (" (with a token)" if client().token else ""))


def load_ipython_extension(ipython: Any) -> None:
    """Register %%pyrunner and %pyrunner_config (``%load_ext pyrunner``)."""
    ipython.register_magic_function(lambda line, cell: run_cell(line, cell, ipython) and None,
                                    magic_kind="cell", magic_name="pyrunner")
    ipython.register_magic_function(config, magic_kind="line", magic_name="pyrunner_config")
