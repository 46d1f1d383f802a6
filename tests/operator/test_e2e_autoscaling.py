"""The real operator (`python -m modelship_operator`, kopf, watch caches) against the HTTP API
server double with KEDA's ScaledObject CRD installed (the schema pinned in test_autoscaling):
a serving-signal ModelDeployment gets a ScaledObject and no HPA, the total KEDA writes through
/scale reaches the Deployment, back to cpu the ScaledObject goes and the HPA comes, and a
settled object is not written to."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from apiserver_double import ApiServerDouble
from modelship_operator.kube import Kube
from test_autoscaling import keda_crd, keda_errors
from test_e2e import MD, Env, free_port, install_crd, manifest

NAME = "digits"
SO = ("keda.sh/v1alpha1", "ScaledObject")
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
PROMETHEUS = "http://prometheus.monitoring:9090"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("e2e-autoscaling")
    double = ApiServerDouble()
    double.start()
    e = Env(kubeconfig=double.write_kubeconfig(tmp / "kubeconfig"), namespace="ml", double=double,
            log_path=tmp / "operator.log", liveness=f"http://127.0.0.1:{free_port()}/healthz")

    async def setup(kube: Kube) -> None:
        await install_crd(kube)
        await kube.create(keda_crd())
        await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": e.namespace}})
    e.call(setup)
    e.environ = dict(os.environ, MODELSHIP_NAMESPACES=e.namespace, MODELSHIP_LOG_FORMAT="json",
                     MODELSHIP_RESYNC_SECONDS="2", MODELSHIP_SERVER_IMAGE="ghcr.io/modelship/server:e2e",
                     MODELSHIP_PROMETHEUS_URL=PROMETHEUS)
    e.start_operator()
    try:
        yield e
    finally:
        assert e.process is not None
        e.process.terminate()
        e.process.wait(15)
        double.stop()


def test_a_serving_signal_gets_a_scaledobject_whose_total_the_operator_applies(env: Env) -> None:
    env.wait_live()
    body = manifest(env.namespace)
    body["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 6, "metric": "inflight", "target": 4}
    uid = env.call(lambda k: k.create(body))["metadata"]["uid"]

    so = env.eventually(lambda k: k.get(*SO, env.namespace, NAME), "a ScaledObject")
    assert keda_errors(so) == []
    assert [(r["kind"], r["uid"]) for r in so["metadata"]["ownerReferences"]] == [("ModelDeployment", uid)]
    trigger = so["spec"]["triggers"][0]
    assert trigger["metadata"]["serverAddress"] == PROMETHEUS and trigger["metricType"] == "AverageValue"
    assert env.call(lambda k: k.get(*HPA, env.namespace, NAME)) is None

    # KEDA's HPA writes the total through the ModelDeployment's /scale.
    async def scale(k: Kube) -> dict:
        return await k._request("PATCH", f"/apis/modelship.dev/v1alpha1/namespaces/{env.namespace}/modeldeployments/"
                                f"{NAME}/scale", body={"spec": {"replicas": 5}},
                                content_type="application/merge-patch+json", what="scale")
    env.call(scale)

    async def five(k: Kube) -> list[dict] | None:
        deps = await k.list("apps/v1", "Deployment", env.namespace, {"app.kubernetes.io/instance": NAME})
        return deps if deps and deps[0]["spec"]["replicas"] == 5 else None
    (dep,) = env.eventually(five, "the Deployment at the total KEDA wrote")
    env.double.mark_deployment_available(env.namespace, dep["metadata"]["name"])

    # Settled: over several resyncs nothing of ours is written again.
    def versions() -> tuple:
        return tuple(env.call(lambda k, kind=kind: k.get(*kind, env.namespace, NAME))["metadata"]["resourceVersion"]
                     for kind in (SO, MD))
    env.eventually(lambda k: _healthy(k, env), "phase Healthy")
    before = versions()
    time.sleep(5)  # > two resyncs
    assert versions() == before, env.log_tail()


async def _healthy(k: Kube, env: Env) -> dict | None:
    md = await k.get(*MD, env.namespace, NAME)
    return md if (md or {}).get("status", {}).get("phase") == "Healthy" else None


def test_back_to_cpu_the_scaledobject_goes_and_the_hpa_comes(env: Env) -> None:
    env.call(lambda k: k.patch(*MD, env.namespace, NAME, {"spec": {"autoscaling": {"metric": "cpu", "target": None}}}))

    async def swapped(k: Kube) -> dict | None:
        hpa = await k.get(*HPA, env.namespace, NAME)
        return hpa if hpa and await k.get(*SO, env.namespace, NAME) is None else None
    hpa = env.eventually(swapped, "the HPA instead of the ScaledObject")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "ModelDeployment"
    lines = env.log_lines()
    assert lines and all(line["level"] != "raw" for line in lines), env.log_tail()
    bad = [line for line in lines if line["level"] in ("error", "critical") or "exception" in line]
    assert bad == [], bad
    assert any(line["message"].startswith("reconciled") and "ScaledObject/digits" in str(line.get("pruned"))
               for line in lines), env.log_tail()

