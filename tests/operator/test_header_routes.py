"""Header and cookie routes (A/B, `setHeaderRoute` steps): the fold that says which routes are
active, their Gateway API header matches (checked for what they match, not only their text),
the HTTPRoute they render (checked against the Gateway API's HTTPRoute schema), and the pure
plan driven through whole rollouts: kept through later steps, gone at promotion, abort and
cancel, held (never skipped) when the rollout splits by replicas, and recomputed after a lost
status. Reconcile against the API double and the CLI are in test_header_routes_reconcile.py.

No real gateway data plane runs here (no Gateway controller in the tests or the local cluster),
so what a gateway does with the rules is pinned by the Gateway API's documented semantics.
"""
from __future__ import annotations

import copy
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelship_operator.api import validate as schema
from modelship_operator.planning import ABORT_ANNOTATION, PROMOTE_ANNOTATION
from modelship_operator.planning.traffic import MAX_HEADER_ROUTES, active_header_routes, header_match
from modelship_operator.render import render
from modelship_operator.spec import ModelDeployment, RolloutStep
from test_rollout import World, gateway_spec, spec

BETA = {"setHeaderRoute": {"name": "beta", "match": [
    {"headerName": "X-User-Group", "headerValue": {"exact": "beta"}},
    {"cookieName": "ab^", "cookieValue": {"prefix": "b"}}]}}
AB_STEPS = [BETA, {"setWeight": 10}, {"pause": {}}]


def steps_of(*raw: dict) -> tuple[RolloutStep, ...]:
    body = {"metadata": {"name": "fraud", "namespace": "ml"},
            "spec": gateway_spec(steps=[*raw, {"setWeight": 10}])}
    return ModelDeployment.from_body(body).spec.rollout.steps[:-1]


def route(name: str, *matches: dict) -> dict:
    return {"setHeaderRoute": {"name": name, "match": list(matches)}} if matches else {
        "setHeaderRoute": {"name": name}}


def header(name: str, **value: str) -> dict:
    return {"headerName": name, "headerValue": value}


def cookie(name: str, **value: str) -> dict:
    return {"cookieName": name, "cookieValue": value}


# --------------------------------------------------------------------------- the fold


def test_the_active_routes_are_a_fold_of_the_steps_before_the_current_one() -> None:
    steps = steps_of(
        route("beta", header("X-Group", exact="beta")),                 # 0: add beta
        route("ab", cookie("ab", exact="b")),                            # 1: add ab
        {"setWeight": 10},                                               # 2
        route("beta", header("X-Group", prefix="be")),                   # 3: replace beta (keeps its place)
        route("ab"),                                                     # 4: remove ab
        route("nope"),                                                   # 5: removing an unknown route: nothing
        {"pause": {}},                                                   # 6
        route("ab", cookie("ab", regex="c|d")),                          # 7: ab again, now last
    )
    names = [[r.name for r in active_header_routes(steps, i)] for i in range(len(steps) + 1)]
    assert names == [[], ["beta"], ["beta", "ab"], ["beta", "ab"], ["beta", "ab"], ["beta"], ["beta"], ["beta"],
                     ["beta", "ab"]]
    # the step being worked on is not in force yet; a replacement carries its new matches
    assert active_header_routes(steps, 3)[0].match[0].header_value.exact == "beta"
    assert active_header_routes(steps, 4)[0].match[0].header_value.prefix == "be"
    assert active_header_routes(steps, 99) == active_header_routes(steps, len(steps))
    assert active_header_routes(steps, -1) == ()


# --------------------------------------------------------------------------- header matches


def match_of(raw: dict) -> Any:
    (r,) = active_header_routes(steps_of(route("r", raw)), 1)
    return header_match(r.match[0])


def matches(m: Any, value: str) -> bool:
    """Whether a gateway matches `value` with `m`, under BOTH regex semantics in use: full match
    (Envoy, Istio) and search (NGINX); they must agree, or the route means different things on
    different gateways. The patterns use only syntax RE2, PCRE and Python read alike."""
    if m.type == "Exact":
        return value == m.value
    full, partial = re.fullmatch(m.value, value) is not None, re.search(m.value, value) is not None
    assert full == partial, (m.value, value)
    return full


