"""Fixtures shared by the server and operator suites."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        action="store_true",
        default=False,
        help="run the end-to-end tests against the cluster of KUBECONFIG (or ~/.kube/config) "
        "instead of the in-process API server double",
    )


@pytest.fixture(scope="session")
def example_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example digits model, built once per test session by the real example script.

    Set MODELSHIP_EXAMPLE_MODEL to an already built directory to skip the (seconds-long) build.
    """
    prebuilt = os.environ.get("MODELSHIP_EXAMPLE_MODEL")
    if prebuilt:
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("example-model")
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "build_model.py"), "--out", str(out)],
        check=True,
        timeout=300,
    )
    return out
