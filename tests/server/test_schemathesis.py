"""schemathesis over the server's own OpenAPI, against a real server on loopback with the real
example model: no generated request, valid or not, may get a 5xx. Bounded to stay fast."""
from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from metrics_text import parse
from modelship_server.app import create_app
from server_harness import ServerThread, settings_for

pytest.importorskip("schemathesis")


def test_no_generated_request_gets_a_5xx(model_dir, tmp_path) -> None:
    settings = settings_for(model_dir, max_batch_size=8, max_batch_rows=16, timeout_ms=10_000, model_version="1.4.0")
    with ServerThread(create_app(settings)) as srv:
        srv.wait_ready()
        schema = httpx.get(srv.url + "/openapi.json").json()
        assert "/v2/models/{name}/infer" in schema["paths"] and "/predict" in schema["paths"]
        # The served model's name and version in paths (random ones only find 404s); read from the cwd.
        (tmp_path / "schemathesis.toml").write_text('[parameters]\nname = "digits"\nversion = "1.4.0"\n')
        proc = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", srv.url + "/openapi.json", "--url", srv.url,
             "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing",
             "--max-examples", os.environ.get("MODELSHIP_SCHEMATHESIS_EXAMPLES", "20"), "--workers", "1",
             "--request-timeout", "30", "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=280, cwd=tmp_path,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-6000:]
        samples = parse(httpx.get(srv.url + "/metrics").text)
        counted = {dict(ls)["code"] for n, ls in samples if n == "modelship_requests_total"}
        assert counted and not any(c.startswith("5") for c in counted), counted
        assert {"200", "400"} <= counted  # the model answered, and bad input was among the cases
