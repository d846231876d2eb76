"""The deployment files: examples parse and match their schemas; the Helm chart is consistent.

These static checks need no helm binary (tests/integration/chart renders the chart with a real
helm when `deploy/tools/fetch-helm.py` has fetched one). Here: Chart.yaml and values.yaml parse; every `.Values.x.y` a template reads exists in
values.yaml; every `include` names a defined template; template blocks balance; and the
generated scheduler-config template uses only plugin types and keys inferoute knows. The Envoy
bootstrap is parsed into Envoy's own protobuf schema (xds-protos), the static serving config
through inferoute's loader, and every metric the Grafana dashboard queries must exist in the
metrics registry.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "inferoute"
TEMPLATES = sorted((CHART / "templates").glob("*"))


def test_chart_metadata_and_values_parse():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "inferoute" and chart["version"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    sc = values["schedulingConfig"]
    assert sc["scorers"] == {"prefixCacheScorer": 3, "kvCacheUtilizationScorer": 2,
                             "queueScorer": 2}
    assert values["ports"] == {"grpc": 9002, "health": 9003, "metrics": 9090}


def _values_paths(node: object, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else k
            out.add(path)
            out |= _values_paths(v, path)
    return out


def test_templates_only_read_values_that_exist():
    known = _values_paths(yaml.safe_load((CHART / "values.yaml").read_text()))
    aliases = {"$sc": "schedulingConfig"}  # `{{- $sc := .Values.schedulingConfig }}`
    missing = []
    for t in TEMPLATES:
        text = t.read_text()
        for ref in re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text):
            if ref.rstrip(".") not in known:
                missing.append(f"{t.name}: .Values.{ref}")
        for var, base in aliases.items():
            for ref in re.findall(re.escape(var) + r"\.([A-Za-z0-9_.]+)", text):
                if f"{base}.{ref}" not in known:
                    missing.append(f"{t.name}: {var}.{ref}")
    assert not missing


def test_includes_are_defined_and_blocks_balance():
    defined = set(re.findall(r'define "([^"]+)"', (CHART / "templates/_helpers.tpl").read_text()))
    for t in TEMPLATES:
        text = t.read_text()
        for name in re.findall(r'include "([^"]+)"', text):
            assert name in defined, f"{t.name} includes undefined {name}"
        actions = re.findall(r"\{\{-?\s*(\w+)", text)
        opened = sum(a in ("if", "with", "range", "define") for a in actions)
        closed = sum(a == "end" for a in actions)
        assert opened == closed, f"{t.name}: {opened} blocks opened, {closed} closed"


def test_rbac_is_read_only_on_pods_and_pools():
    text = (CHART / "templates/rbac.yaml").read_text()
    verbs = set(re.findall(r'verbs: \[(.*)\]', text))
    assert verbs == {'"get", "list", "watch"'}
    assert set(re.findall(r'resources: \["(\w+)"\]', text)) == {"pods", "inferencepools"}
    assert "ClusterRole" not in text


def test_generated_scheduler_config_uses_known_plugins():
    from inferoute.core.scheduling.config import SaturationSpec
    from inferoute.core.scheduling.registry import plugin_types
    text = (CHART / "templates/configmap.yaml").read_text()
    types = set(re.findall(r"- type: ([a-z-]+)", text))
    assert types and types <= set(plugin_types())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["schedulingConfig"]["picker"] in plugin_types()
    SaturationSpec.model_validate(values["schedulingConfig"]["saturationDetector"])


def test_the_default_policy_is_the_packaged_default():
    """The chart's default `schedulingConfig.policy` is the policy `serve` and `epp` use when
    given none, and a packaged one the picker finds by name."""
    from inferoute.configfiles import DEFAULT_POLICY, packaged_policies
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["schedulingConfig"]["policy"] == DEFAULT_POLICY
    assert DEFAULT_POLICY in packaged_policies()


def test_generated_admission_config_is_valid():
    from inferoute.core.admission import parse_admission_config
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # the admission.yaml the ConfigMap template writes, from the default values and an example
    for objectives in ([], [{"name": "batch", "priority": -1}, {"name": "chat", "priority": 9}]):
        cfg = parse_admission_config({
            "saturationDetector": values["schedulingConfig"]["saturationDetector"],
            "objectives": objectives, "flowControl": values["flowControl"]})
        assert cfg.saturation_detector.metrics_staleness_threshold == 0.2
    text = (CHART / "templates/configmap.yaml").read_text()
    top = set(re.findall(r"^    (\w+):", text.split("admission.yaml: |")[1], re.M))
    assert top == {"saturationDetector", "objectives", "flowControl"}


def test_envoy_bootstrap_matches_envoy_schema():
    from google.protobuf import json_format
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    # the typed_config types the bootstrap names must be importable to be checked
    import envoy.extensions.filters.http.ext_proc.v3.ext_proc_pb2 as ext_proc_pb2
    import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401
    import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401,E501
    import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401

    data = yaml.safe_load((DEPLOY / "examples/envoy-standalone.yaml").read_text())
    boot = json_format.ParseDict(data, bootstrap_pb2.Bootstrap())
    clusters = {c.name: c for c in boot.static_resources.clusters}
    odst = clusters["original_destination_cluster"]
    assert odst.original_dst_lb_config.http_header_name == "x-gateway-destination-endpoint"
    epp = clusters["inferoute_epp"].load_assignment.endpoints[0].lb_endpoints[0]
    assert epp.endpoint.address.socket_address.port_value == 9002
    hcm_any = boot.static_resources.listeners[0].filter_chains[0].filters[0].typed_config
    from envoy.extensions.filters.network.http_connection_manager.v3 import \
        http_connection_manager_pb2 as hcm_pb2
    hcm = hcm_pb2.HttpConnectionManager()
    hcm_any.Unpack(hcm)
    ext = ext_proc_pb2.ExternalProcessor()
    hcm.http_filters[0].typed_config.Unpack(ext)
    assert ext.processing_mode.request_body_mode == ext.processing_mode.FULL_DUPLEX_STREAMED


def test_other_examples_parse():
    route = yaml.safe_load((DEPLOY / "examples/httproute.yaml").read_text())
    ref = route["spec"]["rules"][0]["backendRefs"][0]
    assert (ref["group"], ref["kind"]) == ("inference.networking.k8s.io", "InferencePool")
    from inferoute.datalayer.serving_config import load_serving_config
    cfg = load_serving_config(DEPLOY / "examples/serving.yaml")
    assert cfg.pools[0].model == "Qwen/Qwen3-32B"


def test_dashboard_queries_only_real_metrics():
    from inferoute.observability import Observability
    exported = set()
    for fam in Observability().registry.collect():
        exported.add(fam.name)
        exported |= {s.name for s in fam.samples}
    # histograms' series exist once observed; their names follow from the family
    for fam in Observability().registry.collect():
        if fam.type == "histogram":
            exported |= {fam.name + s for s in ("_bucket", "_sum", "_count")}
        if fam.type == "counter":
            exported.add(fam.name + "_total")
    dash = json.loads((DEPLOY / "examples/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\b(inference\w+|inferoute\w+)\b", e)}
    assert used and used <= exported, used - exported


@pytest.mark.parametrize("path", [p for p in sorted(DEPLOY.rglob("*.yaml"))
                                  if "templates" not in p.parts], ids=lambda p: p.name)
def test_plain_yaml_files_parse(path):
    assert list(yaml.safe_load_all(path.read_text()))
