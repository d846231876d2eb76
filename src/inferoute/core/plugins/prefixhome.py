"""Homes of prompt families: a stable, capacity-independent order of endpoints per prefix.

A prompt family is named by the hash of one of its leading blocks (block `key_blocks` - 1, or
the last full block of a shorter prompt). Rendezvous (highest random weight) hashing ranks the
endpoints for that key: rank 0 is the family's home, rank 1 its first spill target, and so on.
The order depends only on the key and the endpoint names, so:

- a family whose blocks were evicted everywhere goes back to the same replica instead of to
  whichever one looked least loaded at that moment (which would leave a copy of the prefix on
  every replica it ever touched, each copy evicting some other family);
- a hot family spills to the same second replica every time, so it is replicated on few
  replicas rather than smeared over all of them;
- adding or removing an endpoint moves only the families whose home it was.
"""

from __future__ import annotations

from collections.abc import Sequence

from xxhash import xxh64_intdigest

__all__ = ["common_prefix", "family_key", "home_ranks"]


def family_key(hashes: Sequence[int], key_blocks: int) -> int | None:
    """The hash naming the prompt's family: its `key_blocks`-th block (or its last full one)."""
    if not hashes:
        return None
    return hashes[min(len(hashes), key_blocks) - 1]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading hashes `a` and `b` share (a family's prefix, from its first two
    requests: once per family, so a linear scan will do)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def home_ranks(key: int, names: Sequence[str]) -> list[int]:
    """Each name's rendezvous rank for `key`: 0 for the home, len(names) - 1 for the last."""
    weights = [xxh64_intdigest(name.encode(), key) for name in names]
    order = sorted(range(len(names)), key=weights.__getitem__, reverse=True)
    ranks = [0] * len(names)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks
