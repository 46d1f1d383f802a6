"""Does a live child still hold everything we apply? Pure: no I/O.

Reconcile compares each rendered manifest with the live object instead of trusting its own
`applied-hash` annotation, so a field someone else changed (`kubectl scale` of a child
Deployment, a patched Service selector) is put back, while an unchanged child costs no write.

The desired manifest must be a *semantic subset* of the live object, the way the API server
stores it after server-side apply:
- fields the server adds (defaults such as `protocol: TCP`, `revisionHistoryLimit`, a
  `clusterIP`, `status`, `managedFields`) and fields other managers own are ignored;
- a desired zero value (`false`, `0`, `""`, `{}`, `[]`) matches an absent field (the API
  drops omitempty fields);
- resource quantities compare by value (`1000m` == `1`, `1024Mi` == `1Gi`);
- selectors are atomic (a key someone added makes a difference);
- lists whose items carry a merge key (containers by `name`, volume mounts by `mountPath`,
  ownerReferences by `uid`, ...) are associative, as in server-side apply: each desired item
  must be present and match; items others added are theirs and stay. Other lists are atomic:
  same length, item by item.
"""
from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

# Merge keys of the associative lists in what we render, in order of preference.
MERGE_KEYS = ("uid", "mountPath", "containerPort", "name")
# Maps the API server replaces as a whole (+mapType=atomic, LabelSelector is +structType=atomic):
# a key someone else added (say to a Service selector) must go, so these compare exactly.
ATOMIC_MAPS = frozenset({"selector", "nodeSelector"})
# Map keys whose values are resource quantities (besides anything under requests/limits).
QUANTITY_KEYS = frozenset({"sizeLimit", "averageValue", "value", "storage"})
QUANTITY_PARENTS = frozenset({"requests", "limits"})

_SUFFIXES = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


def quantity(value: Any) -> Decimal | None:
    """The value of a Kubernetes resource quantity ("500m", "1Gi", "1e3", 2), None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", ""):
        if suffix and not text.endswith(suffix):
            continue
        number = text[: len(text) - len(suffix)] if suffix else text
        try:
            return Decimal(number) * _SUFFIXES[suffix]
        except InvalidOperation:
            continue
    return None


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 and not isinstance(value, bool) \
        or value in ("", {}, [])


def _merge_key(items: list[Any]) -> str | None:
    if not items or not all(isinstance(i, Mapping) for i in items):
        return None
    for key in MERGE_KEYS:
        if all(key in item for item in items):
            return key
    return None


def _path(parent: str, key: Any) -> str:
    return f"{parent}.{key}" if isinstance(key, str) else f"{parent}[{key}]"


def difference(desired: Any, live: Any, path: str = "", key: str = "", parent: str = "",
               *, atomic: bool = False) -> str | None:
    """The first path where `live` does not hold `desired`, or None when it does. Inside an
    atomic map (`atomic`), a key of live's that desired lacks is a difference too."""
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return path or "."
        atomic = atomic or key in ATOMIC_MAPS
        if atomic and any(k not in desired and not _empty(v) for k, v in live.items()):
            return path
        for k, want in desired.items():
            if k not in live:
                if _empty(want):
                    continue
                return _path(path, k)
            found = difference(want, live[k], _path(path, k), str(k), key, atomic=atomic)
            if found:
                return found
        return None
    if isinstance(desired, list):
        if not isinstance(live, list):
            return None if not desired and live is None else path
        merge_key = _merge_key(desired)
        if merge_key is not None and not atomic and _merge_key(live) == merge_key:
            by_key = {item[merge_key]: item for item in live}
            for item in desired:
                item_path = f"{path}[{merge_key}={item[merge_key]}]"
                if item[merge_key] not in by_key:
                    return item_path
                found = difference(item, by_key[item[merge_key]], item_path, key, parent, atomic=atomic)
                if found:
                    return found
            return None
        if len(desired) != len(live):
            return path
        for i, (want, have) in enumerate(zip(desired, live, strict=True)):
            found = difference(want, have, _path(path, i), key, parent, atomic=atomic)
            if found:
                return found
        return None
    if desired == live and type(desired) is type(live) or _same_number(desired, live):
        return None
    if key in QUANTITY_KEYS or parent in QUANTITY_PARENTS:
        want, have = quantity(desired), quantity(live)
        if want is not None and want == have:
            return None
    return path or "."


def _same_number(a: Any, b: Any) -> bool:
    return (isinstance(a, int | float) and isinstance(b, int | float)
            and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def drifted(desired: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Where a live child no longer holds what we apply (metadata labels, annotations and
    ownerReferences included), or None when applying again would change nothing of ours."""
    return difference({k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}, live)
