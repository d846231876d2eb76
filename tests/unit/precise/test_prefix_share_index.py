"""SharedPrefixIndex: local changes recorded (bounded), remote changes applied, not re-recorded."""

from __future__ import annotations

import pytest

from inferoute.core.plugins.prefix_cache_scorer import PrefixCacheScorer
from inferoute.datalayer.prefix_share import SharedPrefixIndex, share_scorer_index


def test_records_local_and_applies_remote():
    a, b = SharedPrefixIndex(), SharedPrefixIndex()
    a.insert("e1", [1, 2, 3], 10)
    a.discard("e1", [3])
    ops = a.drain()
    assert ops == [("i", "e1", [1, 2, 3], 10), ("d", "e1", [3])]
    for op in ops:
        b.apply_remote(list(op))
    assert b.match([1, 2, 3], ["e1"]) == [2] and not b.outbox


def test_outbox_is_bounded():
    a = SharedPrefixIndex(max_outbox=3)
    for i in range(5):
        a.insert("e", [i], 100)
    assert len(a.outbox) == 3 and a.dropped == 2
    assert [op[2] for op in a.drain(limit=2)] == [[2], [3]]


@pytest.mark.parametrize("op", [["x"], ["i", "e", [1]], ["i", 5, [1], 3], ["d", "e"],
                                ["i", "e", ["z"], 3]])
def test_malformed_remote_ops_raise_value_error(op):
    with pytest.raises(ValueError):
        SharedPrefixIndex().apply_remote(op)


def test_share_scorer_index():
    s = PrefixCacheScorer()
    shared = share_scorer_index(s)
    assert s.index is shared and share_scorer_index(s) is shared
    learned = PrefixCacheScorer()
    learned.index.insert("e", [1], 5)
    with pytest.raises(ValueError):
        share_scorer_index(learned)


def test_shared_kv_index_shares_speculation_only():
    from inferoute.core.kvindex import BlockStoredEvent
    from inferoute.core.plugins.precise_prefix_cache_scorer import PrecisePrefixCacheScorer
    from inferoute.datalayer.prefix_share import SharedKVIndex

    s = PrecisePrefixCacheScorer(params=PrecisePrefixCacheScorer.Params(speculative_ttl=3.0))
    a = share_scorer_index(s)
    assert isinstance(a, SharedKVIndex) and s.index is a and a.speculative_ttl == 3.0
    b = SharedKVIndex(speculative_ttl=3.0)
    a.apply("e", [BlockStoredEvent((1,), None, tuple(range(16)), 16)])  # events: not shared
    a.add_speculative("e", [7, 8], now=0.0)
    a.discard_speculative("e", [8])
    ops = a.drain()
    assert ops == [("s", "e", [7, 8]), ("x", "e", [8])]
    for op in ops:
        b.apply_remote(op, now=100.0)  # the receiver's clock
    assert b.match([7], ["e"], now=102.0) == [1] and b.match([7], ["e"], now=104.0) == [0]
    assert not b.outbox
    with pytest.raises(ValueError):
        b.apply_remote(["i", "e", [1], 3], 0.0)
