"""The client and the cell magic against a real pyrunner stack. e2e's
TestPythonClient starts the stacks, installs this package into a fresh
virtualenv and runs these tests with:

  PYRUNNER_TEST_URL       a stack without auth, with the e2e scripts
  PYRUNNER_TEST_AUTH_URL  a stack with JWT auth and PYRUNNER_TOKEN
  PYRUNNER_TEST_TOKENS    JSON: {"all": JWT *, "research": JWT research:run, "static": PYRUNNER_TOKEN}
  PYRUNNER_TEST_KERNEL    the Jupyter kernel of that virtualenv
"""

import json
import os
import time

import pytest

import pyrunner
from pyrunner import Client, PyrunnerError

URL = os.environ.get("PYRUNNER_TEST_URL")
pytestmark = pytest.mark.skipif(not URL, reason="needs a stack: run by e2e TestPythonClient (make test)")
DAY = {"exchange": "binance", "symbol": "BTCUSDT", "start": "2025-01-01 00:00:00", "end": "2025-01-02 00:00:00"}


def test_installed_not_the_source_tree():
    if os.environ.get("PYRUNNER_TEST_INSTALLED"):
        assert "site-packages" in pyrunner.__file__, pyrunner.__file__


def test_research_on_the_demo_data():
    r = Client(URL).research("result = len(df)", **DAY)
    assert r.raise_for_error().result == 1441
    assert r.meta["rows"] == 1441 and r.meta["worker"]


def test_a_failing_snippet_names_its_line():
    r = Client(URL).research("x = 1\ny = x / 0\n", **DAY)
    assert not r.ok and r.error == "ZeroDivisionError: division by zero" and "line 2" in r.stderr
    with pytest.raises(pyrunner.ResearchFailed, match="ZeroDivisionError"):
        r.raise_for_error()


def test_charts_are_png_images():
    r = Client(URL).research("import matplotlib.pyplot as plt\nplt.plot(df.close)\nresult = 1", bin_size="1h", **DAY)
    assert r.ok and r.images and r.images[0]._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_is_an_error_with_the_detail():
    with pytest.raises(PyrunnerError) as e:
        Client(URL).research("result = 1", bin_size="7q", **DAY)
    assert e.value.status == 400 and "binSize" in e.value.detail


def test_submit_wait_cancel():
    c = Client(URL)
    h = c.submit("result = int(df.close.count())", **DAY)
    assert h.wait(60).result == 1441
    slow = c.submit("import time\ntime.sleep(300)", timeout=600, **DAY)
    deadline = time.monotonic() + 60
    while c.research_run(slow.id).status != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    slow.cancel()
    r = slow.wait(60)
    assert r.status == "stopped" and not r.ok


def test_map_spreads_a_sweep_over_the_workers():
    params = [{"window": w} for w in range(2, 42)]
    c = Client(URL)
    began = time.monotonic()
    seen = {}
    code = "import time\ntime.sleep(0.2)\nresult = float(df.close.rolling(params['window']).mean().iloc[-1])"
    for p, r in c.map(code, params, concurrency=8, bin_size="1h", **DAY):
        r.raise_for_error()
        seen[p["window"]] = r.meta["worker"]
    parallel = time.monotonic() - began
    assert sorted(seen) == list(range(2, 42))
    assert len(set(seen.values())) == 2, f"one worker ran them all: {set(seen.values())}"
    began = time.monotonic()
    for p in params[:8]:
        code = pyrunner.with_params("import time\ntime.sleep(0.2)\nresult = params['window']", p)
        c.research(code, bin_size="1h", **DAY)
    serial = (time.monotonic() - began) * len(params) / 8
    print(f"\nmap: 40 runs in {parallel:.2f} s; one after another (8, scaled to 40): {serial:.2f} s")


