"""Every example ModelDeployment validates against the CRD's schema and passes each of its
CEL rules, and parses into the typed model with what it says."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship_operator.api import validate as schema
from modelship_operator.spec import ModelDeployment

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUIRED = {"quickstart-cpu", "gpu", "mig", "autoscaling", "pvc-model", "http-model", "canary-replicas",
            "canary-gateway", "ab-header-route", "shadow"}


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None and doc.get("kind") == "ModelDeployment":
                docs.append((f"{path.stem}#{i}", doc))
    return docs


DOCS = documents()


def by_name(stem: str) -> ModelDeployment:
    [doc] = [d for name, d in DOCS if name.split("#")[0] == stem]
    return ModelDeployment.from_body(doc)


def test_the_documented_examples_exist() -> None:
    assert REQUIRED <= {name.split("#")[0] for name, _ in DOCS}


@pytest.mark.parametrize("name, doc", DOCS, ids=[n for n, _ in DOCS])
def test_example_validates(name: str, doc: dict[str, Any]) -> None:
    assert schema.validate(doc, cel=True) == []
    assert doc["metadata"].get("namespace") == "ml"  # examples are namespaced explicitly


@pytest.mark.parametrize("name, doc", DOCS, ids=[n for n, _ in DOCS])
def test_example_passes_every_rule_at_its_node(name: str, doc: dict[str, Any]) -> None:
    root = schema.openapi_schema()
    evaluated = 0
    for path, value, rule in schema.iter_rules(root, schema.apply_defaults(doc, root)):
        assert schema.eval_rule(rule["rule"], value) is True, (path, rule["message"])
        evaluated += 1
    assert evaluated >= 10  # the defaulted object reaches the rules of model, server, gpu, rollout


def test_examples_say_what_their_names_say() -> None:
    cpu = by_name("quickstart-cpu").spec
    assert cpu.gpu.count == 0 and cpu.model.scheme == "file" and cpu.autoscaling is None
    gpu = by_name("gpu").spec
    assert gpu.gpu.count == 1 and gpu.gpu.type and gpu.gpu.resource_name == "nvidia.com/gpu"
    mig = by_name("mig").spec
    assert mig.gpu.resource_name.startswith("nvidia.com/mig-")
    auto = by_name("autoscaling").spec
    assert auto.autoscaling is not None and auto.autoscaling.min_replicas < auto.autoscaling.max_replicas
    assert by_name("pvc-model").spec.model.pvc_claim == "models"
    assert by_name("http-model").spec.model.scheme in ("http", "https")
    replicas = by_name("canary-replicas").spec.rollout
    assert replicas.traffic == "replicas" and any(s.set_weight for s in replicas.steps)
    assert any(s.pause and s.pause.duration is None for s in replicas.steps)  # a manual promote
    gateway = by_name("canary-gateway").spec.rollout
    assert gateway.traffic == "gateway" and gateway.gateway is not None and gateway.gateway.parent_refs
    ab = by_name("ab-header-route").spec.rollout
    assert ab.traffic in ("auto", "gateway") and ab.gateway is not None and ab.gateway.parent_refs
    routes = [s.set_header_route for s in ab.steps if s.set_header_route is not None]
    assert any(r.match for r in routes) and any(not r.match for r in routes)  # adds and removes
    assert {m.header_name is None for r in routes for m in r.match} == {True, False}  # a header and a cookie
    shadow = by_name("shadow").spec.rollout
    first = shadow.steps[0].shadow
    assert first is not None and 0 < first.percent < 100 and first.seconds > 0  # shadows before any traffic
    assert any(s.set_weight for s in shadow.steps[1:])  # then real traffic
    assert shadow.analysis.max_disagreement is not None and shadow.analysis.max_mean_abs_diff is not None
