"""Nearest-category classification of a prompt on normalised embeddings (numpy only).

Each category is represented by its example utterances and description, embedded once at
start-up. The embeddings are centred (the mean of all examples is subtracted, which removes
the direction every sentence shares) and re-normalised. A prompt's score for a category is
its cosine similarity to the category centroid plus `knn_weight` times the mean of its `k`
best similarities to that category's examples. Confidence is the softmax probability of the
winner over all categories at `temperature`; below `threshold` the router falls back to the
default model.

Per prompt this is one embedding (a token lookup and a mean) and one (n_examples x dim)
matrix-vector product: tens of microseconds on a CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .categories import Category
from .embeddings import Embedder


@dataclass(slots=True, frozen=True)
class Classification:
    """The classifier's answer: the best category, its confidence, and whether it passed."""

    category: str
    confidence: float
    accepted: bool
    #: seconds spent (embedding + scoring)
    elapsed: float = 0.0


def clip_text(text: str, max_chars: int) -> str:
    """Keep a long text's head and tail halves: the topic is usually stated at one end."""
    if len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + "\n" + text[-half:]


class CategoryClassifier:
    """Centroid + k-nearest-examples classifier over a fixed set of categories."""

    def __init__(self, embedder: Embedder, categories: list[Category], *,
                 threshold: float = 0.5, temperature: float = 0.05, knn_weight: float = 0.25,
                 knn_k: int = 3, max_chars: int = 1024) -> None:
        if not categories:
            raise ValueError("the classifier needs at least one category")
        self.embedder = embedder
        self.categories = list(categories)
        self.names = [c.name for c in categories]
        self.threshold = threshold
        self.temperature = temperature
        self.knn_weight = knn_weight
        self.max_chars = max_chars
        texts: list[str] = []
        labels: list[int] = []
        for i, cat in enumerate(categories):
            for t in ([cat.description] if cat.description else []) + cat.examples:
                texts.append(t)
                labels.append(i)
        raw = embedder.embed_many(texts)
        #: the (raw, normalised) embeddings of every description and example
        self.example_vectors = raw
        self._mean = raw.mean(axis=0).astype(np.float32)
        ex = self._centre(raw)
        n_cat = len(categories)
        self._labels = np.asarray(labels, dtype=np.int64)
        cents = np.stack([ex[self._labels == i].mean(axis=0) for i in range(n_cat)])
        self._centroids = self._normalise(cents)
        counts = np.bincount(self._labels, minlength=n_cat)
        self._k = max(1, min(knn_k, int(counts.min())))
        # Examples grouped per category into a padded (n_cat, max_count, dim) block so the
        # per-category top-k is one vectorised partition; padding rows score -inf.
        width = int(counts.max())
        block = np.zeros((n_cat, width, ex.shape[1]), dtype=np.float32)
        self._pad = np.zeros((n_cat, width), dtype=np.float32)
        for i in range(n_cat):
            rows = ex[self._labels == i]
            block[i, :len(rows)] = rows
            self._pad[i, len(rows):] = -np.inf
        self._examples = block.reshape(n_cat * width, -1)
        self._width = width
        self._n_cat = n_cat

    @property
    def mean(self) -> np.ndarray:
        """The mean example embedding, subtracted from every vector before comparing."""
        return self._mean

    @staticmethod
    def _normalise(m: np.ndarray) -> np.ndarray:
        norms = np.linalg.norm(m, axis=-1, keepdims=True)
        norms[norms == 0] = 1.0
        return (m / norms).astype(np.float32)

    def _centre(self, m: np.ndarray) -> np.ndarray:
        return self._normalise(m - self._mean)

    def embed(self, text: str) -> np.ndarray:
        """The raw (uncentred, normalised) embedding of a clipped prompt."""
        return self.embedder.embed(clip_text(text, self.max_chars))

    def scores(self, vector: np.ndarray) -> np.ndarray:
        """Per-category scores for a raw prompt embedding."""
        q = vector - self._mean
        n = float(np.linalg.norm(q))
        if n == 0:
            return np.zeros(self._n_cat, dtype=np.float32)
        q = (q / n).astype(np.float32)
        s = self._centroids @ q
        if self.knn_weight > 0:
            ex = (self._examples @ q).reshape(self._n_cat, self._width) + self._pad
            top = np.partition(ex, self._width - self._k, axis=1)[:, self._width - self._k:]
            s = s + self.knn_weight * top.mean(axis=1)
        return s

    def classify_vector(self, vector: np.ndarray) -> Classification:
        s = self.scores(vector)
        z = (s - s.max()) / self.temperature
        p = np.exp(z)
        p /= p.sum()
        i = int(np.argmax(p))
        conf = float(p[i])
        return Classification(self.names[i], conf, conf >= self.threshold)

    def classify(self, text: str) -> Classification:
        """Classify one prompt text; `elapsed` covers embedding and scoring."""
        t0 = time.perf_counter()
        result = self.classify_vector(self.embed(text))
        return Classification(result.category, result.confidence, result.accepted,
                              time.perf_counter() - t0)
