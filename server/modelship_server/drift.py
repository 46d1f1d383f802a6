"""Input drift: a reference profile of the training inputs and a monitor of recent inputs.

numpy only (no torch, no FastAPI), so the model-export step can build a profile and the
server can score drift without either pulling in the other.

A *feature* is one column of an input tensor flattened to [rows, features]. The profile
keeps, per feature, summary statistics, reference bin proportions over quantile-based cut
points (PSI) and a quantile sketch of the reference distribution (two-sample KS).

Bins: `edges` are the sorted interior cut points c_1 < ... < c_k; bin 0 is (-inf, c_1),
bin i is [c_i, c_{i+1}), bin k is [c_k, +inf). The training minimum and (just above) the
maximum are always cut points, so values outside the training range land in bins whose
reference proportion is 0, and a constant feature gets below / equal / above bins instead
of a single bin that could never move.

The monitor's request path (`observe`) only copies rows into a bounded ring buffer under
a lock; `compute` copies the buffer out and does the scoring off the request path.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

PROFILE_FORMAT = "modelship.dev/reference-profile/v1"
PROFILE_FILENAME = "reference_profile.json"  # written next to the model file
DEFAULT_BINS = 10
DEFAULT_SKETCH = 256
PSI_EPSILON = 1e-4  # floor for empty bins: PSI stays finite and one stray value stays small


class ProfileError(ValueError):
    """A reference profile is malformed or does not fit the inputs."""


def _as_rows(x: Any) -> np.ndarray:
    """float32 [rows, features]: the dtype the ring buffer stores, so cut points compare exactly."""
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 0:
        raise ProfileError("inputs must have a batch dimension")
    return arr.reshape(arr.shape[0], -1) if arr.ndim != 2 else arr


def _cut_points(col: np.ndarray, bins: int) -> np.ndarray:
    """Interior quantile cuts plus the training min and the next float32 above the max."""
    lo, hi = col.min(), col.max()
    above_max = np.nextafter(hi, np.float32(np.inf))
    inner = np.quantile(col.astype(np.float64), np.arange(1, bins) / bins).astype(np.float32)
    return np.unique(np.concatenate([[lo], inner, [above_max]]).astype(np.float32)).astype(np.float64)


def _proportions(col: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(cuts, col, side="right"), minlength=len(cuts) + 1)
    return counts / max(len(col), 1)


def build_reference_profile(
    X: np.ndarray,
    feature_names: Sequence[str] | None = None,
    bins: int = DEFAULT_BINS,
    sketch_size: int = DEFAULT_SKETCH,
    input_name: str | None = None,
) -> dict[str, Any]:
    """Profile the training inputs X ([rows, ...], flattened per row). JSON-serialisable."""
    x = _as_rows(X)
    n, width = x.shape
    if n < 2:
        raise ProfileError("need at least 2 reference rows")
    if bins < 2 or sketch_size < 2:
        raise ProfileError("bins and sketch_size must be >= 2")
    if not np.isfinite(x).all():
        raise ProfileError("reference inputs contain NaN or infinite values")
    names = [f"f{i}" for i in range(width)] if feature_names is None else [str(s) for s in feature_names]
    if len(names) != width or len(set(names)) != width:
        raise ProfileError(f"need {width} distinct feature names, got {len(names)}")
    m = min(sketch_size, n)
    # m order statistics at mid-ranks: their ECDF is within ~1/(2m) of the reference ECDF,
    # ties (discrete features) included, which is all a two-sample KS needs.
    probs = (np.arange(m) + 0.5) / m
    x64 = x.astype(np.float64)
    sketch = np.quantile(x64, probs, axis=0, method="inverted_cdf")  # [m, width]
    features = []
    for j in range(width):
        col = x[:, j]
        cuts = _cut_points(col, bins)
        features.append(
            {
                "name": names[j],
                "count": int(n),
                "mean": float(x64[:, j].mean()),
                "std": float(x64[:, j].std()),
                "min": float(col.min()),
                "max": float(col.max()),
                "edges": cuts.tolist(),
                "proportions": _proportions(col, cuts).tolist(),
                "quantiles": sketch[:, j].tolist(),
            }
        )
    return {
        "format": PROFILE_FORMAT,
        "input": input_name,
        "rows": int(n),
        "bins": int(bins),
        "features": features,
    }


def validate_profile(profile: Any) -> dict[str, Any]:
    """Check the structure a DriftMonitor relies on; returns the profile."""
    if not isinstance(profile, dict) or profile.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"not a reference profile (format must be {PROFILE_FORMAT!r})")
    feats = profile.get("features")
    if not isinstance(feats, list) or not feats:
        raise ProfileError("reference profile has no features")
    for i, f in enumerate(feats):
        try:
            _, edges, props, quants = f["name"], f["edges"], f["proportions"], f["quantiles"]
        except (KeyError, TypeError) as exc:
            raise ProfileError(f"feature {i}: missing {exc}") from None
        if len(props) != len(edges) + 1 or not quants or list(edges) != sorted(edges):
            raise ProfileError(f"feature {i} ({f['name']}): inconsistent edges/proportions/quantiles")
    return profile


def save_profile(profile: dict[str, Any], path: str | Path) -> Path:
    """Write the profile as JSON (a directory gets PROFILE_FILENAME inside it)."""
    p = Path(path)
    if p.is_dir():
        p = p / PROFILE_FILENAME
    p.write_text(json.dumps(validate_profile(profile), separators=(",", ":")) + "\n")
    return p


def load_profile(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / PROFILE_FILENAME
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{p}: invalid JSON: {exc}") from None
    return validate_profile(data)


@dataclass(frozen=True)
class FeatureDrift:
    name: str
    psi: float  # population stability index of the window against the reference bins
    ks: float  # two-sample Kolmogorov-Smirnov statistic against the reference sketch
    drift: bool


@dataclass(frozen=True)
class DriftReport:
    rows: int  # rows in the window that was scored
    observed_total: int  # rows observed since start
    inconclusive: bool  # too few rows: no scores, no flags
    drift: bool  # any feature drifted
    psi_max: float  # NaN when inconclusive
    psi_mean: float
    ks_max: float
    threshold: float
    ks_threshold: float | None
    computed_at: float
    features: tuple[FeatureDrift, ...] = ()

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drift]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes null)."""

        def num(v: float) -> float | None:
            return None if v is None or math.isnan(v) else v

        return {
            "rows": self.rows,
            "observed_total": self.observed_total,
            "inconclusive": self.inconclusive,
            "drift": self.drift,
            "psi_max": num(self.psi_max),
            "psi_mean": num(self.psi_mean),
            "ks_max": num(self.ks_max),
            "threshold": self.threshold,
            "ks_threshold": self.ks_threshold,
            "computed_at": self.computed_at,
            "drifted": self.drifted,
            "features": [
                {"name": f.name, "psi": f.psi, "ks": f.ks, "drift": f.drift} for f in self.features
            ],
        }


def psi(actual: np.ndarray, expected: np.ndarray, eps: float = PSI_EPSILON) -> float:
    """Population stability index of two proportion vectors over the same bins."""
    a = np.maximum(actual, eps)
    e = np.maximum(expected, eps)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(sorted_a: np.ndarray, sorted_b: np.ndarray) -> float:
    """sup |F_a - F_b| of two sorted samples, exact with ties (ECDFs taken right-continuous)."""
    points = np.concatenate([sorted_a, sorted_b])
    fa = np.searchsorted(sorted_a, points, side="right") / len(sorted_a)
    fb = np.searchsorted(sorted_b, points, side="right") / len(sorted_b)
    return float(np.max(np.abs(fa - fb)))


class DriftMonitor:
    """A bounded window of recent input rows, scored against a reference profile on demand.

    `observe` is called on the request path (event loop): it is O(rows), copies into a
    preallocated float32 ring buffer under a lock and never loops per feature. `compute`
    runs anywhere (typically a worker thread): it holds the lock only to copy the window.
    Memory: window x features x 4 bytes.

    A feature is flagged when its PSI >= `threshold`, or its KS statistic >= `ks_threshold`
    when one is set. With fewer than `min_rows` rows in the window the report is inconclusive.
    """

    def __init__(
        self,
        profile: dict[str, Any],
        window: int = 1000,
        threshold: float = 0.2,
        ks_threshold: float | None = None,
        min_rows: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        validate_profile(profile)
        if window < 1 or min_rows < 1:
            raise ValueError("window and min_rows must be >= 1")
        if threshold <= 0 or (ks_threshold is not None and not 0 < ks_threshold <= 1):
            raise ValueError("threshold must be > 0 and ks_threshold in (0, 1]")
        feats = profile["features"]
        self.names = [str(f["name"]) for f in feats]
        self.width = len(feats)
        self._cuts = [np.asarray(f["edges"], dtype=np.float64) for f in feats]
        self._ref_props = [np.asarray(f["proportions"], dtype=np.float64) for f in feats]
        self._ref_sketch = [np.sort(np.asarray(f["quantiles"], dtype=np.float64)) for f in feats]
        self.window, self.threshold, self.ks_threshold = window, threshold, ks_threshold
        self.min_rows = min(min_rows, window)
        self._clock = clock
        self._buf = np.zeros((window, self.width), dtype=np.float32)
        self._next = 0  # ring write position
        self._filled = 0
        self._total = 0
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        return self._filled

    @property
    def nbytes(self) -> int:
        """Memory of the window (preallocated: window x features x 4 bytes)."""
        return self._buf.nbytes

    @property
    def observed_total(self) -> int:
        return self._total

    def observe(self, rows: np.ndarray) -> None:
        """Add a request's input rows ([rows, ...] flattened per row) to the window."""
        x = np.asarray(rows)
        n = x.shape[0] if x.ndim else 0
        if n == 0:
            return
        x = x.reshape(n, -1)
        if x.shape[1] != self.width:
            raise ProfileError(f"rows have {x.shape[1]} features, the profile has {self.width}")
        if n > self.window:
            x = x[-self.window :]  # only the newest rows survive anyway
        k = x.shape[0]
        with self._lock:
            start = self._next
            first = min(k, self.window - start)
            self._buf[start : start + first] = x[:first]  # casts to float32 in place
            if first < k:
                self._buf[: k - first] = x[first:]
            self._next = (start + k) % self.window
            self._filled = min(self._filled + k, self.window)
            self._total += n

    def reset(self) -> None:
        with self._lock:
            self._next = self._filled = 0

    def snapshot(self) -> np.ndarray:
        """A copy of the window (row order is irrelevant to the scores)."""
        with self._lock:
            return self._buf[: self._filled].copy()

    def compute(self) -> DriftReport:
        with self._lock:
            data = self._buf[: self._filled].copy()
            total = self._total
        n = len(data)
        now = self._clock()
        nan = float("nan")
        if n < self.min_rows:
            return DriftReport(
                rows=n, observed_total=total, inconclusive=True, drift=False,
                psi_max=nan, psi_mean=nan, ks_max=nan, threshold=self.threshold,
                ks_threshold=self.ks_threshold, computed_at=now,
            )  # fmt: skip
        data.sort(axis=0)  # in place: peak memory stays at twice the window, not five times
        results = []
        for j, name in enumerate(self.names):
            col = data[:, j].astype(np.float64)
            p = psi(_proportions(col, self._cuts[j]), self._ref_props[j])
            d = ks_statistic(col, self._ref_sketch[j])
            flagged = p >= self.threshold or (self.ks_threshold is not None and d >= self.ks_threshold)
            results.append(FeatureDrift(name, p, d, flagged))
        psis = np.array([f.psi for f in results])
        return DriftReport(
            rows=n, observed_total=total, inconclusive=False,
            drift=any(f.drift for f in results),
            psi_max=float(psis.max()), psi_mean=float(psis.mean()),
            ks_max=float(max(f.ks for f in results)),
            threshold=self.threshold, ks_threshold=self.ks_threshold, computed_at=now,
            features=tuple(results),
        )  # fmt: skip


@dataclass
class PeriodicStats:
    runs: int = 0
    errors: int = 0
    last_error: str = ""
    history: list[float] = field(default_factory=list)  # seconds each run took (last 16)


async def run_periodically(
    interval_s: float,
    fn: Callable[[], Any],
    on_result: Callable[[Any], None | Awaitable[None]] | None = None,
    stop: asyncio.Event | None = None,
    stats: PeriodicStats | None = None,
    max_runs: int | None = None,
) -> PeriodicStats:
    """Every `interval_s`, run the blocking `fn` in a worker thread and hand its result to
    `on_result` on the event loop (e.g. monitor.compute -> set the gauges).

    Returns when `stop` is set (checked while waiting, so shutdown never waits a whole
    interval) or after `max_runs`. An exception in `fn`/`on_result` is counted in
    `stats` and the loop goes on: a scoring bug must not end monitoring or the server.
    Start it as a task from the app's lifespan and set `stop` (or cancel it) on shutdown.
    """
    if interval_s <= 0:
        raise ValueError("interval_s must be > 0")
    stop = stop or asyncio.Event()
    stats = stats or PeriodicStats()
    loop = asyncio.get_running_loop()
    while not stop.is_set() and (max_runs is None or stats.runs < max_runs):
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
            break  # stop was set while waiting
        except asyncio.TimeoutError:
            pass
        started = loop.time()
        try:
            result = await asyncio.to_thread(fn)
            if on_result is not None:
                maybe = on_result(result)
                if asyncio.iscoroutine(maybe):
                    await maybe
        except Exception as exc:  # noqa: BLE001 - counted and reported, the loop survives
            stats.errors += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
        stats.runs += 1
        stats.history = (stats.history + [loop.time() - started])[-16:]
    return stats
