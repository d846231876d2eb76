"""The semantic router: classify, guard and cache a request before it is scheduled.

Use from a gateway handler (see docs/semantic.md for the full recipe)::

    router = SemanticRouter.from_config(cfg, registry=prom_registry)   # once, at start-up
    outcome = router.route(request, tenant, now=time.monotonic(), available=pool_names)
    if outcome.blocked:                      # 400 content_blocked
        return error(outcome.blocked)
    if outcome.cached:                       # answer without touching a model server
        return replay_json(...) / replay_sse(...)   (outcome.replay_json / replay_sse)
    outcome.apply_to_request(request)        # model rewrite, system prompt, reasoning switch
    ... schedule on the pool of request.target_model, relay the reply, add outcome.headers ...
    router.store(request, tenant, reply_body_or_CachedReply, now=time.monotonic())

Everything here is synchronous and takes the time as an argument; one call costs one prompt
embedding (tens of microseconds) plus regex scans for the guards.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import xxhash
import yaml
from prometheus_client import CollectorRegistry

from ..core.errors import ConfigError, InferouteError
from ..core.request import InferenceRequest, parse_request
from .cache import CachedReply, CacheKey, SemanticCache
from .categories import Category
from .classifier import CategoryClassifier, Classification, clip_text
from .config import SemanticConfig, parse_config
from .embeddings import CaseRobustEmbedder, Embedder, load_embedder
from .guards import GuardReport, Guards, jailbreak_blocked, pii_blocked
from .jailbreak import JailbreakDetector, load_jailbreak_data
from .metrics import SemanticMetrics
from .replay import replay_json, replay_sse

#: request.attributes key under which apply_to_request leaves the outcome (store() reads it)
ATTRIBUTE = "inferoute.semantic"
#: body keys that do not change the answer, left out of the cache's exact key
_TRANSPORT_KEYS = frozenset({"model", "stream", "stream_options", "user", "metadata"})
_NO_CACHE = ("no-cache", "no-store")


@dataclass(slots=True)
class BodyChanges:
    """What routing changes in the request body (applied by `RouteOutcome.apply`)."""

    model: str | None = None
    system_prompt: str | None = None
    #: top-level fields set only when the client did not set them; dicts merge one level deep
    fields: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.model or self.system_prompt or self.fields)


@dataclass(slots=True, frozen=True)
class ReplayedResponse:
    """A cache hit ready to send: status 200, these headers, this body (for a stream, the
    concatenated SSE `events`, which a handler may also write one by one)."""

    headers: dict[str, str]
    body: bytes
    events: list[bytes] | None


@dataclass(slots=True)
class RouteOutcome:
    """The router's decision for one request."""

    model: str
    routed: bool
    category: str | None = None
    confidence: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body_changes: BodyChanges = field(default_factory=BodyChanges)
    blocked: InferouteError | None = None
    cached: CachedReply | None = None
    cache_similarity: float | None = None
    pii_types: list[str] = field(default_factory=list)
    jailbreak_score: float = 0.0
    #: exact cache key and question embedding, kept for store(); None = not cacheable
    cache_key: CacheKey | None = None
    vector: np.ndarray | None = None

    def apply(self, body: dict[str, Any], api: str) -> dict[str, Any]:
        """A copy of `body` with the model rewritten, the category's system prompt injected
        (chat: a leading system message, or prepended to the existing one; responses:
        instructions) and reasoning fields set where the client left them unset."""
        ch = self.body_changes
        out = dict(body)
        if ch.model:
            out["model"] = ch.model
        if ch.system_prompt:
            if api == "chat" and isinstance(out.get("messages"), list):
                msgs = list(out["messages"])
                first = msgs[0] if msgs else None
                if isinstance(first, dict) and first.get("role") in ("system", "developer") \
                        and isinstance(first.get("content"), str):
                    msgs[0] = dict(first, content=f"{ch.system_prompt}\n\n{first['content']}")
                else:
                    msgs.insert(0, {"role": "system", "content": ch.system_prompt})
                out["messages"] = msgs
            elif api == "responses":
                prev = out.get("instructions")
                out["instructions"] = (f"{ch.system_prompt}\n\n{prev}"
                                       if isinstance(prev, str) and prev else ch.system_prompt)
        for key, value in ch.fields.items():
            if isinstance(value, dict):
                cur = out.get(key)
                merged = dict(value, **cur) if isinstance(cur, dict) else dict(value)
                out[key] = merged
            elif key not in out:
                out[key] = value
        return out

    def apply_to_request(self, request: InferenceRequest) -> None:
        """Apply the changes to `request` in place (body, target_model and, when the prompt
        changed, prefix_text) and remember this outcome for `SemanticRouter.store`."""
        request.attributes[ATTRIBUTE] = self
        request.target_model = self.model
        if not self.body_changes:
            return
        new_body = self.apply(request.body, request.api)
        if self.body_changes.system_prompt:
            reparsed = parse_request(request.api, new_body, request.headers,
                                     request_id=request.request_id,
                                     arrival_time=request.arrival_time)
            request.prefix_text = reparsed.prefix_text
        request.body = new_body

    def cached_response(self, request: InferenceRequest, created: int) -> "ReplayedResponse":
        """The whole HTTP answer for a cache hit, streaming or not as the request asked:
        write `body` with `headers` (content type included) and status 200."""
        assert self.cached is not None, "no cached reply"
        prefix = "chatcmpl" if request.api == "chat" else "cmpl"
        rid = f"{prefix}-cache-{request.request_id}"
        headers = dict(self.headers)
        if request.stream:
            opts = request.body.get("stream_options")
            include = isinstance(opts, dict) and bool(opts.get("include_usage"))
            events = self.replay_sse(request.api, rid, created, include_usage=include)
            headers["content-type"] = "text/event-stream"
            headers["cache-control"] = "no-cache"
            return ReplayedResponse(headers, b"".join(events), events)
        body = orjson.dumps(self.replay_json(request.api, rid, created))
        headers["content-type"] = "application/json"
        return ReplayedResponse(headers, body, None)

    def replay_json(self, api: str, response_id: str, created: int) -> dict[str, Any]:
        """The cached reply as a non-streaming body (requires `cached`)."""
        assert self.cached is not None, "no cached reply"
        return replay_json(self.cached, api=api, response_id=response_id, created=created)

    def replay_sse(self, api: str, response_id: str, created: int,
                   include_usage: bool = False) -> list[bytes]:
        """The cached reply as SSE events ending with `data: [DONE]` (requires `cached`)."""
        assert self.cached is not None, "no cached reply"
        return replay_sse(self.cached, api=api, response_id=response_id, created=created,
                          include_usage=include_usage)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p if isinstance(p, str) else str(p.get("text", ""))
                         for p in content if isinstance(p, (str, dict)))
    return ""


