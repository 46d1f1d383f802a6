"""Is an object managed by a GitOps tool? Pure; used by `kubectl-modelship rollback`.

A GitOps tool re-applies the spec from Git, so a spec patched in the cluster is reverted at its
next sync (or reported as drift). Rolling back then means reverting the commit in Git.

Signs looked for (any one is enough):
- Argo CD: `argocd.argoproj.io/*` labels or annotations (`tracking-id`, `instance`, sync options;
  with label tracking, `app.kubernetes.io/instance` goes together with them), or a managedFields
  manager `argocd-controller` / `argocd-application-controller` (server-side apply syncs).
- Flux: `kustomize.toolkit.fluxcd.io/*` or `helm.toolkit.fluxcd.io/*` labels, or a managedFields
  manager `kustomize-controller` / `helm-controller`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ARGO_PREFIX = "argocd.argoproj.io/"
FLUX_PREFIXES = ("kustomize.toolkit.fluxcd.io/", "helm.toolkit.fluxcd.io/")
ARGO_MANAGERS = ("argocd-controller", "argocd-application-controller")
FLUX_MANAGERS = ("kustomize-controller", "helm-controller")


def gitops_manager(obj: Mapping[str, Any]) -> str | None:
    """A short description of the GitOps tool managing `obj` (and the sign found), or None."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    managers = [str(f.get("manager", "")) for f in meta.get("managedFields") or () if isinstance(f, Mapping)]

    argo = sorted(k for k in (*labels, *annotations) if k.startswith(ARGO_PREFIX))
    if argo:
        return f"Argo CD ({argo[0]})"
    if manager := next((m for m in managers if m in ARGO_MANAGERS), None):
        return f"Argo CD (field manager {manager})"
    flux = sorted(k for k in labels if k.startswith(FLUX_PREFIXES))
    if flux:
        return f"Flux ({flux[0]})"
    if manager := next((m for m in managers if m in FLUX_MANAGERS), None):
        return f"Flux (field manager {manager})"
    return None
