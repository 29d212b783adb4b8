"""``autoresearch serve``: a local, read-only dashboard of a task folder's sessions.

The standard library's ``ThreadingHTTPServer`` is enough for a page, a few JSON endpoints,
a PNG and one server-sent-event stream per open tab, and it adds no dependency to audit.
It answers GET only; nothing it serves changes a session.

Access: bound to 127.0.0.1 (or localhost, ::1) it serves anyone on this machine (unless
``token`` is given); bound to any other address, 127.0.0.2 included, it needs a token (generated when none is given, printed in
the URL). A request carries it as ``?token=``, an ``Authorization: Bearer`` header or the
cookie the first authorised request sets; without it the answer is 403. The Host header must
name the bound address or localhost (a page elsewhere cannot rebind its domain to us). Every
ledger string reaches the page as JSON and is inserted with ``textContent``; the page's
Content-Security-Policy allows only this server's script.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from autoresearch.errors import AutoresearchError, LedgerError
from autoresearch.report import html
from autoresearch.report._data import Experiment, Store, Verdict, log_dir
from autoresearch.report.text import experiments_text, terminal_text

COOKIE = "autoresearch_token"
POLL_SECONDS = 1.0  # how often an event stream looks at the ledger
HEARTBEAT_SECONDS = 15.0
LOG_TAIL_BYTES = 16 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # every address of this machine


def is_local(host: str) -> bool:
    """The default addresses, served without a token; any other address needs one."""
    return host.strip("[]").lower() in LOCAL_HOSTS


class Dashboard:
    """The dashboard server for the task folder ``task_root``."""

    def __init__(
        self,
        task_root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
    ) -> None:
        self.store = Store(task_root)
        self.task_root = task_root
        self.token = token or (None if is_local(host) else secrets.token_urlsafe(24))
        self.host = host
        self._plots: dict[str, tuple[Any, bytes]] = {}
        self._plot_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.stopping = threading.Event()

    @property
    def url(self) -> str:
        """The address to open: for a wildcard bind (0.0.0.0, ::), this machine's name, since
        the wildcard is not an address a browser elsewhere can reach."""
        host = socket.gethostname() if self.host in WILDCARD_HOSTS else self.host
        shown = f"[{host}]" if ":" in host else host
        query = f"/?token={self.token}" if self.token else "/"
        return f"http://{shown}:{self.port}{query}"

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.2)
        finally:
            self.stopping.set()
            self.httpd.server_close()

    def shutdown(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()

    # --- what the endpoints return ----------------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        if not self.store.exists():
            return []
        found = []
        for session in reversed(self.store.sessions()):
            history = self.store.history(session)
            best = history.best
            found.append(
                {
                    "tag": session.tag,
                    "status": session.state,
                    "alive": session.alive,
                    "metric": session.metric,
                    "experiments": len(history.done),  # as every view counts them
                    "experiments_text": experiments_text(history),
                    "best": best.metric if best else None,
                    "created": session.created,
                }
            )
        return found

    def session(self, tag: str) -> dict[str, Any]:
        session = self.store.session(tag)
        rows = self.store.experiments(tag)
        history = self.store.history(session, rows)
        return {
            "tag": session.tag,
            "branch": session.branch,
            "metric": session.metric,
            "direction": session.direction,
            "status": session.state,
            "alive": session.alive,
            "stop_reason": session.stop_reason,
            "version": _version_text(self.store.version(tag)),
            "summary": html.summary_rows(session, history),
            "commands": html.commands(session),
            "verdicts": [str(v) for v in Verdict if history.counts.get(v)],
            "experiments": [_row_json(r) for r in rows],
        }

    def experiment(self, tag: str, experiment_id: int) -> dict[str, Any]:
        row = self.store.experiment(tag, experiment_id)
        tail = row.runs[-1].log_tail if row.runs else ""
        if row.verdict is Verdict.PENDING:
            tail = self._running_tail(tag, experiment_id) or tail
        return {
            **_row_json(row),
            "rationale": row.rationale,
            "diff": row.diff,
            "log_tail": tail,
            "runs": [
                {
                    "index": r.index,
                    "seed": r.seed,
                    "status": r.status,
                    "metric": r.metric,
                    "seconds": r.seconds,
                    "check_seconds": r.check_seconds,
                    "evaluate_seconds": r.evaluate_seconds,
                    "reason": r.reason,
                }
                for r in row.runs
            ],
        }

    def _running_tail(self, tag: str, experiment_id: int) -> str:
        """The end of the newest log of a running experiment (paths built here, never taken)."""
        try:
            logs = sorted(
                log_dir(self.task_root, tag).glob(f"{experiment_id:04d}-*.log"),
                key=lambda p: p.stat().st_mtime,
            )
            if not logs:
                return ""
            with logs[-1].open("rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(0, size - LOG_TAIL_BYTES))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:  # the run moved on between listing and reading
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-60:])

    def plot(self, tag: str) -> bytes:
        from autoresearch.report import plot

        version = self.store.version(tag)
        with self._plot_lock:  # matplotlib draws one figure at a time here
            cached = self._plots.get(tag)
            if cached is not None and cached[0] == version:
                return cached[1]
            session = self.store.session(tag)
            png = plot.progress_png(session, self.store.history(session))
            self._plots[tag] = (version, png)
            return png

    def version(self, tag: str) -> str:
        return _version_text(self.store.version(tag))


def _version_text(version: Any) -> str:
    import hashlib

    return hashlib.sha256(repr(version).encode()).hexdigest()[:16]


def _row_json(row: Experiment) -> dict[str, Any]:
    return {
        "id": row.id,
        "verdict": str(row.verdict),
        "metric": row.metric,
        "description": row.description,
        "reason": row.reason,
        "commit": row.commit[:10],
        "agent": row.agent,
        "started": row.started,
        "finished": row.finished,
    }


# --- HTTP ------------------------------------------------------------------------------------

_EXPERIMENT = re.compile(r"^/api/sessions/([^/]+)/experiments/(\d+)$")
_SESSION = re.compile(r"^/api/sessions/([^/]+)$")
_PLOT = re.compile(r"^/plot/([^/]+)\.png$")


def _handler(board: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        dashboard = board

    return Handler



def _same(offered: str, token: str) -> bool:
    """A constant-time comparison that takes any text (str compare_digest refuses non-ASCII)."""
    return hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), token.encode())


class _Handler(BaseHTTPRequestHandler):
    dashboard: Dashboard
    server_version = "autoresearch"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal is the user's
        return None

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if not self._host_ok():
            return self._refuse(HTTPStatus.FORBIDDEN, "unexpected Host header")
        query = parse_qs(url.query)
        if not self._authorised(query):
            return self._refuse(HTTPStatus.FORBIDDEN, "a valid token is required (?token=...)")
        try:
            self._route(url.path, query)
        except (LedgerError, KeyError) as exc:
            self._send_json({"error": str(exc)}, HTTPStatus.NOT_FOUND)
        except AutoresearchError as exc:
            self._send_json({"error": str(exc)}, HTTPStatus.INTERNAL_SERVER_ERROR)
        except (BrokenPipeError, ConnectionResetError):
            return None

    def do_HEAD(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, "GET only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD  # read-only

    # --- checks -------------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        board = self.dashboard
        return host in (*LOCAL_HOSTS, board.host.strip("[]").lower()) or (
            board.token is not None and host != ""  # a token makes any name safe to answer
        )

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        token = self.dashboard.token
        if token is None:
            return True
        offered = [*query.get("token", []), self._cookie(), self._bearer()]
        self._grant_cookie = any(_same(o, token) for o in query.get("token", []))
        return any(o and _same(o, token) for o in offered)

    def _cookie(self) -> str:
        try:
            jar = SimpleCookie(self.headers.get("Cookie") or "")
        except CookieError:
            return ""
        return jar[COOKIE].value if COOKIE in jar else ""

    def _bearer(self) -> str:
        auth = self.headers.get("Authorization") or ""
        return auth[7:].strip() if auth.lower().startswith("bearer ") else ""

    # --- routes -------------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        board = self.dashboard
        routes: list[tuple[re.Pattern[str], Callable[[re.Match[str]], None]]] = [
            (_EXPERIMENT, lambda m: self._send_json(board.experiment(unquote(m[1]), int(m[2])))),
            (_SESSION, lambda m: self._send_json(board.session(unquote(m[1])))),
            (_PLOT, lambda m: self._send(board.plot(unquote(m[1])), "image/png")),
        ]
        if path == "/":
            return self._send(PAGE.encode(), "text/html; charset=utf-8")
        if path == "/app.js":
            return self._send(APP_JS.encode(), "text/javascript; charset=utf-8")
        if path == "/api/sessions":
            return self._send_json(board.sessions())
        if path == "/events":
            return self._events(query.get("tag", [""])[0])
        for pattern, answer in routes:
            match = pattern.match(path)
            if match:
                return answer(match)
        self._send_json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def _events(self, tag: str) -> None:
        """Server-sent events: ``update`` whenever session ``tag`` changes in the ledger."""
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self._common_headers()
        self.end_headers()
        board, last, beat = self.dashboard, "", time.monotonic()
        while not board.stopping.is_set():
            try:
                version = board.version(tag) if tag else ""
            except LedgerError:
                version = ""
            if version != last:
                self.wfile.write(f"event: update\ndata: {json.dumps(version)}\n\n".encode())
                self.wfile.flush()
                last, beat = version, time.monotonic()
            elif time.monotonic() - beat > HEARTBEAT_SECONDS:
                self.wfile.write(b": still here\n\n")
                self.wfile.flush()
                beat = time.monotonic()
            board.stopping.wait(POLL_SECONDS)

    # --- answers ------------------------------------------------------------------------------

    def _common_headers(self) -> None:
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        if getattr(self, "_grant_cookie", False) and self.dashboard.token:
            self.send_header(
                "Set-Cookie", f"{COOKIE}={self.dashboard.token}; HttpOnly; SameSite=Strict; Path=/"
            )

    def _send(self, body: bytes, kind: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(_shown(value), default=str).encode(), "application/json", status)

    def _refuse(self, status: HTTPStatus, why: str) -> None:
        self._grant_cookie = False
        self._send(
            f"{status.value} {status.phrase}: {why}\n".encode(), "text/plain; charset=utf-8", status
        )


# --- the page ----------------------------------------------------------------------------------

PAGE = html.page(
    "autoresearch dashboard",
    """<h1>autoresearch <span id=tag class=muted></span></h1>
