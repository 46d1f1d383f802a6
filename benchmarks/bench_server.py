"""Server benchmark: the bare model vs a naive FastAPI server vs modelship, in one run.

    python benchmarks/bench_server.py --model-dir examples/model [--duration 10] [--connections 64]
        [--repeat 3] [--device cuda] [--precision fp16] [--monitoring on|off|both] [--json results.json]

Prints one table:
  (a) the bare model in-process (torch.set_num_threads(1)) at batch 1 / 8 / 32,
  (b) benchmarks/naive_server.py and (c) modelship, each driven by `wrk` with
      --connections concurrent connections, once with one-row requests (/predict) and
      once with 32-row requests (/predict/batch); modelship also with 32-row Open Inference
      Protocol requests in the binary tensor format,
with rows/s, p50 / p99 latency, modelship's mean batch size (from /metrics deltas of its
batch-size histogram) and every rows/s as a ratio to the bare model at batch 32; then the
targets as PASS / FAIL. Also how busy the machine was with other work while it measured.

--monitoring (default both): modelship with its monitoring at its defaults ("on": drift
against the profile next to the model scored every 30 s, the feedback store; no audit) and/or
off (no drift, no feedback, no audit); `both` runs the two side by side, alternating their
measured runs ("ms-nomon" and "modelship" rows), and prints the on/off ratio of rows/s and
RSS of every load, with the targets on >= 0.95x off (rows/s) and RSS <= 1.2x off. `full`
compares off with a server busier than the defaults: drift scored every second and an audit
line per request to a file.
Every server's resident memory (RSS, and its peak) is printed when it is ready and after
each load.

Needs `wrk` (Debian/Ubuntu: `sudo apt-get install -y wrk`; macOS: `brew install wrk`).
Servers run as subprocesses on 127.0.0.1 on free ports and are always stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
NAIVE_SERVER = ROOT / "benchmarks" / "naive_server.py"
BATCH_ROWS = 32
# Targets from the issue (2-core CPU machine).
TARGET_ONE_ROW_VS_NAIVE = 5.0
TARGET_ONE_ROW_P99_MS = 40.0
TARGET_BATCH_VS_BARE = 0.7
BATCH_METRIC = "modelship_batch_size_rows"  # histogram of rows per forward pass
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- results


@dataclass
class Row:
    system: str  # "bare" | "naive" | "modelship"
    load: str  # "batch 8" | "1-row" | "32-row" | "32-row v2 binary"
    rows_per_s: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_batch: float | None = None
    requests: int = 0
    failed: int = 0  # non-2xx responses and socket errors
    errors: dict = field(default_factory=dict)  # wrk's breakdown of `failed`
    server_cpu_cores: float | None = None  # CPU time of the server's process tree / wall time
    wrk_cpu_cores: float | None = None  # the load generator's own CPU use
    other_cpu_cores: float | None = None  # everything else on the machine: the noise
    vs_bare32: float | None = None
    rss_mb: float | None = None  # the server's resident memory after the run (largest over repeats)
    peak_rss_mb: float | None = None  # its high-water mark since start (VmHWM)
    runs: list = field(default_factory=list)  # every repeat, when --repeat > 1


@dataclass
class Results:
    host: dict
    settings: dict
    rows: list[Row] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    monitoring: list[dict] = field(default_factory=list)  # modelship on vs off, per load

    def find(self, system: str, load: str) -> Row | None:
        return next((r for r in self.rows if r.system == system and r.load == load), None)


# ---------------------------------------------------------------- bare model


def bare_throughput(
    model_path: Path, x: np.ndarray, batch: int, device: str, precision: str, seconds: float
) -> float:
    """Rows/s of the model alone, inputs from host memory and logits back to host memory."""
    import torch

    torch.set_num_threads(1)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if model_path.suffix == ".pt2":  # torch.export program
        model = torch.export.load(str(model_path)).module().to(device=device, dtype=dtype)
    else:
        model = torch.jit.load(str(model_path), map_location=device).eval().to(dtype)
    xb = torch.from_numpy(np.ascontiguousarray(x[:batch]))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def once() -> None:
        model(xb.to(device=device, dtype=dtype)).float().cpu()

    with torch.inference_mode():
        for _ in range(20):  # let the profiling executor settle
            once()
        sync()
        n, start = 0, time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(10):
                once()
            n += 10
        sync()
        elapsed = time.perf_counter() - start
    return n * batch / elapsed


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before it was ready")
        try:
            if http_get(url, timeout=1.0)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready at {url} within {timeout:.0f}s")


@contextmanager
def server(cmd: list[str], ready_url: str, log: Path, env: dict | None = None) -> Iterator[int]:
    """Run a server subprocess; always SIGTERM it (then SIGKILL) on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        try:
            try:
                wait_ready(ready_url, proc, timeout=120)
            except RuntimeError as e:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{e}\n--- {' '.join(cmd)}\n{tail}") from None
            yield proc.pid
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def tree_cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of a process and its descendants (threads included)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        todo.extend(children.get(p, []))
    return total


