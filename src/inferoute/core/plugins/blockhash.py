"""Chained block keys of a prompt, the keys of the approximate prefix index.

The prompt text is cut into blocks of `block_chars` UTF-8 bytes (a block of N tokens is taken
as 4N characters, the usual English average); only full blocks are keyed, as a model server
caches only full KV blocks. Each block's key is a 64-bit XXH3 hash that stands for the whole
prefix up to and including that block: every hash is seeded with the key of the block just
before the bytes it hashes (see below), and the chain starts from a seed derived from the target
model name and the block size, so two models (or LoRA adapters) never share entries, nor do two
block sizes.

Why chunks and spans: a decision needs only the keys where a prompt's match ends. Blocks are
grouped in chunks of `CHUNK_BLOCKS` (2 KB at 16-token blocks) and chunks in spans of
`SPAN_CHUNKS`; a span's last block is keyed by one hash of the whole span, a chunk's last
block (inside a span) by one hash of the whole chunk, every other block by one hash of itself,
each seeded with the key of the block just before what it hashes.
`PromptKeys` computes a span key (one C call per 16 KB: ~25 for a 100k-token prompt instead of
~6,000 per block or ~200 per chunk), a chunk's or a block's key only when a lookup lands there,
as far into its span or chunk as the lookup needs; the prefix index bisects on span keys first,
then chunk keys (`strides`). Nothing is hashed, nor an ASCII prompt encoded, before a lookup:
one that finds no candidate holding the first block encodes and hashes that block's chunk
alone. A key, once made, never changes as the chain grows.
`request_keys` keeps one `PromptKeys` per block size on the request, so every scorer and hook of
a policy shares the work; the index updates, which need every key, call `tolist()`.
"""

from __future__ import annotations

from xxhash import xxh3_64_intdigest

from ..blockmatch import LazyKeys
from ..request import InferenceRequest

__all__ = ["block_hashes", "chain_seed", "CHARS_PER_TOKEN", "CHUNK_BLOCKS", "PromptKeys",
           "request_keys", "SPAN_BLOCKS"]

#: estimated characters per token, used to size blocks of untokenised text
CHARS_PER_TOKEN = 4
#: blocks per chunk: the last block of each is keyed by one hash of the whole chunk
CHUNK_BLOCKS = 32
#: chunks per span: the last block of each span is keyed by one hash of the whole span
SPAN_CHUNKS = 8
SPAN_BLOCKS = CHUNK_BLOCKS * SPAN_CHUNKS


def chain_seed(model: str, block_chars: int) -> int:
    """The hash the chain starts from for `model` at this block size."""
    return xxh3_64_intdigest(f"{block_chars}\x00{model}".encode())


