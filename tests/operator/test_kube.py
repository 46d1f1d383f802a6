"""kube.py over real HTTP against the API server double (and a few raw sockets for failures)."""
from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiserver_double import ApiServerDouble
from modelship_operator.kube import Connection, Kube, PermanentError, TemporaryError, kubeconfig_path

DEP = {"apiVersion": "apps/v1", "kind": "Deployment",
       "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "a"}},
       "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "c", "image": "img:1"}]}}}}


def run(kube: Kube, fn: Callable[[Kube], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        try:
            return await fn(kube)
        finally:
            await kube.close()
    return asyncio.run(go())


@pytest.fixture
def kube(double_kubeconfig: Path) -> Kube:
    return Kube(Connection.from_kubeconfig(double_kubeconfig), field_manager="test-manager")


def test_kubeconfig_gives_server_token_and_namespace(apiserver: ApiServerDouble, double_kubeconfig: Path) -> None:
    conn = Connection.from_kubeconfig(double_kubeconfig)
    assert conn.server == apiserver.url and conn.token == apiserver.token and conn.namespace == "ml"
    assert kubeconfig_path({"KUBECONFIG": f"/a/b{':'}/c/d"}) == Path("/a/b")
    assert kubeconfig_path({"HOME": "/home/x"}) == Path("/home/x/.kube/config")


def test_in_cluster_connection_reads_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "namespace").write_text("ops")
    (tmp_path / "ca.crt").write_text("")
    conn = Connection.in_cluster({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"},
                                 sa_dir=tmp_path)
    assert conn.server == "https://10.0.0.1:6443" and conn.namespace == "ops"
    assert conn.bearer_token() == "tok-1"
    (tmp_path / "token").write_text("tok-2")  # rotated by the kubelet
    assert conn.bearer_token() == "tok-2"


def test_apply_is_server_side_apply_under_our_field_manager(apiserver: ApiServerDouble, kube: Kube) -> None:
    async def go(k: Kube) -> tuple[dict, dict, dict]:
        first = await k.apply(DEP)
        again = await k.apply(DEP)
        changed = await k.apply({**DEP, "spec": {**DEP["spec"], "replicas": 3}})
        return first, again, changed

    first, again, changed = run(kube, go)
    assert first["metadata"]["generation"] == 1 and first["metadata"]["uid"]
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]  # no-op
    assert changed["metadata"]["generation"] == 2 and changed["spec"]["replicas"] == 3
    assert [f["manager"] for f in changed["metadata"]["managedFields"]] == ["test-manager"]
    writes = apiserver.writes
    assert {w.content_type for w in writes} == {"application/apply-patch+yaml"}
    assert all(w.path == "/apis/apps/v1/namespaces/default/deployments/web" for w in writes)
    assert {w.user_agent for w in writes} == {"test-manager"}


def test_apply_drops_fields_the_manager_no_longer_applies(kube: Kube) -> None:
    async def go(k: Kube) -> dict:
        await k.apply({**DEP, "metadata": {**DEP["metadata"], "annotations": {"a": "1", "b": "2"}}})
        await k.apply({**DEP, "metadata": {**DEP["metadata"], "annotations": {"a": "1"}}})
        return await k.get("apps/v1", "Deployment", "default", "web")

    assert run(kube, go)["metadata"]["annotations"] == {"a": "1"}


def test_get_list_by_label_and_delete(kube: Kube) -> None:
    async def go(k: Kube) -> dict:
        await k.apply(DEP)
        other = {**DEP, "metadata": {"name": "api", "namespace": "default", "labels": {"app": "api"}}}
        await k.apply(other)
        return {
            "missing": await k.get("apps/v1", "Deployment", "default", "nope"),
            "web": [d["metadata"]["name"] for d in await k.list("apps/v1", "Deployment", "default", {"app": "web"})],
            "both": [d["kind"] for d in await k.list("apps/v1", "Deployment", "default")],
            "string": len(await k.list("apps/v1", "Deployment", None, "app in (web,api),tier!=b")),
            "deleted": await k.delete("apps/v1", "Deployment", "default", "web"),
            "again": await k.delete("apps/v1", "Deployment", "default", "web"),
            "left": [d["metadata"]["name"] for d in await k.list("apps/v1", "Deployment", "default")],
        }

    out = run(kube, go)
    assert out["missing"] is None
    assert out["web"] == ["web"] and out["both"] == ["Deployment", "Deployment"] and out["string"] == 2
    assert out["deleted"] is True and out["again"] is False and out["left"] == ["api"]


def test_patch_status_touches_only_status(apiserver: ApiServerDouble, kube: Kube) -> None:
    async def go(k: Kube) -> tuple[dict, dict]:
        await k.apply(DEP)
        patched = await k.patch_status("apps/v1", "Deployment", "default", "web",
                                       {"readyReplicas": 2, "replicas": None})
        # A spec field smuggled into a status patch is ignored by the subresource.
        await k._request("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/status",
                         body={"spec": {"replicas": 9}, "status": {"replicas": 2}},
                         content_type="application/merge-patch+json", what="smuggle")
        return patched, await k.get("apps/v1", "Deployment", "default", "web")

    patched, live = run(kube, go)
    assert patched["status"] == {"readyReplicas": 2}
    assert live["spec"]["replicas"] == 2 and live["status"] == {"readyReplicas": 2, "replicas": 2}
    assert live["metadata"]["generation"] == 1
    assert apiserver.writes[-1].path.endswith("/web/status")


def test_patch_metadata_sets_and_removes_annotations(kube: Kube) -> None:
    async def go(k: Kube) -> tuple[dict, dict]:
        await k.apply(DEP)
        one = await k.patch_metadata("apps/v1", "Deployment", "default", "web",
                                     annotations={"modelship.dev/promote": "true"})
        two = await k.patch_metadata("apps/v1", "Deployment", "default", "web",
                                     annotations={"modelship.dev/promote": None})
        return one, two

    one, two = run(kube, go)
    assert one["metadata"]["annotations"] == {"modelship.dev/promote": "true"}
    assert "modelship.dev/promote" not in (two["metadata"].get("annotations") or {})
    assert one["metadata"]["generation"] == 1  # metadata changes are not a new generation


def test_patch_merges_or_applies_json_patch_conditionally(apiserver: ApiServerDouble, kube: Kube) -> None:
    async def go(k: Kube) -> tuple[dict, dict, list[str]]:
        live = await k.apply(DEP)
        merged = await k.patch("apps/v1", "Deployment", "default", "web",
                               {"metadata": {"resourceVersion": live["metadata"]["resourceVersion"]},
                                "spec": {"replicas": 3}})
        errors = []
        try:  # the same resourceVersion again: stale now
            await k.patch("apps/v1", "Deployment", "default", "web",
                          {"metadata": {"resourceVersion": live["metadata"]["resourceVersion"]},
                           "spec": {"replicas": 4}})
        except TemporaryError as exc:
            errors.append(f"{exc.status}")
        ops = [{"op": "test", "path": "/spec/replicas", "value": 3}, {"op": "replace", "path": "/spec/replicas", "value": 5},
               {"op": "remove", "path": "/metadata/labels/tier"}]
        patched = await k.patch("apps/v1", "Deployment", "default", "web", ops, json_patch=True)
        try:  # the test no longer holds: nothing changes
            await k.patch("apps/v1", "Deployment", "default", "web", ops, json_patch=True)
        except PermanentError as exc:
            errors.append(f"{exc.status}")
        return merged, patched, errors

    merged, patched, errors = run(kube, go)
    assert merged["spec"]["replicas"] == 3
    assert patched["spec"]["replicas"] == 5 and "tier" not in patched["metadata"]["labels"]
    assert errors == ["409", "422"]
    writes = [w for w in apiserver.writes if w.method == "PATCH" and w.path.endswith("/deployments/web")]
    assert [w.content_type for w in writes][-4:] == ["application/merge-patch+json"] * 2 + \
        ["application/json-patch+json"] * 2


def test_create_event_involves_the_object(kube: Kube) -> None:
    async def go(k: Kube) -> list[dict]:
        dep = await k.apply(DEP)
        await k.create_event(dep, "Warning", "Broken", "it broke")
        return await k.list("v1", "Event", "default")

    (event,) = run(kube, go)
    assert event["type"] == "Warning" and event["reason"] == "Broken" and event["message"] == "it broke"
    assert event["involvedObject"]["kind"] == "Deployment" and event["involvedObject"]["name"] == "web"
    assert event["involvedObject"]["uid"]
    assert event["metadata"]["name"].startswith("web.")


def test_served_uses_discovery_and_unknown_kinds_resolve_through_it(kube: Kube) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"metadata": {"type": "object"}, "spec": {
                            "type": "object", "properties": {"size": {"type": "integer"}}}}}}}]}}

    async def go(k: Kube) -> tuple[bool, bool, bool, dict]:
        before = await k.served("example.com", "v1", "widgets")
        await k.create(crd)
        after = await k.served("example.com", "v1", "widgets")
        core = await k.served("", "v1", "services")
        widget = await k.apply({"apiVersion": "example.com/v1", "kind": "Widget",
                                "metadata": {"name": "w", "namespace": "default"}, "spec": {"size": 1}})
        return before, after, core, widget

    before, after, core, widget = run(kube, go)
    assert (before, after, core) == (False, True, True)
    assert widget["metadata"]["uid"] and widget["spec"] == {"size": 1}


