"""An in-memory Kubernetes object store, and `KubeDouble`: the `kube.Kube` interface over it.

`ObjectStore` models the API server semantics the operator relies on, once, for both doubles
(this in-memory one and the HTTP one in apiserver_double.py): uid / resourceVersion /
creationTimestamp, metadata.generation bumped only on non-metadata, non-status changes, the
status and scale subresources, JSON merge patch (RFC 7386), JSON patch (RFC 6902, incl.
`test`), finalizers and deletionTimestamp, and:
- field ownership per field manager (managedFields with fieldsV1): a create, update or patch
  makes its manager own the fields it changed (taking them from the others); server-side
  apply of a field another manager owns with a different value is a 409 Conflict unless
  `force=true`, which takes the field over; a field a manager no longer applies is removed
  only if no other manager owns it too. Lists and atomic maps are one field each;
- optimistic concurrency: a write carrying a `metadata.resourceVersion` (update, merge or
  JSON patch, apply) fails with 409 Conflict when the object has changed since;
- label selectors, equality- and set-based (`k=v`, `k!=v`, `k in (..)`, `k notin (..)`,
  `k`, `!k`), malformed ones rejected with 400;
- garbage collection by ownerReference: a dependent goes once none of its owners exists
  (a dangling reference next to a live owner is dropped instead); `propagationPolicy`
  Background (the default), Foreground (the owner stays, with the `foregroundDeletion`
  finalizer, until its dependents are gone) and Orphan (dependents lose the reference and
  stay). A child created for an owner that is already gone is collected too. Collection runs
  in `collect_garbage()` (every moment in the HTTP double; called by in-memory tests), except
  that a Background deletion takes the owner's dependents at once.
No-op writes change nothing (no new resourceVersion, no watch event), as on a real API server.

Simplifications (deliberate): associative lists (containers by name, ...) are atomic here;
deletion is immediate (no grace periods).
"""
from __future__ import annotations

import copy
import itertools
import json
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelship_operator.kube import PermanentError, controller_uid, error_from_response
from server_defaults import apply_defaults

Obj = dict[str, Any]


