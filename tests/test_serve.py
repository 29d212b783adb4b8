"""The dashboard: in real headless Chromium (table, plot, a row's diff, filters, live update), tokens, read-only."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fakes import browser
from fakes.recorded import HOSTILE, TAG, record_session

from autoresearch.judge import Verdict
from autoresearch.ledger import Ledger
from autoresearch.records import Experiment
from autoresearch.report.serve import Dashboard

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy for 127.0.0.x


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    return record_session(tmp_path)


@contextmanager
def serving(board: Dashboard) -> Iterator[Dashboard]:
    thread = threading.Thread(target=board.serve_forever, daemon=True)
    thread.start()
    try:
        yield board
    finally:
        board.shutdown()
        thread.join(timeout=30)


@pytest.fixture
def dashboard(recorded: Path) -> Iterator[Dashboard]:
    with serving(Dashboard(recorded, port=0)) as board:
        yield board


def status_of(
    url: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with OPENER.open(request, timeout=30) as reply:
            if "text/event-stream" not in reply.headers.get("Content-Type", ""):
                reply.read()
            return reply.status, dict(reply.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def record_experiment(task: Path, description: str) -> int:
    """Another experiment in the session, as the engine would write it (pending, then judged)."""
    ledger = Ledger(task / ".autoresearch" / "ledger.db")
    session = ledger.session(TAG)
    new = ledger.next_experiment_id(session)
    ledger.begin(session, Experiment(new, Verdict.PENDING, None, description, commit="c" * 40,
                                     parent="p" * 40, agent="replay"))  # fmt: skip
    ledger.finish(
        session, new, Verdict.DISCARD, 30.0, "not better", {"score": 30.0}, 0.5
    )
    ledger.close()
    return new


def test_dashboard_in_a_real_browser(dashboard: Dashboard, recorded: Path, tmp_path: Path) -> None:
    with browser.Page(width=1280, height=1000) as page:
        page.goto(f"http://127.0.0.1:{dashboard.port}/")
        page.wait_for("document.querySelectorAll('#experiments tbody tr').length === 7")
        assert page.wait_for("document.getElementById('plot').naturalWidth") == 1600
        cells = page.js(
            "[...document.querySelectorAll('#experiments tbody tr')].map(r => r.cells[3].textContent)"
        )
        assert cells[5] == f"Y 2 -> 0 {HOSTILE}"
        assert (
            page.js("document.querySelectorAll('#experiments script, #experiments b').length") == 0
        )
        summary = page.js("document.getElementById('summary').textContent")
        assert "13.000000 → 2.000000" in summary and "-84.62% vs baseline" in summary

        page.js("document.querySelector('#experiments tr[data-id=\"5\"]').click()")
        diff = page.wait_for(
            "!document.getElementById('detail').hidden && "
            "document.getElementById('detail').dataset.id === '5' && "
            "document.getElementById('detail-diff').textContent"
        )
        assert "+Y = 0.0  # <img src=x onerror=alert(1)> \\u202e1 = Y" in diff and "-Y = 2.0" in diff
        assert page.js("document.querySelectorAll('#detail img').length") == 0
        assert "score: 2.000000" in page.js("document.getElementById('detail-log').textContent")
        page.screenshot(tmp_path / "dashboard.png")

        page.js("document.querySelector('#filters input[data-verdict=\"crash\"]').click()")
        shown = page.wait_for(
            "(() => { const v = [...document.querySelectorAll('#experiments tbody tr')]"
            ".map(r => r.dataset.verdict); return v.length === 5 && v; })()"
        )
        assert "crash" not in shown and shown.count("keep") == 2

        new = record_experiment(recorded, "recorded while the page is open")
        page.wait_for(f"document.querySelector('#experiments tr[data-id=\"{new}\"]') !== null")
        assert page.js("document.body.dataset.experiments") == "8"


def test_the_page_allows_only_its_own_script(dashboard: Dashboard) -> None:
    code, headers = status_of(f"http://127.0.0.1:{dashboard.port}/")
    assert code == 200
    policy = headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]


def test_read_only_and_rebinding_refused(dashboard: Dashboard) -> None:
    base = f"http://127.0.0.1:{dashboard.port}"
    for method in ("POST", "PUT", "DELETE"):
        assert status_of(base + "/api/sessions", method=method)[0] == 405
    assert status_of(base + "/", headers={"Host": "attacker.example"})[0] == 403
    assert status_of(base + "/api/sessions")[0] == 200
    assert status_of(base + "/api/sessions/nope")[0] == 404


def test_a_wildcard_bind_prints_this_machines_name(recorded: Path) -> None:
    """0.0.0.0 is no address a browser elsewhere can open; the URL names the machine."""
    import socket

    with serving(Dashboard(recorded, host="0.0.0.0", port=0)) as board:
        assert board.url == f"http://{socket.gethostname()}:{board.port}/?token={board.token}"
        code, _ = status_of(f"http://127.0.0.1:{board.port}/?token={board.token}",
                            headers={"Host": f"{socket.gethostname()}:{board.port}"})  # fmt: skip
        assert code == 200
        assert status_of(f"http://127.0.0.1:{board.port}/api/sessions")[0] == 403  # no token


def test_another_address_needs_the_token(recorded: Path) -> None:
    with serving(Dashboard(recorded, host="127.0.0.2", port=0)) as board:
        assert board.token and f"?token={board.token}" in board.url
        base = f"http://127.0.0.2:{board.port}"
        for path in (
            "/",
            "/app.js",
            "/api/sessions",
            f"/api/sessions/{TAG}",
            f"/plot/{TAG}.png",
            f"/api/sessions/{TAG}/experiments/1",
            f"/events?tag={TAG}",
        ):
            assert status_of(base + path)[0] == 403, path
            assert status_of(base + path + ("&" if "?" in path else "?") + "token=wrong")[0] == 403
        assert status_of(base + "/api/sessions?token=%C3%A9")[0] == 403  # non-ASCII: a 403 too
        code, headers = status_of(board.url)
        assert code == 200 and "HttpOnly" in headers["Set-Cookie"]
        cookie = headers["Set-Cookie"].split(";")[0]
        assert status_of(base + "/api/sessions", headers={"Cookie": cookie})[0] == 200
        bearer = {"Authorization": f"Bearer {board.token}"}
        assert status_of(base + f"/plot/{TAG}.png", headers=bearer)[0] == 200
        assert status_of(base + "/api/sessions", method="POST", headers=bearer)[0] == 405


def test_a_port_in_use_is_one_clear_error(recorded: Path) -> None:
    with serving(Dashboard(recorded, port=0)) as board:
        done = subprocess.run([sys.executable, "-m", "autoresearch", "-C", str(recorded), "serve", "--port",
                               str(board.port)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"cannot serve on 127.0.0.1:{board.port}: Address already in use; pick another --port" in done.stderr


def test_serve_command_prints_the_url_with_a_generated_token(recorded: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoresearch",
            "-C",
            str(recorded),
            "serve",
            "--host",
            "127.0.0.2",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.2:") and "/?token=" in url
        assert status_of(url)[0] == 200
        assert status_of(url.split("?")[0] + "api/sessions")[0] == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_running_experiment_shows_its_growing_log(dashboard: Dashboard, recorded: Path) -> None:
    ledger = Ledger(recorded / ".autoresearch" / "ledger.db")
    ledger.begin(ledger.session(TAG), Experiment(7, Verdict.PENDING, None, "still training",
                                                 commit="c" * 40, parent="p" * 40, agent="replay"))  # fmt: skip
    ledger.close()
    log = recorded / ".autoresearch" / "logs" / TAG / "0007-0.log"
    log.write_text("step 1 | loss 4.0\nstep 2 | loss 3.5\n")
    url = f"http://127.0.0.1:{dashboard.port}/api/sessions/{TAG}/experiments/7"
    with OPENER.open(url, timeout=30) as reply:
        row = json.loads(reply.read())
    assert row["verdict"] == "pending" and row["log_tail"].endswith("step 2 | loss 3.5")
    table = json.loads(OPENER.open(f"http://127.0.0.1:{dashboard.port}/api/sessions/{TAG}").read())
    assert table["experiments"][-1]["verdict"] == "pending"
    listed = json.loads(OPENER.open(f"http://127.0.0.1:{dashboard.port}/api/sessions").read())[0]
    done = sum(1 for r in table["experiments"] if r["verdict"] not in ("baseline", "pending"))
    assert (listed["experiments"], listed["experiments_text"]) == (done, f"{done} experiments (+ baseline)")


def test_a_folder_without_a_ledger_is_served_empty_and_left_alone(tmp_path: Path) -> None:
    with serving(Dashboard(tmp_path, port=0)) as board:
        base = f"http://127.0.0.1:{board.port}"
        assert json.loads(OPENER.open(base + "/api/sessions", timeout=30).read()) == []
        assert status_of(base + "/api/sessions/nope")[0] == 404
    assert not (tmp_path / ".autoresearch").exists()