def wait_idle(pid: int, timeout: float = 15.0, window: float = 0.2, busy_below: float = 0.05) -> bool:
    """Wait until the server's CPU use falls below `busy_below` cores over `window` seconds.

    When wrk stops, the requests it had in flight are still queued in the server; the next
    run must not start (nor metrics be read) until they are done.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c0, t0 = tree_cpu_seconds(pid), time.monotonic()
        time.sleep(window)
        if (tree_cpu_seconds(pid) - c0) / (time.monotonic() - t0) < busy_below:
            return True
    return False


def rss_mb(pid: int) -> tuple[float | None, float | None]:
    """(VmRSS, VmHWM) of a process in MB (10^6 bytes), from /proc; None when unreadable."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    kb = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines() if line.startswith(("VmRSS", "VmHWM"))}
    return (kb["VmRSS"] * 1024 / 1e6 if "VmRSS" in kb else None, kb["VmHWM"] * 1024 / 1e6 if "VmHWM" in kb else None)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle, from /proc/stat."""
    parts = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
    return (sum(parts[:8]) - idle) / CLK_TCK


# ---------------------------------------------------------------- wrk

LUA_TEMPLATE = """
-- generated by bench_server.py: POST a rotating set of real held-out bodies
local bodies = {
%(bodies)s
}
local i = 0
wrk.method = "POST"
%(headers)s
request = function()
  i = (i %% #bodies) + 1
  return wrk.format("POST", "%(path)s", nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "status": %%d, "connect": %%d, "read": %%d, ' ..
    '"write": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d, "mean_us": %%f, "max_us": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class Load:
    """One kind of request: where it goes, how many rows each carries, the bodies to rotate."""

    name: str
    path: str
    rows: int
    bodies: list[bytes]
    headers: dict[str, str]


def lua_string(data: bytes) -> str:
    """A Lua string literal for arbitrary bytes (binary tensors included)."""
    safe = set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03d}" for b in data) + '"'


def write_lua(path: Path, load: Load) -> None:
    headers = "\n".join(f"wrk.headers[{lua_string(k.encode())}] = {lua_string(v.encode())}" for k, v in load.headers.items())
    bodies = ",\n".join(lua_string(b) for b in load.bodies)
    path.write_text(LUA_TEMPLATE % {"bodies": bodies, "path": load.path, "headers": headers})


def rotating_rows(x: np.ndarray, rows: int, count: int) -> list[np.ndarray]:
    return [x[[(k * rows + j) % len(x) for j in range(rows)]] for k in range(count)]


def json_loads(x: np.ndarray, count: int = 64) -> list[Load]:
    """The tutorial formats: /predict with one row, /predict/batch with 32."""
    json_type = {"Content-Type": "application/json"}
    one = [json.dumps({"features": r[0].tolist()}).encode() for r in rotating_rows(x, 1, count)]
    many = [json.dumps({"batch_features": r.tolist()}).encode() for r in rotating_rows(x, BATCH_ROWS, count)]
    return [
        Load("1-row", "/predict", 1, one, json_type),
        Load(f"{BATCH_ROWS}-row", "/predict/batch", BATCH_ROWS, many, json_type),
    ]


def v2_binary_load(x: np.ndarray, model_name: str, count: int = 64) -> Load:
    """32-row Open Inference Protocol requests with the binary tensor extension both ways:
    what a client that cares about throughput sends (no JSON number parsing)."""
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [BATCH_ROWS, x.shape[1]], "datatype": "FP32",
                    "parameters": {"binary_data_size": BATCH_ROWS * x.shape[1] * 4}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    bodies = [header + np.ascontiguousarray(r, dtype="<f4").tobytes() for r in rotating_rows(x, BATCH_ROWS, count)]
    return Load(
        f"{BATCH_ROWS}-row v2 binary",
        f"/v2/models/{model_name}/infer",
        BATCH_ROWS,
        bodies,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )


def run_wrk(url: str, lua: Path, duration: float, connections: int, threads: int) -> dict:
    """One wrk run; its summary (from the Lua `done` hook) plus the CPU seconds wrk used."""
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--latency", "--timeout", "30s", "-s", str(lua), url,
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + duration + 60
        while True:  # os.wait4 rather than proc.wait: it also reports wrk's CPU use
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError("wrk did not finish in time")
            time.sleep(0.05)
        out.seek(0)
        text = out.read()
    for line in text.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :]) | {"cpu_s": usage.ru_utime + usage.ru_stime}
    raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}")