class ApiError(Exception):
    """An API-server-style failure, carrying the HTTP status and a Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def body(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.status}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    subresources: frozenset[str] = frozenset()
    short_names: tuple[str, ...] = ()
    # for the scale subresource: where replicas live (CRDs declare these)
    spec_replicas_path: str = ".spec.replicas"
    status_replicas_path: str = ".status.replicas"
    label_selector_path: str | None = ".status.selector"
    # a CRD's structural schema: unknown fields are pruned, as the API server does
    schema: Any = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> tuple[str, str]:
        return self.group, self.plural

    def discovery(self) -> list[Obj]:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        main = {"name": self.plural, "singularName": self.kind.lower(), "namespaced": self.namespaced,
                "kind": self.kind, "verbs": verbs}
        if self.short_names:
            main["shortNames"] = list(self.short_names)
        subs = [{"name": f"{self.plural}/{sub}", "singularName": "", "namespaced": self.namespaced,
                 "kind": "Scale" if sub == "scale" else self.kind, "verbs": ["get", "patch", "update"]}
                for sub in sorted(self.subresources)]
        return [main, *subs]


BUILTINS = (
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, subresources=frozenset({"status"})),
    ResourceType("", "v1", "events", "Event", short_names=("ev",)),
    ResourceType("", "v1", "services", "Service", subresources=frozenset({"status"}), short_names=("svc",)),
    ResourceType("", "v1", "pods", "Pod", subresources=frozenset({"status"}), short_names=("po",)),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType("apps", "v1", "deployments", "Deployment",
                 subresources=frozenset({"status", "scale"}), short_names=("deploy",)),
    ResourceType("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler",
                 subresources=frozenset({"status"}), short_names=("hpa",)),
    ResourceType("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget",
                 subresources=frozenset({"status"}), short_names=("pdb",)),
    ResourceType("events.k8s.io", "v1", "events", "Event", short_names=("ev",)),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease"),  # leader election
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                 namespaced=False, subresources=frozenset({"status"}), short_names=("crd",)),
)


# --------------------------------------------------------------------------- pure helpers


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (returns a new value)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Obj, ops: Iterable[Mapping[str, Any]]) -> Obj:
    """RFC 6902 JSON patch: add, remove, replace, test (what kopf and kubectl use)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"]) or [""]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.get(part) if isinstance(node, dict) else None
            if node is None:
                raise ApiError(422, "Invalid", f"path {op['path']!r} does not exist")
        kind = op["op"]
        if kind == "test":
            actual = (node[int(last)] if isinstance(node, list) else node.get(last)) if node is not None else None
            if actual != op.get("value"):
                raise ApiError(422, "Invalid", f"test failed at {op['path']}: {actual!r} != {op.get('value')!r}")
        elif kind in ("add", "replace"):
            if isinstance(node, list):
                if last == "-":
                    node.append(copy.deepcopy(op["value"]))
                elif kind == "add":
                    node.insert(int(last), copy.deepcopy(op["value"]))
                else:
                    node[int(last)] = copy.deepcopy(op["value"])
            else:
                if kind == "replace" and last not in node:
                    raise ApiError(422, "Invalid", f"replace of missing path {op['path']!r}")
                node[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            try:
                del node[int(last) if isinstance(node, list) else last]
            except (KeyError, IndexError) as exc:
                raise ApiError(422, "Invalid", f"remove of missing path {op['path']!r}") from exc
        else:
            raise ApiError(422, "Invalid", f"unsupported JSON patch op {kind!r}")
    return doc


_KEY = r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_EQ = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")


def _split_selector(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_selector(selector: str | None) -> list[tuple[str, str, frozenset[str]]]:
    """A label selector as (key, operator, values) requirements; 400 when it is malformed, as
    the API server answers (operators: =, !=, in, notin, exists, !)."""
    reqs = []
    for req in _split_selector(selector or ""):
        if m := _SET.match(req):
            values = [v.strip() for v in m["values"].split(",")]
            if not all(re.fullmatch(_VALUE, v) for v in values) or values == [""]:
                raise ApiError(400, "BadRequest", f"unable to parse requirement: values of {req!r}")
            reqs.append((m["key"], m["op"], frozenset(values)))
        elif m := _EQ.match(req):
            reqs.append((m["key"], "!=" if m["op"] == "!=" else "=", frozenset({m["value"]})))
        elif m := _EXISTS.match(req):
            reqs.append((m["key"], "!" if m["neg"] else "exists", frozenset()))
        else:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {req!r}")
    return reqs


def selector_matches(selector: str | None, labels: Mapping[str, str] | None) -> bool:
    """Kubernetes label selector syntax: k=v, k==v, k!=v, k, !k, k in (a,b), k notin (a,b)."""
    labels = labels or {}
    for key, op, values in parse_selector(selector):
        value = labels.get(key)
        ok = {"=": value in values, "in": value in values, "!=": value not in values,
              "notin": value not in values, "exists": key in labels, "!": key not in labels}[op]
        if not ok:
            return False
    return True


def field_selector_matches(selector: str | None, obj: Obj) -> bool:
    for req in _split_selector(selector or ""):
        negate = "!=" in req
        key, value = (s.strip() for s in req.replace("!=", "=").replace("==", "=").split("=", 1))
        node: Any = obj
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (str(node) == value) == negate:
            return False
    return True


# Maps the real API server treats as one value (+mapType=atomic / +structType=atomic).
ATOMIC_MAPS = frozenset({"selector", "nodeSelector"})


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Field paths of an applied config; lists and atomic maps are one leaf each."""
    if isinstance(obj, dict) and obj and not (prefix and prefix[-1] in ATOMIC_MAPS):
        return set().union(*(_leaf_paths(v, prefix + (k,)) for k, v in obj.items()))
    return {prefix}


Path = tuple[str, ...]
# Metadata the server keeps itself: nobody owns these fields.
_UNOWNED_META = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                           "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
                           "generateName"})


def owned_paths(obj: Any) -> set[Path]:
    """The fields a write of `obj` speaks for (what a manager owns after applying it)."""
    return {p for p in _leaf_paths(obj) if p and p[0] not in ("apiVersion", "kind")
            and not (p[0] == "metadata" and (len(p) == 1 or p[1] in _UNOWNED_META))}


def _overlaps(a: Path, b: Path) -> bool:
    return a[:len(b)] == b or b[:len(a)] == a


_ABSENT = object()


def _at(obj: Any, path: Path) -> Any:
    node = obj
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _fields_v1(paths: Iterable[Path]) -> Obj:
    tree: Obj = {}
    for path in sorted(paths):
        node = tree
        for part in path:
            node = node.setdefault(f"f:{part}", {})
    return tree


def _remove_path(obj: Obj, path: tuple[str, ...]) -> None:
    node: Any = obj
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _deep_merge(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        out = dict(base)
        for k, v in top.items():
            out[k] = copy.deepcopy(v) if k in ATOMIC_MAPS else _deep_merge(base.get(k), v)
        return out
    return copy.deepcopy(top)


def _dig(obj: Obj, dotted: str) -> Any:
    node: Any = obj
    for part in dotted.strip(".").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _bury(obj: Obj, dotted: str, value: Any) -> None:
    *parents, last = dotted.strip(".").split(".")
    node = obj
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def reject_invalid_crd(crd: Obj) -> None:
    """The API server's CRD validation: every version has a schema, the schema is structural,
    and every `default` passes as written (no nested defaults filled in) against its node's
    schema and CEL rules (api/validate.py has the same checks, offline)."""
    from modelship_operator.api.validate import default_errors, structural_errors

    errors = []
    group = str((crd.get("spec") or {}).get("group") or "")
    annotations = (crd.get("metadata") or {}).get("annotations") or {}
    if any(group == g or group.endswith("." + g) for g in ("k8s.io", "kubernetes.io")) \
            and "api-approved.kubernetes.io" not in annotations:
        # apiextensions' protected groups: the real server refuses such a CRD without approval
        errors.append('metadata.annotations[api-approved.kubernetes.io]: Required value: protected groups must '
                      'have approval annotation "api-approved.kubernetes.io", see '
                      'https://github.com/kubernetes/enhancements/pull/1111')
    for version in (crd.get("spec") or {}).get("versions") or []:
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        where = f"spec.versions[{version.get('name')}].schema.openAPIV3Schema"
        if not schema:
            errors.append(f"{where}: Required value: schemas are required")
            continue
        errors += [f"{where}{e}" for e in structural_errors(schema) + default_errors(schema)]
    if errors:
        name = (crd.get("metadata") or {}).get("name")
        raise ApiError(422, "Invalid", f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: '
                                       + "; ".join(errors))




def prune_unknown(value: Any, schema: Mapping[str, Any] | None) -> Any:
    """Drop fields a structural schema does not declare (x-kubernetes-preserve-unknown-fields
    and additionalProperties keep theirs), like the API server does for custom resources."""
    if not schema or schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        if props is not None:
            return {k: prune_unknown(v, props[k]) for k, v in value.items() if k in props}
        if isinstance(extra, Mapping):
            return {k: prune_unknown(v, extra) for k, v in value.items()}
        return value if extra is True else {}
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [prune_unknown(v, schema["items"]) for v in value]
    return value


def _prune_object(rtype: ResourceType, obj: Obj) -> Obj:
    if not rtype.schema:
        return obj
    props = rtype.schema.get("properties") or {}
    return {k: v if k in ("apiVersion", "kind", "metadata") else prune_unknown(v, props[k])
            for k, v in obj.items() if k in ("apiVersion", "kind", "metadata") or k in props}


def _spec_part(obj: Obj) -> Obj:
    """What a generation bump looks at: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


# --------------------------------------------------------------------------- the store


@dataclass
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED
    rtype: ResourceType
    obj: Obj
    rv: int


@dataclass
class ObjectStore:
    types: dict[tuple[str, str], ResourceType] = field(default_factory=dict)
    objects: dict[tuple[str, str], dict[tuple[str, str], Obj]] = field(default_factory=dict)
    # field ownership: per object, per (manager, Apply|Update), the field paths it owns
    managed: dict[tuple, dict[tuple[str, str], set[Path]]] = field(default_factory=dict)
    history: deque[WatchEvent] = field(default_factory=lambda: deque(maxlen=20000))
    listeners: list[Callable[[WatchEvent], None]] = field(default_factory=list)
    _rv: itertools.count = field(default_factory=lambda: itertools.count(1))
    rv: int = 0

    def __post_init__(self) -> None:
        for rtype in BUILTINS:
            self.register(rtype)
        for ns in ("default", "kube-system"):
            self.create(self.type_for("v1", "Namespace"), None, {"metadata": {"name": ns}})

    # ---- resource types

    def register(self, rtype: ResourceType) -> None:
        self.types[rtype.key] = rtype
        self.objects.setdefault(rtype.key, {})

    def type_for(self, api_version: str, kind: str) -> ResourceType:
        for rtype in self.types.values():
            if rtype.api_version == api_version and rtype.kind == kind:
                return rtype
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({kind} {api_version})")

    def type_for_path(self, group: str, version: str, plural: str) -> ResourceType:
        rtype = self.types.get((group, plural))
        if rtype is None or rtype.version != version:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural})")
        return rtype

    def group_versions(self) -> dict[str, list[ResourceType]]:
        out: dict[str, list[ResourceType]] = {}
        for rtype in self.types.values():
            out.setdefault(rtype.api_version, []).append(rtype)
        return out

    def _register_crd(self, crd: Obj) -> None:
        reject_invalid_crd(crd)
        spec = crd.get("spec", {})
        names = spec.get("names", {})
        for version in spec.get("versions", []):
            if not version.get("served", True):
                continue
            subs = version.get("subresources") or {}
            scale = subs.get("scale") or {}
            self.register(ResourceType(
                group=spec["group"], version=version["name"], plural=names["plural"], kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                subresources=frozenset(k for k in ("status", "scale") if k in subs),
                short_names=tuple(names.get("shortNames", [])),
                spec_replicas_path=scale.get("specReplicasPath", ".spec.replicas"),
                status_replicas_path=scale.get("statusReplicasPath", ".status.replicas"),
                label_selector_path=scale.get("labelSelectorPath"),
                schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            ))
            break  # one served version per resource in this double

    # ---- notifications

    def _emit(self, type_: str, rtype: ResourceType, obj: Obj) -> None:
        event = WatchEvent(type_, rtype, copy.deepcopy(obj), int(obj["metadata"]["resourceVersion"]))
        self.history.append(event)
        for listener in list(self.listeners):
            listener(event)

    def _next_rv(self) -> str:
        self.rv = next(self._rv)
        return str(self.rv)

    # ---- reads

    def _bucket(self, rtype: ResourceType) -> dict[tuple[str, str], Obj]:
        return self.objects.setdefault(rtype.key, {})

    def _nskey(self, rtype: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
        return (namespace or "") if rtype.namespaced else "", name

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._bucket(rtype).get(self._nskey(rtype, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rtype.plural}.{rtype.group or "core"} "{name}" not found')
        return copy.deepcopy(obj)

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.get(rtype, namespace, name)
        except ApiError:
            return None

    def list(self, rtype: ResourceType, namespace: str | None = None,
             label_selector: str | None = None, field_selector: str | None = None) -> list[Obj]:
        parse_selector(label_selector)  # a malformed selector is a 400 even when nothing is stored
        return [copy.deepcopy(o) for (ns, _), o in sorted(self._bucket(rtype).items())
                if (not namespace or not rtype.namespaced or ns == namespace)
                and selector_matches(label_selector, o["metadata"].get("labels"))
                and field_selector_matches(field_selector, o)]

    def all_objects(self) -> Iterable[tuple[ResourceType, Obj]]:
        for key, bucket in self.objects.items():
            for obj in bucket.values():
                yield self.types[key], obj

    # ---- writes

    def _okey(self, rtype: ResourceType, namespace: str | None, name: str) -> tuple:
        return rtype.key, self._nskey(rtype, namespace, name)

    def create(self, rtype: ResourceType, namespace: str | None, body: Obj,
               manager: str | None = None, *, applied: set[Path] | None = None) -> Obj:
        """Create; `manager` owns every field it set (`applied`: the fields of an apply instead)."""
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            namespace = namespace or meta.get("namespace")
            if not namespace:
                raise ApiError(400, "BadRequest", "a namespace is required")
            if meta.get("namespace") not in (None, namespace):
                raise ApiError(400, "BadRequest", "the namespace of the object does not match the request")
            if rtype.kind != "Namespace" and self.find(self.type_for("v1", "Namespace"), None, namespace) is None:
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = self._nskey(rtype, namespace, meta["name"])
        if key in self._bucket(rtype):
            raise ApiError(409, "AlreadyExists", f'{rtype.plural} "{meta["name"]}" already exists')
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_iso(), generation=1)
        for server_side in ("deletionTimestamp", "resourceVersion", "managedFields"):
            meta.pop(server_side, None)
        if "status" in rtype.subresources and rtype.kind != "Namespace":
            obj.pop("status", None)  # status is written through /status only
        if rtype.kind == "CustomResourceDefinition":
            obj["status"] = {"acceptedNames": obj["spec"]["names"], "conditions": [
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}]}
            self._register_crd(obj)
        if rtype.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        obj = apply_defaults(rtype.api_version, rtype.kind, _prune_object(rtype, obj))
        meta = obj["metadata"]
        okey = (rtype.key, key)
        self.managed.pop(okey, None)
        if manager:
            entry = (manager, "Apply") if applied is not None else (manager, "Update")
            self.managed[okey] = {entry: set(applied) if applied is not None else owned_paths(obj)}
        meta["managedFields"] = self._managed_fields(rtype, okey, [])
        meta["resourceVersion"] = self._next_rv()
        self._bucket(rtype)[key] = obj
        self._emit("ADDED", rtype, obj)
        return copy.deepcopy(obj)

    def _managed_fields(self, rtype: ResourceType, okey: tuple, previous: list[Obj]) -> list[Obj]:
        """metadata.managedFields from the ownership table (an entry's time moves only when its
        fields do, so a no-op write stays a no-op)."""
        before = {(f.get("manager"), f.get("operation")): f for f in previous}
        out = []
        for (manager, operation), paths in sorted(self.managed.get(okey, {}).items()):
            fields = _fields_v1(paths)
            old = before.get((manager, operation))
            same = old is not None and old.get("fieldsV1") == fields
            out.append({"manager": manager, "operation": operation, "apiVersion": rtype.api_version,
                        "time": old["time"] if same else now_iso(), "fieldsType": "FieldsV1",
                        "fieldsV1": fields})
        return out

    def _take_over(self, okey: tuple, manager: str, old: Obj, new: Obj) -> None:
        """An update or patch: its manager now owns what it changed; whoever owned those
        fields (or fields it removed) no longer does."""
        changed = {p for p in owned_paths(new) if _at(old, p) != _at(new, p)}
        removed = {p for p in owned_paths(old) if _at(new, p) is _ABSENT}
        if not changed and not removed:
            return
        owners = self.managed.setdefault(okey, {})
        for entry, paths in list(owners.items()):
            if entry != (manager, "Update"):
                paths -= {p for p in paths if any(_overlaps(p, q) for q in changed | removed)}
        mine = owners.setdefault((manager, "Update"), set())
        mine -= {p for p in mine if any(_overlaps(p, q) for q in removed)}
        mine |= changed
        for entry in [e for e, paths in owners.items() if not paths]:
            del owners[entry]

    def _commit(self, rtype: ResourceType, old: Obj, new: Obj, *, subresource: str | None,
                manager: str | None = None) -> Obj:
        """Store `new` in place of `old` with API-server bookkeeping; no-ops write nothing.
        `manager` (an update or patch) takes ownership of what it changed."""
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        for frozen in ("uid", "creationTimestamp", "name", "namespace", "deletionTimestamp",
                       "generation", "resourceVersion", "managedFields"):
            if frozen in old_meta:
                meta[frozen] = old_meta[frozen]
            else:
                meta.pop(frozen, None)
        if "status" in rtype.subresources:
            if subresource == "status":  # only status (and metadata) may change through /status
                new = {**copy.deepcopy(old), "status": new.get("status"), "metadata": meta}
                if new["status"] is None:
                    new.pop("status")
            elif subresource is None:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        new = _prune_object(rtype, new)
        if subresource != "status":
            apply_defaults(rtype.api_version, rtype.kind, new)
        meta = new["metadata"]
        if rtype.kind == "CustomResourceDefinition":
            reject_invalid_crd(new)
        okey = self._okey(rtype, meta.get("namespace"), meta["name"])
        if manager:
            self._take_over(okey, manager, old, new)
        meta["managedFields"] = self._managed_fields(rtype, okey, old_meta.get("managedFields") or [])
        if new == old:
            return copy.deepcopy(old)
        if _spec_part(new) != _spec_part(old):
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        key = self._nskey(rtype, meta.get("namespace"), meta["name"])
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            del self._bucket(rtype)[key]
            self.managed.pop(okey, None)
            self._emit("DELETED", rtype, new)
            self._collect_garbage(meta["uid"])
            return copy.deepcopy(new)
        self._bucket(rtype)[key] = new
        if rtype.kind == "CustomResourceDefinition":
            self._register_crd(new)
        self._emit("MODIFIED", rtype, new)
        return copy.deepcopy(new)

    @staticmethod
    def _check_rv(old: Obj, new: Any) -> None:
        """A write that names a resourceVersion is conditional on it (optimistic concurrency)."""
        wanted = (new.get("metadata") or {}).get("resourceVersion") if isinstance(new, dict) else None
        if wanted and wanted != old["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified; please apply your changes "
                                            "to the latest version and try again")

    def patch(self, rtype: ResourceType, namespace: str | None, name: str, patch_type: str,
              body: Any, *, subresource: str | None = None, manager: str | None = None) -> Obj:
        old = self.get(rtype, namespace, name)
        if subresource == "scale":
            return self._patch_scale(rtype, old, patch_type, body, manager)
        if patch_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            new = merge_patch(old, body)
        elif patch_type == "application/json-patch+json":
            new = json_patch(old, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {patch_type!r}")
        self._check_rv(old, new)  # a resourceVersion the patch put in must be the current one
        if subresource not in (None, "status"):
            raise ApiError(404, "NotFound", f"no subresource {subresource!r}")
        return self._commit(rtype, old, new, subresource=subresource, manager=manager)

    def replace(self, rtype: ResourceType, namespace: str | None, name: str, body: Obj,
                *, subresource: str | None = None, manager: str | None = None) -> Obj:
        old = self.get(rtype, namespace, name)
        if subresource == "scale":
            return self._patch_scale(rtype, old, "application/merge-patch+json",
                                     {"spec": {"replicas": body.get("spec", {}).get("replicas")},
                                      "metadata": {"resourceVersion": (body.get("metadata") or {}).get(
                                          "resourceVersion")}}, manager)
        self._check_rv(old, body)
        return self._commit(rtype, old, copy.deepcopy(body), subresource=subresource, manager=manager)

    def scale_of(self, rtype: ResourceType, obj: Obj) -> Obj:
        meta = obj["metadata"]
        selector = _dig(obj, rtype.label_selector_path) if rtype.label_selector_path else None
        if rtype.kind == "Deployment":
            labels = _dig(obj, ".spec.selector.matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                                   "creationTimestamp") if k in meta},
                "spec": {"replicas": _dig(obj, rtype.spec_replicas_path) or 0},
                "status": {"replicas": _dig(obj, rtype.status_replicas_path) or 0,
                           **({"selector": selector} if selector else {})}}

    def _patch_scale(self, rtype: ResourceType, old: Obj, patch_type: str, body: Any,
                     manager: str | None = None) -> Obj:
        scale = self.scale_of(rtype, old)
        new_scale = merge_patch(scale, body) if patch_type != "application/json-patch+json" \
            else json_patch(scale, body)
        self._check_rv(old, new_scale)
        new = copy.deepcopy(old)
        _bury(new, rtype.spec_replicas_path, new_scale["spec"]["replicas"])
        return self.scale_of(rtype, self._commit(rtype, old, new, subresource=None, manager=manager))

    def apply(self, rtype: ResourceType, namespace: str | None, name: str, body: Obj,
              manager: str, *, force: bool = False, subresource: str | None = None) -> Obj:
        """Server-side apply with field ownership (see the module docstring)."""
        if not manager:
            raise ApiError(400, "BadRequest", "fieldManager is required for apply patch")
        meta = body.get("metadata") or {}
        if body.get("kind") != rtype.kind or body.get("apiVersion") != rtype.api_version:
            raise ApiError(400, "BadRequest", f"apply body kind/apiVersion {body.get('kind')} "
                                              f"{body.get('apiVersion')} does not match {rtype.kind}")
        if meta.get("name") != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the request")
        okey = self._okey(rtype, namespace, name)
        mine = (manager, "Apply")
        applied = owned_paths(body) - {("metadata", "resourceVersion")}
        old = self.find(rtype, namespace, name)
        if old is None:
            body = copy.deepcopy(body)
            body.get("metadata", {}).pop("resourceVersion", None)
            return self.create(rtype, namespace, body, manager, applied=applied)
        self._check_rv(old, body)
        owners = {e: set(p) for e, p in self.managed.get(okey, {}).items()}
        others = {e: p for e, p in owners.items() if e != mine}
        new = copy.deepcopy(old)
        for path in owners.get(mine, set()) - applied:  # no longer applied: gone unless shared
            if not any(_overlaps(path, q) for q in applied) \
                    and not any(_overlaps(path, q) for paths in others.values() for q in paths):
                _remove_path(new, path)
        new = _deep_merge(new, {k: v for k, v in body.items() if k != "metadata"} | {
            "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}})
        candidate = apply_defaults(rtype.api_version, rtype.kind, _prune_object(rtype, copy.deepcopy(new)))
        conflicts: list[tuple[tuple[str, str], Path]] = []
        for entry, paths in others.items():
            for theirs in paths:
                for ours in applied:
                    deeper = theirs if len(theirs) >= len(ours) else ours
                    if _overlaps(theirs, ours) and _at(old, deeper) != _at(candidate, deeper):
                        conflicts.append((entry, theirs))
        if conflicts and not force:
            detail = "; ".join(f'conflict with "{m}"{" using " + rtype.api_version if op == "Update" else ""}: '
                               f'.{".".join(p)}' for (m, op), p in sorted(set(conflicts)))
            raise ApiError(409, "Conflict", f"Apply failed with {len(set(conflicts))} conflict(s): {detail}")
        for entry, path in conflicts:  # forced: the field is ours now
            others[entry].discard(path)
        self.managed[okey] = {e: p for e, p in others.items() if p} | {mine: applied}
        return self._commit(rtype, old, new, subresource=subresource)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str,
               propagation: str = "Background") -> Obj:
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise ApiError(400, "BadRequest", f"unsupported propagationPolicy {propagation!r}")
        obj = self.get(rtype, namespace, name)
        meta = obj["metadata"]
        key = self._nskey(rtype, namespace, name)
        if propagation == "Orphan":  # the dependents stay, without their reference to this owner
            self._orphan_dependents(meta["uid"])
        elif propagation == "Foreground" and self._dependents(meta["uid"]):
            # The owner stays (deletionTimestamp + foregroundDeletion) until the collector has
            # removed its dependents (collect_garbage), then goes.
            stored = self._bucket(rtype)[key]
            fins = meta.get("finalizers") or []
            if not meta.get("deletionTimestamp") or "foregroundDeletion" not in fins:
                stored["metadata"].setdefault("deletionTimestamp", now_iso())
                stored["metadata"]["finalizers"] = [*fins, *(["foregroundDeletion"]
                                                             if "foregroundDeletion" not in fins else [])]
                stored["metadata"]["resourceVersion"] = self._next_rv()
                self._emit("MODIFIED", rtype, stored)
            return copy.deepcopy(stored)
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                stored = self._bucket(rtype)[key]
                stored["metadata"]["deletionTimestamp"] = now_iso()
                stored["metadata"]["deletionGracePeriodSeconds"] = 0
                stored["metadata"]["resourceVersion"] = self._next_rv()
                self._emit("MODIFIED", rtype, stored)
                return copy.deepcopy(stored)
            return obj
        del self._bucket(rtype)[key]
        self.managed.pop(self._okey(rtype, namespace, name), None)
        meta["resourceVersion"] = self._next_rv()
        self._emit("DELETED", rtype, obj)
        if rtype.kind == "Namespace":
            for other, child in list(self.all_objects()):
                if other.namespaced and child["metadata"].get("namespace") == name:
                    self._delete_quietly(other, child)
        if rtype.kind == "CustomResourceDefinition":
            crd_key = (obj["spec"]["group"], obj["spec"]["names"]["plural"])
            for child in list(self.objects.get(crd_key, {}).values()):
                self._delete_quietly(self.types[crd_key], child)
            self.types.pop(crd_key, None)
        self._collect_garbage(meta["uid"])
        return obj

    def _delete_quietly(self, rtype: ResourceType, obj: Obj, propagation: str = "Background") -> None:
        try:
            self.delete(rtype, obj["metadata"].get("namespace"), obj["metadata"]["name"], propagation)
        except ApiError:
            pass

    # ---- the garbage collector

    def _dependents(self, owner_uid: str) -> list[tuple[ResourceType, Obj]]:
        return [(rtype, obj) for rtype, obj in list(self.all_objects())
                if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])]

    def _owner_exists(self, dependent: Obj, ref: Mapping[str, Any]) -> bool:
        try:
            rtype = self.type_for(str(ref.get("apiVersion")), str(ref.get("kind")))
        except ApiError:
            return True  # a kind the collector cannot resolve: it leaves the dependent alone
        owner = self._bucket(rtype).get(self._nskey(rtype, dependent["metadata"].get("namespace"),
                                                    str(ref.get("name"))))
        return owner is not None and owner["metadata"].get("uid") == ref.get("uid")

    def _collect_if_orphaned(self, rtype: ResourceType, obj: Obj) -> None:
        """What the garbage collector does with a dependent: delete it when none of its owners
        exists, drop the references to absent owners when some still do."""
        refs = obj["metadata"].get("ownerReferences") or []
        if not refs:
            return
        alive = [ref for ref in refs if self._owner_exists(obj, ref)]
        if not alive:
            self._delete_quietly(rtype, obj)
        elif len(alive) < len(refs):
            current = self._bucket(rtype).get(self._nskey(rtype, obj["metadata"].get("namespace"),
                                                          obj["metadata"]["name"]))
            if current is not None:
                new = copy.deepcopy(current)
                new["metadata"]["ownerReferences"] = alive
                self._commit(rtype, copy.deepcopy(current), new, subresource=None,
                             manager="generic-garbage-collector")

    def _collect_garbage(self, owner_uid: str) -> None:
        """An owner is gone: each of its dependents is collected (or keeps its other owners)."""
        for rtype, obj in self._dependents(owner_uid):
            self._collect_if_orphaned(rtype, obj)

    def collect_garbage(self) -> None:
        """One pass of the garbage collector over everything (the HTTP double runs it every
        moment, as the real collector works shortly after a change; in-memory tests call it):
        dependents none of whose owners exists go (a child created for an owner already
        deleted), and owners in foreground deletion lose their dependents, then go themselves.
        An owner deleted with Background propagation takes its dependents at once."""
        for rtype, obj in list(self.all_objects()):
            meta = obj["metadata"]
            if meta.get("ownerReferences"):
                self._collect_if_orphaned(rtype, obj)
            if meta.get("deletionTimestamp") and "foregroundDeletion" in (meta.get("finalizers") or []):
                for dep_type, dep in self._dependents(meta["uid"]):
                    self._delete_quietly(dep_type, dep, "Foreground")
                current = self.find(rtype, meta.get("namespace"), meta["name"])
                if current is not None and not self._dependents(meta["uid"]):
                    new = copy.deepcopy(current)
                    new["metadata"]["finalizers"] = [f for f in current["metadata"]["finalizers"]
                                                     if f != "foregroundDeletion"]
                    self._commit(rtype, current, new, subresource=None)

    def _orphan_dependents(self, owner_uid: str) -> None:
        for rtype, obj in self._dependents(owner_uid):
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [r for r in obj["metadata"]["ownerReferences"]
                                                  if r.get("uid") != owner_uid]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            self._commit(rtype, obj, new, subresource=None, manager="generic-garbage-collector")

    # ---- test helpers (what other controllers would do)

    def set_status(self, rtype: ResourceType, namespace: str | None, name: str, status: Obj) -> Obj:
        old = self.get(rtype, namespace, name)
        return self._commit(rtype, old, {**copy.deepcopy(old), "status": copy.deepcopy(status)},
                            subresource="status")

    def mark_deployment_available(self, namespace: str, name: str, ready: int | None = None) -> Obj:
        """What the deployment controller reports once all replicas are up to date and ready."""
        rtype = self.type_for("apps/v1", "Deployment")
        dep = self.get(rtype, namespace, name)
        wanted = int(dep.get("spec", {}).get("replicas", 1))
        ready = wanted if ready is None else ready
        return self.set_status(rtype, namespace, name, deployment_status(dep, ready))


