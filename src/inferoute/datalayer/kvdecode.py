"""Decoding vLLM KV-event batches (msgpack) into the index's events; pure, no I/O.

A batch is `[ts, [event, ...], data_parallel_rank]` (or a map with keys `ts`, `events`,
`data_parallel_rank`). Events come as tagged arrays (`["BlockStored", block_hashes,
parent_block_hash, token_ids, block_size, lora_id, medium]`, `["BlockRemoved", block_hashes,
medium]`, `["AllBlocksCleared"]`; older servers omit `medium`, newer ones may append fields, an
8th BlockStored field that is a string is taken as the LoRA name) or as maps with a `"type"` key
and the same field names. Block hashes are integers or bytes (e.g. sha256 digests); bytes are
folded to 64-bit integers, which only need to be consistent within one endpoint's stream.
A malformed event is skipped and counted; a malformed envelope raises `KVDecodeError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import msgpack
import xxhash

from ..core.kvindex import (DEFAULT_MEDIUM, AllBlocksClearedEvent, BlockRemovedEvent,
                            BlockStoredEvent, KVEvent)

__all__ = ["KVDecodeError", "EventBatch", "decode_event", "decode_batch"]

log = logging.getLogger("inferoute.kvevents")


class KVDecodeError(ValueError):
    """A payload or event that does not follow the KV-event format."""


@dataclass(slots=True, frozen=True)
class EventBatch:
    ts: float
    events: list[KVEvent]
    dp_rank: int | None
    #: events skipped as malformed or of an unknown type
    skipped: int = 0


def _hash(h: Any) -> int:
    if isinstance(h, bool):
        raise KVDecodeError("a block hash must be an integer or bytes")
    if isinstance(h, int):
        return h
    if isinstance(h, (bytes, bytearray, memoryview)):
        return xxhash.xxh3_64_intdigest(bytes(h))
    raise KVDecodeError(f"a block hash must be an integer or bytes, not {type(h).__name__}")


def _hashes(v: Any) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)):
        raise KVDecodeError("block_hashes must be a list")
    return tuple(_hash(h) for h in v)


def _opt_str(v: Any, what: str) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    raise KVDecodeError(f"{what} must be a string")


def _opt_int(v: Any, what: str) -> int | None:
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise KVDecodeError(f"{what} must be an integer")


def _stored(hashes: Any, parent: Any, tokens: Any, block_size: Any, lora_id: Any,
            medium: Any, lora_name: Any) -> BlockStoredEvent:
    if not isinstance(tokens, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise KVDecodeError("token_ids must be a list of integers")
    bs = _opt_int(block_size, "block_size")
    if not bs or bs < 1:
        raise KVDecodeError("block_size must be a positive integer")
    return BlockStoredEvent(_hashes(hashes), None if parent is None else _hash(parent),
                            tuple(tokens), bs, _opt_int(lora_id, "lora_id"),
                            _opt_str(medium, "medium") or DEFAULT_MEDIUM,
                            _opt_str(lora_name, "lora_name"))


def decode_event(raw: Any) -> KVEvent:
    """One event, tagged array or map form; KVDecodeError when malformed or unknown."""
    if isinstance(raw, dict):
        kind = raw.get("type")
        g = raw.get
        if kind == "BlockStored":
            return _stored(g("block_hashes"), g("parent_block_hash"), g("token_ids"),
                           g("block_size"), g("lora_id"), g("medium"), g("lora_name"))
        if kind == "BlockRemoved":
            return BlockRemovedEvent(_hashes(g("block_hashes")),
                                     _opt_str(g("medium"), "medium") or DEFAULT_MEDIUM)
        if kind == "AllBlocksCleared":
            return AllBlocksClearedEvent()
        raise KVDecodeError(f"unknown event type {kind!r}")
    if isinstance(raw, (list, tuple)) and raw:
        kind, args = raw[0], list(raw[1:])
        if kind == "BlockStored":
            if len(args) < 5:
                raise KVDecodeError("BlockStored needs at least 5 fields")
            args += [None] * (7 - len(args))
            lora_name = args[6] if isinstance(args[6], (str, type(None))) else None
            return _stored(args[0], args[1], args[2], args[3], args[4], args[5], lora_name)
        if kind == "BlockRemoved":
            if not args:
                raise KVDecodeError("BlockRemoved needs block_hashes")
            medium = args[1] if len(args) > 1 else None
            return BlockRemovedEvent(_hashes(args[0]),
                                     _opt_str(medium, "medium") or DEFAULT_MEDIUM)
        if kind == "AllBlocksCleared":
            return AllBlocksClearedEvent()
        raise KVDecodeError(f"unknown event type {kind!r}")
    raise KVDecodeError("an event must be a tagged array or a map with a 'type' key")


def decode_batch(payload: bytes) -> EventBatch:
    """A msgpack batch `[ts, [events...], dp_rank]` (or a map with those keys). Bad events are
    skipped and counted; a bad envelope raises KVDecodeError."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise KVDecodeError(f"payload is not msgpack: {exc}") from None
    if isinstance(obj, dict):
        ts, events, rank = obj.get("ts"), obj.get("events"), obj.get("data_parallel_rank")
    elif isinstance(obj, (list, tuple)) and len(obj) >= 2:
        ts, events, rank = obj[0], obj[1], obj[2] if len(obj) > 2 else None
    else:
        raise KVDecodeError("payload must be [ts, events, data_parallel_rank]")
    if not isinstance(events, (list, tuple)):
        raise KVDecodeError("the batch's events must be a list")
    out: list[KVEvent] = []
    skipped = 0
    for raw in events:
        try:
            out.append(decode_event(raw))
        except KVDecodeError as exc:
            skipped += 1
            log.warning("skipping a malformed KV event: %s", exc)
    return EventBatch(float(ts) if isinstance(ts, (int, float)) else 0.0, out,
                      rank if isinstance(rank, int) else None, skipped)
