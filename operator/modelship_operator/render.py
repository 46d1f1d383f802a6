"""Plan -> child manifests, through Jinja2 templates that see only the plan.

Pure and deterministic: the same plan renders byte-identical manifests. Each template
emits YAML (nested API objects are embedded as JSON, which is YAML); the result is
parsed back so reconcile gets plain dicts ready for server-side apply.
"""
from __future__ import annotations

import collections
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
        auto_reload=False,  # package data: no stat of the template file on every render
    )


def _render_template(name: str, **context: Any) -> dict:
    text = _environment().get_template(name).render(**context)
    digest = hashlib.sha256(text.encode()).digest()
    parsed = _PARSED.get(digest)
    if parsed is None:
        parsed = _PARSED.put(digest, _parse(name, text))
    return json.loads(parsed)


def _parse(name: str, text: str) -> str:
    """The stamped manifest a template's text describes, as compact JSON."""
    try:
        obj = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:  # a template bug: show what it produced
        raise ValueError(f"template {name} produced invalid YAML: {exc}\n{text}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"template {name} did not produce an object")
    return json.dumps(_stamp(obj), separators=(",", ":"))


class _Recent:
    """A small LRU map from a rendered text's digest to its parsed, stamped manifest.

    Parsing what a template produced (libyaml, then the applied-hash) is most of rendering's
    CPU, and a ModelDeployment renders the same text again and again (both passes of a
    reconcile, the reconciles that follow its children's status, every resync of a canary).
    Only the digest is kept, not the text; a value is compact JSON (~0.5-3 KB), and a hit
    costs a json.loads (a fresh copy the caller may change), a tenth of the parse.
    """

    def __init__(self, size: int) -> None:
        self.size, self.items = size, collections.OrderedDict[bytes, str]()

    def get(self, key: bytes) -> str | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: bytes, value: str) -> str:
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


_PARSED = _Recent(2048)  # the children of ~700 ModelDeployments, a few MB


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
    return manifests


def to_yaml(manifests: list[dict]) -> str:
    """Multi-document YAML, keys in template order (deterministic)."""
    return yaml.safe_dump_all(manifests, sort_keys=False, default_flow_style=False, explicit_start=True, width=120)
