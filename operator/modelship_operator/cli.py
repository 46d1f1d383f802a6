"""kubectl-modelship: the command-line companion (also usable as `kubectl modelship ...`).

  render -f FILE   the exact manifests the operator would apply, offline
  status NAME      a readable summary of a ModelDeployment's status

`render` goes through the operator's own code path: schema validation, the typed spec,
`plan` (with nothing observed yet) and `render`. `status` reads the object through
`modelship_operator.kube`. The rollout issue adds promote/abort/retry/rollback/history as
further subcommands registered in `build_parser`.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

import yaml

from . import schema
from .plan import Observed, plan
from .render import render, to_yaml
from .settings import Settings
from .spec import API_VERSION, KIND, ModelDeployment, SpecError

EXIT_OK, EXIT_ERROR, EXIT_INVALID = 0, 1, 2


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
    docs: Sequence[Any], settings: Settings, *, namespace: str | None = None, servicemonitor: bool = False
) -> list[dict]:
    """Every manifest the operator would apply for these ModelDeployments (nothing observed yet).

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
        desired = plan(md, Observed(servicemonitor_served=servicemonitor), settings, datetime.now(timezone.utc))
        manifests.extend(render(desired))
    return manifests


def cmd_render(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, stdin: TextIO) -> int:
    settings = _settings(env)
    docs = _load_documents(args.filename, stdin)
    manifests = render_documents(docs, settings, namespace=args.namespace, servicemonitor=args.servicemonitor)
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
    wanted = spec.get("replicas")
    lines.append(
        f"  Replicas:  {_cell(status.get('readyReplicas'), '0')} ready / {_cell(status.get('replicas'), '0')} running"
        + (f" / {wanted} wanted" if wanted is not None else "")
        + (f"  (traffic: {status['trafficMode']})" if status.get("trafficMode") else "")
    )
    stable = status.get("stable") or {}
    if stable:
        lines.append(
            f"  Stable:    revision {_cell(stable.get('revision'))} ({_cell(stable.get('hash'))})"
            f"  version {_cell(stable.get('version'))}"
            f"  ready {_cell(stable.get('readyReplicas'), '0')}/{_cell(stable.get('replicas'), '0')}"
        )
        lines.append(f"             {_cell(stable.get('uri'))}")
    canary = status.get("canary") or {}
    if canary:
        lines.append(
            f"  Canary:    revision {_cell(canary.get('revision'))} ({_cell(canary.get('hash'))})"
            f"  version {_cell(canary.get('version'))}  weight {_cell(canary.get('weight'), '0')}%"
            f"  step {_cell(canary.get('step'), '0')}"
            f"  ready {_cell(canary.get('readyReplicas'), '0')}/{_cell(canary.get('replicas'), '0')}"
            + ("  ABORTED" if canary.get("aborted") else "")
        )
        if canary.get("abortReason"):
            lines.append(f"             abort reason: {canary['abortReason']}")
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
            lines.append("  Analysis:  " + ", ".join(parts))
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


async def fetch_model_deployment(
    env: Mapping[str, str], name: str, namespace: str | None, kubeconfig: str | None, context: str | None
) -> dict[str, Any]:
    from .kube import Connection, Kube, KubeError  # only the cluster commands need the client

    try:
        if kubeconfig or context:
            connection = Connection.from_kubeconfig(kubeconfig or _kubeconfig(env), context)
        else:
            connection = Connection.discover(env)
    except Exception as exc:  # missing/invalid kubeconfig: say so plainly
        raise CliError(f"cannot load Kubernetes credentials: {exc}") from None
    ns = namespace or connection.namespace
    kube = Kube(connection)
    try:
        obj = await kube.get(API_VERSION, KIND, ns, name)
    except KubeError as exc:
        raise CliError(f"cannot read {KIND} {ns}/{name}: {exc.message}") from None
    finally:
        await kube.close()
    if obj is None:
        raise CliError(f"{KIND} {ns}/{name} not found")
    return obj


def _kubeconfig(env: Mapping[str, str]) -> str:
    from .kube import kubeconfig_path

    return str(kubeconfig_path(env))


def cmd_status(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, stdin: TextIO) -> int:
    obj = asyncio.run(fetch_model_deployment(env, args.name, args.namespace, args.kubeconfig, args.context))
    out.write(format_status(obj))
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
    p.set_defaults(handler=cmd_render)

    p = sub.add_parser("status", help="a readable summary of a ModelDeployment's status")
    p.add_argument("name", help="ModelDeployment name")
    _cluster_flags(p)
    p.set_defaults(handler=cmd_status)
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
    try:
        return args.handler(args, env, out, stdin or sys.stdin)
    except CliError as exc:
        err.write(f"error: {exc}\n")
        return exc.code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
