"""Reliability suite: the server under overload, SIGTERM under load, and a feedback flood.

    python benchmarks/bench_reliability.py --model-dir examples/model [--duration 60] [--overload 3]
        [--max-queue 256] [--rows 32] [--sigterm-after 5] [--flood-ids 200000] [--json out.json]

Three phases, each against `python -m modelship_server` (its defaults, except the queue
depth given) on 127.0.0.1, driven by a keep-alive HTTP/1.1 client on asyncio in this process:

1. overload: `--overload` x more rows in flight than the server's queue admits
   (connections = overload x max_queue / rows, each sending `--rows`-row /predict/batch
   requests back to back with unique x-request-ids) for `--duration` seconds. Reports the
   answers by status, whether every 503 carried Retry-After, any other 5xx, rows/s served,
   and the server's RSS sampled every second (bounded: its growth after the first tenth of
   the run stays within the stores' byte budgets).
2. feedback flood: `--flood-ids` feedback items for ids nobody predicted, in batches of
   1000, to the same server: RSS and the feedback store's bytes before and after (flat).
3. SIGTERM under load: a second server with an audit file takes the same overload; after
   `--sigterm-after` seconds it gets SIGTERM while the load goes on until it exits. Every
   request the server admitted and answered is in its audit file; lost = audited 200s whose
   answer the client never got (plus the exit code). Requests that met a closed connection
   without an answer are reported apart ("no answer"): the server closed them unread.

Prints the numbers and PASS / FAIL per check; exit code 1 when a check fails.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


# ---------------------------------------------------------------- server process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(model_dir: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "modelship_server", "--model-uri", (model_dir / "model.pt").resolve().as_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]  # fmt: skip
    out = open(log, "wb")  # noqa: SIM115 - the child keeps it; closed with the process
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server not ready in 120 s")


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}  # fmt: skip


def metric(m: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in m.items() if n == name and want <= ls)


# ---------------------------------------------------------------- load


@dataclass
class Load:
    statuses: Counter = field(default_factory=Counter)
    missing_retry_after: int = 0  # 503s without a Retry-After header
    no_answer: int = 0  # request written, connection closed without a response
    refused: int = 0  # could not connect (the server no longer listens)
    rows_ok: int = 0
    ok_ids: set = field(default_factory=set)  # ids answered 200
    unanswered_ids: set = field(default_factory=set)  # ids written without an answer
    seconds: float = 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def drive(port: int, connections: int, bodies: list[bytes], rows: int, stop_at: asyncio.Event,
                prefix: str, path: str = "/predict/batch") -> Load:  # fmt: skip
    """`connections` keep-alive connections sending requests back to back until `stop_at`."""
    load = Load()
    ids = itertools.count()

    async def one_connection(c: int) -> None:
        reader = writer = None
        while not stop_at.is_set():
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    load.refused += 1
                    await asyncio.sleep(0.01)
                    continue
            rid = f"{prefix}-{c}-{next(ids)}"
            body = bodies[hash(rid) % len(bodies)]
            writer.write(
                f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"x-request-id: {rid}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
            )
            try:
                await writer.drain()
                status, headers, _ = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                load.no_answer += 1
                load.unanswered_ids.add(rid)
                writer.close()
                reader = writer = None
                continue
            load.statuses[status] += 1
            if status == 200:
                load.rows_ok += rows
                load.ok_ids.add(rid)
            elif status == 503 and "retry-after" not in headers:
                load.missing_retry_after += 1
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    start = time.monotonic()
    await asyncio.gather(*(one_connection(c) for c in range(connections)))
    load.seconds = time.monotonic() - start
    return load


def request_bodies(model_dir: Path, rows: int, count: int = 32) -> list[bytes]:
    x = np.load(model_dir / "heldout.npz")["X"].astype(np.float32)
    return [json.dumps({"batch_features": x[[(k * rows + j) % len(x) for j in range(rows)]].tolist()}).encode()
            for k in range(count)]  # fmt: skip


# ---------------------------------------------------------------- phases


async def _sample_rss(pid: int, every: float, out: list[tuple[float, float]], stop_at: asyncio.Event) -> None:
    t0 = time.monotonic()
    while not stop_at.is_set():
        rss = rss_mb(pid)
        if rss is not None:
            out.append((round(time.monotonic() - t0, 1), round(rss, 1)))
        try:
            await asyncio.wait_for(stop_at.wait(), every)
        except asyncio.TimeoutError:
            pass


async def overload_phase(port: int, pid: int, args: argparse.Namespace, bodies: list[bytes]) -> dict:
    connections = max(1, math.ceil(args.overload * args.max_queue / args.rows))
    stop_at = asyncio.Event()
    samples: list[tuple[float, float]] = []
    sampler = asyncio.create_task(_sample_rss(pid, 1.0, samples, stop_at))
    loop = asyncio.get_running_loop()
    loop.call_later(args.duration, stop_at.set)
    cpu0, client0 = cpu_seconds(pid), time.process_time()
    load = await drive(port, connections, bodies, args.rows, stop_at, "ovl")
    cpu1, client1 = cpu_seconds(pid), time.process_time()
    await sampler
    rss = [r for _, r in samples]
    settle = rss[max(0, len(rss) // 10 - 1)] if rss else None
    other_5xx = {code: n for code, n in load.statuses.items() if code >= 500 and code != 503}
    return {
        "connections": connections, "rows_in_flight_offered": connections * args.rows, "max_queue_rows": args.max_queue,
        "seconds": round(load.seconds, 1), "answers": dict(sorted(load.statuses.items())),
        "shed_share": round(load.statuses[503] / max(1, sum(load.statuses.values())), 3),
        "missing_retry_after": load.missing_retry_after, "other_5xx": other_5xx,
        "no_answer": load.no_answer, "rows_per_s": round(load.rows_ok / load.seconds),
        # CPU per answer: less sensitive than rows/s to what else runs on the machine
        "server_cpu_s": round(cpu1 - cpu0, 1) if cpu0 is not None and cpu1 is not None else None,
        "server_cpu_us_per_answer": round((cpu1 - cpu0) * 1e6 / max(1, sum(load.statuses.values())))
        if cpu0 is not None and cpu1 is not None else None,
        "client_cpu_s": round(client1 - client0, 1),
        "rss_mb": {"first": rss[0] if rss else None, "after_first_tenth": settle, "max": max(rss) if rss else None,
                   "last": rss[-1] if rss else None},
        "rss_samples": samples[:: max(1, len(samples) // 12)],
    }  # fmt: skip


async def flood_phase(port: int, pid: int, ids: int) -> dict:
    m0, rss0 = scrape(port), rss_mb(pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses: Counter = Counter()
    sent = 0
    start = time.monotonic()
    rss_mid = None
    try:
        while sent < ids:
            n = min(1000, ids - sent)
            body = json.dumps({"feedback": [{"request_id": f"flood-{sent + i}", "truth": [i % 10]} for i in range(n)]}).encode()
            writer.write(f"POST /feedback HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         f"content-length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
            await writer.drain()
            status, _, answer = await _read_response(reader)
            statuses[status] += 1
            if status == 200:
                statuses["unknown"] += sum(1 for r in json.loads(answer)["results"] if r["result"] == "unknown")
            sent += n
            if rss_mid is None and sent >= ids // 10:
                rss_mid = rss_mb(pid)  # after the first tenth: the allocator has warmed up to this load
    finally:
        writer.close()
    m1, rss1 = scrape(port), rss_mb(pid)
    return {
        "ids": ids, "seconds": round(time.monotonic() - start, 1), "answers": {str(k): v for k, v in statuses.items()},
        "rss_mb": {"before": rss0, "after_first_tenth": rss_mid, "after": rss1},
        "rss_growth_after_first_tenth_mb": round((rss1 or 0) - (rss_mid or 0), 1),
        "feedback_store_bytes": [metric(m0, "modelship_monitor_store_bytes", store="feedback"),
                                 metric(m1, "modelship_monitor_store_bytes", store="feedback")],
        "feedback_store_entries": [metric(m0, "modelship_monitor_store_entries", store="feedback"),
                                   metric(m1, "modelship_monitor_store_entries", store="feedback")],
    }  # fmt: skip


async def sigterm_phase(model_dir: Path, args: argparse.Namespace, bodies: list[bytes], work: Path) -> dict:
    port = free_port()
    audit = work / "sigterm-audit.jsonl"
    env = {"MODELSHIP_MAX_QUEUE": str(args.max_queue), "MODELSHIP_AUDIT_FILE": str(audit)}
    proc = start_server(model_dir, port, env, work / "sigterm.log")
    connections = max(1, math.ceil(args.overload * args.max_queue / args.rows))
    stop_at = asyncio.Event()
    loop = asyncio.get_running_loop()
    signalled: list[float] = []

    def terminate() -> None:
        signalled.append(time.monotonic())
        proc.send_signal(signal.SIGTERM)

    async def until_exit() -> None:
        while proc.poll() is None:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the refused connections after exit are counted too
        stop_at.set()

    loop.call_later(args.sigterm_after, terminate)
    watcher = asyncio.create_task(until_exit())
    load = await drive(port, connections, bodies, args.rows, stop_at, "term")
    await watcher
    exit_code = proc.wait()
    audited: dict[str, int] = {}
    for line in audit.read_text().splitlines():
        rec = json.loads(line)
        audited[rec["request_id"]] = rec["status"]
    answered_200 = {rid for rid, st in audited.items() if st == 200}
    lost = answered_200 - load.ok_ids
    return {
        "connections": connections, "sigterm_after_s": args.sigterm_after,
        "drain_seconds": round(load.seconds - args.sigterm_after, 2), "exit_code": exit_code,
        "answers": dict(sorted(load.statuses.items())), "no_answer": load.no_answer, "refused_connects": load.refused,
        "audited_200": len(answered_200), "client_200": len(load.ok_ids), "lost": len(lost),
        "client_200_not_audited": len(load.ok_ids - answered_200),
        # unanswered requests the server nevertheless handled (any status): admitted and lost
        "unanswered_but_handled": len(load.unanswered_ids & audited.keys()),
        "other_5xx": {code: n for code, n in load.statuses.items() if code >= 500 and code != 503},
    }  # fmt: skip


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="modelship under overload, SIGTERM and a feedback flood")
    p.add_argument("--model-dir", type=Path, required=True, help="output of examples/build_model.py")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    p.add_argument("--overload", type=float, default=3.0, help="rows in flight offered / rows the queue admits")
    p.add_argument("--max-queue", type=int, default=256, help="MODELSHIP_MAX_QUEUE (rows) of the servers")
    p.add_argument("--rows", type=int, default=32, help="rows per request")
    p.add_argument("--sigterm-after", type=float, default=5.0, help="seconds of load before SIGTERM")
    p.add_argument("--flood-ids", type=int, default=200_000, help="unmatched feedback ids to send")
    p.add_argument("--rss-slack-mb", type=float, default=48.0,
                   help="RSS growth allowed beyond the stores' byte budgets (allocator, caches)")  # fmt: skip
    p.add_argument("--flood-rss-slack-mb", type=float, default=8.0, help="RSS growth allowed during the flood")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> dict:
    bodies = request_bodies(args.model_dir, args.rows)
    with tempfile.TemporaryDirectory(prefix="modelship-reliability-") as tmp:
        work = Path(tmp)
        port = free_port()
        proc = start_server(args.model_dir, port, {"MODELSHIP_MAX_QUEUE": str(args.max_queue)}, work / "overload.log")
        try:
            ready_rss = rss_mb(proc.pid)
            print(f"overload: {args.overload:g}x the queue for {args.duration:g}s (server ready, RSS {ready_rss:.0f} MB)", flush=True)
            overload = await overload_phase(port, proc.pid, args, bodies)
            overload["rss_mb"]["ready"] = ready_rss
            m = scrape(port)
            overload["store_bytes"] = {s: metric(m, "modelship_monitor_store_bytes", store=s) for s in ("feedback", "drift")}
            overload["store_budget_bytes"] = {s: metric(m, "modelship_monitor_store_budget_bytes", store=s)
                                              for s in ("feedback", "drift")}  # fmt: skip
            print(f"feedback flood: {args.flood_ids} unmatched ids", flush=True)
            flood = await flood_phase(port, proc.pid, args.flood_ids)
        finally:
            overload_exit = stop(proc)
        print(f"SIGTERM after {args.sigterm_after:g}s of {args.overload:g}x overload", flush=True)
        sigterm = await sigterm_phase(args.model_dir, args, bodies, work)
    return {"overload": overload, "flood": flood, "sigterm": sigterm, "overload_server_exit_code": overload_exit}


def checks(res: dict, args: argparse.Namespace) -> list[dict]:
    o, f, s = res["overload"], res["flood"], res["sigterm"]
    budgets_mb = sum(o["store_budget_bytes"].values()) / 1e6
    growth = (o["rss_mb"]["max"] or 0) - (o["rss_mb"]["after_first_tenth"] or 0)
    out = [
        ("overload: excess shed as 503", f"{o['answers'].get(503, 0)} of {sum(o['answers'].values())} answers 503",
         o["answers"].get(503, 0) > 0),
        ("overload: every 503 has Retry-After", f"{o['missing_retry_after']} without", o["missing_retry_after"] == 0),
        ("overload: no other 5xx", f"{o['other_5xx'] or 'none'}", not o["other_5xx"]),
        ("overload: every request answered", f"{o['no_answer']} without an answer", o["no_answer"] == 0),
        (f"overload: RSS growth after the first tenth <= store budgets ({budgets_mb:.0f} MB) + {args.rss_slack_mb:g} MB",
         f"{growth:+.1f} MB ({o['rss_mb']['after_first_tenth']} -> max {o['rss_mb']['max']} MB)",
         growth <= budgets_mb + args.rss_slack_mb),
        (f"feedback flood: RSS flat (<= +{args.flood_rss_slack_mb:g} MB after the first tenth)",
         f"{f['rss_growth_after_first_tenth_mb']:+.1f} MB", f["rss_growth_after_first_tenth_mb"] <= args.flood_rss_slack_mb),
        ("feedback flood: the store does not grow", f"{f['feedback_store_bytes'][0]:.0f} -> {f['feedback_store_bytes'][1]:.0f} bytes",
         f["feedback_store_bytes"][1] <= f["feedback_store_bytes"][0]),
        ("SIGTERM under load: 0 admitted requests lost",
         f"{s['lost']} lost of {s['audited_200']} admitted and answered; {s['unanswered_but_handled']} of the "
         f"{s['no_answer']} unanswered were handled by the server",
         s["lost"] == 0 and s["unanswered_but_handled"] == 0 and s["audited_200"] > 0),
        ("SIGTERM under load: clean exit, no other 5xx", f"exit {s['exit_code']}, other 5xx {s['other_5xx'] or 'none'}",
         s["exit_code"] == 0 and not s["other_5xx"]),
    ]  # fmt: skip
    return [{"check": c, "measured": m, "pass": bool(p)} for c, m, p in out]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = asyncio.run(run(args))
    res["checks"] = checks(res, args)
    res["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    o, f, s = res["overload"], res["flood"], res["sigterm"]
    print()
    print(f"overload    {o['connections']} connections x {args.rows} rows = {o['rows_in_flight_offered']} rows offered "
          f"at once, queue {o['max_queue_rows']} rows, {o['seconds']} s")
    print(f"            answers {o['answers']} (shed {o['shed_share']:.1%}), no answer {o['no_answer']}, "
          f"{o['rows_per_s']:,} rows/s served")
    print(f"            server CPU {o['server_cpu_s']} s ({o['server_cpu_us_per_answer']} us per answer), "
          f"this client's CPU {o['client_cpu_s']} s")
    print(f"            RSS MB: ready {o['rss_mb']['ready']:.0f}, after the first tenth {o['rss_mb']['after_first_tenth']}, "
          f"max {o['rss_mb']['max']}, last {o['rss_mb']['last']}   samples (s, MB) {o['rss_samples']}")
    print(f"            stores: feedback {o['store_bytes']['feedback'] / MIB:.1f} of {o['store_budget_bytes']['feedback'] / MIB:.0f} MiB, "
          f"drift {o['store_bytes']['drift'] / MIB:.2f} MiB")
    print(f"flood       {f['ids']:,} unmatched ids in {f['seconds']} s: answers {f['answers']}; RSS MB {f['rss_mb']}; "
          f"feedback store bytes {f['feedback_store_bytes']}")
    print(f"sigterm     {s['connections']} connections, SIGTERM after {s['sigterm_after_s']} s, exit {s['exit_code']} "
          f"{s['drain_seconds']} s later; answers {s['answers']}, no answer {s['no_answer']}, "
          f"refused connects {s['refused_connects']}; admitted and answered (audit) {s['audited_200']}, "
          f"received by the client {s['client_200']}, lost {s['lost']}")
    print()
    for c in res["checks"]:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['check']}: {c['measured']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")
    return 0 if all(c["pass"] for c in res["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
