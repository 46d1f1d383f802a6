"""Gateway mode through reconcile against the in-memory API double: a wrong "HTTPRoute not
served" answer from discovery -- mid-rollout or between rollouts -- prunes nothing and flips
nothing; the `<name>` Service selects the stable alone."""
from __future__ import annotations

from test_reconcile import NS, Cluster, _gateway_cluster, cluster  # noqa: F401 (fixture)


def _services(c: Cluster) -> dict[str, dict]:
    return {s["metadata"]["name"]: s for s in c.children("Service", "v1")}


def _answer_not_served(c: Cluster) -> None:
    real = c.kube.served

    async def served(group: str, version: str, plural: str) -> bool:
        return False if plural == "httproutes" else await real(group, version, plural)

    c.kube.served = served  # type: ignore[method-assign]


def _settle(c: Cluster) -> None:
    for _ in range(6):
        for dep in c.deployments():
            c.available(dep["metadata"]["name"])
        if not c.reconcile("fraud").wrote:
            return
    raise AssertionError("reconcile did not settle")


def test_a_wrong_not_served_answer_mid_rollout_prunes_nothing(cluster: Cluster) -> None:  # noqa: F811
    _gateway_cluster(cluster)
    _settle(cluster)
    cluster.patch_spec("fraud", {"model": {"uri": "s3://ml-models/fraud/1.6.0/model.pt2", "version": "1.6.0"}})
    _settle(cluster)
    status = cluster.md("fraud")["status"]
    assert status["canary"]["version"] == "1.6.0" and status["trafficMode"] == "gateway"
    services = _services(cluster)
    assert {"fraud-stable", "fraud-canary"} <= set(services)
    # `<name>` (status.url) selects the stable revision alone: it cannot bypass the route's weights
    assert services["fraud"]["spec"]["selector"]["modelship.dev/revision"] == status["stable"]["hash"]

    _answer_not_served(cluster)
    result = cluster.reconcile("fraud")
    assert result.pruned == []
    assert {"fraud-stable", "fraud-canary"} <= set(_services(cluster))
    assert [r["metadata"]["name"] for r in cluster.children("HTTPRoute", "gateway.networking.k8s.io/v1")] == ["fraud"]
    status = cluster.md("fraud")["status"]
    assert status["trafficMode"] == "gateway" and status["canary"]["version"] == "1.6.0"


def test_a_wrong_not_served_answer_between_rollouts_prunes_nothing(cluster: Cluster) -> None:  # noqa: F811
    _gateway_cluster(cluster)
    _settle(cluster)
    assert cluster.md("fraud")["status"]["trafficMode"] == "gateway"
    _answer_not_served(cluster)
    result = cluster.reconcile("fraud")
    assert result.pruned == [] and "fraud-stable" in _services(cluster)
    assert cluster.md("fraud")["status"]["trafficMode"] == "gateway"
