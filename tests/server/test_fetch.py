"""The init container's downloader: `python -m modelship_server.fetch URI DIR`, torch-free,
with integrity: checksum, size limit, overall deadline, plain http:// only when allowed."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from modelship_server.fetch import FetchOptions, ModelLoadError, fetch, main


def run_fetch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_")}
    return subprocess.run(
        [sys.executable, "-m", "modelship_server.fetch", *args],
        capture_output=True, text=True, timeout=60, env={**clean, **(env or {})},
    )  # fmt: skip


def test_fetch_downloads_the_model_and_its_companions(http_base: str, example_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    proc = run_fetch(f"{http_base}/model.pt", str(out), "--allow-insecure-http")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out / "model.pt")
    for name in ("model.pt", "signature.json", "reference_profile.json"):
        assert (out / name).read_bytes() == (example_model_dir / name).read_bytes(), name


def test_fetch_reports_a_missing_model(http_base: str, tmp_path: Path) -> None:
    proc = run_fetch(f"{http_base}/nope.pt", str(tmp_path), env={"MODELSHIP_ALLOW_INSECURE_HTTP": "true"})
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr


def test_plain_http_is_refused_unless_allowed(http_base: str, tmp_path: Path) -> None:
    proc = run_fetch(f"{http_base}/model.pt", str(tmp_path / "a"))
    assert proc.returncode == 1
    assert "refusing plain http://" in proc.stderr and "MODELSHIP_ALLOW_INSECURE_HTTP" in proc.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())
    allowed = run_fetch(f"{http_base}/model.pt", str(tmp_path / "b"), env={"MODELSHIP_ALLOW_INSECURE_HTTP": "1"})
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "b" / "model.pt").is_file()


@pytest.fixture()
def https_base(example_model_dir: Path, http_base: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(https base URL, CA file): the example model over TLS with a self-signed certificate;
    /redirect/model.pt answers 302 to the plain http:// store."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    certs = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(certs / "key.pem"), "-out", str(certs / "cert.pem")],
                   check=True, capture_output=True, timeout=60)  # fmt: skip

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(example_model_dir), **kw)  # type: ignore[arg-type]

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/redirect/"):
                self.send_response(302)
                self.send_header("location", f"{http_base}/{self.path.rsplit('/', 1)[1]}")
                self.send_header("content-length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "cert.pem", certs / "key.pem")
    with _serve(Handler, context) as base:
        yield base.replace("http://", "https://"), str(certs / "cert.pem")


def test_https_downloads_and_refuses_a_redirect_down_to_http(https_base: tuple[str, str], example_model_dir: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    base, ca = https_base
    good = hashlib.sha256((example_model_dir / "model.pt").read_bytes()).hexdigest()
    ok = run_fetch(f"{base}/model.pt", str(tmp_path / "ok"), "--sha256", good, env={"SSL_CERT_FILE": ca})
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ok" / "model.pt").read_bytes() == (example_model_dir / "model.pt").read_bytes()
    down = run_fetch(f"{base}/redirect/model.pt", str(tmp_path / "down"), env={"SSL_CERT_FILE": ca})
    assert down.returncode == 1 and "refusing plain http://" in down.stderr, down.stderr
    assert not (tmp_path / "down" / "model.pt").exists()
    allowed = run_fetch(f"{base}/redirect/model.pt", str(tmp_path / "allowed"), "--allow-insecure-http",
                        env={"SSL_CERT_FILE": ca})  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr


def test_the_model_sha256_is_verified(http_base: str, example_model_dir: Path, tmp_path: Path) -> None:
    good = hashlib.sha256((example_model_dir / "model.pt").read_bytes()).hexdigest()
    ok = run_fetch(f"{http_base}/model.pt", str(tmp_path / "ok"), "--allow-insecure-http", "--sha256", good.upper())
    assert ok.returncode == 0, ok.stderr
    bad = "0" * 64
    proc = run_fetch(f"{http_base}/model.pt", str(tmp_path / "bad"), env={
        "MODELSHIP_ALLOW_INSECURE_HTTP": "true", "MODELSHIP_MODEL_SHA256": bad})  # fmt: skip
    assert proc.returncode == 1 and "sha256 mismatch" in proc.stderr and good in proc.stderr
    assert list((tmp_path / "bad").iterdir()) == []  # no model, no partial file
    malformed = run_fetch(f"{http_base}/model.pt", str(tmp_path / "m"), "--allow-insecure-http", "--sha256", "abc")
    assert malformed.returncode == 1 and "64 hex digits" in malformed.stderr


def test_a_local_model_file_is_verified_too(example_model_dir: Path, tmp_path: Path) -> None:
    path = example_model_dir / "model.pt"
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert fetch(path.as_uri(), tmp_path, FetchOptions(sha256=good)) == path
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        fetch(path.as_uri(), tmp_path, FetchOptions(sha256="f" * 64))


def test_a_download_past_the_size_limit_is_aborted(http_base: str, example_model_dir: Path, tmp_path: Path) -> None:
    size = (example_model_dir / "model.pt").stat().st_size
    proc = run_fetch(f"{http_base}/model.pt", str(tmp_path), "--allow-insecure-http", "--max-bytes", str(size - 1))
    assert proc.returncode == 1 and "download limit" in proc.stderr
    assert list(tmp_path.iterdir()) == []


class _Trickle(http.server.BaseHTTPRequestHandler):
    """/model.pt without a Content-Length: `total` bytes in 64 KiB pieces, `delay` s apart."""

    total = 1 << 20
    delay = 0.0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self.path.endswith("/model.pt"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("connection", "close")
        self.end_headers()
        sent = 0
        try:
            while sent < self.total:
                piece = min(65536, self.total - sent)
                self.wfile.write(b"x" * piece)
                self.wfile.flush()
                sent += piece
                time.sleep(self.delay)
        except OSError:  # the downloader gave up
            pass

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serve(handler: type, tls: ssl.SSLContext | None = None) -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def trickle() -> Iterator[type]:
    class Handler(_Trickle):
        pass

    yield Handler


def test_a_stream_without_length_is_cut_at_the_limit(trickle: type, tmp_path: Path) -> None:
    trickle.total = 8 << 20
    with _serve(trickle) as base:
        with pytest.raises(ModelLoadError, match="download limit"):
            fetch(f"{base}/model.pt", tmp_path, FetchOptions(max_bytes=1 << 20, allow_insecure_http=True))
    assert list(tmp_path.iterdir()) == []


def test_the_overall_deadline_stops_a_slow_download(trickle: type, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trickle.total, trickle.delay = 64 << 20, 0.05  # ~1.3 MB/s: 50 s in all
    with _serve(trickle) as base:
        start = time.monotonic()
        assert main([f"{base}/model.pt", str(tmp_path), "--allow-insecure-http"], env={"MODELSHIP_FETCH_DEADLINE_S": "1"}) == 1
        assert time.monotonic() - start < 5
    assert "deadline of 1s passed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_downloader_does_not_import_torch() -> None:
    code = "import sys, modelship_server.fetch; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
