"""An approximate radix tree of prompt characters with LRU eviction of leaves, bounded in
characters: the per-worker tree of the SGLang router's cache-aware policy
(`sglang-cache-aware-scorer`)."""

from __future__ import annotations

import heapq

__all__ = ["RadixTree"]


def _common(edge: str, text: str, pos: int) -> int:
    """Length of the common prefix of `edge` and `text[pos:]`, by C-speed comparisons: one
    `startswith` when the whole edge matches, else windows of the edge growing 4x from 16
    characters until one differs, then a binary search inside it (a character loop, as
    `os.path.commonprefix` runs, costs ~0.1 us a character: 30 ms for a long prompt). The
    work is about the common prefix's length, not the edge's: two prompts that share a
    system prompt usually part a few characters into the edge below it."""
    if text.startswith(edge, pos):
        return len(edge)
    n = min(len(edge), len(text) - pos)
    lo, step = 0, 16
    while True:  # lo characters match; find a window [lo, hi) that does not
        hi = min(lo + step, n)
        if not text.startswith(edge[lo:hi], pos + lo):
            break
        if hi == n:
            return n
        lo, step = hi, step * 4
    hi -= 1  # at most hi - 1 match
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text.startswith(edge[lo:mid], pos + lo):
            lo = mid
        else:
            hi = mid - 1
    return lo


class _Node:
    __slots__ = ("children", "edge", "parent", "stamp")

    def __init__(self, edge: str, parent: _Node | None, stamp: int) -> None:
        self.edge = edge
        self.children: dict[str, _Node] = {}
        self.parent = parent
        self.stamp = stamp


class RadixTree:
    """A character radix tree with LRU leaf eviction; sizes count stored characters."""

    def __init__(self, max_chars: int) -> None:
        self.root = _Node("", None, 0)
        self.size = 0
        self.max_chars = max_chars
        self._clock = 0

    def match(self, text: str) -> int:
        """Length of the longest prefix of `text` stored in the tree."""
        node, pos, n = self.root, 0, len(text)
        while pos < n:
            child = node.children.get(text[pos])
            if child is None:
                break
            edge = child.edge
            k = _common(edge, text, pos)
            pos += k
            if k < len(edge):
                break
            node = child
        return pos

    def insert(self, text: str) -> None:
        """Store `text`, refreshing the recency of its whole path; evict if over the bound."""
        self._clock += 1
        stamp = self._clock
        node, pos, n = self.root, 0, len(text)
        node.stamp = stamp
        while pos < n:
            first = text[pos]
            child = node.children.get(first)
            if child is None:
                leaf = _Node(text[pos:], node, stamp)
                node.children[first] = leaf
                self.size += n - pos
                break
            edge = child.edge
            k = _common(edge, text, pos)
            if k < len(edge):
                # split the edge at k: node -> mid(edge[:k]) -> child(edge[k:])
                mid = _Node(edge[:k], node, stamp)
                child.edge = edge[k:]
                child.parent = mid
                mid.children[child.edge[0]] = child
                node.children[first] = mid
                child = mid
            child.stamp = stamp
            pos += k
            node = child
        if self.size > self.max_chars:
            self.evict(int(self.max_chars * 0.9))

    def evict(self, target: int) -> None:
        """Drop least recently used leaves until at most `target` characters remain."""
        heap: list[tuple[int, int, _Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            elif node is not self.root:
                heap.append((node.stamp, id(node), node))
        heapq.heapify(heap)
        while heap and self.size > target:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            if parent is None:
                continue
            del parent.children[leaf.edge[0]]
            self.size -= len(leaf.edge)
            leaf.parent = None
            if parent is not self.root and not parent.children:
                heapq.heappush(heap, (parent.stamp, id(parent), parent))