@pytest.mark.parametrize("raw, yes, no", [
    (header("X-User-Group", exact="beta"), ["beta"], ["Beta", "beta2", ""]),
    (header("X-User-Group", exact=""), [""], ["beta"]),  # Exact needs a value of 1+ characters
    (header("X-Plan", prefix="a.b*"), ["a.b*", "a.b*-gold"], ["axb*", "a.bb", "xa.b*"]),
    (header("X-Id", regex="1[0-9]+"), ["10", "1999"], ["x10", "101a", "1"]),
    (header("X-Id", regex="^(a|b)$"), ["a", "b"], ["ab", "xa"]),  # the user's anchors are kept harmless
    (cookie("ab^", exact="b"), ["ab^=b", "x=1; ab^=b", "ab^=b; y=2", "x=1;ab^=b;y=2"],
     ["ab^=bc", "xab^=b", "ab=b", "ab^=", "x=ab^=b", "ab^=c; zab^=b"]),
    (cookie("ab", prefix="b."), ["ab=b.", "ab=b.x; c=1", "c=1; ab=b.1"], ["ab=bx", "ab=ab.", "cab=b."]),
    (cookie("ab", regex="(b|c)[0-9]"), ["ab=b1", "x=y; ab=c9"], ["ab=b", "ab=b12", "ab=d1"]),
    (cookie("sess", exact=""), ["sess=", "a=1; sess=; b=2"], ["sess=x"]),
])
def test_a_condition_matches_what_it_says_and_nothing_else(raw: dict, yes: list[str], no: list[str]) -> None:
    m = match_of(raw)
    assert m.name == (raw.get("headerName") or "Cookie")
    for value in yes:
        assert matches(m, value), (m, value)
    for value in no:
        assert not matches(m, value), (m, value)


def test_exact_values_are_exact_matches_and_the_rest_anchored_patterns() -> None:
    assert (match_of(header("X-G", exact="beta")).type, match_of(header("X-G", exact="beta")).value) == (
        "Exact", "beta")
    assert match_of(header("X-G", prefix="b.")).value == r"^b\..*$"
    assert match_of(cookie("ab^", prefix="b")).value == r"^(?:.*;\s*)?ab\^=b.*(?:;.*)?$"


# --------------------------------------------------------------------------- the HTTPRoute

# The parts of gateway.networking.k8s.io/v1 HTTPRoute (standard channel, kubernetes-sigs/gateway-api
# config/crd/standard/gateway.networking.k8s.io_httproutes.yaml) the operator sets, with their bounds:
# rules <= 16, matches per rule <= 64, headers per match <= 16 (a list-map keyed by name: a header name
# counts once), header match type Exact | RegularExpression (no prefix type, no cookie match), values 1..4096.
_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
GATEWAY_HTTPROUTE_SPEC: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["rules"],
    "properties": {
        "parentRefs": {"type": "array", "maxItems": 32, "items": {"type": "object"}},
        "hostnames": {"type": "array", "maxItems": 16, "items": {"type": "string", "maxLength": 253}},
        "rules": {"type": "array", "maxItems": 16, "items": {
            "type": "object", "additionalProperties": False,
            "properties": {
                "matches": {"type": "array", "maxItems": 64, "items": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "path": {"type": "object", "additionalProperties": False, "properties": {
                            "type": {"type": "string", "enum": ["Exact", "PathPrefix", "RegularExpression"]},
                            "value": {"type": "string", "maxLength": 1024}}},
                        "headers": {"type": "array", "maxItems": 16, "x-kubernetes-list-type": "map",
                                    "x-kubernetes-list-map-keys": ["name"], "items": {
                                        "type": "object", "additionalProperties": False, "required": ["name", "value"],
                                        "properties": {
                                            "name": {"type": "string", "minLength": 1, "maxLength": 256,
                                                     "pattern": "^[A-Za-z0-9!#$%&'*+\\-.^_\\x60|~]+$"},
                                            "type": {"type": "string", "enum": ["Exact", "RegularExpression"]},
                                            "value": {"type": "string", "minLength": 1, "maxLength": 4096}}}}}}},
                "backendRefs": {"type": "array", "maxItems": 16, "items": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"name": _NAME, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                   "weight": {"type": "integer", "minimum": 0, "maximum": 1000000}}}},
                "filters": {"type": "array", "maxItems": 16, "items": {"type": "object"}},
            }}},
    },
}


