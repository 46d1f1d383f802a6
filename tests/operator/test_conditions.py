"""Conditions tools can wait on, after the Kubernetes API conventions: Ready = serving at full
capacity (also during a canary), Available = something serves, Progressing = the rollout
(Unknown while paused, False once complete or stopped), Degraded = a problem only. Pure plan
tables on the World of test_rollout."""
from __future__ import annotations

from datetime import timedelta

from test_rollout import World, deployed, spec, start_canary


def conditions(w: World) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in w.status["conditions"]}


def test_a_canary_with_every_pod_ready_is_ready_and_progressing() -> None:
    w = deployed(steps=[{"setWeight": 25}, {"pause": {"duration": "1m"}}, {"pause": {}}])
    start_canary(w)
    assert w.canary["weight"] == 25 and w.status["phase"] == "Progressing"
    c = conditions(w)
    assert c["Ready"] == ("True", "AllReplicasReady")  # `kubectl wait --for=condition=Ready` returns
    assert c["Available"][0] == "True"
    assert c["Progressing"] == ("True", "RolloutInProgress")
    assert c["Degraded"] == ("False", "AsExpected")


def test_canary_pods_starting_keep_the_stable_serving_at_full_capacity() -> None:
    w = deployed(steps=[{"setWeight": 50}, {"pause": {}}])
    new = dict(w.spec, model={"uri": "pvc://models/fraud/2.0.0/model.pt", "version": "2.0.0"})
    w.broken.add(w.hash(new))  # the canary's pods are loading their model
    w.set_spec(new)
    w.settle()
    assert w.replicas() == {"stable": 4, "canary": 2}
    assert conditions(w)["Ready"][0] == "True" and conditions(w)["Progressing"][0] == "True"


def test_a_paused_rollout_is_progressing_unknown_and_still_ready() -> None:
    w = deployed(steps=[{"setWeight": 50}, {"pause": {}}])
    start_canary(w)
    for _ in range(3):
        if w.status["phase"] == "Paused":
            break
        w.measure("pass")
    assert w.status["phase"] == "Paused"
    c = conditions(w)
    assert c["Progressing"] == ("Unknown", "RolloutPaused") and c["Ready"][0] == "True"
    assert c["Degraded"][0] == "False"


def test_an_aborted_canary_is_degraded_not_progressing_and_ready_once_the_stable_serves() -> None:
    w = deployed(steps=[{"setWeight": 50}, {"pause": {}}])
    start_canary(w)
    w.measure("fail")
    w.measure("fail")
    assert w.canary["aborted"] and w.status["phase"] == "Degraded"
    c = conditions(w)
    assert c["Degraded"] == ("True", "CanaryAborted") and c["Progressing"] == ("False", "CanaryAborted")
    assert c["Ready"][0] == "True"  # the stable carries every request at full capacity


def test_scaling_up_is_not_ready_until_the_new_pods_serve_and_complete_is_not_progressing() -> None:
    w = World(spec(steps=[]))
    w.settle()
    assert conditions(w)["Progressing"] == ("False", "RolloutComplete") and conditions(w)["Ready"][0] == "True"
    w.spec["replicas"], w.generation = 6, w.generation + 1
    w.now += timedelta(seconds=5)
    w.reconcile()  # observes the 4 pods that serve while the Deployment scales up
    c = conditions(w)
    assert c["Ready"][0] == "False" and c["Progressing"][0] == "True" and c["Degraded"][0] == "False"
    message = next(x["message"] for x in w.status["conditions"] if x["type"] == "Ready")
    assert message.startswith("4 of 6 wanted replica(s) available")
    reasons = w.settle()
    assert conditions(w)["Ready"] == ("True", "AllReplicasReady") and "Ready" in reasons
