"""Events as series: a repeated event is one Event object whose count and lastTimestamp move
(as client-go's recorder does), not a new object per occurrence -- through the real `Kube`
client over HTTP against the API server double."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from apiserver_double import ApiServerDouble
from modelship_operator import recorder
from modelship_operator.kube import Connection, Kube
from modelship_operator.planning.events import SERIES_WINDOW_S, Event, series_name, series_update

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
MD = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
      "metadata": {"name": "fraud", "namespace": "ml", "uid": "uid-1"}}


def test_series_names_group_what_is_the_same_event() -> None:
    a = Event("Normal", "RolloutStep", "step 2 of 5 (setWeight 20)")
    assert series_name("fraud", "uid-1", a) == series_name("fraud", "uid-1", Event(*a.__dict__.values()))
    assert series_name("fraud", "uid-1", a) != series_name("fraud", "uid-1", Event("Normal", "RolloutStep", "step 3"))
    assert series_name("fraud", "uid-1", a) != series_name("fraud", "uid-2", a)  # another object of that name
    # per-window verdicts carry new numbers every window: one series per reason
    one = Event("Normal", "AnalysisInconclusive", "only 3 requests in the window, 50 needed")
    two = Event("Normal", "AnalysisInconclusive", "only 7 requests in the window, 50 needed")
    assert series_name("fraud", "uid-1", one) == series_name("fraud", "uid-1", two)
    assert series_name("fraud", "uid-1", one).startswith("fraud.") and len(series_name("fraud", "u", one)) == 22


def test_series_update_continues_or_starts_again_after_a_quiet_window() -> None:
    live = {"count": 4, "firstTimestamp": "2026-03-01T11:00:00Z", "lastTimestamp": "2026-03-01T11:59:30Z"}
    e = Event("Normal", "AnalysisInconclusive", "only 2 requests")
    assert series_update(live, e, T0) == {"count": 5, "lastTimestamp": "2026-03-01T12:00:00Z",
                                          "message": "only 2 requests"}
    later = T0 + timedelta(seconds=SERIES_WINDOW_S + 60)
    assert series_update({**live, "lastTimestamp": "2026-03-01T12:00:00Z"}, e, later) == {
        "count": 1, "firstTimestamp": "2026-03-01T12:11:00Z", "lastTimestamp": "2026-03-01T12:11:00Z",
        "message": "only 2 requests"}


@pytest.fixture(autouse=True)
def namespace(apiserver: ApiServerDouble, double_kubeconfig: Path) -> None:
    k = Kube(Connection.from_kubeconfig(double_kubeconfig))
    asyncio.run(k.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ml"}}))


def _events(k: Kube) -> list[dict]:
    return asyncio.run(k.list("v1", "Event", "ml"))


def test_an_hour_of_inconclusive_windows_is_one_event_object(apiserver: ApiServerDouble,
                                                                double_kubeconfig: Path) -> None:
    async def hour(k: Kube) -> None:
        for i in range(118):  # 30 s analysis windows, each inconclusive with its own numbers
            await recorder.record(k, MD, Event("Normal", "AnalysisInconclusive",
                                               f"only {i % 7} requests in the window, 50 needed"),
                                  T0 + timedelta(seconds=30 * i))
        await recorder.record(k, MD, Event("Normal", "AnalysisPassed", "error rate 0.00% within 1.00%"),
                              T0 + timedelta(hours=1))
        for _ in range(3):  # the same transition event three times: one object, count 3
            await recorder.record(k, MD, Event("Warning", "CanaryAborted", "analysis failed"), T0 + timedelta(hours=1))

    k = Kube(Connection.from_kubeconfig(double_kubeconfig), field_manager="test-manager")
    asyncio.run(hour(k))
    events = {e["reason"]: e for e in _events(Kube(Connection.from_kubeconfig(double_kubeconfig)))}
    assert sorted(events) == ["AnalysisInconclusive", "AnalysisPassed", "CanaryAborted"]  # 3 objects, not 122
    inconclusive = events["AnalysisInconclusive"]
    assert inconclusive["count"] == 118 and inconclusive["message"] == "only 5 requests in the window, 50 needed"
    assert (inconclusive["firstTimestamp"], inconclusive["lastTimestamp"]) == ("2026-03-01T12:00:00Z",
                                                                              "2026-03-01T12:58:30Z")
    assert inconclusive["involvedObject"]["uid"] == "uid-1" and inconclusive["type"] == "Normal"
    assert events["CanaryAborted"]["count"] == 3 and events["AnalysisPassed"]["count"] == 1


def test_a_series_that_went_quiet_starts_again(apiserver: ApiServerDouble, double_kubeconfig: Path) -> None:
    async def go(k: Kube) -> dict:
        e = Event("Normal", "AnalysisInconclusive", "only 1 requests")
        await recorder.record(k, MD, e, T0)
        await recorder.record(k, MD, e, T0 + timedelta(seconds=30))
        return await recorder.record(k, MD, e, T0 + timedelta(hours=2))

    written = asyncio.run(go(Kube(Connection.from_kubeconfig(double_kubeconfig))))
    assert written["count"] == 1 and written["firstTimestamp"] == "2026-03-01T14:00:00Z"
    assert len(_events(Kube(Connection.from_kubeconfig(double_kubeconfig)))) == 1


def test_an_event_created_meanwhile_is_continued_not_lost(apiserver: ApiServerDouble,
                                                           double_kubeconfig: Path) -> None:
    """Another writer created the series' object between our read and our create (409)."""
    class Racing(Kube):
        async def get(self, api_version, kind, namespace, name):  # type: ignore[no-untyped-def, override]
            found = await super().get(api_version, kind, namespace, name)
            if found is None and not getattr(self, "raced", False):
                self.raced = True
                await Kube.create_event(self, MD, "Normal", "AnalysisInconclusive", "first", name=name,
                                        at="2026-03-01T12:00:00Z")
                return None
            return found

    k = Racing(Connection.from_kubeconfig(double_kubeconfig))
    written = asyncio.run(recorder.record(k, MD, Event("Normal", "AnalysisInconclusive", "second"),
                                          T0 + timedelta(seconds=30)))
    assert written["count"] == 2 and written["message"] == "second"


def test_a_first_transition_event_costs_one_request_and_a_repeat_still_continues_it(
        apiserver: ApiServerDouble, double_kubeconfig: Path) -> None:
    """At scale every new ModelDeployment posts RevisionCreated: one POST, no read before it."""
    async def go(k: Kube) -> tuple[dict, dict, dict]:
        ready = Event("Normal", "Ready", "1/1 replicas ready")
        await recorder.record(k, MD, ready, T0)
        first = dict(k.requests)
        await recorder.record(k, MD, ready, T0 + timedelta(seconds=30))  # flapped back: the same series
        return first, dict(k.requests), (await k.get("v1", "Event", "ml", series_name("fraud", "uid-1", ready)))

    first, total, stored = asyncio.run(go(Kube(Connection.from_kubeconfig(double_kubeconfig))))
    assert {v: n for v, n in first.items() if n} == {"POST": 1}
    assert stored["count"] == 2 and stored["lastTimestamp"] == "2026-03-01T12:00:30Z"
    assert len(_events(Kube(Connection.from_kubeconfig(double_kubeconfig)))) == 1
    assert total["GET"] == 1 and total["PATCH"] == 1  # the repeat: POST refused (exists), read, bump
