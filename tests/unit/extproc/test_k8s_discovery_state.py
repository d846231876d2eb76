"""InferencePool + pods -> endpoints, without a cluster: plain dicts as the API server sends."""

from __future__ import annotations

import pytest

from inferoute.datalayer.discovery.kubernetes import (PoolError, PoolState, Reconciler,
                                                      parse_pool, pod_endpoints, pod_ready)


def pool(labels=None, ports=(8000,), name="qwen"):
    return {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"selector": {"matchLabels": labels or {"app": "vllm"}},
                     "targetPorts": [{"number": p} for p in ports],
                     "endpointPickerRef": {"name": "qwen-epp", "port": {"number": 9002},
                                           "failureMode": "FailClose"}}}


def pod(name, ip="10.1.0.1", labels=None, ready=True, phase="Running", deleting=False):
    meta = {"name": name, "namespace": "ns", "labels": {"app": "vllm", **(labels or {})}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta,
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Initialized", "status": "True"},
                                      {"type": "Ready", "status": "True" if ready else "False"}]}}


def test_parse_pool_reads_selector_ports_and_picker():
    spec = parse_pool(pool({"app": "vllm", "tier": "gpu"}, ports=(8000, 8001, 8000)))
    assert spec.selector == (("app", "vllm"), ("tier", "gpu"))
    assert spec.ports == (8000, 8001)
    assert spec.picker == "qwen-epp"
    assert spec.label_selector == "app=vllm,tier=gpu"