<p><label>session <select id=sessions></select></label> <span id=state class=muted></span></p>
<div id=summary></div>
<img id=plot class=plot alt="progress plot">
<h2>Experiments</h2>
<p id=filters></p>
<table id=experiments><thead><tr><th class=num>#</th><th>verdict</th><th class=num>metric</th>
<th>description</th><th>reason</th></tr></thead><tbody></tbody></table>
<div id=detail hidden><h2 id=detail-title></h2><p id=detail-meta class=muted></p>
<p id=detail-rationale></p><pre id=detail-diff class=diff></pre><h3>log tail</h3>
<pre id=detail-log class=diff></pre></div>
<h2>Review and adopt</h2><ul id=commands></ul>""",
    csp=CSP,
    head='<script src="/app.js" defer></script><style>tr.row { cursor: pointer; } '
    "tr.row:hover td { background: #eef4ff; } tr.open td { background: #dde9ff; } "
    "#filters label { margin-right: 1em; }</style>",
)

APP_JS = r"""
"use strict";
const state = { tag: "", data: null, hidden: new Set(), source: null };

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
async function getJSON(url) {
  const reply = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (!reply.ok) throw new Error(url + ": " + reply.status);
  return reply.json();
}
const fmt = (v) => (v === null || v === undefined ? "-" : Number(v).toFixed(6));
const enc = encodeURIComponent;

