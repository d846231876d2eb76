"""PrefixIndex against a naive reference model under random operations."""

from __future__ import annotations

import random

from inferoute.core.plugins.prefixindex import PrefixIndex


class Naive:
    """Per endpoint, a list of hashes oldest first; nothing clever."""

    def __init__(self) -> None:
        self.lru: dict[str, list[int]] = {}

    def insert(self, name, hashes, cap) -> None:
        lst = self.lru.setdefault(name, [])
        for h in reversed(hashes):
            if h in lst:
                lst.remove(h)
            lst.append(h)
        del lst[: max(0, len(lst) - cap)]

    def match(self, hashes, names) -> list[int]:
        out = []
        for name in names:
            held = set(self.lru.get(name, ()))
            n = 0
            for h in hashes:
                if h not in held:
                    break
                n += 1
            out.append(n)
        return out


def check_consistent(idx: PrefixIndex, ref: Naive) -> None:
    owners: dict[int, set[str]] = {}
    for name in idx.endpoints():
        assert idx.size(name) == len(ref.lru.get(name, []))
        for h in ref.lru.get(name, []):
            assert idx.holds(name, h)
            owners.setdefault(h, set()).add(name)
    assert len(idx) == len(owners)


def test_random_operations_match_the_reference() -> None:
    rng = random.Random(42)
    idx, ref = PrefixIndex(), Naive()
    names = [f"ep{i}" for i in range(6)]
    prompts = [[rng.getrandbits(64) for _ in range(rng.randint(1, 30))] for _ in range(25)]
    for step in range(3000):
        op = rng.random()
        name = rng.choice(names)
        if op < 0.6:
            p = rng.choice(prompts)
            cut = p[: rng.randint(1, len(p))]
            cap = rng.choice((8, 20, 50, 1000))
            idx.insert(name, cut, cap)
            ref.insert(name, cut, cap)
        elif op < 0.95:
            p = rng.choice(prompts)
            cands = rng.sample(names, rng.randint(1, len(names)))
            assert idx.match(p, cands) == ref.match(p, cands), step
        else:
            idx.remove_endpoint(name)
            ref.lru.pop(name, None)
        if step % 250 == 0:
            check_consistent(idx, ref)
    check_consistent(idx, ref)
