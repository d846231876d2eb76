"""Virtual-time benchmark: the real scheduler core against simulated engines, on an event heap.

Nothing here sleeps, opens a socket or reads a clock. One run wires:
- N `inferoute.sim.engine.Engine`s (the simulator's sans-I/O model of a vLLM replica), stepped
  back to back while they have work: a step planned at t delivers its tokens at t + duration;
- the core's request lifecycle (`core.lifecycle.RequestLifecycle`, the object the HTTP gateway
  and the ext_proc picker drive too) for every request: parse, resolve, `Router.schedule` (the
  packaged or given EndpointPickerConfig) among the candidates of the gateway's own rule
  (`CandidateSelector` over `CandidateRule`: ready and fresh, with the serving config's default
  ready window and this run's scrape interval; every endpoint is scraped once at time 0, as a
  gateway that was up before the load began has done; no health, so no back-pressure, and no
  all-stale fallback), dispatch, first token and finish (in-flight bookkeeping, plugin hooks),
  on the same `Endpoint` objects the HTTP gateway uses; no request fails upstream here, so the
  lifecycle's retries never run;
- simulated metric scrapes: every `scrape_interval` each endpoint's `EndpointMetrics` is replaced
  by the engine's stats at that instant, so the scheduler sees metrics exactly as stale as a live
  gateway would (scrapes are staggered across endpoints);
- the load schedule: inference-perf stages (all arrivals of a rate stage are known up front; the
  next stage starts when the previous one has drained, plus a pause), or closed-loop concurrency;
- precise prefix routing, when the policy has a `precise-prefix-cache-scorer`: the engines
  publish KV events and requests carry their token ids (the simulator's tokenizer, as a gateway
  configured with `tokenizer: words` would send). The events an engine step emits reach the
  scorer's index when that step completes, one step duration after the engine recorded them,
  like a ZMQ hop plus the subscriber's batching.
- the gateway's admission (`SimConfig.admission`, an `admission:` section: flow control with
  its dispatch budget, objectives, deadline order and shedding), or, for a policy with a
  release rule (a plugin such as `kv-fit-filter` that decides which waiting request goes
  next, core/admission/release.py) and no section, admission for the rule alone as the
  gateway runs it without a section (`rules_only`: requests wait only while the rule holds),
  with a TTL and bound no stage reaches (`BENCH_FLOW`: every request is served, as with the
  other policies). Either is
  driven as the gateway's admission driver drives it: told of every scrape, send and end,
  pumped after an enqueue, a scrape, a first token or an end, and every 20 ms while requests
  wait (so a TTL or TTFT deadline is answered within 20 ms, as in the gateway); requests carry
  the objective and `x-slo-ttft-ms` headers a `SloMix` gives them (bench/slo_mix.py). Other
  policies run without admission;
- replicas added and removed during a run (`add_replica`, `remove_replica`: a removed replica
  takes no new request and finishes what it holds), and callbacks at virtual times (`call_at`),
  for an autoscaler (bench/autoscale.py).

Per-token work is one `RequestRecord.on_tokens` call per engine output; the heap holds one event
per engine step, per scrape and per arrival, never per token. Same inputs, same seed: the same
results, bit for bit.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..configfiles import resolve_config
from ..core.admission import AdmissionConfig, AdmissionController, FlowControlSpec, ReleaseRule
from ..core.admission.slot_feed import SlotFeed
from ..core.candidates import DEFAULT_READY_WINDOW, CandidateRule
from ..core.endpoint import Endpoint, EndpointMetrics, Pool
from ..core.errors import BadRequest
from ..core.kvindex import apply_engine_events
from ..core.plugins.precise_prefix_cache_scorer import precise_scorers
from ..core.lifecycle import RequestLifecycle, Respond, SendUpstream, Wait
from ..core.router import ModelPool, Router
from ..core.scheduling.config import EndpointPickerConfig
from ..core.scheduling.scheduler import Scheduler
from .load import LoadSpec, Stage
from .metrics import RequestRecord, summarize
from .slo_mix import SloMix
from .workloads import WorkItem, Workload

_ARRIVE, _STEP_DONE, _SCRAPE, _STAGE, _ENGINE_IN, _CALL, _TICK = 0, 1, 2, 3, 4, 5, 6
#: the admission driver's ticker period while requests wait (datalayer/admission_driver.py)
ADMISSION_TICK = 0.02

#: flow control for a policy with a release rule: every request is served, as every other
#: policy serves it (the gateway's default TTL of 30 s would turn the longest waits of an
#: overloaded stage into 429s, and its 1,000-request bound the deepest backlogs)
BENCH_FLOW = FlowControlSpec(ttl=3600.0, max_requests=100_000)


@dataclass(slots=True)
class SimConfig:
    """Everything a virtual run depends on."""

    policy: str | EndpointPickerConfig
    replicas: int
    profile: str
    workload: Workload
    load: LoadSpec
    model: str = "model"
    seed: int = 0
    ignore_eos: bool = True
    scrape_interval: float = 0.05
    #: engine profile fields to override, e.g. {"num_blocks": 120000} (the report records them)
    profile_overrides: dict[str, Any] = field(default_factory=dict)
    #: stop a run whose virtual time passes this many seconds (a safety net; None: no limit)
    max_virtual_time: float | None = None
    #: the gateway's admission section (None: admission only for a policy with a release
    #: rule, with `BENCH_FLOW`)
    admission: AdmissionConfig | None = None
    #: the objective and TTFT-target headers each request carries (None: no headers)
    slo: SloMix | None = None
    #: the clients ask for event streams (False: each answer comes whole at its end, so the
    #: gateway sees no first token; the records still time the engine's)
    stream: bool = True


@dataclass(slots=True)
class _Live:
    record: RequestRecord
    lifecycle: RequestLifecycle
    engine: int


@dataclass(slots=True)
class SimResult:
    """Records per stage, their summaries, and facts about the run."""

    config: dict[str, Any]
    stages: list[dict[str, Any]]
    records: list[list[RequestRecord]] = field(repr=False, default_factory=list)
    engines: list[dict[str, Any]] = field(default_factory=list)
    virtual_seconds: float = 0.0
    wall_seconds: float = 0.0
    events: int = 0
    #: per precise prefix scorer: its KV index's counters (stored / removed events, ...)
    kv_index: dict[str, dict[str, Any]] | None = None
    #: with a `SloMix`: per stage, per record, the TTFT target (s) it carried (None: none)
    targets: list[list[float | None]] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"config": self.config, "stages": self.stages, "engines": self.engines,
               "virtual_seconds": self.virtual_seconds, "wall_seconds": self.wall_seconds,
               "events": self.events}
        if self.kv_index is not None:
            out["kv_index"] = self.kv_index
        return out


def _policy_name(policy: str | EndpointPickerConfig) -> str:
    return policy if isinstance(policy, str) else "custom"


class VirtualBench:
    """One virtual-time run; call `run()` once."""

    def __init__(self, cfg: SimConfig,
                 progress: Callable[[int, int, int], None] | None = None) -> None:
        from ..sim.engine import Engine
        from ..sim.profile import load_profile

        self.cfg = cfg
        self.progress = progress
        profile = load_profile(cfg.profile, **cfg.profile_overrides)
        self.profile = profile
        config = (cfg.policy if isinstance(cfg.policy, EndpointPickerConfig)
                  else resolve_config(cfg.policy))
        self.scheduler = Scheduler(config, seed=cfg.seed)
        #: precise prefix scorers fed by the engines' KV events (empty: no events published)
        self.precise = precise_scorers(self.scheduler.plugins.values())
        rules = [p for p in self.scheduler.plugins.values() if isinstance(p, ReleaseRule)]
        #: the gateway's admission, with the policy's release rule (None: no admission)
        self.admission: AdmissionController | None
        if cfg.admission is not None:
            self.admission = cfg.admission.controller(release=rules[0] if rules else None)
        else:
            self.admission = (AdmissionController(flow=BENCH_FLOW, release=rules[0],
                                                  rules_only=True) if rules
                              else None)
        self._ticking = False
        kv_events = bool(self.precise)
        self._kv_events = kv_events
        self.engines = [Engine(profile, seed=cfg.seed * 1000 + i, name=f"engine-{i}",
                               kv_events=kv_events)
                        for i in range(cfg.replicas)]
        self.endpoints = [Endpoint(host=f"10.0.0.{i + 1}", port=8000)
                          for i in range(cfg.replicas)]
        self.by_name = {ep.name: i for i, ep in enumerate(self.endpoints)}
        #: KV events of each engine's step in progress, applied when the step completes
        self._pending_events: list[list[Any]] = [[] for _ in range(cfg.replicas)]
        self.router = Router([ModelPool(cfg.model, Pool(cfg.model, self.endpoints),
                                        self.scheduler)],
                             CandidateRule(DEFAULT_READY_WINDOW, cfg.scrape_interval))
        if self.admission is not None:
            self.router.listeners.append(SlotFeed(self.admission))
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._busy = [False] * cfg.replicas
        self._live: dict[str, _Live] = {}
        self._records: list[list[RequestRecord]] = [[] for _ in cfg.load.stages]
        self._targets: list[list[float | None]] = [[] for _ in cfg.load.stages]
        self._stage = -1
        self._stage_sent = 0
        self._stage_done = 0
        self._stage_start = 0.0
        self._stage_items = 0
        self._sent_total = 0
        self._ids: OrderedDict[str, list[int]] = OrderedDict()
        self._events = 0
        self._finished = False
        self._removed: set[int] = set()

    # -- plumbing ---------------------------------------------------------------------------

    def _push(self, t: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def _token_ids(self, item: WorkItem) -> list[int]:
        from ..core.words import encode

        ids = self._ids.get(item.key)
        if ids is None:
            ids = encode(item.prompt)
            self._ids[item.key] = ids
            if len(self._ids) > 4096:
                self._ids.popitem(last=False)
        return ids

    def _scrape(self, i: int, now: float) -> None:
        self.engines[i].scraped()
        st = self.engines[i].stats()
        g = getattr
        self.endpoints[i].metrics = EndpointMetrics(
            waiting=int(g(st, "waiting", 0)), running=int(g(st, "running", 0)),
            kv_usage=float(g(st, "kv_usage", 0.0)), block_size=g(st, "block_size", None),
            num_blocks=g(st, "num_blocks", None), max_lora=g(st, "max_lora", None),
            running_loras=tuple(g(st, "running_loras", ()) or ()),
            waiting_loras=tuple(g(st, "waiting_loras", ()) or ()),
            prefix_cache_queries=g(st, "prefix_cache_queries", None),
            prefix_cache_hits=g(st, "prefix_cache_hits", None), scraped_at=now)
        if self.admission is not None:
            self.admission.observe(self.cfg.model, self.endpoints[i])
            if self.admission.queued():
                self._pump(now)

    # -- replicas during a run ----------------------------------------------------------------

    def call_at(self, t: float, fn: Callable[[float], None]) -> None:
        """Call `fn(now)` at virtual time `t` (an autoscaler's ticks and delayed actions)."""
        self._push(t, _CALL, fn)

    def add_replica(self, now: float) -> Endpoint:
        """A new replica joins the pool at `now`, ready (any cold start is the caller's)."""
        from ..sim.engine import Engine

        i = len(self.engines)
        self.engines.append(Engine(self.profile, seed=self.cfg.seed * 1000 + i,
                                   name=f"engine-{i}", kv_events=self._kv_events))
        ep = Endpoint(host=f"10.0.{i // 250}.{i % 250 + 1}", port=8000)
        self.endpoints.append(ep)
        self.by_name[ep.name] = i
        self._pending_events.append([])
        self._busy.append(False)
        self.router.pools[self.cfg.model].pool.add(ep)
        self._scrape(i, now)
        self._push(now + self.cfg.scrape_interval, _SCRAPE, i)
        return ep

    def remove_replica(self, name: str) -> None:
        """Take a replica out of the pool: no new requests; it finishes the ones it holds."""
        self.router.pools[self.cfg.model].pool.remove(name)
        self._removed.add(self.by_name[name])

    def drained(self, name: str) -> bool:
        """True once a removed replica has no request left."""
        i = self.by_name[name]
        return i in self._removed and not self.engines[i].has_work() and not any(
            live.engine == i for live in self._live.values())

    # -- load -------------------------------------------------------------------------------

    def _start_stage(self, index: int, now: float) -> None:
        self._stage = index
        self._stage_sent = 0
        self._stage_done = 0
        self._stage_start = now
        self._stage_items = 0
        stage = self.cfg.load.stages[index]
        if self.progress:
            self.progress(index, 0, stage.count)
        if stage.rate is not None:
            for off in self.cfg.load.arrivals(index):
                self._push(now + off, _ARRIVE, index)
            if stage.count == 0:
                self._stage_over(now)
        else:
            for _ in range(min(stage.concurrency or 1, stage.count)):
                self._stage_sent += 1
                self._push(now, _ARRIVE, index)

    def _stage_over(self, now: float) -> None:
        nxt = self._stage + 1
        if nxt < len(self.cfg.load.stages):
            self._push(now + self.cfg.load.interval, _STAGE, nxt)
        else:
            self._finished = True

    def _concurrency_more(self, stage: Stage, now: float) -> bool:
        if self._stage_sent >= stage.count:
            return False
        return not stage.duration or now < self._stage_start + stage.duration

    def _send(self, now: float, stage_index: int) -> None:
        item = self.cfg.workload.next_item(self._stage_items, self._sent_total)
        self._stage_items += 1
        self._sent_total += 1
        if self.cfg.load.stages[stage_index].rate is not None:
            self._stage_sent += 1
        rid = f"r{self._sent_total}"
        rec = RequestRecord(key=item.key, stage=stage_index, start=now,
                            prompt_tokens=item.prompt_tokens)
        self._records[stage_index].append(rec)
        headers = self.cfg.slo.headers(self._sent_total) if self.cfg.slo else {}
        self._targets[stage_index].append(SloMix.target_of(headers))
        body = {"model": self.cfg.model, "prompt": item.prompt, "max_tokens": item.max_tokens,
                "stream": self.cfg.stream}
        lifecycle = RequestLifecycle(self.router, admission=self.admission)
        (action,) = lifecycle.receive("completions", body, headers, request_id=rid, now=now,
                                      token_ids=self._token_ids(item) if self.precise else None)
        if isinstance(action, Wait):
            action.ticket.waiter = (lifecycle, item, rec, rid)
            self._pump(now)  # as the gateway's driver does after an enqueue
            return
        self._sent(now, action, lifecycle, item, rec, rid)

    def _sent(self, now: float, action: Any, lifecycle: RequestLifecycle, item: WorkItem,
              rec: RequestRecord, rid: str) -> None:
        """The lifecycle's answer to a request: an error, or the engine it goes to."""
        if not isinstance(action, SendUpstream):
            assert isinstance(action, Respond)
            rec.error = f"{action.error.status} {action.error.code}: {action.error.message}"
            rec.end = now
            self._request_over(now)
            return
        target = action.endpoint
        i = self.by_name[target.name]
        rec.endpoint = target.name
        from ..sim.engine import SimRequest

        sim_req = SimRequest(request_id=rid, prompt_tokens=self._token_ids(item),
                             max_tokens=item.max_tokens, ignore_eos=self.cfg.ignore_eos)
        self._live[rid] = _Live(rec, lifecycle, i)
        # the serving front end (proxies, the API server tokenizing the prompt) before the
        # engine sees the request; see Engine.front_end
        delay = self.engines[i].front_end(len(sim_req.prompt_tokens))
        if delay > 0:
            self._push(now + delay, _ENGINE_IN, (i, sim_req))
        else:
            self._engine_in(i, sim_req, now)

    def _pump(self, now: float) -> None:
        """Admission: fail the waiting requests past their TTL, send those it releases."""
        adm = self.admission
        assert adm is not None
        for ticket, err in adm.expire(now):
            lifecycle, item, rec, rid = ticket.waiter
            self._sent(now, lifecycle.expired(err)[0], lifecycle, item, rec, rid)
        for ticket in adm.dispatchable(now):
            lifecycle, item, rec, rid = ticket.waiter
            self._sent(now, lifecycle.released(now)[0], lifecycle, item, rec, rid)
        if not self._ticking and adm.queued():
            self._ticking = True
            self._push(now + ADMISSION_TICK, _TICK, None)

    def _engine_in(self, i: int, req: Any, now: float) -> None:
        try:
            self.engines[i].add_request(req, now)
        except BadRequest as e:
            # the engine answers 400 (a prompt longer than its context, say), as a real
            # server does: the request fails and the run goes on
            entry = self._live.pop(req.request_id)
            entry.record.error = f"400 {e.error_type}: {e.message}"
            entry.record.end = now
            entry.lifecycle.upstream_answered(now, 400, final=True)
            entry.lifecycle.end(now)
            self._request_over(now)
            return
        if not self._busy[i]:
            self._step(i, now)

    def _request_over(self, now: float) -> None:
        self._stage_done += 1
        stage = self.cfg.load.stages[self._stage]
        if self.progress:
            self.progress(self._stage, self._stage_done, stage.count)
        if stage.rate is not None:
            if self._stage_done >= stage.count:
                self._stage_over(now)
        elif self._concurrency_more(stage, now):
            self._stage_sent += 1  # reserved now, sent by the event (no recursion on errors)
            self._push(now, _ARRIVE, self._stage)
        elif self._stage_done >= self._stage_sent:
            self._stage_over(now)

    # -- engines ----------------------------------------------------------------------------

    def _step(self, i: int, now: float) -> None:
        eng = self.engines[i]
        if self.precise:
            self._publish(i)
        if not eng.has_work():
            self._busy[i] = False
            return
        out = eng.step(now)
        self._busy[i] = True
        self._push(now + out.duration, _STEP_DONE, (i, out.outputs))
        if self.precise:
            self._pending_events[i] = eng.drain_kv_events()

    def _publish(self, i: int) -> None:
        """Deliver engine i's events of its last step to every precise scorer's index."""
        events = self._pending_events[i]
        if events:
            name = self.endpoints[i].name
            for scorer in self.precise:
                apply_engine_events(scorer.index, name, events)
            self._pending_events[i] = []

    def _deliver(self, now: float, outputs: list[Any]) -> None:
        live = self._live
        freed = False
        for o in outputs:
            entry = live.get(o.request_id)
            if entry is None:
                continue
            rec = entry.record
            if o.new_tokens == 1 and rec.last_token is not None:
                # the hot path (one decode token), inlined from RequestRecord.on_tokens
                rec.itl.append(now - rec.last_token)
                rec.last_token = now
                rec.output_tokens += 1
            elif o.new_tokens:
                rec.on_tokens(now, o.new_tokens)
            if o.first:
                rec.cached_tokens = o.cached_tokens
                rec.prompt_tokens = o.prompt_tokens
                if self.cfg.stream:
                    entry.lifecycle.first_byte(now)
                freed = True
            if o.finished:
                freed = True
                del live[o.request_id]
                if not self.cfg.stream:  # the whole answer is its first byte
                    entry.lifecycle.first_byte(now, stream=False)
                rec.end = now
                if o.finish_reason not in ("stop", "length"):
                    rec.error = f"finish_reason={o.finish_reason}"
                usage = {"prompt_tokens": rec.prompt_tokens,
                         "completion_tokens": rec.output_tokens,
                         "prompt_tokens_details": {"cached_tokens": rec.cached_tokens or 0}}
                entry.lifecycle.end(now, usage)
                self._request_over(now)
        if freed and self.admission is not None and self.admission.queued():
            self._pump(now)

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> SimResult:
        wall0 = time.perf_counter()
        n = self.cfg.replicas
        for i in range(n):
            # the gateway was up before the load began: every endpoint has been scraped once
            self._scrape(i, 0.0)
            self._push(self.cfg.scrape_interval * i / n, _SCRAPE, i)
        self._push(0.0, _STAGE, 0)
        heap = self._heap
        pop = heapq.heappop
        now = 0.0
        limit = self.cfg.max_virtual_time
        events = 0
        while heap and not self._finished:
            now, _, kind, payload = pop(heap)
            events += 1
            if limit is not None and now > limit:
                break
            if kind == _STEP_DONE:
                i, outputs = payload
                self._deliver(now, outputs)
                self._step(i, now)
            elif kind == _SCRAPE:
                self._scrape(payload, now)
                if payload not in self._removed:
                    self._push(now + self.cfg.scrape_interval, _SCRAPE, payload)
            elif kind == _ARRIVE:
                self._send(now, payload)
            elif kind == _ENGINE_IN:
                self._engine_in(payload[0], payload[1], now)
            elif kind == _CALL:
                payload(now)
            elif kind == _TICK:
                self._ticking = False
                if self.admission is not None and self.admission.queued():
                    self._pump(now)
            else:
                self._start_stage(payload, now)
        # whatever is still in flight when the run is cut short counts as failed
        for entry in self._live.values():
            entry.record.error = "unfinished when the run stopped"
        return self._result(now, time.perf_counter() - wall0, events)

    def _result(self, now: float, wall: float, events: int) -> SimResult:
        stages = []
        for i, (stage, recs) in enumerate(zip(self.cfg.load.stages, self._records)):
            stages.append(summarize(recs, stage=i, rate=stage.rate,
                                    concurrency=stage.concurrency,
                                    planned_duration=stage.duration))
        engines = []
        for ep, eng in zip(self.endpoints, self.engines):
            st = eng.stats()
            engines.append({"endpoint": ep.name,
                            "prefix_cache_queries": getattr(st, "prefix_cache_queries", None),
                            "prefix_cache_hits": getattr(st, "prefix_cache_hits", None),
                            "preemptions": getattr(st, "preemptions", None),
                            "evictions": getattr(st, "evictions", None)})
        wl = self.cfg.workload
        config = {"policy": _policy_name(self.cfg.policy), "replicas": self.cfg.replicas,
                  "profile": self.cfg.profile,
                  "profile_overrides": dict(self.cfg.profile_overrides),
                  "model": self.cfg.model, "seed": self.cfg.seed,
                  "ignore_eos": self.cfg.ignore_eos, "stream": self.cfg.stream,
                  "scrape_interval": self.cfg.scrape_interval,
                  "workload": {"name": wl.name, **wl.params},
                  "load": {"type": self.cfg.load.kind, "burstiness": self.cfg.load.burstiness,
                           "interval": self.cfg.load.interval, "seed": self.cfg.load.seed,
                           "stages": [{"rate": s.rate, "duration": s.duration,
                                       "concurrency": s.concurrency,
                                       "num_requests": s.num_requests}
                                      for s in self.cfg.load.stages]},
                  "mode": "virtual"}
        kv_index = ({s.name: {**asdict(s.index.stats()), **asdict(s.stats())}
                     for s in self.precise} if self.precise else None)
        if self.cfg.admission is not None:
            config["admission"] = self.cfg.admission.model_dump(by_alias=True, mode="json")
        if self.cfg.slo is not None:
            config["slo"] = asdict(self.cfg.slo)
        return SimResult(config=config, stages=stages, records=self._records, engines=engines,
                         virtual_seconds=now, wall_seconds=wall, events=events,
                         kv_index=kv_index,
                         targets=self._targets if self.cfg.slo is not None else [])


def run_virtual(cfg: SimConfig,
                progress: Callable[[int, int, int], None] | None = None) -> SimResult:
    """Run one virtual-time benchmark and return its per-stage summaries."""
    return VirtualBench(cfg, progress).run()
