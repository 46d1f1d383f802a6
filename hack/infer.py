#!/usr/bin/env python3
"""Send real Open Inference Protocol requests to a served digits model and check the answers.

    python hack/infer.py --url http://127.0.0.1:18080 --model digits --data examples/model/heldout.npz
    python hack/infer.py ... --requests 300 --expect-version 1.0.1

Uses the held-out digits the example model never saw; fails (exit 1) when the accuracy is
below --min-accuracy or a response lacks x-model-version. Prints the versions that answered,
so a canary's share of the traffic is visible. Standard library + numpy only.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import urllib.error
import urllib.request

import numpy as np


def infer(url: str, model: str, rows: np.ndarray, timeout: float) -> tuple[str, np.ndarray]:
    body = {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.astype(np.float32).ravel().tolist()}]}
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        version = resp.headers.get("x-model-version") or ""
        out = json.loads(resp.read())["outputs"][0]
    return version, np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def wait_ready(url: str, model: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise SystemExit(f"{url}: model {model} not ready after {deadline_s}s ({last})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="digits")
    p.add_argument("--data", required=True, help="heldout.npz written by examples/build_model.py")
    p.add_argument("--requests", type=int, default=1)
    p.add_argument("--rows", type=int, default=8, help="rows per request")
    p.add_argument("--min-accuracy", type=float, default=0.9)
    p.add_argument("--expect-version", default="", help="every answer must come from this version")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for readiness first")
    args = p.parse_args(argv)

    held = np.load(args.data)
    x, y = held["X"], held["y"]
    wait_ready(args.url, args.model, args.wait)
    versions: collections.Counter[str] = collections.Counter()
    correct = total = 0
    for i in range(args.requests):
        start = (i * args.rows) % max(1, len(x) - args.rows)
        rows, labels = x[start:start + args.rows], y[start:start + args.rows]
        version, logits = infer(args.url, args.model, rows, args.timeout)
        versions[version] += 1
        correct += int((logits.argmax(axis=1) == labels).sum())
        total += len(labels)
    accuracy = correct / total
    print(f"{args.requests} requests, {total} rows, accuracy {accuracy:.3f}, answered by {dict(versions)}")
    if "" in versions:
        print("a response had no x-model-version header", file=sys.stderr)
        return 1
    if args.expect_version and set(versions) != {args.expect_version}:
        print(f"expected only version {args.expect_version}", file=sys.stderr)
        return 1
    if accuracy < args.min_accuracy:
        print(f"accuracy {accuracy:.3f} below {args.min_accuracy}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
