"""The GPT task's hub sources: prepare.py downloads through huggingface_hub from a fake hub."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("huggingface_hub")
pytest.importorskip("rustbpe")

from autoresearch import templates  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def parquet_bytes(texts: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": texts}), buf)
    return buf.getvalue()


class FakeHub:
    """Serves dataset files like the hub's /resolve and /api/.../tree endpoints; fails on demand."""

    def __init__(self, repos: dict[str, dict[str, bytes]], fail_once: set[tuple[str, str]]) -> None:
        self.repos, self.fail_once = repos, set(fail_once)
        self.requests: list[tuple[str, str, int, str]] = []  # method, path, status, authorization
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.handle(self, body=False)

            def do_GET(self) -> None:
                hub.handle(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(req.path).path)
        status, headers, payload = self.route(req.command, path)
        self.requests.append((req.command, path, status, req.headers.get("authorization", "")))
        req.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            req.send_header(key, value)
        req.end_headers()
        if body:
            req.wfile.write(payload)

    def route(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        parts = path.strip("/").split("/")
        if (
            parts[:2] == ["api", "datasets"] and "tree" in parts
        ):  # /api/datasets/OWNER/NAME/tree/REV
            files = self.repos.get("/".join(parts[2:4]), {})
            listing = [
                {"type": "file", "path": n, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for n, b in files.items()
            ]
            return 200, {"Content-Type": "application/json"}, json.dumps(listing).encode()
        if (
            parts[0] == "datasets" and len(parts) >= 6 and parts[3] == "resolve"
        ):  # /datasets/O/N/resolve/REV/FILE
            repo, name = "/".join(parts[1:3]), "/".join(parts[5:])
            if (method, name) in self.fail_once:  # a transient server error, once
                self.fail_once.discard((method, name))
                return 500, {}, b"internal error"
            if name not in self.repos.get(repo, {}):
                return 404, {"X-Error-Code": "EntryNotFound"}, b"not found"
            data = self.repos[repo][name]
            headers = {
                "X-Repo-Commit": COMMIT,
                "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                "Content-Type": "application/octet-stream",
            }
            return 200, headers, data
        return 404, {}, b"no route"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    train = [
        f"Story {i}: the cat sat on the mat and looked at the moon number {i}." for i in range(200)
    ]
    repos = {
        "karpathy/climbmix-400b-shuffle": {
            "shard_00000.parquet": parquet_bytes(train[:100]),
            "shard_00001.parquet": parquet_bytes(train[100:]),
            "shard_06542.parquet": parquet_bytes(
                [f"Held out {i}: the dog ran." for i in range(40)]
            ),
        },
        "someone/stories": {  # a one-file dataset: every 20th row is validation
            "data/all.parquet": parquet_bytes(train),
        },
    }
    fake = FakeHub(
        repos, fail_once={("HEAD", "shard_06542.parquet"), ("GET", "shard_00000.parquet")}
    )
    yield fake
    fake.server.shutdown()


def run_prepare(task: Path, hub: FakeHub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORESEARCH_", "HF_"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token", HF_HUB_DISABLE_TELEMETRY="1",
               AUTORESEARCH_DATA_DIR=str(task / "data"), HF_HOME=str(task / "hf-home"))  # fmt: skip
    cmd = [sys.executable, "prepare.py", *args, "--tokenizer", "bytes"]
    return subprocess.run(cmd, cwd=task, env=env, capture_output=True, text=True, timeout=120)


def test_climbmix_downloads_shards_and_pins_validation_with_a_retry(
    tmp_path: Path, hub: FakeHub
) -> None:
    templates.write_template("gpt", tmp_path, size="cpu")
    done = run_prepare(tmp_path, hub, "--data", "climbmix", "--num-shards", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    got = [(m, p.rsplit("/", 1)[-1], s) for m, p, s, _ in hub.requests]
    # a 500 on the metadata request: huggingface_hub retries it
    assert (
        got.count(("HEAD", "shard_06542.parquet", 500)) == 1
        and ("GET", "shard_06542.parquet", 200) in got
    )
    # a 500 on the download itself: prepare.py's own retry loop tries again
    assert "shard_00000.parquet: attempt 1/5 failed" in done.stdout
    assert [s for m, n, s in got if (m, n) == ("GET", "shard_00000.parquet")] == [500, 200]
    assert all(name != "shard_00001.parquet" for _, name, _ in got)  # --num-shards 1
    assert all(auth == "Bearer hf_test_token" for *_, auth in hub.requests)  # HF_TOKEN is sent
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert [Path(p).name for p, *_ in manifest["train"]] == ["shard_00000.parquet"]
    assert [Path(p).name for p, *_ in manifest["val"]] == ["shard_06542.parquet"]
    assert (
        Path(manifest["val"][0][0]).read_bytes()
        == hub.repos["karpathy/climbmix-400b-shuffle"]["shard_06542.parquet"]
    )
    # the cached validation shard is linked, for the holdout to hide it from the run step
    (source,) = (tmp_path / "data" / "val_sources").iterdir()
    assert source.read_bytes() == Path(manifest["val"][0][0]).read_bytes()
    assert "shard_06542" in str(source) and "hub" in source.resolve().parts
    count = len(hub.requests)
    again = run_prepare(tmp_path, hub, "--data", "climbmix", "--num-shards", "1", "--force")
    assert again.returncode == 0, again.stderr
    assert not any(m == "GET" for m, *_ in hub.requests[count:])  # served from the cache


def test_a_one_file_hub_dataset_is_listed_and_split_by_rows(tmp_path: Path, hub: FakeHub) -> None:
    templates.write_template("gpt", tmp_path, size="cpu")
    done = run_prepare(tmp_path, hub, "--data", "hub:someone/stories")
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(tmp_path))
    os.environ["AUTORESEARCH_DATA_DIR"] = str(tmp_path / "data")
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("prepare_hub", tmp_path / "prepare.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        val = [text for text, _ in module.iter_documents("val")]
        train = {
            text
            for text, _ in zip(range(180), module.iter_documents("train", seed=0), strict=False)
        }
    finally:
        del os.environ["AUTORESEARCH_DATA_DIR"]
        sys.path.remove(str(tmp_path))
    assert val == [
        f"Story {i}: the cat sat on the mat and looked at the moon number {i}."
        for i in range(0, 200, 20)
    ]
    assert len(train) == 180 and not train & set(val)
    # training reads its own copy; the cached file, which holds both splits, is a linked source
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert "hub" not in Path(manifest["train"][0][0]).parts
    (source,) = (tmp_path / "data" / "val_sources").iterdir()
    assert source.read_bytes() == hub.repos["someone/stories"]["data/all.parquet"]


def test_a_missing_file_fails_without_retries(tmp_path: Path, hub: FakeHub) -> None:
    templates.write_template("gpt", tmp_path, size="cpu")
    done = run_prepare(tmp_path, hub, "--data", "climbmix", "--num-shards", "3")  # no shard_00002
    assert done.returncode != 0
    assert "shard_00002.parquet: attempt" not in done.stdout
    assert [s for _, p, s, _ in hub.requests if p.endswith("shard_00002.parquet")] == [404]
