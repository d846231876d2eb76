"""The simulator's tokenizer: one token per whitespace-separated word, deterministic and cheap.

A client that splits its prompt on whitespace knows the exact token count the simulator will
report, so benchmark token figures are exact. The id scheme (`encode`, `count`, `token_id`) is
`inferoute.core.words`, shared with the data layer.

Output text is drawn from a fixed synthetic vocabulary by a seeded hash of (request key, index),
so the same seed and key always give the same words, and `encode(" ".join(words))` gives the
same ids the engine caches for them (multi-turn prompts hit the prefix cache like on vLLM).

Ids are hashes, so decoding needs a reverse map: every id of the output vocabulary, plus the
words this process has encoded (bounded: cleared with the word memo when it fills). `decode`
drops an id it cannot name, as vLLM's detokenizer renders an out-of-vocabulary id as "".
"""

from __future__ import annotations

import xxhash

from ..core.words import count, encode, encoded_word, token_id

__all__ = ["encode", "count", "decode", "word_of", "output_words", "output_token_ids",
           "output_key_seed", "token_id", "VOCAB"]

_xxh64 = xxhash.xxh64_intdigest


def word_of(tid: int) -> str | None:
    """The word behind a token id: an output-vocabulary word, or a word this process encoded
    (recently: the map is bounded); None for an id it cannot name."""
    return _VOCAB_WORDS.get(tid) or encoded_word(tid)


def decode(ids: list[int]) -> str:
    """The text of token ids: their words joined by single spaces; unknown ids are dropped."""
    return " ".join(w for w in map(word_of, ids) if w is not None)


def _build_vocab() -> tuple[str, ...]:
    """4,000 pronounceable two-syllable words ("bako", "tenu", ...): readable synthetic output."""
    onsets = "b c d f g h j k l m n p r s t v w z".split() + ["ch", "sh"]
    vowels = "a e i o u".split()
    syllables = [c + v for c in onsets for v in vowels]  # 100
    words = [a + b for a in syllables for b in syllables if a != b]
    return tuple(words[:4000])


VOCAB: tuple[str, ...] = _build_vocab()
_VOCAB_IDS: tuple[int, ...] = tuple(token_id(w) for w in VOCAB)
#: the output vocabulary's reverse map: never evicted, so generated text always decodes
_VOCAB_WORDS: dict[int, str] = dict(zip(_VOCAB_IDS, VOCAB))
_INDEX_BYTES = [i.to_bytes(4, "little") for i in range(4096)]


def output_key_seed(seed: int, request_key: str) -> int:
    """The 64-bit stream seed for one request's output (a hash of seed and key)."""
    return _xxh64(request_key.encode(), seed & 0xFFFFFFFFFFFFFFFF)


def _word_index(key_seed: int, i: int) -> int:
    b = _INDEX_BYTES[i] if i < 4096 else i.to_bytes(8, "little")
    return _xxh64(b, key_seed) % len(VOCAB)


def output_token_ids(key_seed: int, start: int, n: int) -> list[int]:
    """Token ids of output positions start..start+n-1 for the stream `key_seed`."""
    ids, vocab, h, ib = _VOCAB_IDS, len(VOCAB), _xxh64, _INDEX_BYTES
    if start + n <= len(ib):
        return [ids[h(b, key_seed) % vocab] for b in ib[start:start + n]]
    return [ids[_word_index(key_seed, i)] for i in range(start, start + n)]


def output_words(seed: int, request_key: str, n: int) -> list[str]:
    """Deterministic output text, one word per token, for `n` tokens of request `request_key`."""
    ks = output_key_seed(seed, request_key)
    return [VOCAB[_word_index(ks, i)] for i in range(n)]
