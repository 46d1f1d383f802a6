"""kubectl-modelship: the command-line companion (also usable as `kubectl modelship ...`).

  render -f FILE              the exact manifests the operator would apply, offline
  status NAME                 a readable summary: versions, weights, step, analysis, conditions
  history NAME                the revisions recorded in status.history
  promote NAME [--full]       finish the current rollout step (or the whole rollout) now
  abort NAME                  stop the canary: weight 0, scaled down, phase Degraded
  retry NAME                  restart an aborted canary from its first step
  rollback NAME [--to-revision N] [--force]
                              patch the model back to a history entry (default: the previous one)

`render` goes through the operator's own code path: schema validation, the typed spec,
`plan` (with nothing observed yet) and `render`. The cluster commands read and write through
`modelship_operator.kube`: promote/abort/retry only set an annotation (its value carries a
request id, `step@<time>-<random>`, so the operator acts on each request exactly once) that
the operator acts on and then removes; rollback is the one command that patches `spec` (the pod-shaping fields
a history entry recorded), and it refuses without `--force` when a GitOps tool manages the object.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

import yaml

from .api import validate as schema  # offline validation with the API server's semantics
from .gitops import gitops_manager
from .planning import (ABORT_ANNOTATION, ACTION_ID_SEPARATOR, PROMOTE_ANNOTATION, PROMOTE_FULL, PROMOTE_STEP,
                       RETRY_ANNOTATION, SHAPING_KEYS, Observed, plan)
from .planning.traffic import wants_gateway
from .render import render, to_yaml
from .settings import Settings
from .spec import API_VERSION, KIND, ModelDeployment, SpecError

EXIT_OK, EXIT_ERROR, EXIT_INVALID = 0, 1, 2
CLI_FIELD_MANAGER = "kubectl-modelship"


class CliError(Exception):
    """A user-facing failure: the message goes to stderr, `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- render


def _load_documents(path: str, stdin: TextIO) -> list[Any]:
    try:
        text = stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", EXIT_INVALID) from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not valid YAML: {exc}", EXIT_INVALID) from None
    if not docs:
        raise CliError(f"{path} holds no ModelDeployment", EXIT_INVALID)
    return docs


def render_documents(
    docs: Sequence[Any], settings: Settings, *, namespace: str | None = None, servicemonitor: bool = False,
    gateway_api: bool | None = None, notes: list[str] | None = None, keda: bool = False,
) -> list[dict]:
    """Every manifest the operator would apply for these ModelDeployments (nothing observed yet).

    `gateway_api`: whether the cluster serves the Gateway API's HTTPRoute; None assumes it does
    for each spec that asks for gateway mode (what the operator applies on such a cluster). A
    spec that asks for gateway mode rendered without it falls back to replicas mode, as the
    operator does there, and `notes` says so.
    Raises CliError (exit 2) naming the document and every problem when one is invalid.
    """
    manifests: list[dict] = []
    for index, doc in enumerate(docs):
        where = f"document {index + 1}"
        if isinstance(doc, Mapping):
            name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), Mapping) else None
            where += f" ({doc.get('kind', '?')} {name})" if name else ""
            if doc.get("apiVersion") != API_VERSION or doc.get("kind") != KIND:
                raise CliError(f"{where}: expected apiVersion {API_VERSION}, kind {KIND}", EXIT_INVALID)
        body = dict(doc) if isinstance(doc, Mapping) else doc
        if namespace and isinstance(body, dict):
            body["metadata"] = {**(body.get("metadata") or {}), "namespace": namespace}
        errors = schema.validate(body)
        if errors:
            raise CliError(f"{where} is invalid:\n" + "\n".join(f"  - {e}" for e in errors), EXIT_INVALID)
        try:
            md = ModelDeployment.from_body(body)
        except SpecError as exc:
            raise CliError(f"{where} is invalid: {exc}", EXIT_INVALID) from None
        served = wants_gateway(md) if gateway_api is None else gateway_api
        observed = Observed(servicemonitor_served=servicemonitor, httproute_served=served, scaledobject_served=keda)
        desired = plan(md, observed, settings, datetime.now(timezone.utc))
        if wants_gateway(md) and desired.traffic_mode != "gateway" and notes is not None:
            notes.append(f"{where}: rollout.gateway is set but rendered without the Gateway API "
                         "(--no-gateway-api): the operator splits traffic by replicas on such a cluster, "
                         "with no HTTPRoute and no per-role Services")
        manifests.extend(render(desired))
    return manifests


def cmd_render(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, stdin: TextIO) -> int:
    settings = _settings(env)
    docs = _load_documents(args.filename, stdin)
    notes: list[str] = []
    manifests = render_documents(docs, settings, namespace=args.namespace, servicemonitor=args.servicemonitor,
                                 gateway_api=args.gateway_api, notes=notes, keda=args.keda)
    for note in notes:
        args.stderr.write(f"note: {note}\n")
    if any("ownerReferences" not in m["metadata"] for m in manifests):
        # Offline there is no uid yet; in the cluster every child is owned by its ModelDeployment.
        out.write("# Rendered offline: the operator adds ownerReferences to the ModelDeployment's uid.\n")
    out.write(to_yaml(manifests))
    return EXIT_OK


def _settings(env: Mapping[str, str]) -> Settings:
    try:
        return Settings.from_env(env)
    except ValueError as exc:
        raise CliError(f"invalid operator setting: {exc}", EXIT_INVALID) from None


# --------------------------------------------------------------------------- status


def _cell(value: Any, default: str = "-") -> str:
    return default if value is None or value == "" else str(value)


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _describe_value(value: Any) -> str:
    """`=v` exact, `^=v` prefix, `=~re` regex (a StringMatch as the spec holds it)."""
    value = value if isinstance(value, Mapping) else {}
    if "exact" in value:
        return f"={value['exact']}"
    if "prefix" in value:
        return f"^={value['prefix']}"
    return f"=~{value.get('regex', '?')}"


def header_route_lines(spec: Mapping[str, Any], canary: Mapping[str, Any]) -> list[str]:
    """The header routes that send requests to the canary now (status.canary.headerRoutes), each
    with its conditions from the setHeaderRoute step that last set it (the spec's steps before
    the current one): `beta: header X-User-Group=beta, cookie ab^=b`."""
    names = [n for n in canary.get("headerRoutes") or () if isinstance(n, str)]
    steps = [s for s in ((spec.get("rollout") or {}).get("steps")) or () if isinstance(s, Mapping)]
    index = canary.get("step") if isinstance(canary.get("step"), int) else len(steps)
    latest: dict[str, Any] = {}
    for step in steps[:index]:
        route = step.get("setHeaderRoute")
        if isinstance(route, Mapping) and route.get("name"):
            latest[str(route["name"])] = route.get("match") or ()
    lines = []
    for name in names:
        conditions = [f"header {m['headerName']}{_describe_value(m.get('headerValue'))}" if m.get("headerName")
                      else f"cookie {m.get('cookieName')}{_describe_value(m.get('cookieValue'))}"
                      for m in latest.get(name, ()) if isinstance(m, Mapping)]
        lines.append(f"{name}: {', '.join(conditions) or '(not in the current spec)'}")
    return lines


def format_status(obj: Mapping[str, Any]) -> str:
    """A readable summary of a ModelDeployment object (as the API server returns it)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    lines = [f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"]
    generation, observed = meta.get("generation"), status.get("observedGeneration")
    phase = _cell(status.get("phase"), "Unknown (the operator has not reported yet)")
    lines.append(f"  Phase:     {phase}")
    if generation is not None and observed is not None and observed < generation:
        lines.append(f"  Note:      status is for generation {observed}; the operator has not processed {generation} yet")
    lines.append(f"  URL:       {_cell(status.get('url'))}")
    mode = status.get("trafficMode")
    if mode:
        how = {"gateway": f"HTTPRoute {meta.get('name', '?')} splits by weight; the URL's Service serves the stable",
               "replicas": "one Service over every revision; the replica split is the weight"}.get(mode, "")
        lines.append(f"  Traffic:   {mode}" + (f" ({how})" if how else ""))
    wanted = spec.get("replicas")
    lines.append(
        f"  Replicas:  {_cell(status.get('readyReplicas'), '0')} ready / {_cell(status.get('replicas'), '0')} running"
        + (f" / {wanted} wanted" if wanted is not None else "")
    )
    stable = status.get("stable") or {}
    canary = status.get("canary") or {}
    canary_weight = int(canary.get("weight") or 0) if canary and not canary.get("aborted") else 0
    if stable:
        lines.append(
            f"  Stable:    revision {_cell(stable.get('revision'))} ({_cell(stable.get('hash'))})"
            f"  version {_cell(stable.get('version'))}  weight {100 - canary_weight}%"
            f"  ready {_cell(stable.get('readyReplicas'), '0')}/{_cell(stable.get('replicas'), '0')}"
        )
        lines.append(f"             {_cell(stable.get('uri'))}")
    steps = len(((spec.get("rollout") or {}).get("steps")) or ())
    if canary:
        # status.canary.step is the 0-based index of the step being worked on; shown 1-based
        index = canary.get("step") if isinstance(canary.get("step"), int) else 0
        step = f"{min(index + 1, steps)}/{steps}" + (" (done)" if index >= steps else "") if steps else str(index)
        lines.append(
            f"  Canary:    revision {_cell(canary.get('revision'))} ({_cell(canary.get('hash'))})"
            f"  version {_cell(canary.get('version'))}  weight {_cell(canary.get('weight'), '0')}%"
            + (f" (asked {canary['requestedWeight']}%)" if canary.get("requestedWeight") not in
               (None, canary.get("weight")) and not canary.get("aborted") else "")
            + f"  step {step}"
            f"  ready {_cell(canary.get('readyReplicas'), '0')}/{_cell(canary.get('replicas'), '0')}"
            + ("  ABORTED" if canary.get("aborted") else "")
        )
        if canary.get("abortReason"):
            lines.append(f"             abort reason: {canary['abortReason']}")
        elif canary.get("heldReason"):
            lines.append(f"  Paused:    {canary['heldReason']}; promote to continue")
        elif canary.get("holdReason"):
            lines.append(f"  Holding:   {canary['holdReason']}")
        routes = header_route_lines(spec, canary)
        if routes:
            lines.append("  Header routes (matching requests go to the canary):")
            lines += [f"    {line}" for line in routes]
        if canary.get("shadowPercent"):  # a shadow step: no user traffic, the stable's pods mirror
            lines.append(f"  Shadow:    the stable pods copy {canary['shadowPercent']}% of their requests to the canary")
        if canary.get("restarts"):
            lines.append(f"  Restarts:  {canary['restarts']} canary container restart(s)")
        analysis = canary.get("analysis") or {}
        if analysis:
            parts = [f"verdict {_cell(analysis.get('verdict'))}"]
            if analysis.get("requests") is not None:
                parts.append(f"{analysis['requests']} requests")
            if analysis.get("errorRate") is not None:
                parts.append(f"error rate {analysis['errorRate'] * 100:.2f}%")
            if analysis.get("latencyP99Ms") is not None:
                parts.append(f"p99 {analysis['latencyP99Ms']:.0f} ms")
            parts.append(f"failures {analysis.get('failures', 0)}")
            if analysis.get("lastTime"):
                parts.append(f"at {analysis['lastTime']}")
            lines.append("  Analysis:  " + ", ".join(parts))
            lines.append(f"  Windows:   this step {analysis.get('stepPassed', 0)} passed, "
                         f"{analysis.get('stepInconclusive', 0)} inconclusive, {analysis.get('stepFailed', 0)} failed"
                         f" (in a row inconclusive: {analysis.get('inconclusiveStreak', 0)})")
            if analysis.get("message"):
                lines.append(f"             {analysis['message']}")
    conditions = [c for c in status.get("conditions") or () if isinstance(c, Mapping)]
    if conditions:
        lines.append("  Conditions:")
        rows = [["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
        rows += [
            [_cell(c.get("type")), _cell(c.get("status")), _cell(c.get("reason")),
             _cell(c.get("lastTransitionTime")), _cell(c.get("message"), "")]
            for c in conditions
        ]
        lines += _table(rows, "    ")
    history = [h for h in status.get("history") or () if isinstance(h, Mapping)]
    if history:
        lines.append("  History:")
        rows = [["REVISION", "VERSION", "OUTCOME", "TIME", "HASH"]]
        rows += [
            [_cell(h.get("revision")), _cell(h.get("version")), _cell(h.get("outcome")),
             _cell(h.get("time")), _cell(h.get("hash"))]
            for h in reversed(history)  # newest first
        ]
        lines += _table(rows, "    ")
    return "\n".join(lines) + "\n"


def _connect(env: Mapping[str, str], args: argparse.Namespace) -> Any:
    """A kube.Kube for the chosen kubeconfig/context, writing as the CLI's field manager."""
    from .kube import Connection, Kube  # only the cluster commands need the client

    try:
        if args.kubeconfig or args.context:
            connection = Connection.from_kubeconfig(args.kubeconfig or _kubeconfig(env), args.context)
        else:
            connection = Connection.discover(env)
    except Exception as exc:  # missing/invalid kubeconfig: say so plainly
        raise CliError(f"cannot load Kubernetes credentials: {exc}") from None
    return Kube(connection, field_manager=CLI_FIELD_MANAGER)


async def _get(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    from .kube import KubeError

    try:
        obj = await kube.get(API_VERSION, KIND, namespace, name)
    except KubeError as exc:
        raise CliError(f"cannot read {KIND} {namespace}/{name}: {exc.message}") from None
    if obj is None:
        raise CliError(f"{KIND} {namespace}/{name} not found")
    return obj


def _on_object(env: Mapping[str, str], args: argparse.Namespace,
               action: Callable[[Any, str, dict[str, Any]], Any]) -> Any:
    """Read the named ModelDeployment and run `action(kube, namespace, obj)` on it."""
    from .kube import KubeError

    async def go() -> Any:
        kube = _connect(env, args)
        namespace = args.namespace or kube.connection.namespace
        try:
            return await action(kube, namespace, await _get(kube, namespace, args.name))
        except KubeError as exc:
            raise CliError(f"{KIND} {namespace}/{args.name}: {exc.message}") from None
        finally:
            await kube.close()

    return asyncio.run(go())


def _kubeconfig(env: Mapping[str, str]) -> str:
    from .kube import kubeconfig_path

    return str(kubeconfig_path(env))


def cmd_status(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, stdin: TextIO) -> int:
    async def show(kube: Any, namespace: str, obj: dict[str, Any]) -> None:
        out.write(format_status(obj))

    _on_object(env, args, show)
    return EXIT_OK


# --------------------------------------------------------------------------- history


def format_history(obj: Mapping[str, Any]) -> str:
    """The revisions in status.history, newest first, then what runs now."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    lines = [f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"]
    rows = [["REVISION", "VERSION", "OUTCOME", "TIME", "HASH", "URI"]]
    for role in ("canary", "stable"):
        entry = status.get(role) or {}
        if entry.get("hash"):
            outcome = "Aborted (canary)" if role == "canary" and entry.get("aborted") else role.capitalize() + " (now)"
            rows.append([_cell(entry.get("revision")), _cell(entry.get("version")), outcome, "-",
                         _cell(entry.get("hash")), _cell(entry.get("uri"))])
    history = [h for h in status.get("history") or () if isinstance(h, Mapping)]
    rows += [[_cell(h.get("revision")), _cell(h.get("version")), _cell(h.get("outcome")), _cell(h.get("time")),
              _cell(h.get("hash")), _cell(h.get("uri"))] for h in reversed(history)]
    if len(rows) == 1:
        lines.append("  no revisions recorded yet")
    else:
        lines += _table(rows)
    return "\n".join(lines) + "\n"


def cmd_history(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, stdin: TextIO) -> int:
    async def show(kube: Any, namespace: str, obj: dict[str, Any]) -> None:
        out.write(format_history(obj))

    _on_object(env, args, show)
    return EXIT_OK


# --------------------------------------------------------------------------- manual actions


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _request_id() -> str:
    """Tells two requests apart (the operator acts once per annotation value it has not yet seen
    go): the time and a random suffix, appended to the action as `<action>@<id>`."""
    return f"{_now()}-{secrets.token_hex(3)}"


def _action(annotation: str, value: str, needs: Callable[[Mapping[str, Any]], str | None], done: str) -> Command:
    """A command that sets one action annotation (the operator acts on it, then removes it)."""

    def command(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, stdin: TextIO) -> int:
        async def act(kube: Any, namespace: str, obj: dict[str, Any]) -> None:
            problem = needs(obj.get("status") or {})
            if problem:
                raise CliError(f"{KIND} {namespace}/{args.name}: {problem}")
            await kube.patch_metadata(API_VERSION, KIND, namespace, args.name,
                                      annotations={annotation: value(args) if callable(value) else value})
            out.write(f"{KIND} {namespace}/{args.name}: {done(args) if callable(done) else done}\n")

        _on_object(env, args, act)
        return EXIT_OK

    return command


def _live_canary(status: Mapping[str, Any]) -> str | None:
    canary = status.get("canary") or {}
    if not canary.get("hash"):
        return "there is no canary to act on (no rollout in progress)"
    if canary.get("aborted"):
        return "the canary is aborted: use `retry` to restart it, or change the spec"
    return None


def _aborted_canary(status: Mapping[str, Any]) -> str | None:
    canary = status.get("canary") or {}
    if not canary.get("hash") or not canary.get("aborted"):
        return "there is no aborted canary to retry"
    return None


cmd_promote = _action(
    PROMOTE_ANNOTATION, lambda a: f"{PROMOTE_FULL if a.full else PROMOTE_STEP}{ACTION_ID_SEPARATOR}{_request_id()}",
    _live_canary, lambda a: "full promotion requested" if a.full else "promotion of the current step requested")
cmd_abort = _action(ABORT_ANNOTATION, lambda a: f"abort{ACTION_ID_SEPARATOR}{_request_id()}", _live_canary,
                    "abort requested")
cmd_retry = _action(RETRY_ANNOTATION, lambda a: f"retry{ACTION_ID_SEPARATOR}{_request_id()}", _aborted_canary,
                    "retry requested")


# --------------------------------------------------------------------------- rollback


def rollback_target(status: Mapping[str, Any], to_revision: int | None) -> Mapping[str, Any]:
    """The history entry to go back to: the given revision, or the newest one that is not the
    stable revision now (the previous revision)."""
    history = [h for h in status.get("history") or () if isinstance(h, Mapping)]
    current = (status.get("stable") or {}).get("hash")
    if to_revision is not None:
        entry = next((h for h in reversed(history) if h.get("revision") == to_revision), None)
        if entry is None:
            known = ", ".join(str(h.get("revision")) for h in history) or "none"
            raise CliError(f"revision {to_revision} is not in status.history (recorded: {known})")
        return entry
    entry = next((h for h in reversed(history) if h.get("hash") != current and h.get("uri")), None)
    if entry is None:
        raise CliError("status.history holds no previous revision to roll back to")
    return entry


def rollback_patch(obj: Mapping[str, Any], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch (RFC 6902) that puts the entry's pod-shaping spec back, conditional on the
    object not having changed since it was read.

    Entries that carry `spec` (the pod-shaping fields as written) are restored exactly: each
    shaping field is replaced, or removed when the revision did not set it. Older entries only
    know the model's uri and version (and format): those are set, the rest is left alone.
    """
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/resourceVersion",
                                  "value": meta.get("resourceVersion")}]
    recorded = entry.get("spec")
    if isinstance(recorded, Mapping) and isinstance(recorded.get("model"), Mapping):
        for key in SHAPING_KEYS:
            if key in recorded:
                ops.append({"op": "add", "path": f"/spec/{key}", "value": recorded[key]})
            elif key in spec:
                ops.append({"op": "remove", "path": f"/spec/{key}"})
        return ops
    ops.append({"op": "add", "path": "/spec/model/uri", "value": entry["uri"]})
    ops.append({"op": "add", "path": "/spec/model/version", "value": str(entry.get("version") or "")})
    if entry.get("format"):
        ops.append({"op": "add", "path": "/spec/model/format", "value": entry["format"]})
    return ops


def _already(spec: Mapping[str, Any], ops: list[dict[str, Any]]) -> bool:
    """The patch would change nothing in spec."""
    for op in ops[1:]:
        parts = op["path"].split("/")[2:]
        node: Any = spec
        for part in parts:
            node = node.get(part) if isinstance(node, Mapping) else None
        if (op["op"] == "remove" and node is not None) or (op["op"] == "add" and node != op["value"]):
            return False
    return True


def cmd_rollback(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, stdin: TextIO) -> int:
    err: TextIO = args.stderr

    async def act(kube: Any, namespace: str, obj: dict[str, Any]) -> None:
        entry = rollback_target(obj.get("status") or {}, args.to_revision)
        manager = gitops_manager(obj)
        if manager:
            err.write(f"warning: {KIND} {namespace}/{args.name} is managed by {manager}: a rollback here is "
                      f"undone at its next sync. Revert the change in Git instead.\n")
            if not args.force:
                raise CliError("refusing to patch a GitOps-managed object (use --force to do it anyway)")
        patch = rollback_patch(obj, entry)
        if _already(obj.get("spec") or {}, patch):
            out.write(f"{KIND} {namespace}/{args.name}: the spec already matches revision "
                      f"{entry.get('revision')} (version {entry.get('version')}); nothing to do\n")
            return
        await kube.patch(API_VERSION, KIND, namespace, args.name, patch, json_patch=True)
        out.write(f"{KIND} {namespace}/{args.name}: rolling back to revision {entry.get('revision')} "
                  f"(version {entry.get('version')}, {entry.get('uri')})\n")

    _on_object(env, args, act)
    return EXIT_OK


# --------------------------------------------------------------------------- wiring


Command = Callable[[argparse.Namespace, Mapping[str, str], TextIO, TextIO], int]


def _cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context to use")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl-modelship", description="Work with modelship ModelDeployments."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "render",
        help="print the manifests the operator would apply for a ModelDeployment file (offline)",
        description="Validate a ModelDeployment file against the CRD and print, as multi-document "
        "YAML, exactly the children the operator would apply. Operator settings come from the "
        "same MODELSHIP_* environment variables the operator reads (e.g. MODELSHIP_SERVER_IMAGE).",
    )
    p.add_argument("-f", "--filename", required=True, help="ModelDeployment YAML file, or - for stdin")
    p.add_argument("-n", "--namespace", help="namespace for objects that name none (default: default)")
    p.add_argument(
        "--servicemonitor", action="store_true", help="render as if the ServiceMonitor CRD were installed"
    )
    p.add_argument(
        "--keda", action="store_true",
        help="render as if KEDA's ScaledObject CRD were installed: autoscaling.metric inflight, queue or rps then "
        "renders a ScaledObject instead of an HPA when MODELSHIP_PROMETHEUS_URL is set",
    )
    p.add_argument(
        "--gateway-api", action=argparse.BooleanOptionalAction, default=None,
        help="render as if the cluster served (or, with --no-gateway-api, did not serve) the Gateway API's "
        "HTTPRoute. Default: served for a spec that sets rollout.gateway (traffic auto or gateway), so the "
        "HTTPRoute and the per-role Services are printed; without it the operator falls back to replicas mode",
    )
    p.set_defaults(handler=cmd_render)

    def named(command: str, help_: str, handler: Command) -> argparse.ArgumentParser:
        p = sub.add_parser(command, help=help_, description=help_)
        p.add_argument("name", help="ModelDeployment name")
        _cluster_flags(p)
        p.set_defaults(handler=handler)
        return p

    named("status", "a readable summary of a ModelDeployment's status", cmd_status)
    named("history", "the revisions recorded in status.history, newest first", cmd_history)
    p = named("promote", "finish the current rollout step now (e.g. a pause {} waiting for you)", cmd_promote)
    p.add_argument("--full", action="store_true", help="skip the remaining steps: promote the canary now")
    named("abort", "abort the canary: weight 0, scaled down, phase Degraded (until retry or a spec change)",
          cmd_abort)
    named("retry", "restart an aborted canary from its first step", cmd_retry)
    p = named("rollback", "patch the spec back to a revision in status.history (default: the previous "
              "one); refuses when a GitOps tool manages the object", cmd_rollback)
    p.add_argument("--to-revision", type=int, metavar="N", help="the revision number to go back to")
    p.add_argument("--force", action="store_true",
                   help="patch even when Argo CD or Flux manages the object (it will revert at its next sync)")
    return parser


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    env = os.environ if env is None else env
    out, err = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    args.stderr = err
    try:
        return args.handler(args, env, out, stdin or sys.stdin)
    except CliError as exc:
        err.write(f"error: {exc}\n")
        return exc.code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
