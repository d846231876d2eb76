"""Synthetic workloads: deterministic lists of prompts whose tokens are whitespace words.

Every word is three lower-case letters, so a prompt of N words is exactly N tokens for the
simulator's tokenizer (one token per word) and about 4N characters, which keeps the gateway's
chars/4 token estimate honest too. The same (workload, parameters, seed) always yields the same
prompts, byte for byte.

Workloads:
- `shared_prefix`: inference-perf's synthetic shared prefix: `num_groups` system prompts of
  `system_prompt_len` words, each followed by `num_prompts_per_group` distinct questions of
  `question_len` words. With `multi_turn`, the prompts of a group form one conversation whose
  questions accumulate.
- `multi_turn_chat`: conversations that grow turn by turn (system prompt, then user turns and
  recorded assistant replies appended); consecutive turns of a conversation are spread out.
- `random`: unrelated prompts of random length, no sharing at all.
- `mixed`: short chat prompts with a few shared system prompts plus long prompts over a small set
  of shared documents, outputs of varied length (pair it with bursty arrivals).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.words import WORKLOAD_WORDS

#: every three-letter lower-case word: 17,576 distinct tokens
VOCAB: np.ndarray = np.array(WORKLOAD_WORDS, dtype=object)


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request of a workload: prompt text (words), its exact token count, output budget."""

    key: str
    prompt: str
    prompt_tokens: int
    max_tokens: int
    group: str | None = None
    session: str | None = None


@dataclass(slots=True)
class Workload:
    """A named, ordered list of requests; the load generator cycles through it."""

    name: str
    items: list[WorkItem]
    params: dict[str, Any]
    #: every stage starts again from the first item, as inference-perf's data generators do
    #: (a new `get_data()` per stage); otherwise the list keeps cycling across stages
    restart_each_stage: bool = False

    def __len__(self) -> int:
        return len(self.items)

    def item(self, i: int) -> WorkItem:
        """The i-th request sent; wraps around when the load outlasts the list."""
        return self.items[i % len(self.items)]

    def next_item(self, sent_in_stage: int, sent_in_run: int) -> WorkItem:
        """The request to send after `sent_in_stage` of this stage and `sent_in_run` in all."""
        return self.item(sent_in_stage if self.restart_each_stage else sent_in_run)


def _words(rng: np.random.Generator, n: int) -> str:
    if n <= 0:
        return ""
    return " ".join(VOCAB[rng.integers(0, len(VOCAB), size=n)].tolist())


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def shared_prefix(*, num_groups: int = 150, num_prompts_per_group: int = 5,
                  system_prompt_len: int = 6000, question_len: int = 1200,
                  output_len: int = 1000, multi_turn: bool = False, seed: int = 0) -> Workload:
    """inference-perf's shared-prefix workload, in a seeded random order of (group, question),
    replayed from the top in every stage; with `multi_turn` each group is one conversation, its
    turns kept in order, cycling on across stages."""
    _positive("num_groups", num_groups)
    _positive("num_prompts_per_group", num_prompts_per_group)
    _positive("system_prompt_len", system_prompt_len, 0)
    _positive("question_len", question_len, 0)
    _positive("output_len", output_len)
    rng = np.random.default_rng(seed)
    items: list[WorkItem] = []
    for g in range(num_groups):
        system = _words(rng, system_prompt_len)
        history = system
        tokens = system_prompt_len
        for q in range(num_prompts_per_group):
            question = _words(rng, question_len)
            if multi_turn:
                history = _join(history, question)
                tokens += question_len
                prompt, n = history, tokens
            else:
                prompt, n = _join(system, question), system_prompt_len + question_len
            items.append(WorkItem(f"sp-{seed}-{g}-{q}", prompt, n, output_len,
                                  group=f"g{g}", session=f"g{g}" if multi_turn else None))
    if not multi_turn:
        order = rng.permutation(len(items))
        items = [items[i] for i in order]
    else:
        # keep each conversation's turns in order; interleave conversations
        items = [items[g * num_prompts_per_group + q]
                 for q in range(num_prompts_per_group) for g in range(num_groups)]
    # inference-perf replays its shuffled prompt list from the top in every stage; a multi-turn
    # run keeps going (its conversations grow across stages)
    return Workload("shared_prefix", items, dict(
        num_groups=num_groups, num_prompts_per_group=num_prompts_per_group,
        system_prompt_len=system_prompt_len, question_len=question_len,
        output_len=output_len, multi_turn=multi_turn, seed=seed),
        restart_each_stage=not multi_turn)


def multi_turn_chat(*, num_conversations: int = 64, turns: int = 8,
                    system_prompt_len: int = 1000, user_len: int = 150,
                    reply_len: int = 250, output_len: int = 250, seed: int = 0) -> Workload:
    """Conversations that grow: turn t's prompt is the system prompt plus every earlier user
    message and (recorded) assistant reply plus a new user message. Items are ordered turn by
    turn across conversations, so a conversation's next turn comes `num_conversations` requests
    after its previous one."""
    _positive("num_conversations", num_conversations)
    _positive("turns", turns)
    _positive("output_len", output_len)
    rng = np.random.default_rng(seed)
    convs: list[list[WorkItem]] = []
    for c in range(num_conversations):
        history = _words(rng, system_prompt_len)
        tokens = system_prompt_len
        turns_c: list[WorkItem] = []
        for t in range(turns):
            if t:
                history = _join(history, _words(rng, reply_len))
                tokens += reply_len
            history = _join(history, _words(rng, user_len))
            tokens += user_len
            turns_c.append(WorkItem(f"mt-{seed}-{c}-{t}", history, tokens, output_len,
                                    group=f"c{c}", session=f"c{c}"))
        convs.append(turns_c)
    items = [convs[c][t] for t in range(turns) for c in range(num_conversations)]
    return Workload("multi_turn_chat", items, dict(
        num_conversations=num_conversations, turns=turns, system_prompt_len=system_prompt_len,
        user_len=user_len, reply_len=reply_len, output_len=output_len, seed=seed))