def user_texts(request: InferenceRequest) -> tuple[str, str]:
    """(last user message, all user messages joined) of a request; ("", "") when the prompt
    is token ids or has no user turn."""
    body = request.body
    if request.api == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list):
            prompt = prompt[-1] if prompt and all(isinstance(p, str) for p in prompt) else ""
        text = prompt if isinstance(prompt, str) else ""
        return text, text
    msgs = body.get("messages") if request.api == "chat" else body.get("input")
    if isinstance(msgs, str):
        return msgs, msgs
    users = [_content_text(m.get("content")) for m in msgs or []
             if isinstance(m, dict) and m.get("role", "user") == "user"]
    users = [u for u in users if u]
    return (users[-1], "\n".join(users)) if users else ("", "")


_FOLD = re.compile(r"[^\w\s]+|_")
_NUMBERS = re.compile(r"\d+(?:[.,]\d+)*")


def fold_question(text: str) -> str:
    """Case- and punctuation-folded question text, for the cache's embedding."""
    return " ".join(_FOLD.sub(" ", text.lower()).split())


def message_texts(request: InferenceRequest) -> list[str]:
    """Every text the model will see, one per message (system, user, assistant, tool)."""
    body = request.body
    if request.api == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return [prompt]
        return [p for p in prompt if isinstance(p, str)] if isinstance(prompt, list) else []
    out: list[str] = []
    if request.api == "responses" and isinstance(body.get("instructions"), str):
        out.append(body["instructions"])
    msgs = body.get("messages") if request.api == "chat" else body.get("input")
    if isinstance(msgs, str):
        return out + [msgs]
    for m in msgs or []:
        if isinstance(m, dict):
            text = _content_text(m.get("content"))
            if m.get("tool_calls"):
                text += orjson.dumps(m["tool_calls"]).decode()
            if text:
                out.append(text)
    return out