def gateway_errors(httproute: dict) -> list[str]:
    """What the Gateway API's HTTPRoute schema rejects in a rendered HTTPRoute; with
    MODELSHIP_GATEWAY_API_CRD pointing at the real CRD file, its full schema and CEL rules too."""
    assert httproute["apiVersion"] == "gateway.networking.k8s.io/v1" and httproute["kind"] == "HTTPRoute"
    errors = schema.schema_errors(httproute["spec"], GATEWAY_HTTPROUTE_SPEC, ("spec",))
    errors += schema.list_map_errors(httproute["spec"], GATEWAY_HTTPROUTE_SPEC, ("spec",))
    for rule in httproute["spec"]["rules"]:  # the gateway ignores a repeated name, whatever its case
        for m in rule.get("matches", ()):
            names = [h["name"].lower() for h in m.get("headers", ())]
            if len(names) != len(set(names)):
                errors.append(f"a header name repeats (case-insensitively) in {m}")
    crd_file = os.environ.get("MODELSHIP_GATEWAY_API_CRD")
    if crd_file:
        crd = yaml.safe_load(Path(crd_file).read_text())
        root = schema.openapi_schema(crd, "v1")
        obj = schema.apply_defaults(copy.deepcopy(httproute), root)
        errors += schema.schema_errors(obj, root) + schema.list_map_errors(obj, root)
        if schema.cel_available():
            errors += schema.cel_errors(obj, root)
    return errors


def httproute_of(w: World) -> dict:
    assert w.last is not None
    (hr,) = [m for m in render(w.last) if m["kind"] == "HTTPRoute"]
    return hr


def header_rules(hr: dict) -> list[dict]:
    return [r for r in hr["spec"]["rules"] if r.get("matches")]


def ab_world(steps: list | None = None, **kw: Any) -> World:
    w = World(gateway_spec(steps=AB_STEPS if steps is None else steps, **kw), httproute=True)
    w.settle()
    assert w.status["trafficMode"] == "gateway" and "canary" not in w.status
    return w


def start(w: World, version: str = "2.0.0") -> list[str]:
    new = copy.deepcopy(w.spec)
    new["model"] = {"uri": f"pvc://models/fraud/{version}/model.pt", "version": version}
    w.set_spec(new)
    return w.settle()


def test_the_rule_sends_matching_requests_to_the_canary_ahead_of_the_weighted_split() -> None:
    w = ab_world()
    reasons = start(w)
    assert reasons.count("RolloutStep") == 1  # the setHeaderRoute step took effect and moved on at once
    assert w.canary["step"] == 1 and w.canary["headerRoutes"] == ["beta"]
    hr = httproute_of(w)
    assert gateway_errors(hr) == []
    first, weighted = hr["spec"]["rules"]
    assert first == {
        "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                     "headers": [{"name": "X-User-Group", "type": "Exact", "value": "beta"},
                                 {"name": "Cookie", "type": "RegularExpression",
                                  "value": r"^(?:.*;\s*)?ab\^=b.*(?:;.*)?$"}]}],
        "backendRefs": [{"name": "fraud-canary", "port": 8080, "weight": 100}]}
    # The weighted rule has no match of its own (the default PathPrefix /): fewer header matches, so the
    # Gateway API's precedence gives the header rule every request it matches; it comes first as well.
    assert "matches" not in weighted
    assert [(b["name"], b["weight"]) for b in weighted["backendRefs"]] == [("fraud-stable", 90), ("fraud-canary", 10)]
    canary_service = {m["metadata"]["name"]: m for m in render(w.last) if m["kind"] == "Service"}["fraud-canary"]
    assert canary_service["spec"]["selector"]["modelship.dev/revision"] == w.canary["hash"]


def test_routes_are_kept_through_later_steps_and_removed_at_promotion() -> None:
    w = ab_world()
    start(w)
    w.measure("pass")  # the setWeight 10 window: on to the manual pause
    assert w.canary["step"] == 2 and w.status["phase"] == "Paused"
    assert w.canary["headerRoutes"] == ["beta"] and len(header_rules(httproute_of(w))) == 1
    w.now += timedelta(hours=3)
    assert w.settle() == [] and len(header_rules(httproute_of(w))) == 1  # a steady pause writes nothing new

    w.annotations[PROMOTE_ANNOTATION] = "step"
    reasons = w.settle()
    assert "Promoted" in reasons and "canary" not in w.status
    hr = httproute_of(w)
    assert header_rules(hr) == [] and gateway_errors(hr) == []
    assert [(b["name"], b["weight"]) for b in hr["spec"]["rules"][0]["backendRefs"]] == [("fraud-stable", 100)]


