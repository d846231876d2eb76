"""Prometheus metrics of the gateway and the ext_proc picker, under the EPP's metric names.

Shell-neutral: the HTTP gateway and the Envoy ext_proc picker both create one `Observability`
and call its methods at the same points of a request's life; the core never touches it.
Metrics live in a private `CollectorRegistry` (not the process-global one) so several
instances can coexist in tests.

Names and labels follow the Gateway API Inference Extension endpoint picker:

- `inference_objective_request_total{model_name,target_model_name}` (counter)
- `inference_objective_request_error_total{model_name,target_model_name,error_code}`
- `inference_objective_request_duration_seconds{model_name,target_model_name}` (histogram)
- `inference_objective_request_ttft_seconds{...}`, `..._normalized_time_per_output_token_seconds`
- `inference_objective_request_sizes`, `inference_objective_response_sizes` (bytes)
- `inference_objective_input_tokens`, `inference_objective_output_tokens` (histograms)
- `inference_objective_running_requests{model_name}` (gauge)
- `inference_pool_average_kv_cache_utilization{name}`, `inference_pool_average_queue_size{name}`,
  `inference_pool_ready_pods{name}` (gauges, refreshed from the data layer on each scrape)
- `inference_extension_scheduler_e2e_duration_seconds` (histogram)
- `inference_extension_prefix_indexer_hit_ratio` (histogram of matched/total prefix blocks)
- `inference_extension_flow_control_queue_size{inference_pool,priority}` ("all" = every band),
  `inference_extension_flow_control_queue_bytes{inference_pool}`,
  `inferoute_flow_control_reserved_slots{inference_pool}`,
  `inferoute_flow_control_top_priority_requests_total{inference_pool}` and
  `inferoute_flow_control_top_priority_without_free_slot_total` (when admission is on)

plus inferoute's own per-endpoint gauges: `inferoute_endpoint_in_flight_requests{pool,endpoint}`,
`inferoute_endpoint_ready{pool,endpoint}`, `inferoute_endpoint_waiting_requests`,
`inferoute_endpoint_running_requests`, `inferoute_endpoint_kv_cache_utilization`,
`inferoute_upstream_retries_total{pool}`, with `autoscaling:` configured
`inferoute_latency_prediction_error_ratio{name,target}` (median absolute relative error of
the pool's learned TTFT / TPOT model, with `latency-slo-scorer` configured),
`inferoute_pool_desired_replicas{name}` (the replicas the pool needs for its TTFT target,
a real count the HPA rounds up, `core.autoscale`), with `kv-fit-filter` in the pool's policy
(`inferoute`) `inferoute_pool_kv_fit_holding{name}` (1 while requests wait in the gateway for
KV room) and `inferoute_pool_prefix_recompute_ratio{name}` (the share of returning prompt
families' prefixes the servers recompute, once measured),
`inferoute_endpoint_scrapes_total{pool,endpoint}` and
`inferoute_endpoint_scrape_failures_total{pool,endpoint}`; and how far the shared routing state
has travelled:
`inferoute_kv_event_batches_total{pool,endpoint}` and `inferoute_kv_event_last_sequence{pool,
endpoint}` (KV-event batches applied from each engine, precise scoring), and
`inferoute_prefix_share_published_ops_total{stream}`, `..._applied_ops_total{stream}`,
`..._pending_ops{stream}` (index changes sent to, read from and waiting for Redis, scale-out),
`inferoute_endpoint_remote_in_flight_requests{pool,endpoint}` (the other replicas' load).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Mapping

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,
                               Histogram, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .core.autoscale import Autoscaler

if TYPE_CHECKING:
    from .datalayer.runtime import DataLayer

_LATENCY_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2, 3, 4, 5, 6,
                    8, 10, 15, 20, 30, 45, 60, 120, 180, 240, 300, 360, 480, 600, 900, 1200,
                    1800, 2700, 3600)
_TPOT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
_SIZE_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072,
                 262144, 524288, 1048576, 2097152, 4194304, 8388608, 16777216, 33554432,
                 67108864, 134217728, 268435456, 536870912, 1073741824)
_INPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32778,
                        65536, 131072, 262144, 524288, 1048576)
_OUTPUT_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
_SCHED_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
_RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_MT = ("model_name", "target_model_name")
_EP = ("pool", "endpoint")


def pool_thrash(scheduler: Any) -> tuple[bool, float | None] | None:
    """Whether the pool's KV-fit release holds requests, and the recompute share it measured
    (None before a sample), from the first plugin of its policy that reports them
    (`kv-fit-filter`); None when the policy has none."""
    for plugin in scheduler.plugins.values():
        thrash = getattr(plugin, "thrash", None)
        if callable(thrash):
            state: tuple[bool, float | None] = thrash()
            return state
    return None


class Observability:
    """The metrics registry plus one method per event the shells report."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("inference_objective_request", "Requests per model and target "
                                "model.", _MT, registry=r)
        self.errors = Counter("inference_objective_request_error", "Failed requests per model, "
                              "target model and error code.", (*_MT, "error_code"), registry=r)
        self.duration = Histogram("inference_objective_request_duration_seconds", "Request "
                                  "latency, arrival to last byte.", _MT,
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("inference_objective_request_ttft_seconds", "Arrival to the first "
                              "response byte from the model server.", _MT,
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.ntpot = Histogram("inference_objective_normalized_time_per_output_token_seconds",
                               "Request latency divided by output tokens.", _MT,
                               buckets=_TPOT_BUCKETS, registry=r)
        self.request_sizes = Histogram("inference_objective_request_sizes", "Request body "
                                       "bytes.", _MT, buckets=_SIZE_BUCKETS, registry=r)
        self.response_sizes = Histogram("inference_objective_response_sizes", "Response body "
                                        "bytes.", _MT, buckets=_SIZE_BUCKETS, registry=r)
        self.input_tokens = Histogram("inference_objective_input_tokens", "Prompt tokens per "
                                      "request (from usage).", _MT,
                                      buckets=_INPUT_TOKEN_BUCKETS, registry=r)
        self.output_tokens = Histogram("inference_objective_output_tokens", "Completion tokens "
                                       "per request (from usage).", _MT,
                                       buckets=_OUTPUT_TOKEN_BUCKETS, registry=r)
        self.running = Gauge("inference_objective_running_requests", "Requests in flight per "
                             "model.", ("model_name",), registry=r)
        self.pool_kv = Gauge("inference_pool_average_kv_cache_utilization", "Mean KV-cache "
                             "utilisation of the pool's ready endpoints.", ("name",), registry=r)
        self.pool_queue = Gauge("inference_pool_average_queue_size", "Mean waiting requests of "
                                "the pool's ready endpoints.", ("name",), registry=r)
        self.pool_ready = Gauge("inference_pool_ready_pods", "Ready endpoints in the pool.",
                                ("name",), registry=r)
        self.scheduler_e2e = Histogram("inference_extension_scheduler_e2e_duration_seconds",
                                       "Scheduling decision latency.", (),
                                       buckets=_SCHED_BUCKETS, registry=r)
        self.prefix_hit_ratio = Histogram("inference_extension_prefix_indexer_hit_ratio",
                                          "Matched / total prompt blocks on the chosen "
                                          "endpoint.", (), buckets=_RATIO_BUCKETS, registry=r)
        self.in_flight = Gauge("inferoute_endpoint_in_flight_requests", "Requests the gateway "
                               "has sent to the endpoint and not seen finish.", _EP, registry=r)
        self.ep_ready = Gauge("inferoute_endpoint_ready", "1 when the endpoint is ready.", _EP,
                              registry=r)
        self.ep_waiting = Gauge("inferoute_endpoint_waiting_requests", "Scraped waiting "
                                "requests.", _EP, registry=r)
        self.ep_running = Gauge("inferoute_endpoint_running_requests", "Scraped running "
                                "requests.", _EP, registry=r)
        self.ep_kv = Gauge("inferoute_endpoint_kv_cache_utilization", "Scraped KV-cache "
                           "utilisation (0-1).", _EP, registry=r)
        self.retries = Counter("inferoute_upstream_retries", "Requests retried on another "
                               "endpoint after a connect failure, a first-byte timeout or "
                               "a 5xx.", ("pool",), registry=r)
        self.over_limit = Counter("inferoute_concurrency_limit_rejections", "API requests "
                                  "refused with 503 because maxConcurrentRequests were in "
                                  "progress.", registry=r)
        self.queue_size = Gauge("inference_extension_flow_control_queue_size", "Requests "
                                "waiting in the gateway's flow-control queue.",
                                ("inference_pool", "priority"), registry=r)
        self.reserved = Gauge("inferoute_flow_control_reserved_slots", "Batch slots the pool "
                              "keeps free for the top-priority objective "
                              "(flowControl.reserve; with auto, as last computed).",
                              ("inference_pool",), registry=r)
        self.queue_bytes = Gauge("inference_extension_flow_control_queue_bytes", "Request body "
                                 "bytes waiting in the flow-control queue.", ("inference_pool",),
                                 registry=r)
        self.desired = Gauge("inferoute_pool_desired_replicas", "Replicas the pool needs to "
                             "meet the configured TTFT target (docs/kubernetes.md).", ("name",),
                             registry=r)
        self.latency_error = Gauge("inferoute_latency_prediction_error_ratio", "Median "
                                   "absolute relative error of the pool's learned latency "
                                   "model over its last checked predictions (0.1 = 10%).",
                                   ("name", "target"), registry=r)
        self.kv_fit_holding = Gauge("inferoute_pool_kv_fit_holding", "1 while the pool's "
                                    "KV-fit rule holds requests in the gateway until their KV "
                                    "need fits a replica (the caches thrash), else 0.",
                                    ("name",), registry=r)
        self.recompute = Gauge("inferoute_pool_prefix_recompute_ratio", "Share of returning "
                               "prompt families' prefixes the pool's servers recompute (0.1 = "
                               "10%), as the KV-fit rule measures it.", ("name",), registry=r)
        #: the desired-replicas estimator, fed by the router (set by `watch` when configured)
        self.autoscaler: Autoscaler | None = None
        self._data: DataLayer | None = None
        self._queue_stats: Callable[[], Mapping[str, Any]] | None = None
        #: labelled children by (metric, labels): `labels()` validates and locks on every
        #: call, which adds up to tens of microseconds per request on the hot path
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._endpoint_series: set[tuple[str, str]] = set()
        #: per pool, the priorities whose queue size was exported: a band that empties is
        #: dropped from the queue's stats, and its series must then read 0, not its last size
        self._priority_series: dict[str, set[str]] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 100_000:  # label sets are bounded by config; be safe
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    # ------------------------------------------------------------------ request events

    def request_started(self, model: str, target_model: str, body_bytes: int = 0) -> None:
        """A request was received and parsed (before scheduling)."""
        self._child(self.requests, model, target_model).inc()
        self._child(self.running, model).inc()
        if body_bytes:
            self._child(self.request_sizes, model, target_model).observe(body_bytes)

    def scheduled(self, duration: float, prefix_hit_ratio: float | None = None) -> None:
        """A scheduling decision took `duration` seconds."""
        self.scheduler_e2e.observe(duration)
        if prefix_hit_ratio is not None:
            self.prefix_hit_ratio.observe(prefix_hit_ratio)

    def dispatched(self, pool: str, endpoint: str) -> None:
        """A request was sent to `endpoint` (call `released` exactly once later)."""
        self._child(self.in_flight, pool, endpoint).inc()

    def released(self, pool: str, endpoint: str) -> None:
        """A request sent to `endpoint` is over, whatever its outcome."""
        self._child(self.in_flight, pool, endpoint).dec()

    def retried(self, pool: str) -> None:
        self._child(self.retries, pool).inc()

    def over_concurrency_limit(self) -> None:
        self.over_limit.inc()

    def request_finished(self, model: str, target_model: str, *, latency: float,
                         ttft: float | None = None, usage: Mapping[str, Any] | None = None,
                         response_bytes: int = 0, error_code: str | None = None) -> None:
        """The request is over; pair of `request_started`. `error_code` set means it failed
        (an HTTP status as a string, or e.g. 'client_disconnect')."""
        self._child(self.running, model).dec()
        if error_code is not None:
            self._child(self.errors, model, target_model, error_code).inc()
            return
        self._child(self.duration, model, target_model).observe(latency)
        if ttft is not None:
            self._child(self.ttft, model, target_model).observe(ttft)
        if response_bytes:
            self._child(self.response_sizes, model, target_model).observe(response_bytes)
        if usage:
            prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
            completion = usage.get("completion_tokens", usage.get("output_tokens"))
            if isinstance(prompt, int) and prompt > 0:
                self._child(self.input_tokens, model, target_model).observe(prompt)
            if isinstance(completion, int) and completion > 0:
                self._child(self.output_tokens, model, target_model).observe(completion)
                self._child(self.ntpot, model, target_model).observe(latency / completion)

    def request_rejected(self, model: str, target_model: str, error_code: str) -> None:
        """A request refused before scheduling (bad body, unknown model, no endpoint)."""
        self._child(self.requests, model, target_model).inc()
        self._child(self.errors, model, target_model, error_code).inc()

    # ------------------------------------------------------------------ pool state

    def watch(self, data: "DataLayer",
              queue_stats: Callable[[], Mapping[str, Any]] | None = None) -> None:
        """Refresh pool and endpoint gauges from `data` on every `render()`; `queue_stats`
        (e.g. `AdmissionController.queue_stats`) feeds the flow-control gauges. With
        `autoscaling:` configured, an `Autoscaler` listens to the router."""
        spec = data.config.autoscale_spec()
        if spec is not None and self.autoscaler is None:
            self.autoscaler = Autoscaler(spec)
            data.router.listeners.append(self.autoscaler)
        if self._data is None:
            self.registry.register(_SharedStateCollector(data))
        self._data = data
        if queue_stats is not None:
            if self._queue_stats is None:
                self.registry.register(_FlowControlCollector(self))
            self._queue_stats = queue_stats

    def queue_stats(self) -> Mapping[str, Any] | None:
        """{pool: QueueStats} of the admission controller being watched (None: admission
        off)."""
        return None if self._queue_stats is None else self._queue_stats()

    def refresh(self) -> None:
        if self._queue_stats is not None:
            for pool, st in self._queue_stats().items():
                self.queue_bytes.labels(pool).set(st.bytes)
                self.reserved.labels(pool).set(st.reserved)
                self.queue_size.labels(pool, "all").set(st.requests)
                bands = {str(prio): n for prio, n in st.by_priority.items()}
                exported = self._priority_series.setdefault(pool, set())
                for prio in exported - bands.keys():  # bands that emptied
                    self.queue_size.labels(pool, prio).set(0)
                for prio, n in bands.items():
                    self.queue_size.labels(pool, prio).set(n)
                exported.update(bands)
        data = self._data
        if data is None:
            return
        now = data.now()
        current = {(mp.model, ep.name) for mp, ep in data.endpoints()}
        for labels in self._endpoint_series - current:  # endpoints discovery removed
            for gauge in (self.ep_ready, self.ep_waiting, self.ep_running, self.ep_kv,
                          self.in_flight):
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
                self._children.pop((id(gauge), labels), None)
        self._endpoint_series = current
        for mp in data.router.pools.values():
            ready = [ep for ep in mp.pool if data.is_ready(ep, now)]
            self.pool_ready.labels(mp.model).set(len(ready))
            n = len(ready) or 1  # no ready endpoint: 0, not the last known average
            self.pool_kv.labels(mp.model).set(sum(ep.metrics.kv_usage for ep in ready) / n)
            self.pool_queue.labels(mp.model).set(sum(ep.metrics.waiting for ep in ready) / n)
            for plugin in mp.scheduler.plugins.values():
                errors = getattr(plugin, "latency_errors", None)
                if callable(errors):
                    for target, value in errors().items():
                        if value is not None:
                            self.latency_error.labels(mp.model, target).set(value)
            thrash = pool_thrash(mp.scheduler)
            if thrash is not None:
                holding, share = thrash
                self.kv_fit_holding.labels(mp.model).set(1 if holding else 0)
                if share is not None:
                    self.recompute.labels(mp.model).set(share)
            if self.autoscaler is not None:
                est = self.autoscaler.estimate(mp.model, now, ready,
                                               data.starting(mp.model, now))
                self.desired.labels(mp.model).set(est.gauge)
            for ep in mp.pool:
                labels = (mp.model, ep.name)
                self.ep_ready.labels(*labels).set(1 if ep in ready else 0)
                self.ep_waiting.labels(*labels).set(ep.metrics.waiting)
                self.ep_running.labels(*labels).set(ep.metrics.running)
                self.ep_kv.labels(*labels).set(ep.metrics.kv_usage)
                self.in_flight.labels(*labels)  # show 0 for endpoints never used

    def render(self) -> tuple[bytes, str]:
        """The exposition and its content type, for a /metrics handler."""
        self.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _FlowControlCollector(Collector):
    """The flow-control counters, read from the admission controller's queue stats at scrape
    time: top-priority arrivals, and those that found no free batch slot (the reserve aims at
    `flowControl.reserveMiss` of them, docs/admission.md)."""

    def __init__(self, obs: Observability) -> None:
        self._obs = obs

    def describe(self) -> list[Metric]:
        return []  # nothing read at registration

    def collect(self) -> Iterator[Metric]:
        arrivals = CounterMetricFamily(
            "inferoute_flow_control_top_priority_requests", "Requests of the top-priority "
            "objective scheduled by the dispatch budget.", labels=["inference_pool"])
        missed = CounterMetricFamily(
            "inferoute_flow_control_top_priority_without_free_slot", "Top-priority requests "
            "that found no free batch slot (queued, or sent where they wait in a model "
            "server).", labels=["inference_pool"])
        for pool, st in (self._obs.queue_stats() or {}).items():
            arrivals.add_metric([pool], st.top_arrivals)
            missed.add_metric([pool], st.top_without_slot)
        yield from (arrivals, missed)


class _SharedStateCollector(Collector):
    """Scrape-time progress of what the gateway learns from outside: metric scrapes per
    endpoint, the KV-event subscribers and the Redis prefix shares (with the engines' own counts,
    or the other replicas' published ops, these tell how far behind its view is)."""

    def __init__(self, data: "DataLayer") -> None:
        self._data = data

    def describe(self) -> list[Metric]:
        return []  # nothing read at registration

    def collect(self) -> Iterator[Metric]:
        scrapes = CounterMetricFamily("inferoute_endpoint_scrapes", "Metric scrapes of the "
                                      "endpoint started.", labels=_EP)
        failures = CounterMetricFamily("inferoute_endpoint_scrape_failures", "Metric scrapes of "
                                       "the endpoint that failed.", labels=_EP)
        for pool, endpoint, scraper in self._data.scrape_stats():
            scrapes.add_metric([pool, endpoint], scraper.scrapes)
            failures.add_metric([pool, endpoint], scraper.failures)
        batches = CounterMetricFamily("inferoute_kv_event_batches", "KV-event batches applied "
                                      "from the endpoint's engine.", labels=_EP)
        last = GaugeMetricFamily("inferoute_kv_event_last_sequence", "Sequence number of the "
                                 "last KV-event batch applied (-1: none yet).", labels=_EP)
        for pool, endpoint, st in self._data.kv_event_stats():
            batches.add_metric([pool, endpoint], st.batches)
            last.add_metric([pool, endpoint], -1 if st.last_seq is None else st.last_seq)
        published = CounterMetricFamily("inferoute_prefix_share_published_ops", "Prefix-index "
                                        "changes this replica wrote to Redis.", labels=["stream"])
        applied = CounterMetricFamily("inferoute_prefix_share_applied_ops", "Prefix-index "
                                      "changes of other replicas applied here.",
                                      labels=["stream"])
        pending = GaugeMetricFamily("inferoute_prefix_share_pending_ops", "Prefix-index changes "
                                    "waiting to be written to Redis.", labels=["stream"])
        remote = GaugeMetricFamily("inferoute_endpoint_remote_in_flight_requests", "Requests "
                                   "the other gateway replicas have in flight on the endpoint.",
                                   labels=_EP)
        for share in self._data.prefix_shares():
            if share.index is not None:
                published.add_metric([share.model], share.published)
                applied.add_metric([share.model], share.applied)
                pending.add_metric([share.model], len(share.index.outbox))
            if share.endpoints is not None:
                for ep in share.endpoints():
                    remote.add_metric([share.model, ep.name], share.remote_in_flight(ep.name)[0])
        yield from (scrapes, failures, batches, last, published, applied, pending, remote)
