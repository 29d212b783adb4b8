"""A scripted OpenAI Responses API server (streaming, server-sent events) on 127.0.0.1, for Codex.

``POST /v1/responses`` with ``stream: true`` gets the next scripted turn: a list of output
items (a function call, an assistant message) sent as ``response.created``, an
``output_item.added``/``output_item.done`` pair per item and ``response.completed`` with the
usage. Every request body is kept in ``bodies``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Item = dict[str, Any]


def call(name: str, arguments: dict[str, Any], n: int) -> Item:
    return {"type": "function_call", "id": f"fc_{n}", "call_id": f"call_{n}", "name": name,
            "status": "completed", "arguments": json.dumps(arguments)}  # fmt: skip


def message(text: str, n: int) -> Item:
    return {"type": "message", "id": f"msg_{n}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}  # fmt: skip


class ScriptedResponses:
    def __init__(self, turns: Sequence[Sequence[Item]], *, input_tokens: int = 1200,
                 output_tokens: int = 50) -> None:  # fmt: skip
        self.turns, self.bodies = list(turns), []  # type: list[list[Item]], list[dict[str, Any]]
        self.usage = {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": input_tokens + output_tokens}  # fmt: skip
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def stream(self, body: dict[str, Any]) -> bytes:
        with self._lock:
            self.bodies.append(body)
            n = len(self.bodies)
            items = self.turns.pop(0) if self.turns else [message("(no more turns scripted)", n)]
        rid = f"resp_{n}"
        events: list[tuple[str, dict[str, Any]]] = [("response.created", {
            "type": "response.created",
            "response": {"id": rid, "object": "response", "status": "in_progress", "output": []}})]  # fmt: skip
        for i, item in enumerate(items):
            events.append(("response.output_item.added",
                           {"type": "response.output_item.added", "output_index": i, "item": item}))  # fmt: skip
            events.append(("response.output_item.done",
                           {"type": "response.output_item.done", "output_index": i, "item": item}))  # fmt: skip
        events.append(("response.completed", {"type": "response.completed", "response": {
            "id": rid, "object": "response", "status": "completed", "output": items, "usage": self.usage}}))  # fmt: skip
        return "".join(f"event: {k}\ndata: {json.dumps(v)}\n\n" for k, v in events).encode()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                if not self.path.endswith("/responses"):
                    self.send_response(404)
                    self.end_headers()
                    return
                data = server.stream(body)
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
