"""pyrunner's HTTP API from Python: research runs and script runs.

A :class:`Client` talks to one pyrunner API. Answers of 429 (a full queue,
a client backed off) and 503 (Redis away) are retried, honouring
``Retry-After``; any other error status raises :class:`PyrunnerError` with
the server's ``detail``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import requests

TimeLike = Union[int, float, str, _dt.datetime, _dt.date]

TERMINAL = ("succeeded", "failed", "stopped", "timeout", "terminated")


class PyrunnerError(Exception):
    """An error answer of the API: its HTTP status and the server's detail."""

    def __init__(self, status: int, detail: str, retry_after: Optional[float] = None):
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class ResearchFailed(Exception):
    """A research run that ended without ok (raise_for_error)."""

    def __init__(self, result: "ResearchResult"):
        super().__init__(result.error or result.status)
        self.result = result


def to_epoch(t: TimeLike) -> int:
    """Unix seconds of t: a number, a datetime (naive is UTC), a date, or a
    string holding unix seconds, an ISO date or time, or
    ``2006-01-02 15:04:05`` (UTC)."""
    if isinstance(t, bool):
        raise TypeError("a time, not a bool")
    if isinstance(t, (int, float)):
        return int(t)
    if isinstance(t, _dt.datetime):
        return int((t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)).timestamp())
    if isinstance(t, _dt.date):
        return int(_dt.datetime(t.year, t.month, t.day, tzinfo=_dt.timezone.utc).timestamp())
    s = str(t).strip()
    if s.lstrip("-").isdigit():
        return int(s)
    try:
        return to_epoch(_dt.datetime.fromisoformat(s.replace("Z", "+00:00")))
    except ValueError:
        raise ValueError(f"time {t!r}: give unix seconds, a datetime, or an ISO date/time such as 2025-01-01 00:00:00")


@dataclass
class Image:
    """A chart a run produced. Jupyter shows it (``_repr_png_``)."""

    name: str
    mime_type: str
    data: bytes

    def _repr_png_(self) -> Optional[bytes]:
        return self.data if self.mime_type == "image/png" else None

    def _repr_jpeg_(self) -> Optional[bytes]:
        return self.data if self.mime_type in ("image/jpeg", "image/jpg") else None

    def save(self, path: str) -> None:
        """Write the image's bytes to path."""
        with open(path, "wb") as f:
            f.write(self.data)


@dataclass
class ResearchResult:
    """A research run as the API answers it. ``finished`` is False while it
    runs (then only id and status are set)."""

    id: str
    status: str
    finished: bool
    ok: bool = False
    result: Any = None
    error: Optional[str] = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    meta: Dict[str, Any] = field(default_factory=dict)
    images: List[Image] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "ResearchResult":
        r = cls(id=body.get("id", ""), status=body.get("status", ""), finished="ok" in body, raw=dict(body))
        if r.finished:
            r.ok, r.result, r.error = bool(body["ok"]), body.get("result"), body.get("error")
            r.stdout, r.stderr = body.get("stdout") or "", body.get("stderr") or ""
            r.stdout_truncated = bool(body.get("stdoutTruncated"))
            r.stderr_truncated = bool(body.get("stderrTruncated"))
            r.meta = body.get("meta") or {}
            r.images = [Image(i.get("name", ""), i.get("mimeType", "image/png"), base64.b64decode(i.get("data", "")))
                        for i in body.get("images") or []]
        return r

    def raise_for_error(self) -> "ResearchResult":
        """Raise ResearchFailed unless the run finished with ok; return self."""
        if not (self.finished and self.ok):
            raise ResearchFailed(self)
        return self


@dataclass
class Run:
    """A run record of the script API (either kind)."""

    run_id: str
    status: str
    kind: str = "script"
    script: Optional[str] = None
    argv: List[str] = field(default_factory=list)
    pid: Optional[int] = None
    return_code: Optional[int] = None
    error: Optional[str] = None
    worker: Optional[str] = None
    created_at: Optional[str] = None
    started_at: Optional[str] = None
    finished_at: Optional[str] = None
    #: the run's current (or last) start: 1 unless a restart policy started it again
    attempt: int = 1
    #: the attempts that ended and were followed by another (attempt, at, reason, return_code, delay_sec)
    restarts: List[Dict[str, Any]] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Run":
        keys = ("kind", "script", "pid", "return_code", "error", "worker", "created_at", "started_at", "finished_at",
                "attempt", "restarts")
        return cls(run_id=body["run_id"], status=body["status"], argv=body.get("argv") or [], raw=dict(body),
                   **{k: body.get(k) for k in keys if body.get(k) is not None})

    @property
    def ended(self) -> bool:
        """Whether the run has a final status."""
        return self.status in TERMINAL


