"""Endpoints from a Kubernetes InferencePool (`inference.networking.k8s.io/v1`) and its pods.

The pool names its model servers by label (`spec.selector.matchLabels`) and the ports they
serve on (`spec.targetPorts[].number`); every *ready* pod matching the selector contributes one
endpoint per target port (`podIP:port`). Pod labels refine an endpoint: `llm-d.ai/role`
(prefill | decode | both) for disaggregated serving, and `llm-d.ai/engine-type` (or the older
`inference.networking.k8s.io/engine-type`: vllm | sglang | trtllm) for the metrics dialect.
A matching pod that is not ready yet, and has not been ready since discovery first saw it, is
a replica *starting*: it takes no request, but the autoscaling estimator counts it as serving
from its cold start's end (`DataLayer.set_starting`), dated by its `metadata.creationTimestamp`.

Two layers:

* `PoolState` is pure: it takes the pool object and pod objects (plain dicts, as the API server
  sends them) and list/watch events, and answers the endpoints that should exist. Unit-tested
  without a cluster.
* `PoolDiscovery` is the asyncio shell: it lists and watches the pool and its pods through
  `kubernetes_asyncio`, re-lists on a resync period or when the watch expires (HTTP 410), follows
  selector changes, and applies the differences to the `DataLayer` (`add_endpoint` /
  `remove_endpoint`) without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from ...core.endpoint import Endpoint

log = logging.getLogger("inferoute.discovery.k8s")

GROUP = "inference.networking.k8s.io"
VERSION = "v1"
PLURAL = "inferencepools"
ROLE_LABEL = "llm-d.ai/role"
ENGINE_LABELS = ("llm-d.ai/engine-type", "inference.networking.k8s.io/engine-type")
_ENGINES = {"vllm": "vllm", "sglang": "sglang", "trtllm": "trtllm", "tensorrt-llm": "trtllm",
            "trt-llm": "trtllm"}
_ROLES = {"prefill": "prefill", "decode": "decode", "both": "both", "prefill-decode": "both"}
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PoolError(ValueError):
    """The InferencePool object is not usable (the message says which field)."""


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What discovery needs from an InferencePool."""

    name: str
    selector: tuple[tuple[str, str], ...]
    ports: tuple[int, ...]
    picker: str | None = None  # spec.endpointPickerRef.name, informational

    @property
    def label_selector(self) -> str:
        """The selector in the API's `labelSelector` query form."""
        return ",".join(f"{k}={v}" for k, v in self.selector)


def parse_pool(obj: Mapping[str, Any]) -> PoolSpec:
    """PoolSpec from an InferencePool object; PoolError when a required field is wrong."""
    name = str((obj.get("metadata") or {}).get("name", ""))
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise PoolError(f"InferencePool {name!r} has no spec")
    sel = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(sel, Mapping) or not sel:
        raise PoolError(f"InferencePool {name!r}: spec.selector.matchLabels must be a "
                        "non-empty map")
    ports = []
    for i, tp in enumerate(spec.get("targetPorts") or []):
        num = tp.get("number") if isinstance(tp, Mapping) else None
        if not isinstance(num, int) or not 0 < num < 65536:
            raise PoolError(f"InferencePool {name!r}: spec.targetPorts[{i}].number must be a "
                            "port number")
        if num not in ports:
            ports.append(num)
    if not ports:
        raise PoolError(f"InferencePool {name!r}: spec.targetPorts needs at least one port")
    ref = spec.get("endpointPickerRef")
    picker = ref.get("name") if isinstance(ref, Mapping) else None
    return PoolSpec(name=name, selector=tuple(sorted((str(k), str(v)) for k, v in sel.items())),
                    ports=tuple(ports), picker=picker)


def selector_matches(labels: Mapping[str, str], selector: tuple[tuple[str, str], ...]) -> bool:
    return all(labels.get(k) == v for k, v in selector)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, Ready condition True, an IP, and not being deleted."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or not status.get("podIP"):
        return False
    if status.get("phase") != "Running":
        return False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def pod_endpoints(pod: Mapping[str, Any], spec: PoolSpec) -> list[Endpoint]:
    """One endpoint per target port of a ready pod matching the selector ([] otherwise)."""
    labels = dict((pod.get("metadata") or {}).get("labels") or {})
    if not selector_matches(labels, spec.selector) or not pod_ready(pod):
        return []
    ip = pod["status"]["podIP"]
    role = _ROLES.get(labels.get(ROLE_LABEL, "").lower(), "both")
    engine = "vllm"
    for key in ENGINE_LABELS:
        value = labels.get(key, "").lower()
        if value in _ENGINES:
            engine = _ENGINES[value]
            break
    return [Endpoint(host=ip, port=port, labels=labels, role=role, engine=engine)  # type: ignore[arg-type]
            for port in spec.ports]