async function loadSessions() {
  const sessions = await getJSON("/api/sessions");
  const select = document.getElementById("sessions");
  select.replaceChildren(...sessions.map((s) =>
    el("option", { value: s.tag }, `${s.tag} (${s.experiments_text}, ${s.status})`)));
  const wanted = new URLSearchParams(location.hash.slice(1)).get("tag");
  state.tag = sessions.some((s) => s.tag === wanted) ? wanted : (sessions[0] ? sessions[0].tag : "");
  select.value = state.tag;
  select.onchange = () => { state.tag = select.value; setHash({ tag: state.tag }); follow(); };
  if (state.tag) follow(); else document.getElementById("state").textContent = "no sessions yet";
}
function setHash(values) {
  const params = new URLSearchParams(location.hash.slice(1));
  for (const [k, v] of Object.entries(values)) { if (v === null) params.delete(k); else params.set(k, v); }
  location.hash = params.toString();
}
function follow() {
  if (state.source) state.source.close();
  refresh();
  state.source = new EventSource("/events?tag=" + enc(state.tag));
  state.source.addEventListener("update", () => refresh());
}
async function refresh() {
  const data = await getJSON("/api/sessions/" + enc(state.tag));
  state.data = data;
  document.getElementById("tag").textContent = "· " + data.tag;
  document.getElementById("state").textContent =
    `${data.metric} (${data.direction}) · branch ${data.branch} · ${data.status}` +
    (data.stop_reason ? " — " + data.stop_reason : "");
  const summary = el("table");
  for (const [k, v] of data.summary) { const tr = el("tr"); tr.append(el("th", {}, k), el("td", {}, v)); summary.append(tr); }
  document.getElementById("summary").replaceChildren(summary);
  document.getElementById("plot").src = "/plot/" + enc(data.tag) + ".png?v=" + enc(data.version);
  renderFilters(); renderTable(); renderCommands(); openFromHash();
  document.body.dataset.version = data.version;
  document.body.dataset.experiments = String(data.experiments.length);
}
function renderFilters() {
  const box = document.getElementById("filters");
  box.replaceChildren(...state.data.verdicts.map((v) => {
    const input = el("input", { type: "checkbox", "data-verdict": v });
    input.checked = !state.hidden.has(v);
    input.onchange = () => { if (input.checked) state.hidden.delete(v); else state.hidden.add(v); renderTable(); };
    const label = el("label"); label.append(input, " " + v); return label;
  }));
}
function renderTable() {
  const open = new URLSearchParams(location.hash.slice(1)).get("exp");
  const rows = state.data.experiments.filter((r) => !state.hidden.has(r.verdict)).map((r) => {
    const tr = el("tr", { class: "row" + (String(r.id) === open ? " open" : ""), "data-id": r.id, "data-verdict": r.verdict });
    tr.append(el("td", { class: "num" }, r.id), el("td", { class: "v-" + r.verdict }, r.verdict),
      el("td", { class: "num" }, fmt(r.metric)), el("td", {}, r.description),
      el("td", { class: "muted" }, ["keep", "baseline"].includes(r.verdict) ? "" : r.reason));
    tr.onclick = () => setHash({ tag: state.tag, exp: r.id });
    return tr;
  });
  document.querySelector("#experiments tbody").replaceChildren(...rows);
}
function renderCommands() {
  document.getElementById("commands").replaceChildren(...state.data.commands.map(([what, cmd]) => {
    const li = el("li", {}, what + ": "); li.append(el("code", { class: "cmd" }, cmd)); return li;
  }));
}
function diffLines(text) {
  return text.split("\n").map((line) => {
    let cls = "d-ctx";
    if (/^(\+\+\+|---|diff --git|index )/.test(line)) cls = "d-file";
    else if (line.startsWith("+")) cls = "d-add";
    else if (line.startsWith("-")) cls = "d-del";
    else if (line.startsWith("@@")) cls = "d-hunk";
    return el("span", { class: cls }, line || " ");
  });
}
async function openFromHash() {
  const id = new URLSearchParams(location.hash.slice(1)).get("exp");
  const box = document.getElementById("detail");
  if (id === null || !state.tag) { box.hidden = true; return; }
  const row = await getJSON(`/api/sessions/${enc(state.tag)}/experiments/${enc(id)}`);
  document.getElementById("detail-title").textContent = `#${row.id}: ${row.description}`;
  document.getElementById("detail-meta").textContent =
    `${row.verdict} · ${fmt(row.metric)} · commit ${row.commit || "-"} · agent ${row.agent}` + (row.reason ? " · " + row.reason : "");
  document.getElementById("detail-rationale").textContent = row.rationale;
  document.getElementById("detail-diff").replaceChildren(...diffLines(row.diff || "(no diff)"));
  document.getElementById("detail-log").textContent = row.log_tail || "(no log)";
  box.hidden = false; box.dataset.id = String(row.id);
  document.querySelectorAll("#experiments tr.row").forEach((tr) => tr.classList.toggle("open", tr.dataset.id === String(row.id)));
}
window.addEventListener("hashchange", () => { if (state.data) openFromHash(); });
loadSessions();
"""



def _shown(value: Any) -> Any:
    """``value`` with every string as ``terminal_text`` shows it: the page sets text as it
    comes, and a bidi override in a diff would make it display other code than it runs."""
    if isinstance(value, str):
        return terminal_text(value)
    if isinstance(value, dict):
        return {key: _shown(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(item) for item in value]
    return value

__all__ = ["Dashboard", "is_local"]
