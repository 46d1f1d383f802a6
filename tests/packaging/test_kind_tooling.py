"""hack/kind-e2e.sh cannot run here (no Docker engine): check what can be checked without one."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "hack" / "kind-e2e.sh"


def test_script_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_script_passes_shellcheck() -> None:
    proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


def test_script_runs_the_same_cluster_suite_as_any_kubeconfig() -> None:
    text = SCRIPT.read_text()
    assert re.search(r'-m pytest --cluster tests/operator/test_e2e\.py tests/operator/test_e2e_rollout\.py', text)
    # The suite's own operator puts this image in the model pods: the script must have loaded it.
    e2e = (ROOT / "tests" / "operator" / "test_e2e.py").read_text()
    (image,) = set(re.findall(r'MODELSHIP_SERVER_IMAGE="([^"]+)"', e2e))
    assert image == "ghcr.io/modelship/server:e2e"
    assert "SERVER_IMAGE=ghcr.io/modelship/server:$TAG" in text and "TAG=e2e" in text
    assert 'kind load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$SERVER_IMAGE"' in text


def test_helm_set_flags_name_real_chart_values() -> None:
    values = yaml.safe_load((ROOT / "charts" / "modelship" / "values.yaml").read_text())
    flags = re.findall(r'--set "?([A-Za-z.]+)=', SCRIPT.read_text())
    assert len(flags) >= 5
    for flag in flags:
        node = values
        for part in flag.split("."):
            assert isinstance(node, dict) and part in node, f"--set {flag}: not in values.yaml"
            node = node[part]


def test_script_applies_the_quickstart_example() -> None:
    text = SCRIPT.read_text()
    assert "examples/quickstart-cpu.yaml" in text
    md = yaml.safe_load((ROOT / "examples" / "quickstart-cpu.yaml").read_text())
    assert md["spec"]["model"]["uri"] == "file:///models/digits/model.pt"
    assert md["metadata"]["namespace"] == "ml" and "NS=ml" in text


def test_model_image_copies_what_the_example_builder_writes(example_model_dir: Path) -> None:
    dockerfile = (ROOT / "hack" / "Dockerfile.model").read_text()
    (copy,) = [line for line in dockerfile.splitlines() if line.startswith("COPY ")]
    *sources, dest = [w for w in shlex.split(copy)[1:] if not w.startswith("--")]
    assert dest == "/models/digits/"
    for name in sources:
        assert (example_model_dir / name).is_file(), name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_infer_helper_against_a_real_server(example_model_dir: Path, tmp_path: Path) -> None:
    """hack/infer.py (the script's inference check) against the real server and example model."""
    port = _free_port()
    env = dict(os.environ, MODELSHIP_MODEL_URI=f"file://{example_model_dir / 'model.pt'}",
               MODELSHIP_HOST="127.0.0.1", MODELSHIP_PORT=str(port), MODELSHIP_MODEL_VERSION="1.0.0",
               MODELSHIP_TORCH_THREADS="1", MODELSHIP_DRIFT_REFERENCE="off")
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "modelship_server"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = [sys.executable, str(ROOT / "hack" / "infer.py"), "--url", f"http://127.0.0.1:{port}",
                "--data", str(example_model_dir / "heldout.npz"), "--wait", "90"]
        ok = subprocess.run(base + ["--requests", "10", "--expect-version", "1.0.0"],
                            capture_output=True, text=True, timeout=150)
        assert ok.returncode == 0, ok.stdout + ok.stderr + (tmp_path / "server.log").read_text()[-2000:]
        assert "answered by {'1.0.0': 10}" in ok.stdout
        wrong = subprocess.run(base + ["--requests", "2", "--expect-version", "9.9.9"],
                               capture_output=True, text=True, timeout=60)
        assert wrong.returncode == 1 and "expected only version 9.9.9" in wrong.stderr
    finally:
        server.terminate()
        server.wait(30)
        log.close()