# ---------------------------------------------------------------- metrics


def counts_by_code(metrics_text: str, name: str = "modelship_requests") -> dict[str, float]:
    """A counter's values summed per `code` label (modelship's requests by HTTP status)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            for s in family.samples:
                if s.name == name + "_total":
                    code = s.labels.get("code", "?")
                    out[code] = out.get(code, 0.0) + s.value
    return out


def histogram_sum_count(metrics_text: str, name: str) -> tuple[float, float]:
    """Sum and count of a histogram over all its label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != name:
            continue
        for s in family.samples:
            if s.name == name + "_sum":
                total += s.value
            elif s.name == name + "_count":
                count += s.value
    return total, count


# ---------------------------------------------------------------- measuring a server


def measure_once(
    system: str, base_url: str, pid: int, load: Load, lua: Path, args: argparse.Namespace, metrics_url: str | None
) -> Row:
    """One measured wrk run, the server idle before and after (metrics read when it is)."""
    wait_idle(pid)
    text0 = http_get(metrics_url)[1] if metrics_url else ""
    cpu0, busy0, t0 = tree_cpu_seconds(pid), machine_busy_seconds(), time.monotonic()
    res = run_wrk(base_url, lua, args.duration, args.connections, args.wrk_threads)
    wall = time.monotonic() - t0
    server_cores = (tree_cpu_seconds(pid) - cpu0) / wall
    machine_cores = (machine_busy_seconds() - busy0) / wall
    wait_idle(pid)
    mean_batch, codes = None, {}
    if metrics_url:
        text1 = http_get(metrics_url)[1]
        before, after = (histogram_sum_count(t, args.batch_metric) for t in (text0, text1))
        batches = after[1] - before[1]
        mean_batch = (after[0] - before[0]) / batches if batches else None
        c0, c1 = counts_by_code(text0), counts_by_code(text1)
        codes = {k: int(v - c0.get(k, 0)) for k, v in c1.items() if v - c0.get(k, 0)}
    failed = res["status"] + res["connect"] + res["read"] + res["write"] + res["timeout"]
    ok = res["requests"] - res["status"]
    rss, peak = rss_mb(pid)
    return Row(
        rss_mb=rss,
        peak_rss_mb=peak,
        system=system,
        load=load.name,
        rows_per_s=ok * load.rows / (res["duration_us"] / 1e6),
        p50_ms=res["p50_us"] / 1e3,
        p99_ms=res["p99_us"] / 1e3,
        mean_batch=mean_batch,
        requests=res["requests"],
        failed=failed,
        errors={k: res[k] for k in ("status", "connect", "read", "write", "timeout") if res[k]}
        | ({"server_codes": codes} if res["status"] else {}),
        server_cpu_cores=server_cores,
        wrk_cpu_cores=res["cpu_s"] / wall,
        other_cpu_cores=max(0.0, machine_cores - server_cores - res["cpu_s"] / wall),
    )


