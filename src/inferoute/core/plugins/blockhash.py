"""Chained block hashes of a prompt, the keys of the approximate prefix index.

The prompt text is cut into blocks of `block_chars` UTF-8 bytes (a block of N tokens is taken
as 4N characters, the usual English average); only full blocks are hashed, as a model server
caches only full KV blocks. Block i's hash is xxhash64 of the block's bytes seeded with block
i-1's hash, so it stands for the whole prefix up to and including block i; the chain starts from
a seed derived from the target model name and the block size, so two models (or LoRA adapters)
never share entries, nor do two block sizes.
"""

from __future__ import annotations

from xxhash import xxh64_intdigest

__all__ = ["block_hashes", "chain_seed", "CHARS_PER_TOKEN"]

#: estimated characters per token, used to size blocks of untokenised text
CHARS_PER_TOKEN = 4


def chain_seed(model: str, block_chars: int) -> int:
    """The hash the chain starts from for `model` at this block size."""
    return xxh64_intdigest(f"{block_chars}\x00{model}".encode())


def block_hashes(text: str, model: str, block_chars: int, max_blocks: int) -> list[int]:
    """Hashes of the first `max_blocks` full blocks of `text` (fewer if the text is shorter)."""
    if block_chars <= 0:
        raise ValueError("block_chars must be positive")
    # Characters never encode to fewer bytes, so this slice holds every byte we may hash.
    data = text[: max_blocks * block_chars].encode()
    n = min(len(data) // block_chars, max_blocks)
    h = chain_seed(model, block_chars)
    out = [0] * n
    end = 0
    for i in range(n):
        start = end
        end += block_chars
        h = xxh64_intdigest(data[start:end], h)
        out[i] = h
    return out
