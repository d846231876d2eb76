"""Prometheus metrics of the semantic router, registered on a registry the caller passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: classifier latency buckets, seconds (it runs in tens of microseconds)
LATENCY_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01)


class SemanticMetrics:
    """Counters and a histogram; pass `registry=None` for unregistered (test) metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.classifications = Counter(
            "inferoute_semantic_classifications", "Prompts classified, by category "
            "(category=\"none\" when below the confidence threshold)", ["category"],
            registry=registry)
        self.routed = Counter("inferoute_semantic_routed_requests",
                              "Auto-model requests routed, by selected model", ["model"],
                              registry=registry)
        self.latency = Histogram("inferoute_semantic_classifier_seconds",
                                 "Time to embed and classify one prompt", buckets=LATENCY_BUCKETS,
                                 registry=registry)
        self.cache = Counter("inferoute_semantic_cache_lookups",
                             "Semantic-cache lookups, by result (hit, miss)", ["result"],
                             registry=registry)
        self.cache_stores = Counter("inferoute_semantic_cache_stores",
                                    "Replies stored in the semantic cache", registry=registry)
        self.blocks = Counter("inferoute_semantic_blocked_requests",
                              "Requests refused by a guard, by reason (pii, jailbreak)",
                              ["reason"], registry=registry)
        self.pii = Counter("inferoute_semantic_pii_detections",
                           "Requests containing personal data, by type", ["type"],
                           registry=registry)