def context_hash(request: InferenceRequest, question: str = "") -> str:
    """Hash of everything in the request except the last user message and transport keys,
    plus the numbers in the question: "solve 3x+7=22" and "solve 3x+7=25" embed almost
    identically but must never share an answer."""
    body = {k: v for k, v in request.body.items() if k not in _TRANSPORT_KEYS}
    body["<numbers>"] = _NUMBERS.findall(question)
    if request.api == "chat" and isinstance(body.get("messages"), list):
        msgs = list(body["messages"])
        for i in range(len(msgs) - 1, -1, -1):
            if isinstance(msgs[i], dict) and msgs[i].get("role") == "user":
                msgs[i] = {"role": "user", "content": "<question>"}
                break
        body["messages"] = msgs
    elif request.api == "completions":
        body.pop("prompt", None)
    raw = orjson.dumps([request.api, body], option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return xxhash.xxh3_64_hexdigest(raw)


class SemanticRouter:
    """Routes `auto` requests by category, applies the guards, and fronts a semantic cache."""

    def __init__(self, config: SemanticConfig, *, embedder: Embedder | None = None,
                 categories: list[Category] | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config
        if embedder is None:
            embedder = load_embedder(config.embedder.kind, dim=config.embedder.dim,
                                     path=config.embedder.path)
            if config.embedder.case_robust:
                embedder = CaseRobustEmbedder(embedder)
        self.embedder = embedder
        self.categories = categories if categories is not None else config.load_categories()
        self._by_name = {c.name: c for c in self.categories}
        cc = config.classifier
        self.classifier = CategoryClassifier(
            self.embedder, self.categories, threshold=cc.threshold, temperature=cc.temperature,
            knn_weight=cc.knn_weight, knn_k=cc.knn_k, max_chars=cc.max_chars)
        jb = config.jailbreak
        detector = None
        if jb.enabled:
            try:
                data = load_jailbreak_data(jb.data)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise ConfigError(f"semantic.jailbreak.data: {exc}") from None
            detector = JailbreakDetector(self.embedder, mean=self.classifier.mean,
                                         negatives=self.classifier.example_vectors, data=data)
        self.guards = Guards(pii_types=list(config.pii.types) if config.pii.action != "off"
                             else None, jailbreak=detector, jailbreak_threshold=jb.threshold)
        c = config.cache
        self.cache = (SemanticCache(max_entries=c.max_entries,
                                    max_entries_per_bucket=c.max_entries_per_bucket,
                                    ttl_seconds=c.ttl_seconds) if c.enabled else None)
        self.metrics = SemanticMetrics(registry)
        self.auto_names = frozenset(config.auto_model_names)
        self._listed = {m.name: m for m in config.models}
        configured = set(self._listed)
        if not configured:
            configured = {m for cat in self.categories for m in cat.model_scores}
            configured.add(config.default_model)
        self.known_models = frozenset(configured)

    @classmethod
    def from_config(cls, config: SemanticConfig | dict[str, Any] | None = None, *,
                    registry: CollectorRegistry | None = None,
                    embedder: Embedder | None = None) -> SemanticRouter:
        """Build from a SemanticConfig or a mapping (ConfigError on bad config)."""
        cfg = config if isinstance(config, SemanticConfig) else parse_config(config)
        return cls(cfg, embedder=embedder, registry=registry)

    def _pii_ok(self, model: str) -> bool:
        """May `model` see personal data? Listed models say so with `pii_allowed`; models
        not listed under `models` are not governed by the router."""
        listed = self._listed.get(model)
        return True if listed is None else listed.pii_allowed

    # -- routing ---------------------------------------------------------------------------

    def _candidates(self, available: Collection[str] | None) -> set[str]:
        if available is None:
            return set(self.known_models)
        return set(self.known_models) & set(available)

    def _pick(self, cls: Classification | None, candidates: set[str]) -> str | None:
        if cls is not None and cls.accepted:
            model = self._by_name[cls.category].best_model(candidates)
            if model is not None:
                return model
        if self.config.default_model in candidates:
            return self.config.default_model
        # The default is unavailable (or may not see this request's personal data): the
        # candidate with the best mean score over all categories, a generalist.
        best: tuple[float, str] | None = None
        for m in sorted(candidates):
            mean = sum(c.model_scores.get(m, 0.0) for c in self.categories) / len(self.categories)
            if best is None or mean > best[0]:
                best = (mean, m)
        return best[1] if best else None

    def _reasoning_fields(self, cat: Category, model: str, api: str) -> dict[str, Any]:
        family_name = self.config.model(model).reasoning_family
        if not family_name or api == "completions":
            return {}
        fam = self.config.reasoning_families[family_name]
        if fam.type == "chat_template_kwargs":
            return {"chat_template_kwargs": {fam.parameter: cat.use_reasoning}}
        return {fam.parameter: cat.reasoning_effort if cat.use_reasoning else "low"}

    def route(self, request: InferenceRequest, tenant: str | None = None, *,
              now: float | None = None,
              available: Collection[str] | None = None) -> RouteOutcome:
        """Decide model, guards and cache for one request. `available` = model names that
        currently have a pool (None: all configured models). Never raises for bad content:
        refusals come back in `outcome.blocked`."""
        now = time.monotonic() if now is None else now
        cfg = self.config
        auto = request.model in self.auto_names
        out = RouteOutcome(model=request.model, routed=auto)
        if not cfg.enabled:
            if auto:
                out.model = cfg.default_model
                out.body_changes.model = out.model
            return out
        last_user, all_user = user_texts(request)
        vector = cls = None
        if last_user and (auto or self.cache is not None or self.guards.jailbreak is not None):
            t0 = time.perf_counter()
            vector = self.classifier.embed(last_user)
            if auto or self.cache is not None:
                cls = self.classifier.classify_vector(vector)
                self.metrics.latency.observe(time.perf_counter() - t0)
                self.metrics.classifications.labels(
                    cls.category if cls.accepted else "none").inc()
        report: GuardReport = self.guards.check(message_texts(request),
                                                clip_text(all_user, 16_000), vector)
        out.pii_types = report.pii_types
        for t in out.pii_types:
            self.metrics.pii.labels(t).inc()
        if report.jailbreak is not None:
            out.jailbreak_score = report.jailbreak.score
        if self.guards.is_jailbreak(report):
            return self._block(out, jailbreak_blocked(out.jailbreak_score), "jailbreak")
        pii_mode = cfg.pii.action if out.pii_types else "off"
        if pii_mode == "block":
            return self._block(out, pii_blocked(out.pii_types), "pii")
        if cls is not None:
            out.category, out.confidence = (cls.category if cls.accepted else None), cls.confidence
        if auto:
            candidates = self._candidates(available)
            if pii_mode == "route":
                candidates = {m for m in candidates if self._pii_ok(m)}
            model = self._pick(cls, candidates)
            if model is None:
                if pii_mode == "route":
                    return self._block(out, pii_blocked(out.pii_types), "pii")
                model = cfg.default_model
            out.model = model
            out.body_changes.model = model
            out.headers["x-selected-model"] = model
            out.headers["x-inferoute-category"] = out.category or "none"
            out.headers["x-inferoute-confidence"] = f"{out.confidence:.3f}"
            self.metrics.routed.labels(model).inc()
            if out.category is not None:
                cat = self._by_name[out.category]
                out.body_changes.system_prompt = cat.system_prompt
                out.body_changes.fields = self._reasoning_fields(cat, model, request.api)
        elif pii_mode == "route" and not self._pii_ok(request.model):
            return self._block(out, pii_blocked(out.pii_types, request.model), "pii")
        self._lookup_cache(out, request, tenant, last_user, now)
        return out

    def _block(self, out: RouteOutcome, err: InferouteError, reason: str) -> RouteOutcome:
        out.blocked = err
        out.headers.update(err.headers)
        self.metrics.blocks.labels(reason).inc()
        return out

    def _cacheable(self, request: InferenceRequest, out: RouteOutcome) -> bool:
        if self.cache is None or out.pii_types or request.api not in ("chat", "completions"):
            return False
        if request.body.get("n", 1) not in (1, None):
            return False
        cc = (request.header("cache-control") or "").lower()
        return not any(d in cc for d in _NO_CACHE)

    def _threshold(self, category: str | None) -> float:
        c = self.config.cache
        if category is not None:
            if category in c.category_similarity:
                return c.category_similarity[category]
            own = self._by_name[category].cache_similarity
            if own is not None:
                return own
        return c.similarity

    def _lookup_cache(self, out: RouteOutcome, request: InferenceRequest, tenant: str | None,
                      question: str, now: float) -> None:
        if not question or not self._cacheable(request, out):
            return
        assert self.cache is not None
        folded = fold_question(question)
        limit = self.config.classifier.max_chars
        vector = self.embedder.embed(clip_text(folded, limit))
        context = context_hash(request, question)
        if len(folded) > min(limit, self.config.cache.exact_above_chars):
            # One changed word barely moves the embedding of a long text (and the embedding
            # only sees its head and tail): long questions must match exactly.
            context += ":" + xxhash.xxh3_64_hexdigest(folded.encode())
        out.cache_key = CacheKey(tenant or "", out.model, context)
        out.vector = vector
        hit = self.cache.lookup(out.cache_key, vector, self._threshold(out.category), now)
        self.metrics.cache.labels("hit" if hit else "miss").inc()
        out.headers["x-inferoute-cache"] = "hit" if hit else "miss"
        if hit is not None:
            out.cached = hit.reply
            out.cache_similarity = hit.similarity

    # -- cache fill ------------------------------------------------------------------------

    def store(self, request: InferenceRequest, tenant: str | None,
              reply: CachedReply | dict[str, Any] | None, *, now: float | None = None,
              outcome: RouteOutcome | None = None) -> bool:
        """Remember a finished reply (a non-streaming body or a `StreamCollector.reply()`).
        Uses the outcome left on the request by `apply_to_request` (or the one passed).
        Returns True when stored; blocked, PII-carrying, uncacheable or cache-hit requests
        are not stored."""
        if self.cache is None or reply is None:
            return False
        outcome = outcome or request.attributes.get(ATTRIBUTE)
        if outcome is None:
            outcome = self.route(request, tenant, now=now)
        if outcome.blocked or outcome.cached or outcome.cache_key is None \
                or outcome.vector is None:
            return False
        if outcome.cache_key.tenant != (tenant or ""):
            return False
        if isinstance(reply, dict):
            reply = CachedReply.from_response(request.api, reply)
            if reply is None:
                return False
        if len(reply.text) > self.config.cache.max_reply_chars:
            return False
        now = time.monotonic() if now is None else now
        self.cache.store(outcome.cache_key, outcome.vector, reply, now)
        self.metrics.cache_stores.inc()
        return True