@pytest.mark.parametrize("status", [409, 429, 500, 503])
def test_retryable_api_errors_are_temporary(apiserver: ApiServerDouble, kube: Kube, status: int) -> None:
    apiserver.fail_next(status, f"server says {status}", method="PATCH")
    with pytest.raises(TemporaryError) as info:
        run(kube, lambda k: k.apply(DEP))
    assert info.value.status == status and f"server says {status}" in str(info.value)


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_other_api_errors_are_permanent_with_the_servers_message(
        apiserver: ApiServerDouble, kube: Kube, status: int) -> None:
    apiserver.fail_next(status, f"denied because {status}", method="PATCH")
    with pytest.raises(PermanentError) as info:
        run(kube, lambda k: k.apply(DEP))
    assert info.value.status == status and f"denied because {status}" in str(info.value)


def test_bad_credentials_are_permanent(apiserver: ApiServerDouble) -> None:
    kube = Kube(Connection(server=apiserver.url, token="wrong"))
    with pytest.raises(PermanentError) as info:
        run(kube, lambda k: k.get("apps/v1", "Deployment", "default", "web"))
    assert info.value.status == 401


def test_connection_refused_is_temporary() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    kube = Kube(Connection(server=f"http://127.0.0.1:{port}"), timeout=2)
    with pytest.raises(TemporaryError, match="connection error"):
        run(kube, lambda k: k.get("v1", "Service", "default", "x"))