def random_prompts(*, num_prompts: int = 1000, input_len: int = 2000, input_spread: float = 0.5,
                   output_len: int = 300, output_spread: float = 0.5,
                   seed: int = 0) -> Workload:
    """Unrelated prompts; lengths uniform in len x [1 - spread, 1 + spread]."""
    _positive("num_prompts", num_prompts)
    _positive("input_len", input_len)
    _positive("output_len", output_len)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(num_prompts):
        n_in = max(1, int(round(input_len * rng.uniform(1 - input_spread, 1 + input_spread))))
        n_out = max(1, int(round(output_len * rng.uniform(1 - output_spread, 1 + output_spread))))
        items.append(WorkItem(f"rnd-{seed}-{i}", _words(rng, n_in), n_in, n_out))
    return Workload("random", items, dict(num_prompts=num_prompts, input_len=input_len,
                                          input_spread=input_spread, output_len=output_len,
                                          output_spread=output_spread, seed=seed))


def mixed(*, num_prompts: int = 1500, long_fraction: float = 0.3, num_documents: int = 24,
          document_len: int = 6000, num_system_prompts: int = 8, system_prompt_len: int = 600,
          short_len: int = 300, question_len: int = 200, seed: int = 0) -> Workload:
    """A mix: `long_fraction` of the prompts ask about one of `num_documents` shared long
    documents (document + question, short answers); the rest are short chats behind one of a few
    system prompts (longer answers)."""
    _positive("num_prompts", num_prompts)
    if not 0.0 <= long_fraction <= 1.0:
        raise ValueError("long_fraction must be within [0, 1]")
    rng = np.random.default_rng(seed)
    docs = [_words(rng, document_len) for _ in range(max(1, num_documents))]
    systems = [_words(rng, system_prompt_len) for _ in range(max(1, num_system_prompts))]
    items = []
    for i in range(num_prompts):
        if rng.random() < long_fraction:
            d = int(rng.integers(0, len(docs)))
            n_q = int(rng.integers(question_len // 2, question_len * 3 // 2 + 1))
            prompt = _join(docs[d], _words(rng, n_q))
            items.append(WorkItem(f"mix-{seed}-{i}", prompt, document_len + n_q,
                                  int(rng.integers(20, 200)), group=f"doc{d}"))
        else:
            s = int(rng.integers(0, len(systems)))
            n_u = int(rng.integers(short_len // 2, short_len * 3 // 2 + 1))
            prompt = _join(systems[s], _words(rng, n_u))
            items.append(WorkItem(f"mix-{seed}-{i}", prompt, system_prompt_len + n_u,
                                  int(rng.integers(50, 600)), group=f"sys{s}"))
    return Workload("mixed", items, dict(
        num_prompts=num_prompts, long_fraction=long_fraction, num_documents=num_documents,
        document_len=document_len, num_system_prompts=num_system_prompts,
        system_prompt_len=system_prompt_len, short_len=short_len, question_len=question_len,
        seed=seed))


WORKLOADS: dict[str, Callable[..., Workload]] = {
    "shared_prefix": shared_prefix,
    "multi_turn_chat": multi_turn_chat,
    "random": random_prompts,
    "mixed": mixed,
}


def make_workload(name: str, params: dict[str, Any] | None = None, *, seed: int = 0) -> Workload:
    """Build a workload by name; unknown names or parameters raise ValueError saying which."""
    factory = WORKLOADS.get(name)
    if factory is None:
        raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(WORKLOADS)}")
    kw = dict(params or {})
    kw.setdefault("seed", seed)
    try:
        return factory(**kw)
    except TypeError as exc:
        raise ValueError(f"workload {name}: {exc}") from None


def parse_params(pairs: list[str] | None, what: str = "workload parameter") -> dict[str, Any]:
    """`["num_groups=10", "multi_turn=true"]` -> {"num_groups": 10, "multi_turn": True}."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {pair!r} must look like name=value")
        value: Any = raw
        low = raw.lower()
        if low in ("true", "false"):
            value = low == "true"
        else:
            for conv in (int, float):
                try:
                    value = conv(raw)
                    break
                except ValueError:
                    continue
        out[key.strip()] = value
    return out


#: stages `bench sim` / `bench matrix` use for each workload unless --stages is given, sized for
#: 8 replicas of qwen3-32b-2xh100 to reach saturation (the shared-prefix one: the seed's 17)
DEFAULT_STAGES: dict[str, str] = {
    "shared_prefix": "seed",
    "multi_turn_chat": "30:15,60:15,90:15,120:15",
    "random": "20:20,40:20,60:20,80:20",
    "mixed": "150:30,200:30,250:30,300:30",
}

#: parameters those commands use unless --param overrides them: enough distinct prompts that
#: no prompt is sent twice (only the shared-prefix workload reuses its 750, as the seed did)
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "shared_prefix": {},
    "multi_turn_chat": {"num_conversations": 750, "turns": 6, "system_prompt_len": 800,
                        "user_len": 120, "reply_len": 200, "output_len": 400},
    "random": {"num_prompts": 4000},
    "mixed": {"num_prompts": 32000, "document_len": 4000},
}

#: arrival process per workload for the same commands (mixed: bursty gamma arrivals)
DEFAULT_LOAD: dict[str, tuple[str, float]] = {
    "shared_prefix": ("poisson", 1.0),
    "multi_turn_chat": ("poisson", 1.0),
    "random": ("poisson", 1.0),
    "mixed": ("gamma", 0.5),
}
