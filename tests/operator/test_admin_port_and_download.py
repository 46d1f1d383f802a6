"""What the operator renders for the server's private admin surface and for downloads with
integrity (issue 11 items 5 and 6): the pods get both ports and the settings the server and its
downloader read; clients reach only the inference port; Prometheus, the operator's analysis and
feedback peers use the admin port; the download volume is sized from the expected size."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from modelship_operator.canary_metrics import metrics_url
from modelship_operator.planning import Observed, plan
from modelship_operator.planning.children import METRICS_PORT_NAME, SERVER_PORT
from modelship_operator.planning.pods import DEFAULT_MODEL_MAX_BYTES, size_bytes, volume_size_limit
from modelship_operator.render import render
from modelship_operator.settings import Settings
from modelship_operator.spec import ModelDeployment

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
SHA = "ab" * 32


def manifests(spec: dict[str, Any], *, gateway: bool = False, servicemonitor: bool = True) -> dict[tuple[str, str], dict]:
    body = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "fraud", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": {"model": {"uri": "https://models.example.com/fraud/model.pt", "version": "1"}, "replicas": 2,
                     **spec}}
    if gateway:
        body["spec"]["rollout"] = {"traffic": "gateway", "gateway": {"parentRefs": [{"name": "edge"}]}}
    p = plan(ModelDeployment.from_body(body), Observed(httproute_served=gateway, servicemonitor_served=servicemonitor),
             Settings(), T0)
    return {(m["kind"], m["metadata"]["name"]): m for m in render(p)}


def deployment(ms: dict) -> dict:
    (dep,) = [m for (kind, _), m in ms.items() if kind == "Deployment"]
    return dep


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", ())}


@pytest.mark.parametrize("admin_port", [None, 9100])
def test_the_admin_port_is_a_second_container_port_and_the_server_knows_it(admin_port: int | None) -> None:
    ms = manifests({"server": {"adminPort": admin_port}} if admin_port else {})
    port = admin_port or 9090
    pod = deployment(ms)["spec"]["template"]
    server = pod["spec"]["containers"][0]
    assert [(p["name"], p["containerPort"]) for p in server["ports"]] == [("http", SERVER_PORT), ("admin", port)]
    env = env_of(server)
    assert env["MODELSHIP_PORT"] == str(SERVER_PORT) and env["MODELSHIP_ADMIN_PORT"] == str(port)
    # Scrapers that follow the annotations read the admin port; the operator's analysis too.
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert metrics_url({"status": {"phase": "Running", "podIP": "10.0.0.9"},
                        "spec": {"containers": [{"ports": server["ports"]}]}}) == f"http://10.0.0.9:{port}/metrics"
    # Feedback peers answer /feedback on their admin port.
    assert env["MODELSHIP_FEEDBACK_PEERS"] == f"fraud-peers.ml.svc.cluster.local:{port}"


@pytest.mark.parametrize("gateway", [False, True])
def test_clients_reach_only_the_inference_port(gateway: bool) -> None:
    ms = manifests({}, gateway=gateway)
    client_facing = [m for (kind, name), m in ms.items() if kind == "Service" and name != "fraud-peers"]
    assert client_facing and all(
        [(p["port"], p["targetPort"]) for p in s["spec"]["ports"]] == [(SERVER_PORT, "http")] for s in client_facing)
    if gateway:
        route = ms[("HTTPRoute", "fraud")]
        assert {b["port"] for rule in route["spec"]["rules"] for b in rule["backendRefs"]} == {SERVER_PORT}
    # The headless peers Service (no cluster IP, no route) names the admin port only.
    peers = ms[("Service", "fraud-peers")]
    assert peers["spec"]["clusterIP"] == "None"
    assert [(p["name"], p["port"], p["targetPort"]) for p in peers["spec"]["ports"]] == [("admin", 9090, "admin")]


@pytest.mark.parametrize("gateway", [False, True])
def test_prometheus_scrapes_every_pod_once_on_the_admin_port(gateway: bool) -> None:
    # Feedback off: the headless Service is still rendered, for the ServiceMonitor.
    ms = manifests({"monitoring": {"feedback": {"enabled": False}}}, gateway=gateway)
    sm = ms[("ServiceMonitor", "fraud")]
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == METRICS_PORT_NAME == "admin" and endpoint["path"] == "/metrics"
    selected = [m for (kind, _), m in ms.items() if kind == "Service" and all(
        m["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())]
    # Exactly one Service, over every revision's pods, naming the port the endpoint scrapes.
    (service,) = selected
    assert "modelship.dev/revision" not in service["spec"]["selector"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["admin"]
    # Without a ServiceMonitor and without feedback, no headless Service at all.
    none = manifests({"monitoring": {"feedback": {"enabled": False}}}, servicemonitor=False)
    assert ("Service", "fraud-peers") not in none


def test_download_integrity_reaches_the_init_container_and_the_server() -> None:
    ms = manifests({"model": {"uri": "http://models.example.com/fraud/model.pt", "version": "1", "sha256": SHA.upper(),
                              "maxBytes": "2Gi", "allowInsecureHttp": True},
                    "server": {"env": [{"name": "AWS_REGION", "value": "eu-west-1"}]}})
    spec = deployment(ms)["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    want = {"MODELSHIP_MODEL_SHA256": SHA, "MODELSHIP_MODEL_MAX_BYTES": str(2 << 30),
            "MODELSHIP_ALLOW_INSECURE_HTTP": "true"}
    assert env_of(init) == {**want, "AWS_REGION": "eu-west-1"}  # its settings first, then the user's
    assert {k: env_of(spec["containers"][0])[k] for k in want} == want
    (volume,) = [v for v in spec["volumes"] if v["name"] == "model"]
    assert volume["emptyDir"] == {"sizeLimit": volume_size_limit(2 << 30)}
    assert size_bytes(volume["emptyDir"]["sizeLimit"]) >= (2 << 30) * 1.1


def test_download_defaults_are_bounded() -> None:
    spec = deployment(manifests({}))["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert env_of(init) == {"MODELSHIP_MODEL_MAX_BYTES": str(DEFAULT_MODEL_MAX_BYTES)}  # https, no checksum
    (volume,) = [v for v in spec["volumes"] if v["name"] == "model"]
    assert size_bytes(volume["emptyDir"]["sizeLimit"]) > DEFAULT_MODEL_MAX_BYTES
    # A model in a PVC is not downloaded: no limit to set, but a checksum is still checked by the server.
    pvc = deployment(manifests({"model": {"uri": "pvc://models/fraud/model.pt", "version": "1", "sha256": SHA}}))
    server = pvc["spec"]["template"]["spec"]["containers"][0]
    assert "initContainers" not in pvc["spec"]["template"]["spec"]
    assert env_of(server)["MODELSHIP_MODEL_SHA256"] == SHA and "MODELSHIP_MODEL_MAX_BYTES" not in env_of(server)


@pytest.mark.parametrize("text,expected", [("64Mi", 64 << 20), ("2G", 2 * 10**9), (1048576, 1 << 20),
                                           ("1.5Gi", 3 << 29), ("8Ki", 8192), ("500k", 500000)])
def test_sizes_are_read_as_the_api_takes_them(text: Any, expected: int) -> None:
    assert size_bytes(text) == expected


def test_the_server_and_its_downloader_accept_what_the_operator_renders() -> None:
    server_settings = pytest.importorskip("modelship_server.settings")
    fetch = pytest.importorskip("modelship_server.fetch")
    ms = manifests({"model": {"uri": "http://models.example.com/fraud/model.pt", "version": "1", "sha256": SHA,
                              "maxBytes": 123456789, "allowInsecureHttp": True},
                    "server": {"adminPort": 9191},
                    "monitoring": {"feedback": {"maxBytes": "16Mi"}, "audit": {"maxBytes": "1Mi"}}})
    spec = deployment(ms)["spec"]["template"]["spec"]
    s = server_settings.Settings.from_env(env_of(spec["containers"][0]))
    assert (s.admin_port, s.port) == (9191, SERVER_PORT)
    assert (s.model_sha256, s.model_max_bytes, s.allow_insecure_http) == (SHA, 123456789, True)
    assert (s.feedback_max_bytes, s.audit_max_bytes) == (16 << 20, 1 << 20)
    assert s.feedback_peer_list == ["fraud-peers.ml.svc.cluster.local:9191"]
    (init,) = spec["initContainers"]
    args = fetch.argparse.Namespace(sha256=None, max_bytes=None, deadline_s=None, allow_insecure_http=False)
    options = fetch.options_from(args, env_of(init))
    assert (options.sha256, options.max_bytes, options.allow_insecure_http) == (SHA, 123456789, True)
    assert init["command"][-2:] == ["http://models.example.com/fraud/model.pt", "/mnt/models"]
