"""Plan -> child manifests, through Jinja2 templates that see only the plan.

Pure and deterministic: the same plan renders byte-identical manifests. Each template
emits YAML (nested API objects are embedded as JSON, which is YAML); the result is
parsed back so reconcile gets plain dicts ready for server-side apply.
"""
from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

import jinja2
import yaml

from .planning import APPLIED_HASH, Plan


# libyaml's safe loader when PyYAML has it: the pure-Python one was half the operator's CPU
# time at scale (benchmarks/bench_operator.py); both accept exactly the same documents.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("modelship_operator", "templates"),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails loudly, not as ""
        autoescape=False,
        keep_trailing_newline=True,
    )


def _render_template(name: str, **context: Any) -> dict:
    text = _environment().get_template(name).render(**context)
    try:
        obj = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:  # a template bug: show what it produced
        raise ValueError(f"template {name} produced invalid YAML: {exc}\n{text}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"template {name} did not produce an object")
    return obj


def applied_hash(manifest: dict) -> str:
    """Hash of a manifest without its own applied-hash annotation (16 hex chars)."""
    meta = dict(manifest.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_HASH}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    canonical = json.dumps({**manifest, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _stamp(manifest: dict) -> dict:
    digest = applied_hash(manifest)
    meta = manifest.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: digest}
    return manifest


def render(plan: Plan) -> list[dict]:
    """Every desired child of the plan, fully formed for server-side apply, in a fixed order."""
    manifests = [_render_template("deployment.yaml.j2", plan=plan, rev=rev) for rev in plan.revisions]
    manifests.append(_render_template("service.yaml.j2", plan=plan))
    if plan.peers_service is not None:
        manifests.append(_render_template("peers-service.yaml.j2", plan=plan))
    if plan.route is not None:
        manifests.extend(
            _render_template("role-service.yaml.j2", plan=plan, backend=backend) for backend in plan.route.backends
        )
        manifests.append(_render_template("httproute.yaml.j2", plan=plan, route=plan.route))
    elif plan.shadow is not None:  # replicas mode at a shadow step: the stable's pods mirror to this Service
        manifests.append(_render_template("role-service.yaml.j2", plan=plan, backend=plan.shadow.backend))
    if plan.pdb:
        manifests.append(_render_template("pdb.yaml.j2", plan=plan))
    if plan.autoscaling is not None:
        template = "scaledobject.yaml.j2" if plan.autoscaling.keda is not None else "hpa.yaml.j2"
        manifests.append(_render_template(template, plan=plan))
    if plan.service_monitor:
        manifests.append(_render_template("servicemonitor.yaml.j2", plan=plan))
    return [_stamp(m) for m in manifests]


def to_yaml(manifests: list[dict]) -> str:
    """Multi-document YAML, keys in template order (deterministic)."""
    return yaml.safe_dump_all(manifests, sort_keys=False, default_flow_style=False, explicit_start=True, width=120)
