"""Chained block keys of a prompt, the keys of the approximate prefix index.

The prompt text is cut into blocks of `block_chars` UTF-8 bytes (a block of N tokens is taken
as 4N characters, the usual English average); only full blocks are keyed, as a model server
caches only full KV blocks. Each block's key is an xxhash64 that stands for the whole prefix up
to and including that block: blocks are grouped in chunks of `CHUNK_BLOCKS`, the last block of
a chunk is keyed by hashing the whole chunk seeded with the previous chunk's key, and every
other block by hashing that block seeded with the key before it. The chain starts from a seed
derived from the target model name and the block size, so two models (or LoRA adapters) never
share entries, nor do two block sizes.

Why chunks: a decision needs only the keys where a prompt's match ends. `PromptKeys` computes the
chunk keys up front (one C call per 2 KB: ~200 for a 100k-token prompt instead of ~6,000) and a
chunk's other keys when a lookup lands in it; the prefix index bisects on chunk keys first
(`stride`). `request_keys` keeps one `PromptKeys` per block size on the request, so every scorer
and hook of a policy shares the work; the index updates, which need every key, call `tolist()`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

from xxhash import xxh64_intdigest

from ..request import InferenceRequest

__all__ = ["block_hashes", "chain_seed", "CHARS_PER_TOKEN", "CHUNK_BLOCKS", "PromptKeys",
           "request_keys"]

#: estimated characters per token, used to size blocks of untokenised text
CHARS_PER_TOKEN = 4
#: blocks per chunk: the last block of each is keyed by one hash of the whole chunk
CHUNK_BLOCKS = 32


def chain_seed(model: str, block_chars: int) -> int:
    """The hash the chain starts from for `model` at this block size."""
    return xxh64_intdigest(f"{block_chars}\x00{model}".encode())


class _Chain:
    """One prompt's keys at one block size, computed as far as asked (shared by its views)."""

    __slots__ = ("text", "seed", "bc", "data", "n", "limit", "bounds", "inner")

    def __init__(self, text: str, model: str, block_chars: int) -> None:
        if block_chars <= 0:
            raise ValueError("block_chars must be positive")
        self.text = text
        self.seed = chain_seed(model, block_chars)
        self.bc = block_chars
        self.data = b""
        self.n = 0
        self.limit = 0
        #: key of each full chunk's last block
        self.bounds: list[int] = []
        #: a chunk's keys by chunk number (the last chunk's only while `n` stays)
        self.inner: dict[int, list[int]] = {}

    def grow(self, max_blocks: int) -> None:
        """Make the first `max_blocks` blocks (as many as the text has) addressable."""
        if max_blocks <= self.limit:
            return
        if self.n % CHUNK_BLOCKS:  # a partial last chunk may get more blocks
            self.inner.pop(self.n // CHUNK_BLOCKS, None)
        # Characters never encode to fewer bytes, so this slice holds every byte we may hash.
        self.data = data = self.text[: max_blocks * self.bc].encode()
        self.n = min(len(data) // self.bc, max_blocks)
        self.limit = max_blocks
        bounds = self.bounds
        step = CHUNK_BLOCKS * self.bc
        h = bounds[-1] if bounds else self.seed
        view = memoryview(data)
        for c in range(len(bounds), self.n // CHUNK_BLOCKS):
            h = xxh64_intdigest(view[c * step:(c + 1) * step], h)
            bounds.append(h)

    def chunk(self, c: int) -> list[int]:
        """The keys of chunk `c`'s blocks (fewer than `CHUNK_BLOCKS` for a last partial one)."""
        keys = self.inner.get(c)
        if keys is None:
            first = c * CHUNK_BLOCKS
            count = min(CHUNK_BLOCKS, self.n - first)
            full = count == CHUNK_BLOCKS
            h = self.bounds[c - 1] if c else self.seed
            bc, view = self.bc, memoryview(self.data)
            keys = []
            end = first * bc
            for _ in range(count - 1 if full else count):
                start = end
                end += bc
                h = xxh64_intdigest(view[start:end], h)
                keys.append(h)
            if full:
                keys.append(self.bounds[c])
            self.inner[c] = keys
        return keys


class PromptKeys(Sequence[int]):
    """The first `len(self)` block keys of a prompt, computed lazily (see the module
    docstring); `stride` tells a bisection which positions are cheap (every chunk's last)."""

    __slots__ = ("_chain", "_n")

    stride = CHUNK_BLOCKS

    def __init__(self, chain: _Chain, n: int) -> None:
        self._chain = chain
        self._n = n

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> list[int]: ...

    def __getitem__(self, i: int | slice) -> int | list[int]:
        if isinstance(i, slice):
            return self.tolist()[i]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("block index out of range")
        c, j = divmod(i, CHUNK_BLOCKS)
        if j == CHUNK_BLOCKS - 1:
            return self._chain.bounds[c]
        return self._chain.chunk(c)[j]

    def __iter__(self) -> Iterator[int]:
        return iter(self.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (PromptKeys, list)):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def tolist(self) -> list[int]:
        """Every key, first block first (computes the chunks not computed yet)."""
        chain, n = self._chain, self._n
        out: list[int] = []
        for c in range(-(-n // CHUNK_BLOCKS)):
            out += chain.chunk(c)
        del out[n:]
        return out


def block_hashes(text: str, model: str, block_chars: int, max_blocks: int) -> list[int]:
    """Keys of the first `max_blocks` full blocks of `text` (fewer if the text is shorter)."""
    chain = _Chain(text, model, block_chars)
    chain.grow(max_blocks)
    return PromptKeys(chain, chain.n).tolist()


def request_keys(request: InferenceRequest, block_chars: int, max_blocks: int) -> PromptKeys:
    """The keys of the request's prompt for its target model, up to `max_blocks`: one chain per
    block size kept on the request (`block_hash_cache`), grown when a caller needs more."""
    cache_key = (request.target_model, block_chars)
    chain = request.block_hash_cache.get(cache_key)
    if chain is None:
        chain = request.block_hash_cache[cache_key] = _Chain(request.prefix_text,
                                                             request.target_model, block_chars)
    chain.grow(max_blocks)
    return PromptKeys(chain, min(chain.n, max_blocks))