class Client:
    """A client of one pyrunner API.

    url and token default to ``$PYRUNNER_URL`` (else http://127.0.0.1:9000)
    and ``$PYRUNNER_TOKEN``, as the CLI's do. retries is how many times a
    429 or 503 answer is retried (after ``Retry-After``, else backoff
    seconds doubling).
    """

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, *, retries: int = 5,
                 backoff: float = 0.5, timeout: float = 120.0):
        self.url = (url or os.environ.get("PYRUNNER_URL") or "http://127.0.0.1:9000").rstrip("/")
        self.token = token if token is not None else os.environ.get("PYRUNNER_TOKEN") or None
        self.retries, self.backoff, self.timeout = retries, backoff, timeout
        self._local = threading.local()

    # ------------------------------------------------------------ plumbing

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _headers(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method: str, path: str, body: Any = None, ok: Sequence[int] = (200,),
                 params: Optional[Mapping[str, Any]] = None, stream: bool = False) -> requests.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            resp = self._session().request(method, self.url + path, json=body, params=params, headers=self._headers(),
                                           timeout=self.timeout, stream=stream)
            if resp.status_code in ok:
                return resp
            err = _error_of(resp)
            if resp.status_code not in (429, 503) or attempt >= self.retries:
                raise err
            time.sleep(err.retry_after or delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _json(self, method: str, path: str, body: Any = None, ok: Sequence[int] = (200,),
              params: Optional[Mapping[str, Any]] = None) -> Any:
        return self._request(method, path, body, ok, params).json()

    # ------------------------------------------------------------ research

    @staticmethod
    def _research_body(code: str, exchange: str, symbol: str, bin_size: str, start: TimeLike, end: TimeLike,
                       limit: int, timeout: Optional[int]) -> Dict[str, Any]:
        body: Dict[str, Any] = {"exchange": exchange, "symbol": symbol, "binSize": bin_size, "start": to_epoch(start),
                                "end": to_epoch(end), "code": code}
        if limit:
            body["limit"] = int(limit)
        if timeout:
            body["timeoutSec"] = int(timeout)
        return body

    def research(self, code: str, *, exchange: str = "binance", symbol: str, bin_size: str = "1m",
                 start: TimeLike, end: TimeLike, limit: int = 0, timeout: Optional[int] = 30) -> ResearchResult:
        """Run research code on the K-lines of exchange/symbol/bin_size from
        start to end (``df``), and wait for its result."""
        body = self._research_body(code, exchange, symbol, bin_size, start, end, limit, timeout)
        r = ResearchResult.from_json(self._json("POST", "/v1/research/run", body, ok=(200, 202)))
        while not r.finished:  # past the API's wait cap: go on waiting
            r = self.research_run(r.id, wait=60)
        return r

    def submit(self, code: str, *, exchange: str = "binance", symbol: str, bin_size: str = "1m",
               start: TimeLike, end: TimeLike, limit: int = 0, timeout: Optional[int] = 30) -> "ResearchHandle":
        """Queue research code and return at once: a handle to wait on."""
        body = self._research_body(code, exchange, symbol, bin_size, start, end, limit, timeout)
        out = self._json("POST", "/v1/research/run", body, ok=(202,), params={"wait": "false"})
        return ResearchHandle(self, out["id"])

    def research_run(self, run_id: str, wait: float = 0) -> ResearchResult:
        """Read a research run, waiting up to wait seconds for it to finish."""
        params = {"wait": wait} if wait else None
        return ResearchResult.from_json(self._json("GET", f"/v1/research/runs/{run_id}", ok=(200, 202), params=params))

    def cancel(self, run_id: str) -> ResearchResult:
        """Stop a research run (dropped if still queued)."""
        return ResearchResult.from_json(self._json("POST", f"/v1/research/runs/{run_id}/cancel", ok=(200, 202)))

    def markets(self) -> List[Dict[str, Any]]:
        """The K-line markets the workers' database has."""
        return self._json("GET", "/v1/research/markets")["markets"]

    def map(self, code: str, params: Sequence[Mapping[str, Any]], *, concurrency: int = 8,
            **market: Any) -> Iterator[Tuple[Mapping[str, Any], ResearchResult]]:
        """Run code once per parameter set (the code sees it as ``params``),
        each on whichever worker is free, up to concurrency at a time; yield
        (params, result) as each finishes. market is research()'s keywords."""
        def one(p: Mapping[str, Any]) -> ResearchResult:
            return self.research(with_params(code, p), **market)

        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = {pool.submit(one, p): p for p in params}
            for f in as_completed(futures):
                yield futures[f], f.result()

    # ------------------------------------------------------------ scripts

    def start(self, script: str, args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
              duplicate: bool = False, timeout: int = 0,
              restart: Union[None, str, Mapping[str, Any]] = None) -> Run:
        """Start a script; returns its record once a worker runs it.

        restart is its restart policy: ``"on-failure"`` or ``"always"``, or
        the whole object, e.g. ``{"policy": "on-failure", "max_restarts": 5,
        "window_sec": 600, "backoff_sec": 1, "max_backoff_sec": 60}``."""
        body: Dict[str, Any] = {"script": script, "args": list(args), "env": dict(env or {}), "duplicate": duplicate}
        if timeout:
            body["timeout_sec"] = int(timeout)
        if isinstance(restart, str):
            body["restart"] = {"policy": restart}
        elif restart is not None:
            body["restart"] = dict(restart)
        return Run.from_json(self._json("POST", "/v1/runs", body))

    def get(self, run_id: str) -> Run:
        """One run record."""
        return Run.from_json(self._json("GET", f"/v1/runs/{run_id}"))

    def list(self, status: Optional[str] = None, script: Optional[str] = None, kind: Optional[str] = None,
             limit: int = 0) -> List[Run]:
        """Runs, newest first (every page)."""
        params: Dict[str, Any] = {k: v for k, v in (("status", status), ("script", script), ("kind", kind)) if v}
        if limit:
            params["limit"] = limit
        runs: List[Run] = []
        while True:
            page = self._json("GET", "/v1/runs", params=params)
            runs += [Run.from_json(r) for r in page["runs"]]
            if not page.get("next_cursor") or (limit and len(runs) >= limit):
                return runs[:limit] if limit else runs
            params["cursor"] = page["next_cursor"]

    def stop(self, run_id: str) -> Run:
        """Stop a script: SIGTERM, the grace, then SIGKILL."""
        return Run.from_json(self._json("POST", f"/v1/runs/{run_id}/stop"))

    def stop_all(self) -> Dict[str, Any]:
        """Stop every active script."""
        return self._json("POST", "/v1/runs/stop_all")

    def logs(self, run_id: str, stream: str = "both", tail_bytes: int = 65536) -> Dict[str, str]:
        """The end of a run's kept output, by stream."""
        out = self._json("GET", f"/v1/runs/{run_id}/logs", params={"stream": stream, "tail_bytes": tail_bytes})
        return {k: out[k] for k in ("stdout", "stderr") if out.get(k) is not None}

    def follow(self, run_id: str, stream: str = "both") -> Iterator[Tuple[str, str]]:
        """Yield (stream, text) as the run writes output, until it ends."""
        resp = self._request("GET", f"/v1/runs/{run_id}/logs", params={"stream": stream, "follow": "true"}, stream=True)
        event, data = "", []
        with resp:
            for line in resp.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    data.append(line[len("data: "):])
                elif line == "" and event:
                    if event == "end":
                        return
                    yield event, "\n".join(data)
                    event, data = "", []

    def health(self) -> Dict[str, Any]:
        """GET /health."""
        return self._json("GET", "/health")


class ResearchHandle:
    """A submitted research run."""

    def __init__(self, client: Client, run_id: str):
        self.client, self.id = client, run_id

    def wait(self, timeout: Optional[float] = None) -> ResearchResult:
        """Wait for the run to finish (up to timeout seconds; None: as long
        as it takes) and return it, finished or not."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 60.0 if deadline is None else max(0.0, deadline - time.monotonic())
            r = self.client.research_run(self.id, wait=min(60.0, left) or 0)
            if r.finished or (deadline is not None and time.monotonic() >= deadline):
                return r

    def cancel(self) -> ResearchResult:
        """Stop the run."""
        return self.client.cancel(self.id)


def with_params(code: str, params: Mapping[str, Any]) -> str:
    """code with ``params`` defined, on its first line where it can be (so
    a traceback's line numbers are the code's own)."""
    define = f"params = __import__('json').loads({json.dumps(json.dumps(params))})"
    first, _, rest = code.partition("\n")
    stripped = first.strip()
    compound = stripped.endswith(":") or stripped.startswith(("@", "from __future__"))
    if stripped and not first[0].isspace() and not compound and not stripped.startswith("#"):
        return f"{define}; {first}\n{rest}" if rest or code.endswith("\n") else f"{define}; {first}"
    return f"{define}\n{code}"


def _error_of(resp: requests.Response) -> PyrunnerError:
    try:
        detail = resp.json().get("detail")
    except ValueError:
        detail = None
    if not isinstance(detail, str):
        detail = resp.text.strip() or resp.reason
    retry = resp.headers.get("Retry-After")
    try:
        after = float(retry) if retry else None
    except ValueError:
        after = None
    return PyrunnerError(resp.status_code, detail, after)