def test_abort_sends_everything_to_the_stable_at_once() -> None:
    w = ab_world()
    start(w)
    assert len(header_rules(httproute_of(w))) == 1
    w.annotations[ABORT_ANNOTATION] = "now"
    w.reconcile()
    assert w.canary["aborted"] and "headerRoutes" not in w.canary
    hr = httproute_of(w)
    assert header_rules(hr) == [], "no header route may reach an aborted canary"
    assert [(b["name"], b["weight"]) for b in hr["spec"]["rules"][0]["backendRefs"]] == [
        ("fraud-stable", 100), ("fraud-canary", 0)]
    w.now += timedelta(hours=1)
    w.settle()
    assert header_rules(httproute_of(w)) == [] and "headerRoutes" not in w.canary  # and stays so


def test_a_cancelled_canary_takes_its_routes_with_it() -> None:
    w = ab_world()
    before = copy.deepcopy(w.spec)
    start(w)
    assert w.canary["headerRoutes"] == ["beta"]
    w.set_spec(before)  # back to the stable's spec
    reasons = w.settle()
    assert "CanaryCancelled" in reasons and "canary" not in w.status
    assert header_rules(httproute_of(w)) == []


def test_a_removal_step_removes_the_route_and_a_replacement_replaces_it() -> None:
    steps = [route("beta", header("X-Group", exact="beta")), route("ab", cookie("ab", exact="b")),
             {"setWeight": 10}, route("beta", header("X-Group", prefix="be")), route("ab"), {"pause": {}}]
    w = ab_world(steps)
    start(w)
    assert w.canary["step"] == 2 and w.canary["headerRoutes"] == ["beta", "ab"]
    rules = header_rules(httproute_of(w))
    assert [r["matches"][0]["headers"][0]["name"] for r in rules] == ["X-Group", "Cookie"]
    w.measure("pass")
    assert w.canary["step"] == 5 and w.canary["headerRoutes"] == ["beta"]
    (rule,) = header_rules(httproute_of(w))
    assert rule["matches"][0]["headers"] == [{"name": "X-Group", "type": "RegularExpression", "value": "^be.*$"}]
    assert gateway_errors(httproute_of(w)) == []


def test_a_header_route_at_weight_zero_gets_a_canary_pod_and_routes_once_it_is_ready() -> None:
    w = ab_world([BETA, {"pause": {}}, {"setWeight": 50}])
    w.ready_limit["canary"] = 0
    start(w)
    assert w.canary["step"] == 1 and w.canary["requestedWeight"] == 0
    assert w.replicas() == {"stable": 4, "canary": 1}  # a pod for the route's requests, though the weight is 0
    assert "headerRoutes" not in w.canary and header_rules(httproute_of(w)) == []  # nothing to send them to yet
    assert w.canary["unreadySince"]  # readyTimeout counts: a canary that never gets ready is aborted
    w.ready_limit.pop("canary")
    w.settle()
    assert w.canary["headerRoutes"] == ["beta"] and len(header_rules(httproute_of(w))) == 1
    assert [b["weight"] for b in httproute_of(w)["spec"]["rules"][1]["backendRefs"]] == [100, 0]
    assert "unreadySince" not in w.canary


def test_a_canary_that_never_gets_ready_for_its_header_route_is_aborted() -> None:
    w = ab_world([BETA, {"pause": {}}, {"setWeight": 50}], rolloutExtra={"readyTimeout": "5m"})
    w.ready_limit["canary"] = 0
    start(w)
    w.now += timedelta(minutes=6)
    w.settle()
    assert w.canary["aborted"] and "readyTimeout" in w.canary["abortReason"]
    assert header_rules(httproute_of(w)) == []


def test_the_most_routes_the_api_allows_fit_one_httproute() -> None:
    steps = [route(f"r{i}", header("X-Group", exact=str(i)), header("X-Plan", prefix="p" * 1024),
                   cookie("ab" * 128, prefix="^$.|?*+()[]{}\\" * 73)) for i in range(MAX_HEADER_ROUTES)]
    steps.append({"setWeight": 10})
    body = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "fraud", "namespace": "ml"}, "spec": gateway_spec(steps=steps)}
    assert schema.validate(body, cel=True) == []
    w = ab_world(steps)
    start(w)
    hr = httproute_of(w)
    assert len(header_rules(hr)) == MAX_HEADER_ROUTES and len(hr["spec"]["rules"]) == 16
    assert max(len(h["value"]) for r in header_rules(hr) for h in r["matches"][0]["headers"]) <= 4096
    assert gateway_errors(hr) == []