def pod_starting(pod: Mapping[str, Any]) -> bool:
    """On its way to ready: not ready, not being deleted, not failed or finished."""
    meta = pod.get("metadata") or {}
    phase = (pod.get("status") or {}).get("phase")
    return (not meta.get("deletionTimestamp") and phase in (None, "Pending", "Running")
            and not pod_ready(pod))


def created_at(pod: Mapping[str, Any]) -> float | None:
    """`metadata.creationTimestamp` in Unix seconds (None when absent or not RFC 3339)."""
    stamp = (pod.get("metadata") or {}).get("creationTimestamp")
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class PoolState:
    """The pool and its pods as last seen; `endpoints()` is what the data layer should hold."""

    def __init__(self) -> None:
        self.spec: PoolSpec | None = None
        self.pods: dict[str, Mapping[str, Any]] = {}
        #: per pod: when it was asked for, on the caller's clock (`asked`), and whether it has
        #: been ready (once ready, a pod that is not is not starting: it is down)
        self._asked: dict[str, float] = {}
        self._served: set[str] = set()

    def set_pool(self, obj: Mapping[str, Any] | None) -> bool:
        """A new pool object (None: deleted). True when the pod selector changed."""
        old = self.spec.selector if self.spec else None
        self.spec = parse_pool(obj) if obj is not None else None
        new = self.spec.selector if self.spec else None
        return old != new

    def replace_pods(self, pods: list[Mapping[str, Any]]) -> None:
        """The result of a full list."""
        self.pods = {_pod_key(p): p for p in pods}

    def pod_event(self, kind: str, pod: Mapping[str, Any]) -> None:
        """A watch event: ADDED, MODIFIED or DELETED (BOOKMARK and others are ignored)."""
        if kind in ("ADDED", "MODIFIED"):
            self.pods[_pod_key(pod)] = pod
        elif kind == "DELETED":
            self.pods.pop(_pod_key(pod), None)

    def endpoints(self) -> dict[str, Endpoint]:
        if self.spec is None:
            return {}
        out: dict[str, Endpoint] = {}
        for key, pod in self.pods.items():
            for ep in pod_endpoints(pod, self.spec):
                out[ep.name] = ep
                self._served.add(key)
        return out

    def asked(self, now: float, wall: float) -> dict[str, float]:
        """When each replica of the pool was asked for, on the caller's clock (`now` is its
        time, `wall` Unix time): a pod's creation (`now - (wall - creationTimestamp)`), else
        the first time this state saw it. By name: a ready pod's endpoints by theirs (the
        data layer counts them starting until their first scrape); a starting pod's (never
        ready) one per target port as `namespace/pod#port`, not an endpoint (no request goes
        there). Pods gone are forgotten."""
        self._asked = {k: t for k, t in self._asked.items() if k in self.pods}
        self._served &= set(self.pods)
        if self.spec is None:
            return {}
        out: dict[str, float] = {}
        for key, pod in self.pods.items():
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if not selector_matches(labels, self.spec.selector):
                continue
            eps = pod_endpoints(pod, self.spec)
            if not eps and (key in self._served or not pod_starting(pod)):
                continue
            if key not in self._asked:
                created = created_at(pod)
                self._asked[key] = now if created is None else now - max(0.0, wall - created)
            at = self._asked[key]
            names = [ep.name for ep in eps] or [f"{key}#{p}" for p in self.spec.ports]
            out.update((name, at) for name in names)
        return out


def _signature(ep: Endpoint) -> tuple[Any, ...]:
    return (tuple(sorted(ep.labels.items())), ep.role, ep.engine)


class Reconciler:
    """Applies the desired endpoint set to a data layer, touching only what changed."""

    def __init__(self, data: Any, model: str) -> None:
        self.data = data
        self.model = model
        self.applied: dict[str, tuple[Any, ...]] = {}

    def apply(self, desired: Mapping[str, Endpoint]) -> tuple[list[str], list[str]]:
        """Returns (added or updated, removed) endpoint names."""
        added, removed = [], []
        for name in list(self.applied):
            if name not in desired:
                self.data.remove_endpoint(self.model, name)
                del self.applied[name]
                removed.append(name)
        for name, ep in desired.items():
            sig = _signature(ep)
            if self.applied.get(name) != sig:
                self.data.add_endpoint(self.model, ep)
                self.applied[name] = sig
                added.append(name)
        return added, removed


def default_namespace() -> str:
    """The pod's own namespace when running in a cluster, else `default`."""
    try:
        return NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