def test_scripts_start_follow_stop():
    c = Client(URL)
    run = c.start("ticker.py")
    assert run.status == "running" and run.pid
    lines = ""
    for stream, text in c.follow(run.run_id, "stdout"):
        lines += text
        if "tick 3" in lines:
            break
    stopped = c.stop(run.run_id)
    assert stopped.status == "stopped" and stopped.ended
    # Following an ended run gives its tail, then ends.
    assert "tick 3" in "".join(text for _, text in c.follow(run.run_id, "stdout"))
    assert any(r.run_id == run.run_id for r in c.list(status="stopped", script="ticker.py"))
    assert "tick 3" in c.logs(run.run_id, stream="stdout")["stdout"]
    hello = c.start("hello.py", args=["a", "b"])
    out = "".join(text for stream, text in c.follow(hello.run_id) if stream == "stdout")
    assert out == "hello ['a', 'b']\n" and c.get(hello.run_id).status == "succeeded"


def test_restart_policy():
    c = Client(URL)
    # fail.py exits 3: restarted once, then given up on.
    run = c.start("fail.py", restart={"policy": "on-failure", "max_restarts": 1, "backoff_sec": 0.2})
    out = "".join(text for stream, text in c.follow(run.run_id) if stream == "stdout")
    end = c.get(run.run_id)
    assert end.status == "failed" and end.attempt == 2 and len(end.restarts) == 1, end
    assert end.restarts[0]["return_code"] == 3 and end.error.startswith("gave up after 1 restarts")
    assert out.count("failing") == 2 and "[pyrunner] attempt 2 starts" in out
    with pytest.raises(PyrunnerError) as e:
        c.start("fail.py", restart="sometimes")
    assert e.value.status == 400 and "restart.policy" in e.value.detail


def test_auth():
    auth_url = os.environ["PYRUNNER_TEST_AUTH_URL"]
    tokens = json.loads(os.environ["PYRUNNER_TEST_TOKENS"])
    for token, status, words in ((None, 401, "Missing bearer token"), ("not-a-token", 401, "Invalid token")):
        with pytest.raises(PyrunnerError) as e:
            Client(auth_url, token=token or "", retries=0).research("result = 1", **DAY)
        assert e.value.status == status and words in e.value.detail, e.value
    with pytest.raises(PyrunnerError) as e:
        Client(auth_url, token=tokens["research"]).list()
    assert e.value.status == 403 and "Insufficient scopes" in e.value.detail
    assert Client(auth_url, token=tokens["static"]).research("result = 7", **DAY).result == 7
    assert Client(auth_url, token=tokens["all"]).list(limit=1) is not None


def test_notebook_cell_magic(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_code_cell(f"%load_ext pyrunner\n%pyrunner_config url={URL}"),
        v4.new_code_cell("%%pyrunner --exchange binance --symbol BTCUSDT --bin-size 1h --start 2025-01-01 "
                         "--end 2025-01-02 -o r\nimport matplotlib.pyplot as plt\nprint('rows', len(df))\n"
                         "plt.plot(df.close)\nresult = {'rows': len(df)}"),
        v4.new_code_cell("print('next cell sees', r.result['rows'], _pyrunner.ok)"),
        v4.new_code_cell("%%pyrunner --symbol BTCUSDT --start 2025-01-01 --end 2025-01-02\nx = 1\ny = x / 0"),
    ])
    nbclient.NotebookClient(nb, kernel_name=os.environ.get("PYRUNNER_TEST_KERNEL", "python3"), timeout=180,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()

    def outputs(i, kind):
        return [o for o in nb.cells[i].outputs if o.output_type == kind]

    stdout = "".join(o.text for o in outputs(1, "stream") if o.name == "stdout")
    assert stdout.startswith("rows "), nb.cells[1].outputs
    assert any("image/png" in o.data for o in outputs(1, "display_data")), nb.cells[1].outputs
    rows = stdout.split()[1]
    assert "".join(o.text for o in outputs(2, "stream")) == f"next cell sees {rows} True\n"
    stderr = "".join(o.text for o in outputs(3, "stream") if o.name == "stderr")
    assert "ZeroDivisionError: division by zero" in stderr and "line 2" in stderr, stderr
