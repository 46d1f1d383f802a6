#!/usr/bin/env python3
"""Point a ModelDeployment manifest at a new model: set spec.model.uri and spec.model.version.

    python examples/cicd/set_model_version.py FILE --uri s3://models/digits/1.1.0/model.pt --version 1.1.0

The GitOps promote step of examples/cicd/model-release.yml. Edits only those two lines, so
comments and formatting in the reviewed file survive (a YAML round trip would drop them),
then re-parses the result and fails when anything else changed.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml


def set_model(text: str, uri: str, version: str) -> str:
    lines = text.splitlines(keepends=True)
    in_spec = in_model = False
    model_indent = -1
    done: set[str] = set()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if indent == 0:
            in_spec, in_model = stripped == "spec:", False
            continue
        if in_spec and re.fullmatch(r"model:\s*(#.*)?", stripped):
            in_model, model_indent = True, indent
            continue
        if in_model and indent <= model_indent:
            in_model = False
        if in_model and indent == model_indent + 2:
            m = re.match(r"(\s*)(uri|version):(\s*)\S.*?(\s+#.*)?$", line.rstrip("\n"))
            if m:
                value = uri if m.group(2) == "uri" else version
                newline = "\n" if line.endswith("\n") else ""
                lines[i] = f"{m.group(1)}{m.group(2)}:{m.group(3) or ' '}{json.dumps(value)}{m.group(4) or ''}{newline}"
                done.add(m.group(2))
    missing = {"uri", "version"} - done
    if missing:
        raise ValueError(f"spec.model.{'/'.join(sorted(missing))} not found as a one-line scalar")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", type=Path)
    p.add_argument("--uri", required=True)
    p.add_argument("--version", required=True)
    args = p.parse_args(argv)
    before = yaml.safe_load(args.file.read_text())
    try:
        text = set_model(args.file.read_text(), args.uri, args.version)
    except ValueError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    after = yaml.safe_load(text)
    before["spec"]["model"].update(uri=args.uri, version=args.version)
    if after != before:
        print(f"{args.file}: the edit changed more than spec.model.uri/version", file=sys.stderr)
        return 2
    args.file.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
