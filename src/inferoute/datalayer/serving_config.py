"""The serving configuration: which models, which endpoints, which scheduler; from YAML or flags.

    # inferoute serve --config serving.yaml
    host: 0.0.0.0
    port: 8080
    scrapeInterval: 50ms        # per-endpoint /metrics scrape period while fresh load matters
    scrapeIdleInterval: 1s      # ... otherwise (idle endpoint, or no plugin reads its load)
    scrapeMaxDuty: 0.05         # optional, off by default: our scrapes at most this share of a server's time
    scrapeTimeout: 1s
    readyWindow: 5s             # an endpoint is ready while its last good scrape is this recent
    maxBodyBytes: 16777216      # larger request bodies get 413
    drainTimeout: 60s           # on SIGTERM, how long requests in flight may still finish
    maxHeaderBytes: 8190        # longest request line / header field (larger: 400 or 431)
    maxConcurrentRequests: 4096 # API requests in progress; beyond it: 503 + Retry-After
    connections:                # client connections to the gateway (docs/reliability.md)
      maxConnections: 10000     # open at once (at most the open-file limit - 256); beyond: 503
      headerTimeout: 10s        # a new connection's request head must be in by then (else 408)
      bodyTimeout: 60s          # a request body must be in by then (else 408)
      keepAliveTimeout: 15s     # an idle kept-alive connection is closed after this
    upstream:
      connectTimeout: 5s        # TCP connect to a model server (then retried elsewhere)
      firstByteTimeout: 600s    # until the first body byte (then retried elsewhere)
      idleTimeout: 120s         # longest gap between two chunks after the first
      retryBackoff: 25ms        # retry k waits uniform(0, min(retryBackoffMax, 25ms * 2^(k-1)))
      retryBackoffMax: 250ms
      requestTimeout: null      # optional cap on a whole request, headers to last byte
    pools:
    - model: Qwen/Qwen3-32B
      aliases: [qwen]
      loraAdapters: [sql-lora]
      engine: vllm              # vllm | sglang | trtllm | auto (from the metric names)
      endpoints: [http://10.0.0.1:8000, http://10.0.0.2:8000]
      scheduler: inferoute      # packaged policy (the default), EndpointPickerConfig path, inline
      tokenizer: /models/Qwen3  # precise scoring: local HF tokenizer dir/file, or "words" (sim)
      kvEvents: {pubPort: 5557, replayPort: 5558}   # precise scoring: the engines' KV events
    health:                     # passive outlier detection (on) and active checks (off)
      outlier: {consecutiveFailures: 5, baseEjection: 5s}
      active: {enabled: false, path: /health, interval: 5s}
    tenants: tenants.yaml       # API keys + limits (default: $INFEROUTE_API_KEYS, else no auth)
    redis: null                 # e.g. redis://10.0.0.9:6379/0: replicas share rate limits,
                                # prefix-index inserts and in-flight load (docs/precise-routing.md)
    semantic: null              # semantic routing YAML (docs/semantic.md): "auto", guards, cache
    autoscaling: {ttftTarget: 1s}   # inferoute_pool_desired_replicas (docs/kubernetes.md); off when absent
    dashboard: false            # GET /dashboard, the live page (docs/gateway.md)
    admission:                  # optional; see docs/admission.md (off when absent)
      objectives: [{name: batch, priority: -1}]
      flowControl: {enabled: true, ttl: 30s}

Durations accept `50ms`, `0.2s`, `1m` or a number of seconds. Every mistake raises
`ConfigError` naming the key, e.g. `pools.0.endpoints.1: endpoint 'x' must look like
http://host:port`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

import pydantic

from ..configfiles import read_admission_file, read_yaml_file, resolve_config
from ..core.autoscale import AutoscaleSpec, parse_autoscale_spec
from ..core.admission import AdmissionConfig, parse_admission_config
from ..core.candidates import DEFAULT_READY_WINDOW, DEFAULT_SCRAPE_INTERVAL
from ..core.endpoint import Endpoint, parse_endpoint
from ..core.health import ActiveCheckSpec, OutlierSpec
from ..core.errors import ConfigError, explain_validation
from ..core.scheduling.config import EndpointPickerConfig, parse_config, parse_duration
from .scrape_pacing import DEFAULT_IDLE_INTERVAL

_CAMEL = pydantic.ConfigDict(extra="forbid", populate_by_name=True)


def _duration(v: Any) -> Any:
    return parse_duration(v) if isinstance(v, str) else v


class UpstreamConfig(pydantic.BaseModel):
    """Timeouts and retry pacing of the proxied model-server requests, in seconds.

    `readTimeout` is the deprecated single timeout of earlier versions: when given it sets
    both `firstByteTimeout` and `idleTimeout` (an explicit one of those wins).
    """

    model_config = _CAMEL
    connect_timeout: float = pydantic.Field(5.0, alias="connectTimeout", gt=0)
    #: until the first body byte (queued prefill of a long prompt can take minutes)
    first_byte_timeout: float = pydantic.Field(600.0, alias="firstByteTimeout", gt=0)
    #: longest gap between two body chunks once the first has arrived
    idle_timeout: float = pydantic.Field(120.0, alias="idleTimeout", gt=0)
    read_timeout: float | None = pydantic.Field(None, alias="readTimeout", gt=0)
    request_timeout: float | None = pydantic.Field(None, alias="requestTimeout", gt=0)
    #: retry k (k = 1, 2) waits uniform(0, min(retryBackoffMax, retryBackoff * 2**(k-1)))
    retry_backoff: float = pydantic.Field(0.025, alias="retryBackoff", ge=0)
    retry_backoff_max: float = pydantic.Field(0.25, alias="retryBackoffMax", ge=0)

    _d = pydantic.field_validator("connect_timeout", "first_byte_timeout", "idle_timeout",
                                  "read_timeout", "request_timeout", "retry_backoff",
                                  "retry_backoff_max", mode="before")(_duration)

    @pydantic.model_validator(mode="after")
    def _read_timeout_alias(self) -> "UpstreamConfig":
        if self.read_timeout is not None:
            given = self.model_fields_set
            if "first_byte_timeout" not in given:
                self.first_byte_timeout = self.read_timeout
            if "idle_timeout" not in given:
                self.idle_timeout = self.read_timeout
        return self


class HealthConfig(pydantic.BaseModel):
    """Passive outlier detection (on by default) and active health checks (off by default)."""

    model_config = _CAMEL
    outlier: OutlierSpec = pydantic.Field(default_factory=OutlierSpec)
    active: ActiveCheckSpec = pydantic.Field(default_factory=ActiveCheckSpec)


def _check(model: type[pydantic.BaseModel], value: Any) -> None:
    """Validate `value` against `model`; one ValueError naming the first bad key."""
    try:
        model.model_validate(value)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ValueError(f"{loc}: {msg}" if loc else msg) from None


class PoolConfig(pydantic.BaseModel):
    """One model and the endpoints serving it."""

    model_config = _CAMEL
    model: str = pydantic.Field(min_length=1)
    aliases: list[str] = pydantic.Field(default_factory=list)
    lora_adapters: list[str] = pydantic.Field(default_factory=list, alias="loraAdapters")
    endpoints: list[str] = pydantic.Field(default_factory=list)
    engine: Literal["auto", "vllm", "sglang", "trtllm"] = "auto"
    #: None: the default policy; a str: packaged policy name or file; a mapping: inline config
    scheduler: str | dict[str, Any] | None = None
    #: precise prefix scoring: where the endpoints publish KV events (`KVEventsConfig` keys);
    #: None: the defaults (vLLM's ports 5557/5558 on each endpoint's host)
    kv_events: dict[str, Any] | None = pydantic.Field(None, alias="kvEvents")
    #: precise prefix scoring: the request tokenizer (a local Hugging Face tokenizer path,
    #: `{path, chatTemplate}`, or "words" for the simulator); loaded when the pool is built
    tokenizer: str | dict[str, Any] | None = None

    @pydantic.field_validator("kv_events")
    @classmethod
    def _kv_events_ok(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            from .kvevents import KVEventsConfig
            _check(KVEventsConfig, v)
        return v

    @pydantic.field_validator("tokenizer")
    @classmethod
    def _tokenizer_ok(cls, v: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if v is not None:
            from .tokenize import TokenizerConfig
            _check(TokenizerConfig, v)
        return v

    @pydantic.field_validator("endpoints")
    @classmethod
    def _endpoints_ok(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for i, url in enumerate(v):
            try:
                ep = parse_endpoint(url)
            except ValueError as exc:
                raise ValueError(f"endpoints[{i}]: {exc}") from None
            if ep.name in seen:
                raise ValueError(f"endpoints[{i}]: {ep.name} is listed twice")
            seen.add(ep.name)
        return v

    def build_endpoints(self) -> list[Endpoint]:
        engine = "vllm" if self.engine == "auto" else self.engine
        return [parse_endpoint(url, engine=engine) for url in self.endpoints]

    def scheduler_config(self) -> EndpointPickerConfig:
        """Resolve `scheduler` to a validated EndpointPickerConfig (ConfigError if bad)."""
        if isinstance(self.scheduler, dict):
            return parse_config(self.scheduler, f"the inline scheduler of pool {self.model!r}")
        return resolve_config(self.scheduler)


class ConnectionLimits(pydantic.BaseModel):
    """Bounds on the gateway's client connections: how many, and how long each may stay
    silent or slow (`inferoute serve` applies them; see docs/reliability.md)."""

    model_config = _CAMEL
    max_connections: int = pydantic.Field(10000, alias="maxConnections", ge=1)
    header_timeout: float = pydantic.Field(10.0, alias="headerTimeout", gt=0)
    body_timeout: float = pydantic.Field(60.0, alias="bodyTimeout", gt=0)
    keep_alive_timeout: float = pydantic.Field(15.0, alias="keepAliveTimeout", gt=0)

    _d = pydantic.field_validator("header_timeout", "body_timeout", "keep_alive_timeout",
                                  mode="before")(_duration)


class ServingConfig(pydantic.BaseModel):
    """Everything `inferoute serve` (and the ext_proc picker's data layer) needs."""

    model_config = _CAMEL
    host: str = "0.0.0.0"
    port: int = pydantic.Field(8080, ge=0, le=65535)
    scrape_interval: float = pydantic.Field(DEFAULT_SCRAPE_INTERVAL, alias="scrapeInterval", gt=0)
    #: the scrape period of an endpoint whose load nobody needs fresh (docs/gateway.md);
    #: never below `scrapeInterval` (set them equal for a fixed rate)
    scrape_idle_interval: float = pydantic.Field(DEFAULT_IDLE_INTERVAL,
                                                 alias="scrapeIdleInterval", gt=0)
    scrape_timeout: float = pydantic.Field(1.0, alias="scrapeTimeout", gt=0)
    #: the largest share of a server's time our scrapes may take: a page that answers slowly
    #: is scraped less often, down to the busy period (docs/gateway.md); None (the default):
    #: no cap
    scrape_max_duty: float | None = pydantic.Field(None, alias="scrapeMaxDuty", gt=0, le=1)
    ready_window: float = pydantic.Field(DEFAULT_READY_WINDOW, alias="readyWindow", gt=0)
    max_body_bytes: int = pydantic.Field(16 * 1024 * 1024, alias="maxBodyBytes", ge=1024)
    drain_timeout: float = pydantic.Field(60.0, alias="drainTimeout", ge=0)
    #: longest request line and longest header field aiohttp's parser accepts
    max_header_bytes: int = pydantic.Field(8190, alias="maxHeaderBytes", ge=1024)
    #: proxied API requests in progress (queued and streaming ones included); beyond: 503
    max_concurrent_requests: int = pydantic.Field(4096, alias="maxConcurrentRequests", ge=1)
    upstream: UpstreamConfig = pydantic.Field(default_factory=UpstreamConfig)
    connections: ConnectionLimits = pydantic.Field(default_factory=ConnectionLimits)
    pools: list[PoolConfig] = pydantic.Field(min_length=1)
    health: HealthConfig = pydantic.Field(default_factory=HealthConfig)
    #: API keys and per-tenant limits (tenants YAML, docs/admission.md); None: INFEROUTE_API_KEYS
    #: if set, else no authentication
    tenants: str | None = None
    #: gateway replicas share the tenants' rate-limit buckets, the prefix-index inserts (and
    #: precise speculative entries) and the in-flight load through this Redis
    redis: str | None = None
    #: semantic routing config file ("model": "auto", guards, semantic cache); None: off
    semantic: str | None = None
    #: admission control (saturation, objectives, flow control, model routes); None: off.
    #: The `admission:` section of docs/admission.md, validated in `admission_config()`.
    admission: dict[str, Any] | None = None
    #: the desired-replicas estimator (`core.autoscale`, TTFT target etc.); None: no gauge
    autoscaling: dict[str, Any] | None = None
    #: serve GET /dashboard (read-only; behind the API keys when tenants are on)
    dashboard: bool = False

    def autoscale_spec(self) -> AutoscaleSpec | None:
        return None if self.autoscaling is None else parse_autoscale_spec(self.autoscaling)

    def admission_config(self) -> AdmissionConfig | None:
        if self.admission is None:
            return None
        return parse_admission_config(self.admission, "the admission section")

    _d = pydantic.field_validator("scrape_interval", "scrape_idle_interval", "scrape_timeout",
                                  "ready_window", "drain_timeout", mode="before")(_duration)

    @pydantic.model_validator(mode="after")
    def _unique_names(self) -> "ServingConfig":
        owner: dict[str, str] = {}
        for pool in self.pools:
            for name in (pool.model, *pool.aliases, *pool.lora_adapters):
                if name in owner:
                    raise ValueError(f"model name {name!r} is claimed by pools "
                                     f"{owner[name]!r} and {pool.model!r}")
                owner[name] = pool.model
        return self


def parse_serving_config(data: Any, source: str = "<config>") -> ServingConfig:
    """Validate a parsed mapping; ConfigError lists every problem with its key path.

    Scheduler configs are resolved too, so a bad policy name fails here, not at first request.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"invalid serving config in {source}: expected a mapping at the top")
    try:
        cfg = ServingConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(explain_validation(exc, "serving config", source)) from None
    for i, pool in enumerate(cfg.pools):
        try:
            pool.scheduler_config()
        except ConfigError as exc:
            raise ConfigError(f"invalid serving config in {source}: pools.{i}.scheduler: "
                              f"{exc}") from None
    try:
        cfg.admission_config()
        cfg.autoscale_spec()
    except ConfigError as exc:
        raise ConfigError(f"invalid serving config in {source}: {exc}") from None
    return cfg


def load_serving_config(path: str | Path) -> ServingConfig:
    """Read and validate a serving config YAML file."""
    return parse_serving_config(read_yaml_file(path, "serving config"), str(path))


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    """The serving config from `--config FILE` or `--model/--endpoint` flags.

    With `--config`, the flags `--host`, `--port`, `--scrape-interval`,
    `--scrape-idle-interval` and `--scheduler`
    (applied to every pool) override the file when given; `--admission FILE` sets (or
    replaces) the admission section.
    """
    config_file = getattr(args, "config", None)
    model = getattr(args, "model", None)
    endpoints = getattr(args, "endpoint", None)
    scheduler = getattr(args, "scheduler", None)
    if config_file and (model or endpoints):
        raise ConfigError("give either --config FILE or --model/--endpoint flags, not both")
    if config_file:
        cfg = load_serving_config(config_file)
        data = cfg.model_dump(by_alias=False)
        source = f"{config_file} with command-line overrides"
        if scheduler is not None:
            for pool in data["pools"]:
                pool["scheduler"] = scheduler
    else:
        if not model or not endpoints:
            raise ConfigError("--model NAME and at least one --endpoint URL are required "
                              "(or --config FILE)")
        data = {"pools": [{"model": model, "endpoints": list(endpoints),
                           "engine": getattr(args, "engine", None) or "auto",
                           "scheduler": scheduler}]}
        source = "the command line"
    for key in ("host", "port", "scrape_interval", "scrape_idle_interval", "tenants", "redis",
                "semantic"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    apply_ops_args(data, args)
    admission_file = getattr(args, "admission", None)
    if admission_file:
        raw = read_admission_file(admission_file)
        data["admission"] = raw if raw is not None else {}
    return parse_serving_config(data, source)


def apply_ops_args(data: dict[str, Any], args: argparse.Namespace) -> None:
    """`--autoscaling YAML` (the `autoscaling:` section inline, e.g. `{ttftTarget: 1s}`) and
    `--dashboard` into a config mapping, when given."""
    text = getattr(args, "autoscaling", None)
    if text:
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--autoscaling is not valid YAML: {exc}") from None
        data["autoscaling"] = value if value is not None else {}
    if getattr(args, "dashboard", False):
        data["dashboard"] = True