@pytest.mark.parametrize("mutate,field", [
    (lambda p: p.pop("spec"), "spec"),
    (lambda p: p["spec"].update(selector={"matchLabels": {}}), "matchLabels"),
    (lambda p: p["spec"].update(targetPorts=[]), "targetPorts"),
    (lambda p: p["spec"].update(targetPorts=[{"number": 70000}]), "targetPorts[0]"),
])
def test_parse_pool_errors_name_the_field(mutate, field):
    obj = pool()
    mutate(obj)
    with pytest.raises(PoolError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_pool(obj)


def test_pod_ready_rules():
    assert pod_ready(pod("a"))
    assert not pod_ready(pod("a", ready=False))
    assert not pod_ready(pod("a", phase="Pending"))
    assert not pod_ready(pod("a", deleting=True))
    assert not pod_ready(pod("a", ip=""))
    no_cond = pod("a")
    no_cond["status"]["conditions"] = []
    assert not pod_ready(no_cond)


def test_several_ports_give_several_endpoints_with_roles_and_engine():
    spec = parse_pool(pool(ports=(8000, 8200)))
    eps = pod_endpoints(pod("a", ip="10.1.0.7", labels={"llm-d.ai/role": "decode",
                                                        "llm-d.ai/engine-type": "sglang"}), spec)
    assert [ep.name for ep in eps] == ["10.1.0.7:8000", "10.1.0.7:8200"]
    assert {ep.role for ep in eps} == {"decode"} and {ep.engine for ep in eps} == {"sglang"}
    legacy = pod_endpoints(pod("b", labels={"inference.networking.k8s.io/engine-type": "trtllm",
                                            "llm-d.ai/role": "prefill"}), spec)
    assert legacy[0].engine == "trtllm" and legacy[0].role == "prefill"
    plain = pod_endpoints(pod("c"), spec)[0]
    assert plain.role == "both" and plain.engine == "vllm"
    assert pod_endpoints(pod("d", labels={"app": "other"}), spec) == []


def test_watch_events_and_selector_change():
    st = PoolState()
    assert st.set_pool(pool()) is True
    st.replace_pods([pod("a", ip="10.1.0.1"), pod("b", ip="10.1.0.2", ready=False)])
    assert sorted(st.endpoints()) == ["10.1.0.1:8000"]
    st.pod_event("MODIFIED", pod("b", ip="10.1.0.2"))           # becomes ready
    st.pod_event("ADDED", pod("c", ip="10.1.0.3", labels={"app": "other"}))
    assert sorted(st.endpoints()) == ["10.1.0.1:8000", "10.1.0.2:8000"]
    st.pod_event("MODIFIED", pod("a", ip="10.1.0.1", ready=False))  # becomes unready
    st.pod_event("BOOKMARK", {"metadata": {"resourceVersion": "9"}})
    assert sorted(st.endpoints()) == ["10.1.0.2:8000"]
    st.pod_event("DELETED", pod("b", ip="10.1.0.2"))
    assert st.endpoints() == {}
    assert st.set_pool(pool(ports=(9000,))) is False             # same selector, new port
    assert st.set_pool(pool({"app": "other"})) is True            # selector changed
    assert sorted(st.endpoints()) == ["10.1.0.3:8000"]
    assert st.set_pool(None) is True and st.endpoints() == {}


class FakeData:
    def __init__(self):
        self.calls = []

    def add_endpoint(self, model, ep):
        self.calls.append(("add", model, ep.name, ep.role))

    def remove_endpoint(self, model, name):
        self.calls.append(("remove", model, name))


def test_reconciler_touches_only_changes():
    data = FakeData()
    rec = Reconciler(data, "m")
    st = PoolState()
    st.set_pool(pool())
    st.replace_pods([pod("a", ip="10.1.0.1"), pod("b", ip="10.1.0.2")])
    rec.apply(st.endpoints())
    assert sorted(data.calls) == [("add", "m", "10.1.0.1:8000", "both"),
                                  ("add", "m", "10.1.0.2:8000", "both")]
    data.calls.clear()
    rec.apply(st.endpoints())
    assert data.calls == []
    st.pod_event("MODIFIED", pod("a", ip="10.1.0.1", labels={"llm-d.ai/role": "prefill"}))
    st.pod_event("DELETED", pod("b", ip="10.1.0.2"))
    rec.apply(st.endpoints())
    assert sorted(data.calls) == [("add", "m", "10.1.0.1:8000", "prefill"),
                                  ("remove", "m", "10.1.0.2:8000")]


def test_starting_pods_are_dated_by_their_creation():
    """A matching pod not ready yet is a replica starting: one per target port, dated by its
    creationTimestamp on the caller's clock (else when first seen); a ready pod dates its
    endpoints; a pod once ready and now not, one deleted or failed, is not starting."""
    st = PoolState()
    st.set_pool(pool(ports=(8000, 8001)))
    young = pod("young", ip="", ready=False, phase="Pending")
    young["metadata"]["creationTimestamp"] = "2026-12-06T14:00:00Z"  # 30 s before `wall`
    wall = 1796565630.0  # 2026-12-06T14:00:30Z
    st.replace_pods([young, pod("up", ip="10.1.0.1"), pod("plain", ip="10.1.0.2", ready=False),
                     pod("gone", ip="10.1.0.3", ready=False, deleting=True),
                     pod("failed", ip="10.1.0.4", ready=False, phase="Failed"),
                     pod("other", ip="10.1.0.5", ready=False, labels={"app": "other"})])
    st.endpoints()
    assert st.asked(now=500.0, wall=wall) == {
        "ns/young#8000": 470.0, "ns/young#8001": 470.0,
        "ns/plain#8000": 500.0, "ns/plain#8001": 500.0,  # no creationTimestamp: first seen
        "10.1.0.1:8000": 500.0, "10.1.0.1:8001": 500.0}
    # later: the dates hold; the young pod turns ready (its endpoints keep its date), the
    # ready one turns unready (down, not starting)
    ready_young = pod("young", ip="10.1.0.6")
    ready_young["metadata"]["creationTimestamp"] = "2026-12-06T14:00:00Z"
    st.pod_event("MODIFIED", ready_young)
    st.pod_event("MODIFIED", pod("up", ip="10.1.0.1", ready=False))
    st.endpoints()
    assert st.asked(now=600.0, wall=wall + 100) == {
        "10.1.0.6:8000": 470.0, "10.1.0.6:8001": 470.0,
        "ns/plain#8000": 500.0, "ns/plain#8001": 500.0}
    st.pod_event("DELETED", pod("plain"))
    st.endpoints()
    assert set(st.asked(now=610.0, wall=wall + 110)) == {"10.1.0.6:8000", "10.1.0.6:8001"}
