"""The simulated vLLM engine: a sans-I/O state machine stepped by its caller.

One `step(now)` plans a vLLM V1 scheduler step (running requests first, then waiting ones in
arrival order, under the token budget and the sequence limit, with chunked prefill, prefix-cache
hits, preemption by recompute and LoRA slots), applies it and returns how long the GPU would take
(the timing model) with the tokens it produced. The caller delivers the outputs at now + duration
and does not step again before then. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import xxhash

from ..core.errors import BadRequest
from . import tokenizer
from .blocks import (AllBlocksCleared, BlockManager, BlockRemoved, BlockStored, KVEvent,
                     chain_hashes, root_hash)
from .profile import EngineProfile
from .timing import TimingModel

__all__ = ["Engine", "SimRequest", "TokenOutput", "StepOutcome", "EngineStats", "KVEvent",
           "BlockStored", "BlockRemoved", "AllBlocksCleared"]

FINISH_LENGTH = "length"
FINISH_STOP = "stop"
FINISH_ABORT = "abort"


@dataclass
class SimRequest:
    """A request as the engine sees it: prompt token ids and how much to generate."""

    request_id: str
    prompt_tokens: list[int]
    max_tokens: int
    lora: str | None = None
    ignore_eos: bool = False
    #: key of the deterministic output stream (tokenizer.output_words); default: request_id
    output_key: str | None = None


@dataclass(slots=True)
class TokenOutput:
    """Tokens one request produced in a step (one, in this engine)."""

    request_id: str
    new_tokens: int
    finished: bool
    finish_reason: str | None
    first: bool
    prompt_tokens: int
    cached_tokens: int


@dataclass(slots=True)
class StepOutcome:
    """The duration of a step (seconds) and the outputs available when it ends."""

    duration: float
    outputs: list[TokenOutput]
    #: requests scheduled for the first time in this step (not after a preemption): vLLM's
    #: `scheduled_ts`, which ends a request's queue time and starts its prefill time
    first_scheduled: list[str] = field(default_factory=list)


@dataclass
class EngineStats:
    """A snapshot of the engine for metrics (names follow vLLM's /metrics)."""

    waiting: int
    running: int
    kv_usage: float
    num_blocks: int
    block_size: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    preemptions: int
    max_lora: int
    running_loras: list[str]
    waiting_loras: list[str]
    loaded_loras: list[str]
    request_success: dict[str, int]
    prompt_tokens: int
    generation_tokens: int
    steps: int
    evictions: int
    kv_events_dropped: int
    num_requests_swapped: int = 0


class _Seq:
    """Engine-side state of one request."""

    __slots__ = ("rid", "tokens", "ntok", "prompt_len", "max_tokens", "target", "lora", "lora_id",
                 "key_seed", "parent", "hashes", "blocks", "computed", "ncached", "outputs",
                 "cached_tokens", "state")

    def __init__(self, req: SimRequest, prompt: list[int], target: int, lora_id: int | None,
                 key_seed: int, parent: int, hashes: list[int]) -> None:
        self.rid = req.request_id
        self.tokens = prompt          # prompt + output ids, materialized lazily (for hashing)
        self.ntok = len(prompt)       # prompt + output tokens so far
        self.prompt_len = len(prompt)
        self.max_tokens = req.max_tokens
        self.target = target          # outputs after which the request finishes
        self.lora = req.lora
        self.lora_id = lora_id
        self.key_seed = key_seed
        self.parent = parent          # root hash of the block chain
        self.hashes = hashes          # hashes of the full blocks known so far
        self.blocks: list[int] = []
        self.computed = 0             # tokens whose KV is computed (or cache-hit)
        self.ncached = 0              # leading blocks entered into the prefix cache
        self.outputs = 0
        self.cached_tokens = -1       # prompt tokens hit at first scheduling (-1: not yet)
        self.state = "waiting"


class Engine:
    """A simulated vLLM V1 engine for one replica (see the module docstring)."""

    def __init__(self, profile: EngineProfile, *, seed: int = 0, name: str = "engine-0",
                 kv_events: bool = False) -> None:
        self.profile = profile
        self.seed = seed
        self.name = name
        self.block_size = bs = profile.block_size
        num_blocks = int(profile.num_blocks or 0)
        self.kv = BlockManager(num_blocks, bs, events=kv_events)
        self.timing = TimingModel(profile)
        self.max_num_seqs = profile.max_num_seqs
        self.max_num_batched_tokens = profile.max_num_batched_tokens
        self.max_loras = profile.max_loras
        # a request longer than the whole KV cache could never run (vLLM refuses to start)
        self.max_model_len = min(profile.max_model_len, num_blocks * bs)
        self._rng = random.Random(xxhash.xxh64_intdigest(f"{name}:{seed}".encode()))
        self._noise = profile.noise
        self._waiting: deque[_Seq] = deque()
        self._first_scheduled: list[str] = []
        self._running: list[_Seq] = []
        self._by_id: dict[str, _Seq] = {}
        # LoRA: registered adapters (name -> int id), GPU slots (LRU order), per-adapter counts
        self._lora_ids: dict[str, int] = {}
        self._next_lora_id = 1
        self._slots: OrderedDict[str, None] = OrderedDict()
        self._lora_running: dict[str, int] = {}
        self._lora_waiting: dict[str, int] = {}
        # counters
        self._queries = 0
        self._hits = 0
        self._preemptions = 0
        self._success: dict[str, int] = {}
        self._prompt_tokens = 0
        self._generation_tokens = 0
        self._steps = 0
        self._host_charge = 0.0

    # -- requests --------------------------------------------------------------------------------
    def add_request(self, req: SimRequest, now: float) -> None:
        """Queue a request (it waits until a step schedules it). Raises BadRequest if it can never
        run here: empty prompt, max_tokens < 1, longer than the context, duplicate id."""
        prompt = list(req.prompt_tokens)
        n = len(prompt)
        if n == 0:
            raise BadRequest("the prompt is empty", param="prompt")
        if req.max_tokens < 1:
            raise BadRequest("max_tokens must be at least 1", param="max_tokens")
        if n + req.max_tokens > self.max_model_len:
            raise BadRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {n + req.max_tokens} tokens ({n} in the messages, "
                f"{req.max_tokens} in the completion).", param="max_tokens")
        if req.request_id in self._by_id:
            raise BadRequest(f"request id {req.request_id!r} is already in flight")
        lora_id = None
        if req.lora is not None:
            if self.max_loras < 1:
                raise BadRequest(f"LoRA adapter {req.lora!r} requested but this engine has no "
                                 f"LoRA slots (max_loras=0)", param="model")
            lora_id = self.load_lora(req.lora)
            self._lora_waiting[req.lora] = self._lora_waiting.get(req.lora, 0) + 1
        key_seed = tokenizer.output_key_seed(self.seed, req.output_key or req.request_id)
        if req.ignore_eos:
            target = req.max_tokens
        else:
            # a seeded "natural" length, uniform in 1..max_tokens
            u = xxhash.xxh64_intdigest(b"length", key_seed) / 2.0**64
            target = 1 + int(u * req.max_tokens)
        parent = root_hash(req.lora)
        seq = _Seq(req, prompt, target, lora_id, key_seed, parent,
                   chain_hashes(prompt, self.block_size, parent))
        self._by_id[seq.rid] = seq
        self._waiting.append(seq)

    def abort(self, request_id: str, now: float) -> None:
        """Drop a request; its blocks are released (and stay cached). Unknown ids are ignored."""
        seq = self._by_id.pop(request_id, None)
        if seq is None:
            return
        if seq.state == "running":
            self._running.remove(seq)
            self._lora_leave_running(seq)
            self.kv.release(seq.blocks)
            seq.blocks = []
        else:
            self._waiting.remove(seq)
            self._lora_leave_waiting(seq)
        seq.state = "finished"
        self._success[FINISH_ABORT] = self._success.get(FINISH_ABORT, 0) + 1

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def scraped(self) -> None:
        """A /metrics scrape came: where the profile says the server's page rendering shares
        the engine's cores (`scrape_engine_ms`), a busy engine's next step is that much
        longer; an idle one loses nothing."""
        if self.profile.scrape_engine_ms and self.has_work():
            self._host_charge += self.profile.scrape_engine_ms / 1e3

    def front_end(self, prompt_tokens: int) -> float:
        """A request of `prompt_tokens` arrives: the seconds until this engine sees it, the
        profile's `frontend_delay`. Where the profile puts a share of the front end on the
        engine's core (`frontend_engine_share`) and the engine is computing, that share takes
        turns with the steps: the request waits that much longer and the engine's next step is
        as much later; an idle engine costs nothing."""
        seconds = self.profile.frontend_delay(prompt_tokens)
        share = self.profile.frontend_engine_share
        if share and self.has_work():
            self._host_charge += share * seconds
            seconds += share * seconds
        return seconds

    # -- the step --------------------------------------------------------------------------------
    def step(self, now: float) -> StepOutcome:
        """Plan and run one scheduler step at `now` (see the module docstring)."""
        bs = self.block_size
        kv = self.kv
        free = kv.free
        running = self._running
        budget = self.max_num_batched_tokens
        sched: list[tuple[_Seq, int]] = []
        preempted = False
        self._first_scheduled = []

        # 1. running requests, in order: decode one token or continue a chunked prefill
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = seq.ntok - seq.computed
            if n > budget:
                n = budget
            end = seq.computed + n
            need = (end + bs - 1) // bs - len(seq.blocks)
            if need > 0:
                while len(free) < need:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is seq:
                        break
                if seq.state != "running":
                    break
                got = kv.allocate(need)
                assert got is not None  # preemption above freed `need` blocks
                seq.blocks += got
            sched.append((seq, n))
            budget -= n
            if end // bs > seq.ncached:
                self._cache_blocks(seq, end // bs)
            i += 1

        # 2. waiting requests, first come first served (none if this step preempted, as in
        # vLLM, unless nothing else would run: no empty steps)
        if self._waiting and (not preempted or not sched):
            self._schedule_waiting(sched, budget)

        if not sched:
            return StepOutcome(0.0, [])
        self._steps += 1
        return self._finish_step(sched)

    def _schedule_waiting(self, sched: list[tuple[_Seq, int]], budget: int) -> None:
        bs = self.block_size
        kv = self.kv
        waiting = self._waiting
        running = self._running
        skipped: list[_Seq] = []
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            seq = waiting[0]
            if seq.lora is not None and not self._lora_slot(seq.lora):
                skipped.append(waiting.popleft())   # waits for a LoRA slot; others may pass
                continue
            ntok = seq.ntok
            max_hit = (ntok - 1) // bs              # at least one token must be computed
            if len(seq.hashes) < max_hit:
                self._extend_hashes(seq, max_hit)
            hit = kv.lookup(seq.hashes, max_hit)
            cached = len(hit) * bs
            n = ntok - cached
            if n > budget:
                n = budget
            end = cached + n
            need = (end + bs - 1) // bs - len(hit)
            if need + kv.num_unreferenced(hit) > len(kv.free):
                break                               # no room: wait (no preemption for waiting)
            kv.touch(hit)
            seq.blocks = hit + kv.allocate(need)    # type: ignore[operator]
            seq.computed = cached
            seq.ncached = len(hit)
            if seq.cached_tokens < 0:
                seq.cached_tokens = cached
                self._prompt_tokens += seq.prompt_len
                self._first_scheduled.append(seq.rid)
            self._queries += ntok
            self._hits += cached
            waiting.popleft()
            seq.state = "running"
            running.append(seq)
            if seq.lora is not None:
                self._lora_leave_waiting(seq)
                self._lora_running[seq.lora] = self._lora_running.get(seq.lora, 0) + 1
            sched.append((seq, n))
            budget -= n
            if end // bs > seq.ncached:
                self._cache_blocks(seq, end // bs)
        if skipped:
            waiting.extendleft(reversed(skipped))

    def _finish_step(self, sched: list[tuple[_Seq, int]]) -> StepOutcome:
        tokens = sampled = decode_ctx = prefill_kv = 0
        pairs = 0.0
        outputs: list[TokenOutput] = []
        finished = False
        for seq, n in sched:
            c = seq.computed
            tokens += n
            if n == 1:
                decode_ctx += c + 1
            else:
                pairs += n * c + n * (n + 1) / 2
                prefill_kv += c + n
            c += n
            seq.computed = c
            if c < seq.ntok:
                continue                            # a prefill chunk: no token yet
            sampled += 1
            k = seq.outputs = seq.outputs + 1
            if k >= seq.target:
                reason = FINISH_LENGTH if k >= seq.max_tokens else FINISH_STOP
                outputs.append(TokenOutput(seq.rid, 1, True, reason, k == 1, seq.prompt_len,
                                           seq.cached_tokens))
                self._retire(seq, reason)
                finished = True
            else:
                seq.ntok += 1
                outputs.append(TokenOutput(seq.rid, 1, False, None, k == 1, seq.prompt_len,
                                           seq.cached_tokens))
        self._generation_tokens += sampled
        if finished:
            self._running = [s for s in self._running if s.state == "running"]
        duration = self.timing.step_seconds(tokens, sampled, decode_ctx, pairs, prefill_kv)
        if self._noise:
            duration *= max(0.2, self._rng.gauss(1.0, self._noise))
        if self._host_charge:
            duration += self._host_charge
            self._host_charge = 0.0
        return StepOutcome(duration, outputs, self._first_scheduled)

    # -- blocks ----------------------------------------------------------------------------------
    def _materialize(self, seq: _Seq, upto: int) -> None:
        """Make sure seq.tokens holds the ids of its first `upto` tokens (outputs on demand)."""
        have = len(seq.tokens)
        if have < upto:
            seq.tokens += tokenizer.output_token_ids(seq.key_seed, have - seq.prompt_len,
                                                     upto - have)

    def _extend_hashes(self, seq: _Seq, upto: int) -> None:
        self._materialize(seq, upto * self.block_size)
        have = len(seq.hashes)
        parent = seq.hashes[-1] if have else seq.parent
        seq.hashes += chain_hashes(seq.tokens, self.block_size, parent, have, upto)

    def _cache_blocks(self, seq: _Seq, full: int) -> None:
        """Enter the sequence's blocks ncached..full-1 (computed by the end of this step)."""
        lo = seq.ncached
        if len(seq.hashes) < full:
            self._extend_hashes(seq, full)
        bs = self.block_size
        self._materialize(seq, full * bs)
        self.kv.cache(seq.blocks[lo:full], seq.hashes[lo:full],
                      seq.hashes[lo - 1] if lo else None,
                      seq.tokens[lo * bs:full * bs], seq.lora_id, seq.lora)
        seq.ncached = full

    def _preempt(self, seq: _Seq) -> None:
        """Recompute preemption: release the blocks, back to the front of the waiting queue."""
        self.kv.release(seq.blocks)
        seq.blocks = []
        seq.computed = 0
        seq.ncached = 0
        seq.state = "waiting"
        self._preemptions += 1
        if seq.lora is not None:
            self._lora_leave_running(seq)
            self._lora_waiting[seq.lora] = self._lora_waiting.get(seq.lora, 0) + 1
        self._waiting.appendleft(seq)

    def _retire(self, seq: _Seq, reason: str) -> None:
        seq.state = "finished"
        self.kv.release(seq.blocks)
        seq.blocks = []
        del self._by_id[seq.rid]
        self._lora_leave_running(seq)
        self._success[reason] = self._success.get(reason, 0) + 1

    def reset_prefix_cache(self) -> bool:
        """Forget all cached blocks (vLLM refuses while requests hold blocks); True if done."""
        return self.kv.reset()

    # -- LoRA ------------------------------------------------------------------------------------
    def load_lora(self, name: str) -> int:
        """Register an adapter (servable from now on); returns its integer id. GPU slots are taken
        on demand when a request for it is scheduled."""
        lid = self._lora_ids.get(name)
        if lid is None:
            lid = self._lora_ids[name] = self._next_lora_id
            self._next_lora_id += 1
        return lid

    def unload_lora(self, name: str) -> bool:
        """Unregister an adapter; True if it was registered. In-flight requests still finish."""
        if self._lora_ids.pop(name, None) is None:
            return False
        if name in self._slots and not self._lora_running.get(name):
            del self._slots[name]
        return True

    @property
    def loras(self) -> list[str]:
        """Registered adapters."""
        return list(self._lora_ids)

    @property
    def loaded_loras(self) -> list[str]:
        """Adapters in GPU slots, least recently used first."""
        return list(self._slots)

    def _lora_slot(self, name: str) -> bool:
        """Make sure `name` holds a GPU slot: reuse, take a free slot, or unload the least
        recently used idle adapter. False if every slot serves running requests."""
        slots = self._slots
        if name in slots:
            slots.move_to_end(name)
            return True
        if len(slots) >= self.max_loras:
            for other in slots:
                if not self._lora_running.get(other):
                    del slots[other]
                    break
            else:
                return False
        slots[name] = None
        return True

    def _lora_leave_running(self, seq: _Seq) -> None:
        if seq.lora is None:
            return
        left = self._lora_running[seq.lora] - 1
        if left:
            self._lora_running[seq.lora] = left
        else:
            del self._lora_running[seq.lora]

    def _lora_leave_waiting(self, seq: _Seq) -> None:
        if seq.lora is None:
            return
        left = self._lora_waiting[seq.lora] - 1
        if left:
            self._lora_waiting[seq.lora] = left
        else:
            del self._lora_waiting[seq.lora]

    # -- observation -----------------------------------------------------------------------------
    def stats(self) -> EngineStats:
        kv = self.kv
        return EngineStats(
            waiting=len(self._waiting), running=len(self._running), kv_usage=kv.usage,
            num_blocks=kv.num_blocks, block_size=kv.block_size,
            prefix_cache_queries=self._queries, prefix_cache_hits=self._hits,
            preemptions=self._preemptions, max_lora=self.max_loras,
            running_loras=sorted(self._lora_running), waiting_loras=sorted(self._lora_waiting),
            loaded_loras=list(self._slots), request_success=dict(self._success),
            prompt_tokens=self._prompt_tokens, generation_tokens=self._generation_tokens,
            steps=self._steps, evictions=kv.evictions, kv_events_dropped=kv.events_dropped)

    def drain_kv_events(self) -> list[KVEvent]:
        """KV events since the last call, in order (empty unless built with kv_events=True)."""
        return self.kv.drain_events()
