"""Model-server endpoints and what the gateway knows about them.

An `Endpoint` joins three kinds of state: identity (address, labels, role), the latest scraped
metrics (`EndpointMetrics`, replaced whole on each scrape) and the gateway's own bookkeeping of
requests it has sent there and not yet seen finish (`in_flight_*`), which is fresher than any
scrape. A `Pool` is the set of endpoints serving one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Literal

__all__ = ["Endpoint", "EndpointMetrics", "Engine", "parse_endpoint", "Pool", "Role"]

Role = Literal["both", "prefill", "decode"]
Engine = Literal["vllm", "sglang", "trtllm"]


@dataclass(slots=True, frozen=True)
class EndpointMetrics:
    """One scrape of a model server's /metrics, normalised across engines.

    `scraped_at` is the core time (seconds, the caller's clock) the scrape completed; None means
    never scraped.
    """

    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    block_size: int | None = None
    num_blocks: int | None = None
    max_lora: int | None = None
    running_loras: tuple[str, ...] = ()
    waiting_loras: tuple[str, ...] = ()
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None
    scraped_at: float | None = None
    #: the `model_name` labels of the page's queue gauge: what the server says it serves
    model_names: tuple[str, ...] = ()


@dataclass(slots=True, eq=False)
class Endpoint:
    """One model-server replica (one host:port)."""

    host: str
    port: int
    labels: dict[str, str] = field(default_factory=dict)
    role: Role = "both"
    engine: Engine = "vllm"
    scheme: str = "http"
    metrics: EndpointMetrics = field(default_factory=EndpointMetrics)
    #: gateway bookkeeping: requests and prompt tokens dispatched here and not yet finished
    in_flight_requests: int = 0
    in_flight_tokens: int = 0
    #: False while health checks or outlier detection keep it out of rotation
    healthy: bool = True
    #: core time it last sent the gateway an answer's first bytes or its end (None: never):
    #: the gateway's own proof it is alive when a scrape of its /metrics runs late
    answered_at: float | None = None
    #: dispatches and finishes accounted here so far: the data layer scrapes soon after its
    #: own traffic changed the endpoint's state
    books_changes: int = 0
    #: seconds until the scrape planned after the last one (None: the rule's scrape interval);
    #: the data layer slows the scrapes of idle endpoints, and liveness follows (`is_live`)
    scrape_period: float | None = None
    #: the `ip:port` form used in headers, metrics labels and logs (made once: the scheduler
    #: reads it for every candidate of every decision; host and port never change)
    name: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if ":" in self.host and not self.host.startswith("["):
            self.name = f"[{self.host}]:{self.port}"
        else:
            self.name = f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.name}"

    def __hash__(self) -> int:
        return hash((self.host, self.port))

    def __repr__(self) -> str:
        return f"Endpoint({self.name})"

    def is_stale(self, now: float, staleness: float) -> bool:
        """True when the last scrape is older than `staleness` seconds, or never happened."""
        at = self.metrics.scraped_at
        return at is None or now - at > staleness

    def is_live(self, now: float, window: float) -> bool:
        """True when it was scraped or answered a request within the last `window` seconds."""
        at = self.metrics.scraped_at
        if at is not None and now - at <= window:
            return True
        heard = self.answered_at
        return heard is not None and now - heard <= window

    def on_dispatch(self, prompt_tokens: int) -> None:
        """Account a request sent to this endpoint."""
        self.in_flight_requests += 1
        self.in_flight_tokens += prompt_tokens
        self.books_changes += 1

    def on_finish(self, prompt_tokens: int) -> None:
        """Account a request finished (completed, failed or cancelled) on this endpoint."""
        self.in_flight_requests = max(0, self.in_flight_requests - 1)
        self.in_flight_tokens = max(0, self.in_flight_tokens - prompt_tokens)
        self.books_changes += 1


def parse_endpoint(url: str, **kw: object) -> Endpoint:
    """Endpoint from `http://host:port`, `host:port` or `[v6]:port`."""
    scheme = "http"
    rest = url.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
    rest = rest.rstrip("/")
    if "/" in rest:
        raise ValueError(f"endpoint {url!r} must not have a path")
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"endpoint {url!r} must look like http://host:port")
    return Endpoint(host=host, port=int(port), scheme=scheme, **kw)  # type: ignore[arg-type]


class Pool:
    """The endpoints serving one model, keyed by name; updated by discovery."""

    def __init__(self, model: str, endpoints: Iterable[Endpoint] = ()) -> None:
        self.model = model
        self._endpoints: dict[str, Endpoint] = {}
        for ep in endpoints:
            self.add(ep)

    def add(self, ep: Endpoint) -> Endpoint:
        """Add an endpoint, or return the existing one with the same name (state kept)."""
        existing = self._endpoints.get(ep.name)
        if existing is not None:
            existing.labels = ep.labels
            existing.role = ep.role
            existing.engine = ep.engine
            return existing
        self._endpoints[ep.name] = ep
        return ep

    def remove(self, name: str) -> Endpoint | None:
        return self._endpoints.pop(name, None)

    def get(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints.values())

    def __len__(self) -> int:
        return len(self._endpoints)

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())