class _Chain:
    """One prompt's keys at one block size, computed as far as asked (shared by its views)."""

    __slots__ = ("text", "seed", "bc", "data", "view", "n", "limit", "spans", "ends", "inner")

    def __init__(self, text: str, model: str, block_chars: int) -> None:
        if block_chars <= 0:
            raise ValueError("block_chars must be positive")
        self.text = text
        self.seed = chain_seed(model, block_chars)
        self.bc = block_chars
        #: the prompt's first bytes, as far as a key needed them (`_bytes`)
        self.data = b""
        self.view = memoryview(self.data)
        self.n = 0
        self.limit = 0
        #: key of each full span's last block, made so far (`span`)
        self.spans: list[int] = []
        #: per span, the keys of its chunks' last blocks made so far (its last chunk's: `spans`)
        self.ends: dict[int, list[int]] = {}
        #: per chunk, the keys of its blocks made so far (its last block's: `ends` or `spans`)
        self.inner: dict[int, list[int]] = {}

    def grow(self, max_blocks: int) -> None:
        """Make the first `max_blocks` blocks (as many as the text has) addressable. Hashes
        nothing: a key is made when it is read."""
        if max_blocks <= self.limit:
            return
        self.limit = max_blocks
        if self.text.isascii():  # a character is a byte: the length is the size, unencoded
            self.n = min(len(self.text) // self.bc, max_blocks)
            return
        # Characters never encode to fewer bytes, so this slice holds every byte we may hash;
        # a longer slice's bytes start with a shorter one's, so keys made before stay right.
        self.data = self.text[: max_blocks * self.bc].encode()
        self.view = memoryview(self.data)
        self.n = min(len(self.data) // self.bc, max_blocks)

    def _bytes(self, end: int) -> memoryview:
        """The prompt's bytes, at least its first `end` (at most n x block_chars): the first
        chunk's alone when that is all a key needs (a lookup that finds no candidate holding
        the first block reads no more), else every byte up to the limit, encoded once."""
        if end > len(self.data):
            first = CHUNK_BLOCKS * self.bc
            self.data = self.text[:first if end <= first else self.limit * self.bc].encode()
            self.view = memoryview(self.data)
        return self.view

    def span(self, s: int) -> int:
        """The key of full span `s`'s last block (made with every span before it)."""
        spans = self.spans
        if s >= len(spans):
            step = SPAN_BLOCKS * self.bc
            view = self._bytes((s + 1) * step)
            h = spans[-1] if spans else self.seed
            for k in range(len(spans), s + 1):
                h = xxh3_64_intdigest(view[k * step:(k + 1) * step], h)
                spans.append(h)
        return spans[s]

    def end(self, c: int) -> int:
        """The key of full chunk `c`'s last block."""
        s, k = divmod(c, SPAN_CHUNKS)
        if k == SPAN_CHUNKS - 1:
            return self.span(s)
        ends = self.ends.get(s)
        if ends is None:
            ends = self.ends[s] = []
        if k >= len(ends):
            step = CHUNK_BLOCKS * self.bc
            view = self._bytes((s * SPAN_CHUNKS + k + 1) * step)
            h = ends[-1] if ends else self.span(s - 1) if s else self.seed
            for kk in range(len(ends), k + 1):
                at = (s * SPAN_CHUNKS + kk) * step
                h = xxh3_64_intdigest(view[at:at + step], h)
                ends.append(h)
        return ends[k]

    def block(self, i: int) -> int:
        """The key of block `i` (0 <= i < n)."""
        c, j = divmod(i, CHUNK_BLOCKS)
        if j == CHUNK_BLOCKS - 1:
            return self.end(c)
        keys = self.inner.get(c)
        if keys is None:
            keys = self.inner[c] = []
        if j >= len(keys):
            bc = self.bc
            view = self._bytes((i + 1) * bc)
            h = keys[-1] if keys else self.end(c - 1) if c else self.seed
            at = (c * CHUNK_BLOCKS + len(keys)) * bc
            for _ in range(len(keys), j + 1):
                h = xxh3_64_intdigest(view[at:at + bc], h)
                keys.append(h)
                at += bc
        return keys[j]


class PromptKeys(LazyKeys):
    """The first `len(self)` block keys of a prompt, computed lazily (see the module
    docstring); `strides` tells a bisection which positions are cheap (every span's last
    block, then every chunk's last), and `at(i)` is the unchecked index for one."""

    __slots__ = ("_chain", "_n", "at")

    strides = (SPAN_BLOCKS, CHUNK_BLOCKS)

    def __init__(self, chain: _Chain, n: int) -> None:
        self._chain = chain
        self._n = n
        self.at = chain.block

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (PromptKeys, list)):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def tolist(self) -> list[int]:
        """Every key, first block first (makes the ones not made yet)."""
        chain, n = self._chain, self._n
        out: list[int] = []
        full = n // CHUNK_BLOCKS
        for c in range(full):
            chain.block(c * CHUNK_BLOCKS + CHUNK_BLOCKS - 2)  # makes the chunk's inner keys
            out += chain.inner[c]
            out.append(chain.end(c))
        if n > full * CHUNK_BLOCKS:
            chain.block(n - 1)
            out += chain.inner[full][: n - full * CHUNK_BLOCKS]
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