def test_the_schema_check_catches_what_a_gateway_would_reject() -> None:
    """The check above is not vacuous: a rule too many, a value too long, a prefix type."""
    w = ab_world()
    start(w)
    hr = httproute_of(w)
    too_many = copy.deepcopy(hr)
    too_many["spec"]["rules"] = [hr["spec"]["rules"][0]] * 16 + [hr["spec"]["rules"][1]]
    assert any("is too long" in e for e in gateway_errors(too_many))
    bad = copy.deepcopy(hr)
    bad["spec"]["rules"][0]["matches"][0]["headers"][0].update(type="Prefix", value="x" * 4097)
    errors = gateway_errors(bad)
    assert any("'Prefix' is not one of" in e for e in errors) and any("is too long" in e for e in errors)
    twice = copy.deepcopy(hr)
    twice["spec"]["rules"][0]["matches"][0]["headers"].append({"name": "x-user-group", "value": "b"})
    assert gateway_errors(twice)


# --------------------------------------------------------------------------- replicas mode: fail closed


def test_without_the_httproute_crd_a_header_route_step_holds_and_warns_once() -> None:
    w = World(gateway_spec(steps=AB_STEPS), httproute=False)  # auto, but no HTTPRoute CRD served
    w.settle()
    assert w.status["trafficMode"] == "replicas"
    reasons = start(w)
    assert reasons.count("HeaderRoutesUnavailable") == 1 and "RolloutStep" not in reasons
    (warning,) = [e for e in w.last_events if e.reason == "HeaderRoutesUnavailable"]
    assert warning.type == "Warning" and "HTTPRoute CRD" in warning.message and "setHeaderRoute beta" in warning.message
    assert w.canary["step"] == 0 and w.canary["requestedWeight"] == 0 and "headerRoutes" not in w.canary
    assert "HTTPRoute CRD" in w.canary["holdReason"]
    assert w.status["phase"] == "Paused"
    progressing = next(c for c in w.status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("Unknown", "HeaderRoutesUnavailable")
    assert "HTTPRoute CRD" in progressing["message"]
    assert "HTTPRoute" not in {m["kind"] for m in render(w.last)}
    w.now += timedelta(hours=1)
    assert w.settle() == [] and w.canary["step"] == 0  # held, and said once
    w.status["canary"].pop("holdReason")  # a status that lost the hold says it again
    assert w.settle() == ["HeaderRoutesUnavailable"]

    w.annotations[PROMOTE_ANNOTATION] = "step"  # the user's explicit choice: skip the step
    reasons = w.settle()
    assert "StepPromoted" in reasons and w.canary["step"] == 1 and w.canary["requestedWeight"] == 10
    assert "headerRoutes" not in w.canary and w.last.route is None


# --------------------------------------------------------------------------- restart safety


def test_routes_survive_a_lost_status_and_a_fresh_operator() -> None:
    w = ab_world()
    start(w)
    w.measure("pass")
    assert w.canary["step"] == 2
    rendered = httproute_of(w)
    # A restore that drops status: the rollout state comes back from the Deployments' records,
    # and the routes from the steps -- nothing about them was stored.
    w.status = {}
    reasons = w.settle()
    assert "RolloutStateRecovered" in reasons
    assert w.canary["step"] == 2 and w.canary["headerRoutes"] == ["beta"]
    assert httproute_of(w)["spec"] == rendered["spec"]
    # status.canary.headerRoutes is a report, never read back: a wrong one is corrected
    w.status["canary"]["headerRoutes"] = ["stale", "beta"]
    w.settle()
    assert w.canary["headerRoutes"] == ["beta"] and httproute_of(w)["spec"] == rendered["spec"]


def test_the_example_walks_its_routes() -> None:
    body = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "ab-header-route.yaml").read_text())
    w = World(spec(replicas=4, steps=body["spec"]["rollout"]["steps"], traffic="auto",
                   gateway=body["spec"]["rollout"]["gateway"]), httproute=True)
    w.settle()
    start(w)
    assert w.canary["step"] == 2 and w.canary["headerRoutes"] == ["beta", "ab-cookie"]  # both at once, at weight 0
    assert w.status["phase"] == "Paused" and w.replicas() == {"stable": 4, "canary": 1}
    w.annotations[PROMOTE_ANNOTATION] = "step"
    w.settle()
    assert w.canary["step"] == 3 and w.canary["requestedWeight"] == 10
    w.measure("pass")
    w.measure("pass", timedelta(minutes=10))
    w.now += timedelta(minutes=1)
    w.settle()
    assert w.canary["step"] == 6 and w.canary["headerRoutes"] == ["beta"]  # the cookie route removed
    assert gateway_errors(httproute_of(w)) == []