def deployment_status(dep: Obj, ready: int) -> Obj:
    wanted = int(dep.get("spec", {}).get("replicas", 1))
    available = ready >= wanted
    ts = now_iso()
    return {
        "observedGeneration": dep["metadata"].get("generation", 1),
        "replicas": wanted, "updatedReplicas": wanted, "readyReplicas": ready,
        "availableReplicas": ready, **({"unavailableReplicas": wanted - ready} if not available else {}),
        "conditions": [
            {"type": "Available", "status": "True" if available else "False",
             "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
             "message": "Deployment has minimum availability." if available
             else "Deployment does not have minimum availability.",
             "lastUpdateTime": ts, "lastTransitionTime": ts},
            {"type": "Progressing", "status": "True",
             "reason": "NewReplicaSetAvailable" if available else "ReplicaSetUpdated",
             "message": f'ReplicaSet "{dep["metadata"]["name"]}" has successfully progressed.',
             "lastUpdateTime": ts, "lastTransitionTime": ts},
        ],
    }


# --------------------------------------------------------------------------- the kube double


@dataclass
class Write:
    verb: str  # apply | create | delete | patch | patch_status | patch_metadata | event
    kind: str
    namespace: str | None
    name: str
    body: Any = None


@dataclass
class KubeDouble:
    """Same interface as `modelship_operator.kube.Kube`, over an `ObjectStore`.

    Every write is recorded in `writes` (reads are not). `fail_next(verb, status, ...)` makes
    the next matching call fail as the API server would, mapped by kube.py's own mapping.
    """

    store: ObjectStore = field(default_factory=ObjectStore)
    field_manager: str = "modelship-operator"
    writes: list[Write] = field(default_factory=list)
    served_resources: set[tuple[str, str, str]] = field(default_factory=set)
    _failures: list[tuple[str, str | None, int, str]] = field(default_factory=list)

    def fail_next(self, verb: str, status: int, message: str = "injected failure",
                  kind: str | None = None) -> None:
        self._failures.append((verb, kind, status, message))

    def _maybe_fail(self, verb: str, kind: str) -> None:
        for i, (v, k, status, message) in enumerate(self._failures):
            if v == verb and k in (None, kind):
                del self._failures[i]
                reason = {409: "Conflict", 422: "Invalid", 403: "Forbidden", 429: "TooManyRequests"}.get(
                    status, "InternalError" if status >= 500 else "BadRequest")
                raise error_from_response(status, json.dumps(
                    ApiError(status, reason, message).body()).encode(), f"{verb} {kind}")

    def _call(self, fn: Callable[[], Obj], verb: str, kind: str) -> Obj:
        try:
            return fn()
        except ApiError as exc:
            raise error_from_response(exc.status, json.dumps(exc.body()).encode(), f"{verb} {kind}") from exc

    async def close(self) -> None:
        return None

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> Obj | None:
        self._maybe_fail("get", kind)
        return self.store.find(self.store.type_for(api_version, kind), namespace, name)

    async def list(self, api_version: str, kind: str, namespace: str | None = None,
                   label_selector: Mapping[str, str] | str | None = None) -> list[Obj]:
        self._maybe_fail("list", kind)
        if isinstance(label_selector, Mapping):
            label_selector = ",".join(f"{k}={v}" for k, v in sorted(label_selector.items()))
        try:
            rtype = self.store.type_for(api_version, kind)
        except ApiError as exc:
            raise PermanentError(exc.message, status=404) from exc
        return self.store.list(rtype, namespace, label_selector)

    async def owned(self, api_version: str, kind: str, namespace: str, owner_uid: str,
                    label_selector: Mapping[str, str] | str | None = None) -> list[Obj]:
        return [o for o in await self.list(api_version, kind, namespace, label_selector)
                if controller_uid(o) == owner_uid]

    async def served(self, group: str, version: str, plural: str) -> bool:
        self._maybe_fail("served", plural)
        if (group, version, plural) in self.served_resources:
            return True
        rtype = self.store.types.get((group, plural))
        return rtype is not None and rtype.version == version

    async def apply(self, manifest: Mapping[str, Any], *, force: bool = True) -> Obj:
        kind, meta = manifest["kind"], manifest["metadata"]
        self._maybe_fail("apply", kind)
        rtype = self.store.type_for(manifest["apiVersion"], kind)
        result = self._call(lambda: self.store.apply(rtype, meta.get("namespace"), meta["name"],
                                                     copy.deepcopy(dict(manifest)), self.field_manager,
                                                     force=force),
                            "apply", kind)
        self.writes.append(Write("apply", kind, meta.get("namespace"), meta["name"], copy.deepcopy(manifest)))
        return result

    async def create(self, manifest: Mapping[str, Any]) -> Obj:
        kind = manifest["kind"]
        self._maybe_fail("create", kind)
        rtype = self.store.type_for(manifest["apiVersion"], kind)
        ns = (manifest.get("metadata") or {}).get("namespace")
        result = self._call(lambda: self.store.create(rtype, ns, copy.deepcopy(dict(manifest)),
                                                      self.field_manager), "create", kind)
        self.writes.append(Write("create", kind, ns, result["metadata"]["name"], copy.deepcopy(manifest)))
        return result

    async def delete(self, api_version: str, kind: str, namespace: str | None, name: str,
                     *, propagation: str = "Background") -> bool:
        self._maybe_fail("delete", kind)
        rtype = self.store.type_for(api_version, kind)
        if self.store.find(rtype, namespace, name) is None:
            return False
        self._call(lambda: self.store.delete(rtype, namespace, name, propagation), "delete", kind)
        self.writes.append(Write("delete", kind, namespace, name))
        return True

    async def patch_status(self, api_version: str, kind: str, namespace: str | None, name: str,
                           status_patch: Mapping[str, Any]) -> Obj:
        self._maybe_fail("patch_status", kind)
        rtype = self.store.type_for(api_version, kind)
        body = {"status": copy.deepcopy(dict(status_patch))}
        result = self._call(lambda: self.store.patch(rtype, namespace, name, "application/merge-patch+json",
                                                     body, subresource="status", manager=self.field_manager),
                            "patch_status", kind)
        self.writes.append(Write("patch_status", kind, namespace, name, body))
        return result

    async def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                    body: Any, *, json_patch: bool = False) -> Obj:
        self._maybe_fail("patch", kind)
        rtype = self.store.type_for(api_version, kind)
        patch = copy.deepcopy(list(body) if json_patch else dict(body))
        patch_type = "application/json-patch+json" if json_patch else "application/merge-patch+json"
        result = self._call(lambda: self.store.patch(rtype, namespace, name, patch_type, patch,
                                                     manager=self.field_manager), "patch", kind)
        self.writes.append(Write("patch", kind, namespace, name, patch))
        return result

    async def patch_metadata(self, api_version: str, kind: str, namespace: str | None, name: str, *,
                             annotations: Mapping[str, str | None] | None = None,
                             labels: Mapping[str, str | None] | None = None) -> Obj:
        self._maybe_fail("patch_metadata", kind)
        rtype = self.store.type_for(api_version, kind)
        meta: Obj = {}
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        if labels is not None:
            meta["labels"] = dict(labels)
        result = self._call(lambda: self.store.patch(rtype, namespace, name, "application/merge-patch+json",
                                                     {"metadata": meta}, manager=self.field_manager),
                            "patch_metadata", kind)
        self.writes.append(Write("patch_metadata", kind, namespace, name, meta))
        return result

    async def create_event(self, involved: Mapping[str, Any], type: str, reason: str, message: str,
                           *, component: str | None = None, name: str | None = None, at: str | None = None) -> Obj:
        self._maybe_fail("event", "Event")
        meta = involved.get("metadata") or {}
        named = {"name": name} if name else {"generateName": f"{meta.get('name')}."}
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {**named, "namespace": meta.get("namespace")},
                 "count": 1, **({"firstTimestamp": at, "lastTimestamp": at} if at else {}),
                 "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                                    "name": meta.get("name"), "namespace": meta.get("namespace"),
                                    "uid": meta.get("uid")},
                 "type": type, "reason": reason, "message": message,
                 "source": {"component": component or self.field_manager}}
        rtype = self.store.type_for("v1", "Event")
        result = self._call(lambda: self.store.create(rtype, meta.get("namespace"), event), "event", "Event")
        self.writes.append(Write("event", "Event", meta.get("namespace"), result["metadata"]["name"], event))
        return result

    # ---- conveniences for tests

    def events_for(self, name: str) -> list[Obj]:
        return [e for e in self.store.list(self.store.type_for("v1", "Event"))
                if e.get("involvedObject", {}).get("name") == name]

    def writes_since(self, mark: int) -> list[Write]:
        return self.writes[mark:]