class PoolDiscovery:
    """List+watch an InferencePool and its pods; keep the data layer's pool in step."""

    def __init__(self, data: Any, model: str, *, pool_name: str, namespace: str | None = None,
                 on_synced: Callable[[bool], Awaitable[None]] | None = None,
                 resync: float = 300.0, api_client: Any = None, retry: float = 1.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.data = data
        self.wall = wall
        self.model = model
        self.pool_name = pool_name
        self.namespace = namespace or default_namespace()
        self.on_synced = on_synced
        self.resync = resync
        self.retry = retry
        self.state = PoolState()
        self.reconciler = Reconciler(data, model)
        self.synced = False
        self._api = api_client
        self._own_api = api_client is None
        self._relist = asyncio.Event()
        self._pool_seen = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect (in-cluster service account, else ~/.kube/config) and start watching."""
        if self._api is None:
            from kubernetes_asyncio import client, config
            try:
                config.load_incluster_config()
            except config.ConfigException:
                try:
                    await config.load_kube_config()
                except (config.ConfigException, OSError) as exc:
                    raise PoolError(f"no Kubernetes API to discover InferencePool "
                                    f"{self.pool_name!r} from: not in a cluster and no usable "
                                    f"kubeconfig ({exc})") from None
            self._api = client.ApiClient()
        self._tasks = [asyncio.create_task(self._pool_loop(), name="k8s-pool"),
                       asyncio.create_task(self._pod_loop(), name="k8s-pods")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._own_api and self._api is not None:
            await self._api.close()

    def _apply(self) -> None:
        added, removed = self.reconciler.apply(self.state.endpoints())
        self.data.set_starting(self.model, self.state.asked(self.data.now(), self.wall()))
        if added or removed:
            log.info("pool %s/%s: +%s -%s", self.namespace, self.pool_name, added, removed)

    # -- the pool ------------------------------------------------------------------------------

    def _set_pool(self, obj: Mapping[str, Any] | None) -> None:
        try:
            changed = self.state.set_pool(obj)
        except PoolError as exc:
            log.error("%s; keeping the previous spec", exc)
            return
        if obj is None:
            log.warning("InferencePool %s/%s is gone: no endpoints", self.namespace,
                        self.pool_name)
        self._pool_seen.set()
        if changed:
            self._relist.set()
        self._apply()

    async def _pool_loop(self) -> None:
        from kubernetes_asyncio import client, watch
        from kubernetes_asyncio.client.exceptions import ApiException
        api = client.CustomObjectsApi(self._api)
        while True:
            try:
                try:
                    obj = await api.get_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, self.pool_name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    obj = None
                self._set_pool(obj)
                rv = (obj or {}).get("metadata", {}).get("resourceVersion")
                async with watch.Watch() as w:
                    async for ev in w.stream(api.list_namespaced_custom_object, GROUP, VERSION,
                                             self.namespace, PLURAL,
                                             field_selector=f"metadata.name={self.pool_name}",
                                             resource_version=rv,
                                             timeout_seconds=int(self.resync)):
                        kind, raw = ev["type"], ev["raw_object"]
                        if kind in ("ADDED", "MODIFIED"):
                            self._set_pool(raw)
                        elif kind == "DELETED":
                            self._set_pool(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - API errors, 410 Gone, broken streams
                log.warning("watching InferencePool %s/%s: %s; retrying", self.namespace,
                            self.pool_name, exc)
                await asyncio.sleep(self.retry)

    # -- the pods ------------------------------------------------------------------------------

    async def _pod_loop(self) -> None:
        from kubernetes_asyncio import client
        api = client.CoreV1Api(self._api)
        await self._pool_seen.wait()
        while True:
            self._relist.clear()
            try:
                await self._list_and_watch(api)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("watching pods of %s/%s: %s; re-listing", self.namespace,
                            self.pool_name, exc)
                await asyncio.sleep(self.retry)

    async def _list_and_watch(self, api: Any) -> None:
        from kubernetes_asyncio import watch
        spec = self.state.spec
        if spec is None:  # pool deleted: nothing to watch until it comes back
            self.state.replace_pods([])
            self._apply()
            await self._relist.wait()
            return
        selector = spec.label_selector
        resp = await api.list_namespaced_pod(self.namespace, label_selector=selector,
                                             _preload_content=False)
        listing = await resp.json()
        self.state.replace_pods(listing.get("items") or [])
        self._apply()
        if not self.synced:
            self.synced = True
            if self.on_synced is not None:
                await self.on_synced(True)
        rv = (listing.get("metadata") or {}).get("resourceVersion")

        async def follow() -> None:
            async with watch.Watch() as w:
                async for ev in w.stream(api.list_namespaced_pod, self.namespace,
                                         label_selector=selector, resource_version=rv,
                                         timeout_seconds=int(self.resync)):
                    self.state.pod_event(ev["type"], ev["raw_object"])
                    self._apply()

        watcher = asyncio.create_task(follow())
        relist = asyncio.create_task(self._relist.wait())
        try:
            done, _ = await asyncio.wait({watcher, relist}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                watcher.result()  # re-raise a watch error (e.g. 410 Gone): the loop re-lists
        finally:
            for t in (watcher, relist):
                t.cancel()
            await asyncio.gather(watcher, relist, return_exceptions=True)
