"""Fixtures for the operator suite: the HTTP API server double and a kubeconfig for it."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver_double import ApiServerDouble


@pytest.fixture
def apiserver() -> Iterator[ApiServerDouble]:
    double = ApiServerDouble()
    double.start()
    try:
        yield double
    finally:
        double.stop()


@pytest.fixture
def double_kubeconfig(apiserver: ApiServerDouble, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml")
