"""The test harness's Service proxy (cluster_services.py): its table offline, and on a real
cluster (`pytest --cluster`, root, the podlet's netns) a Service's ClusterIP answering from inside
the pod network namespace through the endpoints the EndpointSlice controller wrote."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster_proxy import is_ready
from cluster_services import NetnsLoad, ServiceProxy, in_netns, service_table, unavailable
from modelship_operator.kube import Connection, Kube, kubeconfig_path
from test_e2e import Env


def _svc(name: str, ip: str | None, ports: list[dict], **spec: object) -> dict:
    return {"metadata": {"name": name, "namespace": "ml"}, "spec": {"clusterIP": ip, "ports": ports, **spec}}


def _slice(service: str, ports: list[dict], endpoints: list[tuple[str, bool | None]], family: str = "IPv4") -> dict:
    return {"metadata": {"labels": {"kubernetes.io/service-name": service}}, "addressType": family, "ports": ports,
            "endpoints": [{"addresses": [a], "conditions": {} if r is None else {"ready": r}} for a, r in endpoints]}


def test_service_table_maps_cluster_ips_to_ready_endpoints_by_port_name() -> None:
    services = [
        _svc("web", "127.32.0.20", [{"name": "http", "port": 80, "targetPort": "http"},
                                    {"name": "admin", "port": 9090, "targetPort": 9090},
                                    {"name": "dns", "port": 53, "protocol": "UDP"}]),
        _svc("peers", "None", [{"name": "admin", "port": 9090}]),  # headless: kube-proxy leaves it alone
        _svc("ext", None, [{"port": 80}], type="ExternalName"),
        _svc("empty", "127.32.0.21", [{"port": 8080}]),
    ]
    slices = [
        _slice("web", [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
               [("198.18.10.5", True), ("198.18.10.6", None), ("198.18.10.7", False)]),
        _slice("web", [{"name": "http", "port": 8080}], [("198.18.10.8", True)]),  # a second slice
        _slice("web", [{"name": "http", "port": 8080}], [("fd00::1", True)], family="IPv6"),
        _slice("other", [{"name": "http", "port": 1}], [("198.18.10.9", True)]),
    ]
    assert service_table(services, slices) == [
        {"ip": "127.32.0.20", "port": 80, "name": "ml/web:http",
         "backends": [("198.18.10.5", 8080), ("198.18.10.6", 8080), ("198.18.10.8", 8080)]},
        {"ip": "127.32.0.20", "port": 9090, "name": "ml/web:admin",
         "backends": [("198.18.10.5", 9090), ("198.18.10.6", 9090)]},
        {"ip": "127.32.0.21", "port": 8080, "name": "ml/empty:", "backends": []},
    ]
    # the same cluster in another order is the same table: no needless update of the forwarder
    assert service_table(reversed(services), reversed(slices)) == service_table(services, slices)


# --------------------------------------------------------------------------- on a real cluster

# A pod that answers every GET with its own name (HOSTNAME), on its pod IP.
WHOAMI = ("import http.server, os\n"
          "class H(http.server.BaseHTTPRequestHandler):\n"
          "    protocol_version = 'HTTP/1.1'  # keep-alive\n"
          "    def do_GET(self):\n"
          "        body = os.environ['HOSTNAME'].encode()\n"
          "        self.send_response(200); self.send_header('Content-Length', str(len(body)))\n"
          "        self.end_headers(); self.wfile.write(body)\n"
          "    def log_message(self, *a): pass\n"
          "http.server.ThreadingHTTPServer((os.environ['POD_IP'], 8081), H).serve_forever()\n")
# Run inside the netns: one kept-alive GET, print the answer, wait for the server to close.
HOLD = ("import http.client, sys\n"
        "c = http.client.HTTPConnection(sys.argv[1], 80, timeout=30)\n"
        "c.request('GET', '/'); print(c.getresponse().read().decode(), flush=True)\n"
        "c.sock.settimeout(30); sys.exit(0 if c.sock.recv(1) == b'' else 1)\n")
# Run inside the netns: GET the URL n times on fresh connections, print the answers as JSON.
CLIENT = ("import json, sys, urllib.request\n"
          "out = []\n"
          "for _ in range(int(sys.argv[2])):\n"
          "    try:\n"
          "        out.append(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n"
          "    except Exception as e:\n"
          "        out.append('error: ' + type(e).__name__)\n"
          "print(json.dumps(out))\n")


@pytest.fixture(scope="module")
def whoami(request: pytest.FixtureRequest) -> Iterator[tuple[Env, dict]]:
    if not request.config.getoption("--cluster"):
        pytest.skip("needs --cluster: a real cluster whose pods run in the podlet's netns")
    kubeconfig = kubeconfig_path(os.environ)
    if not kubeconfig.exists():
        pytest.skip(f"--cluster given but there is no kubeconfig at {kubeconfig} (set KUBECONFIG)")
    if reason := unavailable():
        pytest.skip(reason)
    env = Env(kubeconfig=kubeconfig, namespace=f"modelship-svc-{uuid.uuid4().hex[:6]}", double=None,
              log_path=kubeconfig.parent / "unused.log", liveness="")
    labels = {"app": "whoami"}
    container = {"name": "whoami", "image": "python:3", "command": ["python", "-c", WHOAMI],
                 "ports": [{"name": "http", "containerPort": 8081}],
                 "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                 "readinessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1}}

    async def setup(k: Kube) -> dict:
        await k.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": env.namespace}})
        await k.create({"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "whoami", "namespace": env.namespace},
                        "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                                 "template": {"metadata": {"labels": labels},
                                              "spec": {"terminationGracePeriodSeconds": 1,
                                                       "containers": [container]}}}})
        return await k.create({"apiVersion": "v1", "kind": "Service",
                               "metadata": {"name": "whoami", "namespace": env.namespace},
                               "spec": {"selector": labels,
                                        "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}})

    try:
        service = env.call(setup)
        yield env, service
    finally:
        env.call(lambda k: k.delete("v1", "Namespace", None, env.namespace))


async def _ready_pods(k: Kube, env: Env) -> list[str]:
    pods = await k.list("v1", "Pod", env.namespace, {"app": "whoami"})
    return sorted(p["metadata"]["name"] for p in pods if is_ready(p))


def _get(url: str, n: int) -> list[str]:
    done = in_netns(["python3", "-c", CLIENT, url, str(n)])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.cluster
def test_a_cluster_ip_answers_inside_the_pod_netns_round_robin_over_ready_endpoints(
        whoami: tuple[Env, dict], tmp_path: Path) -> None:
    env, service = whoami
    ip, url = service["spec"]["clusterIP"], f"http://{service['spec']['clusterIP']}:80/"

    async def two_ready(k: Kube) -> list[str] | None:
        names = await _ready_pods(k, env)
        return names if len(names) == 2 else None

    pods = env.eventually(two_ready, "both whoami pods Ready", timeout=120)
    assert _get(url, 1) == ["error: URLError"]  # without the proxy nothing answers the ClusterIP

    with ServiceProxy(env.kubeconfig, env.namespace) as proxy:
        proxy.wait_for(ip, 80, backends=2)
        answers = _get(url, 8)
        # round-robin over both endpoints, each connection to the next one
        assert sorted(answers) == sorted(pods * 4), answers
        counted = proxy.connections(at_least=8)
        assert sum(counted.values()) == 8 and len(counted) == 2, counted  # one per request, both endpoints

        # the endpoints controller drops a deleted pod from the slice; the proxy follows
        gone = pods[0]
        env.call(lambda k: k.delete("v1", "Pod", env.namespace, gone))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            answers = _get(url, 4)
            if gone not in answers and all(not a.startswith("error") for a in answers):
                break
            time.sleep(1)
        assert gone not in answers and all(not a.startswith("error") for a in answers), answers
        assert f"{ip}/32" in in_netns(["ip", "-o", "addr", "show", "dev", "lo"]).stdout

        # NetnsLoad: a client's load through the ClusterIP (this server answers POST with 501)
        load = NetnsLoad(url, [[0.0]], rps=20, workdir=tmp_path).start()
        time.sleep(2)
        counts = load.stop()
        assert counts["sent"] >= 10 and counts["codes"] == {"501": counts["sent"]}, counts

        # a kept-alive connection still open when the proxy stops is closed cleanly
        held = subprocess.Popen(["ip", "netns", "exec", "podnet", "python3", "-c", HOLD, ip], stdout=subprocess.PIPE,
                                text=True)
        assert held.stdout is not None and held.stdout.readline().startswith("whoami-")
    try:
        assert held.wait(10) == 0  # its connection was closed by the proxy stopping
    finally:
        held.kill()
    assert proxy.stderr() == ""

    # stopped: the address is gone from the netns loopback and nothing answers again
    assert f"{ip}/32" not in in_netns(["ip", "-o", "addr", "show", "dev", "lo"]).stdout
    assert _get(url, 1) == ["error: URLError"]
    assert proxy.errors == [] or all("Timeout" in e for e in proxy.errors), proxy.errors
