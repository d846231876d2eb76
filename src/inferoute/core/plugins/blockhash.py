"""Chained block hashes of a prompt, the keys of the approximate prefix index.

The prompt text is cut into blocks of `block_chars` UTF-8 bytes (a block of N tokens is taken
as 4N characters, the usual English average); only full blocks are hashed, as a model server
caches only full KV blocks. Block i's hash is xxhash64 of the block's bytes seeded with block
i-1's hash, so it stands for the whole prefix up to and including block i; the chain starts from
a seed derived from the target model name and the block size, so two models (or LoRA adapters)
never share entries, nor do two block sizes.

`request_hashes` hashes a request's prompt once per block size and keeps the chain on the
request: every prefix scorer of a policy, its index update and a fallback's re-accounting read
the same list, and a scorer that matches more blocks than the last one only hashes the rest.
"""

from __future__ import annotations

from xxhash import xxh64_intdigest

from ..request import InferenceRequest

__all__ = ["block_hashes", "chain_seed", "CHARS_PER_TOKEN", "request_hashes"]

#: estimated characters per token, used to size blocks of untokenised text
CHARS_PER_TOKEN = 4


def chain_seed(model: str, block_chars: int) -> int:
    """The hash the chain starts from for `model` at this block size."""
    return xxh64_intdigest(f"{block_chars}\x00{model}".encode())


def block_hashes(text: str, model: str, block_chars: int, max_blocks: int) -> list[int]:
    """Hashes of the first `max_blocks` full blocks of `text` (fewer if the text is shorter)."""
    return _extend([], text, model, block_chars, max_blocks)


def request_hashes(request: InferenceRequest, block_chars: int, max_blocks: int) -> list[int]:
    """`block_hashes` of the request's prompt for its target model, computed once per block
    size and kept on the request (`block_hash_cache`; a later call for more blocks extends the
    chain). The list is shared: callers must not change it."""
    key = (request.target_model, block_chars)
    cache = request.block_hash_cache
    known = cache.get(key)
    if known is None:
        known = cache[key] = _extend([], request.prefix_text, key[0], block_chars, max_blocks)
    elif len(known) < max_blocks:  # hashed for a lower cap, or the prompt has no more blocks
        _extend(known, request.prefix_text, key[0], block_chars, max_blocks)
    return known if len(known) <= max_blocks else known[:max_blocks]


def _extend(out: list[int], text: str, model: str, block_chars: int,
            max_blocks: int) -> list[int]:
    """Append to `out` (the chain's first blocks, or empty) the hashes of the next full blocks
    of `text`, up to `max_blocks` in all; returns `out`."""
    if block_chars <= 0:
        raise ValueError("block_chars must be positive")
    # Characters never encode to fewer bytes, so this slice holds every byte we may hash.
    data = text[: max_blocks * block_chars].encode()
    n = min(len(data) // block_chars, max_blocks)
    done = len(out)
    h = out[-1] if done else chain_seed(model, block_chars)
    end = done * block_chars
    append = out.append
    for _ in range(done, n):
        start = end
        end += block_chars
        h = xxh64_intdigest(data[start:end], h)
        append(h)
    return out
