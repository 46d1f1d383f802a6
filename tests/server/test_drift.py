"""Drift scoring on the real digits data (the example model's data), fixed-seed split."""
from __future__ import annotations

import asyncio
import json
import math
import threading

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from modelship_server.drift import (
    PROFILE_FILENAME,
    DriftMonitor,
    PeriodicStats,
    ProfileError,
    build_reference_profile,
    ks_statistic,
    load_profile,
    psi,
    run_periodically,
    save_profile,
)

NAMES = [f"pixel_{i}" for i in range(64)]


@pytest.fixture(scope="module")
def split() -> tuple[np.ndarray, np.ndarray]:
    """The same split as examples/build_model.py: stratified, 25% held out, seed 0."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    x_tr, x_ho, _, _ = train_test_split(x, digits.target, test_size=0.25, stratify=digits.target, random_state=0)
    return x_tr, x_ho


@pytest.fixture(scope="module")
def profile(split) -> dict:
    return build_reference_profile(split[0], NAMES, input_name="input")


def test_profile_statistics_and_json_round_trip(split, profile, tmp_path) -> None:
    x_tr, _ = split
    assert profile["rows"] == len(x_tr) and len(profile["features"]) == 64
    f = profile["features"][42]
    col = x_tr[:, 42].astype(np.float64)
    assert f["name"] == "pixel_42"
    assert f["mean"] == pytest.approx(col.mean()) and f["std"] == pytest.approx(col.std())
    assert (f["min"], f["max"]) == (col.min(), col.max())
    assert sum(f["proportions"]) == pytest.approx(1.0)
    assert len(f["proportions"]) == len(f["edges"]) + 1
    # min and just-above-max are cut points: nothing in the reference falls outside them
    assert f["proportions"][0] == 0 and f["proportions"][-1] == 0
    written = save_profile(profile, tmp_path)
    assert written.name == PROFILE_FILENAME
    loaded = load_profile(tmp_path)
    assert loaded == json.loads(json.dumps(profile))
    # a monitor from the loaded file scores exactly like one from the in-memory profile
    a, b = DriftMonitor(profile), DriftMonitor(loaded)
    a.observe(split[1]), b.observe(split[1])
    assert a.compute().features == b.compute().features


def test_held_out_rows_raise_no_drift(split, profile) -> None:
    mon = DriftMonitor(profile, window=1000, threshold=0.2)
    mon.observe(split[1])
    report = mon.compute()
    assert report.rows == len(split[1]) == 450
    assert not report.inconclusive and not report.drift and report.drifted == []
    assert report.psi_max < 0.1  # far below the threshold, not just under it
    assert all(math.isfinite(f.psi) and math.isfinite(f.ks) for f in report.features)


def test_shifted_and_rescaled_features_are_flagged_and_only_those(split, profile) -> None:
    x_tr, x_ho = split
    std = x_tr.std(axis=0)
    moved = {42: ("shift", 4.0), 21: ("scale", 0.5), 28: ("shift", -3.0)}
    assert all(std[j] > 5 for j in moved)  # features with real variance
    x = x_ho.copy()
    for j, (kind, amount) in moved.items():
        x[:, j] = x[:, j] + amount if kind == "shift" else x[:, j] * amount
    mon = DriftMonitor(profile, window=1000, threshold=0.2)
    mon.observe(x)
    report = mon.compute()
    assert report.drift
    assert set(report.drifted) == {f"pixel_{j}" for j in moved}
    by_name = {f.name: f for f in report.features}
    for j in moved:
        assert by_name[f"pixel_{j}"].ks > 0.2  # KS sees the move too
    unmoved = [f for f in report.features if f.name not in report.drifted]
    assert max(f.psi for f in unmoved) < 0.1
    assert report.psi_max == max(f.psi for f in report.features)


def test_ks_threshold_flags_independently(split, profile) -> None:
    x = split[1].copy()
    x[:, 42] += 1.0  # a small shift: KS sees it before PSI at 0.2 does
    mon = DriftMonitor(profile, threshold=10.0, ks_threshold=0.1)
    mon.observe(x)
    assert mon.compute().drifted == ["pixel_42"]


def test_constant_features_no_nan_no_false_alarm_but_real_change_flagged(split, profile) -> None:
    x_tr, x_ho = split
    constant = [j for j in range(64) if x_tr[:, j].min() == x_tr[:, j].max()]
    assert constant, "digits has always-zero border pixels"
    mon = DriftMonitor(profile)
    mon.observe(x_ho)
    report = mon.compute()
    by_name = {f.name: f for f in report.features}
    for j in constant:
        f = by_name[f"pixel_{j}"]
        assert math.isfinite(f.psi) and not f.drift
        if (x_ho[:, j] == x_tr[0, j]).all():
            assert f.psi == 0.0 and f.ks == 0.0
    x = x_ho.copy()
    x[: len(x) // 2, constant[0]] = 5.0  # a dead pixel coming alive is real drift
    mon.reset()
    mon.observe(x)
    assert mon.compute().drifted == [f"pixel_{constant[0]}"]


def test_inconclusive_below_min_rows(split, profile) -> None:
    mon = DriftMonitor(profile, window=1000, min_rows=200)
    mon.observe(split[1][:199] + 10)  # drifted, but too few rows to say
    report = mon.compute()
    assert report.inconclusive and not report.drift and report.features == ()
    assert math.isnan(report.psi_max)
    assert report.to_dict()["psi_max"] is None
    json.dumps(report.to_dict(), allow_nan=False)
    mon.observe(split[1][199:200] + 10)
    assert mon.compute().drift


def test_ring_buffer_keeps_exactly_the_newest_rows(profile) -> None:
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 17, size=(1234, 64)).astype(np.float32)
    mon = DriftMonitor(profile, window=100, min_rows=10)
    sizes = rng.integers(1, 40, size=200)
    start = 0
    for size in sizes:  # chunked, wrapping around the ring many times
        if start >= len(rows):
            break
        mon.observe(rows[start : start + size])
        start += size
    seen = rows[: min(start, len(rows))]
    window = mon.snapshot()
    assert mon.rows == 100 and mon.observed_total == len(seen)
    key = lambda a: sorted(map(tuple, a.tolist()))  # noqa: E731
    assert key(window) == key(seen[-100:])
    mon.observe(rows[:250])  # more rows than the window in one call
    assert key(mon.snapshot()) == key(rows[150:250])
    with pytest.raises(ProfileError, match="63 features"):
        mon.observe(rows[:3, :63])


def test_ks_statistic_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        a = np.sort(rng.integers(0, 8, size=rng.integers(5, 300)).astype(np.float64))
        b = np.sort(rng.integers(1, 9, size=rng.integers(5, 300)).astype(np.float64))
        assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


def test_psi_hand_computed_and_smoothed() -> None:
    expected = np.array([0.5, 0.5])
    actual = np.array([0.25, 0.75])
    want = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert psi(actual, expected) == pytest.approx(want)
    assert psi(expected, expected) == 0.0
    assert math.isfinite(psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))  # empty bins smoothed


def test_observe_from_one_thread_while_compute_runs_in_another(split, profile) -> None:
    mon = DriftMonitor(profile, window=300, min_rows=50)
    chunks = np.split(split[1], 150)  # 3 held-out rows per "request"
    errors: list[BaseException] = []
    done = threading.Event()

    def scorer() -> None:
        try:
            while not done.is_set():
                report = mon.compute()
                assert report.rows <= 300
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    t = threading.Thread(target=scorer)
    t.start()
    try:
        for i in range(2000):
            mon.observe(chunks[i % len(chunks)])
    finally:
        done.set()
        t.join(timeout=10)
    assert not errors and not t.is_alive()
    assert mon.observed_total == 6000
    # the window is exactly the newest 300 rows: no torn or lost writes under concurrency
    fed = np.concatenate([chunks[i % len(chunks)] for i in range(2000)])
    key = lambda a: sorted(map(tuple, a.tolist()))  # noqa: E731
    assert key(mon.snapshot()) == key(fed[-300:])
    assert not mon.compute().drift


def test_load_profile_rejects_malformed(tmp_path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="invalid JSON"):
        load_profile(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ProfileError, match="format"):
        load_profile(bad)
    good = build_reference_profile(np.arange(20, dtype=np.float32).reshape(10, 2))
    good["features"][1]["proportions"].append(0.0)
    bad.write_text(json.dumps(good))
    with pytest.raises(ProfileError, match="f1"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="NaN"):
        build_reference_profile(np.array([[1.0], [np.nan]]))
    with pytest.raises(ProfileError, match="names"):
        build_reference_profile(np.zeros((4, 2)), ["a"])


def test_run_periodically_hands_results_to_the_loop_and_survives_errors(split, profile) -> None:
    mon = DriftMonitor(profile, min_rows=10)
    mon.observe(split[1])
    calls = iter([None, RuntimeError("boom"), None])
    seen: list = []

    def job():
        err = next(calls)
        if err:
            raise err
        return mon.compute()

    async def main() -> PeriodicStats:
        return await asyncio.wait_for(run_periodically(0.005, job, seen.append, max_runs=3), timeout=10)

    stats = asyncio.run(main())
    assert stats.runs == 3 and stats.errors == 1 and "boom" in stats.last_error
    assert len(seen) == 2 and all(not r.drift and r.rows == 450 for r in seen)

    async def stopped() -> PeriodicStats:
        stop = asyncio.Event()
        task = asyncio.create_task(run_periodically(3600, mon.compute, stop=stop))
        await asyncio.sleep(0)
        stop.set()  # returns at once, not after an hour
        return await asyncio.wait_for(task, timeout=5)

    assert asyncio.run(stopped()).runs == 0