# --------------------------------------------------------------------------- regex syntax


@pytest.mark.parametrize("pattern, ok", [
    ("b.*", True), ("(?i)beta|gamma", True), ("^1[0-9]{3}$", True), (r"\d+\.\d+", True), ("[]a+]+", True),
    ("(?P<arm>b|c)", True), (r"\++", True), ("a+?", True),
    ("(b|c", False), ("b(?=eta)", False), ("(?<!x)b", False), (r"(a)\1", False), ("a++", False),
    ("x{2}+", False), ("(?>a)", False), (r"a\Z", False), ("(?x) a b", False),
])
def test_regex_values_must_be_re2(pattern: str, ok: bool) -> None:
    """What the API server's CEL (Go's RE2) and Envoy reject is rejected offline too, though Python's
    `re` would take lookaround, backreferences, possessive quantifiers, \\Z and the x flag."""
    body = {"apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "fraud", "namespace": "ml"},
            "spec": gateway_spec(steps=[route("r", header("X-G", regex=pattern)), {"setWeight": 10}])}
    errors = schema.validate(body, cel=True)
    assert (errors == []) == ok, errors
    if not ok:
        assert any("regex must be a valid RE2 regular expression" in e for e in errors)


# --------------------------------------------------------------------------- with shadow steps


def test_header_routes_pause_during_a_shadow_step_and_come_back_after_it() -> None:
    """A shadow step gives the canary no user traffic: its header routes are off during it (the
    rule goes, no status entry), and in force again at the next step (the fold never forgot them)."""
    from test_shadow_plan import ANALYSIS, measure

    steps = [BETA, {"shadow": {"percent": 20, "duration": "1m"}}, {"setWeight": 10}, {"pause": {}}]
    s = gateway_spec(steps=steps)
    s["rollout"]["analysis"] = dict(ANALYSIS)
    w = World(s, httproute=True)
    w.settle()
    start(w)
    assert w.canary["step"] == 1 and w.canary.get("shadowPercent") == 20
    assert "headerRoutes" not in w.canary and header_rules(httproute_of(w)) == []
    assert [b["weight"] for b in httproute_of(w)["spec"]["rules"][0]["backendRefs"]] == [100, 0]
    measure(w, "pass")
    w.now += timedelta(minutes=1)
    measure(w, "pass")
    assert w.canary["step"] == 2 and w.canary["headerRoutes"] == ["beta"]
    assert len(header_rules(httproute_of(w))) == 1 and gateway_errors(httproute_of(w)) == []


# --------------------------------------------------------------------------- analysis of header-routed users


def test_header_routed_users_are_analysed_at_weight_zero_and_a_failing_canary_is_aborted() -> None:
    w = ab_world([BETA, {"pause": {}}, {"setWeight": 50}])
    start(w)
    assert w.canary["step"] == 1 and w.canary["weight"] == 0 and w.canary["headerRoutes"] == ["beta"]
    assert w.canary["analysis"]["lastTime"] and w.last.analysis is not None  # a window runs
    assert w.last.requeue_after == 30.0
    assert w.measure("fail") == ["AnalysisFailed"]
    reasons = w.measure("fail")
    assert "AnalysisFailed" in reasons and w.canary["aborted"]
    assert "failureLimit" in w.canary["abortReason"] and header_rules(httproute_of(w)) == []


def test_little_ab_traffic_does_not_pause_a_step_that_needs_no_windows() -> None:
    w = ab_world([BETA, {"pause": {"duration": "2m"}}, {"setWeight": 50}])
    start(w)
    for _ in range(3):  # inconclusiveLimit 3 in a row: at a step with a weight this pauses the rollout
        assert w.measure("inconclusive") == ["AnalysisInconclusive"]
    assert w.canary["analysis"]["inconclusiveStreak"] == 3 and "heldReason" not in w.canary
    assert w.status["phase"] == "Progressing" and w.canary["step"] == 1
    assert w.measure("inconclusive") == ["AnalysisInconclusive", "RolloutStep"]  # the 2m pause ends on time
    assert w.canary["step"] == 2 and w.canary["requestedWeight"] == 50