@dataclass
class Target:
    system: str
    base_url: str
    pid: int
    metrics_url: str | None


def measure_server(
    system: str,
    base_url: str,
    pid: int,
    loads: list[Load],
    args: argparse.Namespace,
    workdir: Path,
    metrics_url: str | None,
) -> list[Row]:
    return measure_servers([Target(system, base_url, pid, metrics_url)], loads, args, workdir)


def measure_servers(targets: list[Target], loads: list[Load], args: argparse.Namespace, workdir: Path) -> list[Row]:
    """Each load: a warm-up per server, then --repeat measured runs; the run of median rows/s
    is kept (the others are in its `runs`), which damps the noise of a shared machine. With
    several servers (modelship with monitoring off and on) the runs alternate between them,
    so a burst of noise from other work hits both rather than one."""
    rows = []
    for load in loads:
        luas = {}
        for t in targets:
            luas[t.system] = lua = workdir / f"{t.system}-{load.name.replace(' ', '-')}.lua"
            write_lua(lua, load)
            if args.warmup > 0:
                wait_idle(t.pid)
                run_wrk(t.base_url, lua, args.warmup, args.connections, args.wrk_threads)
        runs: dict[str, list[Row]] = {t.system: [] for t in targets}
        for _ in range(args.repeat):
            for t in targets:
                runs[t.system].append(measure_once(t.system, t.base_url, t.pid, load, luas[t.system], args, t.metrics_url))
        for t in targets:
            done = sorted(runs[t.system], key=lambda r: r.rows_per_s)
            row = done[len(done) // 2]
            row.runs = [{"rows_per_s": r.rows_per_s, "p99_ms": r.p99_ms, "other_cpu_cores": r.other_cpu_cores,
                         "rss_mb": r.rss_mb} for r in done]  # fmt: skip
            rss = [r.rss_mb for r in done if r.rss_mb is not None]
            row.rss_mb = max(rss) if rss else None
            row.peak_rss_mb = max((r.peak_rss_mb or 0.0) for r in done) or None
            rows.append(row)
            print(f"  {t.system:<10} {load.name:<16} {row.rows_per_s:>12,.0f} rows/s  "
                  f"p99 {row.p99_ms:.1f} ms  failed {row.failed}  RSS {fmt(row.rss_mb, '.0f')} MB", flush=True)  # fmt: skip
    return rows


# Monitoring on: the server's defaults (drift scored every 30 s against the profile next to
# the model, the feedback store with its byte budget, no audit). Full: every feature of
# issue 6 busier than the defaults (drift scored every second, an audit line per request to
# a file). Off: none of them.
MONITORING_ENV = {
    "on": {},
    "full": {"MODELSHIP_DRIFT_INTERVAL_S": "1", "MODELSHIP_AUDIT_SAMPLE_RATE": "1"},
    "off": {"MODELSHIP_DRIFT_REFERENCE": "off", "MODELSHIP_FEEDBACK_MAX_ENTRIES": "0", "MODELSHIP_AUDIT_LOG": "off"},
}
MONITORING_SYSTEMS = {"on": "modelship", "full": "modelship", "off": "ms-nomon"}
# Monitoring at its defaults against off (issue 11): rows/s at least this share, RSS at most this multiple.
TARGET_MONITORING_SPEED = 0.95
TARGET_MONITORING_RSS = 1.2


def modelship_cmd(args: argparse.Namespace, model_file: Path, port: int, monitoring: str = "on",
                  workdir: Path | None = None) -> tuple[list[str], dict]:  # fmt: skip
    """Command line and environment: its defaults, except a queue deep enough that 64
    connections of 32-row requests are never shed (a benchmark of 503s measures nothing),
    and monitoring on or off (MONITORING_ENV)."""
    cmd = [
        sys.executable, "-m", "modelship_server",
        "--model-uri", model_file.resolve().as_uri(),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {
        "MODELSHIP_DEVICE": args.device,
        "MODELSHIP_PRECISION": args.precision,
        "MODELSHIP_MAX_QUEUE": str(max(256, args.connections * BATCH_ROWS)),
        "MODELSHIP_LOG_LEVEL": "warning",
        **MONITORING_ENV[monitoring],
    }
    if monitoring == "full" and workdir is not None:
        env["MODELSHIP_AUDIT_FILE"] = str(workdir / "audit.jsonl")
    return cmd + list(args.modelship_arg), env


# ---------------------------------------------------------------- report


def _cpu_us_per_row(r: Row) -> float | None:
    return r.server_cpu_cores / r.rows_per_s * 1e6 if r.server_cpu_cores and r.rows_per_s else None


def add_ratios_and_checks(res: Results) -> None:
    bare32 = res.find("bare", f"batch {BATCH_ROWS}")
    for r in res.rows:
        r.vs_bare32 = r.rows_per_s / bare32.rows_per_s if bare32 else None
    ms1, nv1 = res.find("modelship", "1-row"), res.find("naive", "1-row")
    if ms1 and nv1:
        ratio = ms1.rows_per_s / nv1.rows_per_s
        res.checks.append({
            "target": f"modelship 1-row >= {TARGET_ONE_ROW_VS_NAIVE:g}x naive 1-row rows/s",
            "measured": f"{ratio:.2f}x", "pass": ratio >= TARGET_ONE_ROW_VS_NAIVE,
        })  # fmt: skip
    if ms1:
        res.checks.append({
            "target": f"modelship 1-row p99 <= {TARGET_ONE_ROW_P99_MS:g} ms",
            "measured": f"{ms1.p99_ms:.1f} ms", "pass": ms1.p99_ms <= TARGET_ONE_ROW_P99_MS,
        })  # fmt: skip
    for load in (f"{BATCH_ROWS}-row", f"{BATCH_ROWS}-row v2 binary"):
        ms = res.find("modelship", load)
        if ms and bare32:
            ratio = ms.rows_per_s / bare32.rows_per_s
            res.checks.append({
                "target": f"modelship {load} >= {TARGET_BATCH_VS_BARE:g}x bare batch-{BATCH_ROWS} rows/s",
                "measured": f"{ratio:.3f}x", "pass": ratio >= TARGET_BATCH_VS_BARE,
            })  # fmt: skip
    for r in res.rows:
        off = res.find(MONITORING_SYSTEMS["off"], r.load) if r.system == "modelship" else None
        if off is not None and off.rows_per_s:
            res.monitoring.append({
                "load": r.load, "on_rows_per_s": r.rows_per_s, "off_rows_per_s": off.rows_per_s,
                "ratio": r.rows_per_s / off.rows_per_s, "on_p99_ms": r.p99_ms, "off_p99_ms": off.p99_ms,
                "on_rss_mb": r.rss_mb, "off_rss_mb": off.rss_mb,
                # server CPU time per row: less sensitive than rows/s to other work taking the cores
                "on_cpu_us_per_row": _cpu_us_per_row(r), "off_cpu_us_per_row": _cpu_us_per_row(off),
            })  # fmt: skip
    on_off = {m["load"]: m for m in res.monitoring}
    for load in ("1-row", f"{BATCH_ROWS}-row"):
        m = on_off.get(load)
        if m is not None:
            res.checks.append({
                "target": f"modelship {load} with monitoring on >= {TARGET_MONITORING_SPEED:g}x off (rows/s)",
                "measured": f"{m['ratio']:.3f}x", "pass": m["ratio"] >= TARGET_MONITORING_SPEED,
            })  # fmt: skip
    m = on_off.get(f"{BATCH_ROWS}-row")
    if m is not None and m.get("on_rss_mb") and m.get("off_rss_mb"):
        ratio = m["on_rss_mb"] / m["off_rss_mb"]
        res.checks.append({
            "target": f"modelship RSS after the {BATCH_ROWS}-row run with monitoring on <= {TARGET_MONITORING_RSS:g}x off",
            "measured": f"{m['on_rss_mb']:.0f} vs {m['off_rss_mb']:.0f} MB = {ratio:.3f}x", "pass": ratio <= TARGET_MONITORING_RSS,
        })  # fmt: skip
    for r in res.rows:
        if r.failed:
            res.checks.append({
                "target": f"{r.system} {r.load}: every request answered 2xx",
                "measured": f"{r.failed} of {r.requests} failed {r.errors}", "pass": False,
            })  # fmt: skip


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(res: Results) -> None:
    s = res.settings
    print()
    print(f"model {s['model']}  device {s['device']}  precision {s['precision']}  "
          f"{s['connections']} connections  {s['duration']}s per run  "
          f"{res.host['cpus']} CPUs  torch {res.host['torch']}")  # fmt: skip
    head = f"{'system':<10} {'load':<16} {'rows/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} " \
           f"{'x bare32':>9} {'srv cores':>9} {'wrk cores':>9} {'other cores':>11} {'RSS MB':>7} {'peak MB':>7} {'failed':>7}"  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in res.rows:
        print(f"{r.system:<10} {r.load:<16} {r.rows_per_s:>12,.0f} {fmt(r.p50_ms, '.2f'):>8} "
              f"{fmt(r.p99_ms, '.2f'):>8} {fmt(r.mean_batch, '.1f'):>10} {fmt(r.vs_bare32, '.3f'):>9} "
              f"{fmt(r.server_cpu_cores, '.2f'):>9} {fmt(r.wrk_cpu_cores, '.2f'):>9} "
              f"{fmt(r.other_cpu_cores, '.2f'):>11} {fmt(r.rss_mb, '.0f'):>7} {fmt(r.peak_rss_mb, '.0f'):>7} {r.failed:>7}")  # fmt: skip
    if res.monitoring:
        print("\nmonitoring on (modelship) vs off (ms-nomon):")
        for m in res.monitoring:
            print(f"  {m['load']:<16} {m['on_rows_per_s']:>10,.0f} vs {m['off_rows_per_s']:>10,.0f} rows/s "
                  f"= {m['ratio']:.3f}x   p99 {fmt(m['on_p99_ms'], '.1f')} vs {fmt(m['off_p99_ms'], '.1f')} ms   "
                  f"RSS {fmt(m['on_rss_mb'], '.0f')} vs {fmt(m['off_rss_mb'], '.0f')} MB   "
                  f"server CPU {fmt(m['on_cpu_us_per_row'], '.1f')} vs {fmt(m['off_cpu_us_per_row'], '.1f')} us/row")  # fmt: skip
    print()
    for c in res.checks:
        print(f"{'PASS' if c['pass'] else 'FAIL'}  {c['target']}: {c['measured']}")
    busy = [r.other_cpu_cores for r in res.rows if r.other_cpu_cores is not None]
    if busy:
        print(f"\nnoise: processes other than the server and wrk used {min(busy):.2f}..{max(busy):.2f} of "
              f"{res.host['cpus']} cores during the server runs; load average before "
              f"{res.host['loadavg_before']}, after {res.host['loadavg_after']}")  # fmt: skip


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="bare model vs naive server vs modelship")
    p.add_argument("--model-dir", type=Path, required=True, help="output of examples/build_model.py")
    p.add_argument("--model-file", default="model.pt", help="file in --model-dir that the servers load")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1, help="measured runs per load; the median is reported")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (1 leaves the cores to the server)")
    p.add_argument("--bare-seconds", type=float, default=2.0, help="seconds per bare-model batch size")
    p.add_argument("--bare-batches", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--skip", action="append", default=[], choices=["bare", "naive", "modelship"],
                   help="leave a system out (repeatable)")  # fmt: skip
    p.add_argument("--modelship-arg", action="append", default=[],
                   help="extra argument for the modelship server (repeatable), e.g. --modelship-arg=--max-batch-size=64")  # fmt: skip
    p.add_argument("--monitoring", default="both", choices=["on", "off", "both", "full"],
                   help="modelship with its monitoring (drift, feedback, audit) at its defaults (on), off, both in "
                        "turn, or full (off against drift every second and every request audited to a file)")  # fmt: skip
    p.add_argument("--no-binary", action="store_true",
                   help="leave out modelship's 32-row V2 binary-tensor load")  # fmt: skip
    p.add_argument("--batch-metric", default=BATCH_METRIC, help="modelship's batch-size histogram")
    p.add_argument("--keep-logs", type=Path, help="copy server logs and wrk scripts here")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "naive" not in args.skip or "modelship" not in args.skip:
        if shutil.which("wrk") is None:
            print("error: `wrk` is not installed. Install it with `sudo apt-get install -y wrk` "
                  "(Debian/Ubuntu) or `brew install wrk` (macOS), or run with "
                  "--skip naive --skip modelship for the bare model only.", file=sys.stderr)  # fmt: skip
            return 2
    model_file = args.model_dir / args.model_file
    heldout = np.load(args.model_dir / "heldout.npz")
    x = heldout["X"].astype(np.float32)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"error: --device cuda, but this torch ({torch.__version__}) sees no CUDA device", file=sys.stderr)
        return 2
    res = Results(
        host={
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        },
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"model": str(model_file)},
    )
    if "bare" not in args.skip:
        for b in (int(v) for v in args.bare_batches.split(",")):
            rps = bare_throughput(model_file, x, b, args.device, args.precision, args.bare_seconds)
            res.rows.append(Row(system="bare", load=f"batch {b}", rows_per_s=rps))
            print(f"  bare       batch {b:<3} {rps:>10,.0f} rows/s", flush=True)

    plain = json_loads(x)
    model_name = json.loads((args.model_dir / "signature.json").read_text())["name"]
    binary = [] if args.no_binary else [v2_binary_load(x, model_name)]
    with tempfile.TemporaryDirectory(prefix="modelship-bench-") as tmp:
        work = Path(tmp)
        try:
            if "naive" not in args.skip:
                port = free_port()
                cmd = [sys.executable, str(NAIVE_SERVER), "--model", str(model_file),
                       "--port", str(port), "--device", args.device]  # fmt: skip
                with server(cmd, f"http://127.0.0.1:{port}/health", work / "naive.log") as pid:
                    print(f"  naive      ready: RSS {fmt(rss_mb(pid)[0], '.0f')} MB", flush=True)
                    res.rows += measure_server("naive", f"http://127.0.0.1:{port}", pid, plain, args, work, None)
            if "modelship" not in args.skip:
                # both: the two servers run side by side (one idle while the other is measured)
                with ExitStack() as stack:
                    targets = []
                    pair = {"both": ("off", "on"), "full": ("off", "full")}
                    for mode in pair.get(args.monitoring, (args.monitoring,)):
                        system = MONITORING_SYSTEMS[mode]
                        port = free_port()
                        base = f"http://127.0.0.1:{port}"
                        cmd, env = modelship_cmd(args, model_file, port, mode, work)
                        res.settings[f"{system}_env"] = env
                        pid = stack.enter_context(server(cmd, base + "/v2/health/ready", work / f"{system}.log", env))
                        print(f"  {system:<10} ready: RSS {fmt(rss_mb(pid)[0], '.0f')} MB", flush=True)
                        targets.append(Target(system, base, pid, base + "/metrics"))
                    res.rows += measure_servers(targets, plain + binary, args, work)
        finally:
            if args.keep_logs:
                shutil.copytree(work, args.keep_logs, dirs_exist_ok=True)

    res.host["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    add_ratios_and_checks(res)
    print_table(res)
    if args.json:
        args.json.write_text(json.dumps({**asdict(res)}, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
