"""The words tokenizer: one token per whitespace-separated word, deterministic and cheap.

The simulator counts and caches tokens this way, and the data layer tokenizes prompts the same
way for precise prefix routing in front of simulators, so the id scheme lives here, below both.
Token ids are a stable hash of the word (ids are >= 1000, below 2**31 - 1), identical in every
process and run.
"""

from __future__ import annotations

import string
from collections import OrderedDict
from itertools import product

import xxhash

__all__ = ["WORKLOAD_WORDS", "count", "encode", "encoded_word", "token_id"]

#: every three-letter lower-case word (17,576): what the benchmark's prompts are made of, and so
#: what a tokenizer built for real-engine tests must know
WORKLOAD_WORDS: tuple[str, ...] = tuple("".join(p) for p in product(string.ascii_lowercase,
                                                                     repeat=3))

_ID_BASE = 1000
_ID_SPAN = (2**31 - 1) - _ID_BASE

_xxh32 = xxhash.xxh32_intdigest

#: word -> id memo; bounded (cleared when full, words repeat heavily in practice)
_WORD_IDS: dict[str, int] = {}
_WORD_IDS_MAX = 1_000_000
#: id -> word for the words in `_WORD_IDS` (same bound; a hash collision keeps the last word)
_ID_WORDS: dict[int, str] = {}
#: text -> ids memo for repeated prompts (the benchmark re-encodes the same long texts)
_TEXT_IDS: OrderedDict[str, tuple[int, ...]] = OrderedDict()
_TEXT_IDS_MAX = 512
_TEXT_MEMO_MIN_CHARS = 256


def token_id(word: str) -> int:
    """The id of one word: a stable 32-bit hash folded into [1000, 2**31 - 1)."""
    tid = _WORD_IDS.get(word)
    if tid is None:
        if len(_WORD_IDS) >= _WORD_IDS_MAX:
            _WORD_IDS.clear()
            _ID_WORDS.clear()
        tid = _ID_BASE + _xxh32(word.encode()) % _ID_SPAN
        _WORD_IDS[word] = tid
        _ID_WORDS[tid] = word
    return tid


def encoded_word(tid: int) -> str | None:
    """The word this process last encoded to `tid` (recently: the memo is bounded), or None."""
    return _ID_WORDS.get(tid)


def _encode_words(words: list[str]) -> list[int]:
    out = list(map(_WORD_IDS.get, words))
    if None in out:
        out = [tid if tid is not None else token_id(w) for tid, w in zip(out, words)]
    return out  # type: ignore[return-value]


def encode(text: str) -> list[int]:
    """Token ids of `text`: one per whitespace-separated word (a fresh list the caller may keep)."""
    if len(text) < _TEXT_MEMO_MIN_CHARS:
        return _encode_words(text.split())
    hit = _TEXT_IDS.get(text)
    if hit is not None:
        _TEXT_IDS.move_to_end(text)
        return list(hit)
    ids = _encode_words(text.split())
    _TEXT_IDS[text] = tuple(ids)
    if len(_TEXT_IDS) > _TEXT_IDS_MAX:
        _TEXT_IDS.popitem(last=False)
    return ids


def count(text: str) -> int:
    """Number of tokens of `text` (== len(encode(text)), without hashing anything)."""
    return len(text.split())