def test_timeout_is_temporary() -> None:
    with socket.socket() as sock:  # accepts connections, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen(4)
        kube = Kube(Connection(server=f"http://127.0.0.1:{sock.getsockname()[1]}"), timeout=0.3)
        with pytest.raises(TemporaryError, match="timed out"):
            run(kube, lambda k: k.get("v1", "Service", "default", "x"))


def test_kubeconfig_with_embedded_certificates_loads(tmp_path: Path) -> None:
    # kind writes client certificates inline; the kubernetes loader turns them into files.
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    data = base64.b64encode(pem.encode()).decode()
    cfg = {"apiVersion": "v1", "kind": "Config", "current-context": "kind",
           "clusters": [{"name": "kind", "cluster": {"server": "https://127.0.0.1:6443",
                                                     "certificate-authority-data": data}}],
           "users": [{"name": "kind", "user": {"client-certificate-data": data, "client-key-data": data}}],
           "contexts": [{"name": "kind", "context": {"cluster": "kind", "user": "kind"}}]}
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(cfg))
    conn = Connection.from_kubeconfig(path)
    assert conn.server == "https://127.0.0.1:6443" and conn.namespace == "default" and not conn.insecure
    assert conn.ca_file and Path(conn.ca_file).read_text() == pem
    assert conn.cert_file and Path(conn.cert_file).read_text() == pem and conn.key_file


def test_rotated_service_account_token_is_reread_after_401(apiserver: ApiServerDouble, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("stale")
    kube = Kube(Connection(server=apiserver.url, token_file=str(token)))

    async def go(k: Kube) -> dict | None:
        with pytest.raises(TemporaryError):
            await k.get("v1", "Namespace", None, "default")
        token.write_text(apiserver.token)  # the kubelet rotated it
        return await k.get("v1", "Namespace", None, "default")

    assert run(kube, go)["metadata"]["name"] == "default"


def test_discovery_asked_by_many_at_once_is_one_request(apiserver: ApiServerDouble, kube: Kube) -> None:
    """A thousand reconciles starting together must not each ask discovery (issue 9 item 11)."""
    async def go(k: Kube) -> list[bool]:
        return await asyncio.gather(*(k.served("apps", "v1", "deployments") for _ in range(20)),
                                    *(k.served("apps", "v1", "nothing") for _ in range(5)))

    mark = len(apiserver.request_log)
    answers = run(kube, go)
    assert answers == [True] * 20 + [False] * 5
    assert apiserver.verbs(mark) == {"discovery": 1}
